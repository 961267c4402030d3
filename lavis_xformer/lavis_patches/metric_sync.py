"""End-of-epoch statistics reduced on the device the process group's backend needs.

Defect (LAVIS 1.0.2): ``lavis.common.logger.SmoothedValue.synchronize_between_processes``
builds its all-reduce tensor with ``device="cuda"``, so ``BaseTask``'s end-of-epoch statistics
(``MetricLogger.synchronize_between_processes``) crash under a gloo (CPU) process group.

Patch: ``synchronize_metric_logger`` and ``all_reduce_sum`` reduce on "cuda" for nccl and on
"cpu" otherwise; the runner's training loop (``training/runner.py``) calls them.

Removal: once SmoothedValue picks the device from the backend, call
``metric_logger.synchronize_between_processes()`` in the loop and delete this module.
"""
import torch
import torch.distributed as dist

from lavis_xformer.lavis_patches.distributed import dist_ready


def _device():
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_reduce_sum(value: int) -> int:
    """Sum of an integer over all processes (itself without a process group)."""
    if not dist_ready():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_device())
    dist.all_reduce(t)
    return int(t.item())


def synchronize_metric_logger(metric_logger):
    """``MetricLogger.synchronize_between_processes`` on the backend's device."""
    if not dist_ready():
        return
    device = _device()
    for meter in metric_logger.meters.values():
        t = torch.tensor([meter.count, meter.total], dtype=torch.float64, device=device)
        dist.barrier()
        dist.all_reduce(t)
        count, total = t.tolist()
        meter.count = int(count)
        meter.total = total
