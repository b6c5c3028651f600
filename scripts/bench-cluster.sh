#!/usr/bin/env bash
# The cluster networks' figures (issue 18), paired within one run: ADD on a cluster network vs
# the same ADD on a local network, etcd writes per 1,000 containers, block claims per host,
# plugnet-agent's idle RSS. A three-member etcd (etcd-server) and three hosts in namespaces of
# the run's own (pnk*), removed at the end. Then the data plane's (issue 22), host-gw and
# VXLAN: route convergence, iperf3 cross-host vs same-host, ping RTT (namespaces pndb*).
#   scripts/bench-cluster.sh [OUT_DIR] [--quick]      (bench.sh runs it; OUT_DIR default bench-out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out}
QUICK=${2:-}
[ "$(id -u)" = 0 ] || { echo "bench-cluster.sh needs root" >&2; exit 1; }
. scripts/lib/packages.sh
ensure_packages etcd-server etcd-client protobuf-compiler libprotobuf-dev iperf3
mkdir -p "$OUT"
cargo build --release -q -p plugnet-agent -p plugnet-tests --bins
P=$(scripts/build-plugins.sh)
BIN=$(realpath -m "$OUT")/bin-cluster
rm -rf "$BIN" && mkdir -p "$BIN"
install -m 0755 "$P/plugnet" "$P/plugnet-ipam" target/release/plugnet-agent "$BIN/"
# The harness removes its namespaces and processes on the way out, but a panic may end it
# before its guards run: run it in a process group of its own and end that group, and the
# namespaces it named, whatever happens.
setsid env PLUGNET_BIN_DIR="$BIN" target/release/plugnet-bench-cluster ${QUICK:+--quick} \
  --json "$OUT/cluster.json" >"$OUT/cluster.txt" &
pid=$!
cleanup() {
  kill -KILL -- "-$pid" 2>/dev/null || true
  for n in $(ip netns list | awk '/^pn(k|db)[a-z]*-/ {print $1}'); do ip netns del "$n" 2>/dev/null || true; done
  rm -rf /tmp/pnk-etcd-* /tmp/pnk-h[0-9]-* /tmp/pndb[gv]-etcd-* /tmp/pndb[gv]-h[0-9]-* # the harness's temporary dirs
}
trap cleanup EXIT
rc=0
wait "$pid" || rc=$?
cat "$OUT/cluster.txt"
[ "$rc" = 0 ] || exit "$rc"
# The data plane (issue 22): host-gw, then VXLAN, each in a world of its own.
setsid env PLUGNET_BIN_DIR="$BIN" target/release/plugnet-bench-dataplane ${QUICK:+--quick} \
  --json "$OUT/dataplane.json" >"$OUT/dataplane.txt" &
pid=$!
wait "$pid" || rc=$?
cat "$OUT/dataplane.txt"
exit "$rc"
