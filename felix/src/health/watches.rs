//! Every datastore watch of the process ([`Watches`]): whether each has
//! delivered its first listing or is failing (the `datastore` condition,
//! naming the kind and the error), and the objects that reached the store
//! invalid (an older CRD, a direct etcd write): each is logged once, listed
//! in the NodeStatus report, and cleared when fixed or deleted; an invalid
//! policy object makes `policy-objects` not ready.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use twill_api::Kind;

use super::{DATASTORE, POLICY_OBJECTS, Readiness, global};

/// One watch's state, as [`Watches`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No complete listing yet.
    Starting,
    Synced,
    /// Failing with this error (since the first failure of this outage).
    Failing {
        error: String,
        since: String,
    },
}

#[derive(Debug)]
struct WatchEntry {
    kind: Kind,
    phase: Phase,
}

/// An object that reached the store invalid, as the NodeStatus lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub kind: Kind,
    /// `"namespace/name"` or `"name"`.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct WatchesInner {
    next_id: u64,
    watches: BTreeMap<u64, WatchEntry>,
    /// (kind, key) → (reason, the watches that see it invalid).
    invalid: BTreeMap<(Kind, String), (String, BTreeSet<u64>)>,
}

/// Every datastore watch of the process and the invalid objects they saw.
/// Sets the [`DATASTORE`] and [`POLICY_OBJECTS`] conditions of a
/// [`Readiness`] whenever something changes.
#[derive(Debug)]
pub struct Watches {
    inner: Mutex<WatchesInner>,
    readiness: Arc<Readiness>,
}

/// One registered watch; dropping it (the watching task ends or is
/// aborted) removes it and what it reported.
pub struct WatchHandle {
    id: u64,
    watches: Arc<Watches>,
}

