"""A run's variant, named as the project files in ``projects/xformer/ablations/`` name it
(``xformer``, ``blip2``, ``concat``, ``early_ca``, ``no_itm``, ``no_rec``, ``clip_layer26``,
``frozen_fusion``, ...; several tags joined by '+').

The evaluation tasks record it forward in every metrics JSON (``evaluation.model_info``:
``model.variant``), so that ``tools/results_io`` reads it back instead of decoding it. For a
stage-2 or evaluation run the stage-1 ablation keys are followed back through
``model.pretrained`` (the earlier job's ``log.txt``, the run configuration LAVIS writes first).
"""
import json
import os


def run_config(job_dir):
    """The run configuration LAVIS writes first into ``<job>/log.txt`` (a dict), or None."""
    path = os.path.join(job_dir, "log.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read()
    try:
        config, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except json.JSONDecodeError:
        return None
    return config if isinstance(config, dict) and "model" in config else None


def _earlier_config(pretrained, job_dir):
    """The config of the job that wrote checkpoint ``pretrained`` (its folder's log.txt,
    searched as given, from the current directory, and from the parents of ``job_dir``), or
    None."""
    if isinstance(pretrained, (list, tuple)):  # checkpoints loaded in order: the last one's job
        pretrained = pretrained[-1] if pretrained else None
    if not pretrained or "://" in str(pretrained):
        return None
    candidates = [pretrained] if os.path.isabs(pretrained) else [pretrained] + [
        os.path.join(base, pretrained) for base in _parents(job_dir)]
    for path in candidates:  # the job folder's log.txt is enough (checkpoints may be gone)
        job = os.path.dirname(os.path.realpath(path))
        if os.path.isfile(os.path.join(job, "log.txt")):
            return run_config(job)
    return None


def _parents(path, depth=6):
    path = os.path.abspath(path)
    out = []
    for _ in range(depth):
        path = os.path.dirname(path)
        out.append(path)
    return out


def variant_tags(model_cfg):
    """Ablation tags of one model config (stage 1 or 2), in the ablation files' names."""
    tags = []
    source = model_cfg.get("mae_source", "mae")
    if source == "clip_layer":
        tags.append("clip_layer%s" % (model_cfg.get("clip_layer_index") or ""))
    elif source == "clip":
        tags.append("clip_recon")
    if model_cfg.get("fusion_self_attn") is False:
        tags.append("no_sa")
    if model_cfg.get("freeze_fusion"):
        tags.append("frozen_fusion")
    weights = model_cfg.get("loss_weights") or {}
    stage2 = str(model_cfg.get("arch", "")).startswith(("xformer_opt", "xformer_t5"))
    for name, tag in (("itc", "no_itc"), ("itm", "no_itm"), ("lm", "no_itg")):
        if not stage2 and name in weights and not float(weights[name]):
            tags.append(tag)
    rec = weights.get("rec")
    if rec is not None and model_cfg.get("fusion", "xformer") == "xformer" and source != "clip_layer":
        if not stage2 and not float(rec):
            tags.append("no_rec")
        if stage2 and float(rec):
            tags.append("rec_both")
    return tags


def describe_model(config, job_dir):
    """(variant, model) of a run config: variant as in projects/xformer/ablations/ (several
    tags joined by '+'), model as 'arch:model_type'."""
    model_cfg = config.get("model", {})
    fusion = model_cfg.get("fusion", "xformer")
    tags = variant_tags(model_cfg)
    earlier, seen = model_cfg, 0
    while seen < 3:  # stage 2 <- stage 1 through model.pretrained
        prev = _earlier_config(earlier.get("pretrained"), job_dir)
        if prev is None:
            break
        earlier = prev.get("model", {})
        tags += [t for t in variant_tags(earlier) if t not in tags]
        seen += 1
    variant = "+".join(tags) if tags else fusion
    if tags and fusion != "xformer":
        variant = fusion + "+" + variant
    model = "%s:%s" % (model_cfg.get("arch", "?"), model_cfg.get("model_type", "?"))
    return variant, model
