#!/usr/bin/env bash
# Install plugnet: the CNI plugins into the CNI plugin dir, plugnet-shim and its systemd unit,
# the firewall watch's unit (for hosts without the shim), plugnet-agent and its unit,
# optionally the example conflists; --uninstall reverses exactly what was installed.
#
#   scripts/install.sh [--prefix DIR] [--cni-bin-dir DIR] [--with-conf] [--socket PATH]
#                      [--no-build | --bin-dir DIR] [--uninstall]
#
#   --prefix DIR        install under DIR (a staging root); default /
#   --cni-bin-dir DIR   CNI plugin directory inside the prefix; default /opt/cni/bin
#   --with-conf         also install the example conflists from conf/ into /etc/cni/net.d
#   --socket PATH       the shim listens on PATH instead of /run/docker/plugins/plugnet.sock;
#                       a Docker plugin spec pointing at it is installed
#   --no-build          use the binaries already in target/release (else the plugins are
#                       built static by scripts/build-plugins.sh, the shim with --release)
#   --bin-dir DIR       take the binaries from DIR (e.g. target/debug); implies --no-build
#   --uninstall         remove everything a previous install under the same prefix recorded
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/ cni_bin=/opt/cni/bin with_conf=0 socket="" build=1 uninstall=0 bin_dir=target/release
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --cni-bin-dir) cni_bin=$2; shift 2 ;;
    --with-conf) with_conf=1; shift ;;
    --socket) socket=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin-dir) bin_dir=${2%/}; build=0; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
prefix=${prefix%/}
manifest="$prefix/var/lib/plugnet/install-manifest"

if [ "$uninstall" = 1 ]; then
  if [ ! -f "$manifest" ]; then
    echo "install.sh: nothing to uninstall under '${prefix:-/}' (no $manifest)" >&2
    exit 1
  fi
  if [ -z "$prefix" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now plugnet-shim.service plugnet-firewall-watch.service plugnet-agent.service 2>/dev/null || true
  fi
  while IFS= read -r f; do
    rm -f -- "$f" && echo "removed $f"
  done < <(sort -r "$manifest")
  rm -f -- "$manifest"
  rmdir --ignore-fail-on-non-empty "$prefix/var/lib/plugnet" 2>/dev/null || true
  [ -z "$prefix" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ] && systemctl daemon-reload || true
  exit 0
fi

plugin_dir=$bin_dir
if [ "$build" = 1 ]; then
  . scripts/lib/packages.sh
  # The static plugins link glibc statically (scripts/build-plugins.sh); plugnet-agent's etcd
  # client compiles etcd's protobuf definitions (protoc and its well-known types).
  ensure_packages libc6-dev protobuf-compiler libprotobuf-dev
  cargo build --release -p plugnet-shim -p plugnet-agent --bins -q
  plugin_dir=$(scripts/build-plugins.sh) # static plugnet and plugnet-ipam
fi
for b in plugnet plugnet-ipam plugnet-shim plugnet-agent; do
  d=$plugin_dir; [ "$b" = plugnet ] || [ "$b" = plugnet-ipam ] || d=$bin_dir
  [ -x "$d/$b" ] || {
    echo "install.sh: $d/$b missing: build it (cargo build --release --workspace --bins), or drop --no-build / fix --bin-dir" >&2
    exit 1
  }
done

mkdir -p "$(dirname "$manifest")"
: > "$manifest.new"
put() { # put SRC DEST MODE
  install -D -m "$3" "$1" "$2"
  echo "$2" >> "$manifest.new"
  echo "installed $2"
}
put "$plugin_dir/plugnet" "$prefix$cni_bin/plugnet" 0755
put "$plugin_dir/plugnet-ipam" "$prefix$cni_bin/plugnet-ipam" 0755
put "$bin_dir/plugnet-shim" "$prefix/usr/local/bin/plugnet-shim" 0755
# The agent links the etcd client; the CNI plugins do not (`plugnet cluster` runs it).
put "$bin_dir/plugnet-agent" "$prefix/usr/local/bin/plugnet-agent" 0755
unit=$(mktemp)
sed "s|--cni-path /opt/cni/bin|--cni-path $cni_bin|" conf/plugnet-shim.service > "$unit"
if [ -n "$socket" ]; then
  sed -i "s|--name plugnet |--name plugnet --socket $socket |" "$unit"
  spec=$(mktemp); echo "unix://$socket" > "$spec"
  put "$spec" "$prefix/etc/docker/plugins/plugnet.spec" 0644
  rm -f "$spec"
fi
put "$unit" "$prefix/etc/systemd/system/plugnet-shim.service" 0644
sed "s|/opt/cni/bin/plugnet |$cni_bin/plugnet |" conf/plugnet-firewall-watch.service > "$unit"
put "$unit" "$prefix/etc/systemd/system/plugnet-firewall-watch.service" 0644
put conf/plugnet-agent.service "$prefix/etc/systemd/system/plugnet-agent.service" 0644
rm -f "$unit"
if [ "$with_conf" = 1 ]; then
  for c in conf/*.conflist; do
    put "$c" "$prefix/etc/cni/net.d/$(basename "$c")" 0644
  done
fi
mv "$manifest.new" "$manifest"
if [ -z "$prefix" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "enable the shim with: systemctl enable --now plugnet-shim.service"
  echo "for cluster networks: set PLUGNET_AGENT_ARGS=\"--etcd URL…\" in /etc/default/plugnet-agent," \
    "then systemctl enable --now plugnet-agent.service"
  echo "without the shim, keep plugnet's rules through firewall reloads with:" \
    "systemctl enable --now plugnet-firewall-watch.service"
fi
