# shellcheck shell=bash
# Debian packages for plugnet's scripts: the one helper every script that installs something
# sources, so a fresh machine gets exactly what each script uses, and `apt-get update` runs at
# most once per run however many scripts a run starts (test.sh → demo.sh → …).
#
#   . "$(dirname "$0")/lib/packages.sh"
#   ensure_packages iproute2 iputils-ping     # installs those not installed, nothing else
#
# A package counts as present when dpkg says "install ok installed". Recommends are not
# installed (--no-install-recommends): a script names every package it uses. The first
# script that has to install runs `apt-get update` and exports PLUGNET_APT_UPDATED=1, which
# the scripts it starts inherit. Without root it names what is missing and fails; on a system
# without dpkg it names what the script uses and lets it try.

ensure_packages() {
  local missing=() p log
  if ! command -v dpkg-query >/dev/null; then
    echo "${0##*/}: not a Debian system; this script uses (Debian names): $*" >&2
    return 0
  fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "${0##*/}: missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "${0##*/}: installing ${missing[*]}" >&2
  log=$(mktemp /tmp/plugnet-apt.XXXXXX)
  if [ "${PLUGNET_APT_UPDATED:-}" != 1 ]; then
    if ! apt-get update -qq >"$log" 2>&1; then
      cat "$log" >&2; rm -f "$log"
      echo "${0##*/}: apt-get update failed" >&2
      return 1
    fi
    export PLUGNET_APT_UPDATED=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "${0##*/}: apt-get install ${missing[*]} failed" >&2
    return 1
  fi
  rm -f "$log"
}
