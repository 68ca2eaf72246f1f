//! Finding the workspace's binaries from inside a test. `cargo test
//! --workspace` (what scripts/test.sh runs) builds every binary before any
//! test runs; they sit next to the test executable's `deps/` directory.

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
        "{} is not built: run the tests with `cargo test --workspace` (scripts/test.sh does), or `cargo build --workspace --bins` first",
        p.display()
    );
    p
}
