#!/usr/bin/env bash
# Set up and run the test suite from a fresh checkout.
#   scripts/test.sh          quick tests (skips multi-process, browser, cluster and chaos tests)
#   scripts/test.sh --all    the whole suite, as CI runs it (with the JS client's npm ci, npm test, tsc)
# Installs what is missing: Debian packages (as root) and the Python packages of the project.
set -euo pipefail
cd "$(dirname "$0")/.."

all=0
if [ "${1:-}" = "--all" ]; then all=1; shift; fi

need=()
command -v redis-server >/dev/null || need+=(redis-server)
if [ $all = 1 ]; then
  command -v nginx >/dev/null || need+=(nginx)
  command -v chromium >/dev/null || need+=(chromium)
  command -v npm >/dev/null || need+=(nodejs npm)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v shellcheck >/dev/null || need+=(shellcheck)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them with apt-get as root)" >&2
  fi
fi

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
python3 -m pip install -q --disable-pip-version-check -e ".[test,browser,bench,deploy]"

ruff check .
ruff format --check .
mypy --strict gateway worker shared
if [ $all = 1 ]; then
  # The browser client (clients/js): installed from its lock file, built, unit-tested against a
  # real gateway, type-checked with the example; the built gateway/static/chat-client.js must be
  # what the sources build to. Done before pytest, whose browser tests build the React example.
  (
    cd clients/js
    npm ci --no-audit --no-fund --loglevel=error
    npm run --silent check:built
    npm test
    npx --no-install tsc --noEmit -p tsconfig.json
  )
  exec python3 -m pytest -q "$@"
fi
exec python3 -m pytest -q -m "not slow" "$@"
