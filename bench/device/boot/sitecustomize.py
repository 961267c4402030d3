"""Start-up of every Python process that bench/device/mini_finding.sh starts on the GPU machine
(this folder is first on its PYTHONPATH).

There the carried packages sit on PYTHONPATH (bench/device/site.sh), not in a site directory,
so the plugin's ``lavis_xformer_hook.pth`` is never read, and ``python -m lavis.train`` (which
``lavis_xformer.world.main`` starts once per stage) would not find the plugin. Each process
therefore runs here what ``python -m bench.device`` runs in its own: the stand-ins for the two
packages LAVIS imports but the world never uses (``bench/device/__main__.py``), then the
plugin's start-up hook, the very function the ``.pth`` line calls (``lavis_xformer_startup.run``).
"""
import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _root not in sys.path:
    sys.path.append(_root)

import lavis_xformer_startup  # noqa: E402
from bench.device.__main__ import install_stand_ins  # noqa: E402

install_stand_ins()
lavis_xformer_startup.run()
