"""Helpers shared by the test files (pytest puts tests/ on sys.path; not a package, since
LAVIS's wheel already installs a top-level package named ``tests``)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def subprocess_env(threads=None, **extra):
    """The environment for a child Python (``python -m lavis.train``, torchrun, ...): this
    checkout first on PYTHONPATH, so the child runs the code under test; ``threads`` sets
    OMP_NUM_THREADS (1 where several processes share the two cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env
