"""Models and images for the analysis commands.

A model is named on the command line in one of two ways:

* ``ARCH:MODEL_TYPE`` (e.g. ``xformer:tiny``): the registered model type's config, with
  ``--options`` overrides (``model.fusion=blip2``) and, with ``--checkpoint``, its weights;
* a path: a run's ``output_dir`` (its ``latest`` job), a job directory, or a checkpoint file
  written by LAVIS's runner. The model is rebuilt from the configuration stored in the
  checkpoint (so a variant's keys come back as trained) and the checkpoint loaded into it; the
  frozen parts that checkpoints leave out are rebuilt from that configuration (seeded for the
  tiny types, from their weight sources otherwise).

Both are built by the model factory (``lavis_xformer/factory.py``); ``--options`` are read by
the one ``--options`` parser (``training/run_files.py``).

Images: the easy-VQA images with their captions (the ``easyvqa_caption`` dataset; default), or
a LAVIS-style caption annotation file (a JSON list of ``{"image": path, "caption": str}``,
paths relative to ``--image-root``), processed with the model type's eval processors.
"""
import json
import os
import re

import torch

from lavis_xformer import factory
from lavis_xformer.models import sources
from lavis_xformer.tools.results_io import ResultsError
from lavis_xformer.training.run_files import option_dotlist, parse_options


class ToolError(ResultsError):
    """Bad command-line input for an analysis command; the message says how to fix it."""


_SPEC = re.compile(r"^[A-Za-z0-9_.]+:[A-Za-z0-9_.]+$")


def model_config(spec, options=(), checkpoint=None):
    """(model config, checkpoint path or None, display name) of a model named on the command line."""
    if _SPEC.match(spec) and not os.path.exists(spec):
        arch, model_type = spec.split(":")
        try:
            cfg = factory.model_config(arch, model_type)
        except factory.ModelTypeError as e:
            raise ToolError("model %r: %s" % (spec, e)) from None
        name = spec
    else:
        if not os.path.exists(spec):
            raise ToolError("model %r is neither ARCH:MODEL_TYPE (e.g. xformer:tiny) nor an "
                            "existing run folder or checkpoint file" % spec)
        if checkpoint:
            raise ToolError("--checkpoint goes with an ARCH:MODEL_TYPE model; %r is a path "
                            "already" % spec)
        try:  # never runs code from the file (sources.read_checkpoint)
            checkpoint = factory.find_checkpoint(spec)
            cfg = factory.saved_model_config(checkpoint)
        except (FileNotFoundError, factory.ModelTypeError) as e:
            raise ToolError(str(e)) from None
        name = "%s (%s)" % (spec, os.path.basename(checkpoint))
    factory.apply_overrides(cfg, model_options(options))
    if checkpoint and not os.path.isfile(checkpoint):
        raise ToolError("--checkpoint %s: no such file" % checkpoint)
    cfg.pretrained = checkpoint
    cfg.load_pretrained = False
    return cfg, checkpoint, name


def model_options(options):
    """The ``model`` section of the tools' ``--options model.KEY=VALUE ...``, read by the
    one ``--options`` parser (``training.run_files.parse_options``)."""
    try:  # ConfigError (a ValueError) says which option is not key=value or not YAML
        dotlist = option_dotlist(options)
        parsed = parse_options(dotlist)
    except ValueError as e:
        raise ToolError(str(e)) from None
    for option in dotlist:
        if not option.startswith("model."):
            raise ToolError("--options %r: expected model.KEY=VALUE" % option)
    return parsed.get("model", {})


def build_model(cfg):
    """The model of a config, in eval mode on the CPU (or the GPU when there is one)."""
    try:
        model = factory.build_model(cfg)
    except factory.ModelTypeError as e:
        raise ToolError("model.arch=%r: %s" % (cfg.arch, e)) from None
    except sources.WeightSourceError as e:  # unsafe, damaged or unfitting weights: one line
        raise ToolError(str(e)) from None
    model.eval()
    if torch.cuda.is_available():
        model = model.cuda()
    return model


def eval_processors(cfg):
    """(image, text) eval processors of the model type (its default config's ``preprocess``)."""
    from lavis.models import load_preprocess

    full = factory.type_config(cfg.arch, cfg.get("model_type", "tiny"))
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
