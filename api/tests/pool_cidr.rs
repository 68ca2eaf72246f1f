//! An IPPool's CIDR may change only so that every block cut from it stays
//! inside it: a block left outside every pool would hold pod addresses that
//! NAT (pod to pod masqueraded) and allocation no longer treat as pod
//! addresses. The refusal names the field, the blocks and what to do; a
//! pool without blocks outside the new CIDR changes freely.

use twill_api::resources::{IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec, block_name};
use twill_api::store::embedded::EmbeddedStore;
use twill_api::{Store, StoreError};

fn pool(cidr: &str) -> IPPool {
    IPPool::new(
        "p",
        IPPoolSpec {
            cidr: cidr.into(),
            ..Default::default()
        },
    )
}

async fn set_cidr(s: &Store, cidr: &str) -> Result<IPPool, StoreError> {
    let mut p = s
        .get::<IPPool>(None, "p")
        .await
        .expect("get")
        .expect("pool exists");
    p.spec.cidr = cidr.into();
    s.update(&p).await
}

#[tokio::test]
async fn a_pool_cidr_cannot_leave_its_blocks_outside() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Store::new(EmbeddedStore::open(dir.path().join("s.db")).expect("open"));
    s.create(&pool("10.80.0.0/24")).await.expect("create pool");
    // No blocks yet: the pool moves freely.
    set_cidr(&s, "10.81.0.0/24")
        .await
        .expect("no blocks: any change");
    set_cidr(&s, "10.80.0.0/24").await.expect("and back");

    s.create(&IPAMBlock::new(
        &block_name("10.80.0.0/26"),
        IPAMBlockSpec {
            cidr: "10.80.0.0/26".into(),
            affinity: Some("n1".into()),
            pool: "p".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("create block");
    for bad in ["10.80.0.128/25", "10.81.0.0/24", "10.80.0.64/26"] {
        match set_cidr(&s, bad).await {
            Err(StoreError::Invalid(v)) => {
                assert_eq!(v.errors[0].field, "spec.cidr", "{v}");
                let text = v.to_string();
                assert!(
                    text.contains("IPPool \"p\"")
                        && text.contains("10.80.0.0/26")
                        && text.contains("create a new one"),
                    "{text}"
                );
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let kept = s
        .get::<IPPool>(None, "p")
        .await
        .expect("get")
        .expect("pool");
    assert_eq!(kept.spec.cidr, "10.80.0.0/24", "nothing was changed");
    // Growing keeps the block inside: allowed.
    set_cidr(&s, "10.80.0.0/23").await.expect("grow");
    set_cidr(&s, "10.80.0.0/25")
        .await
        .expect("shrink around the block");
}
