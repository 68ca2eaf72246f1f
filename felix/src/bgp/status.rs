//! The sessions' state for the NodeStatus report (each peer's state, its
//! last error and when it went down) and the `bgp` readiness condition (at
//! least one configured session established).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use twill_api::resources::PeerStatus;
use twill_bgpd::speaker::Speaker;

use super::{SharedReport, Sources};
use crate::health;

pub(super) async fn status_loop(speaker: Arc<Speaker>, report: SharedReport, sources: Sources) {
    // Each peer's last error and when this loop first saw it: reported as
    // the last down reason, and as the current error only while the
    // session is not Established.
    let mut downs: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
    loop {
        let now = jiff::Timestamp::now();
        let src = sources.lock().map(|s| s.clone()).unwrap_or_default();
        let status = speaker.status();
        for p in &status {
            if let Some(e) = &p.last_error
                && downs.get(&p.address).is_none_or(|(seen, _)| seen != e)
            {
                downs.insert(p.address, (e.clone(), now.to_string()));
            }
        }
        let peers: Vec<PeerStatus> = status
            .into_iter()
            .map(|p| PeerStatus {
                address: p.address.to_string(),
                as_number: p.asn,
                source: src
                    .get(&p.address)
                    .map(|d| d.source.as_str().to_string())
                    .unwrap_or_default(),
                state: p.state.name().to_string(),
                since: now
                    .checked_sub(jiff::SignedDuration::from_secs(p.uptime_secs as i64))
                    .map(|t| {
                        // An Established session always has a start time,
                        // also in its first second (the report may not be
                        // rewritten until something else changes).
                        if p.uptime_secs > 0 || p.state.name() == "Established" {
                            t.to_string()
                        } else {
                            String::new()
                        }
                    })
                    .unwrap_or_default(),
                prefixes_received: p.received as u64,
                prefixes_accepted: p.accepted as u64,
                prefixes_advertised: p.advertised as u64,
                last_error: if p.state.name() == "Established" {
                    None
                } else {
                    p.last_error
                },
                last_down_reason: downs.get(&p.address).map(|d| d.0.clone()),
                last_down_at: downs.get(&p.address).map(|d| d.1.clone()),
            })
            .collect();
        let up = peers.iter().any(|p| p.state == "Established");
        if peers.is_empty() {
            health::global().remove(health::BGP);
        } else if up {
            health::global().set_ready(health::BGP);
        } else {
            health::global().set_not_ready(health::BGP, "no BGP session is established");
        }
        if let Ok(mut r) = report.lock() {
            r.peers = peers;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
