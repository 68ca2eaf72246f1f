#!/usr/bin/env bash
# A real kube-apiserver (v1.20.2) and etcd on loopback, for Twill's
# Kubernetes tests and for trying Twill by hand.
#
#   k8s-local.sh build   build kube-apiserver from Debian's `kubernetes` source
#                        package once per machine into $K8S_LOCAL_CACHE
#                        (default /var/cache/twill/k8s-local); reused when present
#   k8s-local.sh start [all|etcd|apiserver]
#                        start etcd and/or kube-apiserver for the instance in
#                        $K8S_LOCAL_DIR (certificates, tokens, kubeconfig, etcd
#                        data, logs, PID files); a running component is left alone
#   k8s-local.sh stop [all|etcd|apiserver] [--wipe]
#                        stop by recorded PID; --wipe also deletes the etcd data
#   k8s-local.sh env     print `export KUBECONFIG=...` for the instance
#
# An instance is a directory plus three ports, so runs never share one: the
# tests start their own in a temporary directory on free ports
# (tests/src/kube_local.rs). Defaults, for use by hand:
#   K8S_LOCAL_DIR=/var/lib/twill/k8s-local  K8S_LOCAL_PORT=6443
#   K8S_LOCAL_ETCD_PORT=32379  K8S_LOCAL_ETCD_PEER_PORT=32380
#
# The server runs with `--authorization-mode=Node,RBAC`, signs
# ServiceAccount tokens (TokenRequest: `kubectl create token`), has an admin
# static token (group system:masters) in the kubeconfig, and writes an audit
# log of every request made by a ServiceAccount of namespace twill-system.
# There is no controller-manager, scheduler or kubelet: create Nodes and Pods
# yourself (set spec.nodeName, write status.podIP as a kubelet would).
# Needs the packages scripts/deps.sh installs.
set -euo pipefail

CACHE=${K8S_LOCAL_CACHE:-/var/cache/twill/k8s-local}
DIR=${K8S_LOCAL_DIR:-/var/lib/twill/k8s-local}
PORT=${K8S_LOCAL_PORT:-6443}
ETCD_PORT=${K8S_LOCAL_ETCD_PORT:-32379}
ETCD_PEER_PORT=${K8S_LOCAL_ETCD_PEER_PORT:-32380}
VERSION=v1.20.2
# Bumped whenever the build recipe changes, so an old cached binary is rebuilt.
RECIPE=1
GO=/usr/lib/go-1.19/bin

die() {
  echo "k8s-local.sh: $*" >&2
  exit 1
}

