//! twillctl as a user runs it: against a fresh embedded store, with the
//! examples, with invalid input, and with a stale copy (conflict).

use std::path::Path;
use std::process::{Command, Output};

fn twillctl(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twillctl"))
        .args(args)
        .env("TWILL_DATASTORE_PATH", db)
        .env_remove("TWILL_DATASTORE")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run twillctl")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn examples_apply_and_list_without_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let o = twillctl(&db, &["apply", "-f", "examples/"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    for want in [
        "ippool/default-ipv4 created",
        "bgpconfiguration/default created",
        "bgppeer/rack-a-tor created",
        "bgppeer/route-reflectors created",
        "globalnetworkpolicy/protect-metrics created",
        "networkpolicy/db-from-web created",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let o = twillctl(&db, &["get", "ippools", "-o", "wide"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    let row = out
        .lines()
        .find(|l| l.starts_with("default-ipv4"))
        .expect(&out);
    assert!(
        row.contains("10.244.0.0/16") && row.contains("all()"),
        "{out}"
    );
    // Applying again changes nothing.
    let (out, _) = text(&twillctl(&db, &["apply", "-f", "examples/"]));
    assert!(out.lines().all(|l| l.ends_with("unchanged")), "{out}");
    // Every output format works.
    let (json, _) = text(&twillctl(
        &db,
        &["get", "pool", "default-ipv4", "-o", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spec"]["cidr"], "10.244.0.0/16");
    let (names, _) = text(&twillctl(
        &db,
        &["get", "netpol", "-n", "shop", "-o", "name"],
    ));
    assert_eq!(names.trim(), "networkpolicy/db-from-web");
}

#[test]
fn invalid_pool_names_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    assert!(
        twillctl(&db, &["apply", "-f", "examples/ippool.yaml"])
            .status
            .success()
    );
    let before = text(&twillctl(&db, &["get", "pools", "-o", "json"])).0;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: fine\nspec:\n  cidr: 10.99.0.0/16\n---\napiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: broken\nspec:\n  cidr: 10.98.0.1/16\n",
    )
    .unwrap();
    let o = twillctl(&db, &["apply", "-f", bad.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("document 2 (line 8)"), "{err}");
    assert!(
        err.contains("line 13: spec.cidr: \"10.98.0.1/16\": host bits set"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    // Not even the valid first document was written.
    assert_eq!(
        text(&twillctl(&db, &["get", "pools", "-o", "json"])).0,
        before
    );
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let o = twillctl(&db, &["get", "widgets"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("unknown kind \"widgets\""));
    assert_eq!(twillctl(&db, &["get"]).status.code(), Some(2));
    assert_eq!(
        twillctl(&db, &["label", "pool", "x", "novalue"])
            .status
            .code(),
        Some(2)
    );
    // No store yet: nothing to delete (and nothing is created).
    let o = twillctl(&db, &["delete", "pool", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no embedded datastore"));
    assert!(
        twillctl(&db, &["delete", "pool", "nope", "--ignore-not-found"])
            .status
            .success()
    );
    assert!(!db.exists());
    assert!(
        twillctl(&db, &["apply", "-f", "examples/bgpconfiguration.yaml"])
            .status
            .success()
    );
    let o = twillctl(&db, &["delete", "pool", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("IPPool \"nope\" not found"));
    assert!(
        twillctl(&db, &["delete", "pool", "nope", "--ignore-not-found"])
            .status
            .success()
    );
    assert!(
        twillctl(&db, &["create", "-f", "examples/ippool.yaml"])
            .status
            .success()
    );
    let o = twillctl(&db, &["create", "-f", "examples/ippool.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("already exists"));
}

#[test]
fn stale_copy_conflicts_with_the_current_revision() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    assert!(
        twillctl(&db, &["apply", "-f", "examples/ippool.yaml"])
            .status
            .success()
    );
    let (yaml, _) = text(&twillctl(
        &db,
        &["get", "pool", "default-ipv4", "-o", "yaml"],
    ));
    let copy = dir.path().join("copy.yaml");
    std::fs::write(
        &copy,
        yaml.replace("natOutgoing: true", "natOutgoing: false"),
    )
    .unwrap();
    // Someone else changes the pool after we took our copy.
    let o = twillctl(&db, &["label", "pool", "default-ipv4", "team=net"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = twillctl(&db, &["replace", "-f", copy.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("was changed by someone else"), "{err}");
    assert!(err.contains("the store has revision"), "{err}");
    // Patch and label work on the current revision.
    assert!(
        twillctl(
            &db,
            &[
                "patch",
                "pool",
                "default-ipv4",
                "-p",
                "{\"spec\":{\"disabled\":true}}"
            ]
        )
        .status
        .success()
    );
    let (json, _) = text(&twillctl(
        &db,
        &["get", "pool", "default-ipv4", "-o", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spec"]["disabled"], true);
    assert_eq!(v["metadata"]["labels"]["team"], "net");
    let o = twillctl(&db, &["label", "pool", "default-ipv4", "team=web"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "changing a label needs --overwrite"
    );
    assert!(
        twillctl(&db, &["label", "pool", "default-ipv4", "team-"])
            .status
            .success()
    );
}

#[test]
fn crds_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let o = twillctl(&db, &["crds", "--check", "deploy/crds"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = twillctl(&db, &["completion", "bash"]);
    assert!(o.status.success() && text(&o).0.contains("twillctl"));
}
