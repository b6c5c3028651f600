#!/usr/bin/env bash
# Every quick start of the README, run as written, then checked as a user would see it.
#
# The README marks each code block of its quick start with `<!-- quickstart: CLIENT -->` (run
# it), `<!-- quickstart: CLIENT file=PATH -->` (a file the next blocks use) or
# `<!-- quickstart: CLIENT not-run: WHY -->`; a client with no block to run (cluster networks:
# etcd and several hosts, checked by tests/tests/cluster.rs) is not a client here. Each client's
# blocks run in order under
# `bash -e` in a sandbox that looks like a freshly installed host, so the commands keep their
# default paths: a network namespace of the test's own (loopback up, nothing else), and a
# private mount namespace in which /run is a fresh tmpfs and /etc/cni/net.d, /opt/cni/bin,
# /var/lib/{cni,plugnet,containers,docker,containerd}, /etc/{docker,containerd,systemd/system},
# /usr/local/bin and a copy of /etc/containers are directories of the test's. In there the test
# installs plugnet (scripts/install.sh --with-conf --bin-dir target/debug), starts one containerd
# and one dockerd on it and plugnet-shim by its unit's ExecStart, and imports one busybox image
# (busybox-static) as docker.io/library/busybox:latest into Docker, containerd and podman.
# cnitool is tests/go/cnitool (cnitool's command line over Debian's libcni 1.1.2).
# After each client: no plugnet veth, lease, cached result, runner record or nftables table.
# With cnitool, the shipped chain example (plugnet + the Go portmap, tuning, bandwidth) too.
# Then podman's static-address paths: port mappings answer before and after
# `podman network reload`, also with `--ip … -p …`, on the shipped example and on a network
# exported by plugnet-shim.
#
#   tests/quickstart.sh [CLIENT...]     (root; default: every client in README order)
# Env: PLUGNET_BIN (dir with plugnet, plugnet-ipam, plugnet-shim; default target/debug),
# KEEP=1 keeps the work dir. Objects: netns pnq-$$, work dir /var/tmp/pnq-*; everything the
# README creates lives in the sandbox and goes with it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [ "${1:-}" = --inner ]; then
  # ---- inside: `ip netns exec $NS unshare -m --propagation private tests/quickstart.sh --inner`
  shift
  FAILS=0
  ok() { printf 'ok   %s\n' "$*"; }
  fail() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
  ip link set lo up
  # `ip netns exec` mounted a fresh /sys without the cgroup hierarchies dockerd, containerd and
  # podman need: mount the host's again (as PID 1 sees them).
  if ! mountpoint -q /sys/fs/cgroup; then
    mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup
    awk '$3 == "cgroup" || $3 == "cgroup2" {print $2, $3, $4}' /proc/1/mounts |
      while read -r dir type opts; do
        [ "$dir" = /sys/fs/cgroup ] || mkdir -p "$dir"
        mount -t "$type" -o "$opts" "$type" "$dir"
      done
  fi
  mount -t tmpfs -o mode=0755 tmpfs /run
  mkdir -p /run/netns /run/docker/plugins /run/lock
  for d in $SANDBOX_DIRS; do
    mkdir -p "$WORK/fs$d"
    mount --bind "$WORK/fs$d" "$d"
  done
  cp -a /etc/containers/. "$WORK/fs-etc-containers/"
  mount --bind "$WORK/fs-etc-containers" /etc/containers
  # podman's default nofile/nproc limits exceed what runc may set on this kind of machine
  # (runc: "error setting rlimits"; root here cannot raise them): the distribution's defaults
  # file gets the limits the machine notes checked, as a host whose limits allow podman's
  # defaults needs no change. /etc/containers stays the README's to write.
  sed 's|^\[containers\]$|&\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]|' \
    /usr/share/containers/containers.conf >"$WORK/share-containers.conf"
  mount --bind "$WORK/share-containers.conf" /usr/share/containers/containers.conf
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$WORK/tools
  export HOME=$WORK/home
  mkdir -p "$HOME"
  PIDS=()
  stop_daemons() {
    set +e
    podman rm -f -t 0 -a >/dev/null 2>&1
    if [ -S /run/docker.sock ]; then
      docker rm -f $(docker ps -aq) >/dev/null 2>&1
      docker network prune -f >/dev/null 2>&1
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
      kill -TERM "${PIDS[i]}" 2>/dev/null
      for _ in $(seq 100); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "${PIDS[i]}" 2>/dev/null
    done
  }
  trap stop_daemons EXIT
  wait_for() { # wait_for WHAT COMMAND...
    local what=$1; shift
    for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "quickstart: $what did not come up" >&2
    cat "$WORK"/*.log >&2 || true
    exit 1
  }

  echo "== install plugnet into the sandbox (scripts/install.sh --with-conf)"
  scripts/install.sh --with-conf --bin-dir "$PLUGNET_BIN" >/dev/null
  echo "== containerd, dockerd, plugnet-shim"
  printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >"$WORK/containerd.toml"
  containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
  PIDS+=($!)
  wait_for containerd ctr version
  dockerd --containerd /run/containerd/containerd.sock >"$WORK/dockerd.log" 2>&1 &
  PIDS+=($!)
  wait_for dockerd docker version
  # What `systemctl start plugnet-shim` runs (RuntimeDirectory made /run/docker/plugins above).
  shim_cmd=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/plugnet-shim.service)
  $shim_cmd >"$WORK/shim.log" 2>&1 &
  PIDS+=($!)
  wait_for plugnet-shim test -S /run/docker/plugins/plugnet.sock
  echo "== the busybox image: Docker, containerd, podman"
  tar -C "$WORK/image" -c . | docker import - busybox:latest >/dev/null
  docker save busybox:latest -o "$WORK/busybox.tar"
  ctr images import "$WORK/busybox.tar" >/dev/null
  # The flag keeps podman from recording a default backend before the README chooses one.
  podman --network-backend cni load -q -i "$WORK/busybox.tar" >/dev/null

  nothing_left() { # nothing_left CLIENT
    local left=""
    left+=$(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^pn[0-9a-f]{13}$' | tr '\n' ' ' || true)
    left+=$(find /var/lib/cni/networks -path '*/ip/*' 2>/dev/null | tr '\n' ' ' || true)
    left+=$(find /var/lib/cni/results -type f 2>/dev/null | tr '\n' ' ' || true)
    left+=$(find /var/lib/plugnet/runner/containers -type f 2>/dev/null | tr '\n' ' ' || true)
    left+=$(nft list tables 2>/dev/null | grep -w plugnet || true)
    if [ -z "$left" ]; then ok "quickstart $1: nothing left behind"; else fail "quickstart $1 left: $left"; fi
  }
  get() { # get PORT [ADDRESS]: the body behind the host's port, from the host
    curl -s --max-time 3 --retry 5 --retry-connrefused --retry-delay 1 "http://${2:-127.0.0.1}:$1/"
  }
  serve='echo hello > /tmp/index.html && exec httpd -f -p 80 -h /tmp'
  pm() { podman --network-backend cni "$@"; } # these checks need CNI whatever ran before
  podman_static_paths() { # podman_static_paths NETWORK STATIC-IP PORT1 PORT2
    local net=$1 ip=$2 p1=$3 p2=$4
    pm run -d --name pnq-r1 --network "$net" -p "$p1:80" busybox sh -c "$serve" >/dev/null ||
      fail "podman run -p on $net"
    [ "$(get "$p1")" = hello ] && ok "podman -p on $net answers" || fail "podman -p on $net"
    pm network reload pnq-r1 >/dev/null || fail "podman network reload on $net"
    [ "$(get "$p1")" = hello ] && ok "podman network reload keeps the mapping on $net" \
      || fail "the mapping on $net is gone after podman network reload"
    pm run -d --name pnq-r2 --network "$net" --ip "$ip" -p "$p2:80" busybox sh -c "$serve" >/dev/null ||
      fail "podman run --ip -p on $net"
    [ "$(get "$p2")" = hello ] && ok "podman --ip $ip -p on $net answers" || fail "podman --ip -p on $net"
    pm network reload pnq-r2 >/dev/null || fail "podman network reload (--ip) on $net"
    [ "$(get "$p2")" = hello ] && ok "podman --ip -p survives podman network reload on $net" \
      || fail "the --ip container's mapping on $net is gone after podman network reload"
    pm rm -f -t 0 pnq-r1 pnq-r2 >/dev/null || true
  }

  chain_example() { # the shipped chain (plugnet, then the Go portmap, tuning, bandwidth) via libcni
    local ns=/run/netns/pnq-chain www=$WORK/www pid
    mkdir -p "$www" && echo hello >"$www/index.html"
    ip netns add pnq-chain
    if CNI_PATH=/opt/cni/bin:/usr/lib/cni CAP_ARGS='{"portMappings": [{"hostPort": 18085, "containerPort": 80, "protocol": "tcp"}]}' \
        cnitool add plugnet-chain "$ns" >/dev/null; then
      ip netns exec pnq-chain /bin/busybox httpd -f -p 80 -h "$www" &
      pid=$!
      # The reference portmap DNATs traffic to the host's addresses: the bridge's gateway here.
      [ "$(get 18085 10.78.0.1)" = hello ] && ok "the chain example: portmap's mapping answers" \
        || fail "the chain example: portmap's mapping"
      kill "$pid"; wait "$pid" 2>/dev/null || true
    else
      fail "the chain example: cnitool add plugnet-chain"
    fi
    CNI_PATH=/opt/cni/bin:/usr/lib/cni cnitool del plugnet-chain "$ns" ||
      fail "the chain example: cnitool del plugnet-chain"
    ip netns del pnq-chain
  }

  for client in $CLIENTS; do
    echo "== quick start: $client"
    cwd=$WORK/run/$client
    mkdir -p "$cwd"
    cp -r "$WORK/qs/$client/." "$cwd/"
    if (cd "$cwd" && timeout 300 bash -euo pipefail -x ./quickstart.sh) 2>&1 | sed 's/^/   /'; then
      ok "quickstart $client: the README's commands"
    else
      fail "quickstart $client: the README's commands"
    fi
    case $client in
      cnitool) chain_example ;;
      podman) podman_static_paths plugnet 10.77.0.50 18081 18082 ;;
      docker)
        # A Docker network exported to CNI runtimes: the conflist the shim writes.
        docker network create -d plugnet --ipam-driver plugnet -o plugnet.export=true \
          --subnet 10.61.0.0/24 pnq-exp >/dev/null
        if [ -f /etc/cni/net.d/pn-10.61.0.0_24.conflist ]; then
          podman_static_paths pn-10.61.0.0_24 10.61.0.50 18083 18084
        else
          fail "plugnet-shim exported no conflist"
        fi
        docker network rm pnq-exp >/dev/null ;;
    esac
    nothing_left "$client"
  done
  [ "$FAILS" = 0 ] || { echo "quickstart: $FAILS failed; logs:"; tail -n 30 "$WORK"/*.log; }
  exit "$FAILS"
fi

# ---- outside: packages, the blocks, the image, the sandbox
[ "$(id -u)" = 0 ] || { echo "quickstart.sh needs root (namespaces, mounts)" >&2; exit 1; }
. scripts/lib/packages.sh
ensure_packages iproute2 iputils-ping nftables iptables curl python3 busybox-static \
  golang-go golang-github-appc-cni-dev containerd docker.io docker-compose podman \
  containernetworking-plugins
PLUGNET_BIN=${PLUGNET_BIN:-$REPO/target/debug}
for b in plugnet plugnet-ipam plugnet-shim; do
  [ -x "$PLUGNET_BIN/$b" ] || { echo "quickstart.sh: $PLUGNET_BIN/$b missing (cargo build --workspace)" >&2; exit 1; }
done
NS=pnq-$$
WORK=$(mktemp -d /var/tmp/pnq-XXXXXX)
SANDBOX_DIRS="/etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/plugnet /var/lib/containers
  /var/lib/docker /var/lib/containerd /etc/docker /etc/containerd /etc/systemd/system /usr/local/bin"
MADE=() # mount points this run had to create on the host, removed again if left empty
for d in $SANDBOX_DIRS; do
  p=$d
  while [ ! -e "$p" ]; do MADE+=("$p"); p=$(dirname "$p"); done
done
cleanup() {
  set +e
  # Whatever still runs in the sandbox's network namespace is this run's (its daemons and
  # their containers): a killed run's inner stage cannot stop them itself.
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  for p in "${MADE[@]}"; do rmdir "$p" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "quickstart: kept $WORK" || rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
for ((i = ${#MADE[@]} - 1; i >= 0; i--)); do mkdir -p "${MADE[i]}"; done
mkdir -p "$WORK/tools" "$WORK/fs-etc-containers"

# The README's blocks, per client, in order.
python3 - "$REPO/README.md" "$WORK/qs" <<'PY'
import os, re, sys
lines = open(sys.argv[1]).read().split("\n")
out = sys.argv[2]
marker = re.compile(r"<!-- quickstart: (\S+)(?: (file=(\S+)|not-run: .*))? -->$")
i = 0
while i < len(lines):
    m = marker.match(lines[i].strip())
    if not m:
        i += 1
        continue
    if not lines[i + 1].startswith("```"):
        sys.exit(f"README line {i + 1}: a quickstart marker not followed by a code block")
    end = lines.index("```", i + 2)
    client, body = m.group(1), "\n".join(lines[i + 2:end]) + "\n"
    d = os.path.join(out, client)
    os.makedirs(d, exist_ok=True)
    if m.group(3):
        open(os.path.join(d, m.group(3)), "w").write(body)
    elif not m.group(2):
        with open(os.path.join(d, "quickstart.sh"), "a") as f:
            f.write(body)
    i = end + 1
PY
ALL_CLIENTS=$(python3 - "$REPO/README.md" <<'PY'
import re, sys
seen = []
for l in open(sys.argv[1]):
    m = re.match(r"<!-- quickstart: (\S+) -->$", l.strip())  # a block to run
    if m and m.group(1) not in seen:
        seen.append(m.group(1))
print(" ".join(seen))
PY
)
CLIENTS=${*:-$ALL_CLIENTS}
for c in $CLIENTS; do
  [ -f "$WORK/qs/$c/quickstart.sh" ] || { echo "quickstart.sh: no runnable block for '$c' (have: $ALL_CLIENTS)" >&2; exit 2; }
done

echo "== cnitool (tests/go/cnitool, Debian's libcni)"
(cd tests/go/cnitool && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$WORK/gocache \
  go build -o "$WORK/tools/cnitool" .)
echo "== busybox image root"
mkdir -p "$WORK/image/bin" "$WORK/image/tmp" "$WORK/image/etc"
chmod 1777 "$WORK/image/tmp"
cp /bin/busybox "$WORK/image/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$WORK/image/bin/$a"; done

ip netns add "$NS"
export WORK SANDBOX_DIRS PLUGNET_BIN CLIENTS
ip netns exec "$NS" unshare -m --propagation private "$REPO/tests/quickstart.sh" --inner
