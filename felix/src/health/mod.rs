//! twill-node's health: named readiness conditions ([`Readiness`]), the
//! datastore watches' state ([`watches`]) and the HTTP endpoint ([`http`]:
//! `/healthz`, `/readyz`, `/metrics`, default 127.0.0.1:9099).
//!
//! A module registers its condition as not ready with a reason, and flips
//! it when its state changes — `datastore` (every watch has delivered its
//! first listing and none is failing), `policy-objects` (no NetworkPolicy
//! or GlobalNetworkPolicy in the store is invalid), `dataplane` (endpoints
//! reconciled, CNI socket open), `policy` (the table is in the kernel, no
//! policy refused) and `bgp` (at least one configured session
//! established). `/readyz` answers 200 when all hold and 503 naming those
//! that do not, in the kube-apiserver style (`[+]name ok` /
//! `[-]name: reason`). [`service_health`] serves Services' health check
//! node ports (`externalTrafficPolicy: Local`) as kube-proxy does.

pub mod http;
pub mod service_health;
pub mod watches;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use http::{MAX_CONNECTIONS, MAX_HEAD, READ_TIMEOUT, bind, readyz, serve};
pub use watches::{Invalid, WatchHandle, Watches, watches};

/// The datastore condition: every watch delivered its first listing and
/// none is failing.
pub const DATASTORE: &str = "datastore";
/// No policy object in the store is invalid (an invalid one is not
/// enforced, so the pods it would select may be less protected).
pub const POLICY_OBJECTS: &str = "policy-objects";
/// The dataplane condition: endpoints reconciled, CNI socket serving.
pub const DATAPLANE: &str = "dataplane";
/// The BGP condition (set by the BGP wiring): at least one configured
/// session is established.
pub const BGP: &str = "bgp";
/// The service proxy condition (`--service-proxy=nftables` only): the
/// `inet twill-svc-N` tables implement the Services as last listed.
pub const SERVICE_PROXY: &str = "service-proxy";

/// Named readiness conditions; ready when every registered one holds.
#[derive(Debug, Default)]
pub struct Readiness {
    conditions: Mutex<BTreeMap<String, Condition>>,
}

/// One condition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub ready: bool,
    /// Why it is not ready (empty when ready).
    pub reason: String,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Condition>) -> R) -> R {
        f(&mut self.conditions.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds a condition, not ready for `reason`, unless it exists already.
    pub fn register(&self, name: &str, reason: &str) {
        self.with(|c| {
            c.entry(name.to_string()).or_insert(Condition {
                ready: false,
                reason: reason.to_string(),
            });
        });
    }

    /// Marks a condition as holding (registering it if needed).
    pub fn set_ready(&self, name: &str) {
        self.with(|c| {
            c.insert(
                name.to_string(),
                Condition {
                    ready: true,
                    reason: String::new(),
                },
            );
        });
    }

    /// Marks a condition as not holding, saying why.
    pub fn set_not_ready(&self, name: &str, reason: &str) {
        self.with(|c| {
            c.insert(
                name.to_string(),
                Condition {
                    ready: false,
                    reason: reason.to_string(),
                },
            );
        });
    }

    /// Removes a condition (a module that is switched off).
    pub fn remove(&self, name: &str) {
        self.with(|c| {
            c.remove(name);
        });
    }

    /// All conditions, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Condition> {
        self.with(|c| c.clone())
    }

    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        self.with(|c| c.values().all(|c| c.ready))
    }
}

/// The process's readiness conditions.
pub fn global() -> &'static Arc<Readiness> {
    static GLOBAL: OnceLock<Arc<Readiness>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Readiness::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_not_ready() {
        let r = Readiness::new();
        assert!(r.is_ready(), "no conditions: nothing to wait for");
        r.register("datastore", "not read yet");
        r.register("dataplane", "endpoints not reconciled");
        r.set_ready("datastore");
        r.register("datastore", "registering again does not reset it");
        let reply = readyz(&r.snapshot());
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            "[-]dataplane: endpoints not reconciled\n[+]datastore ok\nnot ready\n"
        );
        r.set_ready("dataplane");
        assert!(r.is_ready());
        assert_eq!(readyz(&r.snapshot()).status, 200);
        r.set_not_ready("bgp", "no configured BGP session is established");
        let reply = readyz(&r.snapshot());
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("[-]bgp: no configured BGP session"));
        r.remove("bgp");
        assert!(r.is_ready());
    }
}
