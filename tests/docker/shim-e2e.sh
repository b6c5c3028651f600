#!/usr/bin/env bash
# Black-box test of plugnet-shim against the REAL dockerd: a dockerd of the test's own (own
# data-root, exec-root, pidfile, socket), a busybox image imported from busybox-static, the shim
# under a unique name, and checks as a user would see them. Never touches the default dockerd.
#
#   tests/docker/shim-e2e.sh [--mode existing|derived|routed|both]   (root; needs docker.io, busybox-static,
#                                                              containernetworking-plugins)
# Env: SHIM (binary, default target/debug/plugnet-shim), BRIDGE_PLUGIN (main plugin of derived
# conflists: plugnet, or the reference bridge until plugnet's lands), PLUGNET_BIN (dir with plugnet,
# plugnet-ipam; default target/debug), KEEP=1 keeps the temp dir and logs.
# Objects: names pns*-$$, subnets 10.60.0.0/16 .. 10.69.0.0/16 (this test's reserved block).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=existing
[ "${1:-}" = "--mode" ] && MODE=$2

source "$(dirname "$0")/lib.sh"

run_suite() { # mode
  local mode=$1 A B
  if [ "$mode" = existing ]; then
    refconf "pnsa-$X" "pnsa$X" 10.60.1.0/24; refconf "pnsb-$X" "pnsb$X" 10.60.2.0/24
    A="pnsa-$X"; B="pnsb-$X"
  else
    A=10.60.3.0/24; B=10.60.4.0/24
  fi
  say "[$mode] docker network create"
  mknet "na-$X" "$mode" "$A"
  mknet "nb-$X" "$mode" "$B"
  local subnet_a
  subnet_a=$(d network inspect -f '{{(index .IPAM.Config 0).Subnet}}' "na-$X")
  check "[$mode] network shows the CNI pool ($subnet_a)" test -n "$subnet_a"
  local held_br=
  if [ "$mode" = derived ]; then
    check "[$mode] plugnet.export wrote the conflist" test -f "$CONF/pn-10.60.3.0_24.conflist"
    # On a host with Docker's DOCKER-USER chain the shim holds the network's bridge in the
    # host firewall from `network create` on, before any container (and until `network rm`).
    if iptables -S DOCKER-USER >/dev/null 2>&1; then
      held_br=pnb$(d network inspect -f '{{.Id}}' "na-$X" | cut -c1-12)
      check "[$mode] the new network's bridge is held in the host firewall ($held_br)" \
        sh -c "iptables -S PLUGNET-FORWARD | grep -q -- '-i $held_br -o $held_br '"
    fi
  fi

  say "[$mode] two containers"
  d run -d --name "c1-$X" --network "na-$X" "$IMG" sleep 600 >/dev/null
  d run -d --name "c2-$X" --network "na-$X" "$IMG" sleep 600 >/dev/null
  local ip1 ip2 gw
  ip1=$(ip_of "c1-$X" "na-$X"); ip2=$(ip_of "c2-$X" "na-$X")
  check "[$mode] inspect shows addresses ($ip1, $ip2)" test -n "$ip1" -a -n "$ip2" -a "$ip1" != "$ip2"
  check "[$mode] address is in the CNI pool" sh -c "echo $ip1 | grep -q '^${subnet_a%.*/*}'"
  check "[$mode] eth0 in the container carries it" sh -c "${DOCKER[*]} exec c1-$X ip -o addr show eth0 | grep -q ' $ip1/'"
  check "[$mode] c1 pings c2" pings "c1-$X" "$ip2"
  check "[$mode] c2 pings c1" pings "c2-$X" "$ip1"
  gw=$(d network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "na-$X")
  [ -n "$gw" ] || gw=${subnet_a%.*/*}.1   # --subnet without --gateway: the first address
  check "[$mode] default route via the network gateway ($gw)" sh -c "${DOCKER[*]} exec c1-$X ip route | grep -q 'default via $gw '"
  check "[$mode] c1 pings the gateway" pings "c1-$X" "$gw"

  if [ "$mode" = derived ] && command -v podman >/dev/null; then
    say "[$mode] a podman (CNI backend) container on the exported network"
    local cni="pn-10.60.3.0_24" pip
    printf '[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["%s", "/usr/lib/cni"]\nnetwork_config_dir = "%s"\n' \
      "$PLUGNET_BIN" "$CONF" >"$TMP/containers.conf"
    POD=(env CONTAINERS_CONF="$TMP/containers.conf" podman --root "$TMP/podroot" --runroot "$TMP/podrun" --storage-driver vfs
         --network-backend cni)
    tar -C "$TMP/root" -c . | "${POD[@]}" import - "localhost/pnsbb:$X" >/dev/null
    if "${POD[@]}" run -d --name "p1-$X" --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
         --network "$cni" "localhost/pnsbb:$X" sleep 600 >/dev/null; then
      pip=$("${POD[@]}" inspect -f "{{(index .NetworkSettings.Networks \"$cni\").IPAddress}}" "p1-$X")
      check "[$mode] podman got an address Docker does not hold ($pip)" test -n "$pip" -a "$pip" != "$ip1" -a "$pip" != "$ip2"
      check "[$mode] docker c1 pings the podman container" pings "c1-$X" "$pip"
      check "[$mode] the podman container pings docker c1" "${POD[@]}" exec "p1-$X" ping -c1 -W2 "$ip1"
      "${POD[@]}" rm -f "p1-$X" >/dev/null
      check "[$mode] podman rm released its lease" sh -c "! find $IPAMDIR -path '*/ip/$pip*' | grep -q ."
    else
      fail "[$mode] podman run on the exported network"
    fi
    "${POD[@]}" rmi -f "localhost/pnsbb:$X" >/dev/null 2>&1 || true
  fi

  # -p: mode 2 through the chained reference portmap, mode 1 through plugnet's own nftables.
  if [ "$mode" = existing ] || [ "${BRIDGE_PLUGIN:-plugnet}" = plugnet ]; then
    say "[$mode] -p 18080:80"
    d run -d --name "w-$X" --network "na-$X" -p 18080:80 "$IMG" \
      sh -c 'while true; do nc -l -p 80 -e echo hello; done' >/dev/null
    # The container's server is `nc -l` in a loop: between two connections it is briefly not
    # listening (the DNATed connection is then refused), so a check may try three times.
    answers() { local _; for _ in 1 2 3; do busybox nc -w 2 "$1" 18080 </dev/null 2>/dev/null | grep -q hello && return 0; sleep 0.3; done; return 1; }
    local hip
    hip=$(ip -4 route get 192.0.2.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
    sleep 0.5
    check "[$mode] published port answers on the host address ($hip)" answers "$hip"
    check "[$mode] published port answers on the gateway ($gw)" answers "$gw"
    if [ "$mode" = derived ]; then
      say "[$mode] plugnet's table deleted behind its back; the shim re-applies it on its own"
      nft delete table inet plugnet
      # The shim watches the ruleset (a repair once it has settled), not only every 30 s.
      local back=
      for i in $(seq 50); do nft list table inet plugnet >/dev/null 2>&1 && back=$i && break; sleep 0.1; done
      check "[$mode] the shim re-applied plugnet's table within 5 s (${back:+$((back * 100)) ms})" test -n "$back"
      check "[$mode] after the shim's repair the published port answers again" answers "$hip"
    fi
    d rm -f "w-$X" >/dev/null
    check "[$mode] no DNAT rule left for it" sh -c "! iptables -t nat -S | grep -q 'dport 18080' && ! nft list ruleset | grep -q 18080"
  fi

  say "[$mode] connect / disconnect on a running container"
  d run -d --name "c3-$X" --network "nb-$X" "$IMG" sleep 600 >/dev/null
  local ip3 ip1b
  ip3=$(ip_of "c3-$X" "nb-$X")
  d network connect "nb-$X" "c1-$X"
  ip1b=$(ip_of "c1-$X" "nb-$X")
  check "[$mode] connected: c1 has a second address ($ip1b)" test -n "$ip1b"
  check "[$mode] c1 reaches c3 over the second network" pings "c1-$X" "$ip3"
  check "[$mode] c1 still reaches c2 over the first" pings "c1-$X" "$ip2"
  d network disconnect "nb-$X" "c1-$X"
  check "[$mode] disconnected: eth1 gone" sh -c "! ${DOCKER[*]} exec c1-$X ip link show eth1 >/dev/null 2>&1"
  check "[$mode] disconnected: no address of the second network left in c1" \
    sh -c "! ${DOCKER[*]} exec c1-$X ip -o addr | grep -q ' ${ip1b%.*}\.'"
  d network connect "nb-$X" "c1-$X"
  check "[$mode] reconnected: c1 reaches c3 again" pings "c1-$X" "$(ip_of "c3-$X" "nb-$X")" 
  d network disconnect "nb-$X" "c1-$X"

  say "[$mode] 20 docker run at once"
  local pids=() i
  for i in $(seq 20); do d run -d --name "m$i-$X" --network "na-$X" "$IMG" sleep 600 >/dev/null & pids+=($!); done
  local okruns=0
  for p in "${pids[@]}"; do wait "$p" && okruns=$((okruns + 1)); done
  check "[$mode] 20/20 concurrent runs succeeded ($okruns)" test "$okruns" = 20
  local addrs
  addrs=$(for i in $(seq 20); do ip_of "m$i-$X" "na-$X"; done | sort -u | grep -c .)
  check "[$mode] 20 distinct addresses ($addrs)" test "$addrs" = 20
  local unreach=0
  for i in $(seq 20); do pings "c1-$X" "$(ip_of "m$i-$X" "na-$X")" || unreach=$((unreach + 1)); done
  check "[$mode] all 20 reachable from c1 (unreachable: $unreach)" test "$unreach" = 0

  say "[$mode] shim restart while containers run"
  stop_shim; start_shim
  check "[$mode] after shim restart c1 pings c2" pings "c1-$X" "$ip2"
  d rm -f "c2-$X" >/dev/null
  d run -d --name "c4-$X" --network "na-$X" "$IMG" sleep 600 >/dev/null
  local ip4
  ip4=$(ip_of "c4-$X" "na-$X")
  check "[$mode] after restart a new container works ($ip4)" pings "c1-$X" "$ip4"

  say "[$mode] dockerd killed and restarted (no live-restore)"
  d rm -f $(d ps -aq --filter name="m[0-9]*-$X") >/dev/null
  d run -d --restart always --name "r1-$X" --network "na-$X" "$IMG" sleep 600 >/dev/null
  d run -d --restart always --name "r2-$X" --network "na-$X" "$IMG" sleep 600 >/dev/null
  local cpid
  cpid=$(cat "$EROOT/containerd/containerd.pid" 2>/dev/null || true)
  kill -KILL "$DOCKERD_PID"; wait "$DOCKERD_PID" 2>/dev/null || true
  # dockerd's containerd follows it down; a new dockerd must not find it half-alive.
  for _ in $(seq 100); do [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
  start_dockerd
  local r1 r2 n
  for _ in $(seq 100); do
    r1=$(ip_of "r1-$X" "na-$X" 2>/dev/null || true); r2=$(ip_of "r2-$X" "na-$X" 2>/dev/null || true)
    [ -n "$r1" ] && [ -n "$r2" ] && break; sleep 0.2
  done
  check "[$mode] restart-policy containers came back with addresses ($r1, $r2)" test -n "$r1" -a -n "$r2"
  check "[$mode] and reach each other" pings "r1-$X" "$r2"
  # Endpoints of the containers that died with dockerd are gone: the shim holds exactly the
  # running ones (dockerd's force-cleanup, or the shim's own reaper within 30 s).
  local want
  for _ in $(seq 40); do
    want=$(d ps -q --filter network="na-$X" | grep -c . || true)
    n=$(find "$STATE/endpoints" -type f | grep -c . || true)
    [ "$n" = "$want" ] && break; sleep 1
  done
  check "[$mode] shim endpoints = running containers ($n = $want)" test "$n" = "$want"
  # Derived plugnet networks hand the interface over in the host (no staging namespace);
  # conflists of other plugins keep one staging namespace per running container.
  local staged=$want
  [ "$mode" = derived ] && [ "${BRIDGE_PLUGIN:-plugnet}" = plugnet ] && staged=0
  check "[$mode] staging namespaces = $staged" test "$(ls "/run/plugnet-shim/$NAME/ns" 2>/dev/null | grep -c . || true)" = "$staged"

  if [ "$mode" = derived ]; then
    say "[$mode] dual-stack network"
    d network create -d "$NAME" --ipam-driver "$NAME" --ipv6 --subnet 10.60.5.0/24 --subnet fd60:5::/64 "n6-$X" >/dev/null
    d run -d --name "s1-$X" --network "n6-$X" "$IMG" sleep 600 >/dev/null
    d run -d --name "s2-$X" --network "n6-$X" "$IMG" sleep 600 >/dev/null
    local s2v6
    s2v6=$(d inspect -f "{{(index .NetworkSettings.Networks \"n6-$X\").GlobalIPv6Address}}" "s2-$X")
    check "[$mode] IPv6 address from the pool ($s2v6)" sh -c "echo $s2v6 | grep -q '^fd60:5::'"
    check "[$mode] ping6 between containers" pings "s1-$X" "$s2v6"
    check "[$mode] IPv6 default route via the gateway" sh -c "${DOCKER[*]} exec s1-$X ip -6 route | grep -q 'default via fd60:5::1 '"
    d rm -f "s1-$X" "s2-$X" >/dev/null
    d network rm "n6-$X" >/dev/null
  fi

  say "[$mode] teardown"
  d rm -f $(d ps -aq) >/dev/null
  d network rm "na-$X" "nb-$X" >/dev/null
  sleep 0.5   # the shim deletes veths and staging namespaces just after replying
  check "[$mode] no shim state left" sh -c "! find $STATE/networks $STATE/pools $STATE/endpoints -type f | grep -q ."
  check "[$mode] no cached CNI result left" sh -c "[ -z \"\$(ls -A $STATE/cache/results 2>/dev/null)\" ]"
  check "[$mode] no staging netns left" sh -c "[ -z \"\$(ls -A /run/plugnet-shim/$NAME/ns)\" ]"
  check "[$mode] no pnj* interface left" sh -c "! ip -o link show | grep -q ': pnj'"
  # plugnet-ipam keeps leases under ip/ and owner/, host-local as files named by address.
  check "[$mode] no lease left" sh -c "! find $IPAMDIR -mindepth 2 \( -path '*/ip/*' -o -path '*/owner/*' -o -name '10.6*' \) | grep -q ."
  check "[$mode] no exported conflist left" sh -c "! ls $CONF/pn-* >/dev/null 2>&1"
  if [ -n "$held_br" ]; then
    check "[$mode] network rm released the bridge's host firewall rules" \
      sh -c "! iptables -S 2>/dev/null | grep -q -- '-i $held_br '"
  fi
  for br in "pnsa$X" "pnsb$X"; do ip link del "$br" 2>/dev/null || true; done
}

case $MODE in
  existing|derived) run_suite "$MODE" ;;
  both) run_suite existing; run_suite derived ;;
esac
# plugnet's routed mode through the shim: its own script (own dockerd, own shim name).
if [ "$MODE" = both ] || [ "$MODE" = routed ]; then
  say "routed mode (tests/docker/shim-routed.sh)"
  "$(dirname "$0")/shim-routed.sh" || fail "shim-routed.sh"
fi

say "handler latency (ms) per method: median / max / count"
latency_table
printf '   shim RSS now: %s kB\n' "$(awk '/VmRSS/{print $2}' /proc/$SHIM_PID/status)"
printf '   failed calls logged: %s\n' "$(grep -c 'call failed' "$LOG" || true)"

if [ "$FAILS" -gt 0 ]; then
  echo "shim-e2e: $FAILS check(s) failed (log: $LOG)"; KEEP=1; exit 1
fi
echo "shim-e2e: all checks passed"
