//! The habits kubectl and calicoctl users bring, tried as they would type
//! them against a real embedded store: closed pipes, empty input, strict
//! fields, label rules, selectors, dry runs, diff, version, watch,
//! completion words, --kubeconfig/--context, and read-only commands that
//! must not create anything. Each refusal is checked to change nothing, next
//! to the same command succeeding once the fault is removed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};
use twill_testkit::http_fake::HttpFake;

fn cmd(db: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twillctl"));
    c.args(args)
        .env("TWILL_DATASTORE_PATH", db)
        .env_remove("TWILL_DATASTORE")
        .env_remove("KUBECONFIG")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

fn twillctl(db: &Path, args: &[&str]) -> Output {
    cmd(db, args)
        .stdin(Stdio::null())
        .output()
        .expect("run twillctl")
}

fn with_stdin(db: &Path, args: &[&str], input: &str) -> Output {
    let mut child = cmd(db, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twillctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// A store with the examples, plus a NodeStatus report for node n1.
fn seeded() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let o = twillctl(&db, &["apply", "-f", "examples/"]);
    assert!(o.status.success(), "{:?}", text(&o));
    (dir, db)
}

fn pool(name: &str, cidr: &str, extra: &str) -> String {
    format!(
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: {name}\n{extra}spec:\n  cidr: {cidr}\n  natOutgoing: true\n"
    )
}

/// Every read command, as people pipe it into `head`.
fn read_commands() -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    for k in [
        "ippools",
        "ipamblocks",
        "bgpconfigurations",
        "bgppeers",
        "globalnetworkpolicies",
        "nodestatuses",
        "nodes",
        "namespaces",
        "pods",
        "networkpolicies",
        "secrets",
    ] {
        for o in ["table", "yaml", "json", "name"] {
            cmds.push(vec![
                "get".into(),
                k.into(),
                "-A".into(),
                "-o".into(),
                o.into(),
            ]);
        }
    }
    for c in [
        "ipam show",
        "ipam check",
        "node status",
        "policy show n1",
        "policy explain 10.244.0.1 10.244.0.2",
        "version",
        "version --client -o yaml",
        "crds",
        "completion bash",
        "completion zsh",
        "completion fish",
        "diff -f examples/",
        "get pools --show-labels",
        "--help",
        "get --help",
        "__complete kinds",
    ] {
        cmds.push(c.split(' ').map(String::from).collect());
    }
    cmds
}

/// No panic, an exit code (not a signal), and one a shell can read:
/// success, failure, usage error, or "stdout was closed" (141).
fn assert_sane(what: &str, status: std::process::ExitStatus, stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{what}: panicked:\n{stderr}"
    );
    let c = status
        .code()
        .unwrap_or_else(|| panic!("{what}: killed by a signal: {status:?}"));
    assert!(matches!(c, 0 | 1 | 2 | 141), "{what}: exit {c}\n{stderr}");
}

#[test]
fn every_read_command_survives_a_closed_stdout() {
    let (_dir, db) = seeded();
    for args in read_commands() {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let what = a.join(" ");
        // The reader is gone before the first byte: the first write fails.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = cmd(&db, &a)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_sane(&what, out.status, &err);
        // What the same command does with a reader: its exit code is
        // 141 above only because the output was lost.
        // (clap prints --help itself and ignores the closed pipe: exit 0.)
        let full = twillctl(&db, &a);
        if code(&full) == 0 && !full.stdout.is_empty() && !a.contains(&"--help") {
            assert_eq!(code(&out), 141, "{what}: {err}");
            assert!(err.is_empty(), "{what}: said {err:?}");
        }
    }
}

