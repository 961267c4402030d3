"""What lavis_xformer.train and lavis_xformer.evaluate share: command line, config loading with
early checks, distributed set-up, seeds and runner choice."""
import argparse
import importlib
import os
import random
import sys

import numpy as np
import torch
import torch.backends.cudnn as cudnn
import yaml
from lavis.common.dist_utils import get_rank
from lavis.common.registry import registry
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavis_xformer.lavis_patches import distributed, model_type_option
from lavis_xformer.lavis_patches.init_distributed import init_distributed_mode
from lavis_xformer.training import preemption
from lavis_xformer.training.step import NonFiniteLossError
from lavis_xformer.config_keys import ConfigError, check_config
from lavis_xformer.datasets.checks import check_dataset_names, check_datasets
from lavis_xformer.training.checkpoints import check_checkpoints, check_resume
from lavis_xformer.training.run_files import (IncludingConfig, load_run_file, option_dotlist,
                                               parse_options)
from lavis_xformer.training.runner import RunnerXFormer


def parse_args(argv=None, description="LAVIS run"):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="path to the run configuration (yaml)")
    parser.add_argument(
        "--options", nargs="+",
        help="override settings of the run configuration: key=value pairs in dotted form, "
             "e.g. run.max_epoch=1 datasets.easyvqa_caption.build_info.max_images=64",
    )
    return parser.parse_args(argv)


def import_run_modules(config):
    """Import the modules ``run.imports`` names: an application on top of the plugin (the
    miniature world) registers its builders only for the runs whose project files ask."""
    names = config.get("run", {}).get("imports", None) or []
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError("run.imports=%r must be a list of module names, e.g. "
                          "[lavis_xformer.world.datasets]" % (names,))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError("run.imports: cannot import %s (%s); name an installed module" % (
                name, " ".join(str(e).split()))) from None


def _pre_check(config, path):
    """Checks LAVIS's Config would fail on with an assertion or an AttributeError."""
    for section in ("model", "datasets", "run"):
        if not isinstance(config.get(section, None), DictConfig):
            raise ConfigError("%s: missing or empty section `%s:`" % (path, section))
    arch = config.model.get("arch", None)
    model_cls = registry.get_model_class(arch) if arch else None
    if model_cls is None:
        raise ConfigError("model.arch: unknown model %r. Registered models: %s" % (
            arch, ", ".join(registry.list_models())))
    model_type = config.model.get("model_type", None)
    known_types = sorted(getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {}))
    if model_type not in known_types:
        raise ConfigError("model.model_type: %r is not a type of model %r; types: %s" % (
            model_type, arch, ", ".join(known_types)))
    check_dataset_names(list(config.datasets))
    for name in config.datasets:
        if not isinstance(config.datasets[name], DictConfig):
            raise ConfigError("datasets.%s must be a mapping; write `%s: {}` to take the "
                              "builder's defaults" % (name, name))
    task = config.run.get("task", None)
    if registry.get_task_class(task) is None:
        raise ConfigError("run.task: unknown task %r. Registered tasks: %s" % (
            task, ", ".join(registry.list_tasks())))
    lr_sched = config.run.get("lr_sched", None)
    if not config.run.get("evaluate", False) and registry.get_lr_scheduler_class(lr_sched) is None:
        raise ConfigError("run.lr_sched: unknown schedule %r. Registered schedules: %s" % (
            lr_sched, ", ".join(registry.list_lr_schedulers())))
    runner = config.run.get("runner", "runner_base")
    if registry.get_runner_class(runner) is None:
        raise ConfigError("run.runner: unknown runner %r. Registered runners: %s" % (
            runner, ", ".join(registry.list_runners())))
    if task == "xformer_pretrain" and not config.run.get("evaluate", False) and not issubclass(
            registry.get_runner_class(runner), RunnerXFormer):
        # its step returns the model's loss dict, which only runner_xformer's loop reads
        raise ConfigError("run.task xformer_pretrain trains under run.runner: runner_xformer "
                          "(got %r)" % runner)


