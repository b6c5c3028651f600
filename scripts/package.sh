#!/usr/bin/env bash
# Build the Debian package with cargo-deb (not run by CI: it needs a release build, minutes here).
#
#   scripts/package.sh            plugnet + plugnet-ipam (/opt/cni/bin), plugnet-shim (/usr/bin)
#                                 and its systemd unit (enabled, not started on install)
#   scripts/package.sh --no-shim  only the CNI plugins (plain `cargo deb -p plugnet`)
#
# Installs cargo-deb (`cargo install cargo-deb --locked`) when missing. Prints the .deb path.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=(--variant shim)
case "${1:-}" in
  --no-shim) variant=() ;;
  "") ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "package.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
# The packaged unit is conf/plugnet-shim.service with the shim in /usr/bin: refuse to package a
# copy that drifted.
if ! diff <(sed 's|/usr/local/bin/plugnet-shim|/usr/bin/plugnet-shim|' conf/plugnet-shim.service) \
          conf/deb/plugnet.plugnet-shim.service >/dev/null; then
  echo "package.sh: conf/deb/plugnet.plugnet-shim.service differs from conf/plugnet-shim.service;" \
       "regenerate it with: sed 's|/usr/local/bin/plugnet-shim|/usr/bin/plugnet-shim|'" \
       "conf/plugnet-shim.service > conf/deb/plugnet.plugnet-shim.service" >&2
  exit 1
fi
deb=$(cargo deb -p plugnet "${variant[@]}" | tail -n 1)
dpkg-deb --info "$deb" >/dev/null
contents=$(dpkg-deb --contents "$deb")
want=(./opt/cni/bin/plugnet ./opt/cni/bin/plugnet-ipam)
[ ${#variant[@]} -gt 0 ] && want+=(./usr/bin/plugnet-shim ./usr/lib/systemd/system/plugnet-shim.service)
for f in "${want[@]}"; do
  grep -q " $f\$" <<<"$contents" || { echo "package.sh: $f missing from $deb" >&2; exit 1; }
done
echo "$deb"
