//! twill-cni as a runtime execs it, refusing bad input itself with the
//! spec's error code and a message naming what is wrong — before it ever
//! talks to twill-node. The positive path of each check is the same request
//! with the fault removed, which then gets as far as the (absent) twill-node
//! socket: code 11, "try again later".

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// Runs the plugin with `stdin` and CNI_* variables; returns (exit ok, JSON on stdout).
fn cni(stdin: &[u8], env: &[(&str, &str)]) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twill-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run twill-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"));
    (out.status.success(), v)
}

struct Env {
    _dir: tempfile::TempDir,
    socket: String,
    file: String,
    dir: String,
}

fn env() -> Env {
    let d = tempfile::tempdir().expect("tempdir");
    let file = d.path().join("plain-file");
    std::fs::write(&file, b"not a namespace").expect("write");
    let dir = d.path().join("a-directory");
    std::fs::create_dir(&dir).expect("mkdir");
    Env {
        socket: d.path().join("no-node.sock").display().to_string(),
        file: file.display().to_string(),
        dir: dir.display().to_string(),
        _dir: d,
    }
}

fn conf(e: &Env) -> Value {
    json!({"cniVersion": "1.0.0", "name": "twill", "type": "twill-cni", "socket": e.socket})
}

fn add_env(netns: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn code(v: &Value) -> u64 {
    v["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no code in {v}"))
}

fn msg(v: &Value) -> String {
    v["msg"].as_str().unwrap_or_default().to_string()
}

/// The request reaches the socket (which is absent): every earlier check passed.
fn assert_reaches_node(ok: bool, v: &Value) {
    assert!(!ok, "{v}");
    assert_eq!(code(v), 11, "{v}");
    assert!(msg(v).contains("cannot reach twill-node"), "{v}");
}

#[test]
fn a_cni_version_of_the_wrong_type_is_named_as_such() {
    let e = env();
    let own = "/proc/self/ns/net";
    let mut c = conf(&e);
    c["cniVersion"] = json!(110);
    let (ok, v) = cni(c.to_string().as_bytes(), &add_env(own));
    assert!(!ok);
    assert_eq!(code(&v), 7, "{v}");
    assert!(
        msg(&v).contains("must be a string") && msg(&v).contains("110"),
        "{v}"
    );
    assert!(!msg(&v).contains("missing"), "{v}");
    c.as_object_mut().unwrap().remove("cniVersion");
    let (_, v) = cni(c.to_string().as_bytes(), &add_env(own));
    assert_eq!(code(&v), 7, "{v}");
    assert!(msg(&v).contains("missing"), "{v}");
    let (ok, v) = cni(conf(&e).to_string().as_bytes(), &add_env(own));
    assert_reaches_node(ok, &v);
}

#[test]
fn non_utf8_input_is_a_decoding_failure() {
    let e = env();
    let mut bytes = conf(&e).to_string().into_bytes();
    bytes.insert(1, 0xff);
    let (ok, v) = cni(&bytes, &add_env("/proc/self/ns/net"));
    assert!(!ok);
    assert_eq!(code(&v), 6, "{v}");
    assert!(msg(&v).contains("UTF-8"), "{v}");
    let (_, v) = cni(b"{not json", &add_env("/proc/self/ns/net"));
    assert_eq!(code(&v), 6, "{v}");
}

#[test]
fn a_netns_that_is_a_directory_or_a_file_is_refused_naming_the_path() {
    let e = env();
    let c = conf(&e).to_string();
    for (path, why) in [
        (e.dir.as_str(), "is a directory"),
        (e.file.as_str(), "is not a network namespace"),
        ("/nonexistent/netns", "does not exist"),
    ] {
        let (ok, v) = cni(c.as_bytes(), &add_env(path));
        assert!(!ok, "{path}: {v}");
        assert_eq!(code(&v), 4, "{path}: {v}");
        assert!(msg(&v).contains(path) && msg(&v).contains(why), "{v}");
    }
    // A real network namespace (this process's) passes the check.
    let (ok, v) = cni(c.as_bytes(), &add_env("/proc/self/ns/net"));
    assert_reaches_node(ok, &v);
}

#[test]
fn a_missing_or_bad_network_name_is_refused() {
    let e = env();
    let mut c = conf(&e);
    c.as_object_mut().unwrap().remove("name");
    let (ok, v) = cni(c.to_string().as_bytes(), &add_env("/proc/self/ns/net"));
    assert!(!ok);
    assert_eq!(code(&v), 7, "{v}");
    assert!(msg(&v).contains("name is missing"), "{v}");
    c["name"] = json!("bad name/");
    let (_, v) = cni(c.to_string().as_bytes(), &add_env("/proc/self/ns/net"));
    assert_eq!(code(&v), 7, "{v}");
    assert!(msg(&v).starts_with("name must be"), "{v}");
    c["name"] = json!("twill");
    let (ok, v) = cni(c.to_string().as_bytes(), &add_env("/proc/self/ns/net"));
    assert_reaches_node(ok, &v);
}
