"""Bad input never loses work and never hides: unreadable training images are skipped, logged
with their path and counted; wrong names, paths and options stop before anything is built
with one message; a loss that turns NaN/inf stops the run naming the step and keeps the last
complete checkpoint."""
import json
import os

import pytest

from _testlib import TINY_STAGE1, easyvqa_split, launch_args
import torch
from PIL import ImageFile

import lavis_xformer  # noqa: F401  (registers builders, models, tasks, runner)
from lavis_xformer.datasets import easyvqa
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.datasets.skipping import (
    SKIPPED_KEY, SkipBadSamples, SkippingCollater, pop_skipped)
from lavis_xformer.training import launch
from lavis_xformer.training.step import NonFiniteLossError, check_finite, grads_finite

IMAGES = 8
TRUNCATED, MISSING = 3, 5  # image ids


@pytest.fixture
def damaged_root(tmp_path):
    """An easy-VQA folder with the first 8 train images, image 3 truncated half-way (a real
    PNG header, then nothing) and image 5 missing."""
    easyvqa_split(tmp_path / "data", "train", IMAGES, truncated=[TRUNCATED], missing=[MISSING])
    return tmp_path / "data"


def test_unreadable_images_are_replaced_by_the_next_and_recorded(damaged_root, caplog):
    from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor

    dataset = easyvqa.EasyVQACaptionDataset(BlipImageEvalProcessor(64), BlipCaptionProcessor(),
                                            str(damaged_root / "train"))
    wrapped = SkipBadSamples(dataset)
    assert len(wrapped) == IMAGES and wrapped.annotation is dataset.annotation
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as LAVIS's coco_caption_datasets sets it globally
    try:
        items = [wrapped[i] for i in range(IMAGES)]
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    truncated = str(damaged_root / "train" / "images" / "3.png")
    missing = str(damaged_root / "train" / "images" / "5.png")
    assert [item["image_id"] for item in items] == [0, 1, 2, 4, 4, 6, 6, 7]
    assert [item.get(SKIPPED_KEY) for item in items] == [
        None, None, None, [truncated], None, [missing], None, None]
    assert "skipping unreadable training sample 3, %s (OSError: image file is truncated" % truncated \
        in caplog.text
    assert "skipping unreadable training sample 5, %s (FileNotFoundError" % missing in caplog.text

    collate = SkippingCollater(dataset.collater)
    batch = collate([wrapped[2], wrapped[3], wrapped[5]])  # the batch keeps its size
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image_id"].tolist() == [2, 4, 6]
    batch, skipped = pop_skipped(batch)
    assert skipped == [truncated, missing] and SKIPPED_KEY not in batch

    # a broken data set is an error, not an endless skip
    wrapped.max_tries = 2
    os.remove(damaged_root / "train" / "images" / "6.png")
    with pytest.raises(RuntimeError, match="2 training samples in a row from index 5 are unreadable"):
        wrapped[5]


@pytest.mark.slow
def test_training_skips_counts_and_logs_unreadable_images(damaged_root, tmp_path, tiny_stage1):
    out = tmp_path / "out"
    output = tiny_stage1("out", "datasets.easyvqa_caption.build_info.root=%s" % damaged_root,
                         images=IMAGES).output
    for i in (TRUNCATED, MISSING):
        assert "skipping unreadable training sample %d, %s" % (
            i, damaged_root / "train" / "images" / ("%d.png" % i)) in output
    # the run's order (seed 42) draws each damaged image once in its one pass
    assert "epoch 0: skipped 2 unreadable training samples" in output
    assert len([l for l in output.splitlines() if l.startswith("Train: data epoch: [0]  [")]) == 4
    stats = [json.loads(l) for l in (out / "latest" / "log.txt").read_text().splitlines()
             if l.startswith("{") and "train_skipped_samples" in l]
    assert [s["train_skipped_samples"] for s in stats] == [2]
    assert (out / "latest" / "checkpoint_0.pth").is_file()


# --- stopped before anything is built ------------------------------------------------------

@pytest.mark.parametrize("option, message", [
    ("run.task=no_such_task", "run.task: unknown task 'no_such_task'. Registered tasks: "),
    ("model.arch=no_such_model", "model.arch: unknown model 'no_such_model'"),
    ("model.model_type=huge", "model.model_type: 'huge' is not a type of model 'xformer'"),
    ("run.runner=no_such_runner", "run.runner: unknown runner 'no_such_runner'"),
    # its step returns the model's loss dict, which only runner_xformer's loop reads
    ("run.runner=runner_base", "run.task xformer_pretrain trains under run.runner: "
                               "runner_xformer (got 'runner_base')"),
    ("run.lr_sched=no_such_sched", "run.lr_sched: unknown schedule 'no_such_sched'"),
    ("run.checkpoint_every_iters=-5", "run.checkpoint_every_iters=-5 is out of range; allowed: >= 0"),
    ("run.checkpoint_every_iters=often", "run.checkpoint_every_iters='often' must be an integer or null"),
])
def test_wrong_names_and_options_are_one_clear_error(option, message):
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, option))
    assert message in str(info.value)
    if "unknown task" in message:
        assert "xformer_pretrain" in str(info.value)


