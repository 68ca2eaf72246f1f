//! The allocator against a real embedded store, with several "nodes" (each
//! its own connection to the file, as separate agents would be) allocating
//! and releasing at the same time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use twill_api::Store;
use twill_api::resources::{IPAMBlock, IPPool, IPPoolSpec};
use twill_api::store::embedded::EmbeddedStore;
use twill_ipam::{AssignRequest, Ipam, IpamError, PlanError};

fn pool(name: &str, cidr: &str, block: u8) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            cidr: cidr.into(),
            block_size: Some(block),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_nodes_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.db");
    let store = Store::new(EmbeddedStore::open(&path).unwrap());
    // Small enough that the nodes exhaust blocks and start borrowing.
    store.create(&pool("p", "10.20.0.0/26", 29)).await.unwrap();

    let mut tasks = Vec::new();
    for n in 0..4 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let ipam = Ipam::new(
                Store::new(EmbeddedStore::open(&path).unwrap()),
                format!("node-{n}"),
            );
            let mut held = Vec::new();
            for i in 0..40 {
                let handle = format!("n{n}-c{i}");
                match ipam.assign(&req(&handle)).await {
                    Ok(a) => held.push((handle, a[0].addr)),
                    Err(IpamError::Plan(PlanError::Exhausted { .. })) => {}
                    Err(e) => panic!("{e}"),
                }
                // Release every third one again: addresses get reused.
                if i % 3 == 2
                    && let Some((h, _)) = held.pop()
                {
                    ipam.release_handle(&h).await.unwrap();
                }
            }
            held
        }));
    }
    let mut all: Vec<(String, IpAddr)> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let addrs: BTreeSet<IpAddr> = all.iter().map(|(_, a)| *a).collect();
    assert_eq!(addrs.len(), all.len(), "an address is held twice: {all:?}");
    // What the store says matches what the holders think they hold.
    let blocks = store.list::<IPAMBlock>().await.unwrap().items;
    let stored: BTreeMap<String, usize> = blocks
        .iter()
        .flat_map(|b| b.spec.allocations.iter().map(|a| a.handle.clone()))
        .fold(BTreeMap::new(), |mut m, h| {
            *m.entry(h).or_default() += 1;
            m
        });
    assert_eq!(stored.len(), all.len());
    assert!(stored.values().all(|n| *n == 1));
    // The nodes wanted more than the /26 holds: it ran full.
    assert!(all.len() > 56 && all.len() <= 64, "{} held", all.len());
    assert_eq!(blocks.len(), 8, "every block of the pool was claimed");
    // With no free block left, a node that owns nothing borrows a free
    // address from another node's block, or is told the pool is exhausted
    // when there is none.
    let late = Ipam::new(Store::new(EmbeddedStore::open(&path).unwrap()), "node-late");
    match late.assign(&req("late")).await {
        Ok(a) => {
            assert!(all.len() < 64, "an address was free after all");
            assert!(a[0].borrowed, "a node without blocks must borrow: {a:?}");
            assert!(
                !addrs.contains(&a[0].addr),
                "{} handed out twice",
                a[0].addr
            );
        }
        Err(IpamError::Plan(PlanError::Exhausted { .. })) => assert_eq!(all.len(), 64),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn dual_stack_gives_one_of_each_and_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(EmbeddedStore::open(dir.path().join("d.db")).unwrap());
    store.create(&pool("v4", "10.30.0.0/24", 26)).await.unwrap();
    store
        .create(&pool("v6", "fd00:30::/120", 122))
        .await
        .unwrap();
    let ipam = Ipam::new(store.clone(), "n1");
    let got = ipam.assign(&req("c1")).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].addr.is_ipv4() && got[1].addr.is_ipv6());
    // Retried ADD: same addresses.
    let again = ipam.assign(&req("c1")).await.unwrap();
    assert_eq!(
        again.iter().map(|a| a.addr).collect::<Vec<_>>(),
        got.iter().map(|a| a.addr).collect::<Vec<_>>()
    );

    // A requested v6 address that is taken fails the whole request, and the
    // v4 address it got first is given back.
    let taken = got[1].addr;
    let r = AssignRequest {
        handle: "c2".into(),
        requested: vec![taken],
        ..Default::default()
    };
    let err = ipam.assign(&r).await.unwrap_err();
    assert!(err.to_string().contains("already held"), "{err}");
    let blocks = store.list::<IPAMBlock>().await.unwrap().items;
    assert!(
        blocks
            .iter()
            .all(|b| b.spec.allocations.iter().all(|a| a.handle != "c2"))
    );

    // Release is idempotent.
    assert_eq!(ipam.release_handle("c1").await.unwrap().len(), 2);
    assert!(ipam.release_handle("c1").await.unwrap().is_empty());
}

#[tokio::test]
async fn empty_blocks_return_to_the_pool_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(EmbeddedStore::open(dir.path().join("g.db")).unwrap());
    store.create(&pool("p", "10.40.0.0/24", 26)).await.unwrap();
    let ipam = Ipam::new(store.clone(), "n1");
    ipam.assign(&req("c1")).await.unwrap();
    assert!(
        ipam.release_empty_blocks(Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "block in use"
    );
    ipam.release_handle("c1").await.unwrap();
    assert!(
        ipam.release_empty_blocks(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty(),
        "grace not over"
    );
    assert_eq!(
        ipam.release_empty_blocks(Duration::ZERO).await.unwrap(),
        vec!["10.40.0.0/26".to_string()]
    );
    assert!(store.list::<IPAMBlock>().await.unwrap().items.is_empty());
}

#[tokio::test]
async fn pools_that_do_not_select_the_node_give_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(EmbeddedStore::open(dir.path().join("s.db")).unwrap());
    let mut p = pool("rack-b", "10.50.0.0/24", 26);
    p.spec.node_selector = Some("rack == 'b'".into());
    store.create(&p).await.unwrap();
    let err = Ipam::new(store, "n1").assign(&req("c")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no enabled IPv4 IPPool selects node \"n1\""),
        "{err}"
    );
}
