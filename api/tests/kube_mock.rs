//! The Kubernetes backend against a mock API server (tower-test) that
//! replays recorded API responses from `tests/fixtures/`. We cannot run an
//! API server here; these tests pin down the requests we send and how we
//! read the answers: CAS conflicts (409), AlreadyExists, NotFound, and a
//! watch that expires with 410 Gone and must re-list. Each test declares
//! the exchanges it expects as a table (`twill_testkit::kube_mock`).

use std::time::Duration;

use futures::StreamExt;
use http::Method;
use twill_api::resources::{IPPool, IPPoolSpec};
use twill_api::store::kubernetes::KubeStore;
use twill_api::{Store, StoreError, WatchEvent};
use twill_testkit::kube_mock::{Exchange, Script, exchange};

const POOLS: &str = "/apis/twill.dev/v1/ippools";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A row answered with a recorded fixture.
fn row(method: Method, target: &str, status: u16, file: &str) -> Exchange {
    exchange(method, target, status, fixture(file))
}

/// A store on a fake API server that serves `table`.
fn store(table: Vec<Exchange>) -> (Store, Script) {
    let (client, script) = Script::start(table);
    (Store::new(KubeStore::new(client)), script)
}

#[tokio::test]
async fn get_reads_a_recorded_object() {
    let (store, mut api) = store(vec![
        row(
            Method::GET,
            "/apis/twill.dev/v1/ippools/default-ipv4",
            200,
            "ippool_get.json",
        ),
        row(
            Method::GET,
            "/apis/twill.dev/v1/ippools/missing",
            404,
            "status_404.json",
        ),
    ]);
    let pool: IPPool = store.get(None, "default-ipv4").await.unwrap().unwrap();
    assert_eq!(pool.spec.cidr, "10.244.0.0/16");
    assert_eq!(pool.metadata.resource_version.as_deref(), Some("42"));
    assert!(
        store
            .get::<IPPool>(None, "missing")
            .await
            .unwrap()
            .is_none()
    );
    api.finish().await;
}

#[tokio::test]
async fn cas_update_conflict_reports_both_revisions() {
    let (store, mut api) = store(vec![
        // Validation lists pools (overlap check) before the update.
        row(Method::GET, POOLS, 200, "ippool_list_rv100.json"),
        row(
            Method::PUT,
            "/apis/twill.dev/v1/ippools/default-ipv4",
            409,
            "status_409_conflict.json",
        ),
        // On conflict the store reads the current revision for the message.
        row(
            Method::GET,
            "/apis/twill.dev/v1/ippools/default-ipv4",
            200,
            "ippool_get_rv43.json",
        ),
    ]);
    let mut pool: IPPool = serde_json::from_slice(&fixture("ippool_get.json")).unwrap();
    pool.spec.disabled = true;
    match store.update(&pool).await {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, "42");
            assert_eq!(current, "43");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let seen = api.finish().await;
    // The update carried the revision we read: that is the CAS.
    let sent = seen[1].json();
    assert_eq!(sent["metadata"]["resourceVersion"], "42");
    assert_eq!(sent["spec"]["disabled"], true);
}

