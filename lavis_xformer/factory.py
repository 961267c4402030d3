"""Build a registered model type: the one way the tools, bench, the tests and the world do it.

As timm's ``create_model`` or open_clip's factory::

    model = create_model("xformer", "tiny", overrides={"fusion": "blip2"},
                         checkpoint="output/xformer/stage1")  # a run, a job folder or a file

* ``model_config``: the ``model`` section of the model type's yaml
  (``cls.default_config_path(model_type)``) with ``model_type`` set and ``overrides`` applied;
* ``build_model``: a config through its class's ``from_config``; the checkpoint goes in as
  ``model.pretrained``, so it is read by the safe reader with its fit checks
  (``models/sources.load_pretrained``: no code from the file);
* ``find_checkpoint`` (``training/checkpoints.py``): a run's output_dir, a job folder (its
  trained checkpoint) or a file -> the checkpoint file;
* ``saved_model_config``: the model configuration a checkpoint written by LAVIS's runner
  stores, to rebuild a run's model as it was trained.

What a caller does beyond building (eval mode, moving to a GPU, its own error type) stays
with the caller.
"""
import contextlib
import copy

from omegaconf import OmegaConf

from lavis_xformer.models import sources
from lavis_xformer.training.checkpoints import find_checkpoint


class ModelTypeError(ValueError):
    """A model name, model type or checkpoint that names no model; the message says why."""


def model_class(name):
    """The model class registered under ``name`` (e.g. ``xformer``, ``xformer_opt``)."""
    from lavis.common.registry import registry  # the plugin's models: registered by its import

    cls = registry.get_model_class(name)
    if cls is None:
        raise ModelTypeError("no model %r is registered (e.g. xformer:tiny, xformer:pretrain, "
                             "xformer_opt:tiny)" % name)
    return cls


def type_config(name, model_type):
    """The whole yaml of a registered model type (``model`` and ``preprocess``)."""
    cls = model_class(name)
    try:
        path = cls.default_config_path(model_type)
    except (KeyError, ValueError) as e:  # the plugin's message names the known types
        raise ModelTypeError("%s: %s" % (name, e.args[0] if e.args else model_type)) from None
    return OmegaConf.load(path)


def apply_overrides(cfg, overrides):
    """Set ``overrides`` in the model config ``cfg``, in order: dotted keys
    (``{"loss_weights.rec": 0}``) or mappings, which merge into the section they name."""
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    return cfg


def model_config(name, model_type, overrides=None):
    """The model config of a registered model type with ``overrides`` set last."""
    cfg = type_config(name, model_type).model
    cfg.model_type = model_type  # not read by the model; the metrics JSON records it
    return apply_overrides(cfg, overrides)


def saved_model_config(checkpoint):
    """The model config stored in a checkpoint that LAVIS's runner wrote (its ``config``),
    read safely. ModelTypeError for a file without one."""
    try:
        saved = sources.read_checkpoint(checkpoint, "model %s" % checkpoint)
    except sources.WeightSourceError as e:
        raise ModelTypeError(str(e)) from None
    if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict)
            and "model" in saved["config"]):
        raise ModelTypeError("%s has no stored run configuration (not written by LAVIS's "
                             "runner); name the model as ARCH:MODEL_TYPE with --checkpoint"
                             % checkpoint)
    return OmegaConf.create(saved["config"]["model"])


def build_model(cfg, checkpoint=None, device=None):
    """The model of config ``cfg`` (left unchanged) with ``checkpoint`` (a run, a job folder, a
    file or a URL; None: ``cfg.pretrained``) loaded; built on ``device`` directly when given
    (no CPU copy of large weights; ``meta``: no memory)."""
    cfg = copy.deepcopy(cfg)
    if checkpoint is not None:
        cfg.pretrained = checkpoint if sources.is_url(str(checkpoint)) else find_checkpoint(checkpoint)
    with torch_device(device):
        model = model_class(cfg.arch).from_config(cfg)
    return model if device is None else model.to(device)


def create_model(name, model_type, overrides=None, checkpoint=None, device=None):
    """``build_model(model_config(name, model_type, overrides), checkpoint, device)``."""
    return build_model(model_config(name, model_type, overrides), checkpoint, device)


def torch_device(device):
    """``torch.device(device)`` as the default device of what is built inside; nothing when None."""
    if device is None:
        return contextlib.nullcontext()
    import torch

    return torch.device(device)


__all__ = ["ModelTypeError", "apply_overrides", "build_model", "create_model", "find_checkpoint",
           "model_class", "model_config", "saved_model_config", "type_config"]
