//! Dependency rules that keep Twill small where it must be: the CNI plugin
//! is exec'd for every pod, so it carries no async runtime and no
//! Kubernetes client; rtnetlink is pinned to one minor version; the speaker
//! library carries no CLI crates and no fuzz engine.

use std::process::Command;

fn cargo_tree(package: &str) -> String {
    cargo_tree_with(&["-p", package, "-e", "normal,build"])
}

/// `cargo tree` with `args`, one crate per line without the tree drawing.
fn cargo_tree_with(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .arg("tree")
        .args(args)
        .args(["--prefix", "none", "--offline"])
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

fn depends_on(tree: &str, krate: &str) -> bool {
    tree.lines().any(|l| l.starts_with(&format!("{krate} ")))
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

/// The speaker library carries no command-line crates and no fuzz engine:
/// anyhow comes only with the `cli` feature of the standalone binaries,
/// `wire::fuzz` only with `fuzz`, and twill-node (which has its own CLI)
/// turns neither on. The standalone twill-bgpd parses its arguments and
/// writes its log lines itself (its resident code is measured against
/// BIRD's, docs/bgp.md#memory): clap and tracing-subscriber stay out of it.
#[test]
fn the_bgpd_library_links_no_cli_crates_and_twill_node_no_fuzz_engine() {
    let cli_crates = ["anyhow"];
    // The binaries' build does pull them: the check below can see them.
    let bins = cargo_tree_with(&["-p", "twill-bgpd", "-e", "normal"]);
    for c in cli_crates {
        assert!(
            depends_on(&bins, c),
            "twill-bgpd's binaries need {c}:\n{bins}"
        );
    }
    for c in ["clap", "tracing-subscriber"] {
        assert!(
            !depends_on(&bins, c),
            "twill-bgpd's binaries link {c} again:\n{bins}"
        );
    }
    let lib = cargo_tree_with(&["-p", "twill-bgpd", "--no-default-features", "-e", "normal"]);
    assert!(depends_on(&lib, "tokio"), "{lib}");
    for c in cli_crates.into_iter().chain(["zettabgp"]) {
        assert!(
            !depends_on(&lib, c),
            "the bgpd library depends on {c}:\n{lib}"
        );
    }

    // Which features of the speaker a build turns on: its own binaries'
    // build shows "cli" (so the check can see a feature), twill-node none of
    // default, cli or fuzz.
    let features_of_bgpd =
        |package| cargo_tree_with(&["-p", package, "-e", "features,normal", "-i", "twill-bgpd"]);
    let enabled = |tree: &str, feature: &str| {
        let line = format!("twill-bgpd feature \"{feature}\"");
        tree.lines().any(|l| l.starts_with(&line))
    };
    let own = features_of_bgpd("twill-bgpd");
    assert!(enabled(&own, "cli"), "{own}");
    let node = features_of_bgpd("twill-felix");
    assert!(node.contains("twill-felix v"), "{node}");
    for feature in ["default", "cli", "fuzz", "compare-zettabgp"] {
        assert!(
            !enabled(&node, feature),
            "twill-node enables twill-bgpd's {feature}:\n{node}"
        );
    }
}
