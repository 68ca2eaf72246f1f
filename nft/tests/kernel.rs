//! libnftables against the real kernel, each test in a network namespace
//! of its own (made with `ip netns add`, entered by one thread with setns,
//! deleted on drop even when the test fails). Needs root and the nftables
//! package (CI has both); without them the tests fail saying so.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use twill_nft::{
    Backend, Nft, NftError, apply_script, backend, check_script, delete_table, list_table_json,
};

/// A network namespace this test made; deleted on drop.
struct TestNs(String);

impl TestNs {
    fn new() -> TestNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "twnft-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name} failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestNs(name)
    }

    /// Runs `f` on a fresh thread inside the namespace.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// `nft list table inet twill` by the nft binary, as text (None: absent).
    fn nft_list(&self) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "list", "table", "inet", "twill",
            ])
            .output()
            .expect("run nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

const TABLE: &str = "add table inet twill
add set inet twill sel-4 { type ipv4_addr; }
add element inet twill sel-4 { 10.0.0.1, 10.0.0.2 }
add chain inet twill ep-in-a
add rule inet twill ep-in-a ip saddr @sel-4 accept
add chain inet twill ingress { type filter hook forward priority 0; policy accept; }
add rule inet twill ingress ct state established,related accept
";

fn set_elements(v: &serde_json::Value, set: &str) -> Vec<String> {
    v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|i| i.get("set"))
        .filter(|s| s["name"] == set)
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn apply_list_and_delete_in_a_namespace() {
    let ns = TestNs::new();
    let (before, after, gone) = ns.run(|| {
        let before = list_table_json("inet", "twill").expect("list absent");
        apply_script(TABLE).expect("apply");
        // Checked, not applied: 10.0.0.7 must not appear below.
        check_script("add element inet twill sel-4 { 10.0.0.7 }\n").expect("check");
        apply_script("add element inet twill sel-4 { 10.0.0.3 }\n").expect("incremental");
        let after = list_table_json("inet", "twill").expect("list");
        delete_table().expect("delete");
        delete_table().expect("delete again: fine when absent");
        let gone = list_table_json("inet", "twill").expect("list after delete");
        (before, after, gone)
    });
    assert!(before.is_none(), "no table before: {before:?}");
    let after = after.expect("the table exists after apply");
    assert_eq!(
        set_elements(&after, "sel-4"),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
    let rules = after["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("rule").is_some())
        .count();
    assert_eq!(rules, 2, "{after}");
    assert!(gone.is_none(), "deleted: {gone:?}");
    // The write happened in the test's namespace, seen by the nft binary there.
    assert_eq!(ns.nft_list(), None);
}

#[test]
fn the_kernel_sees_what_was_applied_and_other_tables_are_untouched() {
    let ns = TestNs::new();
    ns.run(|| {
        apply_script("add table inet other\nadd chain inet other c\n").expect("other table");
        apply_script(TABLE).expect("apply");
        delete_table().expect("delete");
    });
    assert_eq!(ns.nft_list(), None);
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "list", "table", "inet", "other",
        ])
        .output()
        .expect("nft");
    assert!(out.status.success(), "the other table survives");
}

/// A fresh handle of each backend, in the calling thread's namespace.
fn handle(b: Backend) -> Nft {
    match b {
        Backend::Library => Nft::library().expect("libnftables loads (nftables package)"),
        Backend::Binary => Nft::binary(),
    }
}

const BACKENDS: [Backend; 2] = [Backend::Library, Backend::Binary];

#[test]
fn the_library_is_what_the_free_functions_use_here() {
    // The nftables package installs libnftables.so.1 next to nft: on this
    // glibc build it must load, or every change costs a process again.
    twill_nft::library_available().expect("libnftables loads");
    assert_eq!(backend(), Backend::Library);
}

#[test]
fn a_refused_script_names_the_line_and_changes_nothing() {
    for b in BACKENDS {
        let ns = TestNs::new();
        let (err, listed) = ns.run(move || {
            let mut nft = handle(b);
            nft.apply(TABLE).expect("apply");
            // Line 2 refers to a chain that does not exist: the whole
            // transaction, line 1 included, must be refused.
            let bad = "add element inet twill sel-4 { 10.0.0.9 }\nadd rule inet twill no-such-chain accept\n";
            let err = nft.apply(bad).expect_err("refused");
            (err, nft.list_table_json("inet", "twill").expect("list"))
        });
        let NftError::Rejected(text) = &err else {
            panic!("{b:?}: not a refusal: {err:?}")
        };
        assert!(
            text.contains("no-such-chain"),
            "{b:?} quotes the line: {text}"
        );
        assert!(text.contains("script:2:"), "{b:?} names line 2: {text}");
        let listed = listed.expect("table still there");
        assert_eq!(
            set_elements(&listed, "sel-4"),
            ["10.0.0.1", "10.0.0.2"],
            "{b:?}"
        );
    }
}

#[test]
fn a_syntax_error_names_the_line() {
    for b in BACKENDS {
        let ns = TestNs::new();
        let err = ns.run(move || {
            handle(b).apply(
                "add table inet twill\nadd chain inet twill c\nadd rule inet twill c frobnicate\n",
            )
        });
        let Err(NftError::Rejected(text)) = err else {
            panic!("{b:?}: not refused: {err:?}")
        };
        assert!(
            text.contains("script:3:") && text.contains("frobnicate"),
            "{b:?}: {text}"
        );
    }
}

#[test]
fn a_dry_run_checks_but_changes_nothing() {
    for b in BACKENDS {
        let ns = TestNs::new();
        let (ok, bad, listed) = ns.run(move || {
            let mut nft = handle(b);
            let ok = nft.check(TABLE);
            let bad = nft.check("add table inet twill\nadd rule inet twill nowhere accept\n");
            (ok, bad, nft.list_table_json("inet", "twill").expect("list"))
        });
        ok.unwrap_or_else(|e| panic!("{b:?}: a good script passes the check: {e}"));
        assert!(
            matches!(&bad, Err(NftError::Rejected(t)) if t.contains("nowhere")),
            "{b:?}: {bad:?}"
        );
        assert!(listed.is_none(), "{b:?}: nothing applied: {listed:?}");
        assert_eq!(ns.nft_list(), None);
    }
}

#[test]
fn both_backends_list_the_same_table() {
    let ns = TestNs::new();
    let (lib, bin, lib_absent, bin_absent) = ns.run(|| {
        let la = handle(Backend::Library).list_table_json("inet", "twill");
        let ba = handle(Backend::Binary).list_table_json("inet", "twill");
        handle(Backend::Binary).apply(TABLE).expect("apply");
        let l = handle(Backend::Library).list_table_json("inet", "twill");
        let b = handle(Backend::Binary).list_table_json("inet", "twill");
        (l, b, la, ba)
    });
    assert!(matches!(lib_absent, Ok(None)), "{lib_absent:?}");
    assert!(matches!(bin_absent, Ok(None)), "{bin_absent:?}");
    let (lib, bin) = (
        lib.expect("lib").expect("some"),
        bin.expect("bin").expect("some"),
    );
    assert_eq!(set_elements(&lib, "sel-4"), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(lib, bin);
}

#[test]
fn one_context_serves_many_commands_and_moves_between_threads() {
    let ns = TestNs::new();
    let n = ns.run(|| {
        let mut nft = Nft::new().expect("context");
        nft.apply(TABLE).expect("apply");
        for i in 10..20 {
            nft.apply(&format!("add element inet twill sel-4 {{ 10.0.0.{i} }}\n"))
                .expect("element");
        }
        nft.check("delete table inet twill\n").expect("check");
        nft
    });
    // Made in the namespace, used from another thread: still talks to the
    // namespace's kernel tables (the socket was opened there).
    let listed = std::thread::spawn(move || {
        let mut n = n;
        n.list_table_json("inet", "twill").expect("list")
    })
    .join()
    .unwrap()
    .expect("table in the namespace");
    assert_eq!(set_elements(&listed, "sel-4").len(), 12);
    assert!(ns.nft_list().is_some());
}
