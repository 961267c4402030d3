"""``runner_xformer``: LAVIS's epoch-based RunnerBase, fixed so it trains on a CPU and in one
plain process as well as under torchrun (gloo on CPU, nccl on GPU), and owning the training
loop: ``train_epoch`` is one plain loop over the batches (as nanoGPT's), the task supplies only
the step (``task.train_step(model, samples)``: the loss, or a dict of the loss and its parts to
log), and where the run stands lives in one ``TrainState`` (training/state.py).

Every override below names the LAVIS 1.0.2 defect it works around; everything else, including
checkpointing (``checkpoint_<epoch>.pth`` in ``<output_dir>/<job_id>/`` holding only the
trainable weights), is LAVIS's own. One addition: ``<output_dir>/latest`` always points at the
newest job directory that holds a checkpoint (or, for an evaluation-only run, its results), so
that a later stage's project file can name an earlier stage's output
(``pretrained: output/xformer/stage1/latest/checkpoint_8.pth``).

Robustness (a run of days on many GPUs must survive kills and bad data):

* every checkpoint is written atomically (training/checkpoints.py) and, besides LAVIS's
  trainable weights, optimizer, scaler and epoch, holds the iterations done in its epoch, the
  training data position and every process's random state; ``checkpoint_latest.pth`` in the
  job directory names the newest complete one;
* ``run.checkpoint_every_iters: N`` also saves every N iterations within an epoch
  (``checkpoint_<epoch>_iter<n>.pth``; only the newest such file is kept), and
  ``run.resume_ckpt_path`` (a file, or a job directory / ``latest`` link) continues from
  there with the same batches and random draws as a run that was never stopped;
* the training data order comes from ``run.seed`` and the pass number
  (datasets/sampling.py), the same in one process and under torchrun;
* unreadable training samples are skipped, logged and counted (datasets/skipping.py);
* a NaN or infinite loss stops the run (all processes) before its update is applied,
  naming the step and the last complete checkpoint (``run.check_finite_loss``, default on);
* a full disk during a save stops the run with one line: the folder, and the command that
  resumes from the last good checkpoint (checkpoints.DiskFullError, exit status 74).
"""
import datetime
import inspect
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import webdataset as wds
import lavis.common.optims  # noqa: F401  (registers LAVIS's lr schedulers; `import lavis` does not)
from lavis.common.dist_utils import get_rank, get_world_size, is_main_process
from lavis.common.logger import MetricLogger, SmoothedValue
from lavis.common.registry import registry
from lavis.common.utils import is_url
from lavis.datasets.data_utils import prepare_sample
from lavis.datasets.datasets.dataloader_utils import MultiIterLoader, PrefetchLoader
from lavis.runners.runner_base import RunnerBase
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data.dataset import ChainDataset

from lavis_xformer import optims
from lavis_xformer.lavis_patches import distributed, metric_sync
from lavis_xformer.datasets.sampling import ResumableIterLoader, ResumableSampler, SeededIndices
from lavis_xformer.datasets.skipping import (
    EvalSkippingCollater, SkipBadSamples, SkipUnreadable, SkippingCollater, pop_skipped)
from lavis_xformer.models import sources
from lavis_xformer.training import checkpoints, preemption
from lavis_xformer.training.state import TrainState
from lavis_xformer.training.step import (
    ADVICE, NON_FINITE_ERROR, NonFiniteLossError, check_finite, grads_finite, last_named,
    loss_parts, to_host, where)


LATEST = checkpoints.LATEST


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
    try:
        checkpoints.point_link(job_dir, link)
    except OSError as e:
        logging.warning("could not point %s at %s (%s); name the job directory instead", link,
                        job_dir, e)
        return False
    logging.info("%s -> %s", link, job_dir.name)
    return True


