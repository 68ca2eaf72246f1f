//! twillctl as a kubectl plugin, against a fake API server on loopback that
//! answers with a recorded list from a cluster running a newer Twill: as
//! `kubectl-twill` (and through `kubectl twill`) it talks to the cluster by
//! default, and it shows objects with fields it does not know instead of
//! failing, warning which fields it did not understand.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const NEWER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../api/tests/fixtures/ippool_list_newer_version.json"
);

/// Answers every GET of /apis/twill.dev/v1/ippools with the recorded list
/// (one request per connection); returns the port and the requests seen.
fn fake_cluster() -> (u16, Arc<Mutex<Vec<String>>>) {
    let body = std::fs::read_to_string(NEWER).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            log.lock().unwrap().push(line.trim().to_string());
            let (status, answer) = if line.starts_with("GET /apis/twill.dev/v1/ippools") {
                (200, body.clone())
            } else {
                (
                    404,
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
                        .to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, seen)
}

fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    p
}

/// A bin directory with kubectl-twill -> twillctl, as deploy/README.md installs it.
fn plugin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_twillctl"), bin.join("kubectl-twill")).unwrap();
    bin
}

fn run(program: &Path, args: &[&str], dir: &Path, kubeconfig: &Path, bin: &Path) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir)
        .env("PATH", path)
        .env_remove("TWILL_DATASTORE")
        .env("TWILL_DATASTORE_PATH", dir.join("embedded.db"))
        .output()
        .expect("run")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_read_with_warning(o: &Output) {
    let (out, err) = text(o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("default-ipv4") && out.contains("default-ipv6"),
        "{out}"
    );
    assert!(
        err.contains(
            "warning: IPPool \"default-ipv4\" has fields this Twill version does not know"
        ) && err.contains("spec.encapsulation, spec.reservations, status"),
        "{err}"
    );
    assert!(
        !err.contains("default-ipv6"),
        "ipv6 is fully understood: {err}"
    );
}

#[test]
fn as_kubectl_twill_it_reads_the_cluster_and_names_what_it_does_not_understand() {
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = fake_cluster();
    let kc = kubeconfig(dir.path(), port);
    let bin = plugin_dir(dir.path());
    let plugin = bin.join("kubectl-twill");

    let help = run(&plugin, &["--help"], dir.path(), &kc, &bin);
    assert!(
        text(&help).0.contains("Usage: kubectl twill"),
        "{}",
        text(&help).0
    );
    assert!(
        text(&help).0.contains("[default: kubernetes]"),
        "{}",
        text(&help).0
    );

    // The table, and the stored object in full with -o yaml.
    assert_read_with_warning(&run(&plugin, &["get", "ippools"], dir.path(), &kc, &bin));
    let yaml = run(
        &plugin,
        &["get", "pool", "-o", "yaml"],
        dir.path(),
        &kc,
        &bin,
    );
    assert_read_with_warning(&yaml);
    assert!(
        text(&yaml).0.contains("encapsulation: None"),
        "{}",
        text(&yaml).0
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|r| r.starts_with("GET /apis/twill.dev/v1/ippools")),
        "{:?}",
        seen.lock().unwrap()
    );

    // Under its own name, the default stays the embedded store (which does
    // not exist here, and a read does not create it).
    let own = run(
        Path::new(env!("CARGO_BIN_EXE_twillctl")),
        &["get", "ippools"],
        dir.path(),
        &kc,
        &bin,
    );
    let (out, err) = text(&own);
    assert_eq!(own.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("no embedded datastore at"), "{out}{err}");
}

#[test]
fn kubectl_finds_the_plugin_on_path() {
    let kubectl = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("kubectl is not installed: `apt-get install kubernetes-client` (scripts/deps.sh installs it)")
        });
    let dir = tempfile::tempdir().unwrap();
    let (port, _) = fake_cluster();
    let kc = kubeconfig(dir.path(), port);
    let bin = plugin_dir(dir.path());
    let list = run(&kubectl, &["plugin", "list"], dir.path(), &kc, &bin);
    assert!(text(&list).0.contains("kubectl-twill"), "{:?}", text(&list));
    assert_read_with_warning(&run(
        &kubectl,
        &["twill", "get", "ippools"],
        dir.path(),
        &kc,
        &bin,
    ));
}

#[test]
fn applying_a_newer_manifest_refuses_the_fields_this_version_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.yaml");
    std::fs::write(
        &path,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.9.0.0/16\n  encapsulation: None\n",
    )
    .unwrap();
    let apply = || {
        Command::new(env!("CARGO_BIN_EXE_twillctl"))
            .args(["apply", "-f"])
            .arg(&path)
            .env_remove("TWILL_DATASTORE")
            .env("TWILL_DATASTORE_PATH", dir.path().join("store.db"))
            .output()
            .unwrap()
    };
    // Strict input: a field would be dropped, so nothing is written.
    let o = apply();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(!out.contains("created"), "{out}");
    assert!(
        err.contains("document 1 (line 1): IPPool \"p\" is invalid")
            && err.contains("line 7: unknown field spec.encapsulation")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!dir.path().join("store.db").exists());
    // Without the field, the pool is created.
    std::fs::write(
        &path,
        "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.9.0.0/16\n",
    )
    .unwrap();
    let o = apply();
    assert!(text(&o).0.contains("ippool/p created"), "{:?}", text(&o));
}
