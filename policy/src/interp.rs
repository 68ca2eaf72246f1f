//! A small interpreter of the rendered table: decides what the kernel would
//! do with the first packet of a flow, following nftables' semantics for
//! the parts Twill uses (base chains in priority order where `accept` ends
//! only the current base chain and `drop` is final; jump, goto, return;
//! verdict maps; named and anonymous sets; the Pass mark). It exists so
//! tests can check that the rendered rules decide exactly what the model
//! ([`crate::explain`](mod@crate::explain)) decides, for any policies.

use std::net::IpAddr;

use crate::explain::Packet;
use crate::ir::{AddrTarget, Atom, Element, Fam, Hook, Side, Table, Verdict};

/// Where a packet meets the table: hook and interfaces.
#[derive(Debug, Clone)]
pub struct Path {
    pub hook: Hook,
    pub iif: String,
    pub oif: String,
}

enum Outcome {
    Accept,
    Drop,
    /// Fell off the end or returned.
    Return,
}

struct Run<'a> {
    table: &'a Table,
    pkt: &'a Packet,
    path: &'a Path,
    mark: u32,
}

fn in_nets(ip: IpAddr, t: &AddrTarget, table: &Table) -> bool {
    match t {
        AddrTarget::Nets(v) => v.iter().any(|n| n.contains(ip)),
        AddrTarget::Set(s) => table
            .sets
            .get(s)
            .is_some_and(|s| s.elements.contains(&Element::Addr(ip))),
    }
}

impl Run<'_> {
    fn side(&self, s: Side) -> (IpAddr, Option<u16>) {
        match s {
            Side::Src => (self.pkt.src, self.pkt.sport),
            Side::Dst => (self.pkt.dst, self.pkt.dport),
        }
    }

    fn atom(&self, a: &Atom) -> bool {
        let fam = Fam::of(self.pkt.src);
        match a {
            Atom::Family(f) => *f == fam,
            Atom::L4Proto { proto, neg } => (self.pkt.proto == *proto) != *neg,
            Atom::Addr {
                fam: f,
                side,
                neg,
                target,
            } => *f == fam && (in_nets(self.side(*side).0, target, self.table) != *neg),
            Atom::Port { side, neg, ranges } => match self.side(*side).1 {
                Some(p) => ranges.iter().any(|(a, b)| (*a..=*b).contains(&p)) != *neg,
                None => false,
            },
            Atom::AddrPort {
                fam: f,
                side,
                neg,
                set,
            } => {
                let (ip, port) = self.side(*side);
                let Some(port) = port else { return false };
                *f == fam
                    && self.table.sets.get(set).is_some_and(|s| {
                        s.elements
                            .contains(&Element::AddrProtoPort(ip, self.pkt.proto, port))
                    }) != *neg
            }
            Atom::Icmp {
                fam: f,
                type_,
                code,
                neg,
            } => {
                let want = if *f == Fam::V4 { 1 } else { 58 };
                if *f != fam || self.pkt.proto != want {
                    return false;
                }
                let Some((t, c)) = self.pkt.icmp else {
                    return false;
                };
                (t == *type_ && code.is_none_or(|x| x == c)) != *neg
            }
            Atom::MarkSet(bit) => self.mark & bit == *bit,
            // The interpreter sees only the first packet of a flow.
            Atom::CtEstablished | Atom::CtInvalid => false,
        }
    }

    fn chain(&mut self, name: &str, depth: usize) -> Outcome {
        if depth > 16 {
            return Outcome::Drop;
        }
        let Some(chain) = self.table.chains.get(name) else {
            return Outcome::Drop;
        };
        for r in &chain.rules {
            if !r.atoms.iter().all(|a| self.atom(a)) {
                continue;
            }
            if let Some(b) = r.set_mark {
                self.mark |= b;
            }
            if let Some(b) = r.clear_mark {
                self.mark &= !b;
            }
            let target = match &r.verdict {
                Verdict::Accept => return Outcome::Accept,
                Verdict::Drop => return Outcome::Drop,
                Verdict::Return => return Outcome::Return,
                Verdict::Continue => continue,
                Verdict::Goto(c) => return self.chain(c, depth + 1),
                Verdict::Jump(c) => c.clone(),
                Verdict::Dispatch { by_oif, map } => {
                    let key = if *by_oif {
                        &self.path.oif
                    } else {
                        &self.path.iif
                    };
                    match self.table.maps.get(map).and_then(|m| m.get(key)) {
                        Some(c) => c.clone(),
                        None => continue,
                    }
                }
            };
            match self.chain(&target, depth + 1) {
                Outcome::Return => {}
                other => return other,
            }
        }
        Outcome::Return
    }
}

/// Whether the table lets the packet through at this hook.
pub fn passes(table: &Table, pkt: &Packet, path: &Path) -> bool {
    let mut bases: Vec<(&String, i32)> = table
        .chains
        .iter()
        .filter_map(|(n, c)| c.hook.filter(|(h, _)| *h == path.hook).map(|(_, p)| (n, p)))
        .collect();
    bases.sort_by_key(|(n, p)| (*p, (*n).clone()));
    let mut run = Run {
        table,
        pkt,
        path,
        mark: 0,
    };
    for (name, _) in bases {
        if let Outcome::Drop = run.chain(name, 0) {
            return false;
        }
    }
    true
}
