"""``python -m bench.fp8``: the frozen encoders in fp8 against fp16, on one model (a GPU with fp8
tensor cores; see lavis_xformer/models/fp8.py).

Builds X-Former stage 1 (``--size``, random weights) with fp16 encoders, times the frozen CLIP
ViT and the MAE encoder (on the visible half, as in training, and on the whole image), keeps
their features, converts the same weights to fp8 in place and repeats: speed ratios (median
of per-round paired ratios, 95% CI) and fidelity as the cosine similarity of each token's
feature to fp16 (mean and 1st percentile). With random weights the activations lack the
outliers trained encoders have, so the fidelity here is an upper bound: check it on the
trained encoders before switching fp8 on (docs/performance.md).
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F

from bench import measure
from bench.models import build


def cosine(a, b):
    c = F.cosine_similarity(a.float().flatten(0, -2), b.float().flatten(0, -2), dim=-1)
    return {"mean": c.mean().item(), "p01": torch.quantile(c, 0.01).item(), "min": c.min().item()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.fp8", description=__doc__)
    p.add_argument("--size", default="paper")
    p.add_argument("--batch-size", type=int, default=104)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--out", default="bench/results/paper-fp8.json")
    args = p.parse_args(argv)
    from lavis_xformer.models import fp8

    device = "cuda"
    fp8.check_fp8_device("vit_precision")
    tok = {"tokenizer": args.tokenizer} if args.tokenizer else {}
    model = build(args.size, 1, "xformer", device, tok, {"vit_precision": "fp16", "mae_precision": "fp16"})
    model.train()  # the MAE encoder sees the visible half, as in a training step
    torch.manual_seed(0)
    image = torch.randn(args.batch_size, 3, model.image_size, model.image_size, device=device)

    def run_all():
        torch.manual_seed(1)  # the same patch mask for both precisions
        with torch.no_grad():
            return {"clip_vit": model.encode_clip(image),
                    "mae_encoder 50% masked": model.encode_side(image, model.mask_ratio).tokens,
                    "mae_encoder unmasked": model.encode_side(image, 0.0).tokens}

    steps = {"clip_vit": lambda: model.encode_clip(image),
             "mae_encoder 50% masked": lambda: model.encode_side(image, model.mask_ratio),
             "mae_encoder unmasked": lambda: model.encode_side(image, 0.0)}
    clock = measure.Clock(device)
    ref = run_all()
    fp16 = measure.alternate(steps, clock, 3, args.repeats, device)
    converted = {"clip_vit": fp8.convert_to_fp8(model.visual_encoder),
                 "mae_encoder": fp8.convert_to_fp8(model.mae_branch.mae.vit)}
    got = run_all()
    fp8_times = measure.alternate(steps, clock, 3, args.repeats, device)
    report = {"size": args.size, "batch_size": args.batch_size, "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__, "fp8_layers": converted, "results": {}}
    for name in steps:
        r = {"fp16_ms": fp16[name]["median_ms"], "fp8_ms": fp8_times[name]["median_ms"],
             "fp8/fp16": measure.paired_ratio(fp8_times[name]["times_ms"], fp16[name]["times_ms"]),
             "cosine_to_fp16": cosine(got[name], ref[name])}
        report["results"][name] = r
        ci = r["fp8/fp16"]["ci"]
        print("%-24s fp16 %8.2f ms  fp8 %8.2f ms  x%.3f [%.3f, %.3f]  cosine mean %.5f p01 %.5f" % (
            name, r["fp16_ms"], r["fp8_ms"], r["fp8/fp16"]["median"], ci[0], ci[1],
            r["cosine_to_fp16"]["mean"], r["cosine_to_fp16"]["p01"]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
