"""Every run and every evaluation writes into a job folder of its own (sequential runs in the
same minute, concurrent runs); evaluations skip unreadable images (counted and listed, the
metrics say over how many questions), write predictions as they are made and resume after a
kill without asking the model again."""
import glob
import json
import os
import signal
import subprocess
import time

import pytest

from _testlib import (REPO, TINY_STAGE1, easyvqa_split, lavis_command, run_command,
                      subprocess_env, tiny_stage1_options)

import lavis_xformer  # noqa: F401
from lavis_xformer.training import launch
from lavis_xformer.tasks.results import _read_jsonl

VQA = REPO / "projects" / "xformer" / "tiny" / "vqa.yaml"
IMAGES, TRUNCATED = 4, 2


def _train_cmd(out):
    return lavis_command(TINY_STAGE1, *tiny_stage1_options(out, images=4))


def _jobs(out):
    return sorted(p for p in os.listdir(out) if p != "latest" and not p.startswith("."))


def test_job_ids_are_unique_and_sort_by_time():
    ids = {launch.new_job_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i.split("_")[0]) == 14 for i in ids)  # %Y%m%d%H%M%S


@pytest.mark.slow
def test_two_runs_at_once_and_one_after_keep_all_outputs(tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(_train_cmd(out), cwd=tmp_path, env=subprocess_env(threads=1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    run_command(_train_cmd(out), tmp_path)  # within the same minute as the others
    jobs = _jobs(out)
    assert len(jobs) == 3, jobs
    for job in jobs:
        assert (out / job / "checkpoint_0.pth").is_file(), os.listdir(out / job)
    assert os.path.realpath(out / "latest") == str(out / jobs[-1])  # the newest run


# --- evaluations ------------------------------------------------------------------------------

@pytest.fixture
def damaged_test_split(tmp_path):
    """easy-VQA test split with images 0..3, image 2 truncated half-way."""
    questions = easyvqa_split(tmp_path / "data", "test", IMAGES, truncated=[TRUNCATED])
    return tmp_path / "data", questions


def _eval_cmd(out, root, *extra):
    return lavis_command(
        VQA, "run.output_dir=%s" % out, "model.pretrained=null",
        "datasets.easyvqa_vqa.build_info.root=%s" % root, "datasets.easyvqa_vqa.build_info.max_questions=null",
        "datasets.easyvqa_vqa.build_info.max_images=%d" % IMAGES, "run.batch_size_eval=2",
        "run.num_beams=2", "run.max_len=3", "run.log_freq=1", *extra, script="lavis.evaluate")


def _metrics(job):
    with open(os.path.join(job, "result", "test_vqa_metrics.json")) as f:
        return json.load(f)


def _predictions(job):
    with open(os.path.join(job, "result", "test_vqa_predictions.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_evaluation_skips_unreadable_images_and_resumes_after_a_kill(damaged_test_split, tmp_path):
    root, questions = damaged_test_split
    bad = [i for i, q in enumerate(questions) if int(q[2]) == TRUNCATED]
    total = len(questions)
    out = tmp_path / "out"

    # uninterrupted, twice in a row: two job folders, both sets of results kept
    for _ in range(2):
        result = run_command(_eval_cmd(out, root), tmp_path)
    jobs = [str(out / j) for j in _jobs(out)]
    assert len(jobs) == 2 and all(_metrics(j)["num_questions"] == total - len(bad) for j in jobs)
    metrics = _metrics(jobs[0])
    assert metrics["questions_in_split"] == total
    assert metrics["num_skipped_unreadable"] == len(bad)
    image = str(root / "test" / "images" / ("%d.png" % TRUNCATED))
    assert [r["question_id"] for r in metrics["skipped_unreadable"]] == bad
    assert {r["path"] for r in metrics["skipped_unreadable"]} == {image}
    assert "image file is truncated" in metrics["skipped_unreadable"][0]["error"]
    assert "skipped %d questions whose image could not be read" % len(bad) in result.stdout
    whole = _predictions(jobs[0])
    assert [p["question_id"] for p in whole] == [i for i in range(total) if i not in bad]
    assert whole == _predictions(jobs[1])  # the evaluation is deterministic

    # killed after its first batches: what was predicted is on disk
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(_eval_cmd(killed_out, root), cwd=tmp_path, env=subprocess_env(threads=1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # SIGKILL as soon as two batches are on disk
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            logs = glob.glob(str(killed_out / "*" / "result" / "test_vqa_predictions.rank0.jsonl"))
            if logs and len(_read_jsonl(logs[0])) >= 4:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = str(killed_out / _jobs(killed_out)[0])
    kept = _read_jsonl(os.path.join(killed, "result", "test_vqa_predictions.rank0.jsonl"))
    assert 4 <= len(kept) < total - len(bad)
    assert not os.path.exists(os.path.join(killed, "result", "test_vqa_predictions.json"))

    resumed = run_command(_eval_cmd(killed_out, root, "run.resume_predictions=%s" % killed),
                          tmp_path)
    assert "run.resume_predictions: %d predictions kept" % len(kept) in resumed.output
    job = os.path.realpath(killed_out / "latest")
    assert job != killed
    assert _predictions(job) == whole
    assert _metrics(job)["accuracy"] == metrics["accuracy"]
    # the resumed run's own file holds every prediction again (a second kill loses nothing)
    assert len(_read_jsonl(os.path.join(job, "result", "test_vqa_predictions.rank0.jsonl"))) == len(whole)
