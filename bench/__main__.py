"""``python -m bench``: BLIP-2 vs X-Former, side by side (see bench/__init__.py).

    python -m bench --size tiny                      # CPU, seconds
    python -m bench --size base --batch-size 8       # CPU, minutes
    python -m bench --size paper --device cuda       # GPU: the paper's encoders and OPT-2.7B
    python -m bench --parts stock                    # stock LAVIS Blip2Qformer vs plugin BLIP-2 vs X-Former

Writes a JSON file (``--out``, default ``bench/results/<size>-<device>.json``) and prints a
table: median step time, images per second, peak memory and the X-Former / BLIP-2 ratio of
each, for stage-1 training, stage-2 training, caption generation and VQA answering; then the
per-component breakdown and the analytic FLOP ratio of each step. Every part times its models
in the same rounds (``--repeats``, 30 by default, after ``--warmup``), one step of each per
round in a rotating order, and reports each time ratio as the median of the per-round ratios
with the order-statistic 95% confidence interval of that median (``measure.paired_ratio``).
"""
import argparse
import datetime
import gc
import json
import os
import platform
import sys

import torch

from bench import measure
from bench.inputs import CAPTIONS, QUESTIONS, images, texts
from bench.models import SIZES, VARIANTS, build

PARTS = ("stage1", "stage2", "inference", "components", "speedwork", "stock")
# The speed work, undone one change at a time (``speedwork``): model-config overrides.
# "optimizer" is not a model key: the step's AdamW (fused on CUDA unless "foreach").
SPEEDWORK = {
    "blip2, eager attention": ("blip2", {"fused_attention": False}),
    "blip2": ("blip2", {}),
    "xformer": ("xformer", {}),
    "xformer, eager attention": ("xformer", {"fused_attention": False}),
    "xformer, MAE in fp32": ("xformer", {"mae_precision": "fp32"}),
    "xformer, image keys/values not shared": ("xformer", {"share_image_kv": False}),
    "xformer, foreach AdamW": ("xformer", {"optimizer": "foreach"}),
}
# GPU batch sizes from the paper's set-up (BLIP-2's: 1680 images over 16 GPUs in stage 1,
# 1920 with OPT in stage 2); inference at 64 images. CPU defaults keep a run to minutes.
DEFAULT_BATCH = {"cuda": {"stage1": 104, "stage2": 120, "inference": 64},
                 "cpu": {"stage1": 8, "stage2": 8, "inference": 4}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parts", default="stage1,stage2,inference,components",
                   help="comma-separated subset of " + ",".join(PARTS))
    p.add_argument("--batch-size", type=int, default=None,
                   help="one batch size for every part (default: per part, see DEFAULT_BATCH)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30,
                   help="timed rounds per part (one step of each model per round, order rotating)")
    p.add_argument("--model-options", default="",
                   help="model-config overrides for every benchmarked model, key=value,... "
                        "(e.g. compile_modules=[fusion,mae_decoder],vit_precision=fp8)")
    p.add_argument("--caption-length", type=int, default=20,
                   help="caption tokens generated (max; min = max, counted with the prompt)")
    p.add_argument("--answer-length", type=int, default=5, help="answer tokens generated (max; min = max, counted with the prompt)")
    p.add_argument("--no-amp", action="store_true", help="GPU: train in fp32 instead of fp16 autocast")
    p.add_argument("--tokenizer", default=None, help="BERT vocab (hub name or directory)")
    p.add_argument("--llm-tokenizer", default=None, help="OPT tokenizer (hub name or directory)")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    args.model_options = parse_options(args.model_options)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown --parts {sorted(unknown)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    return args


def parse_options(text):
    """"a=1,b.c=x,d=[p,q]" -> {"a": 1, "b": {"c": "x"}, "d": ["p", "q"]}: the items between
    top-level commas, read by the one --options parser (training/run_files.parse_options)."""
    from omegaconf import OmegaConf

    from lavis_xformer.training.run_files import parse_options as parse_dotlist

    items, depth, item = [], 0, ""
    for ch in text + ",":
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items += [item.strip()] if item.strip() else []
            item = ""
        else:
            item += ch
    try:
        return OmegaConf.to_container(parse_dotlist(items))
    except ValueError as e:  # ConfigError: the option that is not key=value or not YAML
        raise SystemExit(f"--model-options: {e}")


def batch_size(args, part):
    return args.batch_size or DEFAULT_BATCH[torch.device(args.device).type][part]


def train_step(model, samples, device, amp, optimizer="auto"):
    """One optimisation step as LAVIS's runner takes it with ``run.amp`` (fp16 autocast and a
    GradScaler on a GPU); runner_xformer's AdamW (fused on CUDA) unless ``optimizer`` is
    "foreach" (LAVIS's RunnerBase's)."""
    from lavis_xformer.optims import adamw

    cuda = torch.device(device).type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, fused=False if optimizer == "foreach" else None, lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp)

    def step():
        with torch.autocast("cuda", enabled=cuda and amp):
            loss = model(samples)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    step.optimizer = optimizer
    return step


