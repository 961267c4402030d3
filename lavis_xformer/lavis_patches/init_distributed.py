"""torch.distributed set-up that also works on CPUs (gloo).

Defect (LAVIS 1.0.2): ``lavis.common.dist_utils.init_distributed_mode`` always picks the nccl
backend and calls ``torch.cuda.set_device``, so ``torchrun`` on a CPU machine (or with
``run.device=cpu``) dies before training starts; its SLURM branch never sets ``world_size``.

Patch: ``init_distributed_mode`` reads the torchrun environment (RANK, WORLD_SIZE,
LOCAL_RANK), uses gloo when CUDA is unavailable or ``run.device`` is cpu and nccl otherwise,
and turns ``run.distributed`` off when the process was not launched by torchrun.
``training/launch.py`` calls it in place of LAVIS's.

Removal: once LAVIS chooses the backend from the device, call
``lavis.common.dist_utils.init_distributed_mode`` in launch.py and delete this module.
"""
import datetime
import os

import torch
import torch.distributed as dist


def wants_cuda(run_cfg) -> bool:
    """True when the run asks for a CUDA device and one is present."""
    return str(run_cfg.get("device", "cuda")).startswith("cuda") and torch.cuda.is_available()


def init_distributed_mode(run_cfg):
    from lavis.common.dist_utils import setup_for_distributed

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print("Not using distributed mode")
        run_cfg.distributed = False
        return

    run_cfg.rank = int(os.environ["RANK"])
    run_cfg.world_size = int(os.environ["WORLD_SIZE"])
    run_cfg.gpu = int(os.environ.get("LOCAL_RANK", 0))
    run_cfg.distributed = True

    if wants_cuda(run_cfg):
        torch.cuda.set_device(run_cfg.gpu)
        run_cfg.dist_backend = "nccl"
    else:
        run_cfg.dist_backend = "gloo"
    init_method = run_cfg.get("dist_url", None) or "env://"
    print("| distributed init (rank {}, world {}, backend {}): {}".format(
        run_cfg.rank, run_cfg.world_size, run_cfg.dist_backend, init_method), flush=True)
    dist.init_process_group(
        backend=run_cfg.dist_backend,
        init_method=init_method,
        world_size=run_cfg.world_size,
        rank=run_cfg.rank,
        # generous, as LAVIS does, so rank 0 may prepare data while the others wait
        timeout=datetime.timedelta(hours=12),
    )
    dist.barrier()
    setup_for_distributed(run_cfg.rank == 0)
