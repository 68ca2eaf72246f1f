//! The Adj-RIBs-Out: what each peer was sent, and the deltas to send it
//! (per-peer queues of changed destinations, or the whole table).

use std::collections::HashMap;
use std::sync::Arc;

use super::hash::FastSet;
use super::{Export, PeerId, Rib, best_path, export};
use crate::types::{PathAttrs, Prefix};

impl Rib {
    /// Whether [`Rib::take_exports`] has anything to look at for the peer.
    pub fn has_exports(&self, id: PeerId) -> bool {
        self.peers.get(&id).is_some_and(|p| !p.dirty.is_empty())
    }

    /// The Adj-RIB-Out deltas queued for a peer since the last call.
    pub fn take_exports(&mut self, id: PeerId) -> Vec<Export> {
        let Some(t) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        let mut dirty: Vec<Prefix> = std::mem::take(&mut t.dirty).into_iter().collect();
        dirty.sort_unstable();
        let Some(t) = self.peers.get(&id) else {
            return Vec::new();
        };
        let mut new = Vec::with_capacity(dirty.len());
        let mut cache = export::BuildCache::default();
        for p in dirty {
            let attrs = self.loc.get(&p).and_then(|paths| {
                let b = best_path(paths.as_slice(), &self.cfg, &self.peers)?;
                let src = self.peers.get(&b.peer).map(|s| &s.info);
                cache.export(&self.cfg, &mut self.interner, &p, b, src, &t.target())
            });
            new.push((p, attrs));
        }
        self.apply_exports(id, new, false)
    }

    /// The whole Adj-RIB-Out, recomputed (session up, route refresh, policy
    /// change); withdrawals for what was sent before and is no longer.
    pub fn full_export(&mut self, id: PeerId) -> Vec<Export> {
        let Some(t) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        t.dirty.clear();
        let Some(t) = self.peers.get(&id) else {
            return Vec::new();
        };
        let mut new = Vec::new();
        let mut cache = export::BuildCache::default();
        for (p, paths) in self.loc.iter(None) {
            let Some(b) = best_path(paths.as_slice(), &self.cfg, &self.peers) else {
                continue;
            };
            let src = self.peers.get(&b.peer).map(|s| &s.info);
            if let Some(a) = cache.export(&self.cfg, &mut self.interner, &p, b, src, &t.target()) {
                new.push((p, Some(a)));
            }
        }
        new.sort_unstable_by_key(|e| e.0);
        self.apply_exports(id, new, true)
    }

    /// Diff `new` against the peer's Adj-RIB-Out, record it, and group the
    /// announcements by attribute set. `full`: `new` is the whole table.
    fn apply_exports(
        &mut self,
        id: PeerId,
        new: Vec<(Prefix, Option<Arc<PathAttrs>>)>,
        full: bool,
    ) -> Vec<Export> {
        let Some(t) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        let mut withdrawn = Vec::new();
        let mut groups: Vec<(Arc<PathAttrs>, Vec<Prefix>)> = Vec::new();
        let mut group_of: HashMap<*const PathAttrs, usize> = HashMap::new();
        let mut released = 0usize;
        let mut keep: FastSet<Prefix> = FastSet::default();
        for (p, attrs) in new {
            match attrs {
                Some(a) => {
                    if full {
                        keep.insert(p);
                    }
                    if t.adj_out.get(&p).is_some_and(|old| Arc::ptr_eq(old, &a)) && !full {
                        released += 1;
                        continue;
                    }
                    if t.adj_out.insert(p, Arc::clone(&a)).is_some() {
                        released += 1;
                    }
                    let g = *group_of.entry(Arc::as_ptr(&a)).or_insert_with(|| {
                        groups.push((Arc::clone(&a), Vec::new()));
                        groups.len() - 1
                    });
                    if let Some((_, v)) = groups.get_mut(g) {
                        v.push(p);
                    }
                }
                None => {
                    if t.adj_out.remove(&p).is_some() {
                        released += 1;
                        withdrawn.push(p);
                    }
                }
            }
        }
        if full {
            let gone: Vec<Prefix> = t
                .adj_out
                .keys()
                .filter(|p| !keep.contains(p))
                .copied()
                .collect();
            for p in gone {
                t.adj_out.remove(&p);
                released += 1;
                withdrawn.push(p);
            }
            withdrawn.sort_unstable();
        }
        for _ in 0..released {
            self.interner.released();
        }
        let mut out = Vec::new();
        if !withdrawn.is_empty() {
            out.push(Export {
                withdrawn,
                attrs: None,
                announced: Vec::new(),
            });
        }
        out.extend(groups.into_iter().map(|(a, announced)| Export {
            withdrawn: Vec::new(),
            attrs: Some(a),
            announced,
        }));
        out
    }
}
