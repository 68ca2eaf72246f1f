//! The image the DaemonSet runs, built and run here: `scripts/image.sh`
//! builds it with podman on a debootstrapped Debian base (no Docker, no
//! registry), then
//! * the init container's command from deploy/30-twill-node.yaml, with its
//!   mounts and capabilities (all dropped), installs twill-cni and the
//!   conflist from the ConfigMap where the manifest says;
//! * twill-node runs from the image with exactly the DaemonSet's
//!   capabilities, environment and mounts (not privileged; the host's
//!   network namespace is a namespace of the test's, the datastore the
//!   embedded one instead of Kubernetes), reports ready on the manifest's
//!   readiness probe, and programs a pod created by the host's twill-cni
//!   through the socket the manifest mounts.
//!
//! Everything the manifest gives is read from it, so a change there is what
//! this test runs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use twill_tests::{Netns, bins, require_binary, require_root, unique_name, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository")
        .to_path_buf()
}

/// The manifest's documents, as JSON.
fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("deploy").join(file)).expect("manifest");
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str::<Value>(d).expect("manifest YAML"))
        .collect()
}

/// podman with the runtime settings this host needs (shared/RUNTIMES.md).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
];

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes a container by the name we gave it.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "5", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `--cap-drop/--cap-add` and `no-new-privileges` from a securityContext.
fn security_args(sc: &Value) -> Vec<String> {
    assert_ne!(sc["privileged"], true, "the manifest asks for privileged");
    let mut a = Vec::new();
    for c in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        a.push(format!("--cap-drop={}", c.as_str().expect("capability")));
    }
    for c in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        a.push(format!("--cap-add={}", c.as_str().expect("capability")));
    }
    if sc["allowPrivilegeEscalation"] == false {
        a.push("--security-opt=no-new-privileges".into());
    }
    a
}

/// `-v HOST:CONTAINER[:opts]` for a container's volumeMounts. Host paths
/// under `root` except the ones that must be the real thing (pod network
/// namespaces, the network sysctls).
fn mount_args(c: &Value, volumes: &BTreeMap<String, PathBuf>) -> Vec<String> {
    let mut a = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().expect("mount name");
        let host = volumes
            .get(name)
            .unwrap_or_else(|| panic!("volume {name} is not declared"));
        let mut opts = Vec::new();
        if m["readOnly"] == true {
            opts.push("ro");
        }
        match m["mountPropagation"].as_str() {
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => opts.push("rshared"),
            _ => {}
        }
        let target = m["mountPath"].as_str().expect("mountPath");
        a.push("-v".into());
        a.push(if opts.is_empty() {
            format!("{}:{target}", host.display())
        } else {
            format!("{}:{target}:{}", host.display(), opts.join(","))
        });
    }
    a
}