build() {
  for p in go:$GO/go etcd:/usr/bin/etcd etcdctl:/usr/bin/etcdctl dpkg-source:/usr/bin/dpkg-source \
    openssl:/usr/bin/openssl reflect2:/usr/share/gocode/src/github.com/modern-go/reflect2; do
    [ -e "${p#*:}" ] || die "${p%%:*} is missing (${p#*:}): run scripts/deps.sh as root"
  done
  mkdir -p "$CACHE/bin" "$CACHE/src" "$CACHE/log"
  # One build per machine at a time: a second caller waits, then finds the binary.
  exec 9>"$CACHE/.lock"
  flock 9
  if [ -x "$CACHE/bin/kube-apiserver" ] && [ "$(cat "$CACHE/bin/recipe" 2>/dev/null)" = "$RECIPE" ]; then
    link_etcd
    return 0
  fi
  export PATH=$GO:$PATH GOTOOLCHAIN=local GOFLAGS=-mod=vendor GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache
  local t0
  t0=$(date +%s)

  # The source: Debian's `kubernetes` 1.20.5+really1.20.2, the whole upstream
  # tree with vendor/. Needs deb-src entries (scripts/deps.sh adds them).
  local src
  src=$(find "$CACHE/src" -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -1)
  if [ -z "$src" ]; then
    (cd "$CACHE/src" && apt-get source -qq kubernetes) ||
      die "apt-get source kubernetes failed (is deb-src enabled? run scripts/deps.sh)"
    src=$(find "$CACHE/src" -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -1)
    [ -n "$src" ] || die "apt-get source kubernetes did not unpack a kubernetes-1.20 tree"
  fi
  cd "$src"

  # The four local fixes this tree needs with Go 1.19 (it was made for Go 1.15).
  if [ ! -f .twill-fixed ]; then
    # Fix 1: Go >= 1.16 refuses `-mod=vendor` when vendor/modules.txt lists a
    # replacement-only line ("# path => replacement", no version) before the
    # module entries; Go wants them at the end. Move them there.
    python3 - <<'PY'
import re
lines = open('vendor/modules.txt').read().splitlines()
repl = [l for l in lines if re.match(r'^# \S+ => ', l)]
rest = [l for l in lines if not re.match(r'^# \S+ => ', l)]
open('vendor/modules.txt', 'w').write('\n'.join(rest + repl) + '\n')
PY
    # Fix 2: the vendored github.com/modern-go/reflect2 1.0.1 reads Go runtime
    # internals that changed in Go 1.18 and segfaults at start; use Debian's
    # 1.0.2 (golang-github-modern-go-reflect2-dev), which is API-compatible.
    local r=/usr/share/gocode/src/github.com/modern-go/reflect2 f
    rm -rf vendor/github.com/modern-go/reflect2
    mkdir -p vendor/github.com/modern-go/reflect2
    for f in "$r"/*; do
      case "$f" in *_test.go | */go.mod | */go.sum | */tests) ;; *) cp -r "$f" vendor/github.com/modern-go/reflect2/ ;; esac
    done
    sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#g' go.mod vendor/modules.txt
    # Fix 4: with Go >= 1.18, reflect.Zero and an interface holding "" share
    # one zero value, so the vendored OpenAPI type validator's
    # `reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(data))` holds for
    # "" and every empty string in a custom resource (a CRD default "" too)
    # is refused as null. Under Go 1.15 the test meant `data == nil`;
    # restore exactly that.
    local v=vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go
    for f in $v vendor/github.com/go-openapi/validate/type.go; do
      [ -f "$f" ] && sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
    done
    grep -q 'if data == nil {' $v || die "fix 4 did not apply to $v"
    touch .twill-fixed
  fi
  # Fix 3: pkg/generated/openapi/zz_generated.openapi.go (the built-in types'
  # OpenAPI definitions) is generated upstream by `make` and not shipped in
  # the source package: generate it with the vendored openapi-gen over every
  # package tagged `+k8s:openapi-gen=`, in GOPATH mode as upstream's
  # hack/run-in-gopath.sh does.
  if [ ! -s pkg/generated/openapi/zz_generated.openapi.go ]; then
    go build -o "$CACHE/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    mkdir -p "$CACHE/gopath/src/k8s.io"
    ln -sfn "$src" "$CACHE/gopath/src/k8s.io/kubernetes"
    local dirs
    dirs=$(find -L pkg cmd plugin vendor/k8s.io -name '*.go' -not -name '*_test.go' \
      -not -path 'vendor/k8s.io/code-generator/*' -not -path 'vendor/k8s.io/sample-apiserver/*' \
      -print0 | xargs -0 grep -l '^// *+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u |
      sed 's#^#k8s.io/kubernetes/#' | paste -sd, -)
    (cd "$CACHE/gopath/src/k8s.io/kubernetes" && GO111MODULE=off GOFLAGS='' "$CACHE/bin/openapi-gen" \
      --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$CACHE/log/openapi_violations.report") \
      >"$CACHE/log/openapi-gen.log" 2>&1 || die "openapi-gen failed; see $CACHE/log/openapi-gen.log"
    [ -s pkg/generated/openapi/zz_generated.openapi.go ] || die "openapi-gen wrote nothing"
  fi

  local ld="-s -w"
  ld+=" -X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1"
  ld+=" -X k8s.io/component-base/version.gitMinor=20 -X k8s.io/client-go/pkg/version.gitVersion=$VERSION"
  go build -p "$(nproc)" -ldflags "$ld" -o "$CACHE/bin/kube-apiserver.tmp" ./cmd/kube-apiserver
  mv "$CACHE/bin/kube-apiserver.tmp" "$CACHE/bin/kube-apiserver"
  echo "$RECIPE" >"$CACHE/bin/recipe"
  link_etcd
  echo "kube-apiserver $VERSION built in $(($(date +%s) - t0)) s" | tee "$CACHE/log/build-time.txt"
}

# Debian's etcd beside the apiserver, so one directory holds both binaries.
link_etcd() {
  ln -sfn /usr/bin/etcd "$CACHE/bin/etcd"
}

