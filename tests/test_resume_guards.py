"""Guards around resuming and saving (issue 21): predictions are resumed only from an
evaluation made under the same model checkpoint, benchmark, split and protocol; a full disk
during a checkpoint save is one line with the resume command, the previous checkpoint intact;
the start-up sweep of stale temporaries touches only the runner's own files."""
import errno
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from _testlib import REPO, TINY_STAGE1, launch_args, tiny_stage1_options

import lavis_xformer  # noqa: F401
from lavis.common.registry import registry
from lavis_xformer.config_keys import ConfigError
from lavis_xformer import fileio
from lavis_xformer.datasets.skipping import EvalSkippingCollater, SkipUnreadable
from lavis_xformer.tasks.results import PredictionLog, read_prediction_log
from lavis_xformer.tasks.xformer_caption import XFormerCaptionTask
from lavis_xformer.tasks.xformer_vqa import XFormerVQATask
from lavis_xformer.training import checkpoints, launch
from lavis_xformer.training.runner import RunnerXFormer
from lavis_xformer.training.state import TrainState

VQA = REPO / "projects" / "xformer" / "tiny" / "vqa.yaml"


# --- resumed predictions ----------------------------------------------------------------------

class Questions(Dataset):
    annotation = [{"question_id": i, "answer": "yes"} for i in range(1, 5)]

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4), "text_input": "q%d" % i,
                "question_id": self.annotation[i]["question_id"]}


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.asked = 0

    def predict_answers(self, samples, **kwargs):
        self.asked += len(samples["text_input"])
        return ["yes"] * len(samples["text_input"])


def _cfg(pretrained=None, dataset="toy_vqa", **run):
    run = dict(dict(task="xformer_vqa", evaluate=True, seed=42), **run)
    return SimpleNamespace(
        run_cfg=OmegaConf.create(run),
        model_cfg=OmegaConf.create({"arch": "xformer_opt", "model_type": "tiny",
                                    "pretrained": pretrained}),
        datasets_cfg=OmegaConf.create({dataset: {"build_info": {"root": "data"}}}))


def _evaluate(task, job, monkeypatch, batches=None):
    """Run ``task`` on Questions into ``job``/result (the first ``batches`` batches only, as a
    kill would leave it); returns the model (its ``asked`` count)."""
    (job / "result").mkdir(parents=True, exist_ok=True)
    monkeypatch.setitem(registry.mapping["paths"], "result_dir", str(job / "result"))
    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(job))
    task.current_split = "test"
    dataset = Questions()
    if batches is not None:
        dataset.annotation = dataset.annotation[:2 * batches]
    model = CountingModel()
    task.evaluation(model, DataLoader(SkipUnreadable(dataset), batch_size=2,
                                      collate_fn=EvalSkippingCollater()))
    return model


def _killed_job(tmp_path, monkeypatch, cfg, name="killed"):
    """A VQA evaluation under ``cfg`` killed after its first batch; returns (job, its log's
    bytes)."""
    job = tmp_path / name
    _evaluate(XFormerVQATask.setup_task(cfg), job, monkeypatch, batches=1)
    log = job / "result" / "test_vqa_predictions.rank0.jsonl"
    return job, log.read_bytes()


