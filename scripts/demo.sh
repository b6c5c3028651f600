#!/usr/bin/env bash
# plugnet demo on the embedded default: a file store, no servers.
# Builds the plugins as they ship (static, scripts/build-plugins.sh), then allocates and
# releases addresses for a few containers with plugnet-ipam exactly as a CNI runtime would call
# it, shows the store on disk, and attaches two network namespaces to a plugnet bridge (ping,
# a port mapping, masquerading in plugnet's own nftables table, nothing left after DEL).
# Installs the Debian packages it uses (scripts/lib/packages.sh); CI runs it (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root (network namespaces, bridges, nftables)" >&2; exit 1; }
. scripts/lib/packages.sh
# What the demo runs: the build's static libc, ip and ss, ping, nft, curl, jq for the JSON edits,
# python3 for the one-shot server behind the port mapping.
ensure_packages libc6-dev iproute2 iputils-ping nftables curl jq python3
BIN=$(scripts/build-plugins.sh)
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
GC_CONF=$(jq -c '. + {"cni.dev/valid-attachments": [{"containerID":"web","ifname":"eth0"},{"containerID":"api","ifname":"eth0"}]}' <<<"$CONF")
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
HOSTNS=plugnet-demo-host-$$ A=plugnet-demo-a-$$ B=plugnet-demo-b-$$
BRDATA=""
SERVER=""
cleanup_bridge() {
  [ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null || true
  for n in $HOSTNS $A $B; do ip netns del $n 2>/dev/null || true; done
  [ -z "$BRDATA" ] || rm -rf "$BRDATA"
}
trap 'rm -rf "$DATA"; cleanup_bridge' EXIT
cleanup_bridge
BRDATA=$(mktemp -d /tmp/plugnet-demo-br.XXXXXX)
for n in $HOSTNS $A $B; do ip netns add $n; done
ip -n $HOSTNS link set lo up
NET=$(cat <<JSON
{"cniVersion": "1.0.0", "name": "demo-bridge", "type": "plugnet", "bridge": "plugnet-demo0",
 "isDefaultGateway": true, "ipMasq": true, "firewallStateDir": "$BRDATA/firewall",
 "ipam": {"type": "plugnet-ipam", "dataDir": "$BRDATA",
          "ranges": [[{"subnet": "10.43.0.0/24"}], [{"subnet": "fd43::/64"}]]}}
JSON
)
plug() { # plug COMMAND CONTAINER [RUNTIME-CONFIG]
  local rc=${3:-}
  [ -n "$rc" ] || rc='{}'
  ip netns exec $HOSTNS env CNI_COMMAND=$1 CNI_CONTAINERID=demo-$2 \
    CNI_NETNS=/run/netns/plugnet-demo-$2-$$ CNI_IFNAME=eth0 CNI_PATH=$BIN "$BIN/plugnet" \
    <<<"$(jq -c --argjson rc "$rc" '. + {runtimeConfig: $rc}' <<<"$NET")"
}
# a publishes its port 80 on the host's port 8080 (what `-p 8080:80` asks a runtime for).
printf 'ADD a: '; plug ADD a '{"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}'
printf 'ADD b: '; plug ADD b
echo "== container a: addresses and routes"
ip -n $A -brief addr show dev eth0
ip -n $A route; ip -n $A -6 route show default
echo "== a pings b (IPv4, then IPv6 right away: no DAD wait)"
ip netns exec $A ping -c1 -W1 10.43.0.3 | tail -2
ip netns exec $A ping -c1 -W1 fd43::3 | tail -2
echo "== the host side: bridge and its ports"
ip -n $HOSTNS -brief link show master plugnet-demo0
echo "== port mapping: the host's port 8080 answers from a's port 80"
ip netns exec $A python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(1)
c, peer = s.accept(); c.recv(4096)
c.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from container a, you are %s\n" % peer[0].encode()); c.close()' &
SERVER=$!
for _ in $(seq 50); do ip netns exec $A ss -Hltn 'sport = :80' | grep -q . && break; sleep 0.1; done
ip netns exec $HOSTNS curl -sS --max-time 5 http://10.43.0.1:8080/
wait "$SERVER"; SERVER=""
echo "== plugnet's own nftables table (ipMasq, the port mapping; nothing else is touched)"
ip netns exec $HOSTNS nft list map inet plugnet pm4_any    # port mappings: a data map
ip netns exec $HOSTNS nft list set inet plugnet masq4      # containers that masquerade
echo "== DEL both; nothing is left (no veth, no lease, no nftables table)"
for c in a b; do plug DEL $c; done
ports=$(ip -n $HOSTNS -brief link show master plugnet-demo0 | wc -l)
leases=$(ls -A "$BRDATA/demo-bridge/ip" | wc -l)
tables=$(ip netns exec $HOSTNS nft list tables | grep -c plugnet || true)
echo "ports left: $ports, leases left: $leases, plugnet tables left: $tables"
[ "$ports$leases$tables" = 000 ] || { echo "demo.sh: something was left behind" >&2; exit 1; }
echo "demo: ok"
