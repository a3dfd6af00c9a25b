#!/usr/bin/env bash
# Installs gssl into ./.venv, one numbered step at a time, with pip's and apt's own progress shown:
#  1. torch, pinned first (GSSL_TORCH_VERSION, default 2.13.0): an unpinned torch would let the resolver
#     choose a build and pull several GB of CUDA packages along. The pin fixes the version, not the build:
#     PyPI's Linux torch is the CUDA build (with its nvidia-* packages); GSSL_TORCH_INDEX names the index
#     to take torch from instead, e.g. https://download.pytorch.org/whl/cpu for the CPU build (a wheel in
#     pip's own find-links, such as the CPU wheel on the machines gssl is developed on, is used as is).
#  2. gssl itself with its test, analysis and tensorboard extras.
#  3. Fashion-MNIST from Debian's dataset-fashion-mnist (the quickstart's data), as root where apt exists.
#  4. Only with GSSL_INSTALL_BROWSER=1: Debian's chromium + chromium-driver, as root, for the report's
#     browser test (tests/test_report_browser.py skips without them).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
say() { echo "install.sh: $*"; }
as_root_with_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
apt_install() { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; }

TORCH="torch==${GSSL_TORCH_VERSION:-2.13.0}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ -n "${GSSL_TORCH_INDEX:-}" ]; then
  say "[1/4] $TORCH from $GSSL_TORCH_INDEX"
  .venv/bin/python -m pip install --disable-pip-version-check --index-url "$GSSL_TORCH_INDEX" "$TORCH"
else
  say "[1/4] $TORCH from pip's configured index (PyPI: the CUDA build; GSSL_TORCH_INDEX picks another)"
  .venv/bin/python -m pip install --disable-pip-version-check "$TORCH"
fi
say "[2/4] gssl with its test, analysis and tensorboard extras"
.venv/bin/python -m pip install --disable-pip-version-check -e ".[test,analysis,tensorboard]"
if [ -d /usr/share/datasets/fashion-mnist ]; then
  say "[3/4] Fashion-MNIST: already in /usr/share/datasets/fashion-mnist"
elif as_root_with_apt; then
  say "[3/4] Fashion-MNIST: apt-get install dataset-fashion-mnist"
  apt_install dataset-fashion-mnist \
    || say "could not install dataset-fashion-mnist; \`.venv/bin/gssl data download fashion-mnist\` fetches it instead" >&2
else
  say "[3/4] Fashion-MNIST: not installed (needs root and apt); \`.venv/bin/gssl data download fashion-mnist\` fetches it"
fi
if command -v chromedriver >/dev/null 2>&1; then
  say "[4/4] chromium-driver: already installed (the report's browser test runs)"
elif [ "${GSSL_INSTALL_BROWSER:-0}" = 1 ] && as_root_with_apt; then
  say "[4/4] GSSL_INSTALL_BROWSER=1: apt-get install chromium chromium-driver"
  apt_install chromium chromium-driver \
    || say "could not install chromium and chromium-driver; the report's browser test will be skipped" >&2
elif [ "${GSSL_INSTALL_BROWSER:-0}" = 1 ]; then
  say "[4/4] GSSL_INSTALL_BROWSER=1 needs root and apt; install chromium and chromium-driver yourself" >&2
else
  say "[4/4] no browser installed: the report's browser test will skip (GSSL_INSTALL_BROWSER=1 installs chromium and chromium-driver)"
fi
say "gssl installed in $(pwd)/.venv"