# Certificates, keys, the admin token and the kubeconfig of the instance.
pki() {
  local p=$DIR/pki
  mkdir -p "$p"
  [ -f "$p/ca.crt" ] ||
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" -days 3650 \
      -subj "/CN=twill-k8s-local-ca" 2>/dev/null
  if [ ! -f "$p/apiserver.crt" ]; then
    cat >"$p/apiserver.cnf" <<EOF
[req]
distinguished_name=dn
[dn]
[ext]
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
EOF
    openssl req -newkey rsa:2048 -nodes -keyout "$p/apiserver.key" -out "$p/apiserver.csr" \
      -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -out "$p/apiserver.crt" -days 3650 -extfile "$p/apiserver.cnf" -extensions ext 2>/dev/null
  fi
  if [ ! -f "$p/sa.key" ]; then
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  fi
  [ -f "$p/token.csv" ] ||
    (umask 077 && echo "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin,admin,system:masters" >"$p/token.csv")
  local token
  token=$(cut -d, -f1 "$p/token.csv")
  (umask 077 && cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k8s-local
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $p/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: k8s-local
  context: {cluster: k8s-local, user: admin}
current-context: k8s-local
EOF
  )
}

alive() {
  [ -f "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null
}

start_etcd() {
  alive etcd && return 0
  setsid "$CACHE/bin/etcd" --name twill-k8s-local --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "twill-k8s-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes=4294967296 \
    >>"$DIR/log/etcd.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/etcd.pid"
  local i
  for i in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break
    alive etcd || die "etcd exited; see $DIR/log/etcd.log"
    sleep 0.1
  done
  ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 ||
    die "etcd not healthy after 10 s; see $DIR/log/etcd.log"
  echo "etcd pid $(cat "$DIR/run/etcd.pid") on 127.0.0.1:$ETCD_PORT"
}

start_apiserver() {
  alive apiserver && return 0
  local p=$DIR/pki
  # Metadata of every request a ServiceAccount of twill-system makes (the
  # tests read it to prove twill-node never needs a permission RBAC does not
  # grant); nothing else.
  cat >"$DIR/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts:twill-system"]
- level: None
EOF
  # --advertise-address: the address the `kubernetes` Service's endpoint
  # names; nothing listens there (the server binds loopback only), but it
  # must not be loopback. The ServiceAccount admission plugin is off: with no
  # controller-manager nobody would create the token Secrets it waits for.
  setsid "$CACHE/bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$PORT" --insecure-port=0 --advertise-address=10.96.0.1 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --token-auth-file="$p/token.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.96.0.0/24 \
    --disable-admission-plugins=ServiceAccount \
    --audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$DIR/log/audit.log" \
    --audit-log-maxsize=200 \
    --allow-privileged=true --profiling=false --logtostderr=true --v=1 \
    >>"$DIR/log/apiserver.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/apiserver.pid"
  local token i
  token=$(cut -d, -f1 "$p/token.csv")
  for i in $(seq 1 240); do
    curl -sf --cacert "$p/ca.crt" -H "Authorization: Bearer $token" "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 &&
      {
        echo "kube-apiserver pid $(cat "$DIR/run/apiserver.pid") ready on https://127.0.0.1:$PORT"
        return 0
      }
    alive apiserver || die "kube-apiserver exited; see $DIR/log/apiserver.log"
    sleep 0.25
  done
  die "kube-apiserver not ready after 60 s; see $DIR/log/apiserver.log"
}

stop_one() {
  local f=$DIR/run/$1.pid p i
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p"
    for i in $(seq 1 100); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"
    echo "stopped $1 (pid $p)"
  fi
  rm -f "$f"
}

what=${2:-all}
case "${1:-}" in
build) build ;;
start)
  [ -x "$CACHE/bin/kube-apiserver" ] || die "no kube-apiserver in $CACHE/bin: run '$0 build' first"
  mkdir -p "$DIR/run" "$DIR/log"
  pki
  case "$what" in
  all) start_etcd && start_apiserver ;;
  etcd) start_etcd ;;
  apiserver) start_apiserver ;;
  *) die "start: unknown component $what" ;;
  esac
  ;;
stop)
  case "$what" in
  all | --wipe) stop_one apiserver && stop_one etcd ;;
  etcd | apiserver) stop_one "$what" ;;
  *) die "stop: unknown component $what" ;;
  esac
  if [[ " $* " == *" --wipe "* ]]; then
    rm -rf "$DIR/etcd"
    echo "wiped the etcd data in $DIR/etcd"
  fi
  ;;
env) echo "export KUBECONFIG=$DIR/kubeconfig" ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
  ;;
esac
