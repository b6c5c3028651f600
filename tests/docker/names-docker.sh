#!/usr/bin/env bash
# Names (issue 20) between Docker and CNI on one network, both directions, against a real
# dockerd of our own: one conflist `pnnd` ("resolver": true, plugnet-ipam) used by Docker through
# plugnet-shim (mode 2, -o cni.network=pnnd) and by podman (CNI backend); plugnet-agent serves
# the records.
#   CNI -> Docker: podman's container resolves the Docker container's name: the agent asks
#                  Docker's embedded DNS inside that container's sandbox (the shim passes the
#                  sandbox key into the name record).
#   Docker -> CNI: the Docker container runs with `--dns <gateway>`: Docker's embedded DNS
#                  forwards names it does not know there, and the agent answers.
# Objects: pnn*-$$; addresses 10.172.20.0/24. Prints the lookup times it measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/packages.sh
ensure_packages docker.io busybox-static iproute2 iptables podman runc
X=$$
NAME=pnn-$X
BIN=${PLUGNET_BIN:-$(pwd)/target/debug}
for b in plugnet plugnet-ipam plugnet-shim plugnet-agent; do
  [ -x "$BIN/$b" ] || { echo "names-docker: $BIN/$b missing: cargo build --workspace first"; exit 1; }
done
TMP=$(mktemp -d /tmp/pnn-docker-XXXXXX)
CONF=$TMP/net.d IPAMDIR=$TMP/ipam AGENT=$TMP/agent
DROOT=/var/lib/pnn-docker-$X EROOT=/run/pnn-docker-$X DSOCK=/run/pnn-docker-$X.sock DPID=/run/pnn-docker-$X.pid
DOCKER=(/usr/bin/docker -H "unix://$DSOCK")
POD=(env CONTAINERS_CONF="$TMP/containers.conf" podman --root "$TMP/podroot" --runroot "$TMP/podrun"
     --storage-driver vfs --network-backend cni)
GW=10.172.20.1
IMG=pnnbb:$X
SHIM_PID= DOCKERD_PID= AGENT_PID= FWD_RULE=
FAILS=0
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then printf 'ok   %s\n' "$what"; else fail "$what"; fi; }
d() { "${DOCKER[@]}" "$@"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }

