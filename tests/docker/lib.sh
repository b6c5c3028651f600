# Shared setup of the Docker black-box scripts (sourced): a dockerd of our own, a busybox
# image, the shim under a unique name; cleanup on exit. Names pns*-$$; subnets 10.60-69.x.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/packages.sh"
# dockerd and its client, the image's busybox, the reference chain of mode 2, podman beside Docker.
ensure_packages docker.io busybox-static iproute2 iptables nftables containernetworking-plugins podman
X=$$
NAME=pns-$X
SHIM=${SHIM:-target/debug/plugnet-shim}
PLUGNET_BIN=${PLUGNET_BIN:-$(pwd)/target/debug}
TMP=$(mktemp -d /tmp/pns-e2e-XXXXXX)
STATE=$TMP/state CONF=$TMP/net.d IPAMDIR=$TMP/ipam LOG=$TMP/shim.log
DROOT=/var/lib/pns-docker-$X EROOT=/run/pns-docker-$X DSOCK=/run/pns-docker-$X.sock DPID=/run/pns-docker-$X.pid
DOCKER=(/usr/bin/docker -H "unix://$DSOCK")
IMG=pnsbb:$X
SHIM_PID= DOCKERD_PID= FWD_RULE=
FAILS=0

say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then printf 'ok   %s\n' "$what"; else fail "$what"; fi; }
d() { "${DOCKER[@]}" "$@"; }

start_shim() {
  "$SHIM" --name "$NAME" --state-dir "$STATE" --cni-conf-dir "$CONF" \
    --cni-path "$PLUGNET_BIN:/usr/lib/cni" --ipam-data-dir "$IPAMDIR" \
    --default-pool 10.69.0.0/16 --bridge-plugin "${BRIDGE_PLUGIN:-plugnet}" --log-level "${LOG_LEVEL:-info}" >>"$LOG" 2>&1 &
  SHIM_PID=$!
  for _ in $(seq 100); do [ -S "/run/docker/plugins/$NAME.sock" ] && return 0; sleep 0.05; done
  echo "shim did not start"; cat "$LOG"; exit 1
}

stop_shim() {
  [ -n "$SHIM_PID" ] || return 0
  kill -TERM "$SHIM_PID" 2>/dev/null || true
  wait "$SHIM_PID" 2>/dev/null || true
  SHIM_PID=
}

# Derived networks masquerade, so plugnet's firewall keeps its records in the product's default
# state dir; remove it afterwards if this run created it and left no attachment in it.
FW_STATE=/var/lib/plugnet/firewall
# The shim's host-side interfaces (pnj*) and derived bridges (pnb*) that exist before this run
# are not ours.
PNJ_BEFORE=" $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | { grep '^pn[jb]' || true; } | tr '\n' ' ')"
[ -d "$FW_STATE" ] && FW_STATE_EXISTED=1 || FW_STATE_EXISTED=0
# A table without state is what a crashed earlier run left: nothing owns it any more.
[ "$FW_STATE_EXISTED" = 0 ] && nft delete table inet plugnet 2>/dev/null || true

