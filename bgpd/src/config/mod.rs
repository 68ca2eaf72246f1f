//! The standalone `twill-bgpd` YAML configuration (serde-saphyr) and its
//! translation into the library's [`SpeakerConfig`] / [`PeerConfig`].
//!
//! ```yaml
//! asn: 65001
//! router_id: 10.0.0.1
//! listen_address: 10.96.0.2      # default 0.0.0.0; listen_port default 179
//! status_socket: /run/twill-bgpd.sock
//! metrics_address: 127.0.0.1:9179  # optional, GET /metrics
//! graceful_restart: { restart_time: 120, stale_time: 360, state_file: /var/lib/twill-bgpd/running }
//! networks: [10.1.0.0/24, "fd00:1::/64"]
//! neighbors:
//!   - address: 10.96.0.1
//!     asn: 65000
//!     password: secret            # or password_file: /etc/twill/bgp.key
//!     hold_time: 9                # keepalive, connect_retry (s), port, passive
//!     multihop: 2                 # eBGP multihop TTL; ttl_security: true for GTSM
//!                                 # (with multihop N: the peer is at most N hops away)
//!     send_hold_time: 480         # RFC 9687 (s); default max(480, 2 × hold time)
//!     open_wait: 240              # s a connection may wait for the peer's OPEN
//!     families: [ipv4]
//!     max_prefix: { limit: 1000, action: teardown, restart_after: 30 }
//!     import: { default: accept, terms: [{ prefixes: ["10.0.0.0/8 le 24"], action: accept }] }
//!     export: { default: originated }
//!     route_reflector_client: false
//!     bfd: { min_tx_ms: 300, min_rx_ms: 300, multiplier: 3 }  # single-hop BFD; `bfd: {}` for these defaults
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod yaml;
pub use yaml::*;

use crate::policy::{
    DefaultAction, Match, MaxPrefix, MaxPrefixAction, Modify, Policy, PrefixList, PrefixRange,
    Term, Verdict,
};
use crate::rib::PeerKind;
use crate::speaker::{GracefulRestartConfig, PasswordSource, PeerConfig, SpeakerConfig};
use crate::types::{Afi, Asn, Community, LargeCommunity, PathAttrs, Prefix};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub asn: Asn,
    pub router_id: Ipv4Addr,
    #[serde(default = "default_listen")]
    pub listen_address: IpAddr,
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Do not listen (active opens only).
    #[serde(default)]
    pub no_listen: bool,
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// Prometheus metrics over HTTP (`GET /metrics`), e.g. 127.0.0.1:9179.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    #[serde(default)]
    pub multipath: bool,
    #[serde(default)]
    pub graceful_restart: Option<GrYaml>,
    #[serde(default)]
    pub networks: Vec<Prefix>,
    #[serde(default)]
    pub neighbors: Vec<NeighborYaml>,
}

fn default_listen() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn default_port() -> u16 {
    179
}
fn default_status_socket() -> PathBuf {
    PathBuf::from("/run/twill-bgpd.sock")
}

