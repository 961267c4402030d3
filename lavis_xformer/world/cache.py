"""Where the miniature world and its pretrained parts live, and when they are reused.

Each product (the world, the CLIP side, the MAE, the language model) is a folder
``<cache root>/<kind>-<key>``, where the key is a hash of everything that decides it: its own
settings, the settings of what it is trained on, and ``GENERATOR_VERSION``. A folder counts
only when it holds ``DONE.json`` (written last, after an atomic rename of a temporary folder),
so an interrupted build is rebuilt, never half reused. A changed setting gives a new key, hence
a rebuild; an unchanged one reuses the folder. The temporary folder of a build that was killed
(``<kind>-<key>.tmp-<pid>.<host>``) is removed at the next start (``remove_stale``).

The cache root is ``$LAVIS_XFORMER_CACHE`` if set, else ``~/.cache/lavis_xformer/mini`` (or
``$XDG_CACHE_HOME/lavis_xformer/mini``); every command also takes ``--cache-dir``. It is never
inside the repository. The project files find the products through links that the commands
publish under ``output/<config name>/assets/`` (``world``, ``clip``, ``mae``, ``lm``).
"""
import hashlib
import json
import os
import re
import shutil
import socket
import time

from lavis_xformer.fileio import ENV_CACHE, configured_cache_root, process_alive, user_cache_dir  # noqa: F401  (ENV_CACHE: the commands' --help)
from lavis_xformer.world.scenes import GENERATOR_VERSION

# the temporaries of build() and publish(): "<kind>-<key>.tmp-<pid>.<host>" (a folder) and
# "<part>.tmp-<pid>.<host>" (a link); without ".<host>" as written before the host was named
_TMP = re.compile(r"^(world|clip|mae|lm)(-[0-9a-f]{12})?\.tmp-(?P<pid>\d+)(\.(?P<host>[^.]+))?$")


def cache_root(override=None):
    if override:
        return os.path.abspath(os.path.expanduser(override))
    return configured_cache_root() or os.path.join(user_cache_dir(), "mini")


def key(*parts):
    """12 hex digits of the SHA-256 of the parts (JSON, sorted keys) and the generator version."""
    blob = json.dumps({"generator_version": GENERATOR_VERSION, "parts": parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def entry(root, kind, k):
    return os.path.join(root, "%s-%s" % (kind, k))


def _tmp(path):
    """A temporary name beside ``path``, this process's own: the cache root may be shared by
    several hosts (a home folder on NFS), so the host is named as well as the process."""
    return "%s.tmp-%d.%s" % (path, os.getpid(), socket.gethostname().split(".")[0])


def remove_stale(folder):
    """Remove the temporaries that killed builds and publishes left in ``folder`` (a cache root
    or an assets folder): those of this host whose process is gone; a live process's are left
    alone, and so is every other name. One line per removal; returns the removed paths."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    host = socket.gethostname().split(".")[0]
    removed = []
    for name in sorted(names):
        match = _TMP.match(name)
        if not match or match.group("host") not in (None, host) or process_alive(int(match.group("pid"))):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:  # another start removed it meanwhile
            continue
        print("cache: removed %s, left by a build that was killed (process %s is gone)" % (
            path, match.group("pid")), flush=True)
        removed.append(path)
    return removed


def is_done(path):
    return os.path.isfile(os.path.join(path, "DONE.json"))


def build(path, fn, info):
    """Run ``fn(tmp_dir)`` and move the result to ``path`` atomically; ``info`` (a dict) goes
    into DONE.json with the time taken. Returns ``path``."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = _tmp(path)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    start = time.time()
    try:
        extra = fn(tmp) or {}
        with open(os.path.join(tmp, "DONE.json"), "w") as f:
            json.dump(dict(info, **extra, seconds=round(time.time() - start, 1)), f, indent=1)
        if os.path.exists(path):  # an unfinished earlier build
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def publish(path, link):
    """Point ``link`` (e.g. output/mini/assets/clip) at the cache folder ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(link)), exist_ok=True)
    tmp = _tmp(link)
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.abspath(path), tmp)
    os.replace(tmp, link)
    return link


def read_done(path):
    with open(os.path.join(path, "DONE.json")) as f:
        return json.load(f)
