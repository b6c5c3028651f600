#!/usr/bin/env bash
# The name resolver's figures (issue 20), paired in one run with Debian's aardvark-dns (the
# resolver netavark/podman ship) serving the same 1,000 records on the same bridge:
#   - query latency p50/p99 and queries/s for a local name and a forwarded name (same upstream:
#     a dnsmasq in a namespace of the run's own), rounds interleaved;
#   - resident memory with 1,000 records (after the load);
#   - ADD of the plugnet plugin with "resolver": true vs without (interleaved pairs).
# Everything lives in namespaces pnn-b*-$$ and 10.172.30.0/19; removed at the end.
#   scripts/bench-names.sh [OUT_DIR] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out}
QUICK=${2:-}
[ "$(id -u)" = 0 ] || { echo "bench-names.sh needs root" >&2; exit 1; }
. scripts/lib/packages.sh
ensure_packages aardvark-dns dnsmasq-base jq iproute2
AARDVARK=/usr/lib/podman/aardvark-dns
mkdir -p "$OUT"
cargo build --release -q -p plugnet -p plugnet-agent -p plugnet-tests --bin plugnet --bin plugnet-ipam \
  --bin plugnet-agent --bin plugnet-bench-dns
R=target/release
X=$$
H=pnn-bh-$X C=pnn-bc-$X U=pnn-bu-$X A=pnn-ba-$X
TMP=$(mktemp -d /tmp/pnn-bench-XXXXXX)
AGENT_PID= DNSMASQ_PID=
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" && wait "$AGENT_PID" 2>/dev/null
  [ -f "$TMP/aard/aardvark.pid" ] && kill "$(cat "$TMP/aard/aardvark.pid")"
  [ -n "$DNSMASQ_PID" ] && kill "$DNSMASQ_PID" && wait "$DNSMASQ_PID" 2>/dev/null
  for n in $H $C $U $A; do ip netns del "$n" 2>/dev/null; done
  rm -rf "/etc/netns/$H" "$TMP"
}
trap cleanup EXIT

for n in $H $C $U $A; do ip netns add "$n"; ip -n "$n" link set lo up; done
# The bridge in the "host": 10.172.30.1 for plugnet-agent, 10.172.31.1 for aardvark-dns.
ip -n "$H" link add pnnbrb type bridge
ip -n "$H" addr add 10.172.30.1/24 dev pnnbrb
ip -n "$H" addr add 10.172.31.1/24 dev pnnbrb
ip -n "$H" link set pnnbrb up
ip -n "$H" link add pnnbh type veth peer name eth0 netns "$C"
ip -n "$H" link set pnnbh master pnnbrb up
ip -n "$C" addr add 10.172.30.2/24 dev eth0
ip -n "$C" addr add 10.172.31.2/24 dev eth0
ip -n "$C" link set eth0 up
# The upstream both forward to: dnsmasq in its own namespace, named by the host's resolv.conf
# (ip netns exec binds /etc/netns/$H/resolv.conf over /etc/resolv.conf for both resolvers).
ip -n "$H" link add pnnbu type veth peer name pnnbu netns "$U"
ip -n "$H" addr add 10.172.32.1/30 dev pnnbu && ip -n "$H" link set pnnbu up
ip -n "$U" addr add 10.172.32.2/30 dev pnnbu && ip -n "$U" link set pnnbu up
mkdir -p "/etc/netns/$H"
echo "nameserver 10.172.32.2" >"/etc/netns/$H/resolv.conf"
printf 'no-resolv\nno-hosts\nbind-interfaces\nlisten-address=10.172.32.2\naddress=/outside.pnn.test/10.172.200.7\nuser=root\ncache-size=1000\n' >"$TMP/dnsmasq.conf"
ip netns exec "$U" dnsmasq --keep-in-foreground --conf-file="$TMP/dnsmasq.conf" --pid-file="$TMP/dnsmasq.pid" &
DNSMASQ_PID=$!

# The same 1,000 records for both (c0000..c0999 on 10.172.34.0/22), plus the client.
say() { printf '== %s\n' "$*"; }
say "1,000 records in plugnet's format (docs/formats.md) and in aardvark-dns's"
BOOT=$(tr -d '-' </proc/sys/kernel/random/boot_id)
NAMES=$TMP/agent/names/pnnbench
mkdir -p "$NAMES" "$TMP/aard"
rec() { # id ip nameserver
  printf '{"format":"plugnet-names 1","bootId":"%s","network":"pnnbench","containerId":"%s","ifname":"eth0","domain":"dns.plugnet","names":["%s"],"addresses":["%s"],"nameservers":["%s"]}\n' \
    "$BOOT" "$1" "$1" "$2" "$3" >"$NAMES/$1@eth0.json"
}
echo "10.172.31.1" >"$TMP/aard/pnnbench"
for i in $(seq 0 999); do
  id=$(printf 'c%04d' "$i") ip="10.172.$((34 + i / 256)).$((i % 256))"
  rec "$id" "$ip" 10.172.30.1
  echo "$id $ip  $id" >>"$TMP/aard/pnnbench"
done
rec client 10.172.30.2 10.172.30.1
echo "client 10.172.31.2  client" >>"$TMP/aard/pnnbench"

ip netns exec "$H" "$R/plugnet-agent" --state-dir "$TMP/agent" --metrics-listen off --log-level warn \
  2>"$TMP/agent.log" &
