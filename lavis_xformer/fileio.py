"""Files written so that a kill never leaves half of one, and the plugin's cache folder.

* ``atomic_save`` / ``point_link``: a file (torch.save, or any writer) or a symlink written
  under a temporary name ``.<name>.<host>.<pid>.tmp`` in the target's folder, flushed, fsynced
  and renamed over the target (rename(2) is atomic on POSIX file systems), then the folder
  fsynced. A kill leaves the old or the new complete file, at worst plus a stray temporary; a
  failed write removes its temporary, and a full disk is ``DiskFullError``, one line.
* ``remove_dead_temporaries``: the temporaries of writers that were killed (this host, process
  gone), removed where the caller says it writes.
* ``ENV_CACHE`` / ``user_cache_dir``: where the plugin caches (downloads, the miniature world).

Used by the training checkpoints, the weight downloads and the world's cache alike; it
imports nothing of the plugin.
"""
import errno
import logging
import os
import re
import socket

import torch

ENV_CACHE = "LAVIS_XFORMER_CACHE"


def configured_cache_root():
    """``$LAVIS_XFORMER_CACHE`` as an absolute path; None when it is unset or empty."""
    value = os.environ.get(ENV_CACHE)
    return os.path.abspath(os.path.expanduser(value)) if value else None


def user_cache_dir():
    """``$XDG_CACHE_HOME/lavis_xformer``, else ``~/.cache/lavis_xformer``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lavis_xformer")


# ".<file>.<host>.<pid>.tmp": a save in progress; remove_stale_temporaries removes those of
# saves that were killed (their process is gone)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")

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


def remove_dead_temporaries(directory, saved_here):
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
                or process_alive(int(match.group("pid")))):
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


def process_alive(pid):
    """True unless no process ``pid`` exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
