//! What one peer is sent for one destination (Adj-RIB-Out entry), before and
//! after its export policy.
//!
//! Fixed rules first: never back to the peer the route came from;
//! NO_ADVERTISE; NO_EXPORT towards eBGP; never from one External peer to
//! another (no ToR-to-ToR transit); iBGP split horizon, relaxed by route
//! reflection (RFC 4456: from a client to everyone, from a non-client to
//! clients only; ORIGINATOR_ID set if absent, our cluster ID prepended to
//! CLUSTER_LIST). Then the peer's export policy. Then the eBGP rewrite: our
//! AS prepended, next hop = our session address, no LOCAL_PREF, no MED from
//! elsewhere, no reflection attributes.

use std::sync::Arc;

use super::intern::Interner;
use super::table::Path;
use super::{LOCAL_PEER, LocalConfig, PeerId, PeerInfo, PeerKind};
use crate::policy::{Decision, DefaultAction, EvalCtx, Policy, Source};
use crate::types::{Community, PathAttrs, Prefix};

/// The target side of an export: who and with what policy.
pub struct Target<'a> {
    pub id: PeerId,
    pub info: &'a PeerInfo,
    pub policy: &'a Policy,
}

/// Can a route from `src` (None: ours) ever reach `t`, whatever its
/// attributes? Used to avoid queueing work for exports that cannot happen.
pub fn may_export(cfg: &LocalConfig, src: Option<(PeerId, &PeerInfo)>, t: &Target<'_>) -> bool {
    let Some((sid, s)) = src else { return true };
    if sid == t.id || (s.kind == PeerKind::External && t.info.kind == PeerKind::External) {
        return false;
    }
    let s_ibgp = s.asn == cfg.asn;
    let t_ibgp = t.info.asn == cfg.asn;
    if s_ibgp && t_ibgp && (cfg.cluster_id.is_none() || !(s.rr_client || t.info.rr_client)) {
        return false;
    }
    // The default export with no terms passes only own routes and reflected
    // node routes.
    if t.policy.terms.is_empty() {
        return match t.policy.default {
            DefaultAction::Accept => true,
            DefaultAction::Reject => false,
            DefaultAction::OriginatedOnly => {
                s.kind == PeerKind::Node
                    && t.info.kind == PeerKind::Node
                    && cfg.cluster_id.is_some()
            }
        };
    }
    true
}

/// Does `t` get `prefix` (best path `best`, learned from `src`, None when
/// ours)? Some(term of its export policy that accepted it).
pub fn passes(
    cfg: &LocalConfig,
    prefix: &Prefix,
    best: &Path,
    src: Option<&PeerInfo>,
    t: &Target<'_>,
) -> Option<Option<usize>> {
    if best.peer == t.id || (best.peer != LOCAL_PEER && src.is_none()) {
        return None;
    }
    let a = &best.attrs;
    let t_ebgp = t.info.asn != cfg.asn;
    if a.has_community(Community::NO_ADVERTISE) || (t_ebgp && a.has_community(Community::NO_EXPORT))
    {
        return None;
    }
    let source = src.map_or(Source::Local, |s| Source::from(s.kind));
    if source == Source::External && t.info.kind == PeerKind::External {
        return None;
    }
    if let Some(s) = src
        && s.asn == cfg.asn
        && !t_ebgp
        && (cfg.cluster_id.is_none() || !(s.rr_client || t.info.rr_client))
    {
        return None;
    }
    match t.policy.decide(prefix, a, &ctx(cfg, source, t)) {
        Decision::Reject => None,
        Decision::Accept(term) => Some(term),
    }
}

fn ctx(cfg: &LocalConfig, source: Source, t: &Target<'_>) -> EvalCtx {
    EvalCtx {
        local_asn: cfg.asn,
        local_addr: Some(t.info.local_addr),
        source,
        target: Some(t.info.kind),
        reflector: cfg.cluster_id.is_some(),
    }
}

/// The attributes `t` is sent for a route that [`passes`] by `term`. They
/// depend on the path's attributes, where it came from, the term and the
/// target only, so callers cache them per (attributes, source, term).
pub fn build(
    cfg: &LocalConfig,
    interner: &mut Interner,
    best: &Path,
    src: Option<&PeerInfo>,
    t: &Target<'_>,
    term: Option<usize>,
) -> Arc<PathAttrs> {
    let t_ebgp = t.info.asn != cfg.asn;
    let source = src.map_or(Source::Local, |s| Source::from(s.kind));
    let mut out = PathAttrs::clone(&best.attrs);
    if let Some(s) = src
        && s.asn == cfg.asn
        && !t_ebgp
        && let Some(cluster) = cfg.cluster_id
    {
        out.originator_id.get_or_insert(s.router_id);
        out.cluster_list.insert(0, cluster);
    }
    if t_ebgp {
        out.local_pref = None;
        if src.is_some() {
            out.med = None;
        }
        out.originator_id = None;
        out.cluster_list.clear();
    } else if out.local_pref.is_none() {
        out.local_pref = Some(100);
    }
    if src.is_none() && out.next_hop.is_none() {
        out.next_hop = Some(t.info.local_addr);
    }
    if let Some(m) = t.policy.modify(term, &out, &ctx(cfg, source, t)) {
        out = m;
    }
    if t_ebgp {
        out.as_path.prepend(cfg.asn, 1);
        out.next_hop = Some(t.info.local_addr);
        out.next_hop_link_local = None;
    }
    interner.intern(out)
}

/// Per-call cache of [`build`] results: (attributes pointer, source, term).
#[derive(Default)]
pub struct BuildCache {
    map: std::collections::HashMap<(usize, PeerId, Option<usize>), Arc<PathAttrs>>,
}

impl BuildCache {
    /// The attributes `t` is sent for `prefix`, or None when it is not sent.
    pub fn export(
        &mut self,
        cfg: &LocalConfig,
        interner: &mut Interner,
        prefix: &Prefix,
        best: &Path,
        src: Option<&PeerInfo>,
        t: &Target<'_>,
    ) -> Option<Arc<PathAttrs>> {
        let term = passes(cfg, prefix, best, src, t)?;
        let key = (Arc::as_ptr(&best.attrs) as usize, best.peer, term);
        if let Some(a) = self.map.get(&key) {
            return Some(Arc::clone(a));
        }
        let a = build(cfg, interner, best, src, t, term);
        self.map.insert(key, Arc::clone(&a));
        Some(a)
    }
}