/// Everything the binary needs to start.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub speaker: SpeakerConfig,
    pub peers: Vec<PeerConfig>,
    pub networks: Vec<(Prefix, PathAttrs)>,
    pub status_socket: PathBuf,
    pub metrics_address: Option<SocketAddr>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// Validates and translates into the library's types.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        if self.router_id.is_unspecified() {
            return Err(bad("router_id must not be 0.0.0.0".into()));
        }
        if let Some(g) = &self.graceful_restart
            && g.restart_time > 4095
        {
            return Err(bad("graceful_restart.restart_time is at most 4095 s".into()));
        }
        let speaker = SpeakerConfig {
            asn: self.asn,
            router_id: self.router_id,
            listen: (!self.no_listen)
                .then(|| SocketAddr::new(self.listen_address, self.listen_port)),
            cluster_id: self.cluster_id,
            multipath: self.multipath,
            graceful_restart: self
                .graceful_restart
                .as_ref()
                .map(|g| GracefulRestartConfig {
                    restart_time: g.restart_time,
                    state_file: g.state_file.clone(),
                    stale_time: Duration::from_secs(u64::from(g.stale_time)),
                }),
        };
        let mut peers = Vec::new();
        for n in &self.neighbors {
            let at = |m: &str| bad(format!("neighbor {}: {m}", n.address));
            let mut p = PeerConfig::new(n.address, n.asn);
            p.port = n.port.unwrap_or(179);
            p.password = match (&n.password, &n.password_file) {
                (Some(_), Some(_)) => {
                    return Err(at("set password or password_file, not both"));
                }
                (Some(s), None) => Some(PasswordSource::Literal(s.clone())),
                (None, Some(f)) => {
                    let s = std::fs::read_to_string(f)
                        .map_err(|e| at(&format!("password_file {}: {e}", f.display())))?;
                    Some(PasswordSource::Literal(
                        s.trim_end_matches(['\n', '\r']).to_string(),
                    ))
                }
                (None, None) => None,
            };
            if let Some(PasswordSource::Literal(s)) = &p.password
                && s.len() > crate::transport::MD5_MAX_KEY_LEN
            {
                return Err(at("password longer than 80 bytes"));
            }
            if let Some(h) = n.hold_time {
                if h == 1 || h == 2 {
                    return Err(at("hold_time must be 0 or at least 3"));
                }
                p.hold_time = h;
            }
            if let Some(k) = n.keepalive {
                if p.hold_time != 0 && k >= p.hold_time {
                    return Err(at("keepalive must be below hold_time"));
                }
                p.keepalive = Some(k);
            }
            if let Some(c) = n.connect_retry {
                p.connect_retry = Duration::from_secs(c.max(1));
            }
            p.passive = n.passive;
            p.multihop = n.multihop;
            // GTSM hop count: the multihop distance (1 for a direct peer).
            p.ttl_security = n.ttl_security.then(|| n.multihop.unwrap_or(1).max(1));
            if let Some(s) = n.send_hold_time {
                p.send_hold_time = Some(Duration::from_secs(s.max(1)));
            }
            if let Some(s) = n.open_wait {
                p.open_wait = Duration::from_secs(s.max(1));
            }
            p.source_address = n.source_address;
            if let Some(b) = n.bfd {
                if !(10..=60_000).contains(&b.min_tx_ms) || !(10..=60_000).contains(&b.min_rx_ms) {
                    return Err(at("bfd intervals must be between 10 and 60000 ms"));
                }
                if b.multiplier == 0 {
                    return Err(at("bfd multiplier must be at least 1"));
                }
                p.bfd = Some(crate::bfd::session::Config {
                    min_tx: Duration::from_millis(b.min_tx_ms.into()),
                    min_rx: Duration::from_millis(b.min_rx_ms.into()),
                    multiplier: b.multiplier,
                });
            }
            if let Some(f) = &n.families {
                p.families = f
                    .iter()
                    .map(|f| match f {
                        FamilyYaml::Ipv4 => Afi::Ipv4,
                        FamilyYaml::Ipv6 => Afi::Ipv6,
                    })
                    .collect();
                if p.families.is_empty() {
                    return Err(at("families must not be empty"));
                }
            }
            p.import = match &n.import {
                Some(f) => filter(f).map_err(|e| at(&format!("import: {e}")))?,
                None => Policy::accept_all(),
            };
            p.export = match &n.export {
                Some(f) => filter(f).map_err(|e| at(&format!("export: {e}")))?,
                None => Policy::originated_only(),
            };
            p.import.max_prefix = n.max_prefix.as_ref().map(|m| MaxPrefix {
                limit: m.limit,
                action: match m.action {
                    MaxPrefixActionYaml::Warn => MaxPrefixAction::Warn,
                    MaxPrefixActionYaml::Teardown => MaxPrefixAction::Restart,
                },
                restart_after: Duration::from_secs(m.restart_after.max(1)),
            });
            p.graceful_restart = n.graceful_restart;
            p.route_reflector_client = n.route_reflector_client;
            p.kind = match n.kind {
                Some(KindYaml::Node) => PeerKind::Node,
                _ => PeerKind::External,
            };
            if peers.iter().any(|q: &PeerConfig| q.address == p.address) {
                return Err(at("configured twice"));
            }
            peers.push(p);
        }
        let networks = self
            .networks
            .iter()
            .map(|p| (crate::types::normalize(*p), PathAttrs::default()))
            .collect();
        Ok(Loaded {
            speaker,
            peers,
            networks,
            status_socket: self.status_socket.clone(),
            metrics_address: self.metrics_address,
        })
    }
}

