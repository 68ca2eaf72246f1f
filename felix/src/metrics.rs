//! twill-node's Prometheus metrics (prometheus-client, OpenMetrics text).
//!
//! One [`Metrics`] per process ([`global`]): the metrics twill-node itself
//! keeps — CNI request latency by command and result, endpoints, IPAM blocks
//! owned and addresses used — and a registry other modules add theirs to
//! with [`Metrics::register`] (names get the `twill_` prefix). It is
//! process-wide so the CNI server, the agent and later bgpd and the nft
//! driver can record without a handle threaded through every constructor.
//! Served on `/metrics` by [`crate::health`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Labels of the CNI latency histogram: the command and `ok` / `error`.
type CniLabels = Vec<(&'static str, String)>;

fn cni_histogram() -> Histogram {
    // 1 ms .. ~16 s: a pod set-up is tens of milliseconds; a slow datastore
    // or a stuck namespace shows up in the top buckets.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

type TextSource = Box<dyn Fn() -> String + Send + Sync>;

/// twill-node's metrics and the registry they are exposed from.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Other components that render their own OpenMetrics text (the BGP
    /// speaker keeps its own registry); appended to ours.
    sources: Mutex<Vec<TextSource>>,
    cni_requests: Family<CniLabels, Histogram, fn() -> Histogram>,
    endpoints: Gauge,
    ipam_blocks: Gauge,
    ipam_addresses: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set (tests; twill-node uses [`global`]).
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("twill")),
            sources: Mutex::new(Vec::new()),
            cni_requests: Family::new_with_constructor(cni_histogram),
            endpoints: Gauge::default(),
            ipam_blocks: Gauge::default(),
            ipam_addresses: Gauge::default(),
        };
        m.register(
            "cni_request_duration_seconds",
            "Time to answer a CNI request from twill-cni, by command and result",
            m.cni_requests.clone(),
        );
        m.register(
            "endpoints",
            "Pod endpoints (veth + addresses) on this node",
            m.endpoints.clone(),
        );
        m.register(
            "ipam_blocks",
            "IPAM blocks affine to this node",
            m.ipam_blocks.clone(),
        );
        m.register(
            "ipam_addresses_used",
            "Addresses allocated in the IPAM blocks affine to this node",
            m.ipam_addresses.clone(),
        );
        m
    }

    /// Adds a metric (any prometheus-client metric; keep a clone to update
    /// it). `name` gets the `twill_` prefix; counters get `_total`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// Records one CNI request (`command` as twill-cni sent it, e.g. `ADD`).
    pub fn observe_cni(&self, command: &str, ok: bool, took: Duration) {
        let labels = vec![
            ("command", command.to_ascii_uppercase()),
            ("result", if ok { "ok" } else { "error" }.to_string()),
        ];
        self.cni_requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Sets the number of endpoints on this node.
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the IPAM gauges: blocks owned and addresses used in them.
    pub fn set_ipam(&self, blocks: usize, addresses: usize) {
        self.ipam_blocks
            .set(i64::try_from(blocks).unwrap_or(i64::MAX));
        self.ipam_addresses
            .set(i64::try_from(addresses).unwrap_or(i64::MAX));
    }

    /// Adds a component that renders its own OpenMetrics text.
    pub fn add_text_source(&self, source: impl Fn() -> String + Send + Sync + 'static) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(source));
    }

    /// Everything, in the OpenMetrics text format (one `# EOF` at the end).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        {
            let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            if encode(&mut out, &reg).is_err() {
                // Only a formatter error can get here; writing to a String
                // does not fail, so this is a metric's own encoding refusing.
                out.clear();
            }
        }
        let strip = |t: &mut String| {
            if let Some(i) = t.rfind("# EOF") {
                t.truncate(i);
            }
        };
        strip(&mut out);
        for src in self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let mut t = src();
            strip(&mut t);
            out.push_str(&t);
        }
        out.push_str("# EOF\n");
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn text_sources_are_appended_with_one_eof() {
        let m = Metrics::new();
        m.set_endpoints(1);
        m.add_text_source(|| {
            "# TYPE twill_bgp_peer_state gauge\ntwill_bgp_peer_state{peer=\"10.0.0.1\"} 6\n# EOF\n"
                .into()
        });
        let text = m.encode();
        assert!(text.contains("twill_endpoints 1"), "{text}");
        assert!(
            text.contains(r#"twill_bgp_peer_state{peer="10.0.0.1"} 6"#),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn exposes_own_and_registered_metrics() {
        let m = Metrics::new();
        m.observe_cni("ADD", true, Duration::from_millis(30));
        m.observe_cni("ADD", true, Duration::from_millis(50));
        m.observe_cni("del", false, Duration::from_millis(2));
        m.set_endpoints(3);
        m.set_ipam(2, 5);
        let c: Counter = Counter::default();
        m.register(
            "bgp_updates_received",
            "UPDATE messages received",
            c.clone(),
        );
        c.inc_by(7);
        let text = m.encode();
        assert!(
            text.contains(
                r#"twill_cni_request_duration_seconds_count{command="ADD",result="ok"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"twill_cni_request_duration_seconds_count{command="DEL",result="error"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"twill_cni_request_duration_seconds_bucket{le="0.064",command="ADD",result="ok"} 2"#)
                || text.contains(r#"twill_cni_request_duration_seconds_bucket{command="ADD",result="ok",le="0.064"} 2"#),
            "{text}"
        );
        assert!(text.contains("twill_endpoints 3"), "{text}");
        assert!(text.contains("twill_ipam_blocks 2"), "{text}");
        assert!(text.contains("twill_ipam_addresses_used 5"), "{text}");
        assert!(
            text.contains("twill_bgp_updates_received_total 7"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
