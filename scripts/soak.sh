#!/usr/bin/env bash
# Fault-injection soak (bounded in time and count; stops by itself):
#   scripts/soak.sh [--cycles 1000] [--workers 8] [--kill-percent 30] [--runner-rounds 40] [--max-seconds 600]
# CNI ADD/DEL cycles through the real plugnet binary (ipMasq on, dual-stack, plugnet-ipam) while
# random plugin processes are SIGKILLed mid-allocation, mid-netlink and mid-nftables; then DEL
# and GC of everything; then an audit (addresses held by nobody, veths, nftables rules, qdiscs,
# firewall and runner state, every store entry parses). Phase 2 kills `plugnet up` mid-list and
# checks that `plugnet down` leaves nothing. Runs inside its own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p plugnet -p plugnet-tests --bins
exec target/debug/plugnet-soak "$@"
