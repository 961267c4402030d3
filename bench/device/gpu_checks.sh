#!/usr/bin/env bash
# GPU check of resuming THERE (after bench/device/prepare.sh here; carry .whl and
# .bench-assets): the tiny stage 1 on CUDA (amp, fp16 frozen ViT and MAE, loader workers,
# LAVIS's prefetching loader), once uninterrupted and once killed (SIGKILL) after its
# mid-epoch checkpoint and resumed from it; compares the final weights. Logs go to $1.
set -uo pipefail
LOGS=${1:-/tmp/gpu-checks}; mkdir -p "$LOGS"; W=/tmp/gpu-checks-runs; rm -rf "$W"
R="bash bench/device/run.sh --module"
M="model.qformer_weights=null model.tokenizer=.bench-assets/bert-base-uncased model.vit_precision=fp16 model.mae_precision=fp16"
G="run.device=cuda run.amp=True run.num_workers=2"
S1="--cfg-path projects/xformer/tiny/stage1.yaml --options $G $M datasets.easyvqa_caption.build_info.max_images=128 run.checkpoint_every_iters=4"
$R lavis_xformer.train $S1 run.output_dir=$W/full > "$LOGS/full.log" 2>&1; echo "uninterrupted: exit $?"
$R lavis_xformer.train $S1 run.output_dir=$W/killed > "$LOGS/killed.log" 2>&1 &
PID=$!
for _ in $(seq 600); do ls $W/killed/*/checkpoint_0_iter4.pth >/dev/null 2>&1 && break; sleep 0.1; done
pkill -9 -f "output_dir=$W/killed"; wait $PID; echo "killed after iteration 4: exit $?"
$R lavis_xformer.train $S1 run.output_dir=$W/killed run.resume_ckpt_path=$W/killed/latest > "$LOGS/resumed.log" 2>&1; echo "resumed: exit $?"
PYTHONPATH=/tmp/site:$PWD python3 - "$W" <<'PY'
import glob, sys, torch
full, resumed = (torch.load(sorted(glob.glob(f"{sys.argv[1]}/{run}/*/checkpoint_0.pth"))[-1],
                            map_location="cpu", weights_only=True)["model"] for run in ("full", "killed"))
diff = max((full[k].float() - resumed[k].float()).abs().max().item() for k in full)
print("resumed vs uninterrupted: %d tensors, identical: %s, max abs difference %.3g"
      % (len(full), all(torch.equal(full[k], resumed[k]) for k in full), diff))
PY