@registry.register_runner("runner_xformer")
class RunnerXFormer(RunnerBase):

    def __init__(self, cfg, task, model, datasets, job_id):
        self.state = TrainState()
        self._amp_warned = False
        super().__init__(cfg, task, model, datasets, job_id)

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
            elif not self._amp_warned:
                logging.warning("run.amp is true but the run is on %s: training in fp32.", self.device)
                self._amp_warned = True
        return self._scaler

    # Addition: RunnerBase.optimizer builds the foreach AdamW; on CUDA the fused one takes
    # one kernel launch per step for all parameters (same update to rounding; optims.adamw).
    @property
    def optimizer(self):
        if self._optimizer is None:
            self._optimizer = optims.fused_like(super().optimizer)
        return self._optimizer

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
    # Addition: the job directory is created exclusively by the main process (its name is
    # unique per run, launch.new_job_id, shared by all processes of a torchrun job), so two
    # runs can never write into one folder; the temporary files of the runner's saves killed
    # half-way in the output folder's jobs are removed (checkpoints.remove_stale_temporaries).
    def setup_output_dir(self):
        base = Path(os.path.expanduser(str(self.config.run_cfg.output_dir))).absolute()
        output_dir = base / self.job_id
        result_dir = output_dir / "result"
        if is_main_process():
            base.mkdir(parents=True, exist_ok=True)
            try:
                output_dir.mkdir(exist_ok=False)
            except FileExistsError:
                raise FileExistsError(
                    "job directory %s exists already: another run uses this job id; start "
                    "again (each start draws a new one)" % output_dir) from None
            checkpoints.remove_stale_temporaries(base, links=(LATEST,))
            result_dir.mkdir()
        distributed.barrier()  # the other processes of this job use the folder rank 0 made
        result_dir.mkdir(parents=True, exist_ok=True)  # (nodes without a shared file system)
        registry.mapping["paths"]["result_dir"] = str(result_dir)
        registry.mapping["paths"]["output_dir"] = str(output_dir)
        self.result_dir = result_dir
        self.output_dir = output_dir

    # --------------------------------------------------------------- checkpoints

    @property
    def checkpoint_every_iters(self):
        every = self.config.run_cfg.get("checkpoint_every_iters", None)
        if every in (None, 0, False):
            return 0
        if int(every) < 0:
            raise ValueError("run.checkpoint_every_iters must be a positive number of "
                             "iterations, or null/0 for none (got %s)" % every)
        return int(every)

    def _snapshot_rng(self):
        """Every process's random state, gathered into the state (all processes must call
        this)."""
        state = checkpoints.rng_state()
        if distributed.dist_ready():
            states = [None] * get_world_size()
            torch.distributed.all_gather_object(states, state)
            self.state.rng = states
        else:
            self.state.rng = [state]

    def _checkpoint_state(self, cur_epoch, iters_done):
        model_no_ddp = self.unwrap_dist_model(self.model)
        frozen = {k for k, v in model_no_ddp.named_parameters() if not v.requires_grad}
        state_dict = {k: v for k, v in model_no_ddp.state_dict().items() if k not in frozen}
        iters_per_epoch = len(self.train_loader)
        return {
            "model": state_dict,
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": cur_epoch,
            # additions (LAVIS reads none of them)
            "iters_done": iters_per_epoch if iters_done is None else iters_done,
            "iters_per_epoch": iters_per_epoch,
            "data": [loader.state_dict() for loader in self.state.loaders],
            "rng": self.state.rng,
            "lr_sched": (self.lr_scheduler.state_dict()
                         if hasattr(self.lr_scheduler, "state_dict") else None),
        }

    # Replaces RunnerBase._save_checkpoint (same file names and content, only trainable weights)
    # with: an atomic write (a kill while saving never leaves a corrupt checkpoint), the state
    # needed to resume within an epoch, `checkpoint_latest.pth` naming the newest complete
    # checkpoint, and `<output_dir>/latest` pointing at this job's directory (see point_latest).
    # Called by every process; only the main one writes (as LAVIS's @main_process).
    def _save_checkpoint(self, cur_epoch, is_best=False, iters_done=None):
        if not is_main_process():
            return None
        if is_best:
            name = "checkpoint_best.pth"
        elif iters_done is not None:
            name = "checkpoint_%d_iter%d.pth" % (cur_epoch, iters_done)
        else:
            name = "checkpoint_%d.pth" % cur_epoch
        save_to = os.path.join(str(self.output_dir), name)
        logging.info("Saving checkpoint at epoch %s%s to %s.", cur_epoch,
                     "" if iters_done is None else ", iteration %d" % iters_done, save_to)
        try:
            checkpoints.atomic_save(self._checkpoint_state(cur_epoch, iters_done), save_to)
            checkpoints.point_link(save_to, os.path.join(str(self.output_dir),
                                                         checkpoints.CHECKPOINT_LATEST))
        except checkpoints.DiskFullError as e:  # the previous checkpoint is intact: say so
            last = self.state.last_checkpoint
            advice = ("free space, then resume from the last good checkpoint with: %s"
                      % self._resume_command(last) if last else
                      "no checkpoint of this run is complete yet: free space and start it again")
            raise checkpoints.DiskFullError("%s; %s" % (e, advice)) from None
        previous = self.state.mid_epoch_checkpoint
        if previous and previous != save_to and os.path.isfile(previous):
            os.remove(previous)  # keep only the newest mid-epoch checkpoint
        self.state.mid_epoch_checkpoint = save_to if iters_done is not None else None
        self.state.last_checkpoint = save_to
        point_latest(self.output_dir)
        logging.info("Saved checkpoint %s", save_to)  # all done: a kill from here on loses nothing
        return save_to

    def _after_step(self):
        """After every iteration of the loop: a mid-epoch checkpoint every
        run.checkpoint_every_iters iterations (the epoch's end has its own); on a stop request
        in any process (preemption.py), a checkpoint now and Preempted."""
        epoch, done, total = self.state.epoch, self.state.iteration, len(self.train_loader)
        every = self.checkpoint_every_iters
        saved, due = None, bool(every and done % every == 0 and done < total)
        if due:
            self._snapshot_rng()  # collective: every process calls it
            saved = self._save_checkpoint(epoch, iters_done=done)  # None but on rank 0
        if done >= total:
            return  # the epoch's end: its own checkpoint comes next, then train() checks
        if preemption.agreed_stop(self.state.signals.requested):
            if not due:
                self._snapshot_rng()
                saved = self._save_checkpoint(epoch, iters_done=done)
            self._preempted("epoch %d, iteration %d of %d" % (epoch, done, total), saved)

    def _preempted(self, where, saved):
        """Raise Preempted with the line to show, once the checkpoint is complete everywhere."""
        distributed.barrier()  # the checkpoint is complete before any process leaves
        raise preemption.Preempted(
            "stopped on request after %s; checkpoint %s is complete; resume with: %s" % (
                where, saved or os.path.join(str(self.output_dir), checkpoints.CHECKPOINT_LATEST),
                self._resume_command(self.output_dir)))

    def _resume_command(self, resume_from):
        """The command line that continues this run from ``resume_from`` (a checkpoint file
        or job directory)."""
        from lavis_xformer.training.run_files import option_dotlist

        args = getattr(self.config, "args", None)
        return preemption.resume_command(
            getattr(args, "cfg_path", "<run file>"), option_dotlist(getattr(args, "options", None)),
            resume_from, get_world_size() if self.use_distributed else 1)

    # Addition: the task learns which split it evaluates (its per-split prediction files).
    def eval_epoch(self, split_name, cur_epoch, skip_reload=False):
        self.task.current_split = split_name
        return super().eval_epoch(split_name, cur_epoch, skip_reload=skip_reload)

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
            if is_train:
                loader = self._with_length(loader)
            loaders.append(loader)
        return loaders

    # Addition: a webdataset stream (LAION-115M, BLIP's CapFilt shards), alone or mixed with
    # map-style sets through LAVIS's MultiIterLoader, has no length, and LAVIS's epoch-based
    # loop needs one (RunnerBase calls len(train_loader)). run.iters_per_epoch gives it, as
    # LAVIS's iteration runner's iters_per_inner_epoch does.
    def _with_length(self, loader):
        try:
            len(loader)
            return loader
        except TypeError:
            pass
        iters = self.config.run_cfg.get("iters_per_epoch", None)
        if not iters:
            raise ValueError("the training data include a stream without a length (a webdataset "
                             "builder such as laion2B_multi): set run.iters_per_epoch, the "
                             "number of iterations that make one epoch")
        return SizedLoader(loader, int(iters))

    def _create_loader(self, dataset, num_workers, batch_size, is_train, collate_fn):
        pin_memory = self.cuda_enabled
        if isinstance(dataset, (ChainDataset, wds.DataPipeline)):
            # webdataset pipelines bring their own sampling and collation
            return iter(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                   pin_memory=pin_memory))
        if is_train:
            return self._create_train_loader(dataset, num_workers, batch_size, collate_fn)
        if getattr(self.task, "skips_unreadable_images", False):
            # an unreadable image drops its question from the batch, recorded, never fatal
            dataset = SkipUnreadable(dataset)
            collate_fn = EvalSkippingCollater(collate_fn)
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
        return loader

    # Replaces LAVIS's train loader (IterLoader over a shuffling DataLoader or a
    # DistributedSampler): the order is a function of run.seed and the pass, a checkpoint can
    # record the position and a resumed run continue from it without loading the skipped
    # batches (datasets/sampling.py); unreadable samples are skipped and counted
    # (datasets/skipping.py).
    def _create_train_loader(self, dataset, num_workers, batch_size, collate_fn):
        seed = int(self.config.run_cfg.get("seed", 42))
        sampler = ResumableSampler(len(dataset), seed=seed, shuffle=True,
                                   num_replicas=get_world_size() if self.use_distributed else 1,
                                   rank=get_rank() if self.use_distributed else 0)
        generator = torch.Generator()  # worker seeds; leaves the global generator alone
        generator.manual_seed(seed + (get_rank() if self.use_distributed else 0))
        loader = DataLoader(
            SkipBadSamples(dataset),
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=self.cuda_enabled,
            sampler=SeededIndices(sampler),  # each item's augmentation seeded (sampling.py)
            collate_fn=SkippingCollater(collate_fn),
            drop_last=True,
            generator=generator,
            # workers live across passes: no re-spawn (and dataset re-pickling) every epoch
            persistent_workers=num_workers > 0,
            worker_init_fn=preemption.ignore_interrupts_in_worker,  # Ctrl-C: the main process stops
        )
        if self.cuda_enabled:
            loader = PrefetchLoader(loader)
        loader = ResumableIterLoader(loader, sampler, batch_size)
        self.state.loaders.append(loader)
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
        if self.start_epoch >= self.max_epoch and not self.evaluate_only:
            logging.warning("the resumed checkpoint has finished all %d epochs (run.max_epoch)",
                            self.max_epoch)
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
            distributed.barrier()
            # a stop requested in the epoch's last step (preemption.py): the epoch is saved
            if cur_epoch + 1 < self.max_epoch and preemption.agreed_stop(self.state.signals.requested):
                saved = None
                if self.valid_splits:  # LAVIS saved only an improving epoch: save this one
                    saved = self._save_checkpoint(cur_epoch, is_best=False)
                self._preempted("epoch %d (complete)" % cur_epoch,
                                saved or self.state.last_checkpoint)

        test_epoch = "best" if self.valid_splits else last_epoch
        self.evaluate(cur_epoch=test_epoch, skip_reload=self.evaluate_only)

        total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
        logging.info("Training time {}".format(total))

    # Replaces RunnerBase.train_epoch and BaseTask's loop (LAVIS keeps the loop in the task,
    # which then needs the runner's state for checkpoints and resume). It also fixes two LAVIS
    # 1.0.2 defects of that loop (lavis_patches/__init__.py): autocast is torch.cuda.amp's even
    # on a CPU run (here torch.autocast on the run's device type), and the end-of-epoch
    # statistics are all-reduced on "cuda" whatever the backend (lavis_patches/metric_sync.py).
    def train_epoch(self, epoch):
        """One epoch of steps, from ``state.iteration`` (a run resumed within the epoch): per
        batch ``_train_step`` (learning rate, forward, backward, NaN/inf guard, update), the log
        line, then ``_after_step`` (mid-epoch checkpoint, stop on request); at the end the
        statistics of all processes. Returns LAVIS's stats plus ``skipped_samples``, the
        unreadable training samples skipped (summed over processes)."""
        state = self.state
        loader, iters_per_epoch = self._start_epoch(epoch)
        metric_logger = epoch_logger()
        header = "Train: data epoch: [{}]".format(epoch)
        skipped = 0
        with state.signals:  # SIGTERM/SIGINT: finish the step, checkpoint, stop (_after_step)
            for i in metric_logger.log_every(range(state.iteration, iters_per_epoch),
                                             self.log_freq, header):
                samples, unreadable = next_readable(loader)
                skipped += unreadable
                parts = self._train_step(samples, epoch, i, iters_per_epoch)
                log_step(metric_logger, parts, self.optimizer.param_groups[0]["lr"])
                state.iteration = i + 1
                self._after_step()
            state.iteration = 0  # the next epoch starts at its beginning
            stats, skipped = epoch_stats(metric_logger, skipped)
        return self._end_epoch(stats, skipped, epoch)

    @property
    def check_finite_loss(self):
        """``run.check_finite_loss`` (default on): every step's NaN/inf guard."""
        return bool(self.config.run_cfg.get("check_finite_loss", True))

    def _start_epoch(self, epoch):
        """Build what the epoch uses, in the order LAVIS's loop first touches it (the model on
        its device, optimizer, scaler, lr schedule, train loader), set the model to train mode.
        Returns (the loader as an iterator, iterations per epoch)."""
        self.model, self.optimizer, self.scaler, self.lr_scheduler  # noqa: B018  (built on first use)
        loader = self.train_loader
        iters_per_epoch = len(loader)
        if iters_per_epoch == 0:
            raise ValueError(
                "the train split has fewer samples than one batch per process "
                "(run.batch_size_train x processes); lower run.batch_size_train or add data")
        if not hasattr(loader, "__next__"):
            loader = iter(loader)
        self.state.epoch = epoch
        self.model.train()
        logging.info("Start training epoch {}, {} iters per inner epoch.".format(
            epoch, iters_per_epoch))
        return loader, iters_per_epoch

    def _train_step(self, samples, epoch, i, iters_per_epoch):
        """One batch: the learning rate, ``_forward``, backward, ``_check_step`` (the NaN/inf
        guard, before the update) and ``_update`` every ``run.accum_grad_iters`` batches.
        Returns the loss parts to log."""
        samples = prepare_sample(samples, cuda_enabled=self.cuda_enabled)
        samples.update({"epoch": epoch, "num_iters_per_epoch": iters_per_epoch, "iters": i})
        self.lr_scheduler.step(cur_epoch=epoch, cur_step=i)
        loss, parts = self._forward(samples, epoch, i, iters_per_epoch)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        update = (i + 1) % self.accum_grad_iters == 0
        parts = self._check_step(loss, parts, update, epoch, i, iters_per_epoch)
        if update:
            self._update()
        return parts

    def _forward(self, samples, epoch, i, iters_per_epoch):
        """(loss, loss parts) of the task's step under autocast on the run's device type; a
        RuntimeError from NaN/inf values (e.g. ITM's sampling from NaN similarities) becomes
        NonFiniteLossError, naming the step and the last checkpoint."""
        device_type = "cuda" if self.cuda_enabled else "cpu"
        try:
            with torch.autocast(device_type=device_type, enabled=self.scaler is not None):
                return split_loss(self.task.train_step(model=self.model, samples=samples))
        except RuntimeError as e:
            if self.check_finite_loss and NON_FINITE_ERROR.search(str(e)):
                raise NonFiniteLossError(
                    "the forward pass met NaN/inf values at %s (%s); %s%s" % (
                        where(epoch, i, iters_per_epoch), e, ADVICE,
                        last_named(self.state.last_checkpoint))) from None
            raise

    def _check_step(self, loss, parts, update, epoch, i, iters_per_epoch):
        """The step's one host sync: the loss parts for the log, with the NaN/inf flags when
        ``run.check_finite_loss`` (before the update; with amp the scaler skips inf grads)."""
        if not self.check_finite_loss:
            return to_host(parts)[0]
        grads_ok = (grads_finite(self.model.parameters())
                    if update and self.scaler is None else None)
        return check_finite(loss, grads_ok, parts, epoch, i, iters_per_epoch,
                            self.state.last_checkpoint)

    def _update(self):
        """The optimizer step (through the scaler under amp), then the gradients cleared."""
        optimizer, scaler = self.optimizer, self.scaler
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()

    def _end_epoch(self, stats, skipped, epoch):
        """LAVIS's stats plus ``skipped_samples``; the random states snapshot for the
        end-of-epoch checkpoint."""
        if skipped:
            logging.warning("epoch %d: skipped %d unreadable training samples (paths in the "
                            "warnings above)", epoch, skipped)
        stats["skipped_samples"] = skipped
        self._snapshot_rng()  # for the end-of-epoch checkpoint
        return stats

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
    # Addition: run.resume_ckpt_path may name a job directory (its checkpoint_latest.pth); a
    # checkpoint written within an epoch resumes at its iteration, with the data position and
    # random states it recorded.
    def _load_checkpoint(self, url_or_filename):
        """Resume from ``url_or_filename``: read it, then load the model's weights, the
        optimizer's state, the position to continue at, the data position and the random
        states, each a named step."""
        path, checkpoint = self._read_resume_checkpoint(url_or_filename)
        self._load_model_state(checkpoint, url_or_filename)
        self._load_optimizer_state(checkpoint)
        epoch, iters_done, total = self._resume_position(checkpoint, path)
        self._load_data_position(checkpoint, path)
        self._load_rng_state(checkpoint, path)
        self.state.last_checkpoint = path
        logging.info("Resume checkpoint from %s (epoch %d, %s)", path, epoch,
                     "iteration %d of %d" % (iters_done, total)
                     if self.state.iteration else "epoch done")

    @staticmethod
    def _read_resume_checkpoint(url_or_filename):
        """(path, checkpoint) of ``run.resume_ckpt_path``: a URL (cached by the whole URL; a
        refused download is removed), or a file, job folder or output_dir
        (``checkpoints.resolve_resume_path``), read safely (no code from the file; a truncated
        file names the last good one)."""
        if is_url(url_or_filename):
            return url_or_filename, sources.read_source(url_or_filename, "run.resume_ckpt_path")
        try:
            path = checkpoints.resolve_resume_path(url_or_filename)
        except FileNotFoundError as e:
            raise RuntimeError(str(e)) from None
        return path, checkpoints.read_resume_checkpoint(path)

    def _load_model_state(self, checkpoint, url_or_filename):
        """The checkpoint's weights, non-strictly: only frozen parameters may be missing (they
        are rebuilt from the model config); any other missing or unexpected key is an error."""
        model = self.unwrap_dist_model(self.model)
        result = model.load_state_dict(checkpoint["model"], strict=False)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        missing = [k for k in result.missing_keys if k not in frozen]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                "checkpoint %s does not fit the model: missing %s, unexpected %s" % (
                    url_or_filename, missing[:10], result.unexpected_keys[:10]))

    def _load_optimizer_state(self, checkpoint):
        """The optimizer's, the amp scaler's and the lr schedule's states."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("lr_sched") and hasattr(self.lr_scheduler, "load_state_dict"):
            self.lr_scheduler.load_state_dict(checkpoint["lr_sched"])

    def _resume_position(self, checkpoint, path):
        """Set the epoch and iteration to continue at: within the checkpoint's epoch for a
        mid-epoch checkpoint (the same number of iterations per epoch required), else the next
        epoch's start. Returns (epoch, iterations done, iterations per epoch) as recorded."""
        epoch = int(checkpoint["epoch"])
        iters_done = checkpoint.get("iters_done", None)
        total = checkpoint.get("iters_per_epoch", None)
        if iters_done is not None and total is not None and iters_done < total:
            if total != len(self.train_loader):
                raise RuntimeError(
                    "checkpoint %s was written at iteration %d of %d in epoch %d, but this run "
                    "has %d iterations per epoch: resume with the same data, "
                    "run.batch_size_train and number of processes" % (
                        path, iters_done, total, epoch, len(self.train_loader)))
            self.start_epoch, self.state.iteration = epoch, int(iters_done)
        else:
            self.start_epoch, self.state.iteration = epoch + 1, 0
        return epoch, iters_done, total

    def _load_data_position(self, checkpoint, path):
        """Each train loader's position in its data; within an epoch it must be exact, at an
        epoch's end changed data starts a fresh pass (LAVIS's resume)."""
        data = checkpoint.get("data") or []
        self.train_loader  # noqa: B018  (builds the train loaders, filling state.loaders)
        loaders = self.state.loaders
        if data and len(data) == len(loaders):
            for loader, state in zip(loaders, data):
                try:
                    loader.load_state_dict(state)
                except ValueError as e:
                    if self.state.iteration:  # within an epoch the position must be exact
                        raise RuntimeError("%s: %s" % (path, e)) from None
                    logging.warning("%s: the data changed since this checkpoint (%s); the "
                                    "next epoch starts a fresh pass", path, e)
                    loader.start_fresh_pass(int(state["pass"]) + 1)
        elif data:
            logging.warning("checkpoint %s: its data position does not fit this run's train "
                            "loaders; the data order restarts", path)

    def _load_rng_state(self, checkpoint, path):
        """This process's random states (the same MAE masks, ITM negatives, dropout and
        augmentations as the interrupted run), when the number of processes is the same."""
        rng = checkpoint.get("rng")
        if rng and len(rng) == get_world_size():
            checkpoints.set_rng_state(rng[get_rank()])
        elif rng:
            logging.warning("checkpoint %s holds random states of %d processes, this run has "
                            "%d: random draws differ from the interrupted run", path, len(rng),
                            get_world_size())


