"""``xformer_pretrain``: LAVIS's image-text pre-training task whose training loop logs and
prints every loss the model returns (``loss`` and its parts ``loss_itc``, ``loss_itm``,
``loss_lm``, ``loss_rec``), e.g.

    Train: data epoch: [0]  [10/20]  eta: 0:00:07  lr: 0.000100  loss: 9.1721  loss_itc: ...
"""
import logging
import numbers
import re

import torch
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.image_text_pretrain import ImageTextPretrainTask

from lavis_xformer.lavis_patches import distributed, metric_sync
from lavis_xformer.datasets.skipping import pop_skipped


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or infinite values; the step's update was not applied."""


_ADVICE = ("this step's update was not applied. Lower run.init_lr, check the data, or switch "
           "off run.amp, then resume from the last checkpoint with "
           "run.resume_ckpt_path=<its path or job directory>")

# torch's errors about NaN/inf operands, e.g. torch.multinomial's "probability tensor
# contains either `inf`, `nan` or element < 0" (ITM's negative mining after a diverged step)
_NON_FINITE_ERROR = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)


def _where(epoch, step, iters_per_epoch):
    return "epoch %d, iteration %d of %d (global step %d)" % (
        epoch, step, iters_per_epoch, epoch * iters_per_epoch + step)


