//! The Loc-RIB's storage: one entry per destination holding every peer's
//! path for it, so the Adj-RIBs-In are views of this table (the paths tagged
//! with a peer) instead of copies. Keys are prefixes packed into integers
//! (IPv4: 8 bytes), values hold one path inline, so a single-peer IPv4 table
//! costs one hash-table slot of 24 bytes (+1 control byte) per prefix plus
//! the shared attributes.

use std::collections::hash_map::Entry;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::PeerId;
use super::hash::FastMap;
use crate::types::{Afi, PathAttrs, Prefix};

/// One peer's (or our own) path to a destination.
#[derive(Debug, Clone)]
pub struct Path {
    pub attrs: Arc<PathAttrs>,
    pub peer: PeerId,
    /// Graceful restart: kept from a session that went down, not yet refreshed.
    pub stale: bool,
}

/// The paths of one destination; one inline, more on the heap. The `Box`
/// keeps this at 16 bytes (a `Vec` inline would make every entry 24).
#[derive(Debug, Clone)]
#[allow(clippy::box_collection)] // deliberate: see above
pub enum Paths {
    Empty,
    One(Path),
    Many(Box<Vec<Path>>),
}

impl Paths {
    pub fn empty() -> Paths {
        Paths::Empty
    }

    pub fn as_slice(&self) -> &[Path] {
        match self {
            Paths::Empty => &[],
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v.as_slice(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub fn get(&self, peer: PeerId) -> Option<&Path> {
        self.as_slice().iter().find(|p| p.peer == peer)
    }

    /// Insert or replace the path of `p.peer`; the replaced path if any.
    pub fn upsert(&mut self, p: Path) -> Option<Path> {
        match self {
            Paths::Empty => {
                *self = Paths::One(p);
                None
            }
            Paths::One(old) if old.peer == p.peer => Some(std::mem::replace(old, p)),
            Paths::One(old) => {
                let first = old.clone();
                *self = Paths::Many(Box::new(vec![first, p]));
                None
            }
            Paths::Many(v) => {
                if let Some(slot) = v.iter_mut().find(|x| x.peer == p.peer) {
                    return Some(std::mem::replace(slot, p));
                }
                if v.is_empty() {
                    *self = Paths::One(p);
                } else {
                    v.push(p);
                }
                None
            }
        }
    }

    /// Remove the path of `peer`, returning it.
    pub fn remove(&mut self, peer: PeerId) -> Option<Path> {
        match self {
            Paths::One(old) if old.peer == peer => match std::mem::replace(self, Paths::empty()) {
                Paths::One(p) => Some(p),
                Paths::Empty | Paths::Many(_) => None,
            },
            Paths::Empty | Paths::One(_) => None,
            Paths::Many(v) => {
                let i = v.iter().position(|x| x.peer == peer)?;
                let out = v.swap_remove(i);
                if v.len() <= 1 {
                    *self = v.pop().map_or(Paths::Empty, Paths::One);
                }
                Some(out)
            }
        }
    }

    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Path)) {
        match self {
            Paths::Empty => {}
            Paths::One(p) => f(p),
            Paths::Many(v) => v.iter_mut().for_each(f),
        }
    }
}

fn v4_key(n: &Ipv4Network) -> u64 {
    (u64::from(u32::from(n.network())) << 8) | u64::from(n.prefix())
}

fn v4_prefix(k: u64) -> Prefix {
    let addr = Ipv4Addr::from((k >> 8) as u32);
    let len = (k & 0xFF) as u8;
    Ipv4Network::new(addr, len)
        .map(IpNetwork::V4)
        .unwrap_or(IpNetwork::V4(Ipv4Network::from(addr)))
}

fn v6_key(n: &Ipv6Network) -> (u128, u8) {
    (u128::from(n.network()), n.prefix())
}

fn v6_prefix(k: (u128, u8)) -> Prefix {
    let addr = Ipv6Addr::from(k.0);
    Ipv6Network::new(addr, k.1)
        .map(IpNetwork::V6)
        .unwrap_or(IpNetwork::V6(Ipv6Network::from(addr)))
}

/// Both families' destinations.
#[derive(Debug, Default)]
pub struct LocTable {
    v4: FastMap<u64, Paths>,
    v6: FastMap<(u128, u8), Paths>,
}

impl LocTable {
    pub fn get(&self, p: &Prefix) -> Option<&Paths> {
        match p {
            IpNetwork::V4(n) => self.v4.get(&v4_key(n)),
            IpNetwork::V6(n) => self.v6.get(&v6_key(n)),
        }
    }

