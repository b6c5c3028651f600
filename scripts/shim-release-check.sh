#!/usr/bin/env bash
# Issue 17's "Done when" against the release build of plugnet-shim: a non-ASCII id, 1,100
# half-open connections under `ulimit -n 1024` (a new client answered within 1 s), 400 Joins
# with ~900 KB ids (RSS growth < 20 MB), a foreign bridge surviving DeleteNetwork, slow and
# concurrent clients. Runs tests/tests/shim_hostile.rs with PLUGNET_SHIM_BIN pointing at the
# release binary and prints the measured figures. Root; objects are named pns-*.
#   scripts/shim-release-check.sh            (~1 min after the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -j2 -p plugnet-shim -q
bin=$PWD/target/release/plugnet-shim
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The test's own status decides; the figures are only picked out of its output afterwards.
if ! PLUGNET_SHIM_BIN=$bin cargo test -j2 -p plugnet-tests --test shim_hostile -q -- --nocapture \
  --test-threads 1 >"$out" 2>&1; then
  cat "$out"
  echo "shim-release-check: shim_hostile FAILED against $bin" >&2
  exit 1
fi
cat "$out" >&2
grep -E "RSS before|answered in" "$out" || true
echo "shim-release-check: $bin passed"