def _refusal(cfg):
    with pytest.raises(ConfigError) as info:
        XFormerVQATask.setup_task(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith("run.resume_predictions: ")
    return message


def test_resumed_predictions_of_other_settings_are_refused_before_any_work(tmp_path, monkeypatch):
    job, log = _killed_job(tmp_path, monkeypatch, _cfg(num_beams=5, max_len=10))
    settings, records = read_prediction_log(job / "result" / "test_vqa_predictions.rank0.jsonl")
    assert [r["question_id"] for r in records] == [1, 2]
    assert settings["run.num_beams"] == 5 and settings["benchmark"] == "toy_vqa"
    assert settings["split"] == "test" and settings["model.arch"] == "xformer_opt"

    # another protocol: refused when the task is set up (before datasets and model), saying
    # what differs and how to go on
    message = _refusal(_cfg(num_beams=1, max_len=3, resume_predictions=str(job)))
    assert "run.num_beams: 5 vs 1; run.max_len: 10 vs 3)" in message
    assert "evaluate without run.resume_predictions, or with the settings" in message
    # a training run's validation (each epoch's weights) resumes nothing
    message = _refusal(_cfg(num_beams=5, max_len=10, evaluate=False, resume_predictions=str(job)))
    assert "only an evaluation (run.evaluate: True) resumes predictions" in message
    # another benchmark's job (same task): refused, its records never copied in
    message = _refusal(_cfg(dataset="gqa", resume_predictions=str(job)))
    assert 'benchmark: "toy_vqa" vs "gqa"' in message
    # a caption evaluation's job holds no VQA logs
    caption = tmp_path / "caption"
    (caption / "result").mkdir(parents=True)
    (caption / "result" / "test_caption_predictions.rank0.jsonl").write_text("{}\n")
    assert "holds no vqa prediction logs" in _refusal(_cfg(resume_predictions=str(caption)))

    # a task built without a config refuses in its loop, before the model is asked
    task = XFormerVQATask(num_beams=1, benchmark="toy_vqa")
    task.resume_predictions = str(job)
    with pytest.raises(ConfigError, match="run.num_beams: 5 vs 1"):
        _evaluate(task, tmp_path / "direct", monkeypatch)
    assert (job / "result" / "test_vqa_predictions.rank0.jsonl").read_bytes() == log  # untouched

    # the same settings: the two predictions are kept, the model asked about the other two
    task = XFormerVQATask.setup_task(_cfg(num_beams=5, max_len=10, resume_predictions=str(job)))
    model = _evaluate(task, tmp_path / "resumed", monkeypatch)
    assert model.asked == 2
    resumed = tmp_path / "resumed" / "result" / "test_vqa_predictions.rank0.jsonl"
    _, records = read_prediction_log(resumed)
    assert sorted(r["question_id"] for r in records) == [1, 2, 3, 4]


def test_resumed_predictions_of_another_checkpoint_or_without_settings_are_refused(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint_0.pth"
    checkpoint.write_bytes(b"weights of epoch 0")
    job, log = _killed_job(tmp_path, monkeypatch, _cfg(pretrained=str(checkpoint)))
    # the same path, rewritten by a later run (a `latest` link that moved on, a new epoch)
    checkpoint.write_bytes(b"weights of epoch 1, longer")
    message = _refusal(_cfg(pretrained=str(checkpoint), resume_predictions=str(job)))
    assert "model.pretrained: \"%s (18 bytes, modified " % checkpoint in message
    assert "(26 bytes, modified " in message

    # a log written before logs had a settings line cannot be verified
    old = tmp_path / "old" / "result"
    old.mkdir(parents=True)
    (old / "test_vqa_predictions.rank0.jsonl").write_text(
        json.dumps({"question_id": 1, "prediction": "yes"}) + "\n")
    message = _refusal(_cfg(pretrained=str(checkpoint), resume_predictions=str(old.parent)))
    assert "has no settings line" in message and "cannot be verified" in message
    assert (job / "result" / "test_vqa_predictions.rank0.jsonl").read_bytes() == log


def test_caption_logs_carry_their_protocol(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.mapping["paths"], "result_dir", str(tmp_path))
    settings = XFormerCaptionTask(num_beams=3, benchmark="nocaps").log_settings("val")
    log = PredictionLog(str(tmp_path), "val_caption_predictions", "image_id", settings=settings)
    log.append([{"image_id": 1, "prediction": "a dog"}])
    log.close()
    task = XFormerCaptionTask(num_beams=5, benchmark="nocaps")
    with pytest.raises(ConfigError, match=r"run.num_beams: 3 vs 5\)"):
        PredictionLog(str(tmp_path / "new"), "val_caption_predictions", "image_id",
                      resume_from=str(tmp_path), settings=task.log_settings("val"))


def test_command_line_refuses_a_resume_of_other_settings_with_one_line(tmp_path, capsys):
    options = ["run.output_dir=%s" % (tmp_path / "out"), "model.pretrained=null"]
    cfg = launch.load_config(launch_args(VQA, *options, "run.num_beams=5"))
    task = XFormerVQATask.setup_task(cfg)
    (tmp_path / "killed" / "result").mkdir(parents=True)
    log = PredictionLog(str(tmp_path / "killed" / "result"), "test_vqa_predictions",
                        "question_id", settings=task.log_settings("test"))
    log.append([{"question_id": 0, "prediction": "yes"}])
    log.close()

    from lavis_xformer import evaluate

    with pytest.raises(SystemExit) as info:
        evaluate.main(["--cfg-path", str(VQA), "--options", *options, "run.num_beams=1",
                       "run.resume_predictions=%s" % (tmp_path / "killed")])
    assert info.value.code == 2
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "(then vs now: run.num_beams: 5 vs 1)" in errors[0], errors
    assert not (tmp_path / "out").exists()  # refused before the job folder, model or data


# --- a full disk during a checkpoint save -----------------------------------------------------

class FullAfter:
    """A file whose disk fills up after ``room`` bytes (as a real full disk: OSError ENOSPC)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = checkpoints.atomic_save({"step": torch.tensor(1)}, tmp_path / "checkpoint_0.pth")
    checkpoints.point_link(first, tmp_path / checkpoints.CHECKPOINT_LATEST)

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # torch.save on a disk that fills up
        f.write(b"PK\x03\x04 the start of a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    for target in ("checkpoint_1.pth", "checkpoint_0.pth"):  # a new file, and over the old one
        with pytest.raises(checkpoints.DiskFullError) as info:
            checkpoints.atomic_save({"step": torch.tensor(2)}, tmp_path / target)
        assert str(info.value).startswith("the disk is full at %s (" % tmp_path)
        assert "%s could not be written; its temporary file is removed" % target in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)

    # torch's own writer swallows the OSError: "[enforce fail at inline_container.cc] ..."
    def wrapped(obj, f):
        real_save(obj, FullAfter(f, 100))

    weights, target = {"w": torch.ones(1000)}, tmp_path / "checkpoint_1.pth"
    with pytest.raises(RuntimeError, match="inline_container"):  # space left: not a full disk
        checkpoints.atomic_save(weights, target, save=wrapped)
    monkeypatch.setattr(fileio, "_free_bytes", lambda directory: 4096)
    with pytest.raises(checkpoints.DiskFullError, match=r"full at .* \(0 MiB free\)"):
        checkpoints.atomic_save(weights, target, save=wrapped)

    assert sorted(os.listdir(tmp_path)) == ["checkpoint_0.pth", checkpoints.CHECKPOINT_LATEST]
    assert torch.load(checkpoints.resolve_resume_path(tmp_path))["step"] == 1


def _runner(job, last_checkpoint):
    """What RunnerXFormer._save_checkpoint reads of its runner."""
    runner = SimpleNamespace(
        output_dir=job, state=TrainState(), use_distributed=False,
        config=SimpleNamespace(args=SimpleNamespace(cfg_path="run.yaml",
                                                    options=["run.max_epoch=2"])),
        _checkpoint_state=lambda epoch, iters: {"epoch": epoch})
    runner.state.last_checkpoint = last_checkpoint
    runner._resume_command = lambda resume_from: RunnerXFormer._resume_command(runner, resume_from)
    return runner


def test_full_disk_in_a_run_names_the_last_good_checkpoint_and_exits_74(tmp_path, monkeypatch, capsys):
    job = tmp_path / "20260101000000_1_0123abcd"
    job.mkdir()
    good = checkpoints.atomic_save({"epoch": 0}, job / "checkpoint_0.pth")
    monkeypatch.setattr(checkpoints, "atomic_save", lambda obj, path: (_ for _ in ()).throw(
        checkpoints.DiskFullError("the disk is full at %s (0 MiB free): checkpoint_1.pth could "
                                  "not be written" % job)))
    with pytest.raises(checkpoints.DiskFullError) as info:
        RunnerXFormer._save_checkpoint(_runner(job, good), 1)
    message = str(info.value)
    assert message.startswith("the disk is full at %s" % job) and "\n" not in message
    assert message.endswith("free space, then resume from the last good checkpoint with: %s -m "
                            "lavis.train --cfg-path run.yaml --options run.max_epoch=2 "
                            "run.resume_ckpt_path=%s" % (os.path.basename(sys.executable), good))
    with pytest.raises(checkpoints.DiskFullError, match="no checkpoint of this run is complete "
                                                        "yet: free space and start it again"):
        RunnerXFormer._save_checkpoint(_runner(job, None), 0)

    # the command line: that line after `error: `, exit status 74, no traceback
    def body(cfg, job_id):
        raise checkpoints.DiskFullError(message)

    with pytest.raises(SystemExit) as exit_info:
        launch.run_main(body, ["--cfg-path", str(TINY_STAGE1), "--options",
                               *tiny_stage1_options(tmp_path / "out")], "test")
    assert exit_info.value.code == checkpoints.EXIT_DISK_FULL == 74
    assert capsys.readouterr().err == "error: %s\n" % message
    assert torch.load(good)["epoch"] == 0


@pytest.mark.slow
def test_full_disk_in_a_real_training_run(tmp_path, monkeypatch, capsys, one_thread):
    real_save = torch.save

    def fills_up(obj, f, *args, **kwargs):  # the disk fills up at the end-of-epoch save
        if ".checkpoint_0.pth." in getattr(f, "name", ""):
            f.write(b"PK\x03\x04 the start of a zip")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    from lavis_xformer import train

    with pytest.raises(SystemExit) as info:
        train.main(["--cfg-path", str(TINY_STAGE1), "--options",
                    *tiny_stage1_options(tmp_path / "out", images=4), "run.checkpoint_every_iters=1"])
    assert info.value.code == 74
    job = os.path.realpath(tmp_path / "out" / "latest")
    good = os.path.join(job, "checkpoint_0_iter1.pth")
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: the disk is full at %s (" % job)
    assert errors[0].endswith("run.checkpoint_every_iters=1 run.resume_ckpt_path=%s" % good)
    assert sorted(os.listdir(job)) == ["checkpoint_0_iter1.pth", "checkpoint_latest.pth",
                                       "log.txt", "result"]
    latest = checkpoints.resolve_resume_path(job)  # the last good checkpoint loads
    assert latest == good and checkpoints.read_resume_checkpoint(latest)["iters_done"] == 1


# --- the start-up sweep of stale temporaries --------------------------------------------------

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_start_up_sweep_removes_only_the_runners_own_temporaries(tmp_path):
    assert checkpoints.JOB_FOLDER.match(launch.new_job_id())  # the names the runner gives
    host, pid = socket.gethostname().split(".")[0], _dead_pid()

    def tmp(folder, name):
        path = tmp_path / folder / (".%s.%s.%d.tmp" % (name, host, pid))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
        return path

    job = "20260101000000_4242_9f3a07c1"
    stale = [tmp(job, "checkpoint_0_iter2.pth"), tmp(job, checkpoints.CHECKPOINT_LATEST)]
    os.symlink(job, tmp_path / (".latest.%s.%d.tmp" % (host, pid)))  # point_latest's link
    stale.append(tmp_path / (".latest.%s.%d.tmp" % (host, pid)))
    users = [tmp(".", "results.csv"), tmp("mine", "checkpoint_0.pth"),  # not a job folder
             tmp("2026_run", "checkpoint_0.pth"), tmp(job, "notes.txt"),
             tmp(job + "/result", "checkpoint_0.pth")]  # not where the runner saves
    live = tmp(job, "checkpoint_1.pth").rename(
        tmp_path / job / (".checkpoint_1.pth.%s.%d.tmp" % (host, os.getpid())))

    removed = checkpoints.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(str(p) for p in stale)
    assert not any(os.path.lexists(p) for p in stale)
    assert all(p.read_bytes() == b"half a file" for p in users + [live])
