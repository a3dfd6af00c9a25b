#!/usr/bin/env bash
# Installs gssl into ./.venv: torch pinned first (the CPU wheel on these machines; an unpinned torch
# would pull several GB of CUDA packages), then the project with its test and analysis extras, then
# Fashion-MNIST from Debian's dataset-fashion-mnist where apt is available (the quickstart's data), and
# Debian's chromium + chromium-driver for the report's browser test.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${GSSL_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,analysis,tensorboard]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "install.sh: could not install dataset-fashion-mnist; \`.venv/bin/gssl data download fashion-mnist\` fetches it instead" >&2
fi
# Headless Chromium + its driver for the report's browser test (tests/test_report_browser.py skips without them).
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "install.sh: could not install chromium and chromium-driver; the report's browser test will be skipped" >&2
fi
echo "install.sh: gssl installed in $(pwd)/.venv"
