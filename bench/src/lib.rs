//! What every benchmark shares: percentiles, markdown tables, and writing
//! results under bench/results/. Benchmarks compare Twill against a real
//! peer on this machine in the same run and report ratios; they are run by
//! `scripts/bench.sh`, never by the test suite.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

pub mod bgp_lab;
pub mod heap;
pub mod kube_proxy;
pub mod kube_router;
pub mod policy_cluster;
pub mod tables;

/// The p-th percentile (0..=100) of durations, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// A markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}|\n",
        header.join(" | "),
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// bench/results/ in the source tree.
pub fn results_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"))
}

/// Writes `name.json` (with the machine and time) and `name.md`.
pub fn write_results(name: &str, json: Value, markdown: &str) -> anyhow::Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let mut doc = json;
    doc["recorded"] = Value::String(now());
    doc["machine"] = Value::String(machine());
    doc["build"] = Value::String(
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(dir.join(format!("{name}.md")), markdown)?;
    Ok(())
}

/// The current UTC time, RFC 3339 (for the record).
pub fn now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// CPU model and count, for the record.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{n} x {cpu}")
}

/// Formats a ratio to two decimals.
pub fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", a / b)
}

/// Median, minimum and maximum of repeated samples (NaN when empty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        if n == 0 {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Spread {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    /// `median (min–max)` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }

    pub fn json(&self) -> Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

/// The order of two contenders in repetition `rep`: A,B in even ones, B,A
/// in odd ones (so A,B,B,A,A,B,…): neither always goes first on a warmer
/// (or busier) machine.
pub fn alternate<T: Copy>(rep: usize, a: T, b: T) -> [T; 2] {
    if rep.is_multiple_of(2) {
        [a, b]
    } else {
        [b, a]
    }
}

#[cfg(test)]
mod spread_tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0]).show(1), "2.0 (1.0–4.0)");
        assert!(Spread::of(&[]).median.is_nan());
        assert_eq!(alternate(0, 'a', 'b'), ['a', 'b']);
        assert_eq!(alternate(1, 'a', 'b'), ['b', 'a']);
    }
}
