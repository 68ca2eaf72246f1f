//! How watches on the embedded store learn of writes by other processes
//! (api/src/store/embedded/notify.rs): promptly through inotify, through one
//! timed check per handle when inotify is off, and at an idle cost that
//! does not grow with the number of watches.
//!
//! The writers are this same test binary re-run with `--ignored --exact
//! notify_writer_child` and their parameters in the environment.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use twill_api::kinds::Kind;
use twill_api::store::embedded::{EmbeddedStore, NotifyOptions};
use twill_api::store::{Backend, StoreError, WatchEvent, revision_of};

type Watch = BoxStream<'static, Result<WatchEvent<Value>, StoreError>>;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn status(name: &str) -> Value {
    json!({"apiVersion": "twill.dev/v1", "kind": "NodeStatus",
           "metadata": {"name": name}, "spec": {}})
}

/// Opens a watch and waits for its first listing.
async fn watch(store: &EmbeddedStore, kind: Kind) -> Watch {
    let mut w = store.watch(kind, None);
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(WatchEvent::Resync { .. }))) => w,
        other => panic!("{kind}: expected a first listing, got {other:?}"),
    }
}

/// Runs a writer process: `n` NodeStatus creates `pace_ms` apart; returns
/// it and the file where it records "revision commit-time-ns" per write.
fn spawn_writer(
    db: &std::path::Path,
    n: usize,
    pace_ms: u64,
) -> (std::process::Child, std::path::PathBuf) {
    let out = db.with_extension(format!("writer-{}", now_ns()));
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "notify_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TWILL_NOTIFY_DB", db)
        .env("TWILL_NOTIFY_N", n.to_string())
        .env("TWILL_NOTIFY_PACE_MS", pace_ms.to_string())
        .env("TWILL_NOTIFY_OUT", &out)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn writer");
    (child, out)
}

/// Collects `n` Applied events (revision, arrival ns), failing after `limit`.
async fn collect(w: &mut Watch, n: usize, limit: Duration) -> Vec<(u64, u128)> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while seen.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(WatchEvent::Applied(v)))) => {
                let t = now_ns();
                seen.push((revision_of(&v).unwrap().parse().unwrap(), t));
            }
            Ok(other) => panic!("unexpected {other:?} after {} events", seen.len()),
            Err(_) => panic!(
                "only {} of {n} changes arrived within {limit:?}",
                seen.len()
            ),
        }
    }
    seen
}

