//! Real BGP speakers for interop tests, built one way for BIRD 2, FRR's
//! bgpd and GoBGP: `Peer::bird()` / `frr()` / `gobgp()` give a
//! [`PeerBuilder`] (`.asn()`, `.ipv4()`, `.ipv6()`, `.neighbor()`,
//! `.announce()`, per-session `.password()`, `.ttl_security()`,
//! `.multihop()`, `.route_reflector_client()` ...) that writes the router's
//! own config and starts it in a namespace the test made, with a directory
//! of its own; the [`Peer`] holds its PID (the guard stops exactly that
//! process) and answers in one vocabulary whatever the router: session
//! state, the route for a prefix, the table. [`Peer::attach`] gives the same
//! queries for a ToR that `twillctl lab` started (the lab owns that process).
//! [`TwillBgpd`] runs our own speaker from YAML; [`TorLink`] is the usual
//! dual-stack pair of namespaces (ToR ↔ node).
//!
//! It lives in `twill-tests` because only its integration tests start real
//! peers; bgpd's own tests exercise the library in-process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{Daemon, Netns, bins, require_binary, wait_until};

/// The ToR's and the node's addresses on a [`TorLink`].
pub const TOR4: &str = "10.96.0.1";
pub const NODE4: &str = "10.96.0.2";
pub const TOR6: &str = "fd96::1";
pub const NODE6: &str = "fd96::2";

/// Which router a [`Peer`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Bird,
    Frr,
    Gobgp,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Bird => "bird",
            Flavor::Frr => "frr",
            Flavor::Gobgp => "gobgp",
        }
    }

    /// `bird`, `frr` or `gobgp` (as `twillctl lab --tor` spells them).
    pub fn from_name(name: &str) -> Flavor {
        match name {
            "bird" => Flavor::Bird,
            "frr" => Flavor::Frr,
            "gobgp" => Flavor::Gobgp,
            other => panic!("no such router flavor: {other}"),
        }
    }
}

/// One BGP session of a peer.
#[derive(Clone, Debug)]
struct Session {
    /// BIRD's protocol name (`twill4`, `twill6` unless set).
    name: String,
    local: String,
    neighbor: String,
    asn: u32,
    multihop: Option<u8>,
    password: Option<String>,
    ttl_security: bool,
    next_hop_self: bool,
    rr_client: bool,
    /// Raw BIRD protocol options (e.g. graceful restart).
    bird_options: String,
}

impl Session {
    fn v6(&self) -> bool {
        self.neighbor.contains(':')
    }
}

/// What a peer is to be: its config, before it runs.
#[derive(Clone, Debug)]
pub struct PeerBuilder {
    flavor: Flavor,
    asn: u32,
    router_id: String,
    hold: u16,
    sessions: Vec<Session>,
    prefixes: Vec<String>,
    kernel_export: bool,
    /// BFD (min tx ms, min rx ms, multiplier) on every session; BIRD only.
    bfd: Option<(u32, u32, u8)>,
    api_port: u16,
    /// FRR's listen address (default: the router id).
    listen: Option<String>,
    /// A config given whole (see [`PeerBuilder::raw_config`]).
    raw: Option<String>,
}

/// A real router, started by a test (stopped by PID when dropped) or
/// attached to a lab's ToR.
pub struct Peer {
    pub flavor: Flavor,
    /// Its config, sockets, logs.
    pub dir: PathBuf,
    /// The process this test started (None when attached to a lab's ToR).
    pub daemon: Option<Daemon>,
    ns_name: String,
    spec: Option<PeerBuilder>,
    /// GoBGP's API address inside the namespace.
    api: String,
}

impl Peer {
    pub fn bird() -> PeerBuilder {
        PeerBuilder::new(Flavor::Bird)
    }

    pub fn frr() -> PeerBuilder {
        PeerBuilder::new(Flavor::Frr)
    }

    pub fn gobgp() -> PeerBuilder {
        PeerBuilder::new(Flavor::Gobgp)
    }
}

impl PeerBuilder {
    /// AS 65000, router id [`TOR4`], hold time 9 s, no sessions yet.
    pub fn new(flavor: Flavor) -> PeerBuilder {
        PeerBuilder {
            flavor,
            asn: 65000,
            router_id: TOR4.into(),
            hold: 9,
            sessions: Vec::new(),
            prefixes: Vec::new(),
            kernel_export: false,
            bfd: None,
            api_port: 50051,
            listen: None,
            raw: None,
        }
    }

    pub fn asn(mut self, asn: u32) -> Self {
        self.asn = asn;
        self
    }

    pub fn router_id(mut self, id: &str) -> Self {
        self.router_id = id.into();
        self
    }

