//! Prefix lists with ge/le, compiled for lookup.
//!
//! A range `net ge G le L` matches a prefix inside `net` whose length is in
//! `G..=L`. Compiled form: per address family, a hash map from (range length,
//! masked network) to the set of allowed prefix lengths (a 129-bit set), plus
//! the sorted list of range lengths that occur. A lookup masks the prefix to
//! each of those lengths (at most 33 or 129, usually a handful) and probes the
//! map once per length, so its cost does not grow with the number of entries.

use std::collections::HashMap;
use std::fmt;

use ipnetwork::IpNetwork;

use super::PolicyError;
use crate::types::{Prefix, normalize};

/// One entry of a prefix list: `net` with lengths `ge..=le`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixRange {
    pub net: Prefix,
    pub ge: u8,
    pub le: u8,
}

impl PrefixRange {
    /// Exactly this prefix.
    pub fn exact(net: Prefix) -> PrefixRange {
        let n = normalize(net);
        PrefixRange {
            net: n,
            ge: n.prefix(),
            le: n.prefix(),
        }
    }

    /// `net` and everything more specific inside it.
    pub fn orlonger(net: Prefix) -> PrefixRange {
        let n = normalize(net);
        PrefixRange {
            net: n,
            ge: n.prefix(),
            le: width(&n),
        }
    }

    /// Does this single range match `p` (the reference, uncompiled semantics)?
    pub fn matches(&self, p: &Prefix) -> bool {
        let len = p.prefix();
        if self.net.is_ipv4() != p.is_ipv4() || len < self.ge || len > self.le {
            return false;
        }
        let (a, _) = bits(p);
        let (n, nl) = bits(&self.net);
        len >= nl && mask(a, nl, width(p)) == n
    }
}

impl fmt::Display for PrefixRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ge {} le {}", self.net, self.ge, self.le)
    }
}

/// 129 bits: which prefix lengths (0..=128) a range allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LenSet([u64; 3]);

impl LenSet {
    fn add_range(&mut self, ge: u8, le: u8) {
        for l in ge..=le {
            let l = usize::from(l);
            if let Some(w) = self.0.get_mut(l / 64) {
                *w |= 1u64 << (l % 64);
            }
        }
    }
    fn contains(&self, l: u8) -> bool {
        let l = usize::from(l);
        self.0
            .get(l / 64)
            .is_some_and(|w| w & (1u64 << (l % 64)) != 0)
    }
}

#[derive(Debug, Clone, Default)]
struct Family {
    /// Distinct range lengths, ascending.
    lens: Vec<u8>,
    map: HashMap<(u8, u128), LenSet>,
}

impl Family {
    fn insert(&mut self, net: u128, nl: u8, ge: u8, le: u8) {
        self.map.entry((nl, net)).or_default().add_range(ge, le);
        if let Err(i) = self.lens.binary_search(&nl) {
            self.lens.insert(i, nl);
        }
    }

    fn matches(&self, addr: u128, len: u8, width: u8) -> bool {
        for &nl in &self.lens {
            if nl > len {
                break;
            }
            if let Some(set) = self.map.get(&(nl, mask(addr, nl, width)))
                && set.contains(len)
            {
                return true;
            }
        }
        false
    }
}

/// A compiled prefix list: matches when any of its ranges matches.
#[derive(Debug, Clone, Default)]
pub struct PrefixList {
    ranges: Vec<PrefixRange>,
    v4: Family,
    v6: Family,
}

impl PrefixList {
    /// Compiles the ranges; `ge`/`le` must satisfy `len(net) <= ge <= le <= width`.
    pub fn new(ranges: impl IntoIterator<Item = PrefixRange>) -> Result<PrefixList, PolicyError> {
        let mut out = PrefixList::default();
        for r in ranges {
            let net = normalize(r.net);
            let w = width(&net);
            if r.ge < net.prefix() || r.ge > r.le || r.le > w {
                return Err(PolicyError::PrefixRange {
                    range: r.to_string(),
                    reason: format!(
                        "need {} <= ge <= le <= {w} (the network's length and the address width)",
                        net.prefix()
                    ),
                });
            }
            let (a, nl) = bits(&net);
            if net.is_ipv4() {
                out.v4.insert(a, nl, r.ge, r.le);
            } else {
                out.v6.insert(a, nl, r.ge, r.le);
            }
            out.ranges.push(PrefixRange { net, ..r });
        }
        Ok(out)
    }

