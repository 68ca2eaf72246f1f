//! Sessions follow the datastore: the desired sessions
//! ([`crate::calc::bgp::peers`]) with their settings
//! ([`crate::calc::bgp::session`]) and passwords (read from their Secrets
//! here) are compared with the running ones; a session that is gone or
//! changed is removed (and re-added), others stay up.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use twill_api::Store;
use twill_api::resources::{BGPConfiguration, BGPPeer};
use twill_bgpd::speaker::{PasswordSource, PeerConfig, Speaker};

use super::{BgpConfig, Sources};
use ipnetwork::IpNetwork;
use tokio::sync::watch;

use crate::calc::bgp::address::{HostAddress, pick_v6};
use crate::calc::bgp::peers::{self, DesiredPeer};
use crate::calc::bgp::session::{secret_namespace, session_settings};
use crate::watch::Cache;

/// The namespace file Kubernetes mounts with the service account token.
const SERVICEACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The node's addresses as the sessions use them.
pub(super) struct NodeAddrs {
    /// The node address (sessions of IPv4 peers start from it).
    pub v4: IpNetwork,
    /// The kernel's addresses, kept current by
    /// [`super::address::follow_addresses`] (None until first read).
    pub host: watch::Receiver<Option<Vec<HostAddress>>>,
    /// Where the chosen IPv6 next hop goes (None until first chosen; then
    /// Some(None) when the node has no usable IPv6 address).
    pub next_hop6: watch::Sender<Option<Option<Ipv6Addr>>>,
}

/// Sessions follow the datastore: recomputed whenever BGPConfiguration,
/// BGPPeer, Node or Secret objects or the node's addresses change, and
/// every 30 s. The IPv6 next hop is chosen here (it depends on the IPv6
/// peers) and is the source address of the IPv6 sessions, so an eBGP
/// router sees it as the next hop; when it changes those sessions are
/// replaced.
pub(super) async fn follow_peers(
    cfg: BgpConfig,
    speaker: Arc<Speaker>,
    mut addrs: NodeAddrs,
    sources: Sources,
) {
    let my_addr = addrs.v4.ip();
    let (tx, mut rx) = tokio::sync::watch::channel(());
    let nodes = Cache::<Node>::follow(&cfg.store, tx.clone());
    let configs = Cache::<BGPConfiguration>::follow(&cfg.store, tx.clone());
    let bgp_peers = Cache::<BGPPeer>::follow(&cfg.store, tx);
    let mut running: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut host_alive = true;
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
            let host = addrs.host.borrow_and_update().clone();
            let next_hop6 = host.map(|host| {
                let peers6: Vec<Ipv6Addr> = desired
                    .iter()
                    .filter_map(|d| match d.address {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    })
                    .collect();
                pick_v6(&host, &addrs.v4, &peers6)
            });
            if let Some(nh) = next_hop6 {
                addrs.next_hop6.send_if_modified(|cur| {
                    if *cur == Some(nh) {
                        return false;
                    }
                    match nh {
                        Some(a) => tracing::info!(address = %a, "IPv6 next hop"),
                        None => tracing::warn!(
                            interface_of = %addrs.v4,
                            "no usable global IPv6 address beside the node address; IPv6 blocks are not announced"
                        ),
                    }
                    *cur = Some(nh);
                    true
                });
            }
            let my_addr6 = next_hop6.flatten();
            let mut want: BTreeMap<IpAddr, (PeerConfig, String)> = BTreeMap::new();
            for d in &desired {
                match peer_config(&cfg.store, d, my_addr, my_addr6).await {
                    Ok(pc) => {
                        // The source address is part of what makes a
                        // session: a new IPv6 next hop replaces the session.
                        let fp = format!("{d:?} from {:?}", pc.source_address);
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
        // Wake for the datastore, every 30 s, or for an address change
        // that moves the IPv6 next hop (pod veths come and go all the time
        // and change nothing here).
        let peers6: Vec<Ipv6Addr> = sources
            .lock()
            .map(|s| {
                s.keys()
                    .filter_map(|a| match a {
                        IpAddr::V6(a) => Some(*a),
                        IpAddr::V4(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let chosen = *addrs.next_hop6.borrow();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                tokio::select! {
                    r = rx.changed() => { let _ = r; return },
                    r = addrs.host.changed(), if host_alive => {
                        if r.is_err() {
                            // The address follower is gone (logged there).
                            host_alive = false;
                            continue;
                        }
                        let host = addrs.host.borrow_and_update().clone();
                        let nh = host.map(|h| pick_v6(&h, &addrs.v4, &peers6));
                        if nh.is_some() && nh != chosen {
                            return;
                        }
                    }
                }
            }
        })
        .await;
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
    my_addr6: Option<Ipv6Addr>,
) -> Result<PeerConfig, String> {
    let mut pc = session_settings(d, my_addr, my_addr6)?;
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
