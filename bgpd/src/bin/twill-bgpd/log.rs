//! Log lines to stderr, filtered by `RUST_LOG`: a small `tracing`
//! subscriber in place of tracing-subscriber's fmt + env-filter (whose
//! regex engine alone is most of the code a speaker would map).
//!
//! `RUST_LOG` is a comma-separated list of `level` or `target=level`
//! (levels error, warn, info, debug, trace, off); the longest matching
//! target prefix decides, a bare level is the default (info without one).
//! Lines: `2026-12-07T01:02:03.456789Z  INFO target: message key=value ...`.
//! The speaker opens no spans; span calls are accepted and ignored.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Which levels pass, per target prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    default: LevelFilter,
    /// (target prefix, level), longest prefix first.
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parses `RUST_LOG`; directives it cannot read are returned so the
    /// caller can say so (they are left out, the rest applies).
    pub fn parse(spec: Option<&str>) -> (Filter, Vec<String>) {
        let mut f = Filter {
            default: LevelFilter::INFO,
            targets: Vec::new(),
        };
        let mut bad = Vec::new();
        for d in spec.unwrap_or("").split(',').map(str::trim) {
            if d.is_empty() {
                continue;
            }
            match d.rsplit_once('=') {
                Some((t, l)) => match level(l) {
                    Some(l) if !t.is_empty() => f.targets.push((t.to_string(), l)),
                    _ => bad.push(d.to_string()),
                },
                None => match level(d) {
                    Some(l) => f.default = l,
                    None => bad.push(d.to_string()),
                },
            }
        }
        f.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        (f, bad)
    }

    pub fn enabled(&self, target: &str, lvl: &Level) -> bool {
        let max = self
            .targets
            .iter()
            .find(|(t, _)| {
                target
                    .strip_prefix(t.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l);
        max >= *lvl
    }

    /// The most verbose level any directive lets through.
    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, std::cmp::max)
    }
}

fn level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

struct Stderr {
    filter: Filter,
    next_span: AtomicU64,
}

impl Subscriber for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.filter.enabled(m.target(), m.level())
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter.max())
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let line = format_line(SystemTime::now(), e.metadata(), |v| e.record(v));
        // One write per line; a closed stderr loses the line, nothing else.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Sets the process-wide subscriber; unreadable directives are reported
/// on stderr.
pub fn init(spec: Option<&str>) {
    let (filter, bad) = Filter::parse(spec);
    for d in bad {
        eprintln!(
            "twill-bgpd: RUST_LOG: ignored {d:?} (levels: off, error, warn, info, debug, trace)"
        );
    }
    let sub = Stderr {
        filter,
        next_span: AtomicU64::new(1),
    };
    if tracing::subscriber::set_global_default(sub).is_err() {
        eprintln!("twill-bgpd: a log subscriber was already set");
    }
}

/// Message first, then the other fields as `key=value`.
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.message, "{v:?}");
        } else {
            let _ = write!(self.rest, " {}={v:?}", f.name());
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.message.push_str(v);
        } else {
            let _ = write!(self.rest, " {}={v:?}", f.name());
        }
    }
}

fn format_line(now: SystemTime, m: &Metadata<'_>, record: impl FnOnce(&mut dyn Visit)) -> String {
    let mut fields = Fields {
        message: String::new(),
        rest: String::new(),
    };
    record(&mut fields);
    let lvl = match *m.level() {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    };
    format!(
        "{} {lvl} {}: {}{}\n",
        utc(now),
        m.target(),
        fields.message,
        fields.rest
    )
}

/// RFC 3339 UTC with microseconds (days → civil date: Howard Hinnant's
/// algorithm, proleptic Gregorian).
fn utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn filter_by_default_level_and_longest_target() {
        let (f, bad) = Filter::parse(Some(
            "warn, twill_bgpd::session=debug,twill_bgpd=info,x=loud",
        ));
        assert_eq!(bad, vec!["x=loud".to_string()]);
        assert!(f.enabled("twill_bgpd::session::driver", &Level::DEBUG));
        assert!(!f.enabled("twill_bgpd::session::driver", &Level::TRACE));
        assert!(f.enabled("twill_bgpd::speaker", &Level::INFO));
        assert!(!f.enabled("twill_bgpd::speaker", &Level::DEBUG));
        // A prefix matches whole path segments only.
        assert!(!f.enabled("twill_bgpd_extra", &Level::INFO));
        assert!(f.enabled("tokio", &Level::WARN));
        assert!(!f.enabled("tokio", &Level::INFO));
        assert_eq!(f.max(), LevelFilter::DEBUG);

        let (none, bad) = Filter::parse(None);
        assert!(bad.is_empty());
        assert!(none.enabled("twill_bgpd", &Level::INFO));
        assert!(!none.enabled("twill_bgpd", &Level::DEBUG));
        let (off, _) = Filter::parse(Some("off"));
        assert!(!off.enabled("twill_bgpd", &Level::ERROR));
        let (upper, bad) = Filter::parse(Some("DEBUG"));
        assert!(bad.is_empty() && upper.enabled("a", &Level::DEBUG));
    }

    #[test]
    fn utc_dates_across_leap_years_and_the_epoch() {
        let at = |s: u64, us: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us);
        assert_eq!(utc(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 12:34:56 (a leap day in a century leap year)
        assert_eq!(utc(at(951_827_696, 7)), "2000-02-29T12:34:56.000007Z");
        // 2026-12-31 23:59:59.999999
        assert_eq!(
            utc(at(1_798_761_599, 999_999)),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(utc(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn a_line_has_level_target_message_and_fields() {
        struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl Subscriber for Capture {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, e: &Event<'_>) {
                let line = format_line(UNIX_EPOCH, e.metadata(), |v| e.record(v));
                self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Capture(lines.clone()), || {
            let peer = "10.0.0.1";
            tracing::info!(target: "twill_bgpd::session", peer = %peer, hold = 90, "session established");
            tracing::warn!("R bit {}", "set");
        });
        let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            lines,
            vec![
                "1970-01-01T00:00:00.000000Z  INFO twill_bgpd::session: session established peer=10.0.0.1 hold=90\n".to_string(),
                format!("1970-01-01T00:00:00.000000Z  WARN {}: R bit set\n", module_path!()),
            ]
        );
    }
}