    pub fn ranges(&self) -> &[PrefixRange] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Does any range match `p`?
    pub fn matches(&self, p: &Prefix) -> bool {
        let (a, len) = bits(p);
        match p {
            IpNetwork::V4(_) => self.v4.matches(a, len, 32),
            IpNetwork::V6(_) => self.v6.matches(a, len, 128),
        }
    }
}

fn width(p: &Prefix) -> u8 {
    if p.is_ipv4() { 32 } else { 128 }
}

/// The address as a left-aligned-in-its-width integer, and the length.
fn bits(p: &Prefix) -> (u128, u8) {
    match p {
        IpNetwork::V4(n) => (u128::from(u32::from(n.ip())), n.prefix()),
        IpNetwork::V6(n) => (u128::from(n.ip()), n.prefix()),
    }
}

/// Keep the top `len` bits of a `width`-bit address.
fn mask(addr: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let drop = u32::from(width.saturating_sub(len));
    (addr >> drop) << drop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn r(s: &str, ge: u8, le: u8) -> PrefixRange {
        PrefixRange { net: p(s), ge, le }
    }

    #[test]
    fn ge_le_bounds_are_inclusive() {
        let l = PrefixList::new([r("10.0.0.0/8", 16, 24)]).unwrap();
        assert!(!l.matches(&p("10.0.0.0/8")));
        assert!(!l.matches(&p("10.1.0.0/15")));
        assert!(l.matches(&p("10.1.0.0/16")));
        assert!(l.matches(&p("10.1.2.0/24")));
        assert!(!l.matches(&p("10.1.2.0/25")));
        assert!(!l.matches(&p("11.1.2.0/24")));
    }

    #[test]
    fn exact_and_default_route_and_host_routes() {
        let l = PrefixList::new([
            PrefixRange::exact(p("0.0.0.0/0")),
            PrefixRange::exact(p("192.0.2.1/32")),
        ])
        .unwrap();
        assert!(l.matches(&p("0.0.0.0/0")));
        assert!(!l.matches(&p("0.0.0.0/1")));
        assert!(l.matches(&p("192.0.2.1/32")));
        assert!(!l.matches(&p("192.0.2.0/32")));
        let all = PrefixList::new([PrefixRange::orlonger(p("0.0.0.0/0"))]).unwrap();
        assert!(all.matches(&p("203.0.113.7/32")));
        assert!(!all.matches(&p("::/0")), "families never mix");
    }

    #[test]
    fn ipv6_length_128_is_representable() {
        let l = PrefixList::new([r("2001:db8::/32", 128, 128)]).unwrap();
        assert!(l.matches(&p("2001:db8::1/128")));
        assert!(!l.matches(&p("2001:db8::/127")));
        assert!(!l.matches(&p("2001:db9::1/128")));
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(PrefixList::new([r("10.0.0.0/16", 8, 24)]).is_err());
        assert!(PrefixList::new([r("10.0.0.0/16", 24, 20)]).is_err());
        assert!(PrefixList::new([r("10.0.0.0/16", 16, 33)]).is_err());
    }

    #[test]
    fn compiled_lookup_agrees_with_a_linear_scan() {
        let mut ranges = Vec::new();
        for i in 0..300u32 {
            let a = std::net::Ipv4Addr::from(i.wrapping_mul(0x9E37_79B9) & 0xFFFF_FF00);
            let len = (8 + i % 17) as u8;
            let net = normalize(IpNetwork::V4(ipnetwork::Ipv4Network::new(a, len).unwrap()));
            ranges.push(PrefixRange {
                net,
                ge: len + (i % 3) as u8,
                le: (len + 4 + (i % 5) as u8).min(32),
            });
        }
        let list = PrefixList::new(ranges.clone()).unwrap();
        for j in 0..20_000u32 {
            let a = std::net::Ipv4Addr::from(j.wrapping_mul(0x85EB_CA6B));
            let len = (j % 33) as u8;
            let q = normalize(IpNetwork::V4(ipnetwork::Ipv4Network::new(a, len).unwrap()));
            let linear = ranges.iter().any(|r| r.matches(&q));
            assert_eq!(list.matches(&q), linear, "{q}");
        }
    }
}
