#!/usr/bin/env bash
# The runner's cost: `plugnet up`/`down` of three plugnet networks into one container, against
# the same three plugin ADDs/DELs started one by one. Median of N rounds (default 20), in µs.
# Runs in private network namespaces (pn-bench-*); needs root.
#   scripts/bench-runner.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/packages.sh
ensure_packages iproute2 containernetworking-plugins
ROUNDS=${1:-20}
cargo build --release -q -p plugnet
B=$PWD/target/release
WORK=$(mktemp -d /tmp/plugnet-bench-runner.XXXXXX)
H=pn-bench-h-$$ C=pn-bench-c-$$
cleanup() { ip netns del "$C" 2>/dev/null || true; ip netns del "$H" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ip netns add "$H"; ip netns add "$C"
export PLUGNET_STATE_DIR=$WORK/state NETCONFPATH=$WORK/net.d CNI_PATH=$B:/usr/lib/cni
conf() { # conf N -> the plugin config of network N
  local ipam=plugnet-ipam; [ "$1" = 2 ] && ipam=host-local
  echo "{\"cniVersion\":\"1.0.0\",\"name\":\"b$1\",\"type\":\"plugnet\",\"bridge\":\"pnb$1\",\"isGateway\":true,\"ipam\":{\"type\":\"$ipam\",\"dataDir\":\"$WORK/ipam\",\"ranges\":[[{\"subnet\":\"10.85.$1.0/24\"}]]}}"
}
SPEC="{\"networks\": [$(for n in 1 2 3; do printf '%s{"name":"b%s","type":"plugnet","config":%s}' "$([ $n = 1 ] || echo ,)" $n "$(conf $n)"; done)]}"
now() { date +%s%N; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ups=(); downs=(); adds=(); dels=()
for _ in $(seq "$ROUNDS"); do
  t0=$(now); ip netns exec "$H" "$B/plugnet" up --id c1 --netns "/run/netns/$C" <<<"$SPEC" >/dev/null
  t1=$(now); ip netns exec "$H" "$B/plugnet" down --id c1
  t2=$(now); ups+=($(( (t1 - t0) / 1000 ))); downs+=($(( (t2 - t1) / 1000 )))
  t0=$(now)
  for n in 1 2 3; do
    conf $n | CNI_COMMAND=ADD CNI_CONTAINERID=c1 CNI_NETNS=/run/netns/$C CNI_IFNAME=eth$((n - 1)) \
      ip netns exec "$H" "$B/plugnet" >/dev/null
  done
  t1=$(now)
  for n in 3 2 1; do
    conf $n | CNI_COMMAND=DEL CNI_CONTAINERID=c1 CNI_NETNS=/run/netns/$C CNI_IFNAME=eth$((n - 1)) \
      ip netns exec "$H" "$B/plugnet" >/dev/null
  done
  t2=$(now); adds+=($(( (t1 - t0) / 1000 ))); dels+=($(( (t2 - t1) / 1000 )))
done
echo "plugnet up   (3 networks): median $(med "${ups[@]}") µs   three ADDs by hand: $(med "${adds[@]}") µs"
echo "plugnet down (3 networks): median $(med "${downs[@]}") µs   three DELs by hand: $(med "${dels[@]}") µs"