/// Waits for the writer and checks that `seen` is every write, in order.
/// Returns the latencies (ms) from each commit to its arrival.
fn check_all_in_order(
    mut child: std::process::Child,
    out: &std::path::Path,
    seen: &[(u64, u128)],
) -> Vec<f64> {
    assert!(child.wait().unwrap().success(), "writer failed");
    let writes: Vec<(u64, u128)> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        writes.iter().map(|w| w.0).collect::<Vec<_>>(),
        "the watch must see every write, in order"
    );
    seen.iter()
        .zip(&writes)
        .map(|((_, t), (_, c))| (*t as f64 - *c as f64) / 1e6)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_from_another_process_is_seen_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    // No timed check for a minute: only inotify can deliver in time.
    let store = EmbeddedStore::open_with(
        &db,
        NotifyOptions {
            inotify: true,
            safety_poll: Duration::from_secs(60),
            fallback_poll: Duration::from_secs(60),
        },
    )
    .unwrap();
    let mut w = watch(&store, Kind::NodeStatus).await;
    let (child, out) = spawn_writer(&db, 30, 20);
    let seen = collect(&mut w, 30, Duration::from_secs(20)).await;
    let mut lat = check_all_in_order(child, &out, &seen);
    lat.sort_by(f64::total_cmp);
    // The goal is 50 ms p99 (bench store_notify measures it); on a loaded
    // CI machine allow more, still far below the 60 s timed check.
    let max = lat[lat.len() - 1];
    assert!(max < 1000.0, "slowest change took {max:.1} ms: {lat:?}");

    // Resumable: a watch from the first write's revision replays the rest.
    let first = seen[0].0.to_string();
    let mut again = store.watch(Kind::NodeStatus, Some(first));
    let replay = collect(&mut again, 29, Duration::from_secs(10)).await;
    assert_eq!(
        replay.iter().map(|r| r.0).collect::<Vec<_>>(),
        seen[1..].iter().map(|s| s.0).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inotify_one_timed_check_still_delivers_every_change_in_order() {
    // Inotify off stands for every case where no event comes: no inotify
    // instance left, a lost or coalesced event, a wake before the commit
    // was visible. Then only the timed check per handle remains.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let store = EmbeddedStore::open_with(
        &db,
        NotifyOptions {
            inotify: false,
            safety_poll: Duration::from_secs(60),
            fallback_poll: Duration::from_millis(100),
        },
    )
    .unwrap();
    let mut watches = Vec::new();
    for kind in Kind::ALL {
        watches.push(watch(&store, kind).await);
    }
    // Idle: one check per 100 ms for the whole handle, not one per watch.
    let q0 = store.queries();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = store.queries() - q0;
    assert!(
        (3..=15).contains(&idle),
        "{idle} queries in 1 s idle with 11 watches and a 100 ms timer"
    );

    let ns = Kind::ALL
        .iter()
        .position(|k| *k == Kind::NodeStatus)
        .unwrap();
    let (child, out) = spawn_writer(&db, 20, 10);
    let seen = collect(&mut watches[ns], 20, Duration::from_secs(20)).await;
    let lat = check_all_in_order(child, &out, &seen);
    let max = lat.iter().copied().fold(0.0, f64::max);
    // Found by the 100 ms timer; never by the 60 s safety check.
    assert!(max < 5000.0, "slowest change took {max:.1} ms: {lat:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_share_one_notifier() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let store = EmbeddedStore::open(&db).unwrap();
    let writer = EmbeddedStore::open(&db).unwrap();
    writer
        .create(Kind::NodeStatus, status("seed"))
        .await
        .unwrap();
    // 4 watches of every kind: 44, as four agents' worth in one process.
    let mut watches = Vec::new();
    for kind in Kind::ALL {
        for _ in 0..4 {
            watches.push((kind, watch(&store, kind).await));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q0 = store.queries();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = store.queries() - q0;
    // The 1 s safety check only (the old design: 44 × 50 × 3 = 6,600).
    assert!(
        idle <= 5,
        "{idle} store queries in 3 s idle with 44 watches"
    );

    // A write by another handle (its own connection and notifier) wakes
    // the four NodeStatus watches and no other.
    let q0 = store.queries();
    writer
        .create(Kind::NodeStatus, status("one"))
        .await
        .unwrap();
    for (kind, w) in watches.iter_mut().filter(|(k, _)| *k == Kind::NodeStatus) {
        let got = collect(w, 1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "{kind}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let used = store.queries() - q0;
    assert!(
        used <= 4 + 8 + 1,
        "{used} queries for one change: 4 watch reads and the notifier's checks expected, not 44 reads"
    );
    for (kind, w) in watches.iter_mut().filter(|(k, _)| *k != Kind::NodeStatus) {
        assert!(
            tokio::time::timeout(Duration::from_millis(1), w.next())
                .await
                .is_err(),
            "{kind} watch got an event for a NodeStatus write"
        );
    }
}

#[tokio::test]
#[ignore = "run by the tests above as a writer process"]
async fn notify_writer_child() {
    let (Ok(db), Ok(n), Ok(pace), Ok(out)) = (
        std::env::var("TWILL_NOTIFY_DB"),
        std::env::var("TWILL_NOTIFY_N"),
        std::env::var("TWILL_NOTIFY_PACE_MS"),
        std::env::var("TWILL_NOTIFY_OUT"),
    ) else {
        panic!("notify_writer_child is started by the other tests, not directly");
    };
    let store = EmbeddedStore::open(&db).unwrap();
    let mut report = String::new();
    for i in 0..n.parse::<usize>().unwrap() {
        tokio::time::sleep(Duration::from_millis(pace.parse().unwrap())).await;
        let v = store
            .create(
                Kind::NodeStatus,
                status(&format!("w-{i}-{}", std::process::id())),
            )
            .await
            .unwrap();
        report.push_str(&format!("{} {}\n", revision_of(&v).unwrap(), now_ns()));
    }
    std::fs::write(out, report).unwrap();
}
