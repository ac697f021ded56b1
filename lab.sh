#!/usr/bin/env bash
# Long-Tail Lab set-up and entry points. Usage: ./lab.sh app | test | setup
# Installs what is missing (Debian packages, .venv, Python packages), then runs the command.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP=$VENV/.ltlib-installed

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup() {
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
  want=$(cat pyproject.toml lab.sh | sha1sum | cut -c1-16)
  if [ "$(cat $STAMP 2>/dev/null)" != "$want" ]; then
    echo "installing Python packages into $VENV (first time: a few minutes)"
    $VENV/bin/python -m pip install -q --upgrade pip
    $VENV/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[all]"
    echo "$want" > $STAMP
  fi
}

case "${1:-}" in
  setup) setup ;;
  app) setup; exec $VENV/bin/streamlit run app/Home.py --server.address 127.0.0.1 --client.showErrorDetails none "${@:2}" ;;
  test)
    setup
    $VENV/bin/ruff check .
    $VENV/bin/ruff format --check .
    exec $VENV/bin/python -m pytest "${@:2}"
    ;;
  *) echo "usage: ./lab.sh app | test | setup" >&2; exit 2 ;;
esac
