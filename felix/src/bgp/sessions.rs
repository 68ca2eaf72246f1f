//! Sessions follow the datastore: the desired sessions
//! ([`crate::calc::bgp::peers`]) with their settings
//! ([`crate::calc::bgp::session`]) and passwords (read from their Secrets
//! here) are compared with the running ones; a session that is gone or
//! changed is removed (and re-added), others stay up.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use twill_api::Store;
use twill_api::resources::{BGPConfiguration, BGPPeer};
use twill_bgpd::speaker::{PasswordSource, PeerConfig, Speaker};

use super::{BgpConfig, Sources};
use crate::calc::bgp::peers::{self, DesiredPeer};
use crate::calc::bgp::session::{secret_namespace, session_settings};
use crate::watch::Cache;

/// The namespace file Kubernetes mounts with the service account token.
const SERVICEACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Sessions follow the datastore: recomputed whenever BGPConfiguration,
/// BGPPeer, Node or Secret objects change, and every 30 s.
pub(super) async fn follow_peers(
    cfg: BgpConfig,
    speaker: Arc<Speaker>,
    my_addr: IpAddr,
    sources: Sources,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(());
    let nodes = Cache::<Node>::follow(&cfg.store, tx.clone());
    let configs = Cache::<BGPConfiguration>::follow(&cfg.store, tx.clone());
    let bgp_peers = Cache::<BGPPeer>::follow(&cfg.store, tx);
    let mut running: BTreeMap<IpAddr, String> = BTreeMap::new();
    loop {
        // The watches' caches, not a list per round: API load stays flat
        // as the cluster grows.
        let lists = (nodes.get(), configs.get(), bgp_peers.get());
        if let (Some(nodes), Some(configs), Some(bgp_peers)) = lists {
            let (mut desired, problems) =
                peers::desired_peers(&cfg.node, &nodes, &configs, &bgp_peers);
            for p in problems {
                tracing::warn!("{p}");
            }
            desired.retain(|p| p.address != my_addr);
            let mut want: BTreeMap<IpAddr, (PeerConfig, String)> = BTreeMap::new();
            for d in &desired {
                match peer_config(&cfg.store, d, my_addr).await {
                    Ok(pc) => {
                        let fp = format!("{d:?}");
                        want.insert(d.address, (pc, fp));
                    }
                    Err(e) => tracing::warn!(peer = %d.address, "session not configured: {e}"),
                }
            }
            let gone: Vec<IpAddr> = running
                .keys()
                .filter(|a| !want.contains_key(a))
                .copied()
                .collect();
            for a in gone {
                tracing::info!(peer = %a, "removing BGP session");
                speaker.remove_peer(a).await;
                running.remove(&a);
            }
            for (a, (pc, fp)) in want {
                if running.get(&a) == Some(&fp) {
                    continue;
                }
                if running.contains_key(&a) {
                    tracing::info!(peer = %a, "BGP session settings changed; replacing it");
                    speaker.remove_peer(a).await;
                }
                match speaker.add_peer(pc) {
                    Ok(()) => {
                        tracing::info!(peer = %a, "BGP session configured");
                        running.insert(a, fp);
                    }
                    Err(e) => tracing::warn!(peer = %a, error = %e, "cannot add BGP session"),
                }
            }
            if let Ok(mut s) = sources.lock() {
                *s = desired.into_iter().map(|d| (d.address, d)).collect();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
        // Let a burst of changes settle into one recomputation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The namespace twill-node runs in: `POD_NAMESPACE` (the downward API in
/// the DaemonSet), else the service account's namespace file.
fn own_namespace() -> Option<String> {
    let valid = |s: String| {
        let s = s.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    std::env::var("POD_NAMESPACE")
        .ok()
        .and_then(valid)
        .or_else(|| {
            std::fs::read_to_string(SERVICEACCOUNT_NAMESPACE)
                .ok()
                .and_then(valid)
        })
}

async fn peer_config(
    store: &Store,
    d: &DesiredPeer,
    my_addr: IpAddr,
) -> Result<PeerConfig, String> {
    let mut pc = session_settings(d, my_addr)?;
    if let Some(r) = &d.password {
        let ns = secret_namespace(r.namespace.as_deref(), own_namespace);
        let secret = store
            .get::<Secret>(Some(&ns), &r.name)
            .await
            .map_err(|e| format!("reading Secret {ns}/{}: {e}", r.name))?
            .ok_or_else(|| format!("Secret {ns}/{} does not exist", r.name))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .cloned()
            })
            .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
        pc.password = Some(PasswordSource::Literal(
            value.trim_end_matches('\n').to_string(),
        ));
    }
    Ok(pc)
}
