"""Models and images for the analysis commands.

A model is named on the command line in one of two ways:

* ``ARCH:MODEL_TYPE`` (e.g. ``xformer:tiny``): the registered model type's config, with
  ``--options`` overrides (``model.fusion=blip2``) and, with ``--checkpoint``, its weights;
* a path: a run's ``output_dir`` (its ``latest`` job), a job directory, or a checkpoint file
  written by LAVIS's runner. The model is rebuilt from the configuration stored in the
  checkpoint (so a variant's keys come back as trained) and the checkpoint loaded into it; the
  frozen parts that checkpoints leave out are rebuilt from that configuration (seeded for the
  tiny types, from their weight sources otherwise).

Images: the easy-VQA images with their captions (the ``easyvqa_caption`` dataset; default), or
a LAVIS-style caption annotation file (a JSON list of ``{"image": path, "caption": str}``,
paths relative to ``--image-root``), processed with the model type's eval processors.
"""
import glob
import json
import os
import re

import torch
from omegaconf import OmegaConf

from lavis_xformer.models import sources
from lavis_xformer.tools.results_io import ResultsError


class ToolError(ResultsError):
    """Bad command-line input for an analysis command; the message says how to fix it."""


_SPEC = re.compile(r"^[A-Za-z0-9_.]+:[A-Za-z0-9_.]+$")