#[test]
fn a_reader_that_stops_after_one_line_like_head() {
    let (dir, db) = seeded();
    // Enough output to fill the pipe buffer many times over.
    let mut many = String::new();
    for i in 0..600 {
        many += &pool(
            &format!("p{i}"),
            &format!("10.{}.{}.0/24", 100 + i / 250, i % 250),
            "",
        );
        many += "---\n";
    }
    let many_path = dir.path().join("many.yaml");
    std::fs::write(&many_path, &many).expect("write");
    let o = twillctl(&db, &["apply", "-f", &many_path.display().to_string()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let all = read_commands();
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["get", "pools", "-o", "yaml"],
        vec!["get", "pools", "-o", "json"],
        vec!["get", "pools", "-w"],
    ];
    cases.extend(
        all.iter()
            .map(|c| c.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    for args in cases {
        // Failures, and empty lists (said on stderr), print nothing on
        // stdout: the reader sees EOF at once.
        let mut child: Child = cmd(&db, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read");
        if first.is_empty() {
            let out = child.wait_with_output().expect("wait");
            assert_sane(
                &args.join(" "),
                out.status,
                &String::from_utf8_lossy(&out.stderr),
            );
            continue;
        }
        // stdout is closed now (the reader was dropped).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut touch = 0;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if args.contains(&"-w") {
                // A watch only notices when it next writes: make a change.
                touch += 1;
                let label = format!("touched=t{touch}");
                let o = twillctl(&db, &["label", "pool", "p1", &label, "--overwrite"]);
                assert!(o.status.success(), "{:?}", text(&o));
            }
            assert!(Instant::now() < deadline, "{args:?} did not end");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
        assert_sane(&args.join(" "), status, &err);
        // yaml and json of 600 pools overflow the pipe buffer, and a watch
        // writes again after the change: all of them meet the closed pipe.
        let big = args.starts_with(&["get", "pools"]) && args.len() > 2;
        if big && (args.contains(&"yaml") || args.contains(&"json") || args.contains(&"-w")) {
            assert_eq!(status.code(), Some(141), "{args:?}: {err}");
        }
    }
}

#[test]
fn an_empty_manifest_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").expect("write");
    let comments = dir.path().join("comments.yaml");
    std::fs::write(&comments, "# nothing\n---\n\n").expect("write");
    let empty_dir = dir.path().join("nothing-here");
    std::fs::create_dir(&empty_dir).expect("mkdir");
    for verb in ["apply", "create", "replace", "delete", "diff"] {
        for f in [&empty, &comments] {
            let o = twillctl(&db, &[verb, "-f", &f.display().to_string()]);
            let (_, err) = text(&o);
            assert_ne!(code(&o), 0, "{verb} {f:?}");
            assert!(
                err.contains(&format!("no objects in {}", f.display())),
                "{verb}: {err}"
            );
        }
        let o = twillctl(&db, &[verb, "-f", &empty_dir.display().to_string()]);
        assert_ne!(code(&o), 0, "{verb} dir");
        assert!(text(&o).1.contains("no manifests"), "{:?}", text(&o));
        // Closed (empty) standard input.
        let o = twillctl(&db, &[verb, "-f", "-"]);
        assert_ne!(code(&o), 0, "{verb} -");
        assert!(
            text(&o).1.contains("no objects in <stdin>"),
            "{:?}",
            text(&o)
        );
    }
    assert!(!db.exists(), "a refused apply created the store");
    // The positive path: one object on stdin is applied.
    let o = with_stdin(&db, &["apply", "-f", "-"], &pool("p", "10.9.0.0/16", ""));
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("ippool/p created"));
}

#[test]
fn read_only_commands_never_create_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("typo").join("twill.db");
    for args in [
        vec!["get", "pools"],
        vec!["get", "pools", "-w"],
        vec!["ipam", "show"],
        vec!["ipam", "check"],
        vec!["node", "status"],
        vec!["policy", "show", "n1"],
        vec!["diff", "-f", "examples/ippool.yaml"],
        // Nothing to change in a store that does not exist, either.
        vec!["delete", "pool", "default-ipv4"],
        vec!["patch", "pool", "default-ipv4", "-p", "{}"],
        vec!["label", "pool", "default-ipv4", "a=b"],
    ] {
        let o = twillctl(&db, &args);
        let (_, err) = text(&o);
        assert_ne!(code(&o), 0, "{args:?}");
        assert!(
            err.contains(&db.display().to_string()) && err.contains("no embedded datastore"),
            "{args:?}: {err}"
        );
        assert!(
            !db.parent().unwrap().exists(),
            "{args:?} created the directory"
        );
    }
    // Writing creates it, and then reading works.
    assert!(
        twillctl(&db, &["apply", "-f", "examples/ippool.yaml"])
            .status
            .success()
    );
    assert!(twillctl(&db, &["get", "pools"]).status.success());
}

