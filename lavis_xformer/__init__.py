"""X-Former for Salesforce LAVIS.

Importing this package registers the plugin's models, builders, tasks and runner into LAVIS's
registry (``lavis.common.registry.registry``). The installed start-up hook (see ``_hook.py``)
imports it whenever ``lavis`` is imported, so LAVIS's own entry points see the plugin too.
"""
import os

__version__ = "0.1.0"

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _require_installed(*names):
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            "lavis_xformer needs %s, installed without their stale pins: pip install --no-deps "
            "salesforce-lavis==1.0.2 transformers==4.26.1 (requirements-lavis.txt; "
            "docs/install.md)" % " and ".join(missing), name=missing[0])


# salesforce-lavis (and transformers on Python >= 3.12) are not in install_requires.
_require_installed("lavis", "transformers")

from lavis_xformer import _hook  # noqa: E402
# Before anything imports transformers (done by the start-up hook already, unless it is off).
_hook.relax_tokenizers_pin()
from lavis_xformer import datasets, models, tasks, training  # noqa: E402,F401
from lavis_xformer import optims  # noqa: E402,F401  (per-iteration lr schedules)
from lavis_xformer import processors  # noqa: E402,F401  (xformer_image_train: flip switchable)
