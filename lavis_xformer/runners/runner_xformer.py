"""``runner_xformer``: LAVIS's epoch-based RunnerBase, fixed so it trains on a CPU and in one
plain process as well as under torchrun (gloo on CPU, nccl on GPU).

Every override below names the LAVIS 1.0.2 defect it works around; everything else, including
checkpointing (``checkpoint_<epoch>.pth`` in ``<output_dir>/<job_id>/`` holding only the
trainable weights), is LAVIS's own. One addition: ``<output_dir>/latest`` always points at the
newest job directory that holds a checkpoint (or, for an evaluation-only run, its results), so
that a later stage's project file can name an earlier stage's output
(``pretrained: output/xformer/stage1/latest/checkpoint_8.pth``).
"""
import datetime
import inspect
import logging
import os
import time
from pathlib import Path

import torch
import webdataset as wds
import lavis.common.optims  # noqa: F401  (registers LAVIS's lr schedulers; `import lavis` does not)
from lavis.common.dist_utils import download_cached_file, get_rank, get_world_size, is_main_process
from lavis.common.registry import registry
from lavis.common.utils import is_url
from lavis.datasets.datasets.dataloader_utils import IterLoader, MultiIterLoader, PrefetchLoader
from lavis.runners.runner_base import RunnerBase
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data.dataset import ChainDataset

from lavis_xformer import compat


LATEST = "latest"


