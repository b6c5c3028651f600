#!/usr/bin/env bash
# scripts/demo.sh on a fresh machine, emulated: a Debian 12 root file system built with
# mmdebstrap that holds only what a fresh machine of the project's kind has (iproute2, jq,
# python3, curl, gcc and libc6-dev, git; the Rust toolchain is bind-mounted from this host's
# ~/.rustup and ~/.cargo), a clone of this repository's HEAD in it, and the demo run there
# with chroot. Shows that ping and nft are absent before and that the demo installs them.
#   scripts/demo-fresh.sh [--root DIR] [--keep]
#     --root DIR  use (or create) the root file system in DIR; default a temporary one
#     --keep      keep the root file system afterwards
# Needs root and Debian's mirror; downloads ~150 MB of packages and builds the plugins from
# scratch (minutes). Not part of scripts/test.sh: CI runs demo.sh on its own fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo-fresh.sh needs root (chroot, mounts)" >&2; exit 1; }
ROOT="" KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --root) ROOT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--root DIR] [--keep]" >&2; exit 2 ;;
  esac
done
. scripts/lib/packages.sh
ensure_packages mmdebstrap git
[ -n "$ROOT" ] || { ROOT=$(mktemp -d /var/tmp/plugnet-fresh.XXXXXX); rmdir "$ROOT"; }
RUSTUP=${RUSTUP_HOME:-$HOME/.rustup} CARGO=${CARGO_HOME:-$HOME/.cargo}
cleanup() { [ "$KEEP" = 1 ] || rm -rf --one-file-system "$ROOT"; }
trap cleanup EXIT

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  echo "== mmdebstrap: Debian 12 with what a fresh machine has"
  mmdebstrap --variant=minbase \
    --include=iproute2,jq,python3,curl,gcc,libc6-dev,ca-certificates,git \
    bookworm "$ROOT" http://deb.debian.org/debian
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
rm -rf "$ROOT/src"
git clone -q "$PWD" "$ROOT/src"
mkdir -p "$ROOT/root/.rustup" "$ROOT/root/.cargo"
# in_root CMD...: CMD in the fresh root, in a mount namespace of its own (its mounts go with
# it). The root is a mount point, as on a machine (`ip netns` makes / a slave mount).
in_root() {
  unshare -m --propagation private env ROOT="$ROOT" RUSTUP="$RUSTUP" CARGO="$CARGO" bash -euc '
    mount --bind "$ROOT" "$ROOT"
    mount -t proc proc "$ROOT/proc"
    mount --rbind /sys "$ROOT/sys"
    mount --rbind /dev "$ROOT/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
    mount --bind "$RUSTUP" "$ROOT/root/.rustup"
    mount --bind "$CARGO" "$ROOT/root/.cargo"
    exec chroot "$ROOT" env -i HOME=/root TERM=dumb \
      PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
  ' in_root "$@"
}
echo "== before: what the demo needs and a fresh machine lacks"
in_root sh -c 'for c in ping nft; do command -v $c >/dev/null && echo "$c: present" || echo "$c: absent"; done'
echo "== scripts/demo.sh in the fresh root"
in_root bash -c 'cd /src && scripts/demo.sh'
echo "== after"
in_root sh -c 'for c in ping nft; do command -v $c >/dev/null && echo "$c: present" || echo "$c: absent"; done'
echo "demo-fresh: ok"
