//! Policies the kernel refused, and what is enforced instead: each is
//! logged once, named in the `policy` readiness condition, and replaced by
//! its fail-closed form ([`twill_policy::refused::fail_closed`]: allowing
//! nothing for the pods it selects) until it changes or is deleted.
//!
//! Test hook, for tests only: `TWILL_TEST_UNPROGRAMMABLE_POLICY=ID`
//! (`np/NAMESPACE/NAME` or `gnp/NAME`) adds to that policy a rule nft
//! refuses (a port range running backwards), so tests can provoke a
//! refusal with a legal object. Never set it in production.

use std::collections::BTreeSet;
use std::sync::Arc;

use twill_policy::cluster::Inputs;
use twill_policy::model::{Action, Entity, Policy, PortSpec, Rule, proto};

/// The test-only variable that makes one policy unprogrammable (see the module doc). Tests only.
pub const TEST_UNPROGRAMMABLE_POLICY: &str = "TWILL_TEST_UNPROGRAMMABLE_POLICY";

/// Origin of the rule the test hook adds.
const TEST_HOOK_ORIGIN: &str = "test-hook-unprogrammable";
/// A policy the kernel refused: what it was when refused and what is
/// enforced instead, with nft's reason.
pub(super) struct Refused {
    pub(super) original: Arc<Policy>,
    pub(super) closed: Arc<Policy>,
    pub(super) reason: String,
}

/// The refused policies by id.
pub(super) struct Refusals {
    pub(super) by_id: std::collections::BTreeMap<String, Refused>,
    /// The last refusal no policy explained (logged once).
    pub(super) unexplained: Option<String>,
    /// The policy the test hook breaks (tests only).
    hook: Option<String>,
}

impl Refusals {
    pub(super) fn new() -> Refusals {
        let hook = std::env::var(TEST_UNPROGRAMMABLE_POLICY).ok();
        if let Some(id) = &hook {
            tracing::warn!(policy = %id, "{TEST_UNPROGRAMMABLE_POLICY} is set: this policy is made unprogrammable (a test hook, never for production)");
        }
        Refusals {
            by_id: Default::default(),
            unexplained: None,
            hook,
        }
    }

    /// Puts the fail-closed form in place of every refused policy that is
    /// unchanged; a policy that changed (or is gone) is tried again.
    pub(super) fn substitute(&mut self, inputs: &mut Inputs) {
        let mut present = BTreeSet::new();
        let maps = inputs
            .network_policies
            .values_mut()
            .chain(inputs.global_policies.values_mut());
        for p in maps {
            present.insert(p.id.clone());
            let r = self.by_id.get(&p.id);
            if r.is_some_and(|r| Arc::ptr_eq(p, &r.closed)) {
                continue;
            }
            if self.hook.as_deref() == Some(p.id.as_str()) && !has_test_hook(p) {
                *p = Arc::new(with_test_hook(p));
            }
            let Some(r) = r else {
                continue;
            };
            if **p == *r.original {
                *p = r.closed.clone();
            } else {
                tracing::info!(policy = %p.id, "a refused policy changed; programming it again");
                self.by_id.remove(&p.id);
            }
        }
        self.by_id.retain(|id, _| present.contains(id));
    }

    /// The readiness reason, or None when nothing is refused.
    pub(super) fn reason(&self) -> Option<String> {
        if self.by_id.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .by_id
            .iter()
            .map(|(id, r)| format!("{id} ({})", r.reason))
            .collect();
        Some(format!(
            "not programmed, enforced as allowing nothing: {}",
            list.join("; ")
        ))
    }
}

fn has_test_hook(p: &Policy) -> bool {
    [&p.ingress, &p.egress]
        .iter()
        .any(|r| r.iter().flatten().any(|r| r.origin == TEST_HOOK_ORIGIN))
}

/// `p` with a rule nft refuses (tests only; see the module doc).
fn with_test_hook(p: &Policy) -> Policy {
    let mut p = p.clone();
    let bad = Rule {
        proto: Some(proto::TCP),
        dst: Entity {
            ports: vec![PortSpec::Range(2, 1)],
            ..Entity::default()
        },
        ..Rule::any(TEST_HOOK_ORIGIN, Action::Allow)
    };
    for rules in [&mut p.ingress, &mut p.egress].into_iter().flatten() {
        rules.push(bad.clone());
    }
    p
}
