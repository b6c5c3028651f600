#!/usr/bin/env bash
# plugnet's runner, Garden-style: a container gets an ordered list of named networks, then
# info and metrics are asked for by network name; hot plug, unplug, and a failing spec that
# leaves nothing behind. Runs inside a private "host" netns so the machine is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/packages.sh
ensure_packages iproute2 iputils-ping python3 containernetworking-plugins
cargo build --release -q -p plugnet
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/plugnet-runner-demo.XXXXXX)
HOST=pn-demo-host-$$
cleanup() {
  for c in web1 web2; do pn down --id "$c" >/dev/null 2>&1 || true; done
  for ns in "$HOST" pn-demo-web1-$$ pn-demo-web2-$$; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
export PLUGNET_STATE_DIR=$WORK/state NETCONFPATH=$WORK/net.d CNI_PATH=$BIN:/usr/lib/cni:/opt/cni/bin
pn() { ip netns exec "$HOST" "$BIN/plugnet" "$@"; }
ip netns add "$HOST"
ip netns exec "$HOST" ip link set lo up

mkdir -p "$NETCONFPATH"
cat > "$NETCONFPATH/20-overlay.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "overlay-net",
 "plugins": [{"type": "bridge", "bridge": "pn-o", "isGateway": true,
              "ipam": {"type": "host-local", "dataDir": "$WORK/host-local",
                       "ranges": [[{"subnet": "10.33.0.0/24"}]]}}]}
JSON
SPEC=$(cat <<JSON
{"networks": [
  {"name": "underlay", "type": "plugnet",
   "config": {"bridge": "pn-u", "isGateway": true,
              "ipam": {"type": "plugnet-ipam", "dataDir": "$WORK/ipam",
                       "ranges": [[{"subnet": "10.31.0.0/24"}]]}},
   "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}},
  {"name": "overlay", "conflist": "overlay-net"},
  {"name": "private", "type": "bridge", "ifname": "priv0",
   "config": {"bridge": "pn-p", "isGateway": true,
              "ipam": {"type": "plugnet-ipam", "dataDir": "$WORK/ipam",
                       "ranges": [[{"subnet": "10.32.0.0/24"}]]}}}
]}
JSON
)
for c in web1 web2; do ip netns add "pn-demo-$c-$$"; done

echo "== plugnet up: three named networks, attached in order, for two containers"
pn up --id web1 --netns "/run/netns/pn-demo-web1-$$" <<<"$SPEC" >"$WORK/web1.json"
head -20 "$WORK/web1.json"; echo "   …"
pn up --id web2 --netns "/run/netns/pn-demo-web2-$$" <<<"$SPEC" >/dev/null
echo "== plugnet list --table"
pn list --table
echo "== plugnet info --id web1 (by network name)"
pn info --id web1
WEB2_PRIV=$(pn info --id web2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["private"]["ips"][0].split("/")[0])')
echo "== web1 pings web2 on the private network ($WEB2_PRIV)"
ip netns exec "pn-demo-web1-$$" ping -c 3 -i 0.2 "$WEB2_PRIV" | tail -2
echo "== plugnet metrics --id web1"
pn metrics --id web1
echo "== plugnet check --id web1"
pn check --id web1
echo "== hot plug a fourth network into web1, then unplug it"
pn up --id web1 --netns "/run/netns/pn-demo-web1-$$" <<JSON | python3 -c 'import json,sys; r=json.load(sys.stdin)["storage"]; print("storage:", r["ips"][0]["address"])'
{"networks": [{"name": "storage", "type": "bridge", "config": {"bridge": "pn-s", "isGateway": true,
  "ipam": {"type": "plugnet-ipam", "dataDir": "$WORK/ipam", "ranges": [[{"subnet": "10.34.0.0/24"}]]}}}]}
JSON
ip netns exec "pn-demo-web1-$$" ip -br addr show
pn down --id web1 --network storage
ip netns exec "pn-demo-web1-$$" ip -br addr show
echo "== a spec whose third entry fails: the first two are rolled back"
BAD=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); s["networks"][2]["config"]["ipam"]["ranges"]=[[{"subnet":"10.32.0.0/24","rangeStart":"10.99.0.1"}]]; print(json.dumps(s))' "$SPEC")
ip netns add "pn-demo-bad-$$"
pn up --id bad --netns "/run/netns/pn-demo-bad-$$" <<<"$BAD" || echo "(exit $?)"
echo "interfaces left in the container: $(ip netns exec "pn-demo-bad-$$" ip -br link | grep -vc '^lo ' || true)"
ip netns del "pn-demo-bad-$$"
echo "== plugnet down: reverse order, idempotent, works after the netns is gone"
ip netns del "pn-demo-web2-$$"
pn down --id web2 && pn down --id web2 && pn down --id web1
pn list
echo "leases left: $(find "$WORK/ipam" "$WORK/host-local" -type f -name '10.*' | wc -l)"
