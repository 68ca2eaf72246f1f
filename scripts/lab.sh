#!/usr/bin/env bash
# The main job on one machine: installs what is missing, builds Twill, and
# runs it against the embedded store (no Kubernetes needed): applies the
# examples and lists what was stored.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/lab.sh: run as root (sudo): the lab creates network namespaces and links" >&2
  exit 1
fi
./scripts/deps.sh
cargo build --release --locked -p twillctl
TWILLCTL=target/release/twillctl
export TWILL_DATASTORE_PATH="${TWILL_DATASTORE_PATH:-/var/lib/twill/lab/twill.db}"

$TWILLCTL apply -f examples/
for kind in ippools bgpconfigurations bgppeers globalnetworkpolicies; do
  echo
  $TWILLCTL get "$kind" -o wide
done
echo
$TWILLCTL get networkpolicies -A
