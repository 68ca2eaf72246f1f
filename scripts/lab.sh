#!/usr/bin/env bash
# The main job on one machine: installs what is missing, builds Twill, and
# brings up a lab cluster — a ToR router (BIRD) and three nodes, each running
# twill-node in its own network namespace, with pods created through
# twill-cni — then prints node status and a pod-to-pod connectivity matrix.
#   scripts/lab.sh                       # 3 nodes, BIRD ToR
#   scripts/lab.sh --nodes 5 --tor frr   # any `twillctl lab up` flags
#   scripts/lab.sh --replace             # take down a lab this script did not start
# A lab already up in the directory is taken down first only if this script
# started it (it leaves a mark in the directory) or with --replace.
# Afterwards: target/release/twillctl lab status | exec | pod add | restart | down
set -euo pipefail
cd "$(dirname "$0")/.."

REPLACE=0
ARGS=()
for a in "$@"; do
  case "$a" in
    --replace|--force) REPLACE=1 ;;
    *) ARGS+=("$a") ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/lab.sh: run as root (sudo): the lab creates network namespaces and links" >&2
  exit 1
fi
DIR="${TWILL_LAB_DIR:-/var/lib/twill/lab}"
MARK="$DIR/.started-by-lab.sh"
if [ -f "$DIR/lab.json" ] && [ ! -f "$MARK" ] && [ "$REPLACE" -ne 1 ]; then
  echo "scripts/lab.sh: a lab this script did not start is up in $DIR;" >&2
  echo "  look at it with \`twillctl lab status --dir $DIR\`, take it down with \`twillctl lab down --dir $DIR\`," >&2
  echo "  or run scripts/lab.sh --replace to take it down and start a new one." >&2
  exit 1
fi
./scripts/deps.sh
cargo build --release --locked -p twillctl -p twill-felix -p twill-cni --bins
TWILLCTL=target/release/twillctl
if [ -f "$DIR/lab.json" ]; then
  echo "Taking down the lab in $DIR first ($([ -f "$MARK" ] && echo "started by scripts/lab.sh" || echo "--replace"))."
  $TWILLCTL lab down --dir "$DIR"
fi
status=0
$TWILLCTL lab up --dir "$DIR" "${ARGS[@]}" || status=$?
# Mark the lab as ours (also after a failed up: what it built is recorded).
if [ -f "$DIR/lab.json" ]; then
  touch "$MARK"
fi
exit "$status"
