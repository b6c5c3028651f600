#!/usr/bin/env bash
# Black-box test of plugnet's routed mode through plugnet-shim and the REAL dockerd (own dockerd,
# see lib.sh): `docker network create -o plugnet.mode=routed`, Docker containers and a CNI
# container (plugnet run directly, as a CNI runtime would) on the same routed network reach each
# other through the host's routing table; nothing is left afterwards.
#
#   tests/docker/shim-routed.sh        (root; called by shim-e2e.sh --mode both|routed)
# Objects: names pns*-$$ / pnq*-$$, subnet 100.72.0.0/16 (routed helper's reserved block).
set -euo pipefail
cd "$(dirname "$0")/../.."

BRIDGE_PLUGIN=plugnet   # routed mode is plugnet's own
source "$(dirname "$0")/lib.sh"

SUBNET=100.72.0.0/16 SUBNET6=fd11:72::/64
CNS=pnq-dock-$X
routed_cleanup() {
  set +e
  ip netns del "$CNS" 2>/dev/null
}
trap 'routed_cleanup; cleanup' EXIT
# No FORWARD rule of the test's own: with ipMasq, plugnet's firewall keeps iptables' FORWARD
# path (policy DROP once any dockerd ran) open for routed host veths itself.

say "[routed] docker network create -o plugnet.mode=routed --ipv6 --subnet $SUBNET --subnet $SUBNET6"
d network create -d "$NAME" --ipam-driver "$NAME" -o plugnet.mode=routed -o plugnet.export=true \
  -o com.docker.network.bridge.enable_ip_masquerade=true \
  --ipv6 --subnet "$SUBNET" --subnet "$SUBNET6" "r1-$X" >/dev/null
CL="$CONF/pn-100.72.0.0_16.conflist"
check "[routed] exported conflist uses mode routed" grep -Eq '"mode": ?"routed"' "$CL"

d run -d --name "r1-$X" --network "r1-$X" "$IMG" sleep 600 >/dev/null
d run -d --name "r2-$X" --network "r1-$X" "$IMG" sleep 600 >/dev/null
ip1=$(ip_of "r1-$X" "r1-$X"); ip2=$(ip_of "r2-$X" "r1-$X")
check "[routed] inspect shows addresses ($ip1, $ip2)" test -n "$ip1" -a -n "$ip2" -a "$ip1" != "$ip2"
shown=$(d exec "r1-$X" ip -o -4 addr show eth0 | awk '{print $4}')
check "[routed] eth0 carries the address as /32, as CNI containers do ($shown)" test "$shown" = "$ip1/32"
v6_1=$(d inspect -f "{{(index .NetworkSettings.Networks \"r1-$X\").GlobalIPv6Address}}" "r1-$X")
v6_2=$(d inspect -f "{{(index .NetworkSettings.Networks \"r1-$X\").GlobalIPv6Address}}" "r2-$X")
shown6=$(d exec "r1-$X" ip -o -6 addr show eth0 scope global | awk '{print $4}')
check "[routed] IPv6 address as /128 ($shown6)" test "$shown6" = "$v6_1/128"
check "[routed] IPv6 default route via fe80::1" sh -c "${DOCKER[*]} exec r1-$X ip -6 route | grep -q 'default via fe80::1 dev eth0'"
check "[routed] r1 pings r2 over IPv6" pings "r1-$X" "$v6_2"
check "[routed] default route via the next hop 169.254.1.1" sh -c "${DOCKER[*]} exec r1-$X ip route | grep -q 'default via 169.254.1.1 dev eth0'"
check "[routed] host has a /32 to each container via a plugnet veth" \
  sh -c "ip route show $ip1 | grep -q 'dev pn' && ip route show $ip2 | grep -q 'dev pn'"
check "[routed] nftables 'routed' set holds the host veths" sh -c "nft list set inet plugnet routed | grep -q 'pn'"
check "[routed] r1 pings r2" pings "r1-$X" "$ip2"
check "[routed] r2 pings r1" pings "r2-$X" "$ip1"
check "[routed] the host pings r1" ping -c1 -W2 "$ip1"

say "[routed] a CNI container on the same network (plugnet ADD with the exported conflist)"
ip netns add "$CNS"
ip -n "$CNS" link set lo up
PLUGCONF=$(python3 -c "import json,sys; c=json.load(open('$CL')); p=c['plugins'][0]; p['name']=c['name']; p['cniVersion']=c['cniVersion']; print(json.dumps(p))")
cni() { # command
  echo "$PLUGCONF" | CNI_COMMAND=$1 CNI_CONTAINERID=pnq-cni-$X CNI_NETNS=/run/netns/$CNS CNI_IFNAME=eth0 \
    CNI_PATH=$PLUGNET_BIN:/usr/lib/cni "$PLUGNET_BIN/plugnet"
}
res=$(cni ADD)
cip=$(echo "$res" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
check "[routed] CNI container got a /32 of the pool ($cip)" sh -c "echo '$res' | grep -q '\"$cip/32\"' && test $cip != $ip1 -a $cip != $ip2"
check "[routed] Docker r1 pings the CNI container" pings "r1-$X" "$cip"
# Docker containers resolve the next hop 169.254.1.1 by ARP (the host veth carries it).
check "[routed] the CNI container pings Docker r2" ip netns exec "$CNS" ping -c3 -W1 -w4 "$ip2"
cip6=$(echo "$res" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][1]["address"].split("/")[0])')
check "[routed] Docker r1 pings the CNI container over IPv6 ($cip6)" pings "r1-$X" "$cip6"
PLUGCONF=$(python3 -c "import json; p=json.loads('''$PLUGCONF'''); p['prevResult']=json.loads('''$res'''); print(json.dumps(p))")
check "[routed] CNI CHECK passes" cni CHECK
cni DEL
check "[routed] CNI DEL removed its host route" sh -c "[ -z \"\$(ip route show $cip)\" ]"

say "[routed] teardown"
d rm -f "r1-$X" "r2-$X" >/dev/null
d network rm "r1-$X" >/dev/null
sleep 0.5
check "[routed] no /32 route of the pool left" sh -c "! ip route | grep -q '^100\.72\.'"
check "[routed] no /128 route of the pool left" sh -c "! ip -6 route | grep -q '^fd11:72:'"
check "[routed] no staging netns left" sh -c "[ -z \"\$(ls -A /run/plugnet-shim/$NAME/ns 2>/dev/null)\" ]"
check "[routed] no exported conflist left" sh -c "! ls $CONF/pn-* >/dev/null 2>&1"

if [ "$FAILS" -gt 0 ]; then
  echo "shim-routed: $FAILS check(s) failed (log: $LOG)"; KEEP=1; exit 1
fi
echo "shim-routed: all checks passed"
