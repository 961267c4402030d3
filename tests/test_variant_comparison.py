"""Issue 5, point 7: a tiny comparison of every fusion variant on the CPU, end to end.

For each of blip2, concat, early_ca and xformer: the tiny stage 1 trains 2 steps through the
users' command (``python -m lavis.train``, one process per variant), the tiny stage 2 (OPT)
trains 2 steps from that checkpoint, the evaluation (``lavis.evaluate``) answers a few held-out
easy-VQA questions, and the comparison command reads the four evaluation folders. Stage 2,
the evaluation and the comparison run inside the test process (the same entry points'
``main``) to save the ~10 s of imports a process costs, while the next variant's stage 1
runs in its own process. A refactor that breaks any variant in
any of these steps fails here.

Select it alone with ``pytest -m variant_comparison``. Measured: 286 s for the test (308 s with
pytest's start) on two cores shared with other work (load average ~5.8); 148 s of CPU.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from _testlib import REPO, lavis_command, subprocess_env
import torch

TINY = REPO / "projects" / "xformer" / "tiny"
VARIANTS = ("blip2", "concat", "early_ca", "xformer")
QUESTIONS = 4  # the first 4 test questions cover yes/no, color and shape


def _train_options(output_dir, fusion, pretrained=None):
    # 4 images, batch 2: two steps
    options = ["run.output_dir=%s" % output_dir, "run.max_epoch=1", "run.log_freq=1",
               "run.batch_size_train=2", "run.warmup_steps=1",
               "datasets.easyvqa_caption.build_info.max_images=4",
               "datasets.easyvqa_caption.build_info.splits=[train]", "model.fusion=%s" % fusion]
    return options + (["model.pretrained=%s" % pretrained] if pretrained else [])


@pytest.mark.slow
@pytest.mark.variant_comparison
def test_every_variant_trains_both_stages_evaluates_and_is_compared(tmp_path, monkeypatch, capsys):
    from lavis_xformer import evaluate, train
    from lavis_xformer.tools import compare

    monkeypatch.chdir(tmp_path)
    start = time.time()

    def stage1(fusion):
        """Start stage 1 of a variant by the users' command, in its own process."""
        log = open(tmp_path / ("%s_s1.log" % fusion), "w")
        return subprocess.Popen(
            lavis_command(TINY / "stage1.yaml", *_train_options("out/%s_s1" % fusion, fusion)),
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            # it runs beside this process's stage 2
            env=subprocess_env(threads=os.environ.get("OMP_NUM_THREADS", 1)))

    # The next variant's stage 1 runs while this one's stage 2 and evaluation run here.
    running = stage1(VARIANTS[0])
    for i, fusion in enumerate(VARIANTS):
        returncode = running.wait(timeout=600)
        output = (tmp_path / ("%s_s1.log" % fusion)).read_text()
        assert returncode == 0, "stage 1 of %s failed:\n%s" % (fusion, output[-5000:])
        if i + 1 < len(VARIANTS):
            running = stage1(VARIANTS[i + 1])
        assert "Train: data epoch: [0]  [1/2]" in output, output[-3000:]
        checkpoint = tmp_path / "out" / ("%s_s1" % fusion) / "latest" / "checkpoint_0.pth"
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert saved["config"]["model"]["fusion"] == fusion
        has_mae = any(k.startswith("fusion.") for k in saved["model"])
        assert has_mae == (fusion != "blip2"), fusion  # blip2 has no fusion weights at all
        del saved

        # stage 2 from it, then zero-shot VQA on held-out questions
        train.main(["--cfg-path", str(TINY / "stage2.yaml"), "--options",
                    *_train_options("out/%s_s2" % fusion, fusion,
                                    pretrained="out/%s_s1/latest/checkpoint_0.pth" % fusion)])
        out = capsys.readouterr().out
        assert "Train: data epoch: [0]  [1/2]" in out and " loss_lm: " in out
        evaluate.main(["--cfg-path", str(TINY / "vqa.yaml"), "--options",
                       "run.output_dir=out/%s_vqa" % fusion, "model.fusion=%s" % fusion,
                       "model.pretrained=out/%s_s2/latest/checkpoint_0.pth" % fusion,
                       "datasets.easyvqa_vqa.build_info.max_questions=%d" % QUESTIONS,
                       "run.batch_size_eval=%d" % QUESTIONS, "run.num_beams=2", "run.max_len=4"])
        capsys.readouterr()
        for used in (tmp_path / "out").glob("%s_s[12]/*/checkpoint_*.pth" % fusion):
            used.unlink()  # ~0.4 GB each; the job folders and their log.txt stay

    # the comparison over the four evaluation folders; variants are read off the runs
    compare.main(["out/%s_vqa" % f for f in VARIANTS] + ["--out", "report"])
    printed = capsys.readouterr().out
    report = tmp_path / "report"
    assert (report / "comparison.png").stat().st_size > 10000
    data = json.loads((report / "comparison.json").read_text())
    results = data["results"]
    assert [r["variant"] for r in results] == list(VARIANTS)
    assert [r["label"] for r in results] == list(VARIANTS)
    assert {r["model"] for r in results} == {"xformer_opt:tiny"}
    assert {r["benchmark"] for r in results} == {"easyvqa_vqa"}
    for fusion, r in zip(VARIANTS, results):
        metrics = json.loads((tmp_path / "out" / ("%s_vqa" % fusion) / "latest" / "result" /
                              "test_vqa_metrics.json").read_text())
        assert r["metrics"]["accuracy"] == metrics["accuracy"]
        assert set(r["groups"]["question_type"]) == {"yes/no", "color", "shape"}
        assert r["groups"]["question_type"]["yes/no"] == metrics["per_question_type"]["yes/no"]["accuracy"]
    markdown = (report / "comparison.md").read_text()
    assert markdown == printed.split("wrote ")[0].rstrip("\n") + "\n"
    for fusion in VARIANTS:
        assert "| **%s** |" % fusion in markdown
    assert "### per question type" in markdown and "| | color | shape | yes/no | source |" in markdown
    assert 'majority baseline ("yes")' in markdown
    print("variant comparison: %.0f s" % (time.time() - start), file=sys.stderr)
