//! The DaemonSet runs twill-node without `privileged`, where the container
//! runtime mounts /proc/sys read-only, and gives it the host's /proc/sys/net
//! at /host/proc/sys/net with TWILL_PROC_SYS=/host/proc/sys. This checks
//! that design on the real kernel: twill-node runs in a private mount
//! namespace where /proc/sys is read-only (as in a container) and the
//! node's /proc/sys/net is bind-mounted elsewhere. With TWILL_PROC_SYS a pod
//! gets its interface (proxy_arp is set on the host side, the pod side is
//! configured from inside the pod's namespace through the same mount) and
//! reaches the node; without it, the ADD fails because /proc/sys is
//! read-only — so the read-only emulation is real and the variable is what
//! makes the difference.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use twill_tests::{Daemon, Netns, TestNode, bins, require_binary, require_root, wait_until};

fn apply_pools(db: &Path, cidr: &str, cidr6: &str) {
    let mut child = std::process::Command::new(bins::binary("twillctl"))
        .args(["apply", "-f", "-"])
        .env("TWILL_DATASTORE_PATH", db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("twillctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: {cidr}\n  blockSize: 28\n---\n\
                 apiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: p6\nspec:\n  cidr: {cidr6}\n  blockSize: 124\n"
            )
            .as_bytes(),
        )
        .unwrap();
    assert!(child.wait().unwrap().success(), "twillctl apply failed");
}

/// Restarts `node`'s twill-node in a container-like mount namespace:
/// /proc/sys read-only, the node's /proc/sys/net bind-mounted at
/// `<dir>/host/proc/sys/net`, and TWILL_PROC_SYS set when `use_mount`.
fn relaunch_as_in_a_container(node: &mut TestNode, use_mount: bool) {
    node.daemon.take(); // stops the plain twill-node (by PID)
    let _ = std::fs::remove_file(&node.socket);
    let host = node.dir.join("host");
    std::fs::create_dir_all(host.join("proc/sys/net")).unwrap();
    let script = format!(
        "set -e\n\
         mount --bind /proc/sys/net {host}/proc/sys/net\n\
         mount --bind /proc/sys /proc/sys\n\
         mount -o remount,bind,ro /proc/sys\n\
         if echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null; then echo '/proc/sys is still writable' >&2; exit 97; fi\n\
         exec \"$@\"",
        host = host.display()
    );
    let mut cmd = node.ns.command("unshare");
    // slave propagation, like the DaemonSet's HostToContainer on
    // /var/run/netns: pod namespaces created later (bind mounts under
    // /run/netns) must become visible inside.
    cmd.args([
        "--mount",
        "--propagation",
        "slave",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(bins::binary("twill-node"))
    .args(["--node-name", &node.name])
    .arg("--path")
    .arg(&node.db)
    .arg("--cni-socket")
    .arg(&node.socket)
    .arg("--state-dir")
    .arg(node.dir.join("state"))
    .args(["--health-addr", "127.0.0.1:9098"])
    .env("TWILL_LOG", "info");
    if use_mount {
        cmd.env("TWILL_PROC_SYS", host.join("proc/sys"));
    } else {
        cmd.env_remove("TWILL_PROC_SYS");
    }
    let log = node.dir.join("container.log");
    node.daemon = Some(Daemon::spawn(
        "twill-node (container-like)",
        &mut cmd,
        Some(&log),
    ));
    let sock = node.socket.clone();
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }),
        "twill-node did not open its CNI socket:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn read_only_proc_sys_works_through_the_twill_proc_sys_mount() {
    require_root();
    require_binary("unshare", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    apply_pools(&db, "10.63.0.0/24", "fd00:63::/120");
    let mut node = TestNode::start("tws", "s1", &db, dir.path(), "10.96.63.1/32", &[]);

    // Without the mount: /proc/sys is read-only, so setting up a pod fails.
    relaunch_as_in_a_container(&mut node, false);
    let pod = Netns::new("tws");
    let out = node.add("pod-ro", &pod);
    assert!(
        !out.success,
        "ADD should fail with /proc/sys read-only and no TWILL_PROC_SYS: {}",
        out.json
    );
    let msg = out.json["msg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("Read-only file system"),
        "the ADD failed for another reason than read-only /proc/sys: {msg}"
    );
    let _ = node.del("pod-ro", &pod);

    // With it: the pod is set up and reaches the node.
    relaunch_as_in_a_container(&mut node, true);
    let pod = Netns::new("tws");
    let out = node.add("pod-rw", &pod);
    assert!(
        out.success,
        "ADD through TWILL_PROC_SYS: {} {}",
        out.json, out.stderr
    );
    let veths = node.veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    let proxy_arp = node.ns.exec_ok(
        "cat",
        &[&format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", veths[0])],
    );
    assert_eq!(proxy_arp.trim(), "1", "proxy_arp on the host side");
    // Written from a thread inside the pod's namespace through the same
    // bind mount (the pod has an IPv6 address, so twill-node turns off
    // DAD on its eth0): the mount follows the opening thread's namespace.
    let dad = pod.exec_ok("cat", &["/proc/sys/net/ipv6/conf/eth0/accept_dad"]);
    assert_eq!(dad.trim(), "0", "accept_dad on the pod side");
    assert!(pod.ping("10.96.63.1"), "the pod does not reach the node");
    let del = node.del("pod-rw", &pod);
    assert!(del.success, "DEL: {}", del.json);
}
