//! IPPool fields the allocator reads, each shown changing what a node gets,
//! against a real embedded store: blockSize, nodeSelector (both ways),
//! disabled (no new addresses, existing ones stay) and allowedUses. The
//! fields with an effect on the wire (natOutgoing, disableBGPExport) are
//! tested in tests/tests; the list is docs/crd-fields.md.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use twill_api::Store;
use twill_api::resources::ippool::AllowedUse;
use twill_api::resources::{IPAMBlock, IPPool, IPPoolSpec};
use twill_api::store::embedded::EmbeddedStore;
use twill_ipam::{AssignRequest, Ipam, IpamError, PlanError};

fn store(dir: &tempfile::TempDir) -> Store {
    Store::new(EmbeddedStore::open(dir.path().join("s.db")).expect("open store"))
}

fn pool(name: &str, cidr: &str) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            cidr: cidr.into(),
            ..Default::default()
        },
    )
}

fn req(handle: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        ..Default::default()
    }
}

async fn blocks(s: &Store) -> Vec<IPAMBlock> {
    s.list::<IPAMBlock>().await.expect("list blocks").items
}

#[tokio::test]
async fn block_size_sets_the_blocks_a_node_claims() {
    for (size, want) in [(None, "10.60.0.0/26"), (Some(28), "10.60.0.0/28")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = store(&dir);
        let mut p = pool("p", "10.60.0.0/24");
        p.spec.block_size = size;
        s.create(&p).await.expect("create pool");
        let got = Ipam::new(s.clone(), "n1")
            .assign(&req("c1"))
            .await
            .expect("assign");
        assert_eq!(got[0].block.to_string(), want, "blockSize {size:?}");
        assert_eq!(blocks(&s).await[0].spec.cidr, want);
    }
    // IPv6 default: /122.
    let dir = tempfile::tempdir().expect("temp dir");
    let s = store(&dir);
    s.create(&pool("p6", "fd00:60::/112"))
        .await
        .expect("create");
    let got = Ipam::new(s, "n1").assign(&req("c1")).await.expect("assign");
    assert_eq!(got[0].block.to_string(), "fd00:60::/122");
}

#[tokio::test]
async fn node_selector_gives_addresses_only_to_the_nodes_it_selects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = store(&dir);
    let mut p = pool("rack-b", "10.61.0.0/24");
    p.spec.node_selector = Some("rack == 'b'".into());
    s.create(&p).await.expect("create pool");
    for (name, rack) in [("in-a", "a"), ("in-b", "b")] {
        s.create(&Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("rack".to_string(), rack.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .expect("create node");
    }
    let err = Ipam::new(s.clone(), "in-a")
        .assign(&req("c1"))
        .await
        .expect_err("rack a is not selected");
    assert!(
        matches!(err, IpamError::Plan(PlanError::NoPool { .. })),
        "{err}"
    );
    let got = Ipam::new(s.clone(), "in-b")
        .assign(&req("c2"))
        .await
        .expect("rack b is selected");
    assert!(got[0].block.contains(got[0].addr));
    assert_eq!(got[0].block.to_string(), "10.61.0.0/26");
}

#[tokio::test]
async fn a_disabled_pool_hands_out_nothing_new_and_keeps_what_it_gave() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = store(&dir);
    s.create(&pool("p", "10.62.0.0/24"))
        .await
        .expect("create pool");
    let ipam = Ipam::new(s.clone(), "n1");
    let first = ipam.assign(&req("c1")).await.expect("enabled pool");

    let mut p = s
        .get::<IPPool>(None, "p")
        .await
        .expect("get")
        .expect("pool exists");
    p.spec.disabled = true;
    s.update(&p).await.expect("disable");
    let err = ipam
        .assign(&req("c2"))
        .await
        .expect_err("disabled pool gives nothing new");
    assert!(err.to_string().contains("disabled"), "{err}");
    // The address it gave stays allocated, and its block stays the node's.
    let b = blocks(&s).await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].spec.affinity.as_deref(), Some("n1"));
    assert!(b[0].spec.allocations.iter().any(|a| a.handle == "c1"));
    assert_eq!(
        ipam.release_handle("c1").await.expect("release")[0].addr,
        first[0].addr
    );

    let mut p = s
        .get::<IPPool>(None, "p")
        .await
        .expect("get")
        .expect("pool exists");
    p.spec.disabled = false;
    s.update(&p).await.expect("enable");
    ipam.assign(&req("c2")).await.expect("enabled again");
}

