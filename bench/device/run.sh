#!/usr/bin/env bash
# Run THERE (the GPU machine), in the repo root, after bench/device/prepare.sh ran here and
# with .whl and .bench-assets carried along. Installs the carried packages into /tmp/site
# once (nothing of the machine's own Python changes), then runs the benchmark; arguments go
# to `python -m bench` (or, after `--module NAME`, to that module, e.g. lavis_xformer.train).
set -euo pipefail
source bench/device/site.sh
if [ "${1:-}" = "--module" ]; then
    exec python3 -m bench.device "$@"
fi
exec python3 -m bench.device --tokenizer .bench-assets/bert-base-uncased "$@"
