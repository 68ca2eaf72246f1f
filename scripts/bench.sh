#!/usr/bin/env bash
# Runs the benchmarks (release build, as root): each compares Twill with a
# real peer on this machine in the same run, prints a markdown table and
# writes JSON + markdown under bench/results/; then docs/benchmarks.md is
# regenerated from those files (scripts/bench-tables.sh).
#   scripts/bench.sh                 # all of them
#   scripts/bench.sh cni-latency     # one
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/bench.sh: run as root: benchmarks build network namespaces" >&2
  exit 1
fi
./scripts/deps.sh
cargo build --release --locked --workspace --bins
all=(cni-latency cni-del route-install rib-memory bgp-ingest policy-control policy-dataplane fabric-convergence service-proxy lab-scale lb-services)
for b in "${@:-${all[@]}}"; do
  echo "== $b"
  "target/release/${b//-/_}"
done
./scripts/bench-tables.sh
