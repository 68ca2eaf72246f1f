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

/// The columns of the line of `ipam show` that starts with `family`.
fn family_row(text: &str, family: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(family))
        .unwrap_or_else(|| panic!("no {family} line in:\n{text}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A dual-stack store: `ipam show` totals each family on its own line
/// (an IPv6 pool's capacity as a power of two) and `ipam check` counts the
/// problems per family, then repairs both.
#[tokio::test]
async fn show_and_check_count_each_family() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let store = Store::new(EmbeddedStore::open(&db).unwrap());
    for (name, cidr, size) in [("p4", "10.71.0.0/24", 26), ("p6", "fd00:71::/56", 122)] {
        store
            .create(&IPPool::new(
                name,
                IPPoolSpec {
                    cidr: cidr.into(),
                    block_size: Some(size),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let n1 = Ipam::new(store.clone(), "n1");
    let gone = Ipam::new(store.clone(), "gone");
    for h in ["a", "b", "c"] {
        let got = n1.assign(&req(h)).await.unwrap();
        assert_eq!(got.len(), 2, "one address of each family: {got:?}");
    }
    let ghost = gone.assign(&req("ghost")).await.unwrap();
    let ghost6 = ghost.iter().find(|a| a.addr.is_ipv6()).unwrap().addr;
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

    let (o, text) = twillctl(&db, &["ipam", "show"]);
    assert!(o.status.success(), "{text}");
    // FAMILY POOLS BLOCKS ALLOCATED IN-BLOCKS CAPACITY USAGE: n1 and gone
    // hold a block of each family, 4 addresses each.
    assert_eq!(
        family_row(&text, "IPv4"),
        ["IPv4", "1", "2", "4", "128", "256", "1.56%"],
        "{text}"
    );
    assert_eq!(
        family_row(&text, "IPv6"),
        ["IPv6", "1", "2", "4", "128", "2^72", "0.00%"],
        "{text}"
    );
    assert!(text.contains("fd00:71::/122"), "{text}");

    let (o, text) = twillctl(&db, &["ipam", "check"]);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains(&ghost6.to_string()), "{text}");
    // gone's two addresses and its two blocks.
    assert!(
        text.contains("4 problem(s) (IPv4 2, IPv6 2, LoadBalancer 0)"),
        "{text}"
    );
    let (o, text) = twillctl(&db, &["ipam", "check", "--repair"]);
    assert!(o.status.success(), "{text}");
    let (o, text) = twillctl(&db, &["ipam", "check"]);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("IPAM is consistent: 2 blocks (IPv4 1, IPv6 1), 1 nodes"),
        "{text}"
    );
    // With only IPv4 left, `show` has no IPv6 line.
    let store2 = Store::new(EmbeddedStore::open(dir.path().join("v4.db")).unwrap());
    store2
        .create(&IPPool::new(
            "p4",
            IPPoolSpec {
                cidr: "10.71.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    drop(store2);
    let (o, text) = twillctl(&dir.path().join("v4.db"), &["ipam", "show"]);
    assert!(o.status.success(), "{text}");
    assert_eq!(
        family_row(&text, "IPv4"),
        ["IPv4", "1", "0", "0", "0", "256", "0.00%"]
    );
    assert!(!text.lines().any(|l| l.starts_with("IPv6")), "{text}");
}
