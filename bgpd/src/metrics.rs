//! Prometheus metrics of the speaker (prometheus-client): per peer the
//! session state (BGP4-MIB numbering, 6 = Established), messages in and out
//! by type, prefixes received/accepted/advertised, flaps (Established →
//! down) and the last error (an info-style gauge labelled with the text).
//! `Metrics::encode` renders the text exposition format.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MsgLabels {
    pub peer: String,
    pub direction: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefixLabels {
    pub peer: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub peer: String,
    pub error: String,
}

pub struct Metrics {
    registry: Registry,
    pub state: Family<PeerLabels, Gauge>,
    pub messages: Family<MsgLabels, Counter>,
    pub prefixes: Family<PrefixLabels, Gauge>,
    pub flaps: Family<PeerLabels, Counter>,
    pub last_error: Family<ErrorLabels, Gauge>,
    pub bfd_state: Family<PeerLabels, Gauge>,
    /// Connections refused because the address is not a configured peer.
    pub refused: Counter,
    /// The label set currently set to 1 in `last_error`, per peer.
    last_error_label: Mutex<std::collections::HashMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("twill_bgp");
        let state = Family::<PeerLabels, Gauge>::default();
        let messages = Family::<MsgLabels, Counter>::default();
        let prefixes = Family::<PrefixLabels, Gauge>::default();
        let flaps = Family::<PeerLabels, Counter>::default();
        let last_error = Family::<ErrorLabels, Gauge>::default();
        let bfd_state = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_state",
            "Session state (1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 Established)",
            state.clone(),
        );
        registry.register(
            "messages",
            "BGP messages by direction (in/out) and type",
            messages.clone(),
        );
        registry.register(
            "prefixes",
            "Prefixes per peer (received, accepted, advertised)",
            prefixes.clone(),
        );
        registry.register("flaps", "Times the session left Established", flaps.clone());
        registry.register(
            "last_error",
            "1 for the peer's most recent error",
            last_error.clone(),
        );
        registry.register(
            "bfd_state",
            "BFD session state, RFC 5880 numbering (0 AdminDown, 1 Down, 2 Init, 3 Up); only peers with BFD",
            bfd_state.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "refused_connections",
            "Incoming connections closed because the address is not a configured peer",
            refused.clone(),
        );
        Metrics {
            registry,
            refused,
            state,
            messages,
            prefixes,
            flaps,
            last_error,
            bfd_state,
            last_error_label: Mutex::new(Default::default()),
        }
    }

    pub fn refused(&self) {
        self.refused.inc();
    }

    pub fn message(&self, peer: &str, out: bool, kind: &str) {
        self.messages
            .get_or_create(&MsgLabels {
                peer: peer.to_string(),
                direction: if out { "out" } else { "in" }.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn set_state(&self, peer: &str, value: i64) {
        self.state
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(value);
    }

    pub fn set_bfd_state(&self, peer: &str, value: i64) {
        self.bfd_state
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(value);
    }

    pub fn flap(&self, peer: &str) {
        self.flaps
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .inc();
    }

    pub fn set_prefixes(&self, peer: &str, received: usize, accepted: usize, advertised: usize) {
        for (kind, v) in [
            ("received", received),
            ("accepted", accepted),
            ("advertised", advertised),
        ] {
            self.prefixes
                .get_or_create(&PrefixLabels {
                    peer: peer.to_string(),
                    kind: kind.to_string(),
                })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    pub fn set_error(&self, peer: &str, error: &str) {
        let Ok(mut last) = self.last_error_label.lock() else {
            return;
        };
        if let Some(old) = last.insert(peer.to_string(), error.to_string()) {
            self.last_error.remove(&ErrorLabels {
                peer: peer.to_string(),
                error: old,
            });
        }
        self.last_error
            .get_or_create(&ErrorLabels {
                peer: peer.to_string(),
                error: error.to_string(),
            })
            .set(1);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_per_peer_series() {
        let m = Metrics::new();
        m.set_state("10.0.0.2", 6);
        m.message("10.0.0.2", true, "update");
        m.flap("10.0.0.2");
        m.set_error("10.0.0.2", "hold timer expired");
        m.set_error("10.0.0.2", "connection lost");
        m.set_prefixes("10.0.0.2", 3, 2, 1);
        let t = m.encode();
        assert!(
            t.contains("twill_bgp_peer_state{peer=\"10.0.0.2\"} 6"),
            "{t}"
        );
        assert!(t.contains("direction=\"out\""), "{t}");
        assert!(t.contains("error=\"connection lost\""), "{t}");
        assert!(!t.contains("hold timer expired"), "{t}");
        assert!(t.contains("kind=\"accepted\"} 2"), "{t}");
    }
}