def point_latest(job_dir, name=LATEST):
    """Make ``<parent of job_dir>/<name>`` a symlink to ``job_dir``; True when done.

    Why: every run writes into ``<run.output_dir>/<job_id>/`` with a time-stamp job id that no
    project file can know in advance, so without a stable name the next stage (stage 2 after
    stage 1, an evaluation after stage 2) could not point at the previous stage's checkpoint.

    The link is relative (just the job directory's name), so the output folder can be moved or
    copied whole. It is replaced atomically: a new link is made under a temporary name and
    renamed over the old one (os.replace = rename(2), which swaps the directory entry in one
    step), so a reader, e.g. another stage starting meanwhile, sees either the old or the new
    target, never a missing or half-written ``latest``. Failure (a file system without
    symlinks, or a real directory named ``latest``) is logged, never fatal: the checkpoint
    itself has been written.
    """
    job_dir = Path(job_dir)
    link = job_dir.parent / name
    tmp = job_dir.parent / (".%s.%d.tmp" % (name, os.getpid()))
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(job_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as e:
        logging.warning("could not point %s at %s (%s); name the job directory instead", link,
                        job_dir, e)
        if os.path.lexists(tmp):
            os.remove(tmp)
        return False
    logging.info("%s -> %s", link, job_dir.name)
    return True


@registry.register_runner("runner_xformer")
class RunnerXFormer(RunnerBase):

    # Defect: RunnerBase.model only moves and wraps the model when it is not yet on the run
    # device, so on a CPU run (model built on the CPU) it returns None; and it always gives DDP
    # device_ids=[gpu], which DDP rejects for a CPU module under gloo.
    @property
    def model(self):
        if self._wrapped_model is None:
            self._model = self._model.to(self.device)
            if self.use_distributed:
                self._wrapped_model = DDP(
                    self._model,
                    device_ids=[self.config.run_cfg.gpu] if self.cuda_enabled else None,
                    find_unused_parameters=bool(
                        self.config.run_cfg.get("find_unused_parameters", False)),
                )
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    # Defect: RunnerBase.scaler builds torch.cuda.amp.GradScaler whenever run.amp is true, even
    # on a CPU run. Mixed precision is used on CUDA only; on a CPU run amp is ignored (warned).
    @property
    def scaler(self):
        if self._scaler is None and self.config.run_cfg.get("amp", False):
            if self.cuda_enabled:
                self._scaler = torch.amp.GradScaler("cuda")
            elif not getattr(self, "_amp_warned", False):
                logging.warning("run.amp is true but the run is on %s: training in fp32.", self.device)
                self._amp_warned = True
        return self._scaler

    # Addition: RunnerBase.lr_scheduler builds every schedule with the same arguments and none
    # tells it how long an epoch is, which a per-iteration schedule over the whole run
    # (linear_warmup_cosine_step_lr, lavis_xformer/optims.py) needs. A schedule class whose
    # constructor takes `iters_per_epoch` gets run.iters_per_epoch when set, else the length of
    # the train loader (per process: the iterations BaseTask.train_epoch runs); any other
    # schedule is built by RunnerBase, unchanged.
    @property
    def lr_scheduler(self):
        if self._lr_sched is None:
            run_cfg = self.config.run_cfg
            lr_sched_cls = registry.get_lr_scheduler_class(run_cfg.lr_sched)
            if "iters_per_epoch" in inspect.signature(lr_sched_cls).parameters:
                iters_per_epoch = run_cfg.get("iters_per_epoch", None)
                if iters_per_epoch is None:
                    try:
                        iters_per_epoch = len(self.train_loader)
                    except TypeError:  # e.g. a webdataset pipeline has no length
                        raise ValueError("run.lr_sched %s needs the number of iterations per "
                                         "epoch and the train loader has no length: set "
                                         "run.iters_per_epoch" % run_cfg.lr_sched) from None
                self._lr_sched = lr_sched_cls(
                    optimizer=self.optimizer,
                    max_epoch=self.max_epoch,
                    min_lr=self.min_lr,
                    init_lr=self.init_lr,
                    decay_rate=run_cfg.get("lr_decay_rate", None),
                    warmup_start_lr=run_cfg.get("warmup_lr", -1),
                    warmup_steps=run_cfg.get("warmup_steps", 0),
                    iters_per_epoch=iters_per_epoch,
                )
        return super().lr_scheduler

    # Defect: RunnerBase.setup_output_dir joins a relative run.output_dir to LAVIS's package
    # directory (inside site-packages) and registers the paths with register_path, which
    # refuses a second runner in the same process. Here a relative output_dir is taken from the
    # current directory, as a user expects.
    def setup_output_dir(self):
        output_dir = Path(os.path.expanduser(str(self.config.run_cfg.output_dir))).absolute()
        output_dir = output_dir / self.job_id
        result_dir = output_dir / "result"
        output_dir.mkdir(parents=True, exist_ok=True)
        result_dir.mkdir(parents=True, exist_ok=True)
        registry.mapping["paths"]["result_dir"] = str(result_dir)
        registry.mapping["paths"]["output_dir"] = str(output_dir)
        self.result_dir = result_dir
        self.output_dir = output_dir

    # Addition: after a checkpoint is written (LAVIS saves on the main process only), point
    # `<output_dir>/latest` at this job's directory; see point_latest for why.
    def _save_checkpoint(self, cur_epoch, is_best=False):
        super()._save_checkpoint(cur_epoch, is_best=is_best)
        if is_main_process():
            point_latest(self.output_dir)

    # Addition: an evaluation-only run writes no checkpoint; point `latest` at its directory
    # once its results are written, so `<output_dir>/latest/result/` holds the newest results.
    def evaluate(self, cur_epoch="best", skip_reload=False):
        test_logs = super().evaluate(cur_epoch=cur_epoch, skip_reload=skip_reload)
        if self.evaluate_only and is_main_process():
            point_latest(self.output_dir)
        return test_logs

    # Defect: RunnerBase.create_loaders always wraps loaders in PrefetchLoader, which builds a
    # torch.cuda.Stream (fails without CUDA), and always pins memory. Both only on CUDA here.
    def create_loaders(self, datasets, num_workers, batch_sizes, is_trains, collate_fns,
                       dataset_ratios=None):
        loaders = []
        for dataset, bsz, is_train, collate_fn in zip(datasets, batch_sizes, is_trains, collate_fns):
            if isinstance(dataset, (list, tuple)):
                loader = MultiIterLoader(
                    loaders=[self._create_loader(d, num_workers, bsz, is_train, collate_fn[i])
                             for i, d in enumerate(dataset)],
                    ratios=dataset_ratios,
                )
            else:
                loader = self._create_loader(dataset, num_workers, bsz, is_train, collate_fn)
            loaders.append(loader)
        return loaders

    def _create_loader(self, dataset, num_workers, batch_size, is_train, collate_fn):
        pin_memory = self.cuda_enabled
        if isinstance(dataset, (ChainDataset, wds.DataPipeline)):
            # webdataset pipelines bring their own sampling and collation
            return iter(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                   pin_memory=pin_memory))
        sampler = None
        if self.use_distributed and (is_train or self.use_dist_eval_sampler):
            sampler = DistributedSampler(dataset, shuffle=is_train,
                                         num_replicas=get_world_size(), rank=get_rank())
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            sampler=sampler,
            shuffle=sampler is None and is_train,
            collate_fn=collate_fn,
            drop_last=is_train,
        )
        if self.cuda_enabled:
            loader = PrefetchLoader(loader)
        if is_train:
            loader = IterLoader(loader, use_distributed=self.use_distributed)
        return loader

    # Defect: RunnerBase.train calls dist.barrier() after every epoch, which fails without a
    # process group; and it reads the loop variable after the loop, which is unbound when a
    # resumed run has no epoch left. Otherwise the same flow: train, validate or save a
    # checkpoint per epoch, then test.
    def train(self):
        start_time = time.time()
        self.best_agg_metric, self.best_epoch = 0, 0
        self.log_config()

        if not self.evaluate_only and self.resume_ckpt_path is not None:
            self._load_checkpoint(self.resume_ckpt_path)

        last_epoch = max(self.start_epoch, 1) - 1
        for cur_epoch in range(self.start_epoch, self.max_epoch):
            last_epoch = cur_epoch
            if not self.evaluate_only:
                logging.info("Start training")
                train_stats = self.train_epoch(cur_epoch)
                self.log_stats(split_name="train", stats=train_stats)

            if self.valid_splits:
                for split_name in self.valid_splits:
                    self._validate(split_name, cur_epoch)
            elif not self.evaluate_only:
                # no validation split: keep a checkpoint of every epoch
                self._save_checkpoint(cur_epoch, is_best=False)

            if self.evaluate_only:
                break
            compat.barrier()

        test_epoch = "best" if self.valid_splits else last_epoch
        self.evaluate(cur_epoch=test_epoch, skip_reload=self.evaluate_only)

        total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
        logging.info("Training time {}".format(total))

    def _validate(self, split_name, cur_epoch):
        logging.info("Evaluating on {}.".format(split_name))
        val_log = self.eval_epoch(split_name=split_name, cur_epoch=cur_epoch)
        if val_log is None or not is_main_process():
            return
        assert "agg_metrics" in val_log, "No agg_metrics found in validation log."
        if val_log["agg_metrics"] > self.best_agg_metric and split_name == "val":
            self.best_epoch, self.best_agg_metric = cur_epoch, val_log["agg_metrics"]
            self._save_checkpoint(cur_epoch, is_best=True)
        val_log.update({"best_epoch": self.best_epoch})
        self.log_stats(val_log, split_name)

    # Defect (LAVIS issue #153): RunnerBase._load_checkpoint loads strictly, but
    # _save_checkpoint leaves out frozen weights, so resuming any model with frozen parts
    # (BLIP-2 style) fails. Here the frozen parameters may be missing (they are rebuilt from
    # the model config); any other missing or unexpected key is still an error.
    def _load_checkpoint(self, url_or_filename):
        if is_url(url_or_filename):
            path = download_cached_file(url_or_filename, check_hash=False, progress=True)
        elif os.path.isfile(url_or_filename):
            path = url_or_filename
        else:
            raise RuntimeError("run.resume_ckpt_path: no checkpoint at %s" % url_or_filename)
        checkpoint = torch.load(path, map_location=self.device)

        model = self.unwrap_dist_model(self.model)
        result = model.load_state_dict(checkpoint["model"], strict=False)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        missing = [k for k in result.missing_keys if k not in frozen]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                "checkpoint %s does not fit the model: missing %s, unexpected %s" % (
                    url_or_filename, missing[:10], result.unexpected_keys[:10]))

        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"] + 1
        logging.info("Resume checkpoint from {} (epoch {} done)".format(
            url_or_filename, checkpoint["epoch"]))