    pub fn hold_time(mut self, secs: u16) -> Self {
        self.hold = secs;
        self
    }

    /// A session from `local` to `neighbor` in AS `asn`; the options below
    /// apply to the session added last.
    pub fn neighbor(mut self, local: &str, neighbor: &str, asn: u32) -> Self {
        let family = if neighbor.contains(':') { "6" } else { "4" };
        let same = self
            .sessions
            .iter()
            .filter(|s| s.neighbor.contains(':') == neighbor.contains(':'))
            .count();
        let name = match same {
            0 => format!("twill{family}"),
            n => format!("twill{family}_{}", n + 1),
        };
        self.sessions.push(Session {
            name,
            local: local.into(),
            neighbor: neighbor.into(),
            asn,
            multihop: None,
            password: None,
            ttl_security: false,
            next_hop_self: false,
            rr_client: false,
            bird_options: String::new(),
        });
        self
    }

    /// The IPv4 session of a [`TorLink`]: [`TOR4`] to the node's [`NODE4`] in AS `asn`.
    pub fn ipv4(self, asn: u32) -> Self {
        self.neighbor(TOR4, NODE4, asn)
    }

    /// The IPv6 session of a [`TorLink`]: [`TOR6`] to the node's [`NODE6`] in AS `asn`.
    pub fn ipv6(self, asn: u32) -> Self {
        self.neighbor(TOR6, NODE6, asn)
    }

    fn last(&mut self) -> &mut Session {
        self.sessions
            .last_mut()
            .expect("a session option before any .neighbor()")
    }

    /// BIRD's protocol name for the last session.
    pub fn name(mut self, name: &str) -> Self {
        self.last().name = name.into();
        self
    }

    /// TCP MD5 (RFC 2385) on the last session.
    pub fn password(mut self, password: &str) -> Self {
        self.last().password = Some(password.into());
        self
    }

    /// GTSM (RFC 5082) on the last session.
    pub fn ttl_security(mut self) -> Self {
        self.last().ttl_security = true;
        self
    }

    /// eBGP multihop with this TTL on the last session.
    pub fn multihop(mut self, ttl: u8) -> Self {
        self.last().multihop = Some(ttl);
        self
    }

    /// Announce ourselves as the next hop on the last session.
    pub fn next_hop_self(mut self) -> Self {
        self.last().next_hop_self = true;
        self
    }

    /// The last session's neighbour is our route-reflector client.
    pub fn route_reflector_client(mut self) -> Self {
        self.last().rr_client = true;
        self
    }

    /// Raw BIRD protocol options for the last session (e.g.
    /// `graceful restart on;`). BIRD only.
    pub fn bird_options(mut self, options: &str) -> Self {
        self.last().bird_options = options.into();
        self
    }

    /// Prefixes the peer originates (IPv4 or IPv6).
    pub fn announce(mut self, prefixes: &[&str]) -> Self {
        self.prefixes.extend(prefixes.iter().map(|p| p.to_string()));
        self
    }

    /// Install the BGP routes in the namespace's kernel table (BIRD only;
    /// FRR runs without zebra, GoBGP has no FIB).
    pub fn kernel_export(mut self) -> Self {
        self.kernel_export = true;
        self
    }

    /// BFD on every session (BIRD only).
    pub fn bfd(mut self, min_tx_ms: u32, min_rx_ms: u32, multiplier: u8) -> Self {
        self.bfd = Some((min_tx_ms, min_rx_ms, multiplier));
        self
    }

    /// GoBGP's API port on the namespace's loopback (default 50051).
    pub fn api_port(mut self, port: u16) -> Self {
        self.api_port = port;
        self
    }

    /// FRR's listen address (default: the router id).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Uses `text` as the whole config instead of writing one, for set-ups
    /// the options above do not describe (the ingest benchmark's injectors
    /// with their generated tables). Start-up, PID guard and queries stay
    /// the builder's; queries by neighbour need the builder's sessions.
    pub fn raw_config(mut self, text: &str) -> Self {
        self.raw = Some(text.into());
        self
    }

    fn bird_only(&self) {
        let bird_only = self.kernel_export
            || self.bfd.is_some()
            || self.sessions.iter().any(|s| !s.bird_options.is_empty());
        assert!(
            self.flavor == Flavor::Bird || !bird_only,
            "kernel export, BFD and raw BIRD options are for BIRD peers only ({:?})",
            self.flavor
        );
        assert!(
            self.flavor != Flavor::Gobgp || !self.sessions.iter().any(|s| s.ttl_security),
            "GTSM is not set up for GoBGP peers here"
        );
    }

