#!/usr/bin/env bash
# Builds Twill's image without Docker or a registry: a minimal Debian
# bookworm base made with debootstrap from the mirror apt uses (cached in
# /var/cache/twill/, imported once as localhost/twill-base:bookworm), then
# `podman build` of the repository's Dockerfile on it with the binaries cargo
# built on this machine. Idempotent: a second run reuses the base and only
# rebuilds the image layer that copies the binaries.
#   scripts/image.sh                   # release binaries (cargo build --release)
#   scripts/image.sh --bins target/debug   # binaries already built (what the tests do)
#   TWILL_IMAGE=localhost/twill:dev scripts/image.sh
# Prints the image name on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

BINS=
while [ $# -gt 0 ]; do
  case "$1" in
    --bins) BINS="$2"; shift 2 ;;
    *) echo "scripts/image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
IMAGE="${TWILL_IMAGE:-localhost/twill:dev}"
BASE_IMAGE=localhost/twill-base:bookworm
CACHE=/var/cache/twill
BASE_TAR="$CACHE/base-bookworm.tar"

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/image.sh: run as root (debootstrap and rootful podman need it)" >&2
  exit 1
fi
missing=()
for p in debootstrap podman runc; do
  command -v "$p" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# The Debian mirror apt already uses (deb822 or one-line sources).
mirror() {
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1 || true)
  if [ -z "$m" ]; then
    m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{print $2}' | grep -v security | head -n1 || true)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

start=$(date +%s)
if [ ! -s "$BASE_TAR" ]; then
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap: minimal bookworm from $(mirror)"
  debootstrap --variant=minbase --include=nftables,iproute2 bookworm "$root" "$(mirror)" >"$CACHE/debootstrap.log"
  # No package lists or caches in the image.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -cf "$BASE_TAR.tmp" .
  mv -f "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$root"
  trap - EXIT
fi
if ! podman image exists "$BASE_IMAGE"; then
  podman import --change 'CMD ["/bin/sh"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi
base_done=$(date +%s)

if [ -z "$BINS" ]; then
  cargo build --release --locked -p twill-felix -p twill-cni -p twillctl --bins
  BINS=target/release
fi
bins=$BINS
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/dist"
for b in twill-node twill-cni twillctl; do
  [ -x "$bins/$b" ] || { echo "scripts/image.sh: $bins/$b is not built" >&2; exit 1; }
  cp "$bins/$b" "$ctx/dist/$b"
done
cp Dockerfile "$ctx/Dockerfile"
podman --runtime runc --cgroup-manager cgroupfs build --quiet \
  --build-arg BASE="$BASE_IMAGE" -t "$IMAGE" "$ctx" >/dev/null
end=$(date +%s)
echo "base: $((base_done - start)) s, image: $((end - base_done)) s" >&2
echo "$IMAGE"
