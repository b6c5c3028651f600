#!/usr/bin/env bash
# Builds the CNI plugins (plugnet, plugnet-ipam) as static executables, the way they ship:
# profile `plugin` (size-optimised, whole-program LTO), no dynamic loader, no shared library.
# A CNI plugin is a process per call, so its start-up and the pages it touches are most of
# its cost (docs/performance.md).
#   scripts/build-plugins.sh            prints the directory holding the two binaries
#   PLUGNET_STATIC=musl|glibc scripts/build-plugins.sh
# libc: musl when rustup's x86_64-unknown-linux-musl target is installed (start-up ≈ 0.3 ms
# here), else glibc linked statically from Debian's libc6-dev (≈ 0.9 ms: glibc's start-up
# probes the CPU with cpuid, which traps to the hypervisor on these VMs). Nothing is
# downloaded: the musl target is used only when already there.
# Position-dependent (relocation-model=static, like the Go reference plugins): a static-pie
# binary applies ~3,800 relocations at every start, dirtying ~20 pages; without them VERSION
# takes 34 page faults instead of 55 and ADD ≈ 0.1 ms less. The image loses ASLR (heap,
# stack and mappings keep it).
set -euo pipefail
cd "$(dirname "$0")/.."

want=${PLUGNET_STATIC:-}
if [ -z "$want" ]; then
  want=glibc
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && want=musl
fi
case $want in
  musl) target=x86_64-unknown-linux-musl; flags="-C relocation-model=static" ;;
  glibc) target=x86_64-unknown-linux-gnu; flags="-C target-feature=+crt-static -C relocation-model=static" ;;
  *) echo "build-plugins.sh: PLUGNET_STATIC must be musl or glibc, not '$want'" >&2; exit 2 ;;
esac
# RUSTFLAGS with an explicit --target reach only the target's crates (not build scripts).
RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build -q --profile plugin --target "$target" \
  -p plugnet --bin plugnet --bin plugnet-ipam >&2
dir=$PWD/target/$target/plugin
for b in plugnet plugnet-ipam; do
  if ldd "$dir/$b" >/dev/null 2>&1 && ! ldd "$dir/$b" 2>&1 | grep -q "statically linked"; then
    echo "build-plugins.sh: $dir/$b is not static" >&2
    exit 1
  fi
done
echo "build-plugins.sh: static $want build in $dir" >&2
echo "$dir"
