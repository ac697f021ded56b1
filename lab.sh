#!/usr/bin/env bash
# Long-Tail Lab set-up and entry points. Usage: ./lab.sh app | test | setup
# Installs what is missing (Debian packages, .venv, Python packages), then runs the command.
# LTLIB_TORCH=cpu installs PyTorch's CPU-only wheels into a new .venv (no CUDA libraries; README, "CPU-only install").
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP=$VENV/.ltlib-installed

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup() {
  case "${LTLIB_TORCH:-}" in
    "" | cpu) ;;
    *) echo "LTLIB_TORCH=$LTLIB_TORCH: allowed values are cpu, or unset for PyPI's default (CUDA on Linux)" >&2; exit 2 ;;
  esac
  local need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  [ -x $VENV/bin/python ] || python3 -m venv $VENV
  local want
  want=$( (cat pyproject.toml lab.sh; echo "torch=${LTLIB_TORCH:-}") | sha1sum | cut -c1-16)
  if [ "$(cat $STAMP 2>/dev/null)" != "$want" ]; then
    echo "installing Python packages into $VENV (first time: a few minutes)"
    $VENV/bin/python -m pip install -q --upgrade pip
    if [ "${LTLIB_TORCH:-}" = cpu ]; then  # first, so that the install below finds torch==2.14.1 already there
      if $VENV/bin/python -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
        echo "$VENV has a CUDA build of PyTorch, which pip would keep: remove $VENV, then run this again" >&2
        exit 2
      fi
      $VENV/bin/python -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch==2.14.1" "torchvision==0.29.1"
    fi
    $VENV/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[all]"
    echo "$want" > $STAMP
  fi
}

case "${1:-}" in
  setup) setup ;;
  app) setup; exec $VENV/bin/ltlib app "${@:2}" ;;  # its flags (127.0.0.1 only, …) are ltlib.cli.APP_FLAGS
  test)
    setup
    $VENV/bin/ruff check .
    $VENV/bin/ruff format --check .
    $VENV/bin/mypy
    exec $VENV/bin/python -m pytest "${@:2}"
    ;;
  *) echo "usage: ./lab.sh app | test | setup" >&2; exit 2 ;;
esac
