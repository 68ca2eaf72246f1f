//! Attribute interning: one `Arc<PathAttrs>` per distinct attribute set.
//!
//! Every path in the RIB and every Adj-RIB-Out entry points at an interned
//! set, so a full table of a million prefixes learned from a few thousand
//! UPDATEs holds a few thousand sets, and "same attributes" is a pointer
//! comparison. Sets nobody else holds any more are swept once the number of
//! releases since the last sweep reaches the number of sets (amortised O(1)
//! per release). The set uses std's SipHash: it runs once per UPDATE, and its
//! keys come from peers.

use std::collections::HashSet;
use std::sync::Arc;

use crate::types::PathAttrs;

#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Arc<PathAttrs>>,
    released: usize,
}

impl Interner {
    /// The shared copy of `a`.
    pub fn intern(&mut self, a: PathAttrs) -> Arc<PathAttrs> {
        if let Some(x) = self.set.get(&a) {
            return Arc::clone(x);
        }
        let arc = Arc::new(a);
        self.set.insert(Arc::clone(&arc));
        arc
    }

    /// A holder dropped (or is about to drop) one reference.
    pub fn released(&mut self) {
        self.released += 1;
        if self.released >= self.set.len().max(1024) {
            self.sweep();
        }
    }

    /// Drop every set only the interner holds.
    pub fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.released = 0;
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_share_one_arc_and_unused_ones_are_swept() {
        let mut i = Interner::default();
        let a = i.intern(PathAttrs::default());
        let b = i.intern(PathAttrs::default());
        assert!(Arc::ptr_eq(&a, &b));
        let c = i.intern(PathAttrs {
            med: Some(1),
            ..Default::default()
        });
        assert_eq!(i.len(), 2);
        drop(c);
        i.sweep();
        assert_eq!(i.len(), 1);
        drop((a, b));
        i.sweep();
        assert!(i.is_empty());
    }
}
