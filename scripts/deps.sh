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
  # a real kube-apiserver for the Kubernetes tests (scripts/k8s-local.sh builds
  # it from Debian's `kubernetes` source package): Go, the reflect2 fix, etcd,
  # `apt-get source`, and openssl for its certificates
  golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server etcd-client dpkg-dev openssl curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl for manifest dry-runs: Debian's, unless one is installed already
# (another package's kubectl would conflict with kubernetes-client).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
# `apt-get source kubernetes` (scripts/k8s-local.sh build) needs deb-src entries.
need_src=0
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  need_src=1
fi
if [ ${#missing[@]} -eq 0 ] && [ $need_src -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/deps.sh: need root to install: ${missing[*]} (or to enable deb-src)" >&2
  exit 1
fi
if [ $need_src -eq 1 ]; then
  echo "enabling deb-src in the apt sources"
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # deb822 format (Debian 12): add deb-src to every "Types: deb" stanza
    sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  elif [ -f /etc/apt/sources.list ]; then
    # one-line format: a deb-src twin of every deb line
    sed -n 's/^deb \(.*\)$/deb-src \1/p' /etc/apt/sources.list >> /etc/apt/sources.list
  else
    echo "scripts/deps.sh: no apt sources file found to enable deb-src in" >&2
    exit 1
  fi
fi
if [ ${#missing[@]} -eq 0 ]; then
  apt-get update -qq
  exit 0
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
