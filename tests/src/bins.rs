//! Finding the workspace's binaries from inside a test. scripts/test.sh runs
//! `cargo build --workspace --bins` before `cargo test` (cargo test alone
//! builds only the binaries of the package whose tests run); they sit next
//! to the test executable's `deps/` directory.

use std::path::PathBuf;

/// Path of a workspace binary (twill-node, twill-cni, twillctl, ...).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target directory")
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Applies manifests (multi-document YAML) to the embedded store at `db`
/// with the real `twillctl apply -f -`; panics with the manifest and
/// twillctl's error when it fails.
pub fn twillctl_apply(db: &std::path::Path, yaml: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(binary("twillctl"))
        .args(["apply", "-f", "-"])
        .env("TWILL_DATASTORE_PATH", db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run twillctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write manifest");
    let out = child.wait_with_output().expect("twillctl");
    assert!(
        out.status.success(),
        "twillctl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}