    /// Run `f` on the paths of `p` (empty when absent); the entry is created
    /// when `f` leaves paths and removed when it leaves none.
    pub fn with_paths<R>(&mut self, p: &Prefix, f: impl FnOnce(&mut Paths) -> R) -> R {
        fn run<K: std::hash::Hash + Eq, R>(
            map: &mut FastMap<K, Paths>,
            k: K,
            f: impl FnOnce(&mut Paths) -> R,
        ) -> R {
            match map.entry(k) {
                Entry::Occupied(mut e) => {
                    let r = f(e.get_mut());
                    if e.get().is_empty() {
                        e.remove();
                    }
                    r
                }
                Entry::Vacant(v) => {
                    let mut paths = Paths::empty();
                    let r = f(&mut paths);
                    if !paths.is_empty() {
                        v.insert(paths);
                    }
                    r
                }
            }
        }
        match p {
            IpNetwork::V4(n) => run(&mut self.v4, v4_key(n), f),
            IpNetwork::V6(n) => run(&mut self.v6, v6_key(n), f),
        }
    }

    /// Every destination of one family (or both).
    pub fn iter(&self, afi: Option<Afi>) -> impl Iterator<Item = (Prefix, &Paths)> + '_ {
        let v4 = matches!(afi, None | Some(Afi::Ipv4));
        let v6 = matches!(afi, None | Some(Afi::Ipv6));
        let a = self
            .v4
            .iter()
            .filter(move |_| v4)
            .map(|(k, p)| (v4_prefix(*k), p));
        let b = self
            .v6
            .iter()
            .filter(move |_| v6)
            .map(|(k, p)| (v6_prefix(*k), p));
        a.chain(b)
    }

    /// Run `f` on every path of one family.
    pub fn for_each_path_mut(&mut self, afi: Afi, mut f: impl FnMut(&mut Path)) {
        match afi {
            Afi::Ipv4 => self.v4.values_mut().for_each(|p| p.for_each_mut(&mut f)),
            Afi::Ipv6 => self.v6.values_mut().for_each(|p| p.for_each_mut(&mut f)),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Give memory back after mass removal (session down, End-of-RIB): hash
    /// tables never shrink by themselves.
    pub fn shrink(&mut self) {
        fn one<K: std::hash::Hash + Eq, V>(m: &mut FastMap<K, V>) {
            if m.capacity() > 1024 && m.len() < m.capacity() / 4 {
                m.shrink_to_fit();
            }
        }
        one(&mut self.v4);
        one(&mut self.v6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for s in ["0.0.0.0/0", "10.1.2.0/24", "255.255.255.255/32"] {
            let p: Prefix = s.parse().unwrap();
            let IpNetwork::V4(n) = p else { unreachable!() };
            assert_eq!(v4_prefix(v4_key(&n)), p);
        }
        for s in ["::/0", "2001:db8::/32", "2001:db8::1/128"] {
            let p: Prefix = s.parse().unwrap();
            let IpNetwork::V6(n) = p else { unreachable!() };
            assert_eq!(v6_prefix(v6_key(&n)), p);
        }
    }

    #[test]
    fn one_path_is_stored_inline() {
        assert_eq!(std::mem::size_of::<Paths>(), 16);
        let a = Arc::new(PathAttrs::default());
        let path = |peer| Path {
            attrs: a.clone(),
            peer,
            stale: false,
        };
        let mut p = Paths::empty();
        assert!(p.upsert(path(1)).is_none());
        assert!(matches!(p, Paths::One(_)));
        assert!(p.upsert(path(2)).is_none());
        assert!(p.upsert(path(2)).is_some());
        assert_eq!(p.as_slice().len(), 2);
        assert!(p.remove(1).is_some());
        assert!(matches!(p, Paths::One(_)));
        assert!(p.remove(1).is_none());
        assert!(p.remove(2).is_some());
        assert!(p.is_empty());
    }
}