def load_config(args):
    """LAVIS's Config (run file, its `includes:` resolved, merged over the model's and each builder's defaults, then the
    --options), checked before anything is built: raises ConfigError with one clear message."""
    raw = load_run_file(args.cfg_path)  # with its `includes:` resolved (run_files.py)
    options = parse_options(args.options)
    try:
        merged = OmegaConf.merge(raw, options)
    except OmegaConfBaseException as e:
        raise ConfigError("--options: %s" % " ".join(str(e).split())) from None
    option_keys = [o.partition("=")[0] for o in option_dotlist(args.options)]
    import_run_modules(merged)
    _pre_check(merged, args.cfg_path)
    check_config(merged, args.cfg_path, option_keys)  # every key is one that something reads
    check_output_dir(merged.run.get("output_dir", None))
    try:
        cfg = IncludingConfig(args, raw)
    except (yaml.YAMLError, OmegaConfBaseException, TypeError, ValueError) as e:
        # e.g. --options giving a single value where the builder's defaults hold a list
        raise ConfigError("could not build the configuration: %s" % " ".join(str(e).split())) from None
    model_type_option.apply_model_type_option(cfg, options)  # --options model.model_type=... (LAVIS defect)
    check_model_config(cfg.model_cfg)
    check_checkpoints(cfg.model_cfg, cfg.run_cfg)
    check_resume(cfg.run_cfg)
    check_datasets(cfg.datasets_cfg, cfg.run_cfg)  # run.metric: what the ground truth must be
    device = str(cfg.run_cfg.get("device", "cuda"))
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ConfigError("run.device=%r is not a device this plugin runs on; set run.device=cpu or "
                          "cuda (or cuda:N)" % device)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is %r but CUDA is not available here; set run.device=cpu "
                          "(e.g. --options run.device=cpu run.amp=False)" % device)
    return cfg


def check_output_dir(output_dir):
    """run.output_dir must be a folder, or a path where one can be made: given, not a file nor
    under one, and writable (the runner makes it only after the model is built)."""
    if output_dir is None:
        raise ConfigError("run.output_dir is not set; give the folder of the run's job folders, "
                          "e.g. --options run.output_dir=output/my_run")
    path = os.path.abspath(os.path.expanduser(str(output_dir)))
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError("run.output_dir=%r: %s is a file, not a folder; give a folder (new or "
                          "existing) for the run's job folders" % (output_dir, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("run.output_dir=%r: cannot write in %s; give a folder you can write to"
                          % (output_dir, existing))


def check_model_config(model_cfg):
    """The plugin's models read their config once, into a ModelConfig, whose checks (values
    out of range, keys that do not fit together, fp8 without fp8 tensor cores) would otherwise
    stop the run only when the model is built, after the datasets: run them now."""
    from lavis_xformer.models.base import PluginModel
    from lavis_xformer.models.config import ModelConfig

    model_cls = registry.get_model_class(model_cfg.arch)
    if issubclass(model_cls, PluginModel):
        try:
            ModelConfig.from_cfg(model_cfg, model_cls.LOSSES)
        except (TypeError, ValueError) as e:
            raise ConfigError(" ".join(str(e).split())) from None


def new_job_id():
    """A job directory name of its own for every run and evaluation: the start time to the
    second, then the process id and 8 random hex digits (e.g. ``20261201113519_4242_9f3a07c1``).

    Why: LAVIS's ``now()`` keeps the time to the ten minutes, so runs started within the same
    ten minutes wrote into one folder and replaced each other's checkpoints and metrics. The
    time still sorts the folders; the process id and random part separate runs started in the
    same second, on one host or several. The runner creates the folder exclusively
    (RunnerXFormer.setup_output_dir), so a clash is an error, never a shared folder."""
    import secrets
    import time

    return "%s_%d_%s" % (time.strftime("%Y%m%d%H%M%S"), os.getpid(), secrets.token_hex(4))


def init_distributed(cfg, job_id):
    """torchrun-aware set-up (gloo on CPU); all ranks then share rank 0's job id (output dir)."""
    init_distributed_mode(cfg.run_cfg)
    if distributed.dist_ready():
        shared = [job_id]
        torch.distributed.broadcast_object_list(shared, src=0)
        job_id = shared[0]
    return job_id


def setup_seeds(cfg):
    seed = int(cfg.run_cfg.get("seed", 42)) + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cudnn.benchmark = False
    cudnn.deterministic = True


def get_runner_class(cfg):
    return registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))


