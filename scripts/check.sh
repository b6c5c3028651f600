#!/usr/bin/env bash
# plugnet's style gate: formatting and clippy's warnings fail the run (scripts/test.sh calls
# this before it builds anything). Needs rustfmt and clippy (rustup component add rustfmt
# clippy). Extra arguments go to cargo clippy (e.g. -j2).
#   scripts/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --all -- --check; then
  echo "check.sh: formatting differs from rustfmt's; run: cargo fmt --all" >&2
  exit 1
fi
if ! cargo clippy --workspace --all-targets "$@" -- -D warnings; then
  echo "check.sh: clippy found warnings (they are errors here)" >&2
  exit 1
fi
echo "check.sh: ok"
