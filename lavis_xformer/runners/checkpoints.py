"""Checkpoint files that survive a kill, and the state that makes a resumed run continue
exactly where the killed one stopped.

* ``atomic_save``: torch.save into a temporary file in the target's directory, flush, fsync,
  then ``os.replace`` over the target (rename(2): atomic on POSIX file systems) and fsync the
  directory. A kill at any moment leaves either the old complete file or the new complete
  file, plus at worst a stray ``.tmp`` file, never a truncated checkpoint.
* ``CHECKPOINT_LATEST`` (``checkpoint_latest.pth``) in a job directory is a relative symlink
  replaced the same way, only after the file it names is complete; ``resolve_resume_path``
  turns ``run.resume_ckpt_path=<job dir>`` (or ``<output_dir>/latest``) into it.
* ``rng_state`` / ``set_rng_state``: python, numpy, torch and CUDA generators, so that a
  resumed run draws the same MAE masks, ITM negatives, dropout and augmentations.
"""
import logging
import os
import random

import numpy as np
import torch

CHECKPOINT_LATEST = "checkpoint_latest.pth"


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path, save=None):
    """Write ``obj`` with torch.save (or ``save(obj, file)``) to ``path`` atomically."""
    save = save or torch.save
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)
    return path


def point_link(target, link):
    """Make ``link`` a relative symlink to the file ``target`` (same directory), atomically."""
    link = os.path.abspath(link)
    tmp = "%s.%d.tmp" % (link, os.getpid())
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.relpath(os.path.abspath(target), os.path.dirname(link)), tmp)
    os.replace(tmp, link)
    _fsync_dir(os.path.dirname(link))
    return link


def resolve_resume_path(path):
    """``run.resume_ckpt_path``: a checkpoint file, or a job directory (its newest complete
    checkpoint, ``checkpoint_latest.pth``). Raises FileNotFoundError saying what is missing."""
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        latest = os.path.join(path, CHECKPOINT_LATEST)
        if not os.path.isfile(latest):
            raise FileNotFoundError(
                "run.resume_ckpt_path: %s is a directory without %s (no checkpoint was "
                "completed there); name a checkpoint file instead" % (path, CHECKPOINT_LATEST))
        return os.path.realpath(latest)
    if not os.path.isfile(path):
        raise FileNotFoundError("run.resume_ckpt_path: no checkpoint at %s" % path)
    return path


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
