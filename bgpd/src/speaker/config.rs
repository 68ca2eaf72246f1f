//! The speaker's and its peers' settings (what the library caller and the
//! standalone YAML fill in), and the library's errors.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::Policy;
use crate::rib::PeerKind;
use crate::transport;
use crate::types::{Afi, Asn};

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("peer {0}: the password is a Secret reference the caller has not resolved")]
    UnresolvedSecret(IpAddr),
    #[error("graceful restart state file {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a peer's TCP MD5 password comes from. The library only uses
/// `Literal`; the caller (twill-node) resolves `SecretRef` against the
/// Kubernetes API and passes a `Literal`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PasswordSource {
    Literal(String),
    SecretRef {
        namespace: String,
        name: String,
        key: String,
    },
}

/// Speaker-wide settings.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    pub asn: Asn,
    pub router_id: Ipv4Addr,
    /// Where to accept BGP connections; None: active opens only.
    pub listen: Option<SocketAddr>,
    pub cluster_id: Option<Ipv4Addr>,
    pub multipath: bool,
    pub graceful_restart: Option<GracefulRestartConfig>,
}

/// Graceful restart (RFC 4724) of this speaker.
#[derive(Debug, Clone)]
pub struct GracefulRestartConfig {
    /// Restart time we advertise (seconds, ≤ 4095).
    pub restart_time: u16,
    /// A file that exists while the speaker runs. Finding it at start means
    /// the previous run did not stop cleanly: we are restarting, so our OPEN
    /// carries the Restart State bit and forwarding-preserved flags.
    pub state_file: Option<PathBuf>,
    /// As helper: how long a restarting peer's stale routes are kept after
    /// its session is back, waiting for its End-of-RIB (RFC 4724 §4.2).
    pub stale_time: Duration,
}

/// RFC 4271 §8: the "large value" the hold timer runs with until the OPEN
/// arrives (4 minutes suggested).
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(240);
/// Default GR helper stale-route bound (BGPConfiguration `staleTime`).
pub const DEFAULT_STALE_TIME: Duration = Duration::from_secs(360);

/// One neighbour.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub port: u16,
    pub asn: Asn,
    pub password: Option<PasswordSource>,
    pub hold_time: u16,
    pub keepalive: Option<u16>,
    pub connect_retry: Duration,
    pub passive: bool,
    /// eBGP multihop TTL.
    pub multihop: Option<u8>,
    /// GTSM (RFC 5082) with the peer at most this many hops away: we send
    /// TTL 255 and accept only TTL ≥ 256 − hops. None: no GTSM.
    pub ttl_security: Option<u8>,
    pub source_address: Option<IpAddr>,
    pub families: Vec<Afi>,
    pub import: Policy,
    pub export: Policy,
    pub graceful_restart: bool,
    pub route_reflector_client: bool,
    pub kind: PeerKind,
    /// Run a single-hop BFD session towards the peer while it is
    /// configured; BFD going Down tears the BGP session down at once. The
    /// BGP session does not wait for BFD to come up (RFC 5882 §4.2 allows
    /// either; waiting would make a peer without BFD unreachable).
    pub bfd: Option<crate::bfd::session::Config>,
    /// How long a connection may stay open without the peer's OPEN (the
    /// OpenSent hold timer, and a second, colliding connection).
    pub open_wait: Duration,
    /// RFC 9687 send hold time: a peer that takes nothing from us for this
    /// long is dropped. None: max(8 min, 2 × the negotiated hold time).
    pub send_hold_time: Option<Duration>,
    /// Most encoded bytes queued towards the peer; a peer that lets the
    /// queue grow past this is not reading: the session goes down
    /// (Cease/Out of Resources) instead of memory growing.
    pub max_send_queue: usize,
}

/// Default bound of a peer's send queue: a whole table is encoded at once
/// when a session comes up (1M IPv4 routes with distinct attributes are
/// about 60 MB), so the bound only stops a peer that never reads.
pub const DEFAULT_MAX_SEND_QUEUE: usize = 256 * 1024 * 1024;

impl PeerConfig {
    /// Defaults: port 179, hold 90 s, connect retry 5 s, IPv4 and IPv6,
    /// import everything, export what this node originates, GR on.
    pub fn new(address: IpAddr, asn: Asn) -> PeerConfig {
        PeerConfig {
            address,
            port: 179,
            asn,
            password: None,
            hold_time: 90,
            keepalive: None,
            connect_retry: Duration::from_secs(5),
            passive: false,
            multihop: None,
            ttl_security: None,
            source_address: None,
            families: vec![Afi::Ipv4, Afi::Ipv6],
            import: Policy::accept_all(),
            export: Policy::originated_only(),
            graceful_restart: true,
            route_reflector_client: false,
            kind: PeerKind::External,
            bfd: None,
            open_wait: DEFAULT_OPEN_WAIT,
            send_hold_time: None,
            max_send_queue: DEFAULT_MAX_SEND_QUEUE,
        }
    }
}