/// HTTP GET from inside a network namespace; (status line, body).
fn http_get(ns: &str, host: &str, port: u16, path: &str) -> Option<String> {
    let (host, path) = (host.to_string(), path.to_string());
    twill_tests::netns::spawn_in(ns, move || {
        let mut s = std::net::TcpStream::connect((host.as_str(), port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .join()
    .ok()
    .flatten()
}

#[test]
fn the_daemonset_image_installs_the_cni_plugin_and_runs_twill_node_unprivileged() {
    require_root();
    require_binary("podman", "podman");
    require_binary("debootstrap", "debootstrap");
    require_binary("runc", "runc");
    let bin_dir = bins::binary("twill-node")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let image = format!("localhost/{}:test", unique_name("twimg"));
    let started = std::time::Instant::now();
    let built = Command::new("bash")
        .arg(repo().join("scripts/image.sh"))
        .arg("--bins")
        .arg(&bin_dir)
        .env("TWILL_IMAGE", &image)
        .current_dir(repo())
        .output()
        .expect("scripts/image.sh");
    assert!(built.status.success(), "scripts/image.sh: {}", text(&built));
    eprintln!(
        "image built in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&built.stderr).trim()
    );
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = podman()
                .args(["rmi", "-f", &self.0])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _image = Image(image.clone());

    let ds = docs("30-twill-node.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let cm = docs("20-cni-config.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the CNI ConfigMap");

    // The node's filesystem: every hostPath under a temporary root, except
    // the pod network namespaces and the network sysctls, which must be
    // the real ones; the ConfigMap as files.
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let mut volumes = BTreeMap::new();
    for v in spec["volumes"].as_array().expect("volumes") {
        let name = v["name"].as_str().expect("volume name").to_string();
        let host = if let Some(p) = v["hostPath"]["path"].as_str() {
            match p {
                "/var/run/netns" | "/proc/sys/net" => PathBuf::from(p),
                _ => root.join(p.trim_start_matches('/')),
            }
        } else if v["configMap"]["name"].is_string() {
            let dir = root.join("configmap").join(&name);
            std::fs::create_dir_all(&dir).expect("configmap dir");
            for (file, content) in cm["data"].as_object().expect("data") {
                std::fs::write(dir.join(file), content.as_str().expect("text")).expect("write");
            }
            dir
        } else {
            panic!("volume {name}: neither hostPath nor configMap");
        };
        std::fs::create_dir_all(&host).expect("volume dir");
        volumes.insert(name, host);
    }

    // The init container, as the manifest has it.
    let init = &spec["initContainers"][0];
    let mut c = podman();
    c.args(["run", "--rm", "--network", "none"]).args(ULIMITS);
    c.args(security_args(&init["securityContext"]));
    c.args(mount_args(init, &volumes));
    c.arg(&image);
    for a in init["command"].as_array().expect("command") {
        c.arg(a.as_str().expect("argument"));
    }
    let out = c.output().expect("podman run install-cni");
    assert!(out.status.success(), "install-cni: {}", text(&out));
    assert!(
        text(&out).contains("installed twill-cni and 10-twill.conflist"),
        "{}",
        text(&out)
    );
    let plugin = root.join("opt/cni/bin/twill-cni");
    let conflist = root.join("etc/cni/net.d/10-twill.conflist");
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .expect("installed")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&plugin), 0o755);
    assert_eq!(mode(&conflist), 0o644);
    assert_eq!(
        std::fs::read(&plugin).expect("plugin"),
        std::fs::read(bin_dir.join("twill-cni")).expect("built plugin"),
        "the installed twill-cni is not the image's"
    );
    let conf: Value =
        serde_json::from_slice(&std::fs::read(&conflist).expect("conflist")).expect("JSON");
    assert_eq!(conf["plugins"][0]["type"], "twill-cni");
    assert!(
        !root.join("opt/cni/bin/.twill-cni.tmp").exists(),
        "a temporary file was left behind"
    );

    // twill-node, as the manifest has it, in a namespace standing for the
    // host's network; an IP pool in the embedded store it will use.
    let node_ns = Netns::new("twimg");
    // The node's address (the source of its packets to pods).
    node_ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let main = &spec["containers"][0];
    let db = volumes["lib-twill"].join("twill.db");
    let pool = Command::new(bins::binary("twillctl"))
        .arg("--path")
        .arg(&db)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().expect("stdin").write_all(
                b"apiVersion: twill.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.78.0.0/24, blockSize: 26}\n",
            )?;
            ch.wait_with_output()
        })
        .expect("twillctl apply");
    assert!(pool.status.success(), "{}", text(&pool));
    let node_name = "imagenode";
    let mut env = Vec::new();
    for e in main["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name");
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            node_name.to_string()
        } else {
            panic!("env {name}: a source this test does not provide: {e}");
        };
        // The one change: the embedded store instead of the cluster's API.
        let value = if name == "TWILL_DATASTORE" {
            "embedded".to_string()
        } else {
            value
        };
        env.push(format!("{name}={value}"));
    }
    let cname = unique_name("twimg");
    let mut c = podman();
    c.args(["run", "-d", "--name", &cname])
        .arg(format!("--network=ns:/var/run/netns/{}", node_ns.name()))
        .args(ULIMITS);
    c.args(security_args(&main["securityContext"]));
    c.args(mount_args(main, &volumes));
    for e in &env {
        c.args(["-e", e]);
    }
    c.arg(&image);
    for a in main["command"].as_array().expect("command") {
        c.arg(a.as_str().expect("argument"));
    }
    let out = c.output().expect("podman run twill-node");
    let _container = Container(cname.clone());
    assert!(out.status.success(), "twill-node: {}", text(&out));
    let logs = || {
        text(
            &podman()
                .args(["logs", &cname])
                .output()
                .expect("podman logs"),
        )
    };

    // Ready, by the manifest's readiness probe.
    let probe = &main["readinessProbe"]["httpGet"];
    let host = probe["host"].as_str().unwrap_or("127.0.0.1").to_string();
    let port = probe["port"].as_u64().expect("probe port") as u16;
    let path = probe["path"].as_str().expect("probe path").to_string();
    let mut last = None;
    let ready = wait_until(Duration::from_secs(60), || {
        last = http_get(node_ns.name(), &host, port, &path);
        last.as_deref()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    assert!(ready, "not ready: {last:?}\n{}", logs());

    // A pod through the host's twill-cni and the socket the manifest mounts.
    let pod_ns = Netns::new("twimgp");
    let sock = conf["plugins"][0]["socket"]
        .as_str()
        .expect("socket in the conflist");
    let host_sock = root.join(sock.trim_start_matches('/'));
    let config = serde_json::json!({"cniVersion": conf["cniVersion"], "name": conf["name"],
        "type": "twill-cni", "socket": host_sock});
    let cni = |command: &str| {
        let mut ch = Command::new(&plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("c-{}", pod_ns.name()))
            .env("CNI_NETNS", format!("/var/run/netns/{}", pod_ns.name()))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", root.join("opt/cni/bin"))
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("twill-cni");
        ch.stdin
            .take()
            .expect("stdin")
            .write_all(config.to_string().as_bytes())
            .expect("config");
        ch.wait_with_output().expect("twill-cni")
    };
    let add = cni("ADD");
    assert!(add.status.success(), "CNI ADD: {}\n{}", text(&add), logs());
    let result: Value = serde_json::from_slice(&add.stdout).expect("CNI result");
    let addr = result["ips"][0]["address"].as_str().expect("an address");
    let ip = addr.split('/').next().expect("ip");
    assert!(ip.starts_with("10.78.0."), "{result}");
    let routes = node_ns.exec("ip", &["route", "show", "proto", "116"]);
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains(ip),
        "no route to the pod in the node: {}",
        text(&routes)
    );
    let reached = wait_until(Duration::from_secs(10), || {
        node_ns.exec("ping", &["-c1", "-W1", ip]).status.success()
    });
    assert!(reached, "the node does not reach its pod {ip}\n{}", logs());
    let del = cni("DEL");
    assert!(del.status.success(), "CNI DEL: {}", text(&del));
    let routes = node_ns.exec("ip", &["route", "show", "proto", "116"]);
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains(&format!("{ip} dev")),
        "the pod's route outlived DEL: {}",
        text(&routes)
    );
}
