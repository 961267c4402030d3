"""Convert a trusted old checkpoint into the safe format, once, explicitly.

    python -m lavis_xformer.tools.convert_checkpoint OLD.pth NEW.pth --i-trust-this-file [--overwrite]
    python -m lavis_xformer.tools.convert_checkpoint OLD_FOLDER NEW_FOLDER --i-trust-this-file
        (a from_pretrained folder: a copy with each pytorch_model*.bin converted under its name)

The plugin reads every weight file with ``torch.load(weights_only=True)`` or safetensors
(``models/sources.py``), which build tensors and plain containers only. A checkpoint that
holds other Python objects (an ``argparse.Namespace``, an OmegaConf config, numpy arrays, a
whole pickled model) is refused, because unpickling those objects can run any code the file
names. For a file whose origin you trust, this command unpickles it fully ONE time, turns
what it holds into tensors and plain containers (dicts, lists, strings, numbers; an OmegaConf
config or a Namespace becomes a dict, a numpy array a tensor, an nn.Module its state dict),
writes NEW atomically (``.safetensors``: the flat tensor state dict only) and reads NEW back
with the safe loader before saying it is done. Anything it cannot convert is an error that
names where in the file it sits.

Without ``--i-trust-this-file`` nothing is unpickled. An existing NEW is refused before
anything is read, unless ``--overwrite`` is given; NEW is never OLD itself.
"""
import argparse
import os
import sys


class ConvertError(ValueError):
    """The file cannot be converted; the message says where and why."""


def plain(obj, where="checkpoint"):
    """``obj`` as tensors and plain containers only (what weights_only=True reads back)."""
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return obj  # torch's safe unpickler accepts these
    if isinstance(obj, torch.nn.Module):
        return plain(obj.state_dict(), where)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with LAVIS
        pass
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConvertError("%s: key %r is a %s, not a string or number" % (
                    where, key, type(key).__name__))
            out[key] = plain(value, "%s[%r]" % (where, key))
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain(v, "%s[%d]" % (where, i)) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (set, frozenset)):
        return [plain(v, where) for v in obj]
    raise ConvertError("%s is a %s.%s, which has no plain form; drop it from the checkpoint "
                       "and convert again" % (where, type(obj).__module__, type(obj).__name__))


def _state_dict(obj):
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ConvertError("a .safetensors file holds a flat {name: tensor} state dict; this "
                           "checkpoint's weights are not one (write a .pth instead)")
    return {k: v.contiguous() for k, v in state.items()}


def check_paths(source, target, overwrite=False):
    """Before anything is read: the source exists, and the target neither is it nor replaces
    a file without ``overwrite``."""
    if not os.path.isfile(source):
        raise ConvertError("no such file: %s" % source)
    if os.path.realpath(source) == os.path.realpath(target):
        raise ConvertError("write the converted file beside the old one, not over it")
    if os.path.isdir(target):
        raise ConvertError("%s is a folder; give the new file's path" % target)
    if os.path.lexists(target) and not overwrite:
        raise ConvertError("%s exists; pass --overwrite to replace it, or choose another name" % target)


def convert(source, target, overwrite=False):
    """Unpickle ``source`` fully (trusted), write its plain form to ``target``, verify that
    the safe loader reads it. Returns ``target``."""
    import torch

    from lavis_xformer.models import sources
    from lavis_xformer.training.checkpoints import atomic_save

    if os.path.isdir(source):  # a from_pretrained folder (model.mae_weights, ...): each file
        return convert_folder(source, target, overwrite)
    check_paths(source, target, overwrite)
    # The one full unpickling in the plugin, asked for by the user for this file.
    obj = torch.load(source, map_location="cpu", weights_only=False)
    converted = plain(obj)
    if target.endswith(".safetensors"):
        state = _state_dict(converted)
        atomic_save(state, target, save=lambda o, f: f.write(_safetensors_bytes(o)))
    else:
        atomic_save(converted, target)
    sources.read_checkpoint(target, "the converted file")  # proves it loads safely
    return target


def convert_folder(source, target, overwrite=False):
    """``convert_checkpoint FOLDER NEW_FOLDER``: copy the from_pretrained folder ``source``
    (``model.mae_weights``, ``qformer_weights``, the LLM's) to ``target``, each pickled weights
    file (``pytorch_model.bin`` or its shards) converted by ``convert`` (the
    trusted full unpickling) under its own name: transformers reads the converted file with
    torch's weights-only unpickler, and a shard index stays valid. The copy is built in a
    temporary folder renamed once complete; an existing ``target`` is replaced only with
    ``overwrite``, and then only once the new copy is complete."""
    import shutil

    from lavis_xformer.models import sources

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


def _safetensors_bytes(state):
    from safetensors.torch import save

    return save(state)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a trusted checkpoint that the safe loader refuses into tensors and "
                    "plain containers only.")
    parser.add_argument("source", help="the old checkpoint, or a from_pretrained folder (unpickled in full: trusted files only)")
    parser.add_argument("target", help="the new file (.pth, or .safetensors for a flat state dict)")
    parser.add_argument("--i-trust-this-file", action="store_true",
                        help="required: unpickling SOURCE runs any code it contains")
    parser.add_argument("--overwrite", action="store_true", help="let TARGET replace an existing file")
    args = parser.parse_args(argv)
    if not args.i_trust_this_file:
        print("error: converting unpickles %s in full, which runs any code it contains; add "
              "--i-trust-this-file if you know where it comes from" % args.source, file=sys.stderr)
        raise SystemExit(2)
    try:
        convert(args.source, args.target, args.overwrite)
    except ConvertError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    print("wrote %s (tensors and plain containers only; it loads with weights_only=True)"
          % args.target)


if __name__ == "__main__":
    main()