cleanup() {
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    d rm -f $(d ps -aq) >/dev/null 2>&1
    d network prune -f >/dev/null 2>&1
    for n in $(d network ls -q --filter driver="$NAME"); do d network rm "$n" >/dev/null 2>&1; done
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
  fi
  # Containers outliving a dockerd this run killed: their shims (ours by -address) and children.
  for p in $(pgrep -x containerd-shim || true); do
    # A shim may exit between pgrep and the read: its vanished /proc entry is not an error.
    if { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q -- "-address $EROOT/"; then
      for c in $(pgrep -P "$p" || true); do kill -KILL "$c"; done
      kill -KILL "$p"
    fi
  done
  stop_shim
  for f in /run/plugnet-shim/"$NAME"/ns/*; do [ -e "$f" ] && umount -l "$f" && rm -f "$f"; done
  [ -n "$FWD_RULE" ] && iptables -D FORWARD -s 10.60.0.0/14 -d 10.60.0.0/14 -m comment --comment "pns-$X" -j ACCEPT
  for m in $(grep -o " $DROOT[^ ]*\| $EROOT[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
  rm -rf "$DROOT" "$EROOT" "$DSOCK" "$DPID"
  # Interfaces and bridges the shim left in the host if dockerd could not tell it to delete
  # them (a bridge left with this run's subnet would capture the next run's gateway).
  for l in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^pn[jb]'); do
    case "$PNJ_BEFORE" in *" $l "*) ;; *) ip link del "$l" 2>/dev/null ;; esac
  done
  # Bridges this run's conflists made (the reference bridge never deletes its bridge).
  for l in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^pns[a-z]$X\$"); do ip link del "$l"; done
  if [ -d "/run/plugnet-shim/$NAME/ns" ] && [ -z "$(ls -A "/run/plugnet-shim/$NAME/ns")" ]; then
    umount -l "/run/plugnet-shim/$NAME/ns" 2>/dev/null; rmdir "/run/plugnet-shim/$NAME/ns" "/run/plugnet-shim/$NAME" 2>/dev/null
  fi
  # This run brought plugnet's firewall to the host: take it away again, also what endpoints
  # Docker could not delete (a dockerd that died) left in it.
  if [ "$FW_STATE_EXISTED" = 0 ]; then
    nft delete table inet plugnet 2>/dev/null
    rm -rf "$FW_STATE"; rmdir /var/lib/plugnet 2>/dev/null
  fi
  if [ "${KEEP:-}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
say "dockerd of our own ($DSOCK)"
start_dockerd() {
  dockerd --data-root "$DROOT" --exec-root "$EROOT" --pidfile "$DPID" -H "unix://$DSOCK" \
    --bridge=none --iptables=false --ip6tables=false >>"$TMP/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 300); do d info >/dev/null 2>&1 && break; sleep 0.1; done
  d info >/dev/null || { tail -30 "$TMP/dockerd.log"; exit 1; }
}
start_dockerd

# Another dockerd may have set FORWARD to DROP with br_netfilter loaded: accept our own block.
if iptables -S FORWARD 2>/dev/null | grep -q -- '-P FORWARD DROP'; then
  iptables -I FORWARD -s 10.60.0.0/14 -d 10.60.0.0/14 -m comment --comment "pns-$X" -j ACCEPT && FWD_RULE=1
fi

say "busybox image"
mkdir -p "$TMP/root/bin"
cp /bin/busybox "$TMP/root/bin/"
for c in sh ip ping sleep nc cat ls true; do ln -sf busybox "$TMP/root/bin/$c"; done
tar -C "$TMP/root" -c . | d import - "$IMG" >/dev/null

mkdir -p "$CONF" "$IPAMDIR"
start_shim


ip_of() { d inspect -f "{{(index .NetworkSettings.Networks \"$2\").IPAddress}}" "$1"; }
pings() { d exec "$1" ping -c1 -W2 "$2" >/dev/null 2>&1; }

# Conflists for mode 2: the reference bridge + host-local + portmap.
refconf() { # name bridge subnet
  cat >"$CONF/$1.conflist" <<EOF
{"cniVersion":"1.0.0","name":"$1","plugins":[
 {"type":"bridge","bridge":"$2","isGateway":true,"ipMasq":false,
  "ipam":{"type":"host-local","dataDir":"$IPAMDIR","ranges":[[{"subnet":"$3"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
}

mknet() { # docker-name mode subnet-or-conflist
  if [ "$2" = existing ]; then
    d network create -d "$NAME" --ipam-driver "$NAME" --ipam-opt "cni.network=$3" -o "cni.network=$3" "$1" >/dev/null
  else
    d network create -d "$NAME" --ipam-driver "$NAME" --subnet "$3" -o plugnet.export=true "$1" >/dev/null
  fi
}


latency_table() { # per-method handler latency from the shim log
  grep -o 'method=[A-Za-z.]* elapsed_us=[0-9]*' "$LOG" >/dev/null || true
  grep -o 'method=[A-Za-z.]* elapsed_us=[0-9]*' "$LOG" | sed 's/method=//; s/elapsed_us=//' |
    sort -k1,1 -k2,2n | awk '{a[$1]=a[$1]" "$2; n[$1]++} END {for (m in a) {split(substr(a[m],2),v," "); printf "  %-44s %7.2f %8.2f %4d\n", m, v[int((n[m]+1)/2)]/1000, v[n[m]]/1000, n[m]}}' | sort
}