AGENT_PID=$!
ip netns exec "$H" "$AARDVARK" --config "$TMP/aard" -p 53 run 2>>"$TMP/aardvark.log" || true
for _ in $(seq 100); do
  ip netns exec "$C" "$R/plugnet-bench-dns" --server 10.172.30.1:53 --name c0500 --seconds 0.05 --workers 1 |
    jq -e '.answers > 0' >/dev/null 2>&1 &&
  ip netns exec "$C" "$R/plugnet-bench-dns" --server 10.172.31.1:53 --name c0500 --seconds 0.05 --workers 1 |
    jq -e '.answers > 0' >/dev/null 2>&1 && break
  sleep 0.1
done
APID=$(cat "$TMP/aard/aardvark.pid")
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
anon() { awk '/^Anonymous/ {print $2}' "/proc/$1/smaps_rollup"; }   # heap and stacks, no code pages

SECONDS_PER=${QUICK:+1}; SECONDS_PER=${SECONDS_PER:-3}
ROUNDS=${QUICK:+1}; ROUNDS=${ROUNDS:-3}
WORKERS=4
say "queries: $ROUNDS rounds x {local c0500, forwarded outside.pnn.test} x {plugnet, aardvark}, ${SECONDS_PER}s, $WORKERS clients"
: >"$TMP/q.jsonl"
for r in $(seq "$ROUNDS"); do
  for what in local forwarded; do
    name=c0500; [ "$what" = forwarded ] && name=outside.pnn.test
    for who in plugnet aardvark; do
      srv=10.172.30.1; [ "$who" = aardvark ] && srv=10.172.31.1
      ip netns exec "$C" "$R/plugnet-bench-dns" --server "$srv:53" --name "$name" \
        --seconds "$SECONDS_PER" --workers "$WORKERS" |
        jq -c --arg who "$who" --arg what "$what" --argjson r "$r" '. + {who: $who, what: $what, round: $r}' |
        tee -a "$TMP/q.jsonl"
    done
  done
done
RSS_P=$(rss "$AGENT_PID") RSS_A=$(rss "$APID") ANON_P=$(anon "$AGENT_PID") ANON_A=$(anon "$APID")

say "ADD with \"resolver\": true vs without (interleaved pairs, plugnet plugin, release build)"
PAIRS=${QUICK:+10}; PAIRS=${PAIRS:-100}
conf() { # resolver
  printf '{"cniVersion":"1.0.0","name":"pnnadd","type":"plugnet","bridge":"pnnbra","isGateway":true,"resolver":%s,"agentDir":"%s","firewallStateDir":"%s","ipam":{"type":"plugnet-ipam","dataDir":"%s","ranges":[[{"subnet":"10.172.40.0/24"}]]}}' \
    "$1" "$TMP/agent2" "$TMP/fw" "$TMP/ipam"
}
cni() { # command resolver id → elapsed µs of the plugin
  local t0 t1
  t0=$(date +%s%N)
  conf "$2" | ip netns exec "$H" env CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="/run/netns/$A" \
    CNI_IFNAME=eth1 CNI_PATH="$R" "$R/plugnet" >/dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000))
}
: >"$TMP/add.txt"
for i in $(seq "$PAIRS"); do
  order="true false"; [ $((i % 2)) = 0 ] && order="false true"   # no order bias
  for res in $order; do
    us=$(cni ADD "$res" "pnnadd$i$res")
    echo "$res $us" >>"$TMP/add.txt"
    cni DEL "$res" "pnnadd$i$res" >/dev/null
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ADD_T=$(awk '$1=="true" {print $2}' "$TMP/add.txt" | median)
ADD_F=$(awk '$1=="false" {print $2}' "$TMP/add.txt" | median)

# Medians over the rounds.
m() { jq -s --arg who "$1" --arg what "$2" --arg k "$3" \
  '[.[] | select(.who==$who and .what==$what) | .[$k]] | sort | .[(length-1)/2|floor]' "$TMP/q.jsonl"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
{
  echo "names bench ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)): plugnet-agent vs aardvark-dns $("$AARDVARK" --version 2>/dev/null | awk '{print $2}'), 1,000 records, $WORKERS clients, $ROUNDS x ${SECONDS_PER}s"
  printf '%-10s %-9s %9s %9s %9s\n' what resolver p50_us p99_us q/s
  for what in local forwarded; do
    for who in plugnet aardvark; do
      printf '%-10s %-9s %9s %9s %9s\n' "$what" "$who" "$(m $who $what p50_us)" "$(m $who $what p99_us)" "$(m $who $what qps)"
    done
    echo "  ratio plugnet/aardvark: p50 $(ratio "$(m plugnet $what p50_us)" "$(m aardvark $what p50_us)")x," \
         "p99 $(ratio "$(m plugnet $what p99_us)" "$(m aardvark $what p99_us)")x," \
         "q/s $(ratio "$(m plugnet $what qps)" "$(m aardvark $what qps)")x"
  done
  echo "RSS with 1,000 records, after the load: plugnet-agent ${RSS_P} kB, aardvark-dns ${RSS_A} kB (ratio $(ratio "$RSS_P" "$RSS_A")x)"
  echo "  of which anonymous (heap, stacks; no code pages): plugnet-agent ${ANON_P} kB, aardvark-dns ${ANON_A} kB (ratio $(ratio "$ANON_P" "$ANON_A")x)"
  echo "ADD median of $PAIRS interleaved pairs: resolver ${ADD_T} us, without ${ADD_F} us (ratio $(ratio "$ADD_T" "$ADD_F")x)"
} | tee "$OUT/names.txt"
jq -s '.' "$TMP/q.jsonl" >"$OUT/names.json"
