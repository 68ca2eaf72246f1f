//! The decision process (RFC 4271 9.1.2), as elimination over the candidate
//! paths of one destination, so the result depends only on the set of paths
//! and never on the order they arrived in (MED is not a total order: it only
//! compares routes from the same neighbouring AS, 9.1.2.2 c).
//!
//! Steps: a locally originated route wins; highest LOCAL_PREF (100 when
//! absent); shortest AS_PATH; lowest ORIGIN; lowest MED among routes from the
//! same neighbouring AS (absent = 0); eBGP over iBGP. The survivors are the
//! multipath set (one per peer by construction). Then the tie-breaks pick the
//! best: lowest router ID (ORIGINATOR_ID when present, RFC 4456 section 9),
//! shortest CLUSTER_LIST, lowest peer address, lowest peer id.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use super::table::Path;
use super::{BestRoute, LOCAL_PEER, LocalConfig, PeerId, PeerInfo};
use crate::types::{Asn, Origin};

/// The outcome for one destination: indices into its paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub best: usize,
    /// Other paths of the multipath set (empty unless multipath is on).
    pub others: Vec<usize>,
}

struct Facts {
    idx: usize,
    local: bool,
    local_pref: u32,
    path_len: usize,
    origin: Origin,
    neighbor_as: Asn,
    med: u32,
    ebgp: bool,
    router_id: Ipv4Addr,
    cluster_len: usize,
    addr: Option<IpAddr>,
    peer: PeerId,
}

fn facts<'a>(
    idx: usize,
    p: &Path,
    cfg: &LocalConfig,
    peer: &impl Fn(PeerId) -> Option<&'a PeerInfo>,
) -> Facts {
    let info = if p.peer == LOCAL_PEER {
        None
    } else {
        peer(p.peer)
    };
    let a = &p.attrs;
    Facts {
        idx,
        local: p.peer == LOCAL_PEER,
        local_pref: a.local_pref.unwrap_or(100),
        path_len: a.as_path.len(),
        origin: a.origin,
        neighbor_as: a.as_path.first_as().unwrap_or(cfg.asn),
        med: a.med.unwrap_or(0),
        ebgp: info.is_some_and(|i| i.asn != cfg.asn),
        router_id: a
            .originator_id
            .or(info.map(|i| i.router_id))
            .unwrap_or(cfg.router_id),
        cluster_len: a.cluster_list.len(),
        addr: info.map(|i| i.addr),
        peer: p.peer,
    }
}

/// Keep the candidates whose key is the minimum.
fn keep_min<K: Ord>(c: &mut Vec<Facts>, key: impl Fn(&Facts) -> K) {
    if let Some(m) = c.iter().map(&key).min() {
        c.retain(|f| key(f) == m);
    }
}

fn tie_break(a: &Facts, b: &Facts) -> Ordering {
    (a.router_id, a.cluster_len, a.addr, a.peer).cmp(&(b.router_id, b.cluster_len, b.addr, b.peer))
}

/// Select the best path (and the multipath set) among `paths`.
pub fn select<'a>(
    paths: &[Path],
    cfg: &LocalConfig,
    peer: impl Fn(PeerId) -> Option<&'a PeerInfo>,
) -> Option<Selection> {
    if paths.len() <= 1 {
        return (!paths.is_empty()).then(|| Selection {
            best: 0,
            others: Vec::new(),
        });
    }
    let mut c: Vec<Facts> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| facts(i, p, cfg, &peer))
        .collect();
    keep_min(&mut c, |f| !f.local);
    keep_min(&mut c, |f| std::cmp::Reverse(f.local_pref));
    keep_min(&mut c, |f| f.path_len);
    keep_min(&mut c, |f| f.origin);
    let beaten: Vec<bool> = c
        .iter()
        .map(|f| {
            c.iter()
                .any(|g| g.neighbor_as == f.neighbor_as && g.med < f.med)
        })
        .collect();
    let mut beaten = beaten.into_iter();
    c.retain(|_| !beaten.next().unwrap_or(false));
    keep_min(&mut c, |f| !f.ebgp);
    let best = c.iter().min_by(|a, b| tie_break(a, b))?;
    let best_idx = best.idx;
    let others = if cfg.multipath && !best.local {
        c.iter().map(|f| f.idx).filter(|i| *i != best_idx).collect()
    } else {
        Vec::new()
    };
    Some(Selection {
        best: best_idx,
        others,
    })
}

/// The next hop a path gives felix.
fn next_hop<'a>(p: &Path, peer: &impl Fn(PeerId) -> Option<&'a PeerInfo>) -> Option<IpAddr> {
    p.attrs.next_hop.or_else(|| {
        if p.peer == LOCAL_PEER {
            None
        } else {
            peer(p.peer).map(|i| i.addr)
        }
    })
}

/// The route felix gets: the best path's attributes; the best path's next
/// hop first, then the other multipath next hops in ascending order.
pub fn best_route<'a>(
    paths: &[Path],
    sel: &Selection,
    peer: impl Fn(PeerId) -> Option<&'a PeerInfo>,
) -> Option<BestRoute> {
    let b = paths.get(sel.best)?;
    let mut next_hops: Vec<IpAddr> = next_hop(b, &peer).into_iter().collect();
    if !sel.others.is_empty() {
        let mut rest: Vec<IpAddr> = sel
            .others
            .iter()
            .filter_map(|i| paths.get(*i))
            .filter_map(|p| next_hop(p, &peer))
            .filter(|a| !next_hops.contains(a))
            .collect();
        rest.sort_unstable();
        rest.dedup();
        next_hops.extend(rest);
    }
    Some(BestRoute {
        next_hops,
        attrs: b.attrs.clone(),
        local: b.peer == LOCAL_PEER,
    })
}
