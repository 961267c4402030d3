"""The per-iteration learning-rate schedule ``linear_warmup_cosine_step_lr`` (warm-up, then a
cosine over the whole run, checked against a direct computation) and the runner_xformer
runner passing it ``iters_per_epoch``; other schedules are built as LAVIS builds them."""
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import lavis_xformer  # noqa: F401  (registers the schedules and the runner)
from lavis.common.optims import LinearWarmupCosineLRScheduler
from lavis.common.registry import registry
from lavis_xformer.optims import LinearWarmupCosineStepLRScheduler
from lavis_xformer.training.runner import RunnerXFormer

INIT, MIN, START = 1e-4, 5e-5, 1e-6


def _optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.0)


def _sched(max_epoch, iters_per_epoch, warmup_steps, optimizer=None):
    return LinearWarmupCosineStepLRScheduler(
        optimizer=optimizer or _optimizer(), max_epoch=max_epoch, min_lr=MIN, init_lr=INIT,
        decay_rate=None, warmup_start_lr=START, warmup_steps=warmup_steps,
        iters_per_epoch=iters_per_epoch)


def _expected(t, total, warmup):
    """The schedule written out: linear warm-up, then cosine from t = warmup to t = total - 1."""
    if t < warmup:
        return START + (INIT - START) * t / warmup
    return MIN + (INIT - MIN) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - 1 - warmup)))


def test_registered_under_its_name():
    assert registry.get_lr_scheduler_class("linear_warmup_cosine_step_lr") is LinearWarmupCosineStepLRScheduler


def test_one_epoch_run_warms_up_then_decays_to_min_lr():
    # the stage-2 shape: one epoch, 2k warm-up steps (iterations made up)
    iters, warmup = 10001, 2000
    opt = _optimizer()
    sched = _sched(1, iters, warmup, opt)

    def lr(step):
        sched.step(cur_epoch=0, cur_step=step)
        return opt.param_groups[0]["lr"]

    assert lr(0) == pytest.approx(START)
    assert lr(warmup // 2) == pytest.approx((START + INIT) / 2)
    assert lr(warmup) == pytest.approx(INIT)                    # end of warm-up: the peak
    mid = warmup + (iters - 1 - warmup) // 2
    assert lr(mid) == pytest.approx((INIT + MIN) / 2)          # cosine midpoint
    assert lr(iters - 1) == pytest.approx(MIN)                  # last iteration: the minimum
    for step in (1, 1999, 2001, 3000, 7777, 9999):
        assert lr(step) == pytest.approx(_expected(step, iters, warmup))
    # monotone: up during warm-up, down after
    lrs = [lr(s) for s in range(0, iters, 50)]
    peak = lrs.index(max(lrs))
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert min(lrs[peak:]) >= MIN - 1e-12                       # never below min_lr


def test_lavis_per_epoch_schedule_never_decays_in_one_epoch():
    """Why the plugin's schedule exists: LAVIS's stays at the peak for all of a one-epoch run."""
    opt = _optimizer()
    lavis_sched = LinearWarmupCosineLRScheduler(opt, max_epoch=1, min_lr=MIN, init_lr=INIT,
                                                warmup_steps=20, warmup_start_lr=START)
    lavis_sched.step(cur_epoch=0, cur_step=99)
    assert opt.param_groups[0]["lr"] == pytest.approx(INIT)
    _sched(1, 100, 20, opt).step(cur_epoch=0, cur_step=99)
    assert opt.param_groups[0]["lr"] == pytest.approx(MIN)


def test_counts_iterations_across_epochs():
    epochs, iters, warmup = 3, 40, 10
    total = epochs * iters
    opt = _optimizer()
    sched = _sched(epochs, iters, warmup, opt)
    for epoch in range(epochs):
        for step in range(iters):
            sched.step(cur_epoch=epoch, cur_step=step)
            t = epoch * iters + step
            assert opt.param_groups[0]["lr"] == pytest.approx(_expected(t, total, warmup)), (epoch, step)
    sched.step(cur_epoch=1, cur_step=0)                          # not reset at an epoch start
    assert opt.param_groups[0]["lr"] == pytest.approx(_expected(iters, total, warmup))
    assert opt.param_groups[0]["lr"] < INIT
    sched.step(cur_epoch=epochs - 1, cur_step=iters - 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(MIN)


def test_warmup_longer_than_one_epoch_and_no_warmup():
    opt = _optimizer()
    sched = _sched(2, 10, 15, opt)                               # warm-up spills into epoch 1
    sched.step(cur_epoch=1, cur_step=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(START + (INIT - START) * 12 / 15)
    sched.step(cur_epoch=1, cur_step=9)
    assert opt.param_groups[0]["lr"] == pytest.approx(MIN)
    sched = _sched(1, 11, 0, opt)                                # no warm-up: starts at the peak
    sched.step(cur_epoch=0, cur_step=0)
    assert opt.param_groups[0]["lr"] == pytest.approx(INIT)
    sched.step(cur_epoch=0, cur_step=5)
    assert opt.param_groups[0]["lr"] == pytest.approx((INIT + MIN) / 2)


def test_needs_iters_per_epoch():
    with pytest.raises(ValueError, match="iters_per_epoch"):
        LinearWarmupCosineStepLRScheduler(_optimizer(), max_epoch=1, min_lr=MIN, init_lr=INIT)


def _stub_runner(train_loader_len=None, **run):
    """A RunnerXFormer with only what its lr_scheduler property reads (no model, no data)."""
    runner = RunnerXFormer.__new__(RunnerXFormer)
    cfg = dict(max_epoch=2, init_lr=INIT, min_lr=MIN, warmup_lr=START, warmup_steps=3)
    cfg.update(run)
    runner.config = SimpleNamespace(run_cfg=OmegaConf.create(cfg))
    runner._lr_sched = None
    runner._optimizer = _optimizer()
    # the train loader: only its length is read; without one, reading it fails
    runner._dataloaders = {} if train_loader_len is None else {"train": [None] * train_loader_len}
    return runner


def test_runner_passes_the_train_loaders_length():
    runner = _stub_runner(train_loader_len=7, lr_sched="linear_warmup_cosine_step_lr")
    sched = runner.lr_scheduler
    assert isinstance(sched, LinearWarmupCosineStepLRScheduler)
    assert (sched.iters_per_epoch, sched.max_epoch, sched.total_steps) == (7, 2, 14)
    assert (sched.init_lr, sched.min_lr, sched.warmup_start_lr, sched.warmup_steps) == (INIT, MIN, START, 3)
    assert sched.optimizer is runner._optimizer
    assert runner.lr_scheduler is sched                          # built once


def test_runner_prefers_run_iters_per_epoch():
    runner = _stub_runner(lr_sched="linear_warmup_cosine_step_lr", iters_per_epoch=50)
    assert runner.lr_scheduler.iters_per_epoch == 50             # the train loader is not read


def test_runner_builds_other_schedules_as_lavis_does():
    runner = _stub_runner(lr_sched="linear_warmup_cosine_lr")   # no train loader needed
    sched = runner.lr_scheduler
    assert type(sched) is LinearWarmupCosineLRScheduler
    assert (sched.max_epoch, sched.init_lr, sched.min_lr, sched.warmup_steps, sched.warmup_start_lr) == (
        2, INIT, MIN, 3, START)
