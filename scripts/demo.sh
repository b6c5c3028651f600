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
