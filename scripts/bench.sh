#!/usr/bin/env bash
# The benchmark suite: plugnet against Debian's Go plugins, podman's netavark and Docker's
# builtin bridge, every comparison interleaved (paired) within this one run. Figures only, no
# timed assertions. Needs root; every object lives in throwaway namespaces (pnm-*, pns-*) or
# a dockerd of its own.
#   scripts/bench.sh [--quick] [--no-docker] [--publish] [--baseline DIR]
#     --quick      fewer iterations (< 3 minutes); same sections
#     --no-docker  skip the Docker section (it starts its own dockerd)
#     --publish    copy the table and charts to docs/bench/ (what the README and docs/performance.md show)
#     --baseline DIR  another build of the plugins (plugnet, plugnet-ipam in DIR, e.g. what
#                  scripts/build-plugins.sh made on another commit), run beside this one in the
#                  same latency rounds: an A/B of two builds
# Every peer it compares with is installed first (Debian packages); a peer that still cannot
# run is reported as not measured, with the reason.
# BENCH_STORE=/dev/shm puts the IPAM stores on tmpfs (default /var/tmp, ext4).
# Output: bench-out/bench.json (every sample), bench-out/bench.md (medians, p95, ratios,
# target lines), bench-out/*.png (charts).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK= DOCKER=1 PUBLISH= BASELINE=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --no-docker) DOCKER= ;;
    --publish) PUBLISH=1 ;;
    --baseline) BASELINE=$(realpath "${2:?--baseline wants a directory}"); shift ;;
    *) echo "usage: $0 [--quick] [--no-docker] [--publish] [--baseline DIR]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (network namespaces)" >&2; exit 1; }
OUT=bench-out
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
cleanup() {
  for n in $(ip netns list | awk '/^pnm-/ {print $1}'); do ip netns del "$n" 2>/dev/null || true; done
  rm -rf /var/tmp/pnm-bench-* /dev/shm/pnm-bench-* # stores of a harness that died mid-run
}
trap cleanup EXIT
cleanup
T0=$(date +%s)
PY=/usr/bin/python3 # Debian's, where python3-matplotlib lands (not a pyenv shim)
. scripts/lib/packages.sh
# The peers (the Go reference plugins, podman's netavark — not on a machine test.sh set up:
# podman only Recommends it — and Docker), the charts' matplotlib, the static build's libc,
# /usr/bin/time for peak RSS, busybox for the Docker section's image. A peer that still cannot
# run is reported as not measured, with the reason.
ensure_packages python3 python3-matplotlib containernetworking-plugins netavark libc6-dev time \
  iproute2 busybox-static ${DOCKER:+docker.io} ||
  echo "bench.sh: some packages could not be installed; the report names what was not measured" >&2
[ -x /usr/lib/cni/bridge ] || {
  echo "bench.sh: the Go reference plugins are missing (Debian package containernetworking-plugins): every comparison is paired with them" >&2
  exit 1
}
echo "== build (release)"
cargo build --release -q -p plugnet -p plugnet-shim -p plugnet-tests --bins
B=$PWD/target/release
# The CNI plugins as they ship: static (musl when its Rust target is installed, else glibc),
# and as installed: copied into a directory of their own, the way scripts/install.sh puts them
# in /opt/cni/bin. Run straight from target/, the same bytes took ~0.2 ms more per ADD here
# (3.65 vs 3.44 ms): the page cache still holds the file as the linker wrote it (likely in
# smaller folios), so exec faults it in in more pieces.
P=$(scripts/build-plugins.sh)
BIN=$PWD/$OUT/bin
rm -rf "$BIN" && mkdir -p "$BIN"
install -m 0755 "$P/plugnet" "$P/plugnet-ipam" "$BIN/"
export PLUGNET_BIN_DIR=$BIN

# The machine, for the table's header.
{
  printf '{"date":"%s","kernel":"%s","cpus":%s,"cpu":"%s","mem_kb":%s,"load_start":"%s","quick":%s,"commit":"%s","plugins":"%s"}\n' \
    "$(date -u +%FT%TZ)" "$(uname -r)" "$(nproc)" \
    "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
    "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$([ -n "$QUICK" ] && echo true || echo false)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "static $(basename "$(dirname "$P")" | sed 's/x86_64-unknown-linux-//;s/gnu/glibc/')"
} >"$OUT/machine.json"

lap() { echo "   ($(($(date +%s) - T0)) s)"; }
echo "== CNI: latency, dual-stack, RSS, netavark, concurrency, port mappings"
"$B/plugnet-bench" ${QUICK:+--quick} ${BASELINE:+--baseline "$BASELINE"} \
  --store "${BENCH_STORE:-/var/tmp}" --out "$OUT/cni.json"

lap; echo "== IPAM growth (plugnet-ipam vs host-local)"
"$B/plugnet-bench-ipam" --iterations "$([ -n "$QUICK" ] && echo 8 || echo 60)" \
  --json "$OUT/ipam.json" >"$OUT/ipam.txt"

if $PY -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["portmap"]["plugnet_supported"] else 1)' "$OUT/cni.json"; then
  :
else
  # This build's plugnet ignores runtimeConfig.portMappings: measure its firewall library
  # (the code the bridge calls) at the same N instead, and say so in the report.
  echo "== port mappings: plugnet's firewall library (this plugnet build takes no portMappings)"
  PNF_BENCH_N=$([ -n "$QUICK" ] && echo 100 || echo 500) PNF_BENCH_NO_PORTMAP=1 \
    cargo bench -q -p plugnet --bench firewall_scale 2>/dev/null >"$OUT/fwlib.txt" || echo "firewall_scale failed" >&2
fi

lap
if [ -n "$DOCKER" ] && command -v dockerd >/dev/null; then
  echo "== Docker: plugnet-shim vs builtin bridge (own dockerd)"
  SHIM=$B/plugnet-shim PLUGNET_BIN=$BIN BENCH_JSON=$PWD/$OUT/docker.json \
    tests/docker/shim-bench.sh "$([ -n "$QUICK" ] && echo 3 || echo 20)" >"$OUT/docker.txt" 2>&1 ||
    { echo "Docker section failed:"; tail -20 "$OUT/docker.txt"; }
fi

lap; echo "== cluster networks: cluster vs local ADD, etcd writes, claims, agent RSS (scripts/bench-cluster.sh)"
scripts/bench-cluster.sh "$OUT" ${QUICK:+--quick} >"$OUT/cluster.log" 2>&1 ||
  { echo "cluster section failed:"; tail -20 "$OUT/cluster.log"; }
grep '^|' "$OUT/cluster.txt" 2>/dev/null || true

lap; echo "== names: plugnet-agent vs aardvark-dns, same records (scripts/bench-names.sh)"
scripts/bench-names.sh "$OUT" ${QUICK:+--quick} >"$OUT/names.log" 2>&1 ||
  { echo "names section failed:"; tail -20 "$OUT/names.log"; }
cat "$OUT/names.txt" 2>/dev/null || true

echo "== report ($(($(date +%s) - T0)) s so far)"
$PY scripts/bench-report.py "$OUT"
if [ -n "$PUBLISH" ]; then
  mkdir -p docs/bench
  cp "$OUT"/bench.md "$OUT"/*.png docs/bench/
  echo "published to docs/bench/"
fi
echo "== done in $(($(date +%s) - T0)) s"
