#!/usr/bin/env bash
# plugnet's test command: install what is missing, build, run every test.
#   scripts/test.sh            everything (unit, kernel, black-box against real clients)
#   scripts/test.sh -- ARGS    extra arguments for `cargo test` (e.g. a test name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the tests drive or build against (Debian 12 names). The scripts test.sh starts
# (demo.sh, tests/quickstart.sh, tests/docker/*.sh, fuzz.sh) ensure their own through the same
# helper; listing theirs here too makes a fresh machine's first run one apt-get install.
PACKAGES=(
  iproute2 nftables iptables conntrack iperf3 iputils-ping python3 time strace curl jq dnsutils
  containernetworking-plugins busybox-static
  docker.io podman runc firewalld containerd docker-compose dnsmasq-base
  golang-go golang-github-appc-cni-dev
  protobuf-compiler libprotobuf-dev etcd-server etcd-client
  libc6-dev g++
  systemd
)

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the kernel and black-box tests need root (network namespaces, bridges, nftables)" >&2
  exit 1
fi
. scripts/lib/packages.sh
ensure_packages "${PACKAGES[@]}"

export CARGO_TERM_COLOR=never
log=$(mktemp /tmp/plugnet-test.XXXXXX)
trap 'rm -f "$log"' EXIT
# Style is a gate: rustfmt and clippy -D warnings before anything is built or run.
scripts/check.sh
cargo build --workspace --all-targets
# Unit tests first (fast, no kernel), then everything else.
cargo test --workspace --lib --bins 2>&1 | tee -a "$log"
cargo test --workspace --tests "$@" 2>&1 | tee -a "$log"
if [ $# -eq 0 ]; then
  # The plugins as they ship: static (scripts/build-plugins.sh), under the black-box bridge,
  # features and routed tests again; glibc always (what a machine without rustup's musl
  # target builds), musl too where that target is installed.
  libcs=glibc
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && libcs="glibc musl"
  for libc in $libcs; do
    static_dir=$(PLUGNET_STATIC=$libc scripts/build-plugins.sh)
    PLUGNET_BIN_DIR=$static_dir cargo test -p plugnet-tests --test bridge --test features \
      --test routed 2>&1 | tee -a "$log"
  done
  # The first command a newcomer runs, as they run it (its static build is the one above).
  scripts/demo.sh 2>&1 | tee -a "$log"
  # Every quick start of the README, as written, in a sandbox that looks like a fresh host.
  tests/quickstart.sh 2>&1 | tee -a "$log"
fi

# plugnet-shim against a real dockerd of its own (tests/docker/shim-e2e.sh). Mode 2 runs the
# reference bridge + host-local + portmap; mode 1 derives conflists for the `plugnet` bridge, or
# for the reference bridge (+ plugnet-ipam) while the `plugnet` binary does not answer VERSION.
if [ $# -eq 0 ]; then
  derived_plugin=plugnet
  echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION target/debug/plugnet 2>/dev/null |
    grep -q supportedVersions || derived_plugin=bridge
  BRIDGE_PLUGIN=$derived_plugin tests/docker/shim-e2e.sh --mode both 2>&1 | tee -a "$log"
  # The shim under fire: 50 concurrent docker runs while the shim is killed 5 times, dockerd once.
  tests/docker/shim-fire.sh 2>&1 | grep -v 'level=' | tee -a "$log"
  # Names between Docker (through the shim) and podman on one network, both directions.
  tests/docker/names-docker.sh 2>&1 | tee -a "$log"
  # Docker across hosts (issue 22): a dockerd + shim per host namespace of a cluster world;
  # Docker <-> Docker and Docker <-> CNI across hosts, dual stack, bridge and routed mode;
  # VXLAN: the MTU and a 4 MiB transfer.
  tests/docker/cluster-docker.sh --mode host-gw --ipv6 2>&1 | tee -a "$log"
  tests/docker/cluster-docker.sh --mode vxlan --ipv6 2>&1 | tee -a "$log"
  tests/docker/cluster-docker.sh --mode vxlan --ipv6 --routed 2>&1 | tee -a "$log"
fi

if [ $# -eq 0 ]; then
  # Fault injection: 1,000 ADD/DEL cycles at 8-way with random SIGKILLs, then the audit.
  target/debug/plugnet-soak --cycles 1000 --workers 8 --runner-rounds 40 --max-seconds 300 2>&1 | tee -a "$log"
  # Every fuzz target for a bounded time on its seed corpus (PLUGNET_SKIP_FUZZ=1 skips).
  if [ "${PLUGNET_SKIP_FUZZ:-0}" != 1 ]; then
    scripts/fuzz.sh "${PLUGNET_FUZZ_SECONDS:-15}" 2>&1 | tee -a "$log"
  fi
fi

# One closing line for CI: every cargo test, the soak, the shim e2e checks, the fuzz targets,
# the demo and the quick starts.
cargo_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
other_passed=$(grep -Ec '^(ok   |fuzz: [a-z_]+: |demo: ok$)|^soak: [0-9]+ cycles.*leaks: 0' "$log" || true)
echo "plugnet: $((cargo_passed + other_passed)) passed, 0 failed"