    /// The router's config file text (`dir` holds its log).
    pub fn config(&self, dir: &Path) -> String {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        self.bird_only();
        match self.flavor {
            Flavor::Bird => self.bird_conf(dir),
            Flavor::Frr => self.frr_conf(),
            Flavor::Gobgp => self.gobgp_conf(),
        }
    }

    fn prefixes(&self, v6: bool) -> Vec<&str> {
        self.prefixes
            .iter()
            .filter(|p| p.contains(':') == v6)
            .map(String::as_str)
            .collect()
    }

    fn bird_conf(&self, dir: &Path) -> String {
        let mut c = format!(
            "log \"{}/bird.log\" all;\nrouter id {};\nprotocol device {{ }}\n",
            dir.display(),
            self.router_id
        );
        if let Some((tx, rx, mult)) = self.bfd {
            c.push_str(&format!(
                "protocol bfd {{ interface \"*\" {{ min rx interval {rx} ms; min tx interval {tx} ms; multiplier {mult}; }}; }}\n"
            ));
        }
        for (v6, name, family) in [(false, "s4", "ipv4"), (true, "s6", "ipv6")] {
            let routes: String = self
                .prefixes(v6)
                .iter()
                .map(|p| format!("route {p} blackhole; "))
                .collect();
            if !routes.is_empty() {
                c.push_str(&format!("protocol static {name} {{ {family}; {routes}}}\n"));
            }
        }
        if self.kernel_export {
            for (v6, name, family) in [(false, "k4", "ipv4"), (true, "k6", "ipv6")] {
                if self.sessions.iter().any(|s| s.v6() == v6) {
                    c.push_str(&format!(
                        "protocol kernel {name} {{ {family} {{ export where source = RTS_BGP; }}; }}\n"
                    ));
                }
            }
        }
        for s in &self.sessions {
            let mut opts = String::new();
            if let Some(ttl) = s.multihop {
                opts.push_str(&format!("  multihop {ttl};\n"));
            }
            if s.ttl_security {
                opts.push_str("  ttl security on;\n");
            }
            if let Some(p) = &s.password {
                opts.push_str(&format!("  password \"{p}\";\n"));
            }
            if self.bfd.is_some() {
                opts.push_str("  bfd on;\n");
            }
            if s.rr_client {
                opts.push_str("  rr client;\n");
            }
            c.push_str(&format!(
                "protocol bgp {name} {{\n  local {local} as {asn};\n  neighbor {nb} as {pasn};\n{opts}  hold time {hold};\n  connect retry time 2;\n  connect delay time 1;\n  error wait time 1, 3;\n  {extra}\n  {family} {{ import all; export all;{nhs} }};\n}}\n",
                name = s.name,
                local = s.local,
                asn = self.asn,
                nb = s.neighbor,
                pasn = s.asn,
                hold = self.hold,
                extra = s.bird_options,
                family = if s.v6() { "ipv6" } else { "ipv4" },
                nhs = if s.next_hop_self { " next hop self;" } else { "" },
            ));
        }
        c
    }

    fn frr_conf(&self) -> String {
        let mut c = format!(
            "hostname tor\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n timers bgp {} {}\n",
            self.asn,
            self.router_id,
            (self.hold / 3).max(1),
            self.hold
        );
        for s in &self.sessions {
            let n = &s.neighbor;
            c.push_str(&format!(
                " neighbor {n} remote-as {}\n neighbor {n} timers connect 2\n",
                s.asn
            ));
            if let Some(p) = &s.password {
                c.push_str(&format!(" neighbor {n} password {p}\n"));
            }
            if let Some(ttl) = s.multihop {
                c.push_str(&format!(" neighbor {n} ebgp-multihop {ttl}\n"));
            }
            if s.ttl_security {
                c.push_str(&format!(" neighbor {n} ttl-security hops 1\n"));
            }
        }
        for (v6, family) in [(false, "ipv4"), (true, "ipv6")] {
            let sessions: Vec<&Session> = self.sessions.iter().filter(|s| s.v6() == v6).collect();
            if sessions.is_empty() && self.prefixes(v6).is_empty() {
                continue;
            }
            c.push_str(&format!(" address-family {family} unicast\n"));
            for p in self.prefixes(v6) {
                c.push_str(&format!("  network {p}\n"));
            }
            for s in sessions {
                let n = &s.neighbor;
                c.push_str(&format!("  neighbor {n} activate\n"));
                if s.next_hop_self {
                    c.push_str(&format!("  neighbor {n} next-hop-self\n"));
                }
                if s.rr_client {
                    c.push_str(&format!("  neighbor {n} route-reflector-client\n"));
                }
            }
            c.push_str(" exit-address-family\n");
        }
        c
    }

