#!/usr/bin/env bash
# The miniature world's finding (lavis_xformer/configs/world/finding.yaml) in one call THERE (a
# GPU machine; after bench/device/prepare.sh ran here, with .whl carried):
#   the world (built on the CPU), the three frozen parts (CLIP side, MAE, OPT) trained on the GPU,
#   then 3 variants x 3 seeds of stage 1, stage 2 and the three held-out evaluations, all on the
#   GPU, PARALLEL pipelines at once (default 9: every pipeline of the finding together).
# Results (report.json, report.txt, comparison.md, comparison.png) go to $1 (default
# /tmp/mini-finding; world.main refuses a folder that holds a report.json already, OVERWRITE=1
# replaces it); the runs' logs stay in the run's job folder, output/finding/latest/runs/.
#   there:  bash bench/device/mini_finding.sh "$OUT"
# CONFIG (default finding), DEVICE (default cuda) and PARALLEL change what and how it runs;
# `CONFIG=ci DEVICE=cpu PARALLEL=2` runs the CI-sized world through the same path on a CPU.
# Not run on a GPU yet (no device was lent to the session that wrote it): its CPU path is
# tested (tests/test_world_device.py).
set -euo pipefail
RESULTS=${1:-/tmp/mini-finding}
source bench/device/site.sh
# every process (each `python -m lavis.train` that world.main starts too) gets the plugin's hook
export PYTHONPATH=$PWD/bench/device/boot:$PYTHONPATH
if [ "${DEVICE:-cuda}" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
python3 -m lavis_xformer.world.main --config "${CONFIG:-finding}" --device "${DEVICE:-cuda}" \
    --parallel "${PARALLEL:-9}" --cache-dir /tmp/mini-cache --results-dir "$RESULTS" ${OVERWRITE:+--overwrite}
