//! The policy table as a [`Manager`]: desired is the incremental render
//! of the inputs ([`twill_policy::incremental`]); observed is whether the
//! kernel still holds the last commit (read back and compared when a drift
//! check is due); the diff is an nft script — the whole table after a
//! failure or drift, else only what changed; apply runs it as one
//! transaction. When nft refuses a whole table, the policies it is due to
//! are found by checking (never applying) and enforced fail-closed
//! ([`super::refusals`]); everything else is applied on the next pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_policy::cluster::{Inputs, LocalEndpoint};
use twill_policy::incremental::Incremental;
use twill_policy::ir::MAP_INGRESS;
use twill_policy::refused::{fail_closed, find_refused};

use super::POLICY;
use super::nft::{Fingerprint, NftError, check_script, read_table};
use super::refusals::{Refusals, Refused};
use crate::dataplane::Manager;

/// How long a pass that failed without learning anything waits.
const RETRY: Duration = Duration::from_secs(1);

/// The `inet twill` table: the renderer, the datastore objects it renders
/// from, and what the kernel is believed to hold.
pub struct PolicyTable {
    /// The datastore objects, reduced ([`crate::calc::policy`]). They live
    /// here because they track which pods each change moves, which the
    /// incremental render consumes.
    pub inputs: Inputs,
    inc: Incremental,
    refusals: Refusals,
    /// Whether the kernel has `inc`'s table as of its last commit.
    in_kernel: bool,
    /// Read the table back at the next pass.
    pub drift_due: bool,
    /// The libnftables context kept between passes (None before the first
    /// apply and after a failed one): a fresh context per transaction
    /// measured 15–45 % more wall time for the same CPU (docs/nft.md).
    nft: Option<twill_nft::Nft>,
}

/// An nft script: the whole table, or the change since the last commit.
pub struct Script {
    pub full: bool,
    pub text: String,
}

/// Why a pass did not leave the table in the kernel.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("nft refused an incremental update: {0}")]
    Incremental(NftError),
    #[error("nft refused the table; the policies it is due to are enforced fail-closed")]
    Refused,
    #[error("nft refused the table, but it passes the check now")]
    Transient,
    #[error("nft refused the table and no single policy explains it: {0}")]
    Unexplained(String),
    #[error("the nft task failed: {0}")]
    Task(String),
}

impl PolicyError {
    /// When to try again: at once when the failure taught something (the
    /// next pass replaces the whole table, or leaves the refused policies
    /// out), else after a second (not a busy loop).
    pub fn retry_after(&self) -> Duration {
        match self {
            PolicyError::Incremental(_) | PolicyError::Refused => Duration::ZERO,
            PolicyError::Transient | PolicyError::Unexplained(_) | PolicyError::Task(_) => RETRY,
        }
    }
}

impl PolicyTable {
    pub fn new(node: &str) -> PolicyTable {
        PolicyTable {
            inputs: Inputs::default(),
            inc: Incremental::new(node),
            refusals: Refusals::new(),
            in_kernel: false,
            drift_due: false,
            nft: None,
        }
    }

    /// Whether an endpoint's dispatch entry is in the kernel's table.
    pub fn has_endpoint(&self, iface: &str) -> bool {
        self.in_kernel
            && self
                .inc
                .table()
                .maps
                .get(MAP_INGRESS)
                .is_some_and(|m| m.contains_key(iface))
    }

    /// After nft refused a full table: finds the policies it is due to
    /// (checking, never applying) and records them as refused, logging each
    /// once; true when it found any. Err with nft's reason when no policy
    /// explains the refusal.
    async fn diagnose(&mut self) -> Result<bool, String> {
        let table = self.inc.table().clone();
        let ids: Vec<String> = self.inputs.policies().map(|p| p.id.clone()).collect();
        let found = tokio::task::spawn_blocking(move || {
            find_refused(&table, ids.iter().map(String::as_str), &mut |s| {
                check_script(s).map_err(|e| e.to_string())
            })
        })
        .await
        .map_err(|e| format!("the check task failed: {e}"))??;
        if found.is_empty() {
            return Ok(false);
        }
        for (id, reason) in found {
            let Some(original) = self.inputs.policies().find(|p| p.id == id).cloned() else {
                continue;
            };
            tracing::warn!(policy = %id, reason = %reason, "nft refused this policy: it is enforced as allowing nothing for the pods it selects until it changes; everything else is programmed");
            self.refusals.by_id.insert(
                id,
                Refused {
                    closed: Arc::new(fail_closed(&original)),
                    original,
                    reason,
                },
            );
        }
        if let Some(r) = self.refusals.reason() {
            crate::health::global().set_not_ready(POLICY, &r);
        }
        Ok(true)
    }

