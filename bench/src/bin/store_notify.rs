//! Embedded-store notification latency across processes: how long after a
//! write commits in one process do watches in other processes see it.
//!
//! `store_notify [CHANGES] [READERS] [LABEL]` (default 1000 changes, 2
//! readers). The parent starts READERS copies of itself as reader
//! processes on one fresh store file; each opens a watch on every kind (as
//! twill-node does) and records, for each NodeStatus event, its revision
//! and the wall-clock time it arrived. Once all readers have their first
//! listings, the parent (a third process) creates CHANGES NodeStatus
//! objects, one every 5–15 ms (a fixed pseudo-random pace, so writes do
//! not line up with any poll period), and records when each write began and
//! when it returned (committed). Latency = reader arrival − commit; every
//! reader must see every revision, in order, or the run fails. Prints a
//! markdown table and writes `bench/results/store_notify[.LABEL].json`.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::json;
use twill_api::kinds::Kind;
use twill_api::store::embedded::EmbeddedStore;
use twill_api::store::{Backend, WatchEvent, revision_of};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// utime + stime of this process in seconds (/proc/self/stat).
fn self_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--reader") {
        let (Some(db), Some(out), Some(n)) = (args.get(2), args.get(3), args.get(4)) else {
            bail!("usage: store_notify --reader DB OUT CHANGES");
        };
        return reader(Path::new(db), Path::new(out), n.parse()?);
    }
    let changes: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let readers: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let label = args.get(3).cloned();
    parent(changes, readers, label)
}

/// A reader process: watches every kind, records NodeStatus arrivals.
fn reader(db: &Path, out: &Path, changes: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let store = EmbeddedStore::open(db)?;
        let mut measured = None;
        for kind in Kind::ALL {
            let mut w = store.watch(kind, None);
            match w.next().await {
                Some(Ok(WatchEvent::Resync { .. })) => {}
                other => bail!("{kind}: first event was {other:?}, not a listing"),
            }
            if kind == Kind::NodeStatus {
                measured = Some(w);
            } else {
                // Like an agent: every other kind is watched and drained.
                tokio::spawn(async move { while w.next().await.is_some() {} });
            }
        }
        let Some(mut w) = measured else {
            bail!("no NodeStatus watch");
        };
        println!("ready");
        std::io::stdout().flush()?;
        let cpu0 = self_cpu_seconds();
        let mut seen = Vec::with_capacity(changes);
        while seen.len() < changes {
            match w.next().await {
                Some(Ok(WatchEvent::Applied(v))) => {
                    let t = now_ns();
                    let rev: u64 = revision_of(&v).unwrap_or("0").parse()?;
                    seen.push((rev, t));
                }
                Some(Ok(other)) => bail!("unexpected event {other:?}"),
                Some(Err(e)) => bail!("watch failed: {e}"),
                None => bail!("watch ended"),
            }
        }
        let cpu = self_cpu_seconds() - cpu0;
        let mut f = std::fs::File::create(out)?;
        writeln!(f, "cpu {cpu}")?;
        for (rev, t) in seen {
            writeln!(f, "{rev} {t}")?;
        }
        Ok(())
    })
}

