#!/usr/bin/env bash
# plugnet demo on the embedded default: a file store, no servers.
# Builds the plugins, then allocates and releases addresses for a few containers with
# plugnet-ipam exactly as a CNI runtime would call it, and shows the store on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p plugnet
BIN=$PWD/target/release
DATA=$(mktemp -d /tmp/plugnet-demo.XXXXXX)
trap 'rm -rf "$DATA"' EXIT

CONF=$(cat <<JSON
{"cniVersion": "1.1.0", "name": "demo-net", "type": "plugnet-ipam",
 "ipam": {"type": "plugnet-ipam", "dataDir": "$DATA",
          "ranges": [[{"subnet": "10.42.0.0/24"}], [{"subnet": "fd42::/64"}]],
          "routes": [{"dst": "0.0.0.0/0"}]}}
JSON
)
cni() { # cni COMMAND CONTAINER-ID
  CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$2 CNI_IFNAME=eth0 \
    CNI_PATH=$BIN "$BIN/plugnet-ipam" <<<"$CONF"
}

echo "== ADD three containers (dual-stack: one IPv4 and one IPv6 address each)"
for c in web db cache; do
  printf '%s: ' "$c"; cni ADD "$c"
done
echo "== CHECK db"; cni CHECK db && echo ok
echo "== the store on disk ($DATA/demo-net)"
ls -l "$DATA/demo-net/ip" "$DATA/demo-net/owner" | sed "s|$DATA|\$DATA|"
echo "== DEL db, then ADD api: round-robin continues after the last address handed out"
cni DEL db
printf 'api: '; cni ADD api
echo "== GC keeping only web and api (cache's lease returns)"
GC_CONF=$(jq -c '. + {"cni.dev/valid-attachments": [{"containerID":"web","ifname":"eth0"},{"containerID":"api","ifname":"eth0"}]}' <<<"$CONF" 2>/dev/null \
  || python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["cni.dev/valid-attachments"]=[{"containerID":"web","ifname":"eth0"},{"containerID":"api","ifname":"eth0"}]; print(json.dumps(c))' "$CONF")
CNI_COMMAND=GC CNI_PATH=$BIN "$BIN/plugnet-ipam" <<<"$GC_CONF" && ls "$DATA/demo-net/owner"
echo "== DEL everything; the store is empty"
for c in web api; do cni DEL "$c"; done
ls -A "$DATA/demo-net/ip" | wc -l | xargs echo "claims left:"

# ---------------------------------------------------------------------------------------------
# The bridge plugin: two "containers" (network namespaces) on one plugnet network.
# Everything runs inside a throwaway "host" namespace so the machine's own firewall (e.g.
# Docker's FORWARD DROP with br_netfilter) neither blocks the demo nor gets touched by it.
echo
echo "== plugnet bridge plugin: two containers, one bridge, dual-stack"
if [ "$(id -u)" != 0 ]; then echo "(skipped: needs root)"; exit 0; fi
HOSTNS=plugnet-demo-host
BRDATA=""
cleanup_bridge() {
  for n in $HOSTNS plugnet-demo-a plugnet-demo-b; do ip netns del $n 2>/dev/null || true; done
  [ -z "$BRDATA" ] || rm -rf "$BRDATA"
}
trap 'rm -rf "$DATA"; cleanup_bridge' EXIT
cleanup_bridge
BRDATA=$(mktemp -d /tmp/plugnet-demo-br.XXXXXX)
for n in $HOSTNS plugnet-demo-a plugnet-demo-b; do ip netns add $n; done
ip -n $HOSTNS link set lo up
NET=$(cat <<JSON
{"cniVersion": "1.0.0", "name": "demo-bridge", "type": "plugnet", "bridge": "plugnet-demo0",
 "isDefaultGateway": true,
 "ipam": {"type": "plugnet-ipam", "dataDir": "$BRDATA",
          "ranges": [[{"subnet": "10.43.0.0/24"}], [{"subnet": "fd43::/64"}]]}}
JSON
)
plug() { # plug COMMAND CONTAINER
  ip netns exec $HOSTNS env CNI_COMMAND=$1 CNI_CONTAINERID=demo-$2 \
    CNI_NETNS=/run/netns/plugnet-demo-$2 CNI_IFNAME=eth0 CNI_PATH=$BIN "$BIN/plugnet" <<<"$NET"
}
for c in a b; do printf 'ADD %s: ' "$c"; plug ADD $c; done
echo "== container a: addresses and routes"
ip -n plugnet-demo-a -brief addr show dev eth0
ip -n plugnet-demo-a route; ip -n plugnet-demo-a -6 route show default
echo "== a pings b (IPv4, then IPv6 right away: no DAD wait)"
ip netns exec plugnet-demo-a ping -c1 -W1 10.43.0.3 | tail -2
ip netns exec plugnet-demo-a ping -c1 -W1 fd43::3 | tail -2
echo "== the host side: bridge and its ports"
ip -n $HOSTNS -brief link show master plugnet-demo0
echo "== DEL both; nothing is left (no veth, no lease)"
for c in a b; do plug DEL $c; done
echo "ports left: $(ip -n $HOSTNS -brief link show master plugnet-demo0 | wc -l)," \
     "leases left: $(ls -A "$BRDATA/demo-bridge/ip" | wc -l)"