def grads_finite(parameters):
    """0-dim bool tensor: every gradient of ``parameters`` is finite (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    norms = torch._foreach_norm(grads)
    return torch.isfinite(torch.stack([n.float() for n in norms]).sum())


def nonfinite_flags(loss, grads_ok):
    """(k,) float tensor on the loss's device, 1 where the loss (and, unless ``grads_ok`` is
    None, the gradients) is NaN/inf in any process; all-reduced so that every process stops
    at the same step and none is left waiting in a collective. No host sync."""
    flags = [~torch.isfinite(loss.detach().float())]
    if grads_ok is not None:
        flags.append(~grads_ok.to(loss.device))
    bad = torch.stack([f.reshape(()) for f in flags]).float()
    if distributed.dist_ready():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad


def check_finite(loss, grads_ok, parts, epoch, step, iters_per_epoch):
    """Raise NonFiniteLossError when ``loss`` (or, unless ``grads_ok`` is None, a gradient) is
    NaN or inf in any process. Returns the loss ``parts`` as floats: flags and parts reach
    the host in one synchronisation."""
    parts, bad = to_host(parts, nonfinite_flags(loss, grads_ok))
    if not any(bad):
        return parts
    what = "loss" if bad[0] else "gradient"
    here = ""
    if not torch.isfinite(loss.detach()).all():
        here = " (in this process: %s)" % ", ".join("%s=%s" % (k, v) for k, v in parts.items())
    raise NonFiniteLossError("the training %s is not finite at %s%s; %s" % (
        what, _where(epoch, step, iters_per_epoch), here, _ADVICE))


def loss_parts(output):
    """{name: detached 0-dim tensor or float} of every scalar entry of a model output whose
    name starts with "loss". Tensors stay on the device: ``to_host`` copies them all at once."""
    parts = {}
    for name, value in output.items():
        if not name.startswith("loss") or value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            parts[name] = value.detach().float().reshape(())
        elif isinstance(value, numbers.Number):
            parts[name] = float(value)
    return parts


def to_host(parts, flags=None):
    """Copy the loss parts (and the NaN/inf ``flags``) to the host in one transfer: one
    host-device synchronisation per call, where an ``.item()`` per value costs one each.
    Returns ({name: float}, [flag values])."""
    tensors = [v for v in parts.values() if torch.is_tensor(v)]
    if flags is not None:
        tensors = [flags.to(tensors[0].device) if tensors else flags] + tensors
    values = torch.cat([t.reshape(-1).float() for t in tensors]).tolist() if tensors else []
    bad = values[:len(flags)] if flags is not None else []
    values = iter(values[len(bad):])
    return {k: next(values) if torch.is_tensor(v) else v for k, v in parts.items()}, bad


@registry.register_task("xformer_pretrain")
class XFormerPretrainTask(ImageTextPretrainTask):

    def forward_step(self, model, samples):
        """(total loss to back-propagate, {loss name: value} for logging)."""
        output = model(samples)
        return output["loss"], loss_parts(output)

    def train_step(self, model, samples):
        return self.forward_step(model, samples)[0]

    def train_epoch(self, epoch, model, data_loader, optimizer, lr_scheduler, scaler=None,
                    cuda_enabled=False, log_freq=50, accum_grad_iters=1, start_iter=0,
                    after_step=None, check_finite_loss=True):
        """BaseTask.train_epoch plus what resuming within an epoch needs (``start_iter``,
        ``after_step``) and the NaN/inf guard; see _train_inner_loop."""
        return self._train_inner_loop(
            epoch=epoch, iters_per_epoch=len(data_loader), model=model, data_loader=data_loader,
            optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, log_freq=log_freq,
            cuda_enabled=cuda_enabled, accum_grad_iters=accum_grad_iters,
            start_iter=start_iter, after_step=after_step, check_finite_loss=check_finite_loss)

    def _train_inner_loop(self, epoch, iters_per_epoch, model, data_loader, optimizer,
                          lr_scheduler, scaler=None, start_iters=None, log_freq=50,
                          cuda_enabled=False, accum_grad_iters=1, start_iter=0,
                          after_step=None, check_finite_loss=True):
        """BaseTask's loop (epoch- and iteration-based runners), logging all loss parts.
        It also fixes two LAVIS 1.0.2 defects (listed in lavis_patches/__init__.py): autocast
        is torch.cuda.amp's even on a CPU run (here torch.autocast on the run's device type),
        and the end-of-epoch statistics are all-reduced on "cuda" whatever the backend
        (lavis_patches/metric_sync.py).

        Additions: the loop starts at iteration ``start_iter`` (a run resumed within the
        epoch) and calls ``after_step(epoch, iterations done)`` at the end of every iteration
        (the runner's mid-epoch checkpoints); a NaN/inf loss or gradient (without amp), or a
        forward pass that fails on NaN/inf values, raises NonFiniteLossError before the update
        (``check_finite_loss``); batches from SkippingCollater have their unreadable samples
        counted (``skipped_samples`` in the returned stats, summed over
        processes) and a batch without any readable sample is replaced by the next one."""
        if iters_per_epoch == 0:
            raise ValueError(
                "the train split has fewer samples than one batch per process "
                "(run.batch_size_train x processes); lower run.batch_size_train or add data")
        use_amp = scaler is not None
        if not hasattr(data_loader, "__next__"):
            data_loader = iter(data_loader)

        metric_logger = MetricLogger(delimiter="  ")
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
        metric_logger.add_meter("loss", SmoothedValue(window_size=1, fmt="{value:.4f}"))

        logging.info("Start training epoch {}, {} iters per inner epoch.".format(
            epoch, iters_per_epoch))
        header = "Train: data epoch: [{}]".format(epoch)
        if start_iters is None:
            inner_epoch = epoch  # epoch-based runner
        else:  # iteration-based runner: the lr follows the inner epoch
            inner_epoch = start_iters // iters_per_epoch
            header += "; inner epoch [{}]".format(inner_epoch)
        device_type = "cuda" if cuda_enabled else "cpu"

        skipped = 0
        for i in metric_logger.log_every(range(start_iter, iters_per_epoch), log_freq, header):
            samples, skipped_paths = pop_skipped(next(data_loader))
            skipped += len(skipped_paths)
            empty = 0
            while samples is None:  # every sample of the batch unreadable: take the next
                empty += 1
                if empty > len(data_loader):
                    raise RuntimeError("no readable training sample in %d batches in a row "
                                       "(a whole pass); see the warnings above for the paths"
                                       % empty)
                samples, skipped_paths = pop_skipped(next(data_loader))
                skipped += len(skipped_paths)
            samples = prepare_sample(samples, cuda_enabled=cuda_enabled)
            samples.update({"epoch": inner_epoch, "num_iters_per_epoch": iters_per_epoch,
                            "iters": i})
            lr_scheduler.step(cur_epoch=inner_epoch, cur_step=i)

            try:
                with torch.autocast(device_type=device_type, enabled=use_amp):
                    loss, parts = self.forward_step(model=model, samples=samples)
            except RuntimeError as e:
                if check_finite_loss and _NON_FINITE_ERROR.search(str(e)):
                    raise NonFiniteLossError("the forward pass met NaN/inf values at %s (%s); %s"
                                             % (_where(epoch, i, iters_per_epoch), e, _ADVICE)) from e
                raise

            if use_amp:
                scaler.scale(loss).backward()
            else:
                loss.backward()

            steps = (i + 1) % accum_grad_iters == 0
            # The step's one host sync: loss parts for the log (and NaN/inf flags) together.
            if check_finite_loss:  # before the update; with amp the scaler skips inf gradients
                grads_ok = grads_finite(model.parameters()) if steps and not use_amp else None
                parts = check_finite(loss, grads_ok, parts, epoch, i, iters_per_epoch)
            else:
                parts, _ = to_host(parts)

            if steps:
                if use_amp:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad()

            for name in parts:
                if name not in metric_logger.meters:
                    metric_logger.add_meter(name, SmoothedValue(window_size=1, fmt="{value:.4f}"))
            metric_logger.update(**parts)
            metric_logger.update(lr=optimizer.param_groups[0]["lr"])
            if after_step is not None:
                after_step(epoch, i + 1)

        metric_sync.synchronize_metric_logger(metric_logger)
        logging.info("Averaged stats: " + metric_logger.global_avg())
        stats = {k: "{:.3f}".format(meter.global_avg) for k, meter in metric_logger.meters.items()}
        skipped = metric_sync.all_reduce_sum(skipped)
        if skipped:
            logging.warning("epoch %d: skipped %d unreadable training samples (paths in the "
                            "warnings above)", epoch, skipped)
        stats["skipped_samples"] = skipped
        return stats
