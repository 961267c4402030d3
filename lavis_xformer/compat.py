"""Every work-around of a Salesforce LAVIS 1.0.2 defect lives here, each naming the defect.

LAVIS itself is never edited; the plugin calls these helpers instead of the defective code.
"""
import contextlib
import functools
import logging

import torch
import torch.distributed as dist


# --- Defect: Blip2Qformer.forward calls torch.distributed.get_rank()/get_world_size() and
# all_gather unconditionally, so BLIP-2 style losses fail without a process group (CPU, one
# process). These gathers fall back to the local tensor when no group is initialised.

def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if dist_ready() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist_ready() else 1


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


# --- Defect: lavis.models.eva_vit.VisionTransformer.__init__ computes its drop-path rates
# with ``[x.item() for x in torch.linspace(...)]``; under ``with torch.device("meta")`` the
# linspace is a meta tensor and ``.item()`` raises ("Tensor.item() cannot be called on meta
# tensors"). Inside this context torch.linspace is computed on the CPU, so the ViT can be
# built on the meta device for inspection.

@contextlib.contextmanager
def eva_vit_meta_safe():
    original = torch.linspace

    def linspace_on_cpu(*args, **kwargs):
        kwargs["device"] = "cpu"
        return original(*args, **kwargs)

    torch.linspace = linspace_on_cpu
    try:
        yield
    finally:
        torch.linspace = original


# --- Defect: BaseModel.load_checkpoint_from_config cannot skip loading and
# Blip2Base.load_from_pretrained does not log which keys were missing or unexpected.

def load_state_dict_logged(model: torch.nn.Module, state_dict: dict, source: str):
    """Non-strict load that logs what was loaded, missing and unexpected."""
    msg = model.load_state_dict(state_dict, strict=False)
    loaded = len(state_dict) - len(msg.unexpected_keys)
    logging.info("Loaded %d tensors from %s", loaded, source)
    if msg.missing_keys:
        logging.info("Not in %s (kept as built): %d keys, e.g. %s", source,
                     len(msg.missing_keys), msg.missing_keys[:5])
    if msg.unexpected_keys:
        logging.warning("Ignored %d keys of %s not in the model, e.g. %s",
                        len(msg.unexpected_keys), source, msg.unexpected_keys[:5])
    return msg


# --- Defect: lavis.common.dist_utils.init_distributed_mode always picks the nccl backend and
# calls torch.cuda.set_device, so `torchrun` on a CPU machine (or with run.device=cpu) dies
# before training starts; its SLURM branch never sets world_size. This replacement reads
# the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), uses gloo when CUDA is unavailable
# or run.device is cpu and nccl otherwise, and turns run.distributed off when the process was
# not launched by torchrun.

def wants_cuda(run_cfg) -> bool:
    """True when the run asks for a CUDA device and one is present."""
    return str(run_cfg.get("device", "cuda")).startswith("cuda") and torch.cuda.is_available()


def init_distributed_mode(run_cfg):
    import datetime
    import os

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


def barrier():
    """dist.barrier() only when a process group exists (RunnerBase.train calls it always)."""
    if dist_ready():
        dist.barrier()


# --- Defect: lavis.common.logger.SmoothedValue.synchronize_between_processes builds its
# all-reduce tensor with device="cuda", so BaseTask's end-of-epoch statistics crash under a
# gloo (CPU) process group. This version reduces on the device the backend needs.

def all_reduce_sum(value: int) -> int:
    """Sum of an integer over all processes (itself without a process group)."""
    if not dist_ready():
        return int(value)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def synchronize_metric_logger(metric_logger):
    if not dist_ready():
        return
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    for meter in metric_logger.meters.values():
        t = torch.tensor([meter.count, meter.total], dtype=torch.float64, device=device)
        dist.barrier()
        dist.all_reduce(t)
        count, total = t.tolist()
        meter.count = int(count)
        meter.total = total


# --- Defects of lavis.runners.runner_base.RunnerBase (no CPU / single-process training:
# DDP always given device_ids, PrefetchLoader builds torch.cuda.Stream, unconditional
# dist.barrier(), the `model` property returns None when the model already sits on the run
# device, a CUDA GradScaler even on CPU, relative output_dir put inside LAVIS's package dir,
# strict resume that fails because checkpoints omit frozen weights (LAVIS issue #153)) are
# fixed by the overrides of lavis_xformer.runners.runner_xformer.RunnerXFormer, each of which
# names its defect.


# --- Defect: LAVIS 1.0.2's generation classes (Q-Former ``BertLMHeadModel``, ``modeling_opt``'s
# ``OPTForCausalLM``, ``modeling_t5``'s ``T5ForConditionalGeneration``) name the cache ``past``
# in ``prepare_inputs_for_generation``, but transformers 4.26 hands it over as
# ``past_key_values``: the cache is silently dropped and every generation step recomputes the
# whole sequence (same tokens, about 5x slower for the tiny OPT). These subclasses pass it on.

def _prepare_with_cache(base):
    def prepare_inputs_for_generation(self, *args, past_key_values=None, **kwargs):
        if past_key_values is not None and kwargs.get("past") is None:
            kwargs["past"] = past_key_values
        return base.prepare_inputs_for_generation(self, *args, **kwargs)

    return prepare_inputs_for_generation


@functools.lru_cache(maxsize=None)
def with_generation_cache(base):
    """A subclass of a LAVIS generation class whose cache reaches the model (see above)."""
    return type(base.__name__, (base,), {
        "prepare_inputs_for_generation": _prepare_with_cache(base),
        "__module__": __name__,
        "__doc__": f"{base.__module__}.{base.__name__} with the generation cache passed on.",
    })


# --- Defect: lavis.common.config.Config.build_model_config looks the chosen model type up as
# kwargs.get("model.model_type"), but Config hands it the --options as a nested config
# ({"model": {"model_type": ...}}), so `--options model.model_type=X` never selects X's default
# model yaml: the run keeps the defaults of the run file's model type with only the name
# changed (e.g. OPT-2.7B sizes under the name pretrain_opt6.7b). This rebuilds the model and
# preprocess sections as LAVIS means to: X's defaults, then the run file's model section,
# then the options.

def apply_model_type_option(cfg, options):
    """Fix up a built ``lavis.common.config.Config`` when ``options`` (a DictConfig of the
    --options) choose another model type than the run file."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    from lavis_xformer.runners.run_files import load_run_file

    model_type = OmegaConf.select(options, "model.model_type")
    file_model = load_run_file(cfg.args.cfg_path).get("model", None) or {}
    if not model_type or model_type == file_model.get("model_type", None):
        return cfg
    model_cls = registry.get_model_class(cfg.config.model.arch)
    defaults = OmegaConf.load(model_cls.default_config_path(model_type))
    user = {key: options[key] for key in ("model", "preprocess") if key in options}
    rebuilt = OmegaConf.merge(defaults, {"model": file_model}, user)
    cfg.config.model = rebuilt.model
    if "preprocess" in rebuilt:
        cfg.config.preprocess = rebuilt.preprocess
    return cfg
