"""X-Former for Salesforce LAVIS.

Importing this package registers the plugin's models, builders, tasks and runner into LAVIS's
registry (``lavis.common.registry.registry``). The installed start-up hook (see ``_hook.py``)
imports it whenever ``lavis`` is imported, so LAVIS's own entry points see the plugin too.
"""
import os

__version__ = "0.1.0"

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

from lavis_xformer import compat  # noqa: E402,F401  (LAVIS 1.0.2 work-arounds first)
from lavis_xformer import datasets, models, runners, tasks  # noqa: E402,F401
from lavis_xformer import optims  # noqa: E402,F401  (per-iteration lr schedules)
from lavis_xformer.world import datasets as _world_datasets  # noqa: E402,F401  (mini_world_caption)
