//! The vocabulary every part of the speaker shares: prefixes, AS paths,
//! communities and the path attributes of a route, in decoded form.
//!
//! The wire module turns bytes into these and back; the RIB and policy work
//! on them only. Attribute sets are immutable once built and shared behind an
//! `Arc` (see `rib`), so a million prefixes learned in a few thousand UPDATEs
//! hold a few thousand attribute sets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An AS number; 2-octet numbers are the low range of the same space.
pub type Asn = u32;

/// AS_TRANS (RFC 6793): stands in for a 4-octet AS towards 2-octet speakers.
pub const AS_TRANS: Asn = 23456;

/// Address family (AFI). Only unicast (SAFI 1) is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub const fn code(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
        }
    }

    pub const fn from_code(code: u16) -> Option<Afi> {
        match code {
            1 => Some(Afi::Ipv4),
            2 => Some(Afi::Ipv6),
            _ => None,
        }
    }

    pub fn of(prefix: &Prefix) -> Afi {
        match prefix {
            IpNetwork::V4(_) => Afi::Ipv4,
            IpNetwork::V6(_) => Afi::Ipv6,
        }
    }
}

/// SAFI for unicast.
pub const SAFI_UNICAST: u8 = 1;

/// A route's destination. Always normalized: no host bits set.
pub type Prefix = IpNetwork;

/// Zero the host bits of a prefix (the wire may carry them; RFC 4271 says to
/// ignore them).
pub fn normalize(p: Prefix) -> Prefix {
    IpNetwork::new(p.network(), p.prefix()).unwrap_or(p)
}

/// ORIGIN (RFC 4271 5.1.1); lower is preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Origin {
    #[default]
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// One AS_PATH segment (RFC 4271 4.3; confederation segments from RFC 5065).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Sequence(Vec<Asn>),
    Set(Vec<Asn>),
    ConfedSequence(Vec<Asn>),
    ConfedSet(Vec<Asn>),
}

/// AS_PATH, already merged with AS4_PATH when the peer is 2-octet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn from_sequence(asns: impl IntoIterator<Item = Asn>) -> AsPath {
        let v: Vec<Asn> = asns.into_iter().collect();
        if v.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment::Sequence(v)],
        }
    }

    /// Path length for the decision process (RFC 4271 9.1.2.2 a): a SET counts
    /// as one, confederation segments count as zero.
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => 0,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Does the path contain this AS anywhere (loop detection)?
    pub fn contains(&self, asn: Asn) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Sequence(v)
            | AsSegment::Set(v)
            | AsSegment::ConfedSequence(v)
            | AsSegment::ConfedSet(v) => v.contains(&asn),
        })
    }

    /// The neighbouring AS: the first AS of a leading SEQUENCE (RFC 4271 9.1.2.2 c).
    pub fn first_as(&self) -> Option<Asn> {
        match self.segments.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    /// Prepend `asn` `times` times (what an eBGP speaker does on export, and
    /// what the prepend policy action does).
    pub fn prepend(&mut self, asn: Asn, times: usize) {
        if times == 0 {
            return;
        }
        match self.segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() + times <= 255 => {
                v.splice(0..0, std::iter::repeat_n(asn, times));
            }
            _ => self
                .segments
                .insert(0, AsSegment::Sequence(vec![asn; times])),
        }
    }
}

impl fmt::Display for AsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.segments {
            let (open, close, v) = match s {
                AsSegment::Sequence(v) => ("", "", v),
                AsSegment::Set(v) => ("{", "}", v),
                AsSegment::ConfedSequence(v) => ("(", ")", v),
                AsSegment::ConfedSet(v) => ("[", "]", v),
            };
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(open)?;
            let parts: Vec<String> = v.iter().map(|a| a.to_string()).collect();
            f.write_str(&parts.join(" "))?;
            f.write_str(close)?;
        }
        Ok(())
    }
}

/// A standard community (RFC 1997), `high:low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    pub const NO_EXPORT: Community = Community(0xFFFF_FF01);
    pub const NO_ADVERTISE: Community = Community(0xFFFF_FF02);
    pub const NO_EXPORT_SUBCONFED: Community = Community(0xFFFF_FF03);

    pub const fn new(high: u16, low: u16) -> Community {
        Community(((high as u32) << 16) | low as u32)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xFFFF)
    }
}

