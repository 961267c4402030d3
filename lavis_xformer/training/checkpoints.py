"""Checkpoint files that survive a kill, and the state that makes a resumed run continue
exactly where the killed one stopped.

* ``atomic_save``: torch.save into a temporary file in the target's directory, flush, fsync,
  then ``os.replace`` over the target (rename(2): atomic on POSIX file systems) and fsync the
  directory. A kill at any moment leaves either the old complete file or the new complete
  file, plus at worst a stray ``.tmp`` file, never a truncated checkpoint. A save that fails
  removes its temporary file; a full disk is DiskFullError, one line naming the folder.
* ``CHECKPOINT_LATEST`` (``checkpoint_latest.pth``) in a job directory is a relative symlink
  replaced the same way, only after the file it names is complete; ``resolve_resume_path``
  turns ``run.resume_ckpt_path=<job dir>`` (or ``<output_dir>/latest``) into it.
* ``rng_state`` / ``set_rng_state``: python, numpy, torch and CUDA generators, so that a
  resumed run draws the same MAE masks, ITM negatives, dropout and augmentations.
* ``check_checkpoints`` / ``check_resume``: at launch, before anything is built, a
  ``model.pretrained`` or ``run.resume_ckpt_path`` that names no usable checkpoint (typically:
  the previous stage has not been run) stops the run with the path, the key and the command
  that writes the checkpoint (ConfigError).
"""
import errno
import glob
import logging
import os
import random
import re
import socket

import numpy as np
import torch
from lavis.common.utils import is_url

from lavis_xformer.config_keys import ConfigError

CHECKPOINT_LATEST = "checkpoint_latest.pth"
# ".<file>.<host>.<pid>.tmp": a save in progress; remove_stale_temporaries removes those of
# saves that were killed (their process is gone)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")
# the names of the job folders the runner makes (launch.new_job_id): <time>_<pid>_<8 hex>
JOB_FOLDER = re.compile(r"^\d{14}_\d+_[0-9a-f]{8}$")
# the files the plugin saves atomically in a job folder (RunnerXFormer._save_checkpoint)
_JOB_FILE = re.compile(r"^checkpoint_[^/]*\.pth$")

EXIT_DISK_FULL = 74  # EX_IOERR (sysexits.h): launch.run_main's exit status for DiskFullError
# torch.save's zip writer turns the OSError of a failed write into this RuntimeError ("[enforce
# fail at inline_container.cc:...] unexpected pos ..."), the errno lost
_TORCH_WRITE_FAILED = re.compile(r"inline_container\.cc|PytorchStreamWriter failed")
_LOW_SPACE = 64 << 20  # bytes; a failed torch write with less free is a full disk


class DiskFullError(OSError):
    """A save failed because its disk is full (ENOSPC, a quota, or torch's wrapped write
    error with almost no space left); its temporary file is removed and no file was replaced.
    The message names the folder; launch.run_main prints it and exits with EXIT_DISK_FULL."""


def _tmp_name(name):
    return ".%s.%s.%d.tmp" % (name, socket.gethostname().split(".")[0], os.getpid())


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


def _free_bytes(directory):
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _remove_failed(tmp, path, error):
    """Remove the temporary file ``tmp`` of a save of ``path`` that failed with ``error``;
    raise DiskFullError instead of ``error`` when the disk is full."""
    directory = os.path.dirname(tmp)
    free = _free_bytes(directory)  # measured while the temporary file still takes its space
    if os.path.lexists(tmp):
        os.remove(tmp)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        full = True
    else:
        full = (isinstance(error, RuntimeError) and free is not None and free < _LOW_SPACE
                and bool(_TORCH_WRITE_FAILED.search(str(error))))
    if full:
        raise DiskFullError("the disk is full at %s (%s): %s could not be written; its "
                            "temporary file is removed and no file was replaced" % (
                                directory, "quota exceeded" if getattr(error, "errno", None)
                                == errno.EDQUOT else "%d MiB free" % ((free or 0) >> 20),
                                os.path.basename(path))) from error


def atomic_save(obj, path, save=None):
    """Write ``obj`` with torch.save (or ``save(obj, file)``) to ``path`` atomically."""
    save = save or torch.save
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, _tmp_name(os.path.basename(path)))
    try:
        with open(tmp, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove_failed(tmp, path, e)
        raise
    _fsync_dir(directory)
    return path


def point_link(target, link):
    """Make ``link`` a relative symlink to ``target`` (a file or folder beside it), atomically:
    a new link under a temporary name is renamed over the old one, so a reader sees the old
    or the new target, never a missing or half-made link."""
    link = os.path.abspath(link)
    tmp = os.path.join(os.path.dirname(link), _tmp_name(os.path.basename(link)))
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(os.path.relpath(os.path.abspath(target), os.path.dirname(link)), tmp)
        os.replace(tmp, link)
    except BaseException as e:
        _remove_failed(tmp, link, e)
        raise
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
    removed = _remove_stale(output_dir, lambda name: name in links)
    try:
        jobs = [e.path for e in os.scandir(output_dir)
                if JOB_FOLDER.match(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        jobs = []
    for job in sorted(jobs):
        removed += _remove_stale(job, _JOB_FILE.match)
    return removed


def _remove_stale(directory, saved_here):
    """Remove the temporaries of dead processes in ``directory`` whose target name is one
    that ``saved_here(name)`` accepts."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    host = socket.gethostname().split(".")[0]
    for name in names:
        match = _TMP.match(name)
        if (not match or not saved_here(match.group("name")) or match.group("host") != host
                or _alive(int(match.group("pid")))):
            continue
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path) if not os.path.islink(path) else 0
            os.remove(path)
        except OSError:
            continue
        logging.warning("removed %s (%d bytes), left by a save that was killed", path, size)
        removed.append(path)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