struct Reader {
    child: std::process::Child,
    out: PathBuf,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn parent(changes: usize, readers: usize, label: Option<String>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("store.db");
    let exe = std::env::current_exe()?;
    let store = EmbeddedStore::open(&db)?;
    let mut procs = Vec::new();
    for i in 0..readers {
        let out = dir.path().join(format!("reader{i}.txt"));
        let mut child = Command::new(&exe)
            .arg("--reader")
            .arg(&db)
            .arg(&out)
            .arg(changes.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a reader")?;
        let stdout = child.stdout.take().context("reader stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("reader {i} did not become ready: {line:?}");
        }
        procs.push(Reader { child, out });
    }

    let rt = tokio::runtime::Runtime::new()?;
    let writes = rt.block_on(async {
        let mut writes = Vec::with_capacity(changes);
        // xorshift: a fixed pseudo-random pace, the same in every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..changes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            tokio::time::sleep(Duration::from_micros(5_000 + x % 10_000)).await;
            let obj = json!({"apiVersion": "twill.dev/v1", "kind": "NodeStatus",
                "metadata": {"name": format!("bench-{i}")}, "spec": {}});
            let t0 = now_ns();
            let v = store.create(Kind::NodeStatus, obj).await?;
            let t1 = now_ns();
            let rev: u64 = revision_of(&v).unwrap_or("0").parse()?;
            writes.push((rev, t0, t1));
        }
        anyhow::Ok(writes)
    })?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut commit_lat = Vec::new();
    let mut start_lat = Vec::new();
    let mut reader_cpu = Vec::new();
    for (i, r) in procs.iter_mut().enumerate() {
        loop {
            if let Some(status) = r.child.try_wait()? {
                if !status.success() {
                    bail!("reader {i} failed: {status}");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("reader {i} did not see all {changes} changes within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&r.out)?;
        let mut lines = text.lines();
        let cpu: f64 = lines
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("cpu line")?
            .parse()?;
        reader_cpu.push(cpu);
        let seen: Vec<(u64, u128)> = lines
            .map(|l| {
                let (a, b) = l.split_once(' ').context("line")?;
                Ok((a.parse()?, b.parse()?))
            })
            .collect::<anyhow::Result<_>>()?;
        if seen.len() != writes.len() {
            bail!("reader {i} saw {} of {} changes", seen.len(), writes.len());
        }
        for ((rev, t), (wrev, t0, t1)) in seen.iter().zip(&writes) {
            if rev != wrev {
                bail!("reader {i}: expected revision {wrev}, saw {rev} (missed or out of order)");
            }
            commit_lat.push((*t as f64 - *t1 as f64) / 1e6);
            start_lat.push((*t as f64 - *t0 as f64) / 1e6);
        }
    }
    commit_lat.sort_by(f64::total_cmp);
    start_lat.sort_by(f64::total_cmp);
    let write_ms: Vec<f64> = {
        let mut w: Vec<f64> = writes
            .iter()
            .map(|(_, a, b)| (*b as f64 - *a as f64) / 1e6)
            .collect();
        w.sort_by(f64::total_cmp);
        w
    };
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let row = |v: &[f64]| {
        json!({"p50": r3(percentile(v, 0.5)), "p90": r3(percentile(v, 0.9)),
               "p99": r3(percentile(v, 0.99)), "max": r3(percentile(v, 1.0))})
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = json!({
        "benchmark": "store_notify",
        "label": label,
        "changes": changes,
        "readers": readers,
        "watches_per_reader": Kind::ALL.len(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_at_end": load.trim(),
        "latency_ms_from_commit": row(&commit_lat),
        "latency_ms_from_write_start": row(&start_lat),
        "write_ms": row(&write_ms),
        "reader_cpu_seconds": reader_cpu,
    });
    println!(
        "## store_notify: {changes} changes, {readers} reader processes × {} watches\n",
        Kind::ALL.len()
    );
    println!("| latency (ms) | p50 | p90 | p99 | max |\n|---|---|---|---|---|");
    for (name, key) in [
        ("commit → other process's watch", "latency_ms_from_commit"),
        (
            "write start → other process's watch",
            "latency_ms_from_write_start",
        ),
        ("write (create) itself", "write_ms"),
    ] {
        let r = &result[key];
        println!(
            "| {name} | {} | {} | {} | {} |",
            r["p50"], r["p90"], r["p99"], r["max"]
        );
    }
    println!(
        "\nreader CPU during the run (s): {reader_cpu:?}; load: {}",
        load.trim()
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&out)?;
    let name = match &label {
        Some(l) => format!("store_notify.{l}.json"),
        None => "store_notify.json".to_string(),
    };
    std::fs::write(
        out.join(name),
        serde_json::to_string_pretty(&result)? + "\n",
    )?;
    Ok(())
}
