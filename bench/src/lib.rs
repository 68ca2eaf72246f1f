//! What every benchmark shares: percentiles, markdown tables, and writing
//! results under bench/results/. Benchmarks compare Twill against a real
//! peer on this machine in the same run and report ratios; they are run by
//! `scripts/bench.sh`, never by the test suite.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

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
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(dir.join(format!("{name}.md")), markdown)?;
    Ok(())
}

fn now() -> String {
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
