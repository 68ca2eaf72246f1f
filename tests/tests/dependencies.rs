//! Dependency rules that keep Twill small where it must be: the CNI plugin
//! is exec'd for every pod, so it carries no async runtime and no
//! Kubernetes client; rtnetlink is pinned to one minor version.

use std::process::Command;

fn cargo_tree(package: &str) -> String {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn twill_cni_has_no_tokio_and_no_kube() {
    let tree = cargo_tree("twill-cni");
    assert!(tree.contains("twill-cni"), "{tree}");
    for forbidden in [
        "tokio ",
        "kube ",
        "kube-client ",
        "kube-runtime ",
        "k8s-openapi ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "twill-cni depends on {forbidden}:\n{tree}"
        );
    }
}

#[test]
fn rtnetlink_is_pinned_to_one_minor_version() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("rtnetlink"))
        .expect("rtnetlink in workspace dependencies");
    assert!(
        line.contains("\"=0."),
        "rtnetlink must be pinned with =MAJOR.MINOR: {line}"
    );
}

/// twillctl is a client: it must not link the node agent (rtnetlink,
/// nftables, the speaker) to share one naming helper.
#[test]
fn twillctl_does_not_link_the_node_agent() {
    let tree = cargo_tree("twillctl");
    assert!(tree.contains("twill-api"), "{tree}");
    for forbidden in ["twill-felix ", "twill-bgpd ", "rtnetlink ", "nftables "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "twillctl depends on {forbidden}:\n{tree}"
        );
    }
}
