//! The lab as a place to try policy, as a user does it: `twillctl lab up`,
//! labelled pods added with `lab pod add` (Namespace and Pod objects in the
//! lab's store, the network through twill-cni, a responder on their ports),
//! a NetworkPolicy applied with `twillctl apply`, and `lab exec … lab probe`
//! showing what the policy allows and denies; `lab pod del` removes a pod
//! and its responder; `lab status -o json|yaml` parses. And an FRR ToR in a
//! lab directory whose parent FRR's user cannot enter.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use twill_tests::lab::Lab;
use twill_tests::peers::Flavor;
use twill_tests::{bins, require_binary, require_root, wait_until};

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(lab: &Lab, doc: &Value) {
    let mut child = Command::new(bins::binary("twillctl"))
        .arg("--path")
        .arg(lab.dir.join("twill.db"))
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twillctl apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(doc.to_string().as_bytes())
        .expect("write policy");
    ok(&child.wait_with_output().expect("twillctl apply"), "apply");
}

fn responder_pid(lab: &Lab, pod: &str) -> i64 {
    lab.state()["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["what"] == format!("serve {pod}"))
        .and_then(|p| p["pid"].as_i64())
        .unwrap_or_else(|| panic!("no responder recorded for {pod}: {}", lab.state()))
}

fn running(pid: i64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("serve"))
        .unwrap_or(false)
}

