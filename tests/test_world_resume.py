"""``python -m lavis_xformer.world.main --resume``: a pipeline keeps the stages that finished
(their checkpoint or predictions exist) and runs only the rest; a finished pipeline's
metrics.json is kept whole."""
import json
import os

from lavis_xformer.world import main as world_main
from lavis_xformer.world import report


def _job(tmp_path, monkeypatch, resume):
    monkeypatch.chdir(tmp_path)
    cfg = {"name": "t", "job": {"stage1": {"max_epoch": 2}, "stage2": {"max_epoch": 1}}}
    job = world_main.Job(cfg, "projects", resume=resume)
    job.assets["world"] = str(tmp_path / "world")
    ran = []
    monkeypatch.setattr(job, "execute", lambda v, s, stage: ran.append(stage) or 1.0)
    monkeypatch.setattr(job, "stage1_itc", lambda v, s: {"r5": 0.0})
    monkeypatch.setattr(report, "world_questions", lambda world, split: {})
    monkeypatch.setattr(report, "load_json", lambda path: [])
    monkeypatch.setattr(report, "score_predictions", lambda questions, predictions: {"oc_acc": 1.0})
    return job, ran


def _finish(job, stage):
    path = job.stage_output("blip2", 1, stage)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
    return path


def test_resume_runs_only_the_stages_without_their_output(tmp_path, monkeypatch):
    job, ran = _job(tmp_path, monkeypatch, resume=True)
    assert job.stage_output("blip2", 1, "stage1").endswith(os.path.join("stage1", "latest", "checkpoint_1.pth"))
    assert job.stage_output("blip2", 1, "oc").endswith(os.path.join("oc", "latest", "result", "test_vqa_predictions.json"))
    _finish(job, "stage1")
    _finish(job, "oc")
    metrics = job.pipeline("blip2", 1)
    assert ran == ["stage2", "mci", "attr"]
    assert metrics["seconds"] == {"stage1": None, "stage2": 1.0, "oc": None, "mci": 1.0, "attr": 1.0}
    # a finished pipeline is kept as it is
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(job, "execute", lambda v, s, stage: ran.append(stage))
    ran.clear()
    with open(os.path.join(job.run_dir("blip2", 1), "metrics.json"), "w") as f:
        json.dump({"oc_acc": 42.0}, f)
    assert job.pipeline("blip2", 1) == {"oc_acc": 42.0} and ran == []


def test_without_resume_every_stage_runs(tmp_path, monkeypatch):
    job, ran = _job(tmp_path, monkeypatch, resume=False)
    _finish(job, "stage1")
    job.pipeline("blip2", 1)
    assert ran == ["stage1", "stage2", "oc", "mci", "attr"]