    fn gobgp_conf(&self) -> String {
        let mut locals: Vec<&str> = self.sessions.iter().map(|s| s.local.as_str()).collect();
        locals.dedup();
        let locals: Vec<String> = locals.iter().map(|l| format!("\"{l}\"")).collect();
        let mut c = format!(
            "[global.config]\n  as = {}\n  router-id = \"{}\"\n  local-address-list = [{}]\n",
            self.asn,
            self.router_id,
            locals.join(", ")
        );
        for s in &self.sessions {
            c.push_str(&format!(
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n",
                s.neighbor, s.asn
            ));
            if let Some(p) = &s.password {
                c.push_str(&format!("    auth-password = \"{p}\"\n"));
            }
            c.push_str(&format!(
                "  [neighbors.timers.config]\n    connect-retry = 2\n    hold-time = {}\n    keepalive-interval = {}\n",
                self.hold,
                (self.hold / 3).max(1)
            ));
            if let Some(ttl) = s.multihop {
                c.push_str(&format!(
                    "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {ttl}\n"
                ));
            }
            if s.rr_client {
                c.push_str(&format!(
                    "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{}\"\n",
                    self.router_id
                ));
            }
            c.push_str(&format!(
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{}-unicast\"\n",
                if s.v6() { "ipv6" } else { "ipv4" }
            ));
        }
        c
    }

    /// Writes the config to `dir` and starts the router inside `ns`; for
    /// GoBGP also waits for its API and adds the announced prefixes.
    pub fn start(self, ns: &Netns, dir: &Path) -> Peer {
        let mut peer = Peer {
            flavor: self.flavor,
            dir: dir.to_path_buf(),
            daemon: None,
            ns_name: ns.name().to_string(),
            api: format!("127.0.0.1:{}", self.api_port),
            spec: Some(self),
        };
        peer.launch();
        peer
    }
}

impl Peer {
    fn spec(&self) -> &PeerBuilder {
        self.spec
            .as_ref()
            .expect("this peer was attached, not started by the test")
    }

