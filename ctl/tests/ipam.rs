//! `twillctl ipam` against a store where a node has been removed and
//! another has an allocation its endpoints no longer account for.

use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Node;
use twill_api::Store;
use twill_api::resources::{IPPool, IPPoolSpec, NodeStatus, NodeStatusReport, NodeStatusSpec};
use twill_api::store::embedded::EmbeddedStore;
use twill_ipam::{AssignRequest, Ipam};

fn twillctl(db: &std::path::Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twillctl"))
        .args(args)
        .env("TWILL_DATASTORE_PATH", db)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

fn req(h: &str) -> AssignRequest {
    AssignRequest {
        handle: h.into(),
        attributes: [
            ("namespace".to_string(), "shop".to_string()),
            ("pod".to_string(), format!("pod-{h}")),
        ]
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn show_check_repair_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let store = Store::new(EmbeddedStore::open(&db).unwrap());
    store
        .create(&IPPool::new(
            "p",
            IPPoolSpec {
                cidr: "10.70.0.0/24".into(),
                block_size: Some(26),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let n1 = Ipam::new(store.clone(), "n1");
    let gone = Ipam::new(store.clone(), "gone");
    let live = n1.assign(&req("live")).await.unwrap()[0].addr;
    let leaked = n1.assign(&req("leaked")).await.unwrap()[0].addr;
    let orphan = gone.assign(&req("ghost")).await.unwrap()[0].addr;
    store
        .create(&Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    // n1 reports only "live" among its endpoints, after both were allocated.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut ns = store
        .create(&NodeStatus::new("n1", NodeStatusSpec::default()))
        .await
        .unwrap();
    ns.status = Some(NodeStatusReport {
        updated: jiff::Timestamp::now().to_string(),
        endpoint_handles: vec!["live".into()],
        ..Default::default()
    });
    store.update_status(&ns).await.unwrap();

    let (o, text) = twillctl(&db, &["ipam", "show"]);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("10.70.0.0/26") && text.contains("n1") && text.contains("gone"),
        "{text}"
    );
    let (o, text) = twillctl(&db, &["ipam", "show", "--ip", &live.to_string()]);
    assert!(
        text.contains("held by \"live\"") && text.contains("pod shop/pod-live"),
        "{text}"
    );
    assert!(o.status.success(), "{text}");

    let (o, text) = twillctl(&db, &["ipam", "check"]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{leaked}")) && text.contains("not a live endpoint on node \"n1\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("{orphan}"))
            && text.contains("node \"gone\", which no longer exists"),
        "{text}"
    );
    assert!(text.contains("affine to node \"gone\""), "{text}");

    let (o, text) = twillctl(&db, &["ipam", "check", "--repair"]);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!("releasing {leaked} held by \"leaked\"")),
        "{text}"
    );
    assert!(text.contains("returning empty block"), "{text}");
    let (o, text) = twillctl(&db, &["ipam", "check"]);
    assert!(o.status.success(), "{text}");
    let (_, text) = twillctl(&db, &["ipam", "show", "--ip", &live.to_string()]);
    assert!(
        text.contains("held by \"live\""),
        "repair must not touch live pods: {text}"
    );

    let (o, text) = twillctl(&db, &["ipam", "release", "--ip", &live.to_string()]);
    assert!(o.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("releasing {live}")) && text.contains("requested with --ip"),
        "{text}"
    );
    let (o, text) = twillctl(&db, &["ipam", "show", "--ip", &live.to_string()]);
    assert!(text.contains("free"), "{text}");
    // Asked who holds an address nobody holds: said, and exit 1.
    assert_eq!(o.status.code(), Some(1), "{text}");
    let (o, _) = twillctl(&db, &["ipam", "release", "--ip", "10.70.0.200"]);
    assert_eq!(o.status.code(), Some(1));
    let (o, _) = twillctl(&db, &["ipam", "show", "--ip", "not-an-ip"]);
    assert_eq!(o.status.code(), Some(2));
}
