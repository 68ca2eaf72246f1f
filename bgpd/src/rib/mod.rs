//! The RIB: Adj-RIBs-In, the Loc-RIB with the decision process, and the
//! Adj-RIBs-Out after export policy. Pure: no I/O, no clock, no tasks.
//!
//! Layout (what is stored, and why it is enough):
//! - `table`: one entry per destination with every peer's path (peer id,
//!   interned attributes, GR stale flag). The Adj-RIB-In of a peer is the set
//!   of paths tagged with it, after import policy; routes the import policy
//!   rejects are remembered by prefix only (for counts and max-prefix).
//!   Whole-peer operations (session down, GR stale, End-of-RIB) scan the table.
//! - `intern`: one `Arc<PathAttrs>` per distinct attribute set.
//! - `decision`: RFC 4271 9.1.2 with RFC 4456 tie-breaks and ECMP.
//! - `export`: split horizon, route reflection, NO_EXPORT, no transit,
//!   export policy, eBGP rewrite. Each peer's Adj-RIB-Out holds what it was
//!   sent; destinations whose best path changed are queued per peer and
//!   turned into deltas by [`Rib::take_exports`] (`adj_out`).
//! - `gr`: graceful restart helper (stale routes, End-of-RIB).
//!
//! Every mutating call returns [`Changes`]: the best-route changes for felix
//! and the max-prefix signal for the session (which sends NOTIFICATION
//! Cease/1, calls [`Rib::remove_peer`] and reconnects after
//! [`MaxPrefix::restart_after`]).
//!
//! Import: from an eBGP peer, LOCAL_PREF is ignored; a route with our AS in
//! its AS_PATH (eBGP), our router ID as ORIGINATOR_ID, or our cluster ID in
//! its CLUSTER_LIST is a loop and treated as a withdrawal.

mod adj_out;
mod decision;
mod export;
mod gr;
mod hash;
mod intern;
mod table;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub use decision::Selection;

use crate::policy::{Decision, EvalCtx, MaxPrefix, MaxPrefixAction, Policy, Source};
use crate::types::{Afi, Asn, PathAttrs, Prefix, normalize};
use export::Target;
use hash::{FastMap, FastSet};
use intern::Interner;
use table::{LocTable, Path};

/// A peer, as numbered by the session layer.
pub type PeerId = u32;

/// Reserved: the "peer" of locally originated routes.
pub const LOCAL_PEER: PeerId = PeerId::MAX;

/// This speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    pub asn: Asn,
    pub router_id: Ipv4Addr,
    /// Set: this node is a route reflector with this cluster ID.
    pub cluster_id: Option<Ipv4Addr>,
    /// ECMP: several next hops when equal paths come from different peers.
    pub multipath: bool,
}

/// What kind of router a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// Another Twill node.
    Node,
    /// A ToR or route server.
    External,
}

/// A peer's identity and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub addr: IpAddr,
    pub asn: Asn,
    pub router_id: Ipv4Addr,
    /// Our address on the session (next-hop self).
    pub local_addr: IpAddr,
    /// The peer is a route-reflector client of ours.
    pub rr_client: bool,
    pub kind: PeerKind,
}

/// The route felix installs for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestRoute {
    /// The best path's next hop first, then the other ECMP next hops.
    pub next_hops: Vec<IpAddr>,
    pub attrs: Arc<PathAttrs>,
    /// Originated by this node.
    pub local: bool,
}

/// What one mutating call changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Best-route changes, in processing order (None: no route any more).
    pub best: Vec<(Prefix, Option<BestRoute>)>,
    /// This peer went over its limit with action Restart: send NOTIFICATION
    /// Cease/1, then `remove_peer`. Its further announcements are ignored.
    pub max_prefix_exceeded: Option<PeerId>,
    /// This peer went over its limit with action Warn (reported once per
    /// crossing).
    pub max_prefix_warning: Option<PeerId>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.best.is_empty()
            && self.max_prefix_exceeded.is_none()
            && self.max_prefix_warning.is_none()
    }
}

/// One UPDATE's worth of Adj-RIB-Out delta (the wire packs it into as many
/// messages as needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub withdrawn: Vec<Prefix>,
    pub attrs: Option<Arc<PathAttrs>>,
    pub announced: Vec<Prefix>,
}

/// Per-peer prefix counts for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Prefixes the peer currently announces (accepted or filtered).
    pub received: usize,
    /// Of those, accepted by the import policy.
    pub accepted: usize,
    /// Prefixes currently advertised to the peer.
    pub advertised: usize,
}