    /// A full script nft refused: finds out why (see [`Self::diagnose`]).
    async fn refused(&mut self, e: NftError) -> PolicyError {
        match self.diagnose().await {
            Ok(true) => PolicyError::Refused,
            Ok(false) => PolicyError::Transient,
            Err(reason) => {
                if self.refusals.unexplained.as_ref() != Some(&reason) {
                    tracing::warn!(error = %e, "nft refused the policy table and no single policy explains it; retrying every second");
                    self.refusals.unexplained = Some(reason.clone());
                }
                crate::health::global().set_not_ready(
                    POLICY,
                    &format!("the policy table is not programmed: {reason}"),
                );
                PolicyError::Unexplained(reason)
            }
        }
    }
}

impl Manager for PolicyTable {
    /// The local endpoints (the datastore objects are in `inputs`).
    type Inputs = [LocalEndpoint];
    /// The render is kept in the incremental renderer.
    type Desired = ();
    /// Whether the kernel holds the last commit.
    type Observed = bool;
    /// None: nothing to write.
    type Diff = Option<Script>;
    type Report = ();
    type Error = PolicyError;

    /// The table is read back only when a drift check is due; any
    /// difference means the next write replaces the whole table.
    async fn observe(&mut self, _: &[LocalEndpoint]) -> Result<bool, PolicyError> {
        if self.drift_due && self.in_kernel {
            self.drift_due = false;
            let want = Fingerprint::of(self.inc.table());
            match tokio::task::spawn_blocking(read_table).await {
                Ok(Ok(kernel)) => {
                    let diffs = match &kernel {
                        Some(k) => want.differences(k),
                        None => vec!["the table is missing".to_string()],
                    };
                    if !diffs.is_empty() {
                        tracing::warn!(drift = ?diffs, "the kernel's policy table drifted; replacing it");
                        self.in_kernel = false;
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the policy table back"),
                Err(e) => tracing::warn!(error = %e, "drift check task failed"),
            }
        }
        Ok(self.in_kernel)
    }

    fn desired(&mut self, locals: &[LocalEndpoint]) {
        self.refusals.substitute(&mut self.inputs);
        self.inc.follow(&mut self.inputs, locals);
    }

    fn diff(&mut self, _: (), in_kernel: bool) -> Option<Script> {
        if in_kernel {
            self.inc.commit().map(|text| Script { full: false, text })
        } else {
            Some(Script {
                full: true,
                text: self.inc.full_script(),
            })
        }
    }

    async fn apply(&mut self, script: Option<Script>) -> Result<(), PolicyError> {
        if let Some(Script { full, text }) = script {
            let started = Instant::now();
            let kept = self.nft.take();
            let r = tokio::task::spawn_blocking(move || {
                let mut nft = match kept {
                    Some(n) => n,
                    None => twill_nft::Nft::new()?,
                };
                nft.apply(&text).map(|()| nft)
            })
            .await;
            crate::metrics::global().observe_nft_apply(
                full,
                matches!(r, Ok(Ok(_))),
                started.elapsed(),
            );
            let r = r.map(|r| {
                r.map(|nft| {
                    self.nft = Some(nft);
                })
            });
            match r {
                Ok(Ok(())) => {
                    tracing::debug!(full, took = ?started.elapsed(), rules = self.inc.table().rule_count(), "policy table applied");
                }
                Ok(Err(e)) => {
                    self.in_kernel = false;
                    if !full {
                        tracing::warn!(error = %e, "nft refused an incremental update; replacing the whole table");
                        return Err(PolicyError::Incremental(e));
                    }
                    return Err(self.refused(e).await);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "policy apply task failed");
                    self.in_kernel = false;
                    return Err(PolicyError::Task(e.to_string()));
                }
            }
        }
        self.in_kernel = true;
        self.refusals.unexplained = None;
        match self.refusals.reason() {
            None => crate::health::global().set_ready(POLICY),
            Some(r) => crate::health::global().set_not_ready(POLICY, &r),
        }
        Ok(())
    }
}
