#!/usr/bin/env bash
# Docker across hosts (issue 22): two "hosts" of one cluster world (network namespaces on one
# L2 segment, a three-member etcd, plugnet-agent per host: tests/src/bin/plugnet-world.rs), a
# dockerd and a plugnet-shim of our own in each host's namespace (own data/exec roots, sockets,
# state, CNI conf dir, firewall state), one Docker network per host joined to the cluster
# network with `--ipam-driver <shim> --ipam-opt plugnet.cluster=NAME`. Checks:
#   - Docker's addresses come from each host's blocks (block prefix, block gateway in the
#     container's default route), the network's gateway is the host's first block's;
#   - a Docker container on each host pings the other across hosts (host-gw);
#   - a CNI container on host B (plugnet ADD with the Docker network's exported conflist, the
#     same bridge and store) and a Docker container on host A reach each other;
#   - with --mode vxlan (hosts on two L3 subnets behind a router): the containers' MTU is the
#     network's (underlay - 50) and a 4 MiB TCP transfer passes between the hosts' Docker
#     containers;
#   - nothing is left afterwards (containers, networks, links, staging, stores, namespaces).
#   - with --routed: the Docker network in plugnet's routed mode (-o plugnet.mode=routed):
#     host addresses (/32, /128) from the blocks, plugnet's link-local gateways;
# Usage: cluster-docker.sh [--mode host-gw|vxlan] [--ipv6] [--routed]
# Objects: pnx*-$$; addresses 10.174.0.0/16 (cluster 10.174.0.0/18, underlay 10.174.200.0/24).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/packages.sh
ensure_packages docker.io busybox-static iproute2 iptables etcd-server etcd-client python3
MODE=host-gw V6= ROUTED=
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=${2:?--mode host-gw|vxlan}; shift 2 ;;
    --ipv6) V6=fd00:174::/64; shift ;;
    --routed) ROUTED=1; shift ;;
    *) echo "usage: cluster-docker.sh [--mode host-gw|vxlan] [--ipv6] [--routed]"; exit 2 ;;
  esac
done
case "$MODE" in host-gw | vxlan) ;; *) echo "--mode host-gw|vxlan"; exit 2 ;; esac
X=$$
BIN=${PLUGNET_BIN:-$(pwd)/target/debug}
for b in plugnet plugnet-ipam plugnet-shim plugnet-agent plugnet-world; do
  [ -x "$BIN/$b" ] || { echo "cluster-docker: $BIN/$b missing: cargo build --workspace first"; exit 1; }
done
TMP=$(mktemp -d /tmp/pnx-docker-XXXXXX)
CLUSTER=pnxn SUBNET=10.174.0.0/18 DNET=pnxnet IMG=pnxbb:$X
FAILS=0
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then printf 'ok   %s\n' "$what"; else fail "$what"; fi; }

# Per host i: namespace NS[i], agent dir AGENT[i], dockerd, shim (driver name pnx-$X-i).
NS=() AGENT=() DPID=() SPID=()
WORLD_PID=
droot() { echo "/var/lib/pnx-docker-$X-$1"; }
eroot() { echo "/run/pnx-docker-$X-$1"; }
dsock() { echo "/run/pnx-docker-$X-$1.sock"; }
drv() { echo "pnx-$X-$1"; }
d() { local i=$1; shift; /usr/bin/docker -H "unix://$(dsock "$i")" "$@"; }
in_ns() { local i=$1; shift; nsenter --net="/run/netns/${NS[$i]}" "$@"; }
CNI_NS=pnx-$X-cni