#[derive(Debug)]
struct PeerState {
    info: PeerInfo,
    import: Arc<Policy>,
    export: Arc<Policy>,
    accepted: usize,
    rejected: FastSet<Prefix>,
    adj_out: FastMap<Prefix, Arc<PathAttrs>>,
    dirty: FastSet<Prefix>,
    over_limit: bool,
}

impl PeerState {
    fn target(&self) -> Target<'_> {
        Target {
            id: self.info.id,
            info: &self.info,
            policy: &self.export,
        }
    }
}

/// The routing information base. See the module doc.
#[derive(Debug)]
pub struct Rib {
    cfg: LocalConfig,
    peers: FastMap<PeerId, PeerState>,
    loc: LocTable,
    interner: Interner,
}

/// The selected route of a destination, with what decides re-export.
struct Chosen {
    route: BestRoute,
    src: PeerId,
    attrs_ptr: *const PathAttrs,
}

fn choose(paths: &[Path], cfg: &LocalConfig, peers: &FastMap<PeerId, PeerState>) -> Option<Chosen> {
    let look = |id: PeerId| peers.get(&id).map(|p| &p.info);
    let sel = decision::select(paths, cfg, look)?;
    let b = paths.get(sel.best)?;
    Some(Chosen {
        route: decision::best_route(paths, &sel, look)?,
        src: b.peer,
        attrs_ptr: Arc::as_ptr(&b.attrs),
    })
}

fn best_path<'a>(
    paths: &'a [Path],
    cfg: &LocalConfig,
    peers: &FastMap<PeerId, PeerState>,
) -> Option<&'a Path> {
    let sel = decision::select(paths, cfg, |id| peers.get(&id).map(|p| &p.info))?;
    paths.get(sel.best)
}

impl Rib {
    pub fn new(cfg: LocalConfig) -> Rib {
        Rib {
            cfg,
            peers: FastMap::default(),
            loc: LocTable::default(),
            interner: Interner::default(),
        }
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    /// Register a peer (session Established), or replace its info and
    /// policies when it is known (its routes, possibly stale, stay). Its
    /// Adj-RIB-Out starts empty: call [`Rib::full_export`] next. Policy
    /// changes apply to routes received from now on (ask the peer for a
    /// route refresh to re-evaluate the rest). `LOCAL_PEER` is reserved and
    /// ignored.
    pub fn add_peer(&mut self, info: PeerInfo, import: Policy, export: Policy) {
        if info.id == LOCAL_PEER {
            return;
        }
        let released = match self.peers.get_mut(&info.id) {
            Some(p) => {
                p.info = info;
                p.import = Arc::new(import);
                p.export = Arc::new(export);
                p.over_limit = false;
                p.dirty.clear();
                let n = p.adj_out.len();
                p.adj_out.clear();
                n
            }
            None => {
                let id = info.id;
                self.peers.insert(
                    id,
                    PeerState {
                        info,
                        import: Arc::new(import),
                        export: Arc::new(export),
                        accepted: 0,
                        rejected: FastSet::default(),
                        adj_out: FastMap::default(),
                        dirty: FastSet::default(),
                        over_limit: false,
                    },
                );
                0
            }
        };
        for _ in 0..released {
            self.interner.released();
        }
    }

    /// Replace a live peer's policies, keeping its Adj-RIB-Out: the next
    /// [`Rib::full_export`] announces what now passes and withdraws what no
    /// longer does. Routes already received keep their import result until
    /// the peer re-sends them (route refresh). False for an unknown peer.
    pub fn set_policies(&mut self, id: PeerId, import: Policy, export: Policy) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        p.import = Arc::new(import);
        p.export = Arc::new(export);
        p.over_limit = false;
        true
    }

    /// Session down without graceful restart: withdraw everything the peer
    /// sent and forget it.
    pub fn remove_peer(&mut self, id: PeerId) -> Changes {
        let mut ch = Changes::default();
        if !self.peers.contains_key(&id) {
            return ch;
        }
        self.drop_paths(id, None, |_| true, &mut ch);
        if let Some(p) = self.peers.remove(&id) {
            for _ in 0..p.adj_out.len() {
                self.interner.released();
            }
        }
        ch
    }