#[test]
fn labelled_pods_network_policy_and_pod_del() {
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--tor", "none", "--pods-per-node", "1"]);
    assert!(lab.up_ok, "lab up:\n{}", lab.up_output);
    // The hint names the directory this lab is in.
    assert!(
        lab.up_output
            .contains(&format!("lab status --dir {}", lab.dir.display())),
        "hint without --dir:\n{}",
        lab.up_output
    );

    // `lab up` wrote its pods as Pod objects, with labels, ports, node and IP.
    let pods: Value = serde_json::from_str(&ok(
        &lab.twillctl(&["get", "pods", "-n", "lab", "-o", "json"]),
        "get pods",
    ))
    .expect("pods json");
    let items = pods["items"]
        .as_array()
        .cloned()
        .or_else(|| pods.as_array().cloned())
        .unwrap_or_else(|| vec![pods.clone()]);
    let p1 = items
        .iter()
        .find(|p| p["metadata"]["name"] == "n1-p1")
        .unwrap_or_else(|| panic!("no Pod n1-p1 in the store: {pods}"));
    assert_eq!(p1["metadata"]["labels"]["app"], "lab");
    assert_eq!(p1["spec"]["nodeName"], "n1");
    assert_eq!(p1["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
    assert_eq!(p1["status"]["podIP"], lab.pod_ip("n1-p1"));
    // ... and its responder answers with the pod's name.
    assert_eq!(
        lab.probe("n2-p1", &lab.pod_ip("n1-p1"), "80/TCP")
            .as_deref(),
        Some("n1-p1")
    );

    // A refusal changes nothing: a label value one over the limit.
    let refused = lab.lab(&[
        "pod",
        "add",
        "bad",
        "--node",
        "n1",
        "--labels",
        &format!("k={}", "v".repeat(64)),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at most 63"));
    assert!(!lab.state()["plan"]["pods"].to_string().contains("\"bad\""));

    // Pods at Kubernetes' limits: a 253-character name in a 63-character
    // namespace, with a 317-character label key and a 63-character value.
    let far_name = format!("f{}", "a".repeat(252));
    let far_ns = format!("n{}", "s".repeat(62));
    let long_key = format!("{}/{}", "p".repeat(253), "k".repeat(63));
    let long_val = "v".repeat(63);
    let web = ok(
        &lab.lab(&[
            "pod",
            "add",
            "web",
            "--node",
            "n1",
            "--namespace",
            "shop",
            "--labels",
            "app=web,tier=front",
            "--port",
            "http=80/TCP",
            "--port",
            "dns=53/UDP",
        ]),
        "pod add web",
    );
    assert!(web.contains("serving http=80/TCP, dns=53/UDP"), "{web}");
    ok(
        &lab.lab(&[
            "pod",
            "add",
            "client",
            "--node",
            "n2",
            "-n",
            "shop",
            "-l",
            "app=client",
        ]),
        "pod add client",
    );
    ok(
        &lab.lab(&[
            "pod",
            "add",
            "other",
            "--node",
            "n2",
            "-n",
            "shop",
            "-l",
            "app=other",
        ]),
        "pod add other",
    );
    ok(
        &lab.lab(&[
            "pod",
            "add",
            &far_name,
            "--node",
            "n2",
            "-n",
            &far_ns,
            "-l",
            &format!("{long_key}={long_val}"),
        ]),
        "pod add (limits)",
    );
    let web_ip = lab.pod_ip("web");
    let web_pid = responder_pid(&lab, "web");
    assert!(running(web_pid));

    // Without policy every pod reaches web on both ports.
    for from in ["client", "other", far_name.as_str()] {
        for port in ["80/TCP", "53/UDP"] {
            assert!(
                wait_until(Duration::from_secs(20), || lab
                    .probe(from, &web_ip, port)
                    .as_deref()
                    == Some("web")),
                "{from} -> web {port} before any policy"
            );
        }
    }

    // Policy: web takes 80/TCP from app=client in its namespace, and 53/UDP
    // from pods labelled long_key=long_val in the namespace far_ns.
    apply(
        &lab,
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                     "ports": [{"port": "http", "protocol": "TCP"}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": far_ns}},
                               "podSelector": {"matchLabels": {long_key.as_str(): long_val}}}],
                     "ports": [{"port": 53, "protocol": "UDP"}]}]}}),
    );
    let expect: [(&str, &str, bool); 6] = [
        ("client", "80/TCP", true),
        ("client", "53/UDP", false),
        ("other", "80/TCP", false),
        ("other", "53/UDP", false),
        (far_name.as_str(), "53/UDP", true),
        (far_name.as_str(), "80/TCP", false),
    ];
    let settled = wait_until(Duration::from_secs(30), || {
        expect
            .iter()
            .all(|(from, port, allowed)| lab.probe(from, &web_ip, port).is_some() == *allowed)
    });
    let seen: Vec<String> = expect
        .iter()
        .map(|(from, port, allowed)| {
            format!(
                "{} -> web {port}: want {}, got {:?}",
                &from[..from.len().min(12)],
                if *allowed { "allowed" } else { "denied" },
                lab.probe(from, &web_ip, port)
            )
        })
        .collect();
    assert!(settled, "policy not as applied:\n{}", seen.join("\n"));
    // Other pods are not selected by the policy: web's neighbours stay open.
    assert_eq!(
        lab.probe("other", &lab.pod_ip("n1-p1"), "80/TCP")
            .as_deref(),
        Some("n1-p1")
    );

    // status -o json and -o yaml describe the same pods.
    let doc: Value =
        serde_json::from_str(&ok(&lab.lab(&["status", "-o", "json"]), "status -o json"))
            .expect("status -o json parses");
    let web_doc = doc["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "web")
        .unwrap_or_else(|| panic!("no web in status: {doc}"));
    assert_eq!(web_doc["ip"], web_ip.as_str());
    assert_eq!(web_doc["namespace"], "shop");
    assert_eq!(web_doc["labels"]["tier"], "front");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(2));
    assert!(
        doc["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["running"] == true),
        "{doc}"
    );
    let yaml = ok(&lab.lab(&["status", "-o", "yaml"]), "status -o yaml");
    assert!(yaml.contains("pods:") && yaml.contains(&web_ip), "{yaml}");

    // pod del: the responder stops, the namespace, object and address go.
    let web_ns = lab.state()["plan"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "web")
        .and_then(|p| p["ns"].as_str().map(str::to_string))
        .expect("web's netns");
    ok(&lab.lab(&["pod", "del", "web"]), "pod del web");
    assert!(!running(web_pid), "web's responder {web_pid} still runs");
    assert!(!std::path::Path::new("/run/netns").join(&web_ns).exists());
    assert!(lab.state()["pod_ips"].get("web").is_none());
    let gone = lab.twillctl(&["get", "pods", "web", "-n", "shop", "-o", "json"]);
    assert!(
        !gone.status.success() || !String::from_utf8_lossy(&gone.stdout).contains("\"web\""),
        "Pod web still in the store"
    );
    assert!(
        lab.probe("client", &web_ip, "80/TCP").is_none(),
        "web's address still answers"
    );
    let again = lab.lab(&["pod", "del", "web"]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    // The long-named pod is deleted the same way (its names were shortened).
    ok(&lab.lab(&["pod", "del", &far_name]), "pod del (limits)");
}

#[test]
fn frr_tor_in_a_directory_with_a_private_parent() {
    require_root();
    require_binary("/usr/lib/frr/bgpd", "frr");
    require_binary("vtysh", "frr");
    let lab = Lab::up_private(&["--nodes", "2", "--tor", "frr", "--pods-per-node", "1"]);
    // The lab's directory lives in a directory of mode 0700, which FRR's
    // user (FRR drops root) cannot enter.
    let parent = lab.dir.parent().expect("parent");
    let mode = std::fs::metadata(parent)
        .expect("parent")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the test needs a private parent");
    assert!(lab.up_ok, "lab up --tor frr:\n{}", lab.up_output);
    let fdir = lab.frr_dir();
    assert!(
        !fdir.starts_with(&lab.dir),
        "FRR runs from {}",
        fdir.display()
    );
    // The ToR learned the nodes' blocks (FRR is really running and peering).
    let learned = wait_until(Duration::from_secs(30), || {
        lab.tor(Flavor::Frr)
            .cli(&["show ip route bgp"])
            .lines()
            .filter(|l| l.starts_with("B"))
            .count()
            >= 2
    });
    assert!(learned, "FRR in the ToR learned no blocks");
    let doc: Value =
        serde_json::from_str(&ok(&lab.lab(&["status", "-o", "json"]), "status")).expect("json");
    assert!(doc["torRoutesError"].is_null(), "{doc}");
    drop(lab);
    assert!(!fdir.exists(), "lab down left {}", fdir.display());
}

#[test]
fn lab_sh_refuses_to_take_down_a_lab_it_did_not_start() {
    require_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let record = tmp.path().join("lab.json");
    std::fs::write(&record, "{\"someone\": \"else's lab\"}").expect("lab.json");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--nodes", "2"])
        .env("TWILL_LAB_DIR", tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/lab.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not start") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&record).expect("lab.json kept"),
        "{\"someone\": \"else's lab\"}"
    );
}
