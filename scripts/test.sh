#!/usr/bin/env bash
# Run the test suite. `scripts/test.sh` runs the quick tests; `scripts/test.sh --all` adds the
# slow ones (multi-process, browser, cluster, sentinel, chaos, benchmark smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--all" ]; then
  shift
  marker=()
else
  marker=(-m "not slow")
fi
ruff check .
ruff format --check .
exec python3 -m pytest -q "${marker[@]}" "$@"