#[tokio::test]
async fn allowed_uses_without_workload_gives_pods_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = store(&dir);
    let mut tunnel = pool("tunnel", "10.63.0.0/24");
    tunnel.spec.allowed_uses = vec![AllowedUse::Tunnel];
    s.create(&tunnel).await.expect("create pool");
    let ipam = Ipam::new(s.clone(), "n1");
    let err = ipam
        .assign(&req("c1"))
        .await
        .expect_err("a Tunnel-only pool is not for pods");
    assert!(
        matches!(err, IpamError::Plan(PlanError::NoPool { .. })),
        "{err}"
    );
    // Not even an address asked for by name.
    let err = ipam
        .assign(&AssignRequest {
            handle: "c1".into(),
            requested: vec!["10.63.0.5".parse().expect("address")],
            ..Default::default()
        })
        .await
        .expect_err("requested address in a Tunnel-only pool");
    assert!(
        matches!(err, IpamError::Plan(PlanError::NoPool { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("allowedUses"), "{err}");
    assert!(blocks(&s).await.is_empty());

    let mut both = s
        .get::<IPPool>(None, "tunnel")
        .await
        .expect("get")
        .expect("pool exists");
    both.spec.allowed_uses = vec![AllowedUse::Tunnel, AllowedUse::Workload];
    s.update(&both).await.expect("update");
    let got = ipam.assign(&req("c1")).await.expect("Workload allowed");
    assert_eq!(got[0].block.to_string(), "10.63.0.0/26");
}

/// Every address held in the store, with its holder.
async fn held(s: &Store) -> Vec<(std::net::IpAddr, String)> {
    let mut out = Vec::new();
    for b in blocks(s).await {
        let net: ipnetwork::IpNetwork = b.spec.cidr.parse().expect("block cidr");
        for a in &b.spec.allocations {
            let base = match net.network() {
                std::net::IpAddr::V4(v) => u128::from(u32::from(v)),
                std::net::IpAddr::V6(v) => u128::from(v),
            };
            let addr = match net {
                ipnetwork::IpNetwork::V4(_) => std::net::IpAddr::from(std::net::Ipv4Addr::from(
                    u32::try_from(base + u128::from(a.ordinal)).expect("v4"),
                )),
                ipnetwork::IpNetwork::V6(_) => {
                    std::net::IpAddr::from(std::net::Ipv6Addr::from(base + u128::from(a.ordinal)))
                }
            };
            out.push((addr, a.handle.clone()));
        }
    }
    out
}

#[tokio::test]
async fn changing_block_size_never_gives_an_address_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = store(&dir);
    let mut p = pool("p", "10.64.0.0/24");
    p.spec.block_size = Some(26);
    s.create(&p).await.expect("create pool");
    let n1 = Ipam::new(s.clone(), "n1");
    for i in 0..3 {
        n1.assign(&req(&format!("a{i}"))).await.expect("assign");
    }
    // Smaller blocks, then larger ones, while n1's /26 is in use.
    for size in [28u8, 25] {
        let mut p = s
            .get::<IPPool>(None, "p")
            .await
            .expect("get")
            .expect("pool exists");
        p.spec.block_size = Some(size);
        s.update(&p).await.expect("change blockSize");
        let other = Ipam::new(s.clone(), format!("m{size}"));
        for i in 0..3 {
            other
                .assign(&req(&format!("m{size}-{i}")))
                .await
                .expect("assign after the change");
        }
        // A requested address inside n1's /26 is n1's block, not a new one.
        let err = Ipam::new(s.clone(), format!("r{size}"))
            .assign(&AssignRequest {
                handle: format!("r{size}"),
                requested: vec!["10.64.0.1".parse().expect("addr")],
                ..Default::default()
            })
            .await
            .expect_err("10.64.0.1 is held by a1");
        assert!(err.to_string().contains("already held"), "{err}");
    }
    let all = held(&s).await;
    let mut seen = std::collections::BTreeMap::new();
    for (addr, h) in &all {
        if let Some(first) = seen.insert(*addr, h.clone()) {
            panic!("{addr} given to {first} and {h}: {all:?}");
        }
    }
    // No two blocks overlap.
    let nets: Vec<ipnetwork::IpNetwork> = blocks(&s)
        .await
        .iter()
        .map(|b| b.spec.cidr.parse().expect("cidr"))
        .collect();
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            assert!(
                !a.contains(b.network()) && !b.contains(a.network()),
                "blocks {a} and {b} overlap: {nets:?}"
            );
        }
    }
}
