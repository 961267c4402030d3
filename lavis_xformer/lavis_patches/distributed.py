"""Collectives that also work in a single process without a process group.

Defect (LAVIS 1.0.2): ``lavis.models.blip2_models.blip2_qformer.Blip2Qformer.forward`` calls
``torch.distributed.get_rank()``/``get_world_size()`` and its ``concat_all_gather`` /
``all_gather_with_grad`` (``lavis.models.base_model``) unconditionally, so BLIP-2 style losses
fail without a process group (a CPU run, one process); ``RunnerBase.train`` and
``BaseTask.evaluation`` likewise call ``dist.barrier()`` unconditionally.

Patch: the plugin's models, tasks and runner call these functions instead; each falls back to
the local tensor (or does nothing) when no process group is initialised.

Removal: once LAVIS checks ``dist.is_initialized()`` itself, call
``lavis.common.dist_utils.get_rank``/``get_world_size`` and ``lavis.models.base_model``'s
gathers directly and delete this module.
"""
import torch
import torch.distributed as dist


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if dist_ready() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist_ready() else 1


def barrier():
    """dist.barrier() only when a process group exists."""
    if dist_ready():
        dist.barrier()


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradient; identity in a single process."""
    if get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 keeping the gradient to the local slice; identity in one process."""
    if get_world_size() == 1:
        return tensor
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)
