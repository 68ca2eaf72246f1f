//! The watches and subscriptions that feed a dataplane manager directly:
//! owned blocks → blackhole routes (and the status report's block view),
//! pools → the NAT manager, the endpoint set → endpoint routes; and the
//! Services and EndpointSlices ([`ServiceFeed`]), one watch each shared by
//! BGP origination and the service proxy.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use twill_api::Store;
use twill_api::resources::{IPAMBlock, IPPool};

use super::{follow, follow_shared};
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

/// Services as last listed, each object shared.
pub type Services = Arc<Vec<Arc<Service>>>;
/// EndpointSlices as last listed, each object shared.
pub type Slices = Arc<Vec<Arc<EndpointSlice>>>;
/// Services and EndpointSlices as last listed.
pub type ServiceLists = (Services, Slices);

/// The Services and EndpointSlices as their watches last listed them
/// (`None` until the first listing), for every consumer in the agent: one
/// watch per kind, however many follow it.
#[derive(Clone, Debug)]
pub struct ServiceFeed {
    services: watch::Receiver<Option<Services>>,
    slices: watch::Receiver<Option<Slices>>,
}

impl ServiceFeed {
    /// Starts both watches; the tasks follow for as long as they run.
    pub fn start(store: &Store) -> (ServiceFeed, Vec<tokio::task::JoinHandle<()>>) {
        let (svc_tx, services) = watch::channel(None);
        let (sl_tx, slices) = watch::channel(None);
        let tasks = vec![
            tokio::spawn(follow_shared::<Service>(store.clone(), move |l| {
                svc_tx.send_replace(Some(Arc::new(l)));
            })),
            tokio::spawn(follow_shared::<EndpointSlice>(store.clone(), move |l| {
                sl_tx.send_replace(Some(Arc::new(l)));
            })),
        ];
        (ServiceFeed { services, slices }, tasks)
    }

    /// A feed that never delivers (nothing follows the store).
    pub fn none() -> ServiceFeed {
        ServiceFeed {
            services: watch::channel(None).1,
            slices: watch::channel(None).1,
        }
    }

    /// The Services, once listed.
    pub fn services(&self) -> Option<Services> {
        self.services.borrow().clone()
    }

    /// The EndpointSlices, once listed.
    pub fn slices(&self) -> Option<Slices> {
        self.slices.borrow().clone()
    }

    /// Both, once both are listed; marks them seen.
    pub fn both(&mut self) -> Option<ServiceLists> {
        let s = self.services.borrow_and_update().clone();
        let e = self.slices.borrow_and_update().clone();
        s.zip(e)
    }

    /// Waits for a change of either; false when neither can change any more.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.services.changed() => r.is_ok() || self.slices.changed().await.is_ok(),
            r = self.slices.changed() => r.is_ok() || self.services.changed().await.is_ok(),
        }
    }
}
