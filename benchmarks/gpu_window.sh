#!/usr/bin/env bash
# What a GPU window runs (issues 43 and 47; docs/results.md sections 1 and 5), within BUDGET seconds
# (default 540), every run's records handed back through $OUT:
#  1. first, the full-length CIFAR-10-LT campaign (configs/sweeps/cifar10-lt-full.yaml), BUDGET - GRID_S s;
#  2. then, the last GRID_S s (default 150; GSSL_GRID_S=0: none), issue 47's 45-epoch grid
#     (configs/sweeps/cifar10-lt-45ep-pretext.yaml), which takes this 2-core CPU about an hour a run and a
#     GPU seconds: compiled, in fp32 as its CPU runs trained, as many at once as step 1 measured fastest.
# Any further arguments go to both `gssl campaign` commands (e.g. --dry-run). With the device tool, after
# copying the CIFAR-10 archive into the git-ignored .device-data/ (mkdir -p .device-data && cp
# ../shared/data/cifar-10-jpg.tar.gz .device-data/):
#   run(command="bash benchmarks/gpu_window.sh 540", carry=[".device-data"], timeout_s=600)
# then here: gssl campaign configs/sweeps/cifar10-lt-full.yaml --collect FILES_AT/cifar10-lt-full
#       and: gssl campaign configs/sweeps/cifar10-lt-45ep-pretext.yaml --collect FILES_AT/cifar10-lt-45ep-pretext
# The runs' own logs come back in $OUT/logs (for reading, never committed). PYTHON: another interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
budget=${1:-540}
shift $(($# > 0 ? 1 : 0))
grid_s=${GSSL_GRID_S:-150}
if ! [ "$grid_s" -ge 0 ] 2>/dev/null || [ "$grid_s" -ge "$budget" ]; then
  echo "gpu_window.sh: GSSL_GRID_S=$grid_s: expected whole seconds from 0 to under the budget ($budget)" >&2
  exit 2
fi
data=.device-data/cifar-10-jpg.tar.gz
campaign() { PYTHONPATH=src "${PYTHON:-python3}" -m gssl campaign "$@"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
campaign configs/sweeps/cifar10-lt-full.yaml --budget-s "$((budget - grid_s))" --calibrate \
  --export "$OUT/cifar10-lt-full" --set data.root="$data" "$@"
status=$?
if [ "$grid_s" -gt 0 ]; then
  measured=()  # step 1's calibration (absent only if step 1 did not get that far: then the file's number)
  [ -f results/cifar10-lt-full/calibration.json ] && measured=(--calibration-from results/cifar10-lt-full)
  campaign configs/sweeps/cifar10-lt-45ep-pretext.yaml --budget-s "$grid_s" "${measured[@]}" \
    --export "$OUT/cifar10-lt-45ep-pretext" --set data.root="$data" --set compile=true --set precision=fp32 "$@"
  grid_status=$?
  [ "$status" = 0 ] && status=$grid_status
fi
for out in cifar10-lt-full cifar10-lt-45ep-pretext; do
  if [ -d "results/$out/logs" ]; then mkdir -p "$OUT/logs" && cp -r "results/$out/logs" "$OUT/logs/$out"; fi
done
exit "$status"
