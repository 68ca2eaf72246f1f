#!/usr/bin/env bash
# Installs the system packages Twill's build, tests, lab and benchmarks use.
# Idempotent: does nothing when everything is already installed. Needs root.
set -euo pipefail

PACKAGES=(
  # build
  gcc pkg-config
  # the kernel side: netns, veth, routes, nftables, probes
  iproute2 nftables iptables ipset iputils-ping iperf3 procps psmisc
  # real BGP peers for interop tests and benchmarks
  bird2 frr gobgpd
  # real CNI plugins to chain with and compare against
  containernetworking-plugins
  # Twill's image built and run without Docker or a registry (scripts/image.sh)
  debootstrap podman runc
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl for manifest dry-runs: Debian's, unless one is installed already
# (another package's kubectl would conflict with kubernetes-client).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/deps.sh: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Daemons from these packages must not start at install time: tests start
# their own instances inside network namespaces.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
