//! Rate limits for log lines a remote party can trigger at will (refused
//! connections from addresses that are not peers, GTSM refusals): a flood
//! of thousands of connections must not become thousands of log lines.
//! Pure: the caller passes the clock, so the rules are unit-tested.
//!
//! Per interval, the first event from each of up to [`MAX_NAMED`] sources
//! is logged by name; everything else is only counted, and the count is
//! reported once when the interval is over ([`RateLog::flush`] or the next
//! event after it).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources named individually per interval; the rest are only counted.
pub const MAX_NAMED: usize = 8;

/// What the caller should log for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Log this event (first from its source in this interval).
    Log,
    /// Say nothing now (counted for the summary).
    Quiet,
}

/// Events suppressed during an interval that just ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub suppressed: u64,
    pub sources: usize,
}

#[derive(Debug)]
pub struct RateLog {
    interval: Duration,
    window_start: Option<Instant>,
    named: HashSet<IpAddr>,
    quiet_sources: HashSet<IpAddr>,
    suppressed: u64,
}

impl RateLog {
    pub fn new(interval: Duration) -> RateLog {
        RateLog {
            interval,
            window_start: None,
            named: HashSet::new(),
            quiet_sources: HashSet::new(),
            suppressed: 0,
        }
    }

    /// Ends the interval if it is over; returns what was suppressed in it
    /// (None when nothing was).
    pub fn flush(&mut self, now: Instant) -> Option<Summary> {
        let start = self.window_start?;
        if now.duration_since(start) < self.interval {
            return None;
        }
        let out = (self.suppressed > 0).then_some(Summary {
            suppressed: self.suppressed,
            sources: self.quiet_sources.len(),
        });
        self.window_start = None;
        self.named.clear();
        self.quiet_sources.clear();
        self.suppressed = 0;
        out
    }

    /// One event from `source`. The summary of a finished interval, if any,
    /// comes back too (log it before the event).
    pub fn event(&mut self, source: IpAddr, now: Instant) -> (Verdict, Option<Summary>) {
        let summary = self.flush(now);
        self.window_start.get_or_insert(now);
        if self.named.contains(&source) || self.named.len() >= MAX_NAMED {
            self.suppressed += 1;
            // Bounded too: the count of distinct sources saturates.
            if self.quiet_sources.len() < 65_536 {
                self.quiet_sources.insert(source);
            }
            (Verdict::Quiet, summary)
        } else {
            self.named.insert(source);
            (Verdict::Log, summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_flood_from_one_source_logs_once_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut r = RateLog::new(Duration::from_secs(60));
        assert_eq!(r.event(ip(1), t0), (Verdict::Log, None));
        for i in 0..1999 {
            let (v, s) = r.event(ip(1), t0 + Duration::from_millis(i));
            assert_eq!((v, s), (Verdict::Quiet, None));
        }
        assert_eq!(r.flush(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            r.flush(t0 + Duration::from_secs(60)),
            Some(Summary {
                suppressed: 1999,
                sources: 1
            })
        );
        // A new interval names the source again.
        assert_eq!(
            r.event(ip(1), t0 + Duration::from_secs(61)),
            (Verdict::Log, None)
        );
    }

    #[test]
    fn many_sources_name_a_few_and_count_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLog::new(Duration::from_secs(60));
        let logged = (0..200u8)
            .filter(|n| r.event(ip(*n), t0).0 == Verdict::Log)
            .count();
        assert_eq!(logged, MAX_NAMED);
        let (v, s) = r.event(ip(1), t0 + Duration::from_secs(70));
        assert_eq!(v, Verdict::Log);
        assert_eq!(
            s,
            Some(Summary {
                suppressed: 200 - MAX_NAMED as u64,
                sources: 200 - MAX_NAMED
            })
        );
    }
}
