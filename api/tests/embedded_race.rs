//! Two OS processes share one embedded store file and race compare-and-swap
//! updates on the same IPAMBlock, the way two node agents race for
//! addresses: each repeatedly reads the block, appends an allocation with
//! the next sequence number, and writes it back. Every round exactly one
//! writer wins (each sequence number is written by exactly one process) and
//! no update is lost (the final block holds every win of both processes).
//!
//! The children are this same test binary re-run with `--ignored --exact
//! race_child` and their parameters in the environment.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twill_api::Store;
use twill_api::resources::{Allocation, IPAMBlock, IPAMBlockSpec};
use twill_api::store::embedded::EmbeddedStore;

const ROUNDS_PER_PROCESS: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_race_cas_updates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("race.db");
    let store = Store::new(EmbeddedStore::open(&db).unwrap());
    let block = IPAMBlock::new(
        "10-9-0-0-22",
        IPAMBlockSpec {
            cidr: "10.9.0.0/22".into(),
            affinity: Some("node-a".into()),
            pool: "race".into(),
            ..Default::default()
        },
    );
    store.create(&block).await.unwrap();

    let go = dir.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "race_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("TWILL_RACE_DB", &db)
                .env("TWILL_RACE_GO", &go)
                .env("TWILL_RACE_ID", id)
                .env("TWILL_RACE_N", ROUNDS_PER_PROCESS.to_string())
                .env("TWILL_RACE_OUT", dir.path().join(format!("out-{id}")))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    // Both children are up and waiting: start them together.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&go, b"go").unwrap();

    let mut wins: Vec<(String, u64)> = Vec::new();
    let mut conflicts = 0u64;
    for (id, mut child) in ["a", "b"].into_iter().zip(children) {
        let status = child.wait().unwrap();
        assert!(status.success(), "child {id} failed: {status:?}");
        let out = std::fs::read_to_string(dir.path().join(format!("out-{id}"))).unwrap();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("WIN ") {
                let (id, seq) = rest.split_once(' ').unwrap();
                wins.push((id.to_string(), seq.parse().unwrap()));
            } else if let Some(n) = line.strip_prefix("CONFLICTS ") {
                conflicts += n.trim().parse::<u64>().unwrap();
            }
        }
    }

    let total = 2 * ROUNDS_PER_PROCESS;
    assert_eq!(wins.len(), total, "each child reports exactly its wins");
    // Exactly one winner per round: every sequence number 1..=total was won once.
    let seqs: BTreeSet<u64> = wins.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len(), total, "a sequence number was won twice");
    assert_eq!(seqs, (1..=total as u64).collect());
    // They really raced.
    assert!(
        conflicts > 0,
        "the two processes never collided; the test proves nothing"
    );

    // No update lost: the stored block holds every win, with the right owner.
    let stored: IPAMBlock = store.get(None, "10-9-0-0-22").await.unwrap().unwrap();
    assert_eq!(stored.spec.sequence, total as u64);
    assert_eq!(stored.spec.allocations.len(), total);
    for (id, seq) in &wins {
        let a = stored
            .spec
            .allocations
            .iter()
            .find(|a| a.sequence == *seq)
            .unwrap_or_else(|| panic!("win {id}/{seq} lost"));
        assert_eq!(a.handle, format!("{id}-{seq}"));
    }
    eprintln!("{total} wins, {conflicts} conflicts between two processes");
}

/// Not a test by itself: the child half of `two_processes_race_cas_updates`.
#[tokio::test]
#[ignore = "run by two_processes_race_cas_updates as a child process"]
async fn race_child() {
    let (Ok(db), Ok(go), Ok(id), Ok(n), Ok(out)) = (
        std::env::var("TWILL_RACE_DB"),
        std::env::var("TWILL_RACE_GO"),
        std::env::var("TWILL_RACE_ID"),
        std::env::var("TWILL_RACE_N"),
        std::env::var("TWILL_RACE_OUT"),
    ) else {
        panic!("race_child is started by two_processes_race_cas_updates, not directly");
    };
    let n: usize = n.parse().unwrap();
    let store = Store::new(EmbeddedStore::open(&db).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(&go).exists() {
        assert!(Instant::now() < deadline, "never told to start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut won = 0;
    let mut conflicts = 0u64;
    let mut report = String::new();
    while won < n {
        let mut block: IPAMBlock = store.get(None, "10-9-0-0-22").await.unwrap().unwrap();
        let seq = block.spec.sequence + 1;
        block.spec.sequence = seq;
        block.spec.allocations.push(Allocation {
            ordinal: block.spec.allocations.len() as u32,
            handle: format!("{id}-{seq}"),
            sequence: seq,
            attributes: Default::default(),
        });
        match store.update(&block).await {
            Ok(_) => {
                won += 1;
                report.push_str(&format!("WIN {id} {seq}\n"));
            }
            Err(e) if e.is_conflict() => conflicts += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    report.push_str(&format!("CONFLICTS {conflicts}\n"));
    std::fs::write(out, report).unwrap();
}
