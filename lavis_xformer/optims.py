"""Learning-rate schedules of the plugin; importing this registers them into LAVIS's registry.

``linear_warmup_cosine_step_lr``: LAVIS 1.0.2's ``linear_warmup_cosine_lr`` decays once per
*epoch* and spends all of epoch 0 on warm-up and then the peak, so a one-epoch run (the paper's
stage 2: 1e-4 -> 5e-5 over one epoch after 2k warm-up steps) never decays. This schedule
counts iterations over the whole run instead:

* iterations ``t < warmup_steps``: linear from ``warmup_start_lr`` (t = 0) towards ``init_lr``
  (reached at t = warmup_steps);
* then a cosine from ``init_lr`` (t = warmup_steps) to ``min_lr`` (the run's last iteration,
  t = max_epoch * iters_per_epoch - 1).

``t = cur_epoch * iters_per_epoch + cur_step``, so the rate is a pure function of the position
in the run (a resumed run picks it up where it was). Like LAVIS's schedules it is stepped once
per iteration (before the optimizer step), so with ``accum_grad_iters > 1`` ``warmup_steps``
counts iterations, not optimizer steps.
"""
import math

import torch

from lavis.common.registry import registry


@registry.register_lr_scheduler("linear_warmup_cosine_step_lr")
class LinearWarmupCosineStepLRScheduler:
    """Per-iteration linear warm-up then cosine decay over the whole run.

    ``iters_per_epoch`` is required (the runner_xformer runner passes the train loader's
    length, or ``run.iters_per_epoch`` when set); the other arguments are those LAVIS's
    RunnerBase passes to every schedule (``decay_rate`` is accepted and ignored).
    """

    def __init__(self, optimizer, max_epoch, min_lr, init_lr, iters_per_epoch=None,
                 warmup_steps=0, warmup_start_lr=-1, **kwargs):
        if not iters_per_epoch or int(iters_per_epoch) <= 0:
            raise ValueError(
                "lr_sched linear_warmup_cosine_step_lr needs iters_per_epoch > 0 (got %r): use "
                "runner_xformer, or set run.iters_per_epoch" % (iters_per_epoch,))
        self.optimizer = optimizer
        self.max_epoch = int(max_epoch)
        self.iters_per_epoch = int(iters_per_epoch)
        self.min_lr = float(min_lr)
        self.init_lr = float(init_lr)
        self.warmup_steps = int(warmup_steps or 0)
        # as LAVIS: a negative warmup_start_lr (the default) means "start at init_lr"
        self.warmup_start_lr = float(warmup_start_lr) if warmup_start_lr >= 0 else self.init_lr
        self.total_steps = self.max_epoch * self.iters_per_epoch

    def lr_at(self, global_step):
        """The learning rate of iteration ``global_step`` (0-based, counted over the run)."""
        t = global_step
        if t < self.warmup_steps:
            return self.warmup_start_lr + (self.init_lr - self.warmup_start_lr) * t / self.warmup_steps
        decay_steps = self.total_steps - 1 - self.warmup_steps  # last iteration ends at min_lr
        if decay_steps <= 0:
            return self.init_lr
        progress = min(1.0, (t - self.warmup_steps) / decay_steps)
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step(self, cur_epoch, cur_step):
        """LAVIS's signature: ``cur_step`` is the iteration index within epoch ``cur_epoch``."""
        lr = self.lr_at(cur_epoch * self.iters_per_epoch + cur_step)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        return lr


def adamw(param_groups, fused=None, **kwargs):
    """``torch.optim.AdamW`` with the fused kernel (one launch per step for all parameters,
    instead of the foreach variant's several per parameter group) when every parameter is on
    a CUDA device, else PyTorch's default implementation. ``fused``: force it on or off.
    Same update up to float rounding (tests/test_speed_work.py)."""
    groups = list(param_groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def fused_like(optimizer):
    """``optimizer`` (a fresh, state-less AdamW, e.g. RunnerBase's) rebuilt by ``adamw`` with
    the same parameter groups and hyper-parameters."""
    if not isinstance(optimizer, torch.optim.AdamW) or optimizer.state:
        return optimizer
    keep = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    groups = [{k: v for k, v in g.items() if k == "params" or k in keep} for g in optimizer.param_groups]
    return adamw(groups, **{k: optimizer.defaults[k] for k in keep})