    /// One UPDATE from a peer (already validated by the wire layer).
    pub fn update(
        &mut self,
        id: PeerId,
        withdrawn: &[Prefix],
        attrs: Option<PathAttrs>,
        announced: &[Prefix],
    ) -> Changes {
        let mut ch = Changes::default();
        let Some(peer) = self.peers.get_mut(&id) else {
            return ch;
        };
        for p in withdrawn {
            let p = normalize(*p);
            peer.rejected.remove(&p);
        }
        for p in withdrawn {
            self.set_path(normalize(*p), id, None, &mut ch);
        }
        let Some(mut attrs) = attrs else {
            self.check_limit(id, &mut ch);
            return ch;
        };
        let Some(peer) = self.peers.get(&id) else {
            return ch;
        };
        if peer.over_limit
            && peer
                .import
                .max_prefix
                .is_some_and(|m| m.action == MaxPrefixAction::Restart)
        {
            return ch;
        }
        let ebgp = peer.info.asn != self.cfg.asn;
        let looped = (ebgp && attrs.as_path.contains(self.cfg.asn))
            || attrs.originator_id == Some(self.cfg.router_id)
            || self
                .cfg
                .cluster_id
                .is_some_and(|c| attrs.cluster_list.contains(&c));
        if looped {
            for p in announced {
                self.set_path(normalize(*p), id, None, &mut ch);
            }
            return ch;
        }
        if ebgp {
            attrs.local_pref = None;
        }
        let import = Arc::clone(&peer.import);
        let ctx = EvalCtx {
            local_asn: self.cfg.asn,
            local_addr: None,
            source: Source::from(peer.info.kind),
            target: None,
            reflector: self.cfg.cluster_id.is_some(),
        };
        // Modifications depend on the term, not the prefix: intern once per term.
        let mut interned: Vec<(Option<usize>, Arc<PathAttrs>)> = Vec::new();
        for p in announced {
            let p = normalize(*p);
            match import.decide(&p, &attrs, &ctx) {
                Decision::Reject => {
                    self.set_path(p, id, None, &mut ch);
                    if let Some(peer) = self.peers.get_mut(&id) {
                        peer.rejected.insert(p);
                    }
                }
                Decision::Accept(term) => {
                    let arc = match interned.iter().find(|(t, _)| *t == term) {
                        Some((_, a)) => Arc::clone(a),
                        None => {
                            let a = match import.modify(term, &attrs, &ctx) {
                                Some(m) => self.interner.intern(m),
                                None => self.interner.intern(attrs.clone()),
                            };
                            interned.push((term, Arc::clone(&a)));
                            a
                        }
                    };
                    if let Some(peer) = self.peers.get_mut(&id) {
                        peer.rejected.remove(&p);
                    }
                    self.set_path(p, id, Some(arc), &mut ch);
                }
            }
        }
        self.check_limit(id, &mut ch);
        ch
    }

    /// Originate a route (a pod address block). Next hop: leave it unset to
    /// have each iBGP peer get our session address.
    pub fn originate(&mut self, prefix: Prefix, attrs: PathAttrs) -> Changes {
        let mut ch = Changes::default();
        let a = self.interner.intern(attrs);
        self.set_path(normalize(prefix), LOCAL_PEER, Some(a), &mut ch);
        ch
    }

    pub fn withdraw_local(&mut self, prefix: Prefix) -> Changes {
        let mut ch = Changes::default();
        self.set_path(normalize(prefix), LOCAL_PEER, None, &mut ch);
        ch
    }

