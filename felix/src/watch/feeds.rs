//! The watches and subscriptions that feed a dataplane manager directly:
//! owned blocks → blackhole routes (and the status report's block view),
//! pools → the NAT manager, the endpoint set → endpoint routes.

use std::sync::Arc;

use twill_api::Store;
use twill_api::resources::{IPAMBlock, IPPool};

use super::follow;
use crate::dataplane::endpoints::Endpoints;
use crate::dataplane::routes::RouteProgrammer;
use crate::status::report::{BlockSummary, block_summary};

/// A blackhole route for every block this node owns; the status report's
/// view of the blocks.
pub async fn follow_blocks(
    store: Store,
    node: String,
    routes: Arc<RouteProgrammer>,
    summary: tokio::sync::watch::Sender<Option<BlockSummary>>,
) {
    follow::<IPAMBlock>(store, move |blocks| {
        routes.set_blocks(twill_ipam::owned_blocks(&blocks, &node));
        summary.send_replace(Some(block_summary(&blocks, &node)));
    })
    .await;
}

/// The pools, for the NAT manager ([`crate::dataplane::nat::run`]).
pub async fn follow_pools(store: Store, pools: tokio::sync::watch::Sender<Option<Vec<IPPool>>>) {
    follow::<IPPool>(store, move |listed| {
        pools.send_replace(Some(listed));
    })
    .await;
}

/// Feeds the endpoint set to the route programmer, now and on every change.
pub async fn follow_endpoints(endpoints: Arc<Endpoints>, routes: Arc<RouteProgrammer>) {
    let mut rx = endpoints.subscribe();
    loop {
        let set = rx.borrow_and_update().clone();
        routes.set_endpoints(set.values().flat_map(|e| {
            e.addresses
                .iter()
                .map(|a| (a.addr, e.host_ifname.clone()))
                .collect::<Vec<_>>()
        }));
        if rx.changed().await.is_err() {
            return;
        }
    }
}