    /// `ip netns exec NS PROGRAM` (the peer's namespace).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_name, program]);
        c
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join(match self.flavor {
            Flavor::Bird => "bird.conf",
            Flavor::Frr => "bgpd.conf",
            Flavor::Gobgp => "gobgp.toml",
        })
    }

    fn ctl(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// Writes the config and starts the process.
    fn launch(&mut self) {
        let flavor = self.flavor;
        std::fs::create_dir_all(&self.dir).expect("peer dir");
        let cfg = self.config_path();
        std::fs::write(&cfg, self.spec().config(&self.dir)).expect("write peer config");
        let cfg = cfg.to_str().unwrap_or_default().to_string();
        let daemon = match flavor {
            Flavor::Bird => {
                require_binary("bird", "bird2");
                require_binary("birdc", "bird2");
                let pid = self.dir.join("bird.pid");
                let _ = std::fs::remove_file(&pid);
                let ctl = self.ctl();
                self.run_ok(
                    "bird",
                    &[
                        "-c",
                        &cfg,
                        "-s",
                        ctl.to_str().unwrap_or_default(),
                        "-P",
                        pid.to_str().unwrap_or_default(),
                    ],
                );
                Daemon::from_pidfile("bird", &pid)
            }
            Flavor::Frr => {
                let bgpd = require_binary("/usr/lib/frr/bgpd", "frr");
                require_binary("vtysh", "frr");
                // bgpd drops to the frr user; it must reach its directory.
                let _ = Command::new("chmod").arg("777").arg(&self.dir).status();
                let pid = self.dir.join("bgpd.pid");
                let _ = std::fs::remove_file(&pid);
                let spec = self.spec();
                let listen = spec
                    .listen
                    .clone()
                    .unwrap_or_else(|| spec.router_id.clone());
                self.run_ok(
                    bgpd.to_str().unwrap_or_default(),
                    &[
                        "-d",
                        "-S",
                        "-Z",
                        "-f",
                        &cfg,
                        "-i",
                        pid.to_str().unwrap_or_default(),
                        "--vty_socket",
                        self.dir.to_str().unwrap_or_default(),
                        "-l",
                        &listen,
                    ],
                );
                Daemon::from_pidfile("frr-bgpd", &pid)
            }
            Flavor::Gobgp => {
                require_binary("gobgpd", "gobgpd");
                require_binary("gobgp", "gobgpd");
                Daemon::spawn(
                    "gobgpd",
                    self.command("gobgpd")
                        .args(["-f", &cfg, "--api-hosts", &self.api]),
                    Some(&self.dir.join("gobgpd.log")),
                )
            }
        };
        self.daemon = Some(daemon);
        if flavor == Flavor::Gobgp {
            assert!(
                wait_until(Duration::from_secs(10), || !self
                    .cli(&["global"])
                    .is_empty()),
                "gobgpd API did not come up on {} in {}",
                self.api,
                self.ns_name
            );
            for p in self.spec().prefixes.clone() {
                self.cli(&gobgp_rib(&p, &["add", &p]));
            }
        }
    }

    /// Adopts the ToR of a `twillctl lab` (which owns its process) for the
    /// same queries: `dir` is the lab's ToR directory (BIRD's `bird.ctl`,
    /// FRR's vty sockets), `api` GoBGP's API address in `ns_name`.
    pub fn attach(flavor: Flavor, ns_name: &str, dir: &Path, api: &str) -> Peer {
        Peer {
            flavor,
            dir: dir.to_path_buf(),
            daemon: None,
            ns_name: ns_name.to_string(),
            spec: None,
            api: api.to_string(),
        }
    }

    /// The PID of the process this test started (0 when attached or stopped).
    pub fn pid(&self) -> i32 {
        self.daemon.as_ref().map_or(0, Daemon::pid)
    }

    /// Starts the router again with the same config (after a crash).
    pub fn restart(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        self.launch();
    }

    /// The router's own CLI, stdout: `birdc ARGS`, `vtysh -c "ARGS"`,
    /// `gobgp ARGS`.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = match self.flavor {
            // birdc and vtysh only talk to a unix socket: no namespace needed.
            Flavor::Bird => Command::new("birdc")
                .arg("-s")
                .arg(self.ctl())
                .args(args)
                .output(),
            Flavor::Frr => Command::new("vtysh")
                .arg("--vty_socket")
                .arg(&self.dir)
                .args(["-c", &args.join(" ")])
                .output(),
            Flavor::Gobgp => self
                .command("gobgp")
                .args(["--target", &self.api])
                .args(args)
                .output(),
        };
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("cannot ask {}: {e}", self.flavor.name()))
    }

    fn session(&self, neighbor: &str) -> &Session {
        self.spec()
            .sessions
            .iter()
            .find(|s| s.neighbor == neighbor)
            .unwrap_or_else(|| panic!("no session to {neighbor} on this peer"))
    }

    /// The router's view of the session to `neighbor`, for messages.
    pub fn session_view(&self, neighbor: &str) -> String {
        match self.flavor {
            Flavor::Bird => self.cli(&["show", "protocols", "all", &self.session(neighbor).name]),
            Flavor::Frr => self.cli(&["show", "bgp", "neighbors", neighbor]),
            Flavor::Gobgp => self.cli(&["neighbor", neighbor]),
        }
    }

    /// Whether the session to `neighbor` is Established.
    pub fn established(&self, neighbor: &str) -> bool {
        let view = self.session_view(neighbor);
        match self.flavor {
            Flavor::Bird => view.contains("Established"),
            Flavor::Frr => view.contains("BGP state = Established"),
            Flavor::Gobgp => view.to_lowercase().contains("bgp state = established"),
        }
    }

    /// All sessions as the router lists them, for messages.
    pub fn sessions(&self) -> String {
        match self.flavor {
            Flavor::Bird => self.cli(&["show", "protocols", "all"]),
            Flavor::Frr => self.cli(&["show", "bgp", "summary"]),
            Flavor::Gobgp => self.cli(&["neighbor"]),
        }
    }

    /// The router's BGP view of one prefix (paths, next hops, AS paths).
    pub fn route(&self, prefix: &str) -> String {
        match self.flavor {
            Flavor::Bird => self.cli(&["show", "route", prefix, "all"]),
            Flavor::Frr => self.cli(&["show", "bgp", family(prefix), "unicast", prefix]),
            Flavor::Gobgp => self.cli(&gobgp_rib(prefix, &[prefix])),
        }
    }

    /// Whether the router has a route for exactly `prefix` whose view names
    /// `next_hop`.
    pub fn has_route_via(&self, prefix: &str, next_hop: &str) -> bool {
        let view = self.route(prefix);
        let exact = match self.flavor {
            Flavor::Bird => view.lines().any(|l| l.starts_with(prefix)),
            Flavor::Frr => view.contains(&format!("for {prefix}")),
            Flavor::Gobgp => view.contains(prefix),
        };
        exact && view.contains(next_hop)
    }

    /// The whole BGP table, both families, for messages.
    pub fn table(&self) -> String {
        match self.flavor {
            Flavor::Bird => self.cli(&["show", "route", "all"]),
            Flavor::Frr => format!(
                "{}{}",
                self.cli(&["show", "bgp", "ipv4", "unicast"]),
                self.cli(&["show", "bgp", "ipv6", "unicast"])
            ),
            Flavor::Gobgp => format!(
                "{}{}",
                self.cli(&["global", "rib"]),
                self.cli(&["global", "rib", "-a", "ipv6"])
            ),
        }
    }

    /// The usable IPv4 BGP routes as (prefix, next hop) pairs: BIRD's
    /// `unicast` routes with a `via` (an unresolved next hop shows as
    /// `unreachable` with none), FRR's valid paths, GoBGP's paths.
    pub fn ipv4_next_hops(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        match self.flavor {
            // `10.244.0.0/26  unicast [node_1 ...] * (100) [i]` then `\tvia 172.30.0.11 on rack`.
            Flavor::Bird => {
                let mut current: Option<String> = None;
                for l in self.cli(&["show", "route"]).lines() {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    if w.len() >= 2 && w[0].contains('/') {
                        current = (w[1] == "unicast").then(|| w[0].to_string());
                    } else if w.first() == Some(&"via")
                        && let (Some(p), Some(nh)) = (&current, w.get(1))
                    {
                        out.insert((p.clone(), nh.to_string()));
                    }
                }
            }
            Flavor::Frr => {
                let v: Value = serde_json::from_str(&self.cli(&["show", "ip", "bgp", "json"]))
                    .unwrap_or_default();
                for (prefix, paths) in v["routes"].as_object().into_iter().flatten() {
                    for p in paths.as_array().into_iter().flatten() {
                        if p["valid"] != true {
                            continue;
                        }
                        for nh in p["nexthops"].as_array().into_iter().flatten() {
                            if let Some(ip) = nh["ip"].as_str() {
                                out.insert((prefix.clone(), ip.to_string()));
                            }
                        }
                    }
                }
            }
            // `{"10.244.0.0/26":[{"best":true,"attrs":[...,{"type":3,"nexthop":"172.30.0.11"}]}]}`
            Flavor::Gobgp => {
                let v: Value =
                    serde_json::from_str(&self.cli(&["global", "rib", "-j"])).unwrap_or_default();
                for (prefix, paths) in v.as_object().into_iter().flatten() {
                    for p in paths.as_array().into_iter().flatten() {
                        for a in p["attrs"].as_array().into_iter().flatten() {
                            if let Some(nh) = a["nexthop"].as_str() {
                                out.insert((prefix.clone(), nh.to_string()));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Stops originating `prefixes` (BIRD: rewrites its config and reloads;
    /// GoBGP: deletes them from its RIB; FRR: `no network`).
    pub fn withdraw(&mut self, prefixes: &[&str]) {
        let spec = self
            .spec
            .as_mut()
            .expect("this peer was attached, not started by the test");
        spec.prefixes.retain(|p| !prefixes.contains(&p.as_str()));
        let asn = spec.asn;
        std::fs::write(self.config_path(), self.spec().config(&self.dir))
            .expect("write peer config");
        match self.flavor {
            Flavor::Bird => {
                let out = self.cli(&["configure"]);
                assert!(out.contains("Reconfigur"), "birdc configure: {out}");
            }
            Flavor::Gobgp => {
                for p in prefixes {
                    self.cli(&gobgp_rib(p, &["del", p]));
                }
            }
            Flavor::Frr => {
                for p in prefixes {
                    let out = self
                        .command("vtysh")
                        .arg("--vty_socket")
                        .arg(&self.dir)
                        .args([
                            "-c",
                            "configure terminal",
                            "-c",
                            &format!("router bgp {asn}"),
                        ])
                        .args([
                            "-c",
                            &format!(
                                "address-family {} unicast",
                                family(p).trim_start_matches("ip")
                            ),
                        ])
                        .args(["-c", &format!("no network {p}")])
                        .output()
                        .expect("vtysh");
                    assert!(out.status.success(), "vtysh no network {p}: {out:?}");
                }
            }
        }
    }

    /// The last lines of the router's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.dir.join(match self.flavor {
            Flavor::Bird => "bird.log",
            Flavor::Frr => "bgpd.log",
            Flavor::Gobgp => "gobgpd.log",
        });
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// `ipv4` or `ipv6`, for a prefix or an address.
fn family(prefix: &str) -> &'static str {
    if prefix.contains(':') { "ipv6" } else { "ipv4" }
}

/// `gobgp global rib [-a ipv6] ARGS` for a prefix of either family.
fn gobgp_rib<'a>(prefix: &str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["global", "rib"];
    if prefix.contains(':') {
        v.extend(["-a", "ipv6"]);
    }
    v.extend(args);
    v
}

/// twill-bgpd in a namespace, run from a YAML config.
pub struct TwillBgpd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub daemon: Daemon,
    ns_name: String,
}

impl TwillBgpd {
    /// Writes `yaml` (its `status_socket` must be `{dir}/bgpd.sock`, see
    /// [`TwillBgpd::socket_for`]) and starts twill-bgpd; waits for the socket.
    pub fn start(ns: &Netns, dir: &Path, yaml: &str) -> TwillBgpd {
        std::fs::create_dir_all(dir).expect("twill dir");
        let config = dir.join("twill-bgpd.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Self::spawn(ns, dir, config)
    }

    pub fn socket_for(dir: &Path) -> PathBuf {
        dir.join("bgpd.sock")
    }

    fn spawn(ns: &Netns, dir: &Path, config: PathBuf) -> TwillBgpd {
        let socket = Self::socket_for(dir);
        let _ = std::fs::remove_file(&socket);
        let bin = bins::binary("twill-bgpd");
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let daemon = Daemon::spawn(
            "twill-bgpd",
            ns.command(bin.to_str().unwrap_or_default())
                .args(["--config", config.to_str().unwrap_or_default()])
                .env("RUST_LOG", "info"),
            Some(&dir.join(format!("twill-bgpd.{n}.log"))),
        );
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "twill-bgpd did not open its status socket {}",
            socket.display()
        );
        TwillBgpd {
            dir: dir.to_path_buf(),
            socket,
            config,
            daemon,
            ns_name: ns.name().to_string(),
        }
    }

    /// Starts it again with the same config (after a crash or stop).
    pub fn restart(&mut self, ns: &Netns) {
        let next = Self::spawn(ns, &self.dir, self.config.clone());
        *self = next;
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(bins::binary("twill-bgpd"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("twill-bgpd status");
        let _ = &self.ns_name;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `twill-bgpd status -o json`.
    pub fn status(&self) -> Vec<Value> {
        serde_json::from_str(&self.run(&["status", "-o", "json"])).unwrap_or_default()
    }

    /// `twill-bgpd metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        self.run(&["metrics"])
    }

    /// `twill-bgpd status` (the table).
    pub fn status_table(&self) -> String {
        self.run(&["status"])
    }

    /// The status of the peer at `addr`.
    pub fn peer(&self, addr: &str) -> Option<Value> {
        self.status()
            .into_iter()
            .find(|p| p["address"].as_str() == Some(addr))
    }

    pub fn established(&self, addr: &str) -> bool {
        self.peer(addr)
            .is_some_and(|p| p["state"].as_str() == Some("Established"))
    }

    /// Best routes: (prefix, next hops).
    pub fn routes(&self) -> Vec<(String, Vec<String>)> {
        let v: Value = serde_json::from_str(&self.run(&["routes"])).unwrap_or(Value::Null);
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                (
                    r["prefix"].as_str().unwrap_or_default().to_string(),
                    r["next_hops"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect(),
                )
            })
            .collect()
    }

    pub fn has_route(&self, prefix: &str) -> bool {
        self.routes().iter().any(|(p, _)| p == prefix)
    }

    /// The last lines of the logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(&self.dir) {
            let mut logs: Vec<PathBuf> = d
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for l in logs {
                let text = std::fs::read_to_string(&l).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(30);
                out.push_str(&format!(
                    "== {}\n{}\n",
                    l.display(),
                    lines[start..].join("\n")
                ));
            }
        }
        out
    }
}

/// Adds an IPv6 address without duplicate address detection (usable at once).
pub fn add_v6(ns: &Netns, addr: &str, dev: &str) {
    ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
}

/// A ToR namespace and a node namespace joined by a veth:
/// tor0 [`TOR4`]/30 + [`TOR6`]/64 ↔ node0 [`NODE4`]/30 + [`NODE6`]/64.
pub struct TorLink {
    pub tmp: tempfile::TempDir,
    pub tor: Netns,
    pub node: Netns,
}

impl TorLink {
    pub fn new(prefix: &str) -> TorLink {
        crate::require_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let tor = Netns::new(&format!("{prefix}T"));
        let node = Netns::new(&format!("{prefix}N"));
        crate::veth_between(
            &tor,
            "tor0",
            &format!("{TOR4}/30"),
            &node,
            "node0",
            &format!("{NODE4}/30"),
        );
        add_v6(&tor, &format!("{TOR6}/64"), "tor0");
        add_v6(&node, &format!("{NODE6}/64"), "node0");
        TorLink { tmp, tor, node }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    /// Starts `peer` on the ToR (its directory named after its flavor).
    pub fn peer(&self, peer: PeerBuilder) -> Peer {
        let dir = self.dir(peer.flavor.name());
        peer.start(&self.tor, &dir)
    }

    /// BIRD on the ToR (AS 65000, installing BGP routes in its kernel
    /// table) with the IPv4 session `twill4` to the node in AS 65001,
    /// announcing `statics`; `f` adds options to that session.
    pub fn bird(&self, statics: &[&str], f: impl FnOnce(PeerBuilder) -> PeerBuilder) -> Peer {
        self.peer(
            f(Peer::bird().ipv4(65001))
                .announce(statics)
                .kernel_export(),
        )
    }

    /// twill-bgpd on the node (AS 65001, originating 10.1.0.0/24) with one
    /// IPv4 neighbour 10.96.0.1 AS 65000; `neighbor_opts` are extra YAML
    /// keys of that neighbour (flow style, e.g. `password: x`), `top` extra
    /// top-level lines.
    pub fn twill(&self, neighbor_opts: &str, top: &str) -> TwillBgpd {
        let dir = self.dir("twill");
        let yaml = format!(
            r#"
asn: 65001
router_id: 10.96.0.2
listen_address: 10.96.0.2
status_socket: {sock}
networks: [10.1.0.0/24]
{top}
neighbors:
  - {{ address: 10.96.0.1, asn: 65000, hold_time: 9, connect_retry: 2, families: [ipv4] {sep} {neighbor_opts} }}
"#,
            sock = TwillBgpd::socket_for(&dir).display(),
            sep = if neighbor_opts.is_empty() { "" } else { "," },
        );
        TwillBgpd::start(&self.node, &dir, &yaml)
    }

    /// twill-bgpd on the node (AS 65001, router id [`NODE4`], listening on
    /// both families, originating 10.1.0.0/24 and fd00:1::/64) with two
    /// neighbours in AS `peer_asn`, [`TOR4`] for IPv4 and [`TOR6`] for IPv6,
    /// hold time `hold`; `neighbor_opts` (YAML flow-style keys) go on both,
    /// `top` are extra top-level lines.
    pub fn twill_dual(
        &self,
        peer_asn: u32,
        hold: u16,
        neighbor_opts: &str,
        top: &str,
    ) -> TwillBgpd {
        let dir = self.dir("twill");
        let sep = if neighbor_opts.is_empty() { "" } else { "," };
        let yaml = format!(
            r#"
asn: 65001
router_id: {NODE4}
listen_address: "::"
status_socket: {sock}
networks: [10.1.0.0/24, "fd00:1::/64"]
{top}
neighbors:
  - {{ address: {TOR4}, asn: {peer_asn}, hold_time: {hold}, connect_retry: 2, families: [ipv4] {sep} {neighbor_opts} }}
  - {{ address: "{TOR6}", asn: {peer_asn}, hold_time: {hold}, connect_retry: 2, families: [ipv6] {sep} {neighbor_opts} }}
"#,
            sock = TwillBgpd::socket_for(&dir).display(),
        );
        TwillBgpd::start(&self.node, &dir, &yaml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three routers accept the configs the builder writes (each with
    /// its own parser, no namespace needed) and refuse a broken one.
    #[test]
    fn every_flavor_parses_the_config_the_builder_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // iBGP (a route-reflector client must be internal).
        let full = |b: PeerBuilder| {
            b.asn(65001)
                .ipv4(65001)
                .password("s3cret")
                .multihop(2)
                .next_hop_self()
                .ipv6(65001)
                .route_reflector_client()
                .announce(&["10.60.0.0/24", "fd60::/64"])
        };
        let bird = full(Peer::bird())
            .name("tor")
            .bird_options("graceful restart on;")
            .kernel_export()
            .bfd(100, 100, 3);
        let cases = [
            (
                bird.config(dir.path()),
                "bird.conf",
                "bird",
                vec!["-p", "-c"],
            ),
            (
                full(Peer::frr()).config(dir.path()),
                "bgpd.conf",
                "vtysh",
                vec!["--dryrun", "-f"],
            ),
            (
                full(Peer::gobgp()).config(dir.path()),
                "gobgp.toml",
                "gobgpd",
                vec!["--dry-run", "-f"],
            ),
        ];
        for (conf, file, prog, args) in cases {
            let path = dir.path().join(file);
            let check = |text: &str| {
                std::fs::write(&path, text).expect("write");
                let out = Command::new(prog)
                    .args(&args)
                    .arg(&path)
                    .output()
                    .unwrap_or_else(|e| panic!("{prog} is not installed: {e}"));
                (
                    out.status.success(),
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                )
            };
            let (ok, why) = check(&conf);
            assert!(ok, "{prog} refuses the builder's config: {why}\n{conf}");
            let (ok, _) = check(&format!("{conf}\nthis is not config {{\n"));
            assert!(
                !ok,
                "{prog} accepts anything; the check above proves nothing"
            );
        }
    }
}