#[test]
fn unknown_fields_are_refused_with_the_closest_name_and_change_nothing() {
    let (dir, db) = seeded();
    let f = dir.path().join("typo.yaml");
    std::fs::write(
        &f,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: typo\nspec:\n  cidr: 10.50.0.0/16\n  natOutgong: true\n",
    )
    .expect("write");
    let path = f.display().to_string();
    for verb in ["apply", "create", "replace", "diff"] {
        let o = twillctl(&db, &[verb, "-f", &path]);
        let (_, err) = text(&o);
        assert_ne!(code(&o), 0, "{verb}");
        assert!(
            err.contains("unknown field spec.natOutgong (did you mean natOutgoing?)"),
            "{verb}: {err}"
        );
        assert!(err.contains("line 7"), "{verb}: {err}");
    }
    assert_ne!(code(&twillctl(&db, &["get", "pool", "typo"])), 0);
    std::fs::write(
        &f,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: typo\nspec:\n  cidr: 10.50.0.0/16\n  natOutgoing: true\n",
    )
    .expect("write");
    assert!(twillctl(&db, &["apply", "-f", &path]).status.success());
    // patch: the same rule, and the object is left as it was.
    let before = text(&twillctl(&db, &["get", "pool", "typo", "-o", "json"])).0;
    let o = twillctl(
        &db,
        &[
            "patch",
            "pool",
            "typo",
            "-p",
            r#"{"spec":{"natOutgoin":false}}"#,
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(code(&o), 1, "{out}{err}");
    assert!(!out.contains("patched"), "{out}");
    assert!(
        err.contains("unknown field spec.natOutgoin (did you mean natOutgoing?)")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        before,
        text(&twillctl(&db, &["get", "pool", "typo", "-o", "json"])).0
    );
    let o = twillctl(
        &db,
        &[
            "patch",
            "pool",
            "typo",
            "-p",
            r#"{"spec":{"natOutgoing":false}}"#,
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&text(&twillctl(&db, &["get", "pool", "typo", "-o", "json"])).0)
            .expect("json");
    assert_eq!(v["spec"]["natOutgoing"], false);
}

#[test]
fn type_errors_and_labels_are_said_in_the_users_terms() {
    let (dir, db) = seeded();
    let f = dir.path().join("p.yaml");
    let path = f.display().to_string();
    std::fs::write(
        &f,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.60.0.0/16\n  blockSize: big\n",
    )
    .expect("write");
    let (_, err) = text(&twillctl(&db, &["apply", "-f", &path]));
    assert!(err.contains("must be a whole number 0–255"), "{err}");
    assert!(!err.contains("u8"), "{err}");
    // Labels at Kubernetes' limits are accepted; past them, refused.
    let prefix = format!("{}.example.com", "a".repeat(241));
    let key = format!("{prefix}/{}", "k".repeat(63));
    assert_eq!(key.len(), 317);
    let value = "v".repeat(63);
    for (k, v, ok) in [
        (key.as_str(), value.as_str(), true),
        ("bad key", "x", false),
        ("ok", &*"v".repeat(64), false),
        (&*format!("a{key}"), "x", false),
        ("ok", "-x", false),
        ("ok", "", true),
    ] {
        std::fs::write(
            &f,
            pool(
                "lab",
                "10.61.0.0/16",
                &format!("  labels:\n    {k:?}: {v:?}\n"),
            ),
        )
        .expect("write");
        let o = twillctl(&db, &["apply", "-f", &path]);
        let (_, err) = text(&o);
        assert_eq!(o.status.success(), ok, "{k:?}={v:?}: {err}");
        if !ok {
            assert!(err.contains("invalid label"), "{err}");
            assert!(err.contains("nothing was changed"), "{err}");
        }
    }
    let o = twillctl(&db, &["label", "pool", "lab", "bad key=x"]);
    assert_eq!(code(&o), 2, "{:?}", text(&o));
    let o = twillctl(
        &db,
        &["label", "pool", "lab", &format!("ok={}", "v".repeat(70))],
    );
    assert_eq!(code(&o), 2, "{:?}", text(&o));
    assert!(text(&o).1.contains("70 characters"), "{:?}", text(&o));
    assert!(
        twillctl(&db, &["label", "pool", "lab", "ok=fine", "--overwrite"])
            .status
            .success()
    );
}

#[test]
fn get_selects_by_label_and_shows_labels() {
    let (dir, db) = seeded();
    let f = dir.path().join("l.yaml");
    std::fs::write(
        &f,
        [
            pool(
                "ra",
                "10.70.0.0/16",
                "  labels:\n    rack: a\n    tier: web\n",
            ),
            pool("rb", "10.71.0.0/16", "  labels:\n    rack: b\n"),
            pool("none", "10.72.0.0/16", ""),
        ]
        .join("---\n"),
    )
    .expect("write");
    assert!(
        twillctl(&db, &["apply", "-f", &f.display().to_string()])
            .status
            .success()
    );
    let names = |sel: &str| -> Vec<String> {
        let o = twillctl(&db, &["get", "pools", "-l", sel, "-o", "name"]);
        assert!(o.status.success(), "{sel}: {:?}", text(&o));
        let mut v: Vec<String> = text(&o).0.lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(names("rack=a"), ["ippool/ra"]);
    assert_eq!(names("rack==b"), ["ippool/rb"]);
    assert_eq!(names("rack in (a, b)"), ["ippool/ra", "ippool/rb"]);
    assert_eq!(names("rack,tier"), ["ippool/ra"]);
    assert_eq!(names("!rack").len(), 3, "none and the two examples");
    assert!(names("rack notin (a)").contains(&"ippool/none".to_string()));
    assert!(!names("rack!=a").contains(&"ippool/ra".to_string()));
    let o = twillctl(&db, &["get", "pools", "-l", "bad key"]);
    assert_eq!(code(&o), 2, "{:?}", text(&o));
    let o = twillctl(&db, &["get", "pools", "-l", "rack=z"]);
    assert!(o.status.success());
    assert!(
        text(&o).1.contains("No ippools found matching"),
        "{:?}",
        text(&o)
    );
    let (out, _) = text(&twillctl(&db, &["get", "pools", "--show-labels"]));
    let header = out.lines().next().expect("header");
    assert!(header.ends_with("LABELS"), "{out}");
    let ra = out.lines().find(|l| l.starts_with("ra ")).expect(&out);
    assert!(ra.ends_with("rack=a,tier=web"), "{out}");
    let none = out.lines().find(|l| l.starts_with("none ")).expect(&out);
    assert!(none.ends_with("<none>"), "{out}");
}

#[test]
fn dry_run_says_what_would_happen_and_changes_nothing() {
    let (dir, db) = seeded();
    let f = dir.path().join("d.yaml");
    let path = f.display().to_string();
    std::fs::write(&f, pool("dry", "10.80.0.0/16", "")).expect("write");
    for flag in ["--dry-run", "--dry-run=client"] {
        let o = twillctl(&db, &["apply", "-f", &path, flag]);
        assert!(o.status.success(), "{:?}", text(&o));
        assert_eq!(text(&o).0.trim(), "ippool/dry created (dry run)");
        assert_eq!(code(&twillctl(&db, &["get", "pool", "dry"])), 1);
    }
    let o = twillctl(&db, &["create", "-f", &path]);
    assert!(o.status.success());
    let before = text(&twillctl(&db, &["get", "pool", "dry", "-o", "json"])).0;
    std::fs::write(&f, pool("dry", "10.80.0.0/16", "").replace("true", "false")).expect("write");
    let o = twillctl(&db, &["apply", "-f", &path, "--dry-run"]);
    assert_eq!(text(&o).0.trim(), "ippool/dry configured (dry run)");
    let o = twillctl(&db, &["create", "-f", &path, "--dry-run"]);
    assert_eq!(
        code(&o),
        1,
        "create of an existing object fails in a dry run too"
    );
    assert_eq!(
        before,
        text(&twillctl(&db, &["get", "pool", "dry", "-o", "json"])).0
    );
    let o = twillctl(&db, &["apply", "-f", &path, "--dry-run=server"]);
    assert_eq!(code(&o), 2, "{:?}", text(&o));
    assert!(text(&o).1.contains("--dry-run=client"), "{:?}", text(&o));
    // Without the flag the change is made.
    let o = twillctl(&db, &["apply", "-f", &path]);
    assert_eq!(text(&o).0.trim(), "ippool/dry configured");
}

#[test]
fn diff_exits_0_when_same_1_when_different_2_on_error() {
    let (dir, db) = seeded();
    let o = twillctl(&db, &["diff", "-f", "examples/"]);
    assert_eq!(code(&o), 0, "{:?}", text(&o));
    assert!(o.stdout.is_empty());
    let f = dir.path().join("d.yaml");
    let path = f.display().to_string();
    let changed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ippool.yaml"),
    )
    .expect("read")
    .replace("natOutgoing: true", "natOutgoing: false");
    std::fs::write(&f, changed).expect("write");
    let o = twillctl(&db, &["diff", "-f", &path]);
    let (out, err) = text(&o);
    assert_eq!(code(&o), 1, "{out}{err}");
    assert!(out.contains("--- ippool/default-ipv4 (stored)"), "{out}");
    assert!(out.contains("-  natOutgoing: true"), "{out}");
    assert!(out.contains("+  natOutgoing: false"), "{out}");
    assert!(
        out.find("-  natOutgoing: true") < out.find("+  natOutgoing: false"),
        "removal before addition: {out}"
    );
    assert!(!out.contains("default-ipv6"), "{out}");
    std::fs::write(&f, "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: x\nspec:\n  cidr: 10.1.1.0/16\n").expect("write");
    assert_eq!(code(&twillctl(&db, &["diff", "-f", &path])), 2);
}

#[test]
fn version_names_the_client_and_the_server() {
    let (_dir, db) = seeded();
    let (out, _) = text(&twillctl(&db, &["version"]));
    assert!(
        out.contains(&format!(
            "Client Version: twillctl {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert!(
        out.contains("Server Version: none (embedded datastore"),
        "{out}"
    );
    let (out, _) = text(&twillctl(&db, &["version", "--client", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["clientVersion"]["twillctl"], env!("CARGO_PKG_VERSION"));
    assert!(v.get("serverVersion").is_none());
}

/// A fake API server (loopback) answering every request with a version.
fn fake_version_server(git: &'static str) -> HttpFake {
    HttpFake::serve(move |_| {
        (200, format!(
            r#"{{"major":"1","minor":"30","gitVersion":"{git}","gitCommit":"x","gitTreeState":"clean","buildDate":"2026-01-01T00:00:00Z","goVersion":"go1","compiler":"gc","platform":"linux/amd64"}}"#
        ))
    })
    .expect("fake API server")
}

#[test]
fn kubeconfig_and_context_choose_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Cluster a: a port nobody answers on (bound, then closed below).
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = fake_version_server("v1.30.0-cluster-b");
    let (pa, pb) = (a.local_addr().expect("addr").port(), b.port);
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: ctx-a\nclusters:\n- name: a\n  cluster:\n    server: http://127.0.0.1:{pa}\n- name: b\n  cluster:\n    server: http://127.0.0.1:{pb}\ncontexts:\n- name: ctx-a\n  context:\n    cluster: a\n    user: u\n- name: ctx-b\n  context:\n    cluster: b\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .expect("write");
    let kcs = kc.display().to_string();
    let db = dir.path().join("unused.db");
    // --context picks cluster b, not the current context a.
    drop(a);
    let o = twillctl(
        &db,
        &[
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            &kcs,
            "version",
            "--context",
            "ctx-b",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("Server Version: v1.30.0-cluster-b"), "{out}");
    assert!(
        b.requests()
            .first()
            .is_some_and(|r| r.starts_with("GET /version")),
        "cluster b was asked for /version: {:?}",
        b.requests()
    );
    // An unknown context is an error naming it.
    let o = twillctl(
        &db,
        &[
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            &kcs,
            "--context",
            "nope",
            "get",
            "pools",
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(text(&o).1.contains("nope"), "{:?}", text(&o));
    assert!(!db.exists());
}

#[test]
fn node_status_is_honest_about_missing_and_stale_reports() {
    let (dir, db) = seeded();
    let o = twillctl(&db, &["node", "status"]);
    assert_eq!(code(&o), 1, "{:?}", text(&o));
    assert!(text(&o).1.contains("no node reports"), "{:?}", text(&o));
    let f = dir.path().join("ns.yaml");
    std::fs::write(
        &f,
        "apiVersion: twill.dev/v1\nkind: NodeStatus\nmetadata:\n  name: n1\nspec:\n  reportInterval: 5\nstatus:\n  updated: \"2020-01-01T00:00:00Z\"\n  ready: true\n  address: 172.30.0.11\n",
    )
    .expect("write");
    let o = twillctl(&db, &["apply", "-f", &f.display().to_string()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = twillctl(&db, &["node", "status", "n1"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("NOT ready (STALE"), "{out}");
    let (out, _) = text(&twillctl(&db, &["node", "status", "-o", "name"]));
    assert_eq!(out.trim(), "nodestatus/n1");
    let (out, _) = text(&twillctl(&db, &["node", "status", "-o", "yaml"]));
    assert!(
        out.contains("stale: true") && out.contains("node: n1"),
        "{out}"
    );
    let o = twillctl(&db, &["node", "status", "n2"]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).1.contains("n1"), "names the nodes that do report");
    // policy show: a node nobody knows is an error; a known one is not.
    let o = twillctl(&db, &["policy", "show", "nosuchnode"]);
    assert_eq!(code(&o), 1, "{:?}", text(&o));
    assert!(text(&o).1.contains("nosuchnode"), "{:?}", text(&o));
    assert!(twillctl(&db, &["policy", "show", "n1"]).status.success());
}

#[test]
fn get_watch_prints_changes() {
    let (_dir, db) = seeded();
    let mut child = cmd(&db, &["get", "pools", "-w", "-o", "name"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let pid = child.id();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let guard = Kill(child);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(lines.next().expect("line").expect("read"));
    }
    assert!(
        seen.contains(&"ippool/default-ipv4".to_string()),
        "{seen:?}"
    );
    let o = with_stdin(
        &db,
        &["apply", "-f", "-"],
        &pool("watched", "10.90.0.0/16", ""),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let next = lines.next().expect("line").expect("read");
    assert_eq!(next, "ippool/watched", "pid {pid}");
    drop(guard);
}

#[test]
fn completion_offers_kinds_and_names() {
    let (_dir, db) = seeded();
    let (out, _) = text(&twillctl(&db, &["__complete", "kinds"]));
    for k in ["ippools", "bgppeers", "networkpolicies"] {
        assert!(out.lines().any(|l| l == k), "{out}");
    }
    let (out, _) = text(&twillctl(&db, &["__complete", "names", "pools"]));
    assert!(out.lines().any(|l| l == "default-ipv4"), "{out}");
    let (out, _) = text(&twillctl(&db, &["__complete", "names", "netpol", "shop"]));
    assert_eq!(out.trim(), "db-from-web");
    let (script, _) = text(&twillctl(&db, &["completion", "bash"]));
    assert!(
        script.contains("twillctl __complete kinds")
            && script.contains("complete -F _twillctl_dynamic"),
        "bash script calls back for kinds and names"
    );
    // The bash function itself, run by bash, completes a kind and a name.
    if Path::new("/bin/bash").exists() {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_twillctl"))
            .parent()
            .expect("dir")
            .display()
            .to_string();
        let run = |line: &str| -> String {
            let words: Vec<&str> = line.split(' ').collect();
            let script = format!(
                "{script}\nCOMP_WORDS=({}); COMP_CWORD={}; _twillctl_dynamic twillctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                words
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(" "),
                words.len() - 1
            );
            let o = Command::new("/bin/bash")
                .args(["-c", &script])
                .env("PATH", format!("{bin_dir}:/usr/bin:/bin"))
                .env("TWILL_DATASTORE_PATH", &db)
                .output()
                .expect("bash");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        assert!(run("twillctl get ipp").lines().any(|l| l == "ippools"));
        assert!(
            run("twillctl get pools default-")
                .lines()
                .any(|l| l == "default-ipv4")
        );
    }
}

#[test]
fn help_does_not_repeat_the_global_options_in_every_command() {
    let db = Path::new("/nonexistent/never-created.db");
    let (top, _) = text(&twillctl(db, &["--help"]));
    assert!(
        top.contains("Global options") && top.contains("--kubeconfig"),
        "{top}"
    );
    let (sub, _) = text(&twillctl(db, &["get", "-h"]));
    assert!(!sub.contains("--datastore"), "{sub}");
    assert!(
        sub.contains("--selector") && sub.contains("--show-labels"),
        "{sub}"
    );
    // Still accepted after the subcommand.
    let o = twillctl(db, &["get", "pools", "--path", "/nonexistent/x.db"]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).1.contains("/nonexistent/x.db"));
}

/// A fake API server (loopback) for one IPPool collection that holds
/// nothing: lists are empty, gets are 404, and a POST is answered with its
/// body (as the API server answers a dry run).
fn empty_pool_server() -> HttpFake {
    HttpFake::serve(|req| {
        if req.method == "POST" {
            (201, String::from_utf8_lossy(&req.body).into_owned())
        } else if req.path() == "/apis/twill.dev/v1/ippools" {
            (
                200,
                r#"{"apiVersion":"twill.dev/v1","kind":"IPPoolList","metadata":{"resourceVersion":"7"},"items":[]}"#.to_string(),
            )
        } else {
            (
                404,
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_string(),
            )
        }
    })
    .expect("fake API server")
}

#[test]
fn server_dry_run_sends_every_write_with_dry_run_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = empty_pool_server();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig()).expect("write");
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, pool("dry", "10.80.0.0/16", "")).expect("write");
    let db = dir.path().join("unused.db");
    let o = twillctl(
        &db,
        &[
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            &kc.display().to_string(),
            "apply",
            "-f",
            &f.display().to_string(),
            "--dry-run=server",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out.trim(), "ippool/dry created (server dry run)");
    let requests = api.requests();
    let posts: Vec<&String> = requests.iter().filter(|r| r.starts_with("POST")).collect();
    assert_eq!(posts.len(), 1, "{requests:?}");
    assert!(posts[0].contains("dryRun=All"), "{requests:?}");
    assert!(!db.exists());
}