#[tokio::test]
async fn create_existing_is_already_exists_and_invalid_is_never_sent() {
    let (store, mut api) = store(vec![
        // Validation lists pools (overlap check) before the create.
        row(Method::GET, POOLS, 200, "ippool_list_rv100.json"),
        row(Method::POST, POOLS, 409, "status_409_exists.json"),
    ]);
    // The stored pool's CIDR: a different one would also be checked against
    // the blocks cut from the stored pool (another request).
    let pool = IPPool::new(
        "default-ipv4",
        IPPoolSpec {
            cidr: "10.244.0.0/16".into(),
            ..Default::default()
        },
    );
    let err = store.create(&pool).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    api.finish().await;

    // An invalid object fails validation locally: no request at all.
    let bad = IPPool::new(
        "bad",
        IPPoolSpec {
            cidr: "10.250.1.0/16".into(),
            ..Default::default()
        },
    );
    let err = store.create(&bad).await.unwrap_err();
    assert!(err.to_string().contains("spec.cidr"), "{err}");
    // An invalid object reaching the API server would be a request beyond the table.
    api.finish_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn watch_resyncs_after_410_gone() {
    let (store, mut api) = store(vec![
        // Initial list, then a watch from its revision that the server has
        // already compacted away: 410 Gone inside the watch stream.
        row(Method::GET, POOLS, 200, "ippool_list_rv100.json"),
        row(
            Method::GET,
            &format!("{POOLS}?watch=true&resourceVersion=100"),
            200,
            "watch_410_gone.jsonl",
        ),
        // The watcher must re-list, and watch again from the new revision.
        row(Method::GET, POOLS, 200, "ippool_list_rv250.json"),
        row(
            Method::GET,
            &format!("{POOLS}?watch=true&resourceVersion=250"),
            200,
            "watch_added_rv251.jsonl",
        ),
    ]);

    let mut w = store.watch::<IPPool>(None);
    let mut events = Vec::new();
    while events.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Some(Ok(ev))) => events.push(ev),
            Ok(Some(Err(e))) => {
                // The 410 surfaces as an error item before the re-list.
                assert!(
                    e.to_string().contains("410") || e.to_string().contains("too old"),
                    "{e}"
                );
            }
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("watch stalled; got {events:?}"),
        }
    }
    let names = |items: &Vec<IPPool>| -> Vec<String> {
        items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    };
    match &events[0] {
        WatchEvent::Resync { items, .. } => assert_eq!(names(items), ["default-ipv4"]),
        other => panic!("{other:?}"),
    }
    match &events[1] {
        WatchEvent::Resync { items, .. } => assert_eq!(names(items), ["default-ipv4", "rack-b"]),
        other => panic!("expected a resync after 410, got {other:?}"),
    }
    match &events[2] {
        WatchEvent::Applied(p) => assert_eq!(p.metadata.name.as_deref(), Some("rack-c")),
        other => panic!("{other:?}"),
    }
    api.finish().await;
    drop(w);
}

/// A cluster running a newer Twill: its objects carry fields this version
/// does not know. Reading them must work (the fields are dropped from the
/// typed objects), and `compat::check` must say exactly which fields were
/// not understood, so twillctl can warn instead of failing or staying silent.
#[tokio::test]
async fn objects_from_a_newer_version_are_read_and_their_unknown_fields_named() {
    let (store, mut api) = store(vec![
        row(Method::GET, POOLS, 200, "ippool_list_newer_version.json"),
        row(Method::GET, POOLS, 200, "ippool_list_newer_version.json"),
    ]);
    let typed = store
        .list::<IPPool>()
        .await
        .expect("typed list tolerates unknown fields");
    assert_eq!(typed.items.len(), 2);
    assert_eq!(typed.items[0].spec.cidr, "10.244.0.0/16");
    assert_eq!(typed.revision, "320");
    let raw = store
        .backend()
        .list(twill_api::Kind::IPPool, None)
        .await
        .expect("raw list");
    let report: Vec<(String, Vec<String>)> = raw
        .items
        .iter()
        .map(|v| {
            let u = twill_api::compat::check(twill_api::Kind::IPPool, v);
            assert!(u.unreadable.is_none(), "{u:?}");
            (
                v["metadata"]["name"].as_str().unwrap().to_string(),
                u.unknown_fields,
            )
        })
        .collect();
    assert_eq!(
        report,
        vec![
            (
                "default-ipv4".to_string(),
                vec![
                    "spec.encapsulation".to_string(),
                    "spec.reservations".to_string(),
                    "status".to_string()
                ]
            ),
            ("default-ipv6".to_string(), vec![]),
        ]
    );
    // The raw object keeps what this version does not know (twillctl shows it).
    assert_eq!(raw.items[0]["spec"]["encapsulation"], "None");
    api.finish().await;
}

/// A CRD that is not installed: the API server answers the list with a
/// plain-text 404. The watch error says which resource is missing and what
/// to apply, not only "404".
#[tokio::test]
async fn a_missing_crd_is_named_in_the_watch_error() {
    use twill_api::resources::GlobalNetworkPolicy;
    let (store, mut api) = store(vec![exchange(
        Method::GET,
        "/apis/twill.dev/v1/globalnetworkpolicies",
        404,
        b"404 page not found\n".to_vec(),
    )]);
    let mut watch = store.watch::<GlobalNetworkPolicy>(None);
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch said nothing");
    let err = match ev {
        Some(Err(e)) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        err.contains("watch globalnetworkpolicies: the API server has no resource globalnetworkpolicies.twill.dev (is the CRD installed?"),
        "{err}"
    );
    assert!(err.contains("404 page not found"), "{err}");
    api.finish().await;
}
