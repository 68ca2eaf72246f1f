//! twill-node's Prometheus metrics (prometheus-client, OpenMetrics text).
//!
//! One [`Metrics`] per process ([`global`]): the metrics twill-node itself
//! keeps — CNI request latency by command and result, endpoints, IPAM blocks
//! owned and addresses used, kernel routes programmed by kind and route
//! changes the kernel refused, nft apply latency by full / incremental and
//! result — and a registry other modules add theirs to
//! with [`Metrics::register`] (names get the `twill_` prefix), plus text
//! sources (the speaker's). Process-wide, so every manager records without
//! a handle threaded through its constructor. Served on `/metrics` by
//! [`crate::health`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
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

/// Labels of the nft apply histogram: `full` / `incremental`, `ok` / `error`.
type NftLabels = Vec<(&'static str, &'static str)>;

fn nft_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: an incremental update is milliseconds, a full table
    // at 10k pods is most of a second, a stuck kernel shows at the top.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Labels of the routes gauge: the route's kind.
type RouteLabels = Vec<(&'static str, &'static str)>;

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
    nft_apply: Family<NftLabels, Histogram, fn() -> Histogram>,
    routes: Family<RouteLabels, Gauge>,
    route_failures: Counter,
    service_sync: Family<RouteLabels, Histogram, fn() -> Histogram>,
    service_ports: Gauge,
    services_rendered: Counter,
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
            nft_apply: Family::new_with_constructor(nft_histogram),
            routes: Family::default(),
            route_failures: Counter::default(),
            service_sync: Family::new_with_constructor(nft_histogram),
            service_ports: Gauge::default(),
            services_rendered: Counter::default(),
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
        m.register(
            "nft_apply_duration_seconds",
            "Time to apply the policy table to the kernel (one nft transaction), by kind (full, incremental) and result",
            m.nft_apply.clone(),
        );
        m.register(
            "routes_programmed",
            "Kernel routes Twill has programmed, by kind (local: a pod's /32; blackhole: an owned block; bgp: learned from a peer)",
            m.routes.clone(),
        );
        m.register(
            "route_changes_failed",
            "Route adds, replaces and deletes the kernel refused (retried at the next resync)",
            m.route_failures.clone(),
        );
        m.register(
            "service_proxy_sync_duration_seconds",
            "Time of one service proxy pass, from the Services and EndpointSlices to the kernel, by outcome (nothing, incremental, full, error)",
            m.service_sync.clone(),
        );
        m.register(
            "service_proxy_ports",
            "Service ports (per port and IP family) the service proxy's tables implement",
            m.service_ports.clone(),
        );
        m.register(
            "service_proxy_services_rendered",
            "Services the service proxy rendered again because they or their EndpointSlices changed",
            m.services_rendered.clone(),
        );
        m
    }

    /// Records one service proxy pass: its outcome (`nothing`,
    /// `incremental`, `full`, `error`), its time, the Services it rendered
    /// and the Service ports the tables now implement.
    pub fn observe_service_proxy(
        &self,
        outcome: &'static str,
        took: Duration,
        rendered: usize,
        ports: usize,
    ) {
        self.service_sync
            .get_or_create(&vec![("outcome", outcome)])
            .observe(took.as_secs_f64());
        self.services_rendered.inc_by(rendered as u64);
        self.service_ports
            .set(i64::try_from(ports).unwrap_or(i64::MAX));
    }

    /// Records one nft transaction: a whole-table replacement or an
    /// incremental update, and whether the kernel took it.
    pub fn observe_nft_apply(&self, full: bool, ok: bool, took: Duration) {
        let labels = vec![
            ("kind", if full { "full" } else { "incremental" }),
            ("result", if ok { "ok" } else { "error" }),
        ];
        self.nft_apply
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Sets the programmed-routes gauges.
    pub fn set_routes(&self, local: usize, blackhole: usize, bgp: usize) {
        for (kind, n) in [("local", local), ("blackhole", blackhole), ("bgp", bgp)] {
            self.routes
                .get_or_create(&vec![("kind", kind)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts route changes the kernel refused.
    pub fn add_route_failures(&self, n: usize) {
        self.route_failures.inc_by(n as u64);
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

    #[test]
    fn service_proxy_passes_are_exposed() {
        let m = Metrics::new();
        m.observe_service_proxy("full", Duration::from_millis(900), 10, 12);
        m.observe_service_proxy("incremental", Duration::from_millis(20), 1, 12);
        m.observe_service_proxy("incremental", Duration::from_millis(30), 1, 11);
        let text = m.encode();
        assert!(
            text.contains(
                r#"twill_service_proxy_sync_duration_seconds_count{outcome="incremental"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"twill_service_proxy_sync_duration_seconds_count{outcome="full"} 1"#),
            "{text}"
        );
        assert!(text.contains("twill_service_proxy_ports 11"), "{text}");
        assert!(
            text.contains("twill_service_proxy_services_rendered_total 12"),
            "{text}"
        );
    }

    #[test]
    fn routes_and_nft_applies_are_exposed() {
        let m = Metrics::new();
        m.set_routes(3, 1, 40);
        m.add_route_failures(2);
        m.observe_nft_apply(true, true, Duration::from_millis(300));
        m.observe_nft_apply(false, true, Duration::from_millis(4));
        m.observe_nft_apply(false, true, Duration::from_millis(6));
        m.observe_nft_apply(false, false, Duration::from_millis(1));
        let text = m.encode();
        for want in [
            r#"twill_routes_programmed{kind="local"} 3"#,
            r#"twill_routes_programmed{kind="blackhole"} 1"#,
            r#"twill_routes_programmed{kind="bgp"} 40"#,
            "twill_route_changes_failed_total 2",
            r#"twill_nft_apply_duration_seconds_count{kind="full",result="ok"} 1"#,
            r#"twill_nft_apply_duration_seconds_count{kind="incremental",result="ok"} 2"#,
            r#"twill_nft_apply_duration_seconds_count{kind="incremental",result="error"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
    }
}
