"""The CI-sized miniature world end to end: the world, the three frozen parts, X-Former's
stage 1 and stage 2 through ``python -m lavis.train`` and the held-out evaluations through
``python -m lavis.evaluate``, driven by ``python -m lavis_xformer.world.main --config ci``.
It asserts learning: after training, X-Former answers the held-out questions clearly better
than the majority baseline (a model that learned nothing lands on or below the baseline)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARGIN = 10.0  # percentage points above the majority baseline


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


@pytest.mark.slow
def test_ci_world_learns(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lavis_xformer.world.main", "--config", "ci", "--quiet",
         "--cache-dir", str(tmp_path / "cache"), "--projects", str(REPO / "projects" / "xformer" / "mini")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "output" / "ci" / "report.json").read_text())
    baseline = report["baseline"]
    (run,) = report["results"]["xformer"]
    assert run["num_questions"]["oc"] == 200 and run["num_questions"]["mci"] == 200
    # what the CI-sized run learns for sure: naming the colour and the shape of a single object
    for key in ("colour_acc", "shape_acc"):
        assert run[key] >= baseline[key] + MARGIN, (key, run[key], baseline[key], run)
    # the frozen parts were pretrained, linked and are what the runs loaded
    for part in ("world", "clip", "mae", "lm"):
        assert os.path.realpath(tmp_path / "output" / "ci" / "assets" / part) == report["assets"][part]
    log = (tmp_path / "output" / "ci" / "runs" / "xformer-s42" / "stage1.log").read_text()
    assert "Loading model.clip_vit_weights from %s" % os.path.join(report["assets"]["clip"], "vit.pth") in log
    assert "Loading model.mae_weights from %s" % report["assets"]["mae"] in log
