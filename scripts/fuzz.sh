#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time on a scratch copy of its committed seed corpus.
#   scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]     default 30 s, every target
# Needs cargo-fuzz (installed from crates.io if missing). The project's one toolchain is
# stable; RUSTC_BOOTSTRAP lets cargo-fuzz use the flags it needs, without sanitizers (-s none).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/packages.sh
ensure_packages g++ # libfuzzer-sys compiles libFuzzer's C++
cd fuzz
secs=${1:-30}; shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build -s none -O >/dev/null
total=0
for t in "${targets[@]}"; do
  work=$(mktemp -d); cp -r "corpus/$t/." "$work/" 2>/dev/null || true
  log=$(mktemp)
  # A target's own scratch files (shim_request's state dir) land here and go with it.
  scratch=$(mktemp -d)
  if ! TMPDIR=$scratch cargo fuzz run -s none -O "$t" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -40 "$log"; echo "fuzz.sh: $t FAILED (crash input under fuzz/artifacts/$t)"; exit 1
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | awk '{print $2}' | tail -1)
  echo "fuzz: $t: ${runs:-0} executions in ${secs}s, no crash"
  total=$((total + ${runs:-0}))
  rm -rf "$work" "$log" "$scratch"
done
echo "fuzz: ${#targets[@]} targets, $total executions, 0 crashes"
