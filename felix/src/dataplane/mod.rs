//! The dataplane: one manager per kernel object Twill owns, each the only
//! writer of that object —
//!
//! * [`routes`]: Twill's routes in the main table (protocol 116);
//! * [`policy`]: the `inet twill` nftables table (network policy);
//! * [`nat`]: the `inet twill-nat` table (NAT outgoing);
//! * [`services`]: the `inet twill-svc-N` tables (the service proxy);
//! * [`conntrack`]: stale UDP/SCTP conntrack entries of Service
//!   endpoints that left (deleted, never owned);
//! * [`endpoints`]: pod veths and their namespaces' side, with the
//!   records and IPAM allocations behind them.
//!
//! Every manager has the same shape, [`Manager`]: read what the kernel
//! holds, compute what it should hold from the inputs (the pure half lives
//! in [`crate::calc`]), diff, apply the difference. A failed pass is
//! retried after a backoff ([`Requeue`]). [`netns`] and [`sysctl`] are the
//! small kernel helpers the managers share.

pub mod conntrack;
pub mod endpoints;
pub mod nat;
pub mod netns;
pub mod policy;
pub mod routes;
pub mod services;
pub mod sysctl;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use twill_api::store::retry::{Backoff, Change, Outage};

/// One kernel object's reconcile: `observe` → `desired` → `diff` → `apply`.
/// Only `observe` and `apply` touch the kernel; `desired` and `diff` do no
/// I/O (they take `&mut self` only so a manager can keep incremental work,
/// as the policy renderer does).
pub trait Manager {
    /// What the desired state is computed from.
    type Inputs: ?Sized;
    /// What the kernel object should hold.
    type Desired;
    /// What it holds now.
    type Observed;
    /// The change from observed to desired.
    type Diff;
    /// What an apply did.
    type Report;
    type Error: Display;

    /// Reads what the kernel object holds (or, between full reads, what
    /// the manager last applied). Called first: `desired` may need what
    /// it learned (interface indexes).
    fn observe(
        &mut self,
        inputs: &Self::Inputs,
    ) -> impl Future<Output = Result<Self::Observed, Self::Error>> + Send;

    /// What the object should hold, from the inputs.
    fn desired(&mut self, inputs: &Self::Inputs) -> Self::Desired;

    /// What must change.
    fn diff(&mut self, desired: Self::Desired, observed: Self::Observed) -> Self::Diff;

    /// Makes the change in the kernel.
    fn apply(
        &mut self,
        diff: Self::Diff,
    ) -> impl Future<Output = Result<Self::Report, Self::Error>> + Send;
}

/// One full pass of a manager.
pub async fn reconcile<M: Manager>(m: &mut M, inputs: &M::Inputs) -> Result<M::Report, M::Error> {
    let observed = m.observe(inputs).await?;
    let desired = m.desired(inputs);
    let diff = m.diff(desired, observed);
    m.apply(diff).await
}

/// When a manager tries again after a failed pass: after a backoff delay
/// (with jitter), with one log line when it starts failing (or fails for
/// another reason) and one when it recovers, never one per retry.
#[derive(Debug)]
pub struct Requeue {
    what: &'static str,
    backoff: Backoff,
    outage: Outage,
}

impl Requeue {
    /// `what` names the kernel object in the log lines.
    pub fn new(what: &'static str, backoff: Backoff) -> Requeue {
        Requeue {
            what,
            backoff,
            outage: Outage::default(),
        }
    }

    /// Records a pass's result: `None` after a success, else the delay
    /// before the next attempt.
    pub fn after<T, E: Display>(&mut self, result: &Result<T, E>) -> Option<Duration> {
        match result {
            Ok(_) => {
                self.succeeded();
                None
            }
            Err(e) => Some(self.failed(e)),
        }
    }

    /// A pass succeeded.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        if let Change::Recovered { attempts } = self.outage.succeeded() {
            tracing::info!(attempts, "{} reconciled again", self.what);
        }
    }

    /// A pass failed: the delay before the next attempt.
    pub fn failed(&mut self, e: &impl Display) -> Duration {
        let error = e.to_string();
        let delay = self.backoff.next_delay();
        if self.outage.failed(&error) == Change::Failing {
            tracing::warn!(%error, "cannot reconcile the {}; retrying with backoff (logged again when it works)", self.what);
        } else {
            tracing::debug!(%error, ?delay, "{} still failing", self.what);
        }
        delay
    }

    /// The error of the failure in progress, if any.
    pub fn error(&self) -> Option<&str> {
        self.outage.error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manager over a fake kernel (a number), failing `fail` times.
    struct Counter {
        kernel: i64,
        fail: u32,
        writes: u32,
    }

    impl Manager for Counter {
        type Inputs = i64;
        type Desired = i64;
        type Observed = i64;
        type Diff = Option<i64>;
        type Report = bool;
        type Error = String;
        async fn observe(&mut self, _: &i64) -> Result<i64, String> {
            Ok(self.kernel)
        }
        fn desired(&mut self, inputs: &i64) -> i64 {
            inputs * 2
        }
        fn diff(&mut self, desired: i64, observed: i64) -> Option<i64> {
            (desired != observed).then_some(desired)
        }
        async fn apply(&mut self, diff: Option<i64>) -> Result<bool, String> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err("refused".into());
            }
            let Some(v) = diff else { return Ok(false) };
            self.kernel = v;
            self.writes += 1;
            Ok(true)
        }
    }

    #[tokio::test]
    async fn a_pass_writes_only_a_difference_and_failures_back_off() {
        let mut m = Counter {
            kernel: 0,
            fail: 2,
            writes: 0,
        };
        let mut rq = Requeue::new(
            "counter",
            Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
        );
        let r = reconcile(&mut m, &21).await;
        let d1 = rq.after(&r).unwrap();
        assert_eq!(rq.error(), Some("refused"));
        let d2 = rq.after(&reconcile(&mut m, &21).await).unwrap();
        assert!(d2 > d1, "{d1:?} then {d2:?}");
        assert_eq!(rq.after(&reconcile(&mut m, &21).await), None);
        assert_eq!((m.kernel, m.writes), (42, 1));
        assert_eq!(reconcile(&mut m, &21).await, Ok(false), "nothing to change");
        assert_eq!(m.writes, 1);
        assert_eq!(rq.error(), None);
    }
}