class SizedLoader:
    """An endless train loader (MultiIterLoader, a webdataset stream) that counts
    ``iters_per_epoch`` iterations as one epoch."""

    def __init__(self, loader, iters_per_epoch):
        self.loader = loader
        self.iters_per_epoch = iters_per_epoch

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.loader)

    def __len__(self):
        return self.iters_per_epoch


def split_loss(output):
    """(loss to back-propagate, {name: value} to log) of what a task's ``train_step`` returns:
    LAVIS's tasks return the loss tensor, xformer_pretrain the model's output (``loss`` and its
    parts ``loss_itc``, ``loss_itm``, ... ; training/step.py loss_parts)."""
    if isinstance(output, Mapping):
        return output["loss"], loss_parts(output)
    return output, {"loss": output.detach().float().reshape(())}


def epoch_logger():
    """LAVIS's metric logger of a training epoch, with its ``lr`` and ``loss`` meters."""
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    metric_logger.add_meter("loss", SmoothedValue(window_size=1, fmt="{value:.4f}"))
    return metric_logger


def log_step(metric_logger, parts, lr):
    """One step's loss parts (a meter for each new one) and learning rate into the logger."""
    for name in parts:
        if name not in metric_logger.meters:
            metric_logger.add_meter(name, SmoothedValue(window_size=1, fmt="{value:.4f}"))
    metric_logger.update(**parts)
    metric_logger.update(lr=lr)


def epoch_stats(metric_logger, skipped):
    """(LAVIS's epoch stats, unreadable samples skipped) over all processes (collective)."""
    metric_sync.synchronize_metric_logger(metric_logger)
    logging.info("Averaged stats: " + metric_logger.global_avg())
    stats = {k: "{:.3f}".format(m.global_avg) for k, m in metric_logger.meters.items()}
    return stats, metric_sync.all_reduce_sum(skipped)


def next_readable(loader):
    """(the next batch with at least one readable sample, the number of unreadable samples
    skipped on the way). SkippingCollater drops the unreadable samples of a batch
    (datasets/skipping.py); a batch of none is replaced by the next."""
    samples, skipped_paths = pop_skipped(next(loader))
    skipped, empty = len(skipped_paths), 0
    while samples is None:
        empty += 1
        if empty > len(loader):
            raise RuntimeError("no readable training sample in %d batches in a row (a whole "
                               "pass); see the warnings above for the paths" % empty)
        samples, skipped_paths = pop_skipped(next(loader))
        skipped += len(skipped_paths)
    return samples, skipped
