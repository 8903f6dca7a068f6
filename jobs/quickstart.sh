#!/usr/bin/env bash
# Set-up and the two quick-start commands of README.md.
#
#   bash jobs/quickstart.sh run    # install into .venv, then run the main job on the default
#   bash jobs/quickstart.sh test   # install into .venv, then lint and run the whole test suite
#
# Both are idempotent: the virtual environment is created once, and packages are installed
# again only when pyproject.toml changes. The pinned torch (torch==2.13.0) is installed first,
# so that no dependency pulls the newest torch (see README.md for a CPU-only wheel index).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "[setup] installing torch==$TORCH_VERSION"
    "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
  fi
  local stamp="$VENV/.lorap-installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ] || ! "$VENV/bin/python" -c "import lorap_dist" 2>/dev/null; then
    echo "[setup] installing lorap-dist and its dependencies"
    "$VENV/bin/pip" install --quiet -e ".[test]"
    rm -f "$VENV"/.lorap-installed-*
    touch "$stamp"
  fi
}

cmd=${1:-}
case "$cmd" in
  run)
    setup
    shift
    exec "$VENV/bin/python" jobs/main.py "$@"
    ;;
  test)
    setup
    shift
    echo "[test] ruff"
    "$VENV/bin/ruff" check lorap_dist kernels jobs benchmarks tests
    echo "[test] pytest"
    set +e
    "$VENV/bin/python" -m pytest -q -p lorap_dist.testing.collection_guard "$@"
    code=$?
    set -e
    if [ "$code" -eq 5 ]; then
      echo "[test] pytest collected no tests: failing" >&2
      exit 1
    fi
    exit "$code"
    ;;
  *)
    echo "usage: bash jobs/quickstart.sh run|test [args...]" >&2
    exit 2
    ;;
esac
