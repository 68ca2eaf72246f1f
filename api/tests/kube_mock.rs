//! The Kubernetes backend against a mock API server (tower-test) that
//! replays recorded API responses from `tests/fixtures/`. We cannot run an
//! API server here; these tests pin down the requests we send and how we
//! read the answers: CAS conflicts (409), AlreadyExists, NotFound, and a
//! watch that expires with 410 Gone and must re-list.

use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use tower_test::mock;
use twill_api::resources::{IPPool, IPPoolSpec};
use twill_api::store::kubernetes::KubeStore;
use twill_api::{Store, StoreError, WatchEvent};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn respond(status: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("response")
}

fn store() -> (Store, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (
        Store::new(KubeStore::new(kube::Client::new(service, "default"))),
        handle,
    )
}

/// Waits for the next request, checks method and path, and answers it.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path_prefix: &str,
    status: u16,
    body: Vec<u8>,
) -> Vec<u8> {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("client sent no request in time")
        .expect("service dropped");
    assert_eq!(req.method(), method, "{}", req.uri());
    let uri = req.uri().to_string();
    assert!(
        uri.starts_with(path_prefix),
        "expected {path_prefix}..., got {uri}"
    );
    let sent = req
        .into_body()
        .collect_bytes()
        .await
        .expect("request body")
        .to_vec();
    send.send_response(respond(status, body));
    sent
}

#[tokio::test]
async fn get_reads_a_recorded_object() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/ippools/default-ipv4",
            200,
            fixture("ippool_get.json"),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/ippools/missing",
            404,
            fixture("status_404.json"),
        )
        .await;
    });
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
    server.await.unwrap();
}

#[tokio::test]
async fn cas_update_conflict_reports_both_revisions() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        // Validation lists pools (overlap check) before the update.
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/ippools?",
            200,
            fixture("ippool_list_rv100.json"),
        )
        .await;
        let sent = expect(
            &mut handle,
            Method::PUT,
            "/apis/twill.dev/v1/ippools/default-ipv4",
            409,
            fixture("status_409_conflict.json"),
        )
        .await;
        // The update carried the revision we read: that is the CAS.
        let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent["metadata"]["resourceVersion"], "42");
        assert_eq!(sent["spec"]["disabled"], true);
        // On conflict the store reads the current revision for the message.
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/ippools/default-ipv4",
            200,
            fixture("ippool_get_rv43.json"),
        )
        .await;
    });
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
    server.await.unwrap();
}

#[tokio::test]
async fn create_existing_is_already_exists_and_invalid_is_never_sent() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        // Validation lists pools (overlap check) before the create.
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/ippools",
            200,
            fixture("ippool_list_rv100.json"),
        )
        .await;
        expect(
            &mut handle,
            Method::POST,
            "/apis/twill.dev/v1/ippools",
            409,
            fixture("status_409_exists.json"),
        )
        .await;
        handle
    });
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
    let mut handle = server.await.unwrap();

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
    handle.send_error(std::io::Error::other("no request expected"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "an invalid object reached the API server"
    );
}

#[tokio::test]
async fn watch_resyncs_after_410_gone() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        // Initial list, then a watch from its revision that the server has
        // already compacted away: 410 Gone inside the watch stream.
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/ippools?",
            200,
            fixture("ippool_list_rv100.json"),
        )
        .await;
        let (req, send) = handle.next_request().await.expect("watch request");
        let uri = req.uri().to_string();
        assert!(
            uri.contains("watch=true") && uri.contains("resourceVersion=100"),
            "{uri}"
        );
        send.send_response(respond(200, fixture("watch_410_gone.jsonl")));
        // The watcher must re-list, and watch again from the new revision.
        let (req, send) = handle.next_request().await.expect("re-list");
        let uri = req.uri().to_string();
        assert!(!uri.contains("watch=true"), "expected a re-list, got {uri}");
        send.send_response(respond(200, fixture("ippool_list_rv250.json")));
        let (req, send) = handle.next_request().await.expect("second watch");
        let uri = req.uri().to_string();
        assert!(
            uri.contains("watch=true") && uri.contains("resourceVersion=250"),
            "{uri}"
        );
        send.send_response(respond(200, fixture("watch_added_rv251.jsonl")));
        handle
    });

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
    drop(w);
    server.abort();
}

/// A cluster running a newer Twill: its objects carry fields this version
/// does not know. Reading them must work (the fields are dropped from the
/// typed objects), and `compat::check` must say exactly which fields were
/// not understood, so twillctl can warn instead of failing or staying silent.
#[tokio::test]
async fn objects_from_a_newer_version_are_read_and_their_unknown_fields_named() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            expect(
                &mut handle,
                Method::GET,
                "/apis/twill.dev/v1/ippools",
                200,
                fixture("ippool_list_newer_version.json"),
            )
            .await;
        }
    });
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
    server.await.unwrap();
}

/// A CRD that is not installed: the API server answers the list with a
/// plain-text 404. The watch error says which resource is missing and what
/// to apply, not only "404".
#[tokio::test]
async fn a_missing_crd_is_named_in_the_watch_error() {
    use twill_api::resources::GlobalNetworkPolicy;
    let (store, mut handle) = store();
    let mut watch = store.watch::<GlobalNetworkPolicy>(None);
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/apis/twill.dev/v1/globalnetworkpolicies",
            404,
            b"404 page not found\n".to_vec(),
        )
        .await;
        handle
    });
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
    drop(server.await);
}