impl Watches {
    pub fn new(readiness: Arc<Readiness>) -> Arc<Watches> {
        Arc::new(Watches {
            inner: Mutex::new(WatchesInner::default()),
            readiness,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut WatchesInner) -> R) -> R {
        let r = f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
        self.publish();
        r
    }

    /// Registers a watch of `kind`, not synced yet.
    pub fn register(self: &Arc<Self>, kind: Kind) -> WatchHandle {
        let id = self.with(|w| {
            w.next_id += 1;
            w.watches.insert(
                w.next_id,
                WatchEntry {
                    kind,
                    phase: Phase::Starting,
                },
            );
            w.next_id
        });
        WatchHandle {
            id,
            watches: self.clone(),
        }
    }

    /// The objects seen invalid, by kind and key.
    pub fn invalid(&self) -> Vec<Invalid> {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        w.invalid
            .iter()
            .map(|((kind, key), (reason, _))| Invalid {
                kind: *kind,
                key: key.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Why the datastore is not ready, if it is not: failing watches first
    /// (kind and error), else the kinds not listed yet.
    pub fn not_ready_reason(&self) -> Option<String> {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        datastore_reason(&w)
    }

    /// Writes the conditions from the current state.
    fn publish(&self) {
        let (datastore, policy) = {
            let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let policy: Vec<String> = w
                .invalid
                .iter()
                .filter(|((k, _), _)| matches!(k, Kind::NetworkPolicy | Kind::GlobalNetworkPolicy))
                .map(|((k, key), (reason, _))| {
                    format!("{k} {key} is invalid and not enforced: {reason}")
                })
                .collect();
            (datastore_reason(&w), policy)
        };
        match datastore {
            Some(r) => self.readiness.set_not_ready(DATASTORE, &r),
            None => self.readiness.set_ready(DATASTORE),
        }
        if policy.is_empty() {
            self.readiness.set_ready(POLICY_OBJECTS);
        } else {
            self.readiness
                .set_not_ready(POLICY_OBJECTS, &policy.join("; "));
        }
    }
}

fn datastore_reason(w: &WatchesInner) -> Option<String> {
    let mut failing = BTreeMap::new();
    let mut starting = BTreeSet::new();
    for e in w.watches.values() {
        match &e.phase {
            Phase::Failing { error, since } => {
                failing.entry(e.kind).or_insert_with(|| {
                    format!(
                        "the watch of {} has been failing since {since}: {error}",
                        e.kind.plural()
                    )
                });
            }
            Phase::Starting => {
                starting.insert(e.kind.plural());
            }
            Phase::Synced => {}
        }
    }
    if !failing.is_empty() {
        return Some(failing.into_values().collect::<Vec<_>>().join("; "));
    }
    if !starting.is_empty() {
        return Some(format!(
            "waiting for the first listing of {}",
            starting.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

impl WatchHandle {
    /// A complete listing arrived.
    pub fn synced(&self) {
        self.watches.with(|w| {
            if let Some(e) = w.watches.get_mut(&self.id) {
                e.phase = Phase::Synced;
            }
        });
    }

    /// The watch failed with `error`.
    pub fn failing(&self, error: &str) {
        self.watches.with(|w| {
            if let Some(e) = w.watches.get_mut(&self.id) {
                let since = match &e.phase {
                    Phase::Failing { since, .. } => since.clone(),
                    _ => jiff::Timestamp::now().to_string(),
                };
                e.phase = Phase::Failing {
                    error: error.to_string(),
                    since,
                };
            }
        });
    }

    /// Records the validity of one object seen by this watch (`reason`
    /// `None`: valid). Logs when an object becomes invalid or valid again,
    /// once for the process however many watches see it.
    pub fn object(&self, kind: Kind, key: &str, reason: Option<String>) {
        self.watches
            .with(|w| set_invalid(w, self.id, kind, key, reason));
    }

    /// A complete listing: every object this watch reported invalid and
    /// not in `seen` is gone.
    pub fn retain(&self, kind: Kind, seen: &BTreeSet<String>) {
        self.watches.with(|w| {
            let gone: Vec<String> = w
                .invalid
                .iter()
                .filter(|((k, key), (_, holders))| {
                    *k == kind && holders.contains(&self.id) && !seen.contains(key)
                })
                .map(|((_, key), _)| key.clone())
                .collect();
            for key in gone {
                set_invalid(w, self.id, kind, &key, None);
            }
        });
    }
}

fn set_invalid(w: &mut WatchesInner, id: u64, kind: Kind, key: &str, reason: Option<String>) {
    let k = (kind, key.to_string());
    match reason {
        Some(reason) => match w.invalid.get_mut(&k) {
            Some((old, holders)) => {
                holders.insert(id);
                if *old != reason {
                    tracing::warn!(kind = %kind, object = %key, %reason, "invalid object in the datastore; it is not used");
                    *old = reason;
                }
            }
            None => {
                tracing::warn!(kind = %kind, object = %key, %reason, "invalid object in the datastore; it is not used");
                w.invalid.insert(k, (reason, BTreeSet::from([id])));
            }
        },
        None => {
            if let Some((_, holders)) = w.invalid.get_mut(&k) {
                holders.remove(&id);
                if holders.is_empty() {
                    w.invalid.remove(&k);
                    tracing::info!(kind = %kind, object = %key, "the invalid object was fixed or deleted");
                }
            }
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let id = self.id;
        self.watches.with(|w| {
            w.watches.remove(&id);
            w.invalid.retain(|_, (_, holders)| {
                holders.remove(&id);
                !holders.is_empty()
            });
        });
    }
}

/// The process's watches, reporting into [`global`].
pub fn watches() -> &'static Arc<Watches> {
    static GLOBAL: OnceLock<Arc<Watches>> = OnceLock::new();
    GLOBAL.get_or_init(|| Watches::new(global().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::readyz;

    #[test]
    fn watches_name_the_failing_kind_and_recover() {
        let r = Arc::new(Readiness::new());
        let w = Watches::new(r.clone());
        let pools = w.register(Kind::IPPool);
        let gnps = w.register(Kind::GlobalNetworkPolicy);
        let body = readyz(&r.snapshot()).body;
        assert!(
            body.contains(
                "[-]datastore: waiting for the first listing of globalnetworkpolicies, ippools"
            ),
            "{body}"
        );
        pools.synced();
        gnps.failing("404 Not Found: the server could not find the requested resource");
        let reason = w.not_ready_reason().unwrap();
        assert!(
            reason.contains("the watch of globalnetworkpolicies has been failing since"),
            "{reason}"
        );
        assert!(reason.contains("404 Not Found"), "{reason}");
        assert!(!r.is_ready());
        // A second watch of the same kind that works does not hide the failure.
        let gnps2 = w.register(Kind::GlobalNetworkPolicy);
        gnps2.synced();
        assert!(
            w.not_ready_reason()
                .unwrap()
                .contains("globalnetworkpolicies")
        );
        gnps.synced();
        assert_eq!(w.not_ready_reason(), None);
        assert!(r.is_ready(), "{:?}", r.snapshot());
        // A watch that is gone (its task ended) no longer counts.
        let nodes = w.register(Kind::Node);
        assert!(!r.is_ready());
        drop(nodes);
        assert!(r.is_ready());
    }

    #[test]
    fn invalid_objects_are_reported_until_fixed_and_policies_fail_readiness() {
        let r = Arc::new(Readiness::new());
        let w = Watches::new(r.clone());
        let (a, b) = (
            w.register(Kind::IPPool),
            w.register(Kind::GlobalNetworkPolicy),
        );
        a.synced();
        b.synced();
        a.object(
            Kind::IPPool,
            "bad",
            Some("spec.cidr: \"10.300.0.0/16\": not a CIDR".into()),
        );
        a.object(Kind::IPPool, "good", None);
        assert_eq!(w.invalid().len(), 1);
        assert!(
            r.is_ready(),
            "an invalid pool is reported, not a readiness failure"
        );
        b.object(
            Kind::GlobalNetworkPolicy,
            "g",
            Some("spec.selector: bad".into()),
        );
        let body = readyz(&r.snapshot()).body;
        assert!(
            body.contains("[-]policy-objects: GlobalNetworkPolicy g is invalid and not enforced: spec.selector: bad"),
            "{body}"
        );
        // A listing without it (deleted while the watch was down) clears it.
        b.retain(Kind::GlobalNetworkPolicy, &BTreeSet::new());
        assert!(r.is_ready());
        a.object(Kind::IPPool, "bad", None);
        assert!(w.invalid().is_empty());
        a.object(Kind::IPPool, "bad", Some("x".into()));
        drop(a);
        assert!(w.invalid().is_empty(), "a gone watch's reports go with it");
    }
}
