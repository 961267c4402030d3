#!/usr/bin/env bash
# The paper-size GPU speed figures (issue #16) in one call THERE (an H100/H200; after bench/device/prepare.sh ran
# here, with .whl and .bench-assets carried), each part under its own time limit so that one
# failure leaves the others' results. JSON files and logs go to $1 (default /tmp/paper_speed).
# Paper size, fp16, batch 104 unless said; expected total about 9 minutes on an H200:
#   stock      stock LAVIS Blip2Qformer vs plugin BLIP-2 vs X-Former, stage-1 step, 30 rounds
#   stage2     X-Former vs BLIP-2 with OPT-2.7B, stage-2 step (images/s; target 330+)
#   speedwork  each change undone in turn (shared image K/V, fused AdamW, attention, MAE fp32)
#   fp8        frozen CLIP ViT and MAE encoder in fp8: speed and cosine similarity to fp16
#   fp8step    stage-1 step with vit_precision/mae_precision fp8
#   batch210   stage-1 step at 210 per GPU (8 GPUs x 210 = BLIP-2's global 1680): images/s, memory
#   compile    stage-1 step with every compile_modules entry (compile time in the log)
set -uo pipefail
OUT=${1:-/tmp/paper_speed}; mkdir -p "$OUT"
B="bash bench/device/run.sh --size paper --device cuda"
part() {  # name, seconds, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
    echo "== $name: exit $rc, $((SECONDS - t0)) s"; grep -v -i warn "$OUT/$name.log" | tail -14
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
part stock 150 $B --parts stock --repeats 30 --out "$OUT/paper-stock.json"
part stage2 100 $B --parts stage2 --repeats 30 --out "$OUT/paper-stage2.json"
part speedwork 200 $B --parts speedwork --repeats 30 --out "$OUT/paper-speedwork.json"
part fp8 60 bash bench/device/run.sh --module bench.fp8 --tokenizer .bench-assets/bert-base-uncased --out "$OUT/paper-fp8.json"
part fp8step 70 $B --parts stage1 --repeats 20 --model-options vit_precision=fp8,mae_precision=fp8 --out "$OUT/paper-stage1-fp8.json"
part batch210 70 $B --parts stage1 --repeats 15 --batch-size 210 --out "$OUT/paper-stage1-b210.json"
part compile 200 $B --parts stage1 --repeats 20 --model-options "compile_modules=[qformer,fusion,mae_decoder,vit_norm]" --out "$OUT/paper-stage1-compiled.json"
