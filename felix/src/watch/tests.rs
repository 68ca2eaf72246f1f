//! The watch retry and validation, against a store whose watches fail.

use super::*;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::Value;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use twill_api::resources::GlobalNetworkPolicy;
use twill_api::resources::IPPool;
use twill_api::store::{Backend, Listing, ObjectKey};
use twill_api::{Kind, StoreError};

/// The tests here read the process's readiness: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An API server whose GlobalNetworkPolicy resource is missing (every
/// watch fails with 404, as with the CRD not installed) until `fail`
/// is cleared; then it lists `items`.
struct MissingCrd {
    fail: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    items: Vec<Value>,
}

fn unused() -> StoreError {
    StoreError::Backend {
        backend: "test",
        message: "not used".into(),
    }
}

#[async_trait::async_trait]
impl Backend for MissingCrd {
    fn name(&self) -> &'static str {
        "test"
    }
    async fn get(&self, _: Kind, _: &ObjectKey) -> Result<Option<Value>, StoreError> {
        Err(unused())
    }
    async fn list(&self, _: Kind, _: Option<&str>) -> Result<Listing<Value>, StoreError> {
        Err(unused())
    }
    async fn create(&self, _: Kind, _: Value) -> Result<Value, StoreError> {
        Err(unused())
    }
    async fn update(&self, _: Kind, _: Value) -> Result<Value, StoreError> {
        Err(unused())
    }
    async fn update_status(&self, _: Kind, _: Value) -> Result<Value, StoreError> {
        Err(unused())
    }
    async fn delete(&self, _: Kind, _: &ObjectKey, _: Option<&str>) -> Result<(), StoreError> {
        Err(unused())
    }
    fn watch(
        &self,
        kind: Kind,
        _: Option<String>,
    ) -> BoxStream<'static, Result<twill_api::WatchEvent<Value>, StoreError>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return stream::iter([Err(StoreError::Backend {
                backend: "kubernetes",
                message: format!(
                    "watch {}: failed to perform initial object list: ApiError: the server could not find the requested resource: NotFound (404)",
                    kind.plural()
                ),
            })])
            .boxed();
        }
        stream::iter([Ok(twill_api::WatchEvent::Resync {
            items: self.items.clone(),
            revision: "1".into(),
        })])
        .chain(stream::pending())
        .boxed()
    }
}

/// Log lines at INFO and above, captured.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Lines {
    fn count(&self, level: &str, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    }
}

/// A missing CRD during a long outage: the watch retries with
/// exponential backoff (1 s → 30 s), logs one line when it starts
/// failing and one when it recovers, and readiness names the kind and
/// the error until then. Three consumers of the kind, as in twill-node.
#[tokio::test(start_paused = true)]
async fn a_failing_watch_backs_off_logs_state_changes_and_reports_not_ready() {
    let _serial = SERIAL.lock().await;
    let lines = Lines::default();
    let w = lines.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let fail = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let bad_gnp = serde_json::json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "bad-selector"}, "spec": {"selector": "has(("}});
    let store = Store::new(MissingCrd {
        fail: fail.clone(),
        attempts: attempts.clone(),
        items: vec![bad_gnp],
    });
    let events = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let ev = events.clone();
            tokio::spawn(watch_kind::<GlobalNetworkPolicy>(
                store.clone(),
                move |_| {
                    ev.fetch_add(1, Ordering::SeqCst);
                    true
                },
            ))
        })
        .collect();
    let outage = Duration::from_secs(120);
    tokio::time::sleep(outage).await;
    let tried = attempts.load(Ordering::SeqCst);
    // 1+2+4+8+16+30+30+30 s (±20 %): about 8 attempts per watch in
    // 120 s, where a fixed 1 s retry made 120.
    assert!((3 * 6..=3 * 10).contains(&tried), "{tried} watch attempts");
    let failing = lines.count("WARN", "datastore watch failing");
    assert_eq!(failing, 3, "one line per watch, not one per retry");
    assert_eq!(lines.count("WARN", ""), 3);
    let reason = health::watches().not_ready_reason().unwrap_or_default();
    assert!(
        reason.contains("globalnetworkpolicies") && reason.contains("404"),
        "{reason}"
    );
    let readyz = health::readyz(&health::global().snapshot());
    assert_eq!(readyz.status, 503);
    assert!(
        readyz
            .body
            .contains("[-]datastore: the watch of globalnetworkpolicies"),
        "{}",
        readyz.body
    );
    assert_eq!(events.load(Ordering::SeqCst), 0);
    println!(
        "outage of {outage:?}: {tried} watch requests, {} WARN/ERROR lines ({:.3}/s) for 3 watches",
        failing,
        failing as f64 / outage.as_secs_f64()
    );

    // The CRD is installed: every watch recovers within one backoff step.
    fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(37)).await;
    assert_eq!(
        events.load(Ordering::SeqCst),
        3,
        "each consumer got its listing"
    );
    assert_eq!(lines.count("INFO", "datastore watch recovered"), 3);
    assert_eq!(
        lines.count("WARN", "datastore watch failing"),
        3,
        "no new failure lines"
    );
    assert_eq!(health::watches().not_ready_reason(), None);
    // The listing held an invalid policy: reported once for the three
    // watches (one entry), named, and readiness says it is not
    // enforced. (Its log line comes from health.rs, whose callsites
    // other tests of this binary hit concurrently without a subscriber,
    // so it is not counted here.)
    let invalid = health::watches().invalid();
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert_eq!(invalid[0].key, "bad-selector");
    assert!(invalid[0].reason.contains("spec.selector"), "{invalid:?}");
    let readyz = health::readyz(&health::global().snapshot());
    assert!(
        readyz
            .body
            .contains("[-]policy-objects: GlobalNetworkPolicy bad-selector is invalid"),
        "{}",
        readyz.body
    );
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    assert!(
        health::watches().invalid().is_empty(),
        "gone with its watches"
    );
    assert_eq!(health::watches().not_ready_reason(), None);
}

/// An object that does not even decode (a field of the wrong type,
/// written past validation) stops that kind's listing: the watch is
/// failing, and readiness names the kind, the object and the field —
/// the consumer is never handed a listing with the object silently
/// missing.
#[tokio::test(start_paused = true)]
async fn an_undecodable_object_is_named_not_skipped() {
    let _serial = SERIAL.lock().await;
    let bad = serde_json::json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
        "metadata": {"name": "typo-pool"}, "spec": {"cidr": "10.9.0.0/16", "blockSize": "big"}});
    let store = Store::new(MissingCrd {
        fail: Arc::new(AtomicBool::new(false)),
        attempts: Arc::new(AtomicUsize::new(0)),
        items: vec![bad],
    });
    let events = Arc::new(AtomicUsize::new(0));
    let ev = events.clone();
    let task = tokio::spawn(watch_kind::<IPPool>(store, move |_| {
        ev.fetch_add(1, Ordering::SeqCst);
        true
    }));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(events.load(Ordering::SeqCst), 0, "no partial listing");
    let reason = health::watches().not_ready_reason().unwrap_or_default();
    assert!(
        reason.contains("the watch of ippools has been failing")
            && reason.contains("typo-pool")
            && reason.contains("spec.blockSize"),
        "{reason}"
    );
    task.abort();
    let _ = task.await;
}
