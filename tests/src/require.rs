//! Prerequisite checks: a missing prerequisite fails the test and says how
//! to get it; tests never skip silently.

/// Fails unless running as root (network namespaces, links and nftables need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces and needs root: run `sudo ./scripts/test.sh`"
    );
}

/// Fails unless `name` is on PATH (or is an existing path).
pub fn require_binary(name: &str, package: &str) -> std::path::PathBuf {
    if name.contains('/') {
        let p = std::path::PathBuf::from(name);
        assert!(
            p.exists(),
            "{name} is missing: install the Debian package {package} (scripts/deps.sh does)"
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: install the Debian package {package} (scripts/deps.sh does)")
        })
}
