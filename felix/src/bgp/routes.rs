//! Best routes from the speaker to the route manager.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use twill_bgpd::speaker::Speaker;

use super::Sources;
use crate::dataplane::routes::RouteProgrammer;

/// Best-route changes → kernel routes. Until the table is complete, changes
/// are only added; then the full set is declared, which lets the programmer
/// remove what no peer announces any more.
pub(super) async fn forward_routes(
    speaker: Arc<Speaker>,
    routes: Arc<RouteProgrammer>,
    sources: Sources,
    settle_timeout: Duration,
) {
    let mut rx = speaker.subscribe();
    let start = Instant::now();
    let mut complete = false;
    let mut last_change = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { return };
                last_change = Instant::now();
                for ch in batch {
                    match ch.best {
                        Some(b) if !b.local => routes.set_bgp_route(ch.prefix, b.next_hops.clone()),
                        _ => routes.remove_bgp_route(ch.prefix),
                    }
                }
            }
            _ = tick.tick(), if !complete => {
                let want = sources.lock().map(|s| s.len()).unwrap_or(0);
                let status = speaker.status();
                let up = status.iter().filter(|p| p.state.name() == "Established").count();
                let settled = up >= want && last_change.elapsed() > Duration::from_secs(2)
                    && status.iter().all(|p| p.uptime_secs >= 2 || p.state.name() != "Established");
                if (settled && start.elapsed() > Duration::from_secs(2)) || start.elapsed() > settle_timeout {
                    complete = true;
                    let all: Vec<(IpNetwork, Vec<IpAddr>)> = speaker
                        .best_routes()
                        .await
                        .into_iter()
                        .filter(|(_, b)| !b.local)
                        .map(|(p, b)| (p, b.next_hops.clone()))
                        .collect();
                    tracing::info!(routes = all.len(), sessions_up = up, "BGP table complete; stale routes may now go");
                    routes.set_bgp_routes(all);
                }
            }
        }
    }
}
