//! twill-node's log as an operator reads it: plain text in a log file (no
//! ANSI colour codes unless a person's terminal is on the other end), JSON
//! lines with TWILL_LOG_FORMAT=json, and BGP left off on purpose (no node
//! address configured) said at INFO, not ERROR.

use std::process::Command;
use std::time::Duration;

use twill_tests::{Netns, TestNode, bins, require_binary, wait_until};

const BGP_OFF: &str = "no node address configured";

#[test]
fn a_log_file_has_no_colour_and_bgp_off_on_purpose_is_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let node = TestNode::start("tlog", "n1", &db, dir.path(), "10.251.0.1/32", &[]);
    assert!(
        wait_until(Duration::from_secs(20), || node.log().contains(BGP_OFF)),
        "twill-node never said BGP is off; log:\n{}",
        node.log()
    );
    let log = node.log();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in the log file:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains(BGP_OFF))
        .expect("the BGP line");
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        !log.contains(" ERROR "),
        "an ERROR in a healthy start:\n{log}"
    );
}

/// Runs twill-node for a few seconds in a fresh namespace, its output
/// going to a pseudo-terminal (`script`), or to a pipe; returns the output.
fn run_briefly(on_terminal: bool, json: bool) -> String {
    let ns = Netns::new("tlogtty");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = bins::binary("twill-node");
    let node_cmd = format!(
        "timeout -s INT 3 ip netns exec {} {} --node-name n1 --path {} --cni-socket {} --state-dir {} --health-addr 127.0.0.1:0",
        ns.name(),
        node.display(),
        dir.path().join("s.db").display(),
        dir.path().join("cni.sock").display(),
        dir.path().join("state").display(),
    );
    let mut cmd = if on_terminal {
        require_binary("script", "apt-get install bsdutils");
        let mut c = Command::new("script");
        c.args(["-qec", &node_cmd, "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &format!("{node_cmd} 2>&1")]);
        c
    };
    cmd.env("TWILL_LOG", "info");
    if json {
        cmd.env("TWILL_LOG_FORMAT", "json");
    } else {
        cmd.env_remove("TWILL_LOG_FORMAT");
    }
    let out = cmd.output().expect("run twill-node");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_only_on_a_terminal_and_json_stays_json() {
    let tty = run_briefly(true, false);
    assert!(tty.contains(BGP_OFF), "{tty}");
    assert!(tty.contains("\u{1b}["), "no colour on a terminal:\n{tty}");
    let piped = run_briefly(false, false);
    assert!(piped.contains(BGP_OFF), "{piped}");
    assert!(!piped.contains('\u{1b}'), "colour into a pipe:\n{piped}");
    let json = run_briefly(false, true);
    let line = json
        .lines()
        .find(|l| l.contains(BGP_OFF))
        .unwrap_or_else(|| panic!("{json}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(!json.contains('\u{1b}'), "{json}");
}