    /// Every destination's best route.
    pub fn best(&self) -> impl Iterator<Item = (Prefix, BestRoute)> + '_ {
        self.loc.iter(None).filter_map(|(p, paths)| {
            choose(paths.as_slice(), &self.cfg, &self.peers).map(|c| (p, c.route))
        })
    }

    /// The best route of one destination.
    pub fn best_route(&self, prefix: &Prefix) -> Option<BestRoute> {
        let paths = self.loc.get(&normalize(*prefix))?;
        choose(paths.as_slice(), &self.cfg, &self.peers).map(|c| c.route)
    }

    /// What the peer was last sent for a destination (its Adj-RIB-Out entry).
    pub fn advertised(&self, id: PeerId, prefix: &Prefix) -> Option<Arc<PathAttrs>> {
        self.peers
            .get(&id)?
            .adj_out
            .get(&normalize(*prefix))
            .cloned()
    }

    /// The path a peer gave us for a destination, after import policy.
    pub fn received(&self, id: PeerId, prefix: &Prefix) -> Option<Arc<PathAttrs>> {
        let paths = self.loc.get(&normalize(*prefix))?;
        paths.get(id).map(|p| Arc::clone(&p.attrs))
    }

    pub fn peer_counts(&self, id: PeerId) -> PeerCounts {
        self.peers
            .get(&id)
            .map(|p| PeerCounts {
                received: p.accepted + p.rejected.len(),
                accepted: p.accepted,
                advertised: p.adj_out.len(),
            })
            .unwrap_or_default()
    }

    /// The peer's max-prefix setting (for the session's reconnect delay).
    pub fn max_prefix(&self, id: PeerId) -> Option<MaxPrefix> {
        self.peers.get(&id)?.import.max_prefix
    }

    /// Number of destinations in the Loc-RIB.
    pub fn len(&self) -> usize {
        self.loc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loc.len() == 0
    }

    /// Distinct attribute sets alive (after sweeping unused ones).
    pub fn attribute_sets(&mut self) -> usize {
        self.interner.sweep();
        self.interner.len()
    }

    fn check_limit(&mut self, id: PeerId, ch: &mut Changes) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(m) = p.import.max_prefix else {
            return;
        };
        let received = p.accepted + p.rejected.len();
        if received <= m.limit as usize {
            if m.action == MaxPrefixAction::Warn {
                p.over_limit = false;
            }
            return;
        }
        if p.over_limit {
            return;
        }
        p.over_limit = true;
        match m.action {
            MaxPrefixAction::Warn => ch.max_prefix_warning = Some(id),
            MaxPrefixAction::Restart => ch.max_prefix_exceeded = Some(id),
        }
    }

    /// Remove `peer`'s paths (of one family, or all) for which `which`
    /// holds, recording the changes in `ch`.
    fn drop_paths(
        &mut self,
        peer: PeerId,
        afi: Option<Afi>,
        which: impl Fn(&Path) -> bool,
        ch: &mut Changes,
    ) {
        let held: Vec<Prefix> = self
            .loc
            .iter(afi)
            .filter(|(_, paths)| paths.get(peer).is_some_and(&which))
            .map(|(p, _)| p)
            .collect();
        for p in held {
            self.set_path(p, peer, None, ch);
        }
        self.loc.shrink();
    }

    /// Set (Some) or remove (None) `peer`'s path for `prefix`; record the
    /// best-route change for felix and queue re-export where it changed.
    fn set_path(
        &mut self,
        prefix: Prefix,
        peer: PeerId,
        attrs: Option<Arc<PathAttrs>>,
        ch: &mut Changes,
    ) {
        let Rib {
            cfg,
            peers,
            loc,
            interner,
        } = self;
        let outcome = loc.with_paths(&prefix, |paths| {
            let before = if paths.is_empty() {
                None
            } else {
                choose(paths.as_slice(), cfg, peers)
            };
            let old = match attrs {
                Some(a) => paths.upsert(Path {
                    attrs: a,
                    peer,
                    stale: false,
                }),
                None => {
                    let old = paths.remove(peer);
                    old.as_ref()?;
                    old
                }
            };
            let added = old.is_none();
            let removed = paths.get(peer).is_none();
            let after = choose(paths.as_slice(), cfg, peers);
            Some((before, after, old.is_some(), added, removed))
        });
        let Some((before, after, released, added, removed)) = outcome else {
            return;
        };
        if released {
            interner.released();
        }
        if peer != LOCAL_PEER
            && let Some(p) = peers.get_mut(&peer)
        {
            if added {
                p.accepted += 1;
            } else if removed {
                p.accepted = p.accepted.saturating_sub(1);
            }
        }
        let src_changed = match (&before, &after) {
            (None, None) => false,
            (Some(b), Some(a)) => b.src != a.src || b.attrs_ptr != a.attrs_ptr,
            _ => true,
        };
        let after_src = after.as_ref().map(|a| a.src);
        match (before, after) {
            (None, None) => {}
            (Some(b), Some(a)) if b.route == a.route && !src_changed => {}
            (_, a) => ch.best.push((prefix, a.map(|c| c.route))),
        }
        if !src_changed {
            return;
        }
        let src_info = after_src.and_then(|s| {
            if s == LOCAL_PEER {
                None
            } else {
                peers.get(&s).map(|p| (s, p.info.clone()))
            }
        });
        for t in peers.values_mut() {
            let possible = match (&after_src, &src_info) {
                (None, _) => false,
                (Some(_), Some((sid, si))) => {
                    export::may_export(cfg, Some((*sid, si)), &t.target())
                }
                (Some(_), None) => true,
            };
            if possible || t.adj_out.contains_key(&prefix) {
                t.dirty.insert(prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rib_can_live_in_a_task_and_be_shared() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<Rib>();
        is_send_sync::<Changes>();
        is_send_sync::<Export>();
    }
}
