#!/usr/bin/env bash
# Shim under fire: 50 containers started (and some removed) concurrently through plugnet-shim
# while the shim is SIGKILLed and restarted five times and dockerd is SIGKILLed and restarted
# once. Afterwards every surviving container reaches the others, and `docker rm` of everything
# plus `docker network rm` leaves no lease, host interface, staging namespace or endpoint state.
#   tests/docker/shim-fire.sh        (root; run by scripts/test.sh)
# Objects: names pns*-$$ (lib.sh), subnet 10.66.0.0/24.
set -euo pipefail
cd "$(dirname "$0")/../.."
source "$(dirname "$0")/lib.sh"

restart_shim() { # SIGKILL, not TERM: the shim dies mid-call
  kill -KILL "$SHIM_PID" 2>/dev/null || true
  wait "$SHIM_PID" 2>/dev/null || true
  SHIM_PID=
  start_shim
}

say "[fire] network"
d network create -d "$NAME" --ipam-driver "$NAME" --subnet 10.66.0.0/24 "nf-$X" >/dev/null
BRIDGE=pnb$(d network inspect -f '{{.Id}}' "nf-$X" | cut -c1-12)

say "[fire] 50 docker run at once; every 5th removed again right away; 5 shim kills, 1 dockerd kill"
pids=()
for i in $(seq 1 50); do
  (
    policy=no; [ $((i % 2)) = 0 ] && policy=always
    d run -d --name "f$i-$X" --restart "$policy" --network "nf-$X" "$IMG" sleep 3600 >/dev/null 2>>"$TMP/run-errors.log" || true
    [ $((i % 5)) = 0 ] && d rm -f "f$i-$X" >/dev/null 2>&1 || true
  ) &
  pids+=($!)
done
for k in 1 2 3 4 5; do
  sleep 1.5
  restart_shim
  echo "   shim killed and restarted ($k)"
  if [ "$k" = 3 ]; then
    cpid=$(cat "$EROOT/containerd/containerd.pid" 2>/dev/null || true)
    kill -KILL "$DOCKERD_PID"; wait "$DOCKERD_PID" 2>/dev/null || true
    # dockerd's containerd follows it down; a new dockerd must not find it half-alive.
    for _ in $(seq 100); do [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
    start_dockerd
    echo "   dockerd killed and restarted"
  fi
done
for p in "${pids[@]}"; do wait "$p" || true; done
# Containers with a restart policy come back after the dockerd restart: let them settle.
for _ in $(seq 60); do
  [ -z "$(d ps -q --filter status=restarting)" ] && break
  sleep 1
done
sleep 2
# A container dockerd is still restoring or restarting shows in `docker ps` before its
# endpoint is back: give the listing up to 30 s to settle (every running container addressed).
for _ in $(seq 30); do
  settled=1
  for c in $(d ps --filter "network=nf-$X" --format '{{.Names}}'); do
    [ -n "$(ip_of "$c" "nf-$X" 2>/dev/null)" ] || { settled=0; break; }
  done
  [ "$settled" = 1 ] && break
  sleep 1
done

d ps -a --filter "network=nf-$X" --format '{{.Names}} {{.Status}}' > "$TMP/states.log" || true
running=$(d ps --filter "network=nf-$X" --format '{{.Names}}' | sort)
n=$(printf '%s\n' "$running" | grep -c . || true)
say "[fire] $n containers survived"
# Calls in flight when the shim dies fail: dockerd retries a plugin call after a connection
# error with the body already consumed (an empty request), so those `docker run`s fail.
check "[fire] containers survived the churn ($n)" test "$n" -ge 3
ref=$(printf '%s\n' "$running" | head -1)
unreachable=0 addrs=()
for c in $running; do
  ip=$(ip_of "$c" "nf-$X")
  addrs+=("$ip")
  if [ -z "$ip" ] || ! pings "$ref" "$ip"; then
    unreachable=$((unreachable + 1)); echo "   $c ($ip) unreachable from $ref"
    # What a person would look at next: Docker's view and the container's own.
    d inspect -f '   {{.State.Status}} restarts={{.RestartCount}} started={{.State.StartedAt}} {{json .NetworkSettings.Networks}}' "$c" || true
    d exec "$c" ip -o addr 2>&1 | sed 's/^/   /' || true
  fi
done
check "[fire] every surviving container is reachable ($n, unreachable: $unreachable)" test "$unreachable" = 0
dups=$(printf '%s\n' "${addrs[@]}" | sort | uniq -d | grep -c . || true)
check "[fire] no address is held twice" test "$dups" = 0
check "[fire] the gateway answers" pings "$ref" 10.66.0.1

say "[fire] docker rm of everything, docker network rm"
d rm -f $(d ps -aq) >/dev/null 2>&1 || true
for _ in $(seq 20); do d network rm "nf-$X" >/dev/null 2>&1 && break; sleep 1; done
check "[fire] network removed" sh -c "! ${DOCKER[*]} network inspect nf-$X >/dev/null 2>&1"
# Endpoints Docker never mentions again (killed with dockerd) are collected by the shim's
# reconcile (at start-up and every 30 s): restart it once more rather than wait.
restart_shim
left() {
  find "$IPAMDIR" -path '*/ip/*' 2>/dev/null | grep -c . || true
}
for _ in $(seq 40); do [ "$(left)" = 0 ] && break; sleep 1; done
check "[fire] no lease left ($(left))" test "$(left)" = 0
check "[fire] no shim interface left on the host" sh -c "! ip -o link show | grep -q ': pnj'"
check "[fire] the network's bridge is gone ($BRIDGE)" sh -c "! ip link show $BRIDGE >/dev/null 2>&1"
check "[fire] no staging namespace left" sh -c "[ -z \"\$(ls -A /run/plugnet-shim/$NAME/ns 2>/dev/null)\" ]"
check "[fire] no endpoint state left" sh -c "[ -z \"\$(ls -A $STATE/endpoints 2>/dev/null)\" ]"

if [ "$FAILS" -gt 0 ]; then echo "shim-fire: $FAILS check(s) failed; log: $LOG"; KEEP=1; exit 1; fi
echo "shim-fire: all checks passed"
