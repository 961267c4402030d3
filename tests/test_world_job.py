"""The CI-sized miniature world end to end: the world, the three frozen parts, X-Former's
stage 1 and stage 2 through ``python -m lavis.train`` and the held-out evaluations through
``python -m lavis.evaluate``, driven by ``python -m lavis_xformer.world.main --config ci``.
It asserts learning: the counting answers on held-out scenes above the majority baseline by a
margin and closer to the truth than any constant answer, stage 1's image -> caption retrieval
above chance, and the frozen CLIP side's colour probe above its majority line. (MCI, colour and
shape answers stay near the prior at this size; see docs/miniature-world.md.)"""
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
MARGIN_OC = 4.0  # percentage points of OC accuracy above the majority answer's (measured: 7.0)


@pytest.mark.slow
def test_ci_world_learns(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lavis_xformer.world.main", "--config", "ci", "--quiet",
         "--cache-dir", str(tmp_path / "cache"), "--projects", str(REPO / "projects" / "xformer" / "mini")],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the run's own job folder, which `latest` points at once it has finished
    report = json.loads((tmp_path / "output" / "ci" / "latest" / "report.json").read_text())
    baseline = report["baseline"]
    (run,) = report["results"]["xformer"]
    # learning at CI size: the model counts from the image, better than the majority answer by a
    # margin and, in mean absolute error, better than every constant answer (computed here from
    # the held-out questions themselves)
    with open(os.path.join(report["assets"]["world"], "test", "oc.json")) as f:
        truth = [int(q["text_out"]) for q in json.load(f)]
    best_constant_mae = min(sum(abs(t - a) for t in truth) / len(truth) for a in range(0, 9))
    assert run["oc_acc"] >= baseline["oc_acc"] + MARGIN_OC, (run["oc_acc"], baseline["oc_acc"])
    assert run["oc_mae"] < best_constant_mae, (run["oc_mae"], best_constant_mae)
    # learning at CI size: stage 1's queries tell held-out scenes apart (image -> caption
    # retrieval by ITC well above chance); a Q-Former whose queries ignore the image stays at
    # chance whatever its language losses did
    itc = run["stage1_itc"]
    assert itc["n"] == 200 and itc["r5"] >= itc["chance_r5"] + MARGIN_RETRIEVAL, itc
    # MCI, colour and shape are scored over every held-out question of their kind (they stay at
    # the prior at this size: the world fails issue #20's quality gates, so no learning is
    # asserted for them yet)
    with open(os.path.join(report["assets"]["world"], "test", "attr.json")) as f:
        attr = [q["kind"] for q in json.load(f)]
    assert run["num_questions"] == {"oc": 200, "mci": 200, "colour": attr.count("colour"),
                                    "shape": attr.count("shape")}, run["num_questions"]
    assert all(baseline[key] is not None for key in ("mci_acc", "colour_acc", "shape_acc"))
    # the frozen CLIP side learned from its alt text what the probes can read: the colours present
    clip_probe = report["frozen_parts"]["probes"]["clip_vit"]["colour"]
    assert clip_probe["acc"] >= clip_probe["majority"] + MARGIN_PROBE, report["frozen_parts"]["probes"]
    # the frozen parts were pretrained, linked and are what the runs loaded
    for part in ("world", "clip", "mae", "lm"):
        assert os.path.realpath(tmp_path / "output" / "ci" / "assets" / part) == report["assets"][part]
    log = (tmp_path / "output" / "ci" / "latest" / "runs" / "xformer-s42" / "stage1.log").read_text()
    assert "Loading model.clip_vit_weights from %s" % os.path.join(report["assets"]["clip"], "vit.pth") in log
    assert "Loading model.mae_weights from %s" % report["assets"]["mae"] in log