def model_memory_mib(model, optimizer=None):
    """Parameters, buffers and optimizer state of one model (MiB)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def compare(name, steps, args, batch, extra_memory=None, inference=False):
    """Time the two models' steps alternately; add throughput, memory and FLOP ratios.
    ``inference``: time the steps under ``torch.inference_mode`` (FLOPs are counted without
    it: PyTorch's dispatch modes do not see inference-mode ops)."""
    clock = measure.Clock(args.device)
    flops = {v: measure.count_flops(fn) for v, fn in steps.items()}
    if inference:
        steps = {v: (lambda fn=fn: _inference(fn)) for v, fn in steps.items()}
    result = measure.alternate(steps, clock, args.warmup, args.repeats, args.device)
    for variant, r in result.items():
        r["images_per_s"] = batch * 1e3 / r["median_ms"]
        r["flops"] = flops[variant]
        if r["peak_memory_mib"] is not None and extra_memory:
            r["peak_memory_mib"] += extra_memory[variant]()
    out = {"batch_size": batch, **result}
    paired = measure.paired_ratio(result["xformer"]["times_ms"], result["blip2"]["times_ms"])
    out["ratio"] = {
        "time": paired["median"],  # median of the per-round X-Former / BLIP-2 ratios
        "time_ci": paired["ci"],
        "time_paired": paired,
        "flops": flops["xformer"] / flops["blip2"] if flops["blip2"] else None,
        "peak_memory": (result["xformer"]["peak_memory_mib"] / result["blip2"]["peak_memory_mib"]
                        if result["blip2"]["peak_memory_mib"] else None),
    }
    print_row(name, out)
    return out


def _inference(fn):
    with torch.inference_mode():
        return fn()


def bench_training(stage, args):
    batch = batch_size(args, f"stage{stage}")
    models = {v: build(args.size, stage, v, args.device, tokenizers(args), args.model_options)
              for v in VARIANTS}
    steps, memory = {}, {}
    for v, model in models.items():
        model.train()
        samples = {"image": images(model, batch, args.device), "text_input": texts(CAPTIONS, batch)}
        steps[v] = train_step(model, samples, args.device, not args.no_amp)
        memory[v] = (lambda m=model, o=steps[v].optimizer: model_memory_mib(m, o))
    result = compare(f"stage {stage} training step", steps, args, batch, memory)
    result["trainable_params"] = {v: sum(p.numel() for p in m.parameters() if p.requires_grad)
                                  for v, m in models.items()}
    return result, models


def bench_inference(models, args):
    batch = batch_size(args, "inference")
    results = {}
    for task in ("caption", "vqa"):
        steps = {}
        for v, model in models.items():
            model.eval()
            image = images(model, batch, args.device)
            if task == "caption":
                steps[v] = (lambda m=model, x=image: m.generate(
                    {"image": x}, num_beams=5, max_length=args.caption_length, min_length=args.caption_length))
            else:
                q = texts(QUESTIONS, batch)
                steps[v] = (lambda m=model, x=image, q=q: m.predict_answers(
                    {"image": x, "text_input": q}, num_beams=5, max_len=args.answer_length,
                    min_len=args.answer_length))
        memory = {v: (lambda m=m: model_memory_mib(m)) for v, m in models.items()}
        results[task] = compare(f"inference: {task} (beam 5)", steps, args, batch, memory, inference=True)
    return results


def tokenizers(args):
    return {k: v for k, v in (("tokenizer", args.tokenizer), ("llm_tokenizer", args.llm_tokenizer)) if v}


def bench_speedwork(args):
    """Stage-1 training step with each piece of the speed work undone (SPEEDWORK), side by
    side; the fused attention also serves BLIP-2, so stock BLIP-2 is among them."""
    batch = batch_size(args, "stage1")
    steps, memory = {}, {}
    for name, (variant, overrides) in SPEEDWORK.items():
        overrides = {**args.model_options, **overrides}
        optimizer = overrides.pop("optimizer", "auto")
        model = build(args.size, 1, variant, args.device, tokenizers(args), overrides)
        model.train()
        samples = {"image": images(model, batch, args.device), "text_input": texts(CAPTIONS, batch)}
        steps[name] = train_step(model, samples, args.device, not args.no_amp, optimizer)
        memory[name] = (lambda m=model, o=steps[name].optimizer: model_memory_mib(m, o))
    result = measure.alternate(steps, measure.Clock(args.device), args.warmup, args.repeats, args.device)
    print("\nstage 1 training step, speed work undone one change at a time (batch %d)" % batch)
    for name, r in result.items():
        if r["peak_memory_mib"] is not None:
            r["peak_memory_mib"] += memory[name]()
        base = "xformer" if name.startswith("xformer") else "blip2"
        r["ratio_to_" + base] = measure.paired_ratio(r["times_ms"], result[base]["times_ms"])
        print("  %-40s %10.1f ms  %s%s" % (name, r["median_ms"], format_ratio(r["ratio_to_" + base]),
              "" if r["peak_memory_mib"] is None else "  %.0f MiB" % r["peak_memory_mib"]))
    return {"batch_size": batch, **result}


def format_ratio(paired):
    ci = paired["ci"]
    return "x%.3f%s" % (paired["median"], "" if ci is None else " [%.3f, %.3f]" % tuple(ci))


STOCK_PAIRS = (("xformer", "stock"), ("blip2", "stock"), ("xformer", "blip2"))


def bench_stock(args):
    """Stage-1 training step of stock LAVIS BLIP-2 (``Blip2Qformer``, bench/stock.py), this
    plugin's BLIP-2 (``fusion: blip2``) and X-Former, in the same rounds; per-round paired
    ratios with the 95% confidence interval of their median."""
    from bench.stock import one_process_group, stock_blip2

    batch = batch_size(args, "stage1")
    with one_process_group(args.device):
        models = {"stock": stock_blip2(args.size, args.device, tokenizers(args))}
        for v in VARIANTS:
            models[v] = build(args.size, 1, v, args.device, tokenizers(args), args.model_options)
        steps, memory = {}, {}
        for name, model in models.items():
            model.train()
            samples = {"image": images(model, batch, args.device), "text_input": texts(CAPTIONS, batch)}
            # stock: LAVIS's RunnerBase's optimizer (foreach AdamW), as a stock run has it
            steps[name] = train_step(model, samples, args.device, not args.no_amp,
                                     "foreach" if name == "stock" else "auto")
            memory[name] = (lambda m=model, o=steps[name].optimizer: model_memory_mib(m, o))
        flops = {name: measure.count_flops(fn) for name, fn in steps.items()}
        result = measure.alternate(steps, measure.Clock(args.device), args.warmup, args.repeats, args.device)
    print("\nstage 1 training step: stock LAVIS Blip2Qformer, plugin BLIP-2, X-Former "
          "(batch %d, %d rounds; per-round ratio median [95%% CI])" % (batch, args.repeats))
    for name, r in result.items():
        r["images_per_s"] = batch * 1e3 / r["median_ms"]
        r["flops"] = flops[name]
        if r["peak_memory_mib"] is not None:
            r["peak_memory_mib"] += memory[name]()
        print("  %-8s %10.1f ms %8.1f img/s  %.3g FLOP%s" % (
            name, r["median_ms"], r["images_per_s"], r["flops"],
            "" if r["peak_memory_mib"] is None else "  %.0f MiB" % r["peak_memory_mib"]))
    ratios = {}
    for a, b in STOCK_PAIRS:
        ratios[f"{a}/{b}"] = measure.paired_ratio(result[a]["times_ms"], result[b]["times_ms"])
        ratios[f"{a}/{b}"]["flops"] = flops[a] / flops[b]
        print("  %-16s time %s (range %.3f-%.3f), FLOPs x%.3f" % (
            f"{a}/{b}", format_ratio(ratios[f"{a}/{b}"]), ratios[f"{a}/{b}"]["min"],
            ratios[f"{a}/{b}"]["max"], ratios[f"{a}/{b}"]["flops"]))
    return {"batch_size": batch, **result, "ratio": ratios}


def bench_components(stage1, stage2, args):
    """Each part of X-Former's image path timed alone, as it runs in a training step (frozen
    encoders forward only, trained parts forward + backward) and at inference (forward only)."""
    from bench.components import component_steps

    clock = measure.Clock(args.device)
    steps = component_steps(stage1, stage2, batch_size(args, "stage1"), args)
    result = measure.alternate(steps, clock, args.warmup, args.repeats, args.device)
    print("\nper component (X-Former at batch %d; BLIP-2 has every row but mae_* and xformer_block)"
          % batch_size(args, "stage1"))
    for name, r in result.items():
        mem = "" if r["peak_memory_mib"] is None else "  peak +%.0f MiB" % r["peak_memory_mib"]
        print("  %-34s %10.2f ms%s" % (name, r["median_ms"], mem))
    return result


def print_row(name, r):
    b, x = r["blip2"], r["xformer"]
    mem = lambda v: "-" if v is None else "%.0f MiB" % v  # noqa: E731
    print("%-30s BLIP-2 %9.1f ms %8.1f img/s %10s | X-Former %9.1f ms %8.1f img/s %10s | "
          "time %s, x%.3f FLOPs%s" % (
              name, b["median_ms"], b["images_per_s"], mem(b["peak_memory_mib"]),
              x["median_ms"], x["images_per_s"], mem(x["peak_memory_mib"]),
              format_ratio(r["ratio"]["time_paired"]), r["ratio"]["flops"] or float("nan"),
              "" if r["ratio"]["peak_memory"] is None else ", x%.3f memory" % r["ratio"]["peak_memory"]))


def machine(device):
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    import transformers

    info["transformers"] = transformers.__version__
    return info


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    print(f"bench: size={args.size} device={args.device} parts={','.join(args.parts)} "
          f"warmup={args.warmup} repeats={args.repeats}", flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python -m bench"] + (argv if argv is not None else sys.argv[1:])),
              "size": args.size, "device": args.device, "machine": machine(args.device),
              "amp": not args.no_amp, "results": {}}
    stage1 = stage2 = None
    if "stage1" in args.parts:
        report["results"]["stage1_train"], stage1 = bench_training(1, args)
    if {"stage2", "inference", "components"} & set(args.parts):
        if "stage2" in args.parts:
            report["results"]["stage2_train"], stage2 = bench_training(2, args)
        else:
            stage2 = {v: build(args.size, 2, v, args.device, tokenizers(args), args.model_options) for v in VARIANTS}
    if "inference" in args.parts:
        report["results"]["inference"] = bench_inference(stage2, args)
    if "components" in args.parts:
        if stage1 is None:
            stage1 = {v: build(args.size, 1, v, args.device, tokenizers(args), args.model_options) for v in VARIANTS}
        report["results"]["components"] = bench_components(stage1["xformer"], stage2["xformer"], args)
    if "speedwork" in args.parts:
        report["results"]["speedwork"] = bench_speedwork(args)
    if "stock" in args.parts:
        report["results"]["stock"] = bench_stock(args)
    out = args.out or os.path.join("bench", "results", f"{args.size}-{torch.device(args.device).type}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {out}")
    del stage1, stage2
    gc.collect()
    return report


if __name__ == "__main__":
    main()
