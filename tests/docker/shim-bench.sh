#!/usr/bin/env bash
# Benchmark: the network part of `docker run` and `network connect`+`disconnect` through
# plugnet-shim, side by side with Docker's builtin bridge driver in the same run, plus the
# shim's idle RSS and per-method handler latency. Figures only; no timed assertions.
#   tests/docker/shim-bench.sh [N]     (root; SHIM=target/release/plugnet-shim recommended)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-15}
source "$(dirname "$0")/lib.sh"

now_ms() { date +%s%N | awk '{printf "%.3f", $1/1e6}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_run() { # network -> ms of `docker run --rm` (true)
  local t0 t1; t0=$(now_ms); d run --rm --network "$1" "$IMG" true >/dev/null; t1=$(now_ms)
  calc "$t1 - $t0"
}
time_cd() { # network container -> ms of connect+disconnect
  local t0 t1; t0=$(now_ms); d network connect "$1" "$2"; d network disconnect "$1" "$2"; t1=$(now_ms)
  calc "$t1 - $t0"
}
calc() { awk "BEGIN {printf \"%.3f\\n\", $1}"; }

sleep 2
IDLE_RSS=$(awk '/VmRSS/{print $2}' /proc/$SHIM_PID/status)
printf 'shim idle RSS: %s kB\n' "$IDLE_RSS"
refconf "pnsr-$X" "pnsr$X" 10.61.1.0/24
d network create -d bridge --subnet 10.61.9.0/24 "builtin-$X" >/dev/null
d network create -d "$NAME" --ipam-driver "$NAME" --subnet 10.61.1.0/24 --ipam-opt "cni.network=pnsr-$X" -o "cni.network=pnsr-$X" "ref-$X" >/dev/null
d network create -d "$NAME" --ipam-driver "$NAME" --subnet 10.61.2.0/24 "der-$X" >/dev/null
d network create -d bridge --subnet 10.61.8.0/24 "home-$X" >/dev/null
d run -d --name "hold-$X" --network "home-$X" "$IMG" sleep 600 >/dev/null
for net in none "builtin-$X" "ref-$X" "der-$X"; do time_run "$net" >/dev/null; done   # warm-up
# Interleaved rounds (the VMs are shared: drift hits every network alike), medians per network.
declare -A RUN CD
for _ in $(seq "$N"); do
  for net in none "builtin-$X" "ref-$X" "der-$X"; do time_run "$net" >>"$TMP/run-$net"; done
  for net in "builtin-$X" "ref-$X" "der-$X"; do time_cd "$net" "hold-$X" >>"$TMP/cd-$net"; done
done
for net in none "builtin-$X" "ref-$X" "der-$X"; do RUN[$net]=$(median <"$TMP/run-$net"); done
for net in "builtin-$X" "ref-$X" "der-$X"; do CD[$net]=$(median <"$TMP/cd-$net"); done
base=${RUN[none]}
printf '%-28s %10s %12s %12s\n' network "run (ms)" "net part" "conn+disc"
for net in "builtin-$X" "ref-$X" "der-$X"; do
  printf '%-28s %10.1f %12.1f %12.1f\n' "$net" "${RUN[$net]}" "$(calc "${RUN[$net]} - $base")" "${CD[$net]}"
done
printf '%-28s %10.1f\n' "none (baseline)" "$base"
b=$(calc "${RUN[builtin-$X]} - $base")
for net in "ref-$X" "der-$X"; do
  printf 'ratio vs builtin (%s): run-net %.2f  connect+disconnect %.2f\n' "$net" \
    "$(calc "(${RUN[$net]} - $base) / $b")" "$(calc "${CD[$net]} / ${CD[builtin-$X]}")"
done
if [ -n "${BENCH_JSON:-}" ]; then # every sample, for scripts/bench.sh
  arr() { paste -sd, "$TMP/$1"; }
  printf '{"rounds":%s,"idle_rss_kb":%s,"run_ms":{"none":[%s],"builtin":[%s],"existing":[%s],"derived":[%s]},"connect_disconnect_ms":{"builtin":[%s],"existing":[%s],"derived":[%s]}}\n' \
    "$N" "$IDLE_RSS" "$(arr run-none)" "$(arr "run-builtin-$X")" "$(arr "run-ref-$X")" "$(arr "run-der-$X")" \
    "$(arr "cd-builtin-$X")" "$(arr "cd-ref-$X")" "$(arr "cd-der-$X")" >"$BENCH_JSON"
fi
d rm -f "hold-$X" >/dev/null
d network rm "builtin-$X" "ref-$X" "der-$X" "home-$X" >/dev/null
ip link del "pnsr$X" 2>/dev/null || true
say "handler latency (ms) per method: median / max / count"
latency_table
printf 'shim RSS after: %s kB\n' "$(awk '/VmRSS/{print $2}' /proc/$SHIM_PID/status)"
