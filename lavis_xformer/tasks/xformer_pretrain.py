"""``xformer_pretrain``: LAVIS's image-text pre-training task whose training loop logs and
prints every loss the model returns (``loss`` and its parts ``loss_itc``, ``loss_itm``,
``loss_lm``, ``loss_rec``), e.g.

    Train: data epoch: [0]  [10/20]  eta: 0:00:07  lr: 0.000100  loss: 9.1721  loss_itc: ...
"""
import logging
import numbers

import torch
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.image_text_pretrain import ImageTextPretrainTask

from lavis_xformer import compat


def loss_parts(output):
    """{name: float} of every scalar entry of a model output whose name starts with "loss"."""
    parts = {}
    for name, value in output.items():
        if not name.startswith("loss") or value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.detach().float().item()
        if isinstance(value, numbers.Number):
            parts[name] = float(value)
    return parts


@registry.register_task("xformer_pretrain")
class XFormerPretrainTask(ImageTextPretrainTask):

    def forward_step(self, model, samples):
        """(total loss to back-propagate, {loss name: value} for logging)."""
        output = model(samples)
        return output["loss"], loss_parts(output)

    def train_step(self, model, samples):
        return self.forward_step(model, samples)[0]

    def _train_inner_loop(self, epoch, iters_per_epoch, model, data_loader, optimizer,
                          lr_scheduler, scaler=None, start_iters=None, log_freq=50,
                          cuda_enabled=False, accum_grad_iters=1):
        """BaseTask's loop (epoch- and iteration-based runners), logging all loss parts.
        It also fixes two LAVIS 1.0.2 defects: autocast is torch.cuda.amp's even on a CPU run,
        and the end-of-epoch statistics are all-reduced on "cuda" whatever the backend."""
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

        for i in metric_logger.log_every(range(iters_per_epoch), log_freq, header):
            samples = prepare_sample(next(data_loader), cuda_enabled=cuda_enabled)
            samples.update({"epoch": inner_epoch, "num_iters_per_epoch": iters_per_epoch,
                            "iters": i})
            lr_scheduler.step(cur_epoch=inner_epoch, cur_step=i)

            with torch.autocast(device_type=device_type, enabled=use_amp):
                loss, parts = self.forward_step(model=model, samples=samples)

            if use_amp:
                scaler.scale(loss).backward()
            else:
                loss.backward()

            if (i + 1) % accum_grad_iters == 0:
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

        compat.synchronize_metric_logger(metric_logger)
        logging.info("Averaged stats: " + metric_logger.global_avg())
        return {k: "{:.3f}".format(meter.global_avg) for k, meter in metric_logger.meters.items()}
