"""Checkpoint files that survive a kill, and the state that makes a resumed run continue
exactly where the killed one stopped.

* ``atomic_save`` / ``point_link`` / ``DiskFullError`` (``lavis_xformer/fileio.py``, named
  here too for the runner and the tools): a kill at any moment leaves either the old complete
  file or the new complete file, never a truncated checkpoint; a full disk is one line.
* ``CHECKPOINT_LATEST`` (``checkpoint_latest.pth``) in a job directory is a relative symlink
  replaced the same way, only after the file it names is complete; ``find_checkpoint`` is the
  one rule from a run (a file, a job folder, an ``output_dir`` with its ``latest`` link) to its
  checkpoint: the newest one for ``run.resume_ckpt_path`` (``resolve_resume_path``), the trained
  one for the tools and the model factory (``lavis_xformer/factory.py``).
* ``rng_state`` / ``set_rng_state``: python, numpy, torch and CUDA generators, so that a
  resumed run draws the same MAE masks, ITM negatives, dropout and augmentations.
* ``check_checkpoints`` / ``check_resume``: at launch, before anything is built, a
  ``model.pretrained`` or ``run.resume_ckpt_path`` that names no usable checkpoint (typically:
  the previous stage has not been run) stops the run with the path, the key and the command
  that writes the checkpoint (ConfigError).
"""
import glob
import logging
import os
import random
import re

import numpy as np
import torch
from lavis.common.utils import is_url

# the file-writing primitives, also this module's public face for the runner and the tools
from lavis_xformer.fileio import (EXIT_DISK_FULL, DiskFullError, atomic_save,  # noqa: F401
                                  point_link, remove_dead_temporaries)
from lavis_xformer.schema import ConfigError

CHECKPOINT_LATEST = "checkpoint_latest.pth"
LATEST = "latest"  # <output_dir>/latest: a link to the newest job folder (runner.point_latest)
# the names of the job folders the runner makes (launch.new_job_id): <time>_<pid>_<8 hex>
JOB_FOLDER = re.compile(r"^\d{14}_\d+_[0-9a-f]{8}$")
# the files the plugin saves atomically in a job folder (RunnerXFormer._save_checkpoint)
_JOB_FILE = re.compile(r"^checkpoint_[^/]*\.pth$")

def find_checkpoint(run, newest=False):
    """The checkpoint file that ``run`` names, the one rule for every reader of a run: a file
    is itself; a run's ``output_dir`` stands for the job folder its ``latest`` link names now;
    in a job folder, with ``newest`` the newest complete checkpoint (``checkpoint_latest.pth``,
    where a resume continues), else the trained model (``checkpoint_best.pth``, else the
    highest epoch's ``checkpoint_<N>.pth``, else the newest complete one). Raises
    FileNotFoundError saying what is missing."""
    path = os.path.expanduser(str(run))
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError("no checkpoint at %s" % path)
    if os.path.isdir(os.path.join(path, LATEST)):  # the link moves with the next run
        path = os.path.realpath(os.path.join(path, LATEST))
    latest = os.path.join(path, CHECKPOINT_LATEST)
    if newest:
        if not os.path.isfile(latest):
            raise FileNotFoundError(
                "%s is a directory without %s (no checkpoint was completed there); name a "
                "checkpoint file instead" % (path, CHECKPOINT_LATEST))
        return os.path.realpath(latest)
    trained = _trained_checkpoint(path) or (os.path.realpath(latest) if os.path.isfile(latest) else None)
    if trained is None:
        raise FileNotFoundError("%s holds no checkpoint_*.pth: give a training run's output_dir, "
                                "one of its job directories or a checkpoint file" % path)
    return trained


def _trained_checkpoint(job_dir):
    """``checkpoint_best.pth`` of a job folder, else its highest epoch's checkpoint, or None."""
    best = os.path.join(job_dir, "checkpoint_best.pth")
    if os.path.isfile(best):
        return best
    epochs = {}
    for name in os.listdir(job_dir):
        m = re.fullmatch(r"checkpoint_(\d+)\.pth", name)
        if m:
            epochs[int(m.group(1))] = os.path.join(job_dir, name)
    return epochs[max(epochs)] if epochs else None


def resolve_resume_path(path):
    """``run.resume_ckpt_path``: a checkpoint file, or a job directory or output_dir (its
    newest complete checkpoint, ``find_checkpoint(newest=True)``). Raises FileNotFoundError
    saying what is missing."""
    try:
        return find_checkpoint(path, newest=True)
    except FileNotFoundError as e:
        raise FileNotFoundError("run.resume_ckpt_path: %s" % e) from None


def last_good_checkpoint(directory, besides=None):
    """The newest ``checkpoint_*.pth`` in ``directory`` (other than ``besides``) that was
    written to its end (a cheap check, nothing is loaded), or None."""
    from lavis_xformer.models.sources import looks_complete

    try:
        names = os.listdir(directory)
    except OSError:
        return None
    besides = os.path.realpath(besides) if besides else None
    found = [os.path.join(directory, n) for n in names
             if n.startswith("checkpoint_") and n.endswith(".pth") and n != CHECKPOINT_LATEST]
    found = [f for f in found if os.path.realpath(f) != besides and not os.path.islink(f)]
    for path in sorted(found, key=os.path.getmtime, reverse=True):
        if looks_complete(path):
            return path
    return None


