#!/usr/bin/env bash
# What a GPU window runs first (issue 43; docs/results.md section 1): the full-length CIFAR-10-LT campaign
# within BUDGET seconds (default 540), every run's records handed back through $OUT; any further
# arguments go to `gssl campaign` (e.g. --dry-run). With the device tool, after copying the CIFAR-10
# archive into the git-ignored .device-data/ (mkdir -p .device-data && cp ../shared/data/cifar-10-jpg.tar.gz
# .device-data/):
#   run(command="bash benchmarks/gpu_window.sh 540", carry=[".device-data"], timeout_s=600)
# then here: gssl campaign configs/sweeps/cifar10-lt-full.yaml --collect FILES_AT/cifar10-lt-full
# The runs' own logs come back in $OUT/logs (for reading, never committed). PYTHON: another interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
budget=${1:-540}
shift $(($# > 0 ? 1 : 0))
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
PYTHONPATH=src "${PYTHON:-python3}" -m gssl campaign configs/sweeps/cifar10-lt-full.yaml --budget-s "$budget" --calibrate \
  --export "$OUT/cifar10-lt-full" --set data.root=.device-data/cifar-10-jpg.tar.gz "$@"
status=$?
if [ -d results/cifar10-lt-full/logs ]; then cp -r results/cifar10-lt-full/logs "$OUT/logs"; fi
exit "$status"