def find_checkpoint(path):
    """The checkpoint file of a run output dir / job dir / file: the highest epoch, or 'best'."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(os.path.join(path, "latest")):
        # the job `latest` points at now (the link moves with the next run)
        path = os.path.realpath(os.path.join(path, "latest"))
    files = glob.glob(os.path.join(path, "checkpoint_*.pth"))
    if not files:
        raise ToolError("%s holds no checkpoint_*.pth: give a training run's output_dir, one of "
                        "its job directories or a checkpoint file" % path)
    best = [f for f in files if f.endswith("checkpoint_best.pth")]
    if best:
        return best[0]
    return max(files, key=lambda f: int(re.search(r"checkpoint_(\d+)\.pth$", f).group(1))
               if re.search(r"checkpoint_(\d+)\.pth$", f) else -1)


def model_config(spec, options=(), checkpoint=None):
    """(model config, checkpoint path or None, display name) of a model named on the command line."""
    from lavis.common.registry import registry

    import lavis_xformer  # noqa: F401  (registers the plugin's models)

    if _SPEC.match(spec) and not os.path.exists(spec):
        arch, model_type = spec.split(":")
        cls = registry.get_model_class(arch)
        if cls is None:
            raise ToolError("model %r: no model %r is registered (e.g. xformer:tiny, xformer:pretrain)"
                            % (spec, arch))
        cfg = OmegaConf.load(cls.default_config_path(model_type)).model
        cfg.model_type = model_type
        name = spec
    else:
        if not os.path.exists(spec):
            raise ToolError("model %r is neither ARCH:MODEL_TYPE (e.g. xformer:tiny) nor an "
                            "existing run folder or checkpoint file" % spec)
        if checkpoint:
            raise ToolError("--checkpoint goes with an ARCH:MODEL_TYPE model; %r is a path "
                            "already" % spec)
        checkpoint = find_checkpoint(spec)
        try:  # never runs code from the file (sources.read_checkpoint)
            saved = sources.read_checkpoint(checkpoint, "model %s" % spec)
        except sources.WeightSourceError as e:
            raise ToolError(str(e)) from None
        if not isinstance(saved, dict):
            saved = {}
        if "config" not in saved or "model" not in saved["config"]:
            raise ToolError("%s has no stored run configuration (not written by LAVIS's "
                            "runner); name the model as ARCH:MODEL_TYPE with --checkpoint" % checkpoint)
        cfg = OmegaConf.create(saved["config"]["model"])
        name = "%s (%s)" % (spec, os.path.basename(checkpoint))
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.startswith("model."):
            raise ToolError("--options %r: expected model.KEY=VALUE" % option)
        OmegaConf.update(cfg, key[len("model."):], OmegaConf.create({"v": _value(value)}).v)
    if checkpoint and not os.path.isfile(checkpoint):
        raise ToolError("--checkpoint %s: no such file" % checkpoint)
    cfg.pretrained = checkpoint
    cfg.load_pretrained = False
    return cfg, checkpoint, name


def _value(text):
    import yaml

    return yaml.safe_load(text)


def build_model(cfg):
    """The model of a config, in eval mode on the CPU (or the GPU when there is one)."""
    from lavis.common.registry import registry

    cls = registry.get_model_class(cfg.arch)
    if cls is None:
        raise ToolError("model.arch=%r is not a registered model" % cfg.arch)
    try:
        model = cls.from_config(cfg)
    except sources.WeightSourceError as e:  # unsafe, damaged or unfitting weights: one line
        raise ToolError(str(e)) from None
    model.eval()
    if torch.cuda.is_available():
        model = model.cuda()
    return model


def eval_processors(cfg):
    """(image, text) eval processors of the model type (its default config's ``preprocess``)."""
    from lavis.common.registry import registry
    from lavis.models import load_preprocess

    cls = registry.get_model_class(cfg.arch)
    full = OmegaConf.load(cls.default_config_path(cfg.get("model_type", "tiny")))
    vis, txt = load_preprocess(full.preprocess)
    return vis["eval"], txt["eval"]


def load_samples(cfg, annotations=None, image_root=None, split="test", max_images=16):
    """[(image tensor (3, H, W), caption str, image id)] from easy-VQA or an annotation file."""
    from PIL import Image

    vis, txt = eval_processors(cfg)
    if annotations is None:
        from lavis_xformer.datasets import easyvqa

        split_dir = os.path.join(easyvqa.package_data_root(), split)
        if not os.path.isdir(split_dir):
            raise ToolError("easy-VQA has no split %r (train, test)" % split)
        anns = easyvqa.load_annotations(split_dir, max_images)
        return [(vis(Image.open(a["image"]).convert("RGB")), txt(a["caption"]), a["image_id"])
                for a in anns]
    if not os.path.isfile(annotations):
        raise ToolError("--annotations %s: no such file" % annotations)
    with open(annotations) as f:
        anns = json.load(f)
    if not isinstance(anns, list) or not all(isinstance(a, dict) and "image" in a and "caption" in a
                                             for a in anns):
        raise ToolError("--annotations %s must be a JSON list of {\"image\": path, \"caption\": "
                        "text} (LAVIS's caption annotation format)" % annotations)
    out = []
    for i, a in enumerate(anns[:max_images]):
        path = os.path.join(image_root or os.path.dirname(os.path.abspath(annotations)), a["image"])
        if not os.path.isfile(path):
            raise ToolError("image %s of annotation %d not found (set --image-root)" % (path, i))
        caption = a["caption"][0] if isinstance(a["caption"], list) else a["caption"]
        out.append((vis(Image.open(path).convert("RGB")), txt(caption), a.get("image_id", i)))
    return out


def batches(samples, batch_size, device):
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        yield (torch.stack([s[0] for s in chunk]).to(device), [s[1] for s in chunk],
               [s[2] for s in chunk])


# --- Converting a from_pretrained folder -------------------------------------------------------

def convert_folder(source, target, overwrite=False):
    """``convert_checkpoint FOLDER NEW_FOLDER``: copy the from_pretrained folder ``source``
    (``model.mae_weights``, ``qformer_weights``, the LLM's) to ``target``, each pickled weights
    file (``pytorch_model.bin`` or its shards) converted by ``convert_checkpoint.convert`` (the
    trusted full unpickling) under its own name: transformers reads the converted file with
    torch's weights-only unpickler, and a shard index stays valid. The copy is built in a
    temporary folder renamed once complete; an existing ``target`` is replaced only with
    ``overwrite``, and then only once the new copy is complete."""
    import shutil

    from lavis_xformer.tools.convert_checkpoint import ConvertError, convert

    source, target = os.path.abspath(source), os.path.abspath(target)
    names = sorted(os.listdir(source))
    pickled = [n for n in names if sources.PICKLED_WEIGHTS.fullmatch(n)]
    if not pickled:
        raise ConvertError("%s holds no pytorch_model.bin (or shards of it) to convert" % source)
    if (target + os.sep).startswith(source + os.sep):
        raise ConvertError("write the converted folder beside %s, not inside it" % source)
    if os.path.lexists(target) and not (overwrite and os.path.isdir(target)):
        raise ConvertError("%s exists; %s, or choose another name" % (target, (
            "pass --overwrite to replace it" if os.path.isdir(target) else "it is not a folder")))
    tmp, old_copy = "%s.tmp-%d" % (target, os.getpid()), "%s.old-%d" % (target, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for name in names:
            old, new = os.path.join(source, name), os.path.join(tmp, name)
            if name in pickled:
                convert(old, new)
            elif os.path.isdir(old):
                shutil.copytree(old, new)
            else:
                shutil.copy2(old, new)
        if os.path.isdir(target):  # --overwrite: the old folder goes once the new one is whole
            os.rename(target, old_copy)
        os.rename(tmp, target)
        shutil.rmtree(old_copy, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
