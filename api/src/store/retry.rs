//! How a consumer retries a failing watch: exponential backoff with jitter
//! ([`Backoff`], 1 s doubling to 30 s by default) and a record of the
//! failure ([`Outage`]) that says when its state changed, so a caller logs
//! once when a watch starts failing and once when it recovers, not once per
//! retry. Pure: the caller owns the clock and the sleeping.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The base of the next delay.
    next: Duration,
    seed: RandomState,
    drawn: u64,
}

impl Backoff {
    /// Delays start at `min` and double up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            seed: RandomState::new(),
            drawn: 0,
        }
    }

    /// The watch retry policy: 1 s doubling to 30 s.
    pub fn watch() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The delay before the next attempt: the current base with ±20 %
    /// jitter (so a fleet of nodes does not retry in step), never above
    /// `max`; the base then doubles.
    pub fn next_delay(&mut self) -> Duration {
        self.drawn += 1;
        let mut h = self.seed.build_hasher();
        h.write_u64(self.drawn);
        // A uniform factor in [0.8, 1.2).
        let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        let d = jittered(self.next, unit).min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `base` scaled by a factor in [0.8, 1.2) chosen by `unit` in [0, 1).
pub fn jittered(base: Duration, unit: f64) -> Duration {
    base.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

/// What a failure or a success changed, for the one log line it deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing to say (still failing the same way, or still fine).
    None,
    /// It started failing (or fails for another reason now).
    Failing,
    /// It works again after `attempts` failed attempts.
    Recovered { attempts: u32 },
}

/// The state of one retried operation.
#[derive(Debug, Clone, Default)]
pub struct Outage {
    /// The last error while failing.
    error: Option<String>,
    attempts: u32,
}

impl Outage {
    /// An attempt failed with `error`.
    pub fn failed(&mut self, error: &str) -> Change {
        self.attempts += 1;
        let changed = self.error.as_deref() != Some(error);
        // A message that differs only in its numbers (a revision, a port)
        // would still flood the log: report a new reason only when more
        // than its numbers changed.
        let new_reason = match &self.error {
            None => true,
            Some(old) => changed && shape(old) != shape(error),
        };
        self.error = Some(error.to_string());
        if new_reason {
            Change::Failing
        } else {
            Change::None
        }
    }

    /// An attempt succeeded.
    pub fn succeeded(&mut self) -> Change {
        match self.error.take() {
            Some(_) => Change::Recovered {
                attempts: std::mem::take(&mut self.attempts),
            },
            None => Change::None,
        }
    }

    /// The error while failing.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// A message with every run of digits replaced by `#`: what stays the same
/// when only numbers (revisions, ports, durations) change.
fn shape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_to_thirty_seconds_with_jitter() {
        let mut b = Backoff::watch();
        let delays: Vec<f64> = (0..10).map(|_| b.next_delay().as_secs_f64()).collect();
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0];
        for (d, base) in delays.iter().zip(bases) {
            assert!(
                *d >= base * 0.8 && *d <= (base * 1.2f64).min(30.0),
                "{delays:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
        assert_eq!(
            jittered(Duration::from_secs(10), 0.0),
            Duration::from_secs(8)
        );
        assert_eq!(
            jittered(Duration::from_secs(10), 0.5),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn jitter_spreads_nodes_apart() {
        // Two nodes starting together do not retry at the same instants.
        let (mut a, mut b) = (Backoff::watch(), Backoff::watch());
        let same = (0..8).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 8);
    }

    #[test]
    fn one_change_per_outage_not_one_per_retry() {
        let mut o = Outage::default();
        assert_eq!(o.succeeded(), Change::None);
        assert_eq!(o.failed("404 Not Found: ippools"), Change::Failing);
        for _ in 0..50 {
            assert_eq!(o.failed("404 Not Found: ippools"), Change::None);
        }
        assert_eq!(o.failed("500 Internal Server Error"), Change::Failing);
        // Only a number changed: the same outage.
        assert_eq!(o.failed("connect to 10.0.0.1:6443"), Change::Failing);
        assert_eq!(o.failed("connect to 10.0.0.1:6444"), Change::None);
        assert_eq!(o.error(), Some("connect to 10.0.0.1:6444"));
        assert_eq!(o.succeeded(), Change::Recovered { attempts: 54 });
        assert_eq!(o.succeeded(), Change::None);
        assert_eq!(o.attempts(), 0);
    }
}
