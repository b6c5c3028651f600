#!/usr/bin/env bash
# plugnet's test command: install what is missing, build, run every test.
#   scripts/test.sh            everything (unit, kernel, black-box against real clients)
#   scripts/test.sh -- ARGS    extra arguments for `cargo test` (e.g. a test name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the tests drive or build against (Debian 12 names).
PACKAGES=(
  iproute2 nftables iptables conntrack iperf3 iputils-ping time strace
  containernetworking-plugins busybox-static
  docker.io podman
  golang-go golang-github-appc-cni-dev
  pkg-config libnftnl-dev libmnl-dev
  systemd
)

ensure_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the kernel and black-box tests need root (network namespaces, bridges, nftables)" >&2
  exit 1
fi
ensure_packages

export CARGO_TERM_COLOR=never
cargo build --workspace --all-targets
# Unit tests first (fast, no kernel), then everything else.
cargo test --workspace --lib --bins
cargo test --workspace --tests "$@"