def damaged_resume_message(path):
    """One line for a resume file that is empty or truncated, or None when it looks whole."""
    from lavis_xformer.models.sources import looks_complete

    if looks_complete(path):
        return None
    size = os.path.getsize(path)
    good = last_good_checkpoint(os.path.dirname(os.path.abspath(path)), besides=path)
    return "run.resume_ckpt_path: %s is %s, not a complete checkpoint; the last good checkpoint " \
           "there is %s" % (path, "empty (0 bytes)" if size == 0 else "truncated (%d bytes)" % size,
                            ("%s: resume with run.resume_ckpt_path=%s" % (good, good)) if good
                            else "none")


def read_resume_checkpoint(path):
    """The checkpoint at ``path`` for resuming, read safely (sources.read_checkpoint); an empty
    or truncated file raises CorruptCheckpointError naming it and the last good checkpoint."""
    from lavis_xformer.models.sources import CorruptCheckpointError, read_checkpoint

    message = damaged_resume_message(path)
    if message:
        raise CorruptCheckpointError(message)
    try:
        return read_checkpoint(path, "run.resume_ckpt_path")
    except CorruptCheckpointError as e:
        good = last_good_checkpoint(os.path.dirname(os.path.abspath(path)), besides=path)
        raise CorruptCheckpointError("%s; the last good checkpoint there is %s" % (
            e, good or "none")) from None


def remove_stale_temporaries(output_dir, links=("latest",)):
    """Remove the temporary files of saves that were killed half-way (``atomic_save`` and
    ``point_link`` name them after the host and process that wrote them): those of this host
    whose process is gone, and only where the runner saves: the links ``links`` at the top of
    ``output_dir`` (``latest``), and the checkpoints (``checkpoint_*.pth``) at the top of
    its job folders (names as launch.new_job_id makes them). Anything else, a user's own
    ``.tmp`` files included, is left alone. Returns the removed paths."""
    removed = remove_dead_temporaries(output_dir, lambda name: name in links)
    try:
        jobs = [e.path for e in os.scandir(output_dir)
                if JOB_FOLDER.match(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        jobs = []
    for job in sorted(jobs):
        removed += remove_dead_temporaries(job, _JOB_FILE.match)
    return removed


def rng_state() -> dict:
    """Plain tensors, numbers and lists only, so ``torch.load(weights_only=True)`` (torch's
    default) still reads the checkpoint."""
    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(keys), gauss],
             "numpy": [name, torch.from_numpy(np_keys.astype(np.int64)), int(pos),
                       int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np_keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        except (RuntimeError, IndexError) as e:  # other GPUs than when saved
            logging.warning("could not restore the CUDA random state (%s)", e)


# --- launch-time checks -----------------------------------------------------------------------

CHECKPOINT_KEYS = ("pretrained",)  # model keys naming a checkpoint that some earlier run writes


def _is_remote(value):
    return is_url(value) or value.startswith("pkg:")


def check_checkpoints(model_cfg, run_cfg):
    """Raise ConfigError when ``model.pretrained`` is a local path that does not exist.

    Relative paths are taken from the current directory, as the model does when loading. The
    message names the key and the absolute path, lists the checkpoints that do exist beside it
    (e.g. a shortened stage 1 left checkpoint_0.pth only), and says how to produce the file:
    ``run.requires`` in the project file names the project that writes it (e.g.
    ``projects/xformer/stage1.yaml``); without that hint it says "the previous stage".
    """
    for key in CHECKPOINT_KEYS:
        value = model_cfg.get(key, None)
        values = [value] if value is None or isinstance(value, str) else list(value)
        for value in values:  # a list of checkpoints is loaded in order (sources.load_pretrained)
            _check_checkpoint(key, value, run_cfg)


def _check_checkpoint(key, value, run_cfg):
    if not value or _is_remote(str(value)):
        return
    path = os.path.abspath(os.path.expanduser(str(value)))
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise ConfigError("model.%s: %s is a directory; point model.%s at a checkpoint file "
                          "inside it (e.g. checkpoint_<epoch>.pth)" % (key, path, key))
    requires = run_cfg.get("requires", None)
    if requires:
        how = "run %s first (python -m lavis.train --cfg-path %s)" % (requires, requires)
    else:
        how = "run the previous stage first"
    message = "model.%s: no checkpoint at %s" % (key, path)
    if str(value) != path:
        message += " (model.%s=%s, relative to %s)" % (key, value, os.getcwd())
    found = sorted(glob.glob(os.path.join(os.path.dirname(path), "checkpoint_*.pth")))
    if found:
        message += "; that folder holds %s" % ", ".join(os.path.basename(f) for f in found)
    message += "; %s or point model.%s at its checkpoint (--options model.%s=/path/to/" \
               "checkpoint.pth)" % (how, key, key)
    raise ConfigError(message)


def check_resume(run_cfg):
    """Raise ConfigError when ``run.resume_ckpt_path`` names a local file or job directory
    that holds no checkpoint (LAVIS finds out only after building everything)."""
    predictions = run_cfg.get("resume_predictions", None)
    if predictions and not os.path.isdir(os.path.expanduser(str(predictions))):
        raise ConfigError("run.resume_predictions: no folder %s; name the job directory of the "
                          "interrupted evaluation (it holds result/<split>_*.rank<r>.jsonl)"
                          % predictions)
    value = run_cfg.get("resume_ckpt_path", None)
    if not value or run_cfg.get("evaluate", False) or _is_remote(str(value)):
        return
    try:
        path = resolve_resume_path(os.path.abspath(os.path.expanduser(str(value))))
    except FileNotFoundError as e:
        raise ConfigError("%s; a run's job directory (or its output_dir's `latest` link) "
                          "resumes from its newest checkpoint" % e) from None
    damaged = damaged_resume_message(path)  # empty or truncated: a killed copy, a full disk
    if damaged:
        raise ConfigError(damaged)
