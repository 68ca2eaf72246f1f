#!/usr/bin/env bash
# The main job on one machine: installs what is missing, builds Twill, and
# brings up a lab cluster — a ToR router (BIRD) and three nodes, each running
# twill-node in its own network namespace, with pods created through
# twill-cni — then prints node status and a pod-to-pod connectivity matrix.
#   scripts/lab.sh                       # 3 nodes, BIRD ToR
#   scripts/lab.sh --nodes 5 --tor frr   # any `twillctl lab up` flags
# Afterwards: target/release/twillctl lab status | exec | restart | down
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/lab.sh: run as root (sudo): the lab creates network namespaces and links" >&2
  exit 1
fi
./scripts/deps.sh
cargo build --release --locked -p twillctl -p twill-felix -p twill-cni --bins
TWILLCTL=target/release/twillctl
DIR="${TWILL_LAB_DIR:-/var/lib/twill/lab}"
if [ -f "$DIR/lab.json" ]; then
  echo "A lab is already up in $DIR; taking it down first."
  $TWILLCTL lab down --dir "$DIR"
fi
$TWILLCTL lab up --dir "$DIR" "$@"