fn prefix_range(s: &str) -> Result<PrefixRange, String> {
    let mut it = s.split_whitespace();
    let net: Prefix = it
        .next()
        .ok_or("empty prefix")?
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))?;
    let net = crate::types::normalize(net);
    let mut r = PrefixRange::exact(net);
    while let Some(k) = it.next() {
        let v: u8 = it
            .next()
            .ok_or(format!("{s:?}: {k} needs a length"))?
            .parse()
            .map_err(|e| format!("{s:?}: {e}"))?;
        match k {
            "ge" => {
                r.ge = v;
                if r.le < v {
                    r.le = if net.is_ipv4() { 32 } else { 128 };
                }
            }
            "le" => r.le = v,
            _ => return Err(format!("{s:?}: expected ge or le, got {k}")),
        }
    }
    Ok(r)
}

fn filter(f: &FilterYaml) -> Result<Policy, String> {
    let mut terms = Vec::new();
    for t in &f.terms {
        let prefixes = if t.prefixes.is_empty() {
            None
        } else {
            let ranges = t
                .prefixes
                .iter()
                .map(|s| prefix_range(s))
                .collect::<Result<Vec<_>, _>>()?;
            Some(PrefixList::new(ranges).map_err(|e| e.to_string())?)
        };
        let comms = |v: &[String]| -> Result<Vec<Community>, String> {
            v.iter().map(|s| s.parse::<Community>()).collect()
        };
        let large = |v: &[String]| -> Result<Vec<LargeCommunity>, String> {
            v.iter().map(|s| s.parse::<LargeCommunity>()).collect()
        };
        let mut modify = Vec::new();
        if let Some(lp) = t.set_local_pref {
            modify.push(Modify::SetLocalPref(lp));
        }
        if let Some(m) = t.set_med {
            modify.push(Modify::SetMed(m));
        }
        if let Some(n) = t.prepend {
            modify.push(Modify::Prepend(n));
        }
        if !t.add_communities.is_empty() {
            modify.push(Modify::AddCommunities(comms(&t.add_communities)?));
        }
        if !t.add_large_communities.is_empty() {
            modify.push(Modify::AddLargeCommunities(large(
                &t.add_large_communities,
            )?));
        }
        terms.push(Term {
            matches: Match {
                prefixes,
                communities: comms(&t.communities)?,
                large_communities: large(&t.large_communities)?,
                as_path_contains: t.as_path_contains,
                ..Match::default()
            },
            verdict: match t.action {
                VerdictYaml::Accept => Verdict::Accept,
                VerdictYaml::Reject => Verdict::Reject,
            },
            modify,
        });
    }
    Ok(Policy {
        terms,
        default: match f.default {
            DefaultYaml::Accept => DefaultAction::Accept,
            DefaultYaml::Reject => DefaultAction::Reject,
            DefaultYaml::Originated => DefaultAction::OriginatedOnly,
        },
        next_hop_self: f.next_hop_self,
        max_prefix: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
asn: 65001
router_id: 10.0.0.1
listen_address: 10.96.0.2
listen_port: 1179
status_socket: /tmp/x.sock
graceful_restart: { restart_time: 90, state_file: /tmp/gr }
networks: [10.1.0.0/24, "fd00:1::/64"]
neighbors:
  - address: 10.96.0.1
    asn: 65000
    password: secret
    hold_time: 3
    keepalive: 1
    ttl_security: true
    bfd: { min_tx_ms: 100, min_rx_ms: 200, multiplier: 4 }
    families: [ipv4]
    max_prefix: { limit: 10, action: teardown, restart_after: 5 }
    import:
      default: reject
      terms:
        - prefixes: ["10.0.0.0/8 le 24"]
          action: accept
          set_local_pref: 200
          add_communities: ["65000:1"]
    export: { default: originated }
  - address: "fd00::1"
    asn: 65001
    multihop: 3
    route_reflector_client: true
    kind: node
"#;

    #[test]
    fn full_example_loads() {
        let c = Config::parse(FULL).unwrap();
        let l = c.load().unwrap();
        assert_eq!(l.speaker.listen, Some("10.96.0.2:1179".parse().unwrap()));
        assert_eq!(l.networks.len(), 2);
        let p = &l.peers[0];
        assert_eq!(p.hold_time, 3);
        assert_eq!(p.keepalive, Some(1));
        let bfd = p.bfd.unwrap();
        assert_eq!(bfd.min_tx, Duration::from_millis(100));
        assert_eq!(bfd.min_rx, Duration::from_millis(200));
        assert_eq!(bfd.multiplier, 4);
        assert!(l.peers[1].bfd.is_none());
        assert_eq!(p.ttl_security, Some(1));
        assert_eq!(p.families, vec![Afi::Ipv4]);
        assert_eq!(p.import.max_prefix.unwrap().limit, 10);
        assert_eq!(p.import.terms.len(), 1);
        let pfx: Prefix = "10.2.0.0/16".parse().unwrap();
        assert!(
            p.import.terms[0]
                .matches
                .prefixes
                .as_ref()
                .unwrap()
                .matches(&pfx)
        );
        let long: Prefix = "10.2.0.0/25".parse().unwrap();
        assert!(
            !p.import.terms[0]
                .matches
                .prefixes
                .as_ref()
                .unwrap()
                .matches(&long)
        );
        assert_eq!(p.password, Some(PasswordSource::Literal("secret".into())));
        assert!(l.peers[1].route_reflector_client);
        assert_eq!(l.peers[1].kind, PeerKind::Node);
    }

    #[test]
    fn mistakes_are_reported_with_the_neighbor() {
        let e = Config::parse("asn: 1\nrouter_id: 1.1.1.1\nneighbours: []\n").unwrap_err();
        assert!(e.to_string().contains("neighbours"), "{e}");
        let c = Config::parse(
            "asn: 1\nrouter_id: 1.1.1.1\nneighbors:\n  - {address: 10.0.0.1, asn: 2, hold_time: 2}\n",
        )
        .unwrap();
        let e = c.load().unwrap_err().to_string();
        assert!(e.contains("10.0.0.1") && e.contains("hold_time"), "{e}");
        let c = Config::parse(
            "asn: 1\nrouter_id: 1.1.1.1\nneighbors:\n  - {address: 10.0.0.1, asn: 2, bfd: {multiplier: 0}}\n",
        )
        .unwrap();
        let e = c.load().unwrap_err().to_string();
        assert!(
            e.contains("10.0.0.1") && e.contains("bfd multiplier"),
            "{e}"
        );
        let c = Config::parse(
            "asn: 1\nrouter_id: 1.1.1.1\nneighbors:\n  - {address: 10.0.0.1, asn: 2, bfd: {}}\n",
        )
        .unwrap();
        let l = c.load().unwrap();
        assert_eq!(l.peers[0].bfd, Some(crate::bfd::session::Config::default()));
    }
}