def test_missing_resume_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="run.resume_ckpt_path: no checkpoint at .*gone.pth"):
        launch.load_config(launch_args(TINY_STAGE1, "run.resume_ckpt_path=%s" % (tmp_path / "gone.pth")))
    with pytest.raises(ConfigError, match="directory without checkpoint_latest.pth"):
        launch.load_config(launch_args(TINY_STAGE1, "run.resume_ckpt_path=%s" % tmp_path))


# --- NaN / inf ------------------------------------------------------------------------------

def test_check_finite_names_the_step_and_what_is_not_finite():
    check_finite(torch.tensor(1.5), torch.tensor(True), {"loss": 1.5}, 0, 3, 10)
    with pytest.raises(NonFiniteLossError,
                       match=r"training loss is not finite at epoch 2, iteration 3 of 10 "
                             r"\(global step 23\) \(in this process: loss=nan, loss_itc=nan\)"):
        check_finite(torch.tensor(float("nan")), None, {"loss": float("nan"), "loss_itc": float("nan")},
                     2, 3, 10)
    layer = torch.nn.Linear(2, 2)
    layer(torch.tensor([[float("inf"), 1.0]])).sum().backward()
    assert not grads_finite(layer.parameters())
    with pytest.raises(NonFiniteLossError, match="training gradient is not finite at epoch 0"):
        check_finite(torch.tensor(2.0), grads_finite(layer.parameters()), {}, 0, 0, 1)
    # raised once, by the loop, naming where to resume from
    with pytest.raises(NonFiniteLossError, match=r"resume_ckpt_path=<its path or job directory>"
                                                 r"\. Last complete checkpoint: /jobs/c_0_iter2\.pth$"):
        check_finite(torch.tensor(float("inf")), None, {}, 0, 2, 4, "/jobs/c_0_iter2.pth")


def test_the_loop_takes_a_loss_tensor_or_a_dict_of_the_loss_and_its_parts():
    """A LAVIS task's train_step returns the loss; xformer_pretrain's the model's output."""
    from lavis_xformer.training.runner import split_loss

    loss = torch.tensor(2.5, requires_grad=True) * 1
    got, parts = split_loss(loss)
    assert got is loss and list(parts) == ["loss"] and float(parts["loss"]) == 2.5
    assert not parts["loss"].requires_grad
    got, parts = split_loss({"loss": loss, "loss_itc": torch.tensor(0.5), "sims": torch.ones(2, 2)})
    assert got is loss and sorted(parts) == ["loss", "loss_itc"]


@pytest.mark.slow
def test_diverging_run_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, tiny_stage1):
    """A learning rate of 1e30 is a real divergence: after two updates the ITM negative mining
    meets NaN similarities (torch.multinomial fails) at iteration 2; the run stops there with
    exit status 3 and one message, and the checkpoint of iteration 2 stays the latest."""
    out = tmp_path / "out"
    result = tiny_stage1("out", "run.checkpoint_every_iters=1", "run.init_lr=1e30",
                         "run.warmup_steps=0", expect=3)
    job = os.path.realpath(out / "latest")
    last = os.path.join(job, "checkpoint_0_iter2.pth")
    assert "error: the forward pass met NaN/inf values at epoch 0, iteration 2 of 4" in result.stderr
    assert "Last complete checkpoint: %s" % last in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(f for f in os.listdir(job) if f.endswith(".pth")) == [
        "checkpoint_0_iter2.pth", "checkpoint_latest.pth"]
    assert os.readlink(os.path.join(job, "checkpoint_latest.pth")) == "checkpoint_0_iter2.pth"
    state = torch.load(last, map_location="cpu")
    assert state["iters_done"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_infinite_loss_stops_every_process_at_the_same_step(tmp_path, tiny_stage1):
    """An infinite loss weight (model.loss_weights.lm: .inf) under torchrun: the check is
    all-reduced, so the processes stop together at iteration 0 with exit status 3 (in the
    runs seen here both did before torchrun tore the group down)."""
    result = tiny_stage1("out", "model.loss_weights.lm=.inf", processes=2, expect=None)
    output = result.output
    assert result.returncode != 0
    assert ("error: the training loss is not finite at epoch 0, iteration 0 of 2 (global step 0) "
            "(in this process: loss=inf") in output
    assert "Last complete checkpoint: none written by this run" in output
    # the clean exit (3) of each process; torchrun may end the slower one first (SIGTERM)
    codes = [line.split(":")[1].split()[0] for line in output.splitlines()
             if line.strip().startswith("exitcode  :")]
    assert "3" in codes and set(codes) <= {"3", "-15"}, output[-4000:]
    assert not (tmp_path / "out" / "latest").exists()
