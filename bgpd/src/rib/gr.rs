//! Graceful restart helper (RFC 4724): a peer's routes kept stale while
//! it restarts, and dropped by End-of-RIB when not refreshed.

use super::{Changes, PeerId, Rib};
use crate::types::Afi;

impl Rib {
    /// Graceful restart helper (RFC 4724): the session went down; keep the
    /// peer's routes of both families, marked stale, until
    /// [`Rib::end_of_rib`] (or the stale timer: call `end_of_rib` then too).
    pub fn peer_stale(&mut self, id: PeerId) {
        self.peer_stale_families(id, &[Afi::Ipv4, Afi::Ipv6]);
    }

    /// As [`Rib::peer_stale`], for the families the peer's GR capability
    /// preserved forwarding for; its routes of other families are withdrawn
    /// now (RFC 4724 4.2).
    pub fn peer_stale_families(&mut self, id: PeerId, keep: &[Afi]) -> Changes {
        let mut ch = Changes::default();
        let Some(p) = self.peers.get_mut(&id) else {
            return ch;
        };
        p.rejected.clear();
        p.dirty.clear();
        p.over_limit = false;
        let n = p.adj_out.len();
        p.adj_out.clear();
        for _ in 0..n {
            self.interner.released();
        }
        for afi in [Afi::Ipv4, Afi::Ipv6] {
            if keep.contains(&afi) {
                self.loc.for_each_path_mut(afi, |path| {
                    if path.peer == id {
                        path.stale = true;
                    }
                });
            } else {
                self.drop_paths(id, Some(afi), |_| true, &mut ch);
            }
        }
        self.loc.shrink();
        ch
    }

    /// End-of-RIB for one family: drop what the peer has not refreshed.
    pub fn end_of_rib(&mut self, id: PeerId, afi: Afi) -> Changes {
        let mut ch = Changes::default();
        self.drop_paths(id, Some(afi), |p| p.stale, &mut ch);
        ch
    }
}