cleanup() {
  set +e
  if [ -n "${CNI_ID:-}" ]; then cni_run DEL >/dev/null 2>&1; fi
  ip netns del "$CNI_NS" 2>/dev/null
  for i in "${!DPID[@]}"; do
    [ -n "${DPID[$i]}" ] || continue
    d "$i" rm -f $(d "$i" ps -aq) >/dev/null 2>&1
    d "$i" network rm "$DNET" >/dev/null 2>&1
    kill -TERM "${DPID[$i]}"
    for _ in $(seq 100); do kill -0 "${DPID[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${DPID[$i]}" 2>/dev/null
  done
  for p in $(pgrep -x containerd-shim || true); do
    if { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q -- "-address /run/pnx-docker-$X-"; then
      for c in $(pgrep -P "$p" || true); do kill -KILL "$c"; done
      kill -KILL "$p"
    fi
  done
  for i in "${!SPID[@]}"; do
    [ -n "${SPID[$i]}" ] && kill -TERM "${SPID[$i]}" && wait "${SPID[$i]}"
    for f in /run/plugnet-shim/"$(drv "$i")"/ns/*; do [ -e "$f" ] && umount -l "$f" && rm -f "$f"; done
    umount -l "/run/plugnet-shim/$(drv "$i")/ns" 2>/dev/null; rm -rf "/run/plugnet-shim/$(drv "$i")"
  done
  for i in 0 1; do
    for m in $(grep -o " $(droot "$i")[^ ]*\| $(eroot "$i")[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
    rm -rf "$(droot "$i")" "$(eroot "$i")" "$(dsock "$i")" "$(eroot "$i").pid"
  done
  # The world: closing its stdin takes the network, agents, etcd and namespaces down.
  if [ -n "$WORLD_PID" ]; then
    exec {WIN}>&-
    wait "$WORLD_PID"
  fi
  if [ "${KEEP:-}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NETNS_BEFORE=" $(ip netns list | awk '{print $1}' | tr '\n' ' ')"
say "cluster world: 2 hosts, etcd, agents, network $CLUSTER ($SUBNET, $MODE)"
mkfifo "$TMP/world.in"
PLUGNET_BIN_DIR="$BIN" "$BIN/plugnet-world" pnx 2 10.174.200 "$CLUSTER" "$SUBNET${V6:+,$V6}" "$MODE" <"$TMP/world.in" >"$TMP/world.out" 2>"$TMP/world.log" &
WORLD_PID=$!
exec {WIN}>"$TMP/world.in"
for _ in $(seq 600); do [ -s "$TMP/world.out" ] && break; kill -0 "$WORLD_PID" 2>/dev/null || break; sleep 0.1; done
[ -s "$TMP/world.out" ] || { echo "plugnet-world did not come up"; tail -40 "$TMP/world.log"; exit 1; }
for i in 0 1; do
  NS[$i]=$(python3 -c "import json,sys; print(json.load(sys.stdin)['hosts'][$i]['netns'])" <"$TMP/world.out")
  AGENT[$i]=$(python3 -c "import json,sys; print(json.load(sys.stdin)['hosts'][$i]['agentDir'])" <"$TMP/world.out")
done
echo "hosts: ${NS[*]}"

start_shim() {
  local i=$1
  nsenter --net="/run/netns/${NS[$i]}" "$BIN/plugnet-shim" --name "$(drv "$i")" --state-dir "$TMP/h$i/state" \
    --cni-conf-dir "$TMP/h$i/net.d" --cni-path "$BIN" --ipam-data-dir "$TMP/h$i/ipam" \
    --agent-dir "${AGENT[$i]}" --firewall-state-dir "$TMP/h$i/fw" --log-level debug \
    >>"$TMP/shim$i.log" 2>&1 {WIN}>&- &
  SPID[$i]=$!
  for _ in $(seq 100); do [ -S "/run/docker/plugins/$(drv "$i").sock" ] && return 0; sleep 0.05; done
}

say "dockerd and plugnet-shim per host namespace"
mkdir -p "$TMP/root/bin"
cp /bin/busybox "$TMP/root/bin/"
for c in sh ip ping sleep nc cat ls true head wc mkdir httpd; do ln -sf busybox "$TMP/root/bin/$c"; done
for i in 0 1; do
  mkdir -p "$TMP/h$i/net.d" "$TMP/h$i/ipam"
  start_shim "$i"
  nsenter --net="/run/netns/${NS[$i]}" dockerd --data-root "$(droot "$i")" --exec-root "$(eroot "$i")" --pidfile "$(eroot "$i").pid" \
    -H "unix://$(dsock "$i")" --bridge=none --iptables=false --ip6tables=false >"$TMP/dockerd$i.log" 2>&1 {WIN}>&- &
  DPID[$i]=$!
done
for i in 0 1; do
  for _ in $(seq 300); do d "$i" info >/dev/null 2>&1 && break; sleep 0.1; done
  d "$i" info >/dev/null || { tail -30 "$TMP/dockerd$i.log"; exit 1; }
  [ -S "/run/docker/plugins/$(drv "$i").sock" ] || { cat "$TMP/shim$i.log"; exit 1; }
  tar -C "$TMP/root" -c . | d "$i" import - "$IMG" >/dev/null
done

say "docker network create on each host (host 0 first, then host 1, which routes to host 0's block)"
mknet() { # host [extra args]
  local i=$1; shift
  d "$i" network create -d "$(drv "$i")" --ipam-driver "$(drv "$i")" \
    --ipam-opt "plugnet.cluster=$CLUSTER" -o plugnet.export=true ${V6:+--ipv6} ${ROUTED:+-o plugnet.mode=routed} "$@" "$DNET"
}
mknet 0 >/dev/null
# Docker checks an IPAM pool it did not ask for by --subnet against the host's routes; host 1
# already routes to host 0's block (proto 112) inside the cluster subnet.
for _ in $(seq 100); do [ -n "$(in_ns 1 ip route show proto 112)" ] && break; sleep 0.1; done
in_ns 1 ip route show proto 112 | sed 's/^/  host 1 route: /'
if out=$(mknet 1 2>&1); then
  echo "  host 1 without --subnet: created"
  NOSUBNET=created
else
  echo "  host 1 without --subnet: $out"
  NOSUBNET=refused
  check "the refusal says to add --subnet" grep -q -- "--subnet $SUBNET" <<<"$out"
  mknet 1 --subnet "$SUBNET" >/dev/null
fi
for i in 0 1; do
  gw=$(d "$i" network inspect -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' "$DNET" | awk '{print $1}')
  blocks=$(python3 -c "import json,sys; print(' '.join(b['cidr'] for b in json.load(sys.stdin)['blocks']))" \
    <"${AGENT[$i]}/networks/$CLUSTER.json")
  echo "  host $i: network gateway $gw, blocks $blocks"
  check "host $i: the network's gateway is the first address of one of its blocks" \
    python3 -c "import ipaddress,sys; gw=ipaddress.ip_address('$gw'); sys.exit(not any(ipaddress.ip_network(b).network_address+1==gw for b in '$blocks'.split()))"
done

say "what is refused, and why"
refused() { # what needle cmd...
  local what=$1 needle=$2; shift 2
  local out
  if out=$("$@" 2>&1); then fail "$what: accepted"; d 0 network rm pnx-bad >/dev/null 2>&1; return; fi
  if grep -q -- "$needle" <<<"$out"; then printf 'ok   %s\n' "$what"; else fail "$what: $out"; fi
}
refused "-o plugnet.cluster with Docker's default IPAM" "--ipam-opt plugnet.cluster=$CLUSTER" \
  d 0 network create -d "$(drv 0)" -o "plugnet.cluster=$CLUSTER" --subnet 10.174.64.0/24 pnx-bad
refused "an explicit --gateway" "blocks' first" \
  d 0 network create -d "$(drv 0)" --ipam-driver "$(drv 0)" --ipam-opt "plugnet.cluster=$CLUSTER" \
  --subnet "$SUBNET" --gateway 10.174.63.254 pnx-bad
[ -n "$V6" ] && refused "an IPv4-only Docker network of a dual-stack cluster network" "with --ipv6" \
  d 0 network create -d "$(drv 0)" --ipam-driver "$(drv 0)" --ipam-opt "plugnet.cluster=$CLUSTER" pnx-bad
refused "a second Docker network of the cluster network on one host" "already used by Docker network" \
  d 0 network create -d "$(drv 0)" --ipam-driver "$(drv 0)" --ipam-opt "plugnet.cluster=$CLUSTER" ${V6:+--ipv6} pnx-bad

# An address Docker shows is in one of this host's blocks; in bridge mode with the block's prefix
# and the block's first address as default gateway, in routed mode a host address behind
# plugnet's link-local gateway.
in_block() { # what ip prefixlen default-gateway blocks
  if [ -n "$ROUTED" ]; then
    check "$1: $2 is in a block of this host, a host address (/$3), default via $4" \
      python3 -c "import ipaddress,sys; ip=ipaddress.ip_address('$2'); sys.exit(not (any(ip in ipaddress.ip_network(b) for b in '$5'.split()) and $3 == ip.max_prefixlen and ipaddress.ip_address('$4').is_link_local))"
  else
    check "$1: $2 is in a block of this host, with the block's prefix (/$3) and gateway ($4)" \
      python3 -c "import ipaddress,sys; ip=ipaddress.ip_address('$2'); gw=ipaddress.ip_address('$4'); sys.exit(not any(ip in ipaddress.ip_network(b) and ipaddress.ip_network(b).prefixlen==$3 and ipaddress.ip_network(b).network_address+1==gw for b in '$5'.split()))"
  fi
}

say "a Docker container per host"
for i in 0 1; do
  d "$i" run -d --name "pnx-c$i" --network "$DNET" "$IMG" sleep 600 >/dev/null
done
IP=() 
for i in 0 1; do
  IP[$i]=$(d "$i" inspect -f "{{(index .NetworkSettings.Networks \"$DNET\").IPAddress}}" "pnx-c$i")
  plen=$(d "$i" inspect -f "{{(index .NetworkSettings.Networks \"$DNET\").IPPrefixLen}}" "pnx-c$i")
  defgw=$(d "$i" exec "pnx-c$i" ip route | awk '/^default/ {print $3}')
  blocks=$(python3 -c "import json,sys; print(' '.join(b['cidr'] for b in json.load(sys.stdin)['blocks']))" \
    <"${AGENT[$i]}/networks/$CLUSTER.json")
  echo "  host $i: pnx-c$i ${IP[$i]}/$plen via $defgw"
  in_block "host $i" "${IP[$i]}" "$plen" "$defgw" "$blocks"
done
pings() { d "$1" exec "$2" ping -c1 -W2 "$3" >/dev/null 2>&1; }
retry() { for _ in $(seq 20); do "$@" && return 0; sleep 0.5; done; return 1; }
check "Docker on host 0 -> Docker on host 1 (${IP[1]})" retry pings 0 pnx-c0 "${IP[1]}"
check "Docker on host 1 -> Docker on host 0 (${IP[0]})" retry pings 1 pnx-c1 "${IP[0]}"
IP6=()
if [ -n "$V6" ]; then
  for i in 0 1; do
    IP6[$i]=$(d "$i" inspect -f "{{(index .NetworkSettings.Networks \"$DNET\").GlobalIPv6Address}}" "pnx-c$i")
    plen=$(d "$i" inspect -f "{{(index .NetworkSettings.Networks \"$DNET\").GlobalIPv6PrefixLen}}" "pnx-c$i")
    gw6=$(d "$i" exec "pnx-c$i" ip -6 route | awk '/^default/ {print $3}')
    blocks=$(python3 -c "import json,sys; print(' '.join(b['cidr'] for b in json.load(sys.stdin)['blocks']))" \
      <"${AGENT[$i]}/networks/$CLUSTER.json")
    echo "  host $i: pnx-c$i ${IP6[$i]}/$plen via $gw6"
    in_block "host $i" "${IP6[$i]}" "$plen" "$gw6" "$blocks"
  done
  check "IPv6: Docker on host 0 -> Docker on host 1 (${IP6[1]})" retry pings 0 pnx-c0 "${IP6[1]}"
  check "IPv6: Docker on host 1 -> Docker on host 0 (${IP6[0]})" retry pings 1 pnx-c1 "${IP6[0]}"
fi

if [ "$MODE" = vxlan ]; then
  want=$(python3 -c "import json,sys; print(json.load(sys.stdin).get('mtu'))" <"${AGENT[0]}/networks/$CLUSTER.json")
  for i in 0 1; do
    got=$(d "$i" exec "pnx-c$i" cat /sys/class/net/eth0/mtu)
    check "host $i: the Docker container's MTU is the network's ($got, want $want)" test "$got" = "$want"
  done
  # Full-size segments from host 1's container to host 0's: busybox httpd serves 4 MiB, nc
  # fetches it (the static busybox's wget crashes); the reply is the body plus its headers.
  d 1 exec pnx-c1 sh -c 'mkdir -p /www && head -c 4194304 /dev/zero >/www/f && httpd -p 8080 -h /www'
  got=0
  for _ in $(seq 5); do
    got=$(d 0 exec pnx-c0 sh -c "(printf 'GET /f HTTP/1.0\r\n\r\n'; sleep 2) | nc ${IP[1]} 8080 | wc -c" 2>/dev/null || echo 0)
    [ "$got" -gt 4194304 ] && break
    sleep 0.5
  done
  check "a 4 MiB TCP transfer between the hosts' Docker containers ($got bytes with headers)" test "$got" -gt 4194304
fi

say "host 0's shim restarted: its state (cluster pool, endpoint) is on disk"
kill -TERM "${SPID[0]}"; wait "${SPID[0]}" 2>/dev/null || true
start_shim 0
d 0 run -d --name pnx-c0b --network "$DNET" "$IMG" sleep 600 >/dev/null
IPB=$(d 0 inspect -f "{{(index .NetworkSettings.Networks \"$DNET\").IPAddress}}" pnx-c0b)
check "a new container on host 0 ($IPB) after the restart reaches host 1" retry pings 0 pnx-c0b "${IP[1]}"
check "the container from before the restart still reaches host 1" retry pings 0 pnx-c0 "${IP[1]}"
check "the new container got another address" test "$IPB" != "${IP[0]}"
d 0 rm -f pnx-c0b >/dev/null

[ -n "${PAUSE:-}" ] && { echo "paused ${PAUSE}s (PAUSE)"; sleep "$PAUSE"; }

say "a CNI container on host 1 (the exported conflist of its Docker network)"
CONFLIST=$(ls "$TMP/h1/net.d/"*.conflist)
python3 - "$CONFLIST" >"$TMP/cni.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
p = dict(c["plugins"][0]); p["cniVersion"] = c["cniVersion"]; p["name"] = c["name"]
print(json.dumps(p))
EOF
ip netns add "$CNI_NS"
CNI_ID=pnx-cni-$X
cni_run() {
  in_ns 1 env CNI_COMMAND="$1" CNI_CONTAINERID="$CNI_ID" CNI_NETNS="/run/netns/$CNI_NS" CNI_IFNAME=eth0 \
    CNI_PATH="$BIN" "$BIN/plugnet" <"$TMP/cni.json"
}
cni_run ADD >"$TMP/cni-add.json"
CNI_IP=$(python3 -c "import json,sys; print(json.load(sys.stdin)['ips'][0]['address'].split('/')[0])" <"$TMP/cni-add.json")
echo "  CNI container on host 1: $CNI_IP"
check "Docker on host 0 -> CNI on host 1 ($CNI_IP)" retry pings 0 pnx-c0 "$CNI_IP"
check "CNI on host 1 -> Docker on host 0 (${IP[0]})" retry bash -c "ip netns exec $CNI_NS ping -c1 -W2 ${IP[0]} >/dev/null"
if [ -n "$V6" ]; then
  CNI_IP6=$(python3 -c "import json,sys; print(json.load(sys.stdin)['ips'][1]['address'].split('/')[0])" <"$TMP/cni-add.json")
  check "IPv6: Docker on host 0 -> CNI on host 1 ($CNI_IP6)" retry pings 0 pnx-c0 "$CNI_IP6"
fi
if [ -n "$V6" ]; then claims=4; else claims=2; fi # two attachments, one address per family
check "Docker and CNI on host 1 share one store ($claims claims)" \
  test "$(ls "${AGENT[1]}/ipam/$CLUSTER/ip" | wc -l)" -eq "$claims"

say "teardown"
cni_run DEL >/dev/null; CNI_ID=
ip netns del "$CNI_NS"
for i in 0 1; do
  d "$i" rm -f "pnx-c$i" >/dev/null
  d "$i" network rm "$DNET" >/dev/null
done
for i in 0 1; do
  check "host $i: no pnj/pnb link left" bash -c "! nsenter --net=/run/netns/${NS[$i]} ip -o link show | grep -q ': pn[jb]'"
  check "host $i: no network, endpoint or pool in the shim's state" bash -c "! ls '$TMP/h$i/state/'{networks,endpoints,pools}/* 2>/dev/null | grep -q ."
  check "host $i: no address held in the cluster store" bash -c "! ls '${AGENT[$i]}/ipam/$CLUSTER/ip' 2>/dev/null | grep -q ."
done
for i in 0 1; do
  kill -TERM "${DPID[$i]}"; wait "${DPID[$i]}" 2>/dev/null || true; DPID[$i]=
  kill -TERM "${SPID[$i]}"; wait "${SPID[$i]}" 2>/dev/null || true; SPID[$i]=
done
exec {WIN}>&-
wait "$WORLD_PID" || fail "plugnet-world exited with $?: $(tail -5 "$TMP/world.log")"; WORLD_PID=
left=""
for n in $(ip netns list | awk '{print $1}'); do
  # The world's namespaces are pnx<letter>-N; the CNI container's pnx-$X-cni.
  case "$NETNS_BEFORE" in *" $n "*) ;; *) case "$n" in pnx[a-z]-[0-9]* | "$CNI_NS") left="$left $n" ;; esac ;; esac
done
check "no namespace of this run left (world, CNI container)" test -z "$left"
none_running() { ! pgrep -f "pnx-docker-$X|pnx-$X-|$TMP" >/dev/null; }
check "no dockerd, containerd, shim or agent of this run left" none_running
echo "docker network create on host 1 without --subnet: $NOSUBNET"
if [ "$FAILS" -gt 0 ]; then
  echo "cluster-docker: $FAILS check(s) failed"
  for i in 0 1; do echo "--- shim $i"; tail -30 "$TMP/shim$i.log"; done
  exit 1
fi
echo "cluster-docker: all checks passed"
