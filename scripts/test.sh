#!/usr/bin/env bash
# Runs the whole test suite, exactly as CI does (.ci/run calls this).
# Run as root on a fresh Debian/Ubuntu machine: it installs the system
# packages it needs (idempotent), then checks formatting and lints, then
# runs every test, including those that build network namespaces and start
# real BIRD, FRR and GoBGP peers and a real kube-apiserver.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (sudo): the tests create network namespaces, veth links and nftables tables" >&2
  exit 1
fi
./scripts/deps.sh
# The Kubernetes tests run a real kube-apiserver: built once per machine
# into /var/cache/twill/k8s-local (about 4½ minutes on 2 cores), reused after.
./scripts/k8s-local.sh build

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The namespace tests run the workspace's binaries (twill-node, twill-cni,
# twillctl, ...); `cargo test` only builds a package's binaries for that
# package's own integration tests, so build them all first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast
