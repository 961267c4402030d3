"""The CI-sized miniature world end to end: the world, the three frozen parts, X-Former's
stage 1 and stage 2 through ``python -m lavis.train`` and the held-out evaluations through
``python -m lavis.evaluate``, driven by ``python -m lavis_xformer.world.main --config ci``.
It asserts learning where the CI-sized run learns: stage 1's image -> caption retrieval on
held-out scenes well above chance. (Its answers to the held-out questions stay near the
majority baseline at this size; see docs/miniature-world.md.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _testlib import subprocess_env

REPO = Path(__file__).resolve().parents[1]
MARGIN_RETRIEVAL = 2.5  # percentage points of R@5 above chance (2.5 % for 200 scenes)
MARGIN_PROBE = 5.0  # percentage points of the colour-presence probe above its majority line


@pytest.mark.slow
def test_ci_world_learns(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lavis_xformer.world.main", "--config", "ci", "--quiet",
         "--cache-dir", str(tmp_path / "cache"), "--projects", str(REPO / "projects" / "xformer" / "mini")],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "output" / "ci" / "report.json").read_text())
    baseline = report["baseline"]
    (run,) = report["results"]["xformer"]
    assert run["num_questions"]["oc"] == 100 and run["num_questions"]["mci"] == 100
    # learning at CI size: stage 1's queries tell held-out scenes apart (image -> caption
    # retrieval by ITC well above chance); a Q-Former whose queries ignore the image stays at
    # chance whatever its language losses did
    itc = run["stage1_itc"]
    assert itc["n"] == 200 and itc["r5"] >= itc["chance_r5"] + MARGIN_RETRIEVAL, itc
    # the answers are scored against the majority baseline (at CI size they stay near it)
    for key in ("oc_acc", "mci_acc", "colour_acc", "shape_acc"):
        assert 0.0 <= run[key] <= 100.0 and baseline[key] is not None
    # the frozen CLIP side learned from its alt text what the probes can read: the colours present
    clip_probe = report["frozen_parts"]["probes"]["clip_vit"]["colour"]
    assert clip_probe["acc"] >= clip_probe["majority"] + MARGIN_PROBE, report["frozen_parts"]["probes"]
    # the frozen parts were pretrained, linked and are what the runs loaded
    for part in ("world", "clip", "mae", "lm"):
        assert os.path.realpath(tmp_path / "output" / "ci" / "assets" / part) == report["assets"][part]
    log = (tmp_path / "output" / "ci" / "runs" / "xformer-s42" / "stage1.log").read_text()
    assert "Loading model.clip_vit_weights from %s" % os.path.join(report["assets"]["clip"], "vit.pth") in log
    assert "Loading model.mae_weights from %s" % report["assets"]["mae"] in log
