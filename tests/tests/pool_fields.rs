//! IPPool fields whose effect is on the wire, through `twillctl lab` with a
//! real BIRD ToR: `disableBGPExport` withdraws the pool's blocks from the
//! ToR and from the other nodes (so pods on other nodes stop reaching them)
//! and announcing them again restores both. The other IPPool fields are
//! covered in ipam (see docs/crd-fields.md).

use std::collections::BTreeSet;
use std::time::Duration;

use twill_tests::lab::Lab;
use twill_tests::{require_binary, require_root, wait_until};

const POOL: &str = "10.249.0.0/16";

/// Prefixes BIRD learned over BGP inside the test's pool.
fn bird_pool_prefixes(lab: &Lab) -> BTreeSet<String> {
    lab.bird_routes()
        .lines()
        .filter(|l| l.contains("[AS"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| p.starts_with("10.249."))
        .map(str::to_string)
        .collect()
}

fn set_export(lab: &Lab, disabled: bool) {
    let yaml = format!(
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: lab-ipv4\nspec:\n  cidr: {POOL}\n  blockSize: 26\n  natOutgoing: true\n  nodeSelector: all()\n  disableBGPExport: {disabled}\n"
    );
    twill_tests::bins::twillctl_apply(&lab.dir.join("twill.db"), &yaml);
}

/// n1's learned route to n2's pod block (protocol 116, via n2's address).
fn n1_learned_from_n2(lab: &Lab) -> bool {
    lab.twill_routes("n1")
        .lines()
        .any(|l| l.starts_with("10.249.") && l.contains("via 172.30.0.12"))
}

#[test]
fn disable_bgp_export_withdraws_the_pool_from_the_tor_and_the_mesh() {
    require_root();
    for (b, pkg) in [
        ("bird", "bird2"),
        ("birdc", "bird2"),
        ("ping", "iputils-ping"),
    ] {
        require_binary(b, pkg);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let topo = dir.path().join("topology.yaml");
    std::fs::write(&topo, format!("pool: {POOL}\npodsPerNode: 1\n")).expect("topology");
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--tor",
        "bird",
        "--topology",
        topo.to_str().expect("utf-8"),
    ]);
    assert!(lab.up_ok, "{}", lab.up_output);
    let blocks: BTreeSet<String> = lab.blocks().into_keys().collect();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let far = lab.pod_ip("n2-p1");

    // Exported (the default): the ToR and n1 learn every block.
    assert!(
        wait_until(Duration::from_secs(15), || bird_pool_prefixes(&lab)
            == blocks
            && n1_learned_from_n2(&lab)),
        "BIRD has {:?}, want {blocks:?}; n1 has\n{}",
        bird_pool_prefixes(&lab),
        lab.twill_routes("n1")
    );
    assert!(
        lab.ping("n1-p1", &far),
        "n1-p1 reaches n2-p1 while exported"
    );

    // disableBGPExport: withdrawn from the ToR and the other node (pools
    // are re-read at least every 30 s).
    set_export(&lab, true);
    assert!(
        wait_until(Duration::from_secs(45), || bird_pool_prefixes(&lab)
            .is_empty()
            && !n1_learned_from_n2(&lab)),
        "still announced: BIRD has {:?}; n1 has\n{}",
        bird_pool_prefixes(&lab),
        lab.twill_routes("n1")
    );
    assert!(
        !lab.ping("n1-p1", &far),
        "n1-p1 still reaches n2-p1 with the pool's blocks withdrawn"
    );

    // Exported again: everything comes back.
    set_export(&lab, false);
    assert!(
        wait_until(Duration::from_secs(45), || bird_pool_prefixes(&lab)
            == blocks
            && n1_learned_from_n2(&lab)),
        "not announced again: BIRD has {:?}; n1 has\n{}",
        bird_pool_prefixes(&lab),
        lab.twill_routes("n1")
    );
    assert!(
        wait_until(Duration::from_secs(5), || lab.ping("n1-p1", &far)),
        "n1-p1 reaches n2-p1 again"
    );
}