impl std::str::FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("community {s:?} is not HIGH:LOW"))?;
        let a: u16 = a
            .parse()
            .map_err(|_| format!("community {s:?}: {a:?} is not 0..65535"))?;
        let b: u16 = b
            .parse()
            .map_err(|_| format!("community {s:?}: {b:?} is not 0..65535"))?;
        Ok(Community::new(a, b))
    }
}

/// A large community (RFC 8092), `global:local1:local2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global: u32,
    pub local1: u32,
    pub local2: u32,
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.global, self.local1, self.local2)
    }
}

impl std::str::FromStr for LargeCommunity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let [g, l1, l2] = parts.as_slice() else {
            return Err(format!("large community {s:?} is not GLOBAL:LOCAL1:LOCAL2"));
        };
        let n = |x: &str| {
            x.parse::<u32>()
                .map_err(|_| format!("large community {s:?}: {x:?} is not a 32-bit number"))
        };
        Ok(LargeCommunity {
            global: n(g)?,
            local1: n(l1)?,
            local2: n(l2)?,
        })
    }
}

/// An attribute the speaker does not interpret, kept to pass on when it is
/// optional transitive (with the Partial bit set on the way out).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// The path attributes of a route, decoded. MP_REACH/MP_UNREACH are not
/// attributes here: their next hop lands in `next_hop` and their prefixes in
/// the UPDATE's announced/withdrawn lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttrs {
    pub origin: Origin,
    pub as_path: AsPath,
    /// NEXT_HOP for IPv4, or the global next hop of MP_REACH_NLRI.
    pub next_hop: Option<IpAddr>,
    /// The link-local second next hop of an IPv6 MP_REACH_NLRI, if present.
    pub next_hop_link_local: Option<Ipv6Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(Asn, Ipv4Addr)>,
    /// Sorted and deduplicated.
    pub communities: Vec<Community>,
    /// Sorted and deduplicated.
    pub large_communities: Vec<LargeCommunity>,
    /// RFC 4456.
    pub originator_id: Option<Ipv4Addr>,
    /// RFC 4456; the first entry is the most recent reflector.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognised optional transitive attributes, passed on.
    pub unknown: Vec<RawAttr>,
}

impl PathAttrs {
    pub fn has_community(&self, c: Community) -> bool {
        self.communities.binary_search(&c).is_ok()
    }

    pub fn add_community(&mut self, c: Community) {
        if let Err(i) = self.communities.binary_search(&c) {
            self.communities.insert(i, c);
        }
    }

    pub fn add_large_community(&mut self, c: LargeCommunity) {
        if let Err(i) = self.large_communities.binary_search(&c) {
            self.large_communities.insert(i, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_path_length_counts_a_set_as_one() {
        let p = AsPath {
            segments: vec![
                AsSegment::Sequence(vec![1, 2, 3]),
                AsSegment::Set(vec![4, 5]),
                AsSegment::ConfedSequence(vec![6]),
            ],
        };
        assert_eq!(p.len(), 4);
        assert_eq!(p.first_as(), Some(1));
        assert!(p.contains(5));
        assert_eq!(p.to_string(), "1 2 3 {4 5} (6)");
    }

    #[test]
    fn prepend_extends_the_leading_sequence() {
        let mut p = AsPath::from_sequence([65001]);
        p.prepend(65000, 2);
        assert_eq!(p.to_string(), "65000 65000 65001");
        let mut e = AsPath::default();
        e.prepend(7, 1);
        assert_eq!(e.to_string(), "7");
    }

    #[test]
    fn communities_parse_and_print() {
        let c: Community = "65000:100".parse().unwrap();
        assert_eq!(c, Community::new(65000, 100));
        assert_eq!(c.to_string(), "65000:100");
        assert!("65536:1".parse::<Community>().is_err());
        let l: LargeCommunity = "4200000000:1:2".parse().unwrap();
        assert_eq!(l.to_string(), "4200000000:1:2");
        assert!("1:2".parse::<LargeCommunity>().is_err());
    }

    #[test]
    fn normalize_clears_host_bits() {
        let p: Prefix = "10.0.0.77/24".parse().unwrap();
        assert_eq!(normalize(p).to_string(), "10.0.0.0/24");
    }
}