cleanup() {
  set +e
  "${POD[@]}" rm -f -t 0 -a >/dev/null 2>&1
  "${POD[@]}" system reset -f >/dev/null 2>&1
  if [ -n "$DOCKERD_PID" ]; then
    d rm -f $(d ps -aq) >/dev/null 2>&1
    d network rm "pnnd-$X" >/dev/null 2>&1
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
  fi
  for p in $(pgrep -x containerd-shim || true); do
    if { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q -- "-address $EROOT/"; then
      for c in $(pgrep -P "$p" || true); do kill -KILL "$c"; done
      kill -KILL "$p"
    fi
  done
  [ -n "$SHIM_PID" ] && kill -TERM "$SHIM_PID" && wait "$SHIM_PID"
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" && wait "$AGENT_PID"
  for f in /run/plugnet-shim/"$NAME"/ns/*; do [ -e "$f" ] && umount -l "$f" && rm -f "$f"; done
  umount -l "/run/plugnet-shim/$NAME/ns" 2>/dev/null; rm -rf "/run/plugnet-shim/$NAME"
  [ -n "$FWD_RULE" ] && iptables -D FORWARD -i pnnbrd -o pnnbrd -m comment --comment "pnn-$X" -j ACCEPT
  for m in $(grep -o " $DROOT[^ ]*\| $EROOT[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
  rm -rf "$DROOT" "$EROOT" "$DSOCK" "$DPID"
  for l in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^pnj|^pnnbrd$'); do
    case "$l" in pnnbrd) ip link del "$l" ;; *) ip link show "$l" | grep -q pnnbrd && ip link del "$l" ;; esac
  done 2>/dev/null
  if [ "${KEEP:-}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

mkdir -p "$CONF" "$IPAMDIR" "$AGENT"
cat >"$CONF/pnnd.conflist" <<EOF
{"cniVersion":"1.0.0","name":"pnnd","plugins":[
 {"type":"plugnet","bridge":"pnnbrd","isGateway":true,"resolver":true,"agentDir":"$AGENT",
  "capabilities":{"aliases":true},"firewallStateDir":"$TMP/fw",
  "ipam":{"type":"plugnet-ipam","dataDir":"$IPAMDIR","ranges":[[{"subnet":"10.172.20.0/24","gateway":"$GW"}]]}}]}
EOF
echo "nameserver 127.0.0.1" >"$TMP/resolv.conf"

say "plugnet-agent (resolver only), dockerd and plugnet-shim of our own"
"$BIN/plugnet-agent" --state-dir "$AGENT" --metrics-listen off --resolv-conf "$TMP/resolv.conf" \
  --log-level debug >"$TMP/agent.log" 2>&1 &
AGENT_PID=$!
dockerd --data-root "$DROOT" --exec-root "$EROOT" --pidfile "$DPID" -H "unix://$DSOCK" \
  --bridge=none --iptables=false --ip6tables=false >>"$TMP/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 300); do d info >/dev/null 2>&1 && break; sleep 0.1; done
d info >/dev/null || { tail -30 "$TMP/dockerd.log"; exit 1; }
"$BIN/plugnet-shim" --name "$NAME" --state-dir "$TMP/shim" --cni-conf-dir "$CONF" \
  --cni-path "$BIN:/usr/lib/cni" --ipam-data-dir "$IPAMDIR" --log-level info >>"$TMP/shim.log" 2>&1 &
SHIM_PID=$!
for _ in $(seq 100); do [ -S "/run/docker/plugins/$NAME.sock" ] && break; sleep 0.05; done
if iptables -S FORWARD 2>/dev/null | grep -q -- '-P FORWARD DROP'; then
  iptables -I FORWARD -i pnnbrd -o pnnbrd -m comment --comment "pnn-$X" -j ACCEPT && FWD_RULE=1
fi

mkdir -p "$TMP/root/bin"
cp /bin/busybox "$TMP/root/bin/"
for c in sh nslookup sleep cat; do ln -sf busybox "$TMP/root/bin/$c"; done
tar -C "$TMP/root" -c . | d import - "$IMG" >/dev/null
printf '[engine]\nruntime = "runc"\n[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["%s", "/usr/lib/cni"]\nnetwork_config_dir = "%s"\n' \
  "$BIN" "$CONF" >"$TMP/containers.conf"
tar -C "$TMP/root" -c . | "${POD[@]}" import - "localhost/pnnbb:$X" >/dev/null

say "one network, two runtimes"
d network create -d "$NAME" --ipam-driver "$NAME" --ipam-opt cni.network=pnnd -o cni.network=pnnd "pnnd-$X" >/dev/null
d run -d --name "dweb-$X" --network "pnnd-$X" --dns "$GW" "$IMG" sleep 600 >/dev/null
dip=$(d inspect -f "{{(index .NetworkSettings.Networks \"pnnd-$X\").IPAddress}}" "dweb-$X")
"${POD[@]}" run -d --name "pweb$X" --network pnnd --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  "localhost/pnnbb:$X" sleep 600 >/dev/null
pip=$("${POD[@]}" inspect -f '{{(index .NetworkSettings.Networks "pnnd").IPAddress}}' "pweb$X")
check "docker ($dip) and podman ($pip) containers on one network" test -n "$dip" -a -n "$pip"
check "the Docker endpoint's record carries its sandbox key" \
  sh -c "grep -l dockerSandbox $AGENT/names/pnnd/*.json | grep -q ."

lookup() { # command... (the answer must name $EXPECT)
  local out; out=$("$@" 2>&1) || true
  printf '%s\n' "$out" | grep -q "Address.*$EXPECT" || { printf '%s\n' "$out" | sed 's/^/     /'; return 1; }
}
say "CNI -> Docker: podman's container resolves the Docker container (asked in its sandbox)"
EXPECT=$dip
check "podman: nslookup dweb-$X -> $dip" lookup "${POD[@]}" exec "pweb$X" nslookup "dweb-$X"
say "Docker -> CNI: the Docker container (--dns $GW) resolves the podman container"
EXPECT=$pip
check "docker: nslookup pweb$X -> $pip" lookup d exec "dweb-$X" nslookup "pweb$X"
check "docker: nslookup pweb$X.dns.plugnet -> $pip" lookup d exec "dweb-$X" nslookup "pweb$X.dns.plugnet"

say "figures: 20 lookups each, from the podman container's netns (no exec in the timing)"
pns=$("${POD[@]}" inspect -f '{{.NetworkSettings.SandboxKey}}' "pweb$X" 2>/dev/null || true)
if [ -n "$pns" ]; then
  t0=$(ms); for _ in $(seq 20); do nsenter --net="$pns" busybox nslookup "pweb$X" "$GW" >/dev/null 2>&1 || true; done
  t1=$(ms); for _ in $(seq 20); do nsenter --net="$pns" busybox nslookup "dweb-$X" "$GW" >/dev/null 2>&1 || true; done
  t2=$(ms)
  echo "figures: per lookup (nsenter + busybox nslookup, A+AAAA): CNI name $(( (t1 - t0) / 20 )) ms," \
       "Docker name (asked in its sandbox) $(( (t2 - t1) / 20 )) ms"
fi

say "removal"
d rm -f "dweb-$X" >/dev/null
"${POD[@]}" rm -f -t 0 "pweb$X" >/dev/null
check "no name record left" sh -c "! ls $AGENT/names/pnnd/*.json 2>/dev/null | grep -q ."
check "agent still running" kill -0 "$AGENT_PID"

if [ "$FAILS" -gt 0 ]; then
  echo "names-docker: $FAILS check(s) failed"; tail -20 "$TMP/agent.log"; KEEP=1; exit 1
fi
echo "names-docker: all checks passed"