def build_runner(cfg, job_id):
    """What LAVIS's train.py/evaluate.py do after the distributed set-up: seeds, logging,
    task, datasets, model, then the configured runner."""
    import lavis.tasks as tasks
    from lavis.common.logger import setup_logger

    setup_seeds(cfg)
    setup_logger()  # after the distributed set-up, so that only rank 0 logs INFO
    cfg.pretty_print()
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    check_evaluated_weights(cfg, model)
    return get_runner_class(cfg)(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


def check_evaluated_weights(cfg, model):
    """An evaluation-only run must not score weights that model.pretrained left untrained, not
    even parts that a training run would start fresh (the stage-2 LLM projection): raise
    WeightSourceError unless model.allow_partial_pretrained."""
    from lavis_xformer.models.sources import WeightSourceError, _groups

    lacking = getattr(model, "pretrained_lacks", None)
    if not cfg.run_cfg.get("evaluate", False) or not lacking:
        return
    if cfg.model_cfg.get("allow_partial_pretrained", False):
        return
    raise WeightSourceError(
        "model.pretrained=%r lacks %d trained tensors this evaluation would use untrained: %s; "
        "point it at a checkpoint of this stage, or set model.allow_partial_pretrained: true"
        % (cfg.model_cfg.get("pretrained"), len(lacking), _groups(lacking)))


def finish():
    if distributed.dist_ready():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_main(body, argv, description):
    """Parse, load and check the config, then hand over to body(cfg, job_id). A ConfigError
    ends the process with its message and exit status 2 (so does a weight file that is unsafe,
    damaged or does not fit), a NaN/inf training loss (NonFiniteLossError) with its message
    and exit status 3, a stop on SIGTERM/SIGINT after its checkpoint with the resume command
    and exit status 75 (preemption.py), a full disk during a checkpoint save with the resume
    command and exit status 74 (checkpoints.DiskFullError), all without a traceback."""
    # progress lines should show up at once, also when stdout is a pipe or a file
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    job_id = new_job_id()  # rank 0's wins under torchrun (init_distributed)
    args = parse_args(argv, description)
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    job_id = init_distributed(cfg, job_id)
    from lavis_xformer.models.sources import WeightSourceError
    from lavis_xformer.training.checkpoints import EXIT_DISK_FULL, DiskFullError

    try:
        result = body(cfg, job_id)
    except (WeightSourceError, ConfigError) as e:
        # a weight file that is unsafe, damaged or does not fit, or a setting checked when the
        # task reads it (run.resume_predictions): one line, no traceback
        print("error: %s" % e, file=sys.stderr, flush=True)
        if distributed.dist_ready():
            torch.distributed.destroy_process_group()
        raise SystemExit(2)
    except DiskFullError as e:
        # raised by the saving process (rank 0); torchrun then stops the others
        print("error: %s" % e, file=sys.stderr, flush=True)
        if distributed.dist_ready():
            torch.distributed.destroy_process_group()
        raise SystemExit(EXIT_DISK_FULL)
    except preemption.Preempted as e:
        # every process stops after the same step, with the checkpoint complete
        if get_rank() == 0:
            print(str(e), file=sys.stderr, flush=True)
        if distributed.dist_ready():
            torch.distributed.destroy_process_group()
        raise SystemExit(preemption.EXIT_PREEMPTED)
    except NonFiniteLossError as e:
        # every process raises it at the same step (the check is all-reduced): end cleanly
        print("error: %s" % e, file=sys.stderr, flush=True)
        if distributed.dist_ready():
            torch.distributed.destroy_process_group()
        raise SystemExit(3)
    finish()
    return result
