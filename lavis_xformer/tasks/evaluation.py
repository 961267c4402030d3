"""``XFormerEvalTask``: the one evaluation base of the plugin's evaluation tasks (VQA, caption,
retrieval, classification, SugarCrepe).

LAVIS's runner calls, per split, ``before_evaluation(model, dataset)``, then
``evaluation(model, data_loader)``, then ``after_evaluation(val_result, split_name, epoch)``.
The base does, once for every task:

* ``evaluation``: a loop that runs on a CPU too (batches go to the model's device; LAVIS's
  ``BaseTask.evaluation`` moves them to CUDA, see lavis_patches/__init__.py), drops the
  unreadable samples of a batch and records them (``skips_unreadable_images``), appends every
  batch's records to a per-process JSONL file and skips what an interrupted evaluation already
  predicted (``streams_predictions``, ``run.resume_predictions``; results.PredictionLog), when
  that evaluation's settings (the logs' first line: ``log_settings``) are this run's; other
  settings are refused at ``setup_resume``, before the model is built. It returns an
  ``EvalOutput``: the records, the skipped samples and the split's dataset, so that
  ``after_evaluation`` gets what it needs from its argument, not from the task's state.
* ``after_evaluation``: merge the records of all processes, let the task compute its metrics,
  write ``<split>_<KIND>_predictions.json`` and ``<split>_<KIND>_metrics.json`` to the run's
  ``result/`` folder (rank 0), add a line to ``evaluate.txt``, print the task's table, and wait
  for every process.

A task supplies only what differs: ``KIND`` (the files' and the metric's name), ``ID_KEY``,
``valid_step(model, samples, state)`` (the records of one batch), ``split_state(model,
dataset)`` (what the steps of a split need from its dataset, computed once per split and passed
to every step), ``split_metrics``, ``table`` and, where it has one, ``protocol``.
"""
import datetime
import glob
import os
from collections import OrderedDict
from typing import Any, List, NamedTuple

import torch
from omegaconf import OmegaConf
from lavis.common.dist_utils import is_main_process
from lavis.common.logger import MetricLogger
from lavis.common.registry import registry
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.base_task import BaseTask

from lavis_xformer.config_keys import ConfigError
from lavis_xformer.datasets.skipping import SkipUnreadable, pop_skipped
from lavis_xformer.lavis_patches import distributed
from lavis_xformer.models.config import model_setting
from lavis_xformer.tasks.variants import describe_model
from lavis_xformer.tasks.results import (
    PredictionLog, append_evaluate_line, check_settings, gather_results, gather_skipped,
    resume_folder, select_samples, write_json)


class EvalOutput(NamedTuple):
    """What ``evaluation`` hands to ``after_evaluation`` for one split (this process's part)."""
    records: Any         # the prediction records (retrieval: its two score matrices)
    skipped: List[dict]  # the samples that could not be read (SkipUnreadable records)
    dataset: Any         # the split's dataset (ground truth, sizes, class names)


def loader_dataset(data_loader):
    """The dataset behind an evaluation loader (a DataLoader, maybe in LAVIS's PrefetchLoader,
    maybe over the runner's SkipUnreadable wrapper); None when it has none."""
    inner = getattr(data_loader, "loader", data_loader)  # PrefetchLoader on CUDA
    dataset = getattr(inner, "dataset", None)
    return dataset.dataset if isinstance(dataset, SkipUnreadable) else dataset


def model_info(model_cfg):
    """What a comparison report needs to tell runs apart: arch, model_type, fusion (X-Former
    models; "blip2" for the stock BLIP-2 twin), the checkpoint, and the variant
    (``tasks/variants.py``), recorded here so that no reader has to decode it later."""
    arch = model_cfg.get("arch", None)
    fusion = model_setting(model_cfg, "fusion")  # unwritten: ModelConfig's default
    if fusion is None and arch is not None and arch.startswith("blip2"):
        fusion = "blip2"
    pretrained = model_cfg.get("pretrained", None)
    if pretrained is not None and not isinstance(pretrained, str):
        pretrained = [str(p) for p in pretrained]  # a list of checkpoints loaded in order
    return OrderedDict([("arch", arch), ("model_type", model_cfg.get("model_type", None)),
                        ("fusion", fusion), ("pretrained", pretrained),
                        ("variant", _variant(model_cfg, fusion))])


def _variant(model_cfg, fusion):
    """The run's variant from its model config (``fusion`` as model_info names it), the
    stage-1 keys followed back through ``model.pretrained`` from the working directory."""
    config = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) \
        else dict(model_cfg)
    if fusion is not None:
        config["fusion"] = fusion
    return describe_model({"model": config}, os.getcwd())[0]


def _flat(prefix, value):
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flat("%s.%s" % (prefix, key), inner)
    else:
        yield prefix, value


def _file_identity(value):
    """A local file named by a config value, as "<real path> (<size> bytes, modified <time>)";
    other values unchanged."""
    if not isinstance(value, str) or not os.path.isfile(os.path.expanduser(value)):
        return value
    path = os.path.realpath(os.path.expanduser(value))
    stat = os.stat(path)
    return "%s (%d bytes, modified %s)" % (path, stat.st_size, datetime.datetime.fromtimestamp(
        stat.st_mtime_ns / 1e9, datetime.timezone.utc).isoformat())


def run_settings(cfg):
    """What a run's predictions depend on besides the task's own protocol: the model section
    (every key, flattened), the datasets section, and run.seed (random-initialised parts).

    The checkpoint is told by the model keys naming local files (``model.pretrained``, in
    order when a list, ``model.finetuned``, ...): each is replaced by its real path (``latest``
    links resolved), size and modification time. Cheap (a stat, no read of gigabytes) and it
    changes whenever the file is rewritten; a copy elsewhere counts as another checkpoint,
    which refuses a resume that might have been fine, never keeps one that is not."""
    settings = OrderedDict()
    for section, values in (("model", cfg.model_cfg), ("datasets", cfg.datasets_cfg)):
        for key, value in _flat(section, OmegaConf.to_container(values, resolve=True)):
            if isinstance(value, list):
                value = [_file_identity(v) for v in value]
            settings[key] = _file_identity(value)
    settings["run.seed"] = cfg.run_cfg.get("seed", None)
    return settings


class XFormerEvalTask(BaseTask):
    """Base of the evaluation tasks; see the module's docstring."""

    KIND = None                     # <split>_<KIND>_predictions.json / _metrics.json
    ID_KEY = "image_id"             # the record field that identifies a sample
    LOG_HEADER = "Evaluation"       # the progress line's header
    SKIPPED_WHAT = "images that"    # "skipped N <SKIPPED_WHAT> could not be read"
    skips_unreadable_images = False  # the runner wraps the dataset in SkipUnreadable
    streams_predictions = False     # per-process JSONL of the records, run.resume_predictions

    def __init__(self, log_freq=10, benchmark=None, model_info=None):
        super().__init__()
        self.log_freq = max(1, int(log_freq))
        self.benchmark = benchmark
        self.model_info = model_info or OrderedDict()
        self.resume_predictions = None  # run.resume_predictions (setup_resume)
        self.run_settings = None        # run_settings(cfg) (setup_resume)

    @staticmethod
    def common_args(cfg):
        """The constructor arguments every evaluation task reads from the run config."""
        run_cfg = cfg.run_cfg
        return dict(log_freq=run_cfg.get("log_freq", 10),
                    benchmark=run_cfg.get("benchmark", None) or "+".join(cfg.datasets_cfg.keys()),
                    model_info=model_info(cfg.model_cfg))

    @classmethod
    def setup_task(cls, cfg):
        return cls(**cls.common_args(cfg))

    def setup_resume(self, cfg):
        """Read ``run.resume_predictions`` and the run's settings (the prediction logs' first
        line); a folder whose logs of this task were made under other settings, or that holds
        none, is refused here, before the datasets and the model are built (ConfigError)."""
        run_cfg = cfg.run_cfg
        self.run_settings = run_settings(cfg)
        self.resume_predictions = run_cfg.get("resume_predictions", None)
        if not self.resume_predictions:
            return
        if not run_cfg.get("evaluate", False):
            raise ConfigError("run.resume_predictions: %s is given to a training run; only an "
                              "evaluation (run.evaluate: True) resumes predictions, a training "
                              "run validates the weights of each epoch" % self.resume_predictions)
        folder = resume_folder(self.resume_predictions)
        suffix = "_%s_predictions" % self.KIND
        logs = sorted(glob.glob(os.path.join(folder, "*%s.rank*.jsonl" % suffix)))
        if not logs:
            raise ConfigError("run.resume_predictions: %s holds no %s prediction logs "
                              "(<split>%s.rank<r>.jsonl): not a %s evaluation's job folder; "
                              "name the job directory of the interrupted evaluation" % (
                                  folder, self.KIND, suffix, self.KIND))
        for path in logs:  # the split is in the file's name
            check_settings(path, self.log_settings(os.path.basename(path).split(suffix)[0]))

    def generation_settings(self):
        """The run keys (without ``run.``) the predictions depend on: ``protocol`` by
        default."""
        return self.protocol

    def log_settings(self, split):
        """The first line of a split's prediction log: benchmark, split, the task's
        generation settings, and run_settings (model, checkpoint files, datasets, seed)."""
        settings = OrderedDict([("benchmark", self.benchmark), ("split", split)])
        settings.update(("run.%s" % k, v) for k, v in self.generation_settings().items())
        settings.update(self.run_settings or {})
        return settings

    # --- what a task supplies -------------------------------------------------------------

    def split_state(self, model, dataset):
        """What the steps of one split need from its dataset (read-only), computed once per
        split and passed to every ``valid_step``; None by default."""
        return None

    def valid_step(self, model, samples, state=None):
        """The prediction records (dicts with ``ID_KEY``) of one batch."""
        raise NotImplementedError

    def update_progress(self, metric_logger, records):
        """Add the batch's ``records`` to the progress line (e.g. a running accuracy)."""

    def split_metrics(self, records, skipped, dataset, split_name, epoch):
        """The metrics (an OrderedDict, usually begun with ``metrics_head``) of the merged
        ``records`` (``skipped``: the merged unreadable samples); the base adds the skipped samples, ``protocol`` and ``predictions_file``."""
        raise NotImplementedError

    def predictions(self, records, dataset):
        """What the predictions file holds (rank 0 only): the records by default."""
        return records

    def protocol_of(self, dataset):
        """How the split was evaluated, for the metrics file: ``self.protocol`` by default."""
        return self.protocol

    @property
    def protocol(self):
        return OrderedDict()

    def scored(self, metrics):
        """True when the split has scores (then evaluate.txt gets a line and a table prints)."""
        return True

    def table(self, metrics, split_name):
        raise NotImplementedError

    # --- the shared flow ------------------------------------------------------------------

    def metrics_head(self, split_name, epoch, metric, **extra):
        """The first fields of every metrics file: benchmark, split, metric, model, the
        ``extra`` fields, and the epoch (evaluation-only runs pass "best": left out)."""
        metrics = OrderedDict(benchmark=self.benchmark, split=split_name, metric=metric,
                              model=self.model_info)
        metrics.update(extra)
        if isinstance(epoch, int):
            metrics["epoch"] = epoch
        return metrics

    def sample_ids(self, samples):
        ids = samples[self.ID_KEY]
        return ids.tolist() if torch.is_tensor(ids) else list(ids)

    @torch.no_grad()
    def evaluation(self, model, data_loader, cuda_enabled=None):
        if cuda_enabled is None:  # LAVIS's default (True) would move batches to CUDA
            cuda_enabled = next(model.parameters()).is_cuda
        dataset = loader_dataset(data_loader)
        state = self.split_state(model, dataset)
        metric_logger = MetricLogger(delimiter="  ")
        log = None
        if self.streams_predictions:
            split = getattr(self, "current_split", "eval")
            log = PredictionLog(registry.get_path("result_dir"), "%s_%s_predictions" % (
                split, self.KIND), self.ID_KEY, self.resume_predictions, self.log_settings(split))
        results = list(log.carried) if log is not None and distributed.get_rank() == 0 else []
        skipped = []
        for samples in metric_logger.log_every(data_loader, self.log_freq, self.LOG_HEADER):
            samples, unreadable = pop_skipped(samples)
            skipped.extend(unreadable)
            if samples is None:
                continue
            if log is not None and log.done:
                keep = [i not in log.done for i in self.sample_ids(samples)]
                if not any(keep):
                    continue
                samples = select_samples(samples, keep)
            samples = prepare_sample(samples, cuda_enabled=cuda_enabled)
            records = self.valid_step(model, samples, state)
            if log is not None:
                log.append(records)
            results.extend(records)
            self.update_progress(metric_logger, records)
        if log is not None:
            log.close()
        distributed.barrier()
        return EvalOutput(results, skipped, dataset)

    def merge(self, records):
        """The records of all processes, one per ``ID_KEY``, sorted (results.gather_results)."""
        return gather_results(records, key=self.ID_KEY)

    def after_evaluation(self, val_result, split_name, epoch=None, **kwargs):
        records = self.merge(val_result.records)
        skipped = gather_skipped(val_result.skipped) if self.skips_unreadable_images else []
        metrics = self.split_metrics(records, skipped, val_result.dataset, split_name, epoch)
        if skipped:  # the scores are over the samples that could be read
            metrics["num_skipped_unreadable"] = len(skipped)
            metrics["skipped_unreadable"] = skipped
        metrics["protocol"] = self.protocol_of(val_result.dataset)
        stem = os.path.join(registry.get_path("result_dir"), "%s_%s" % (split_name, self.KIND))
        predictions_file, metrics_file = stem + "_predictions.json", stem + "_metrics.json"
        metrics["predictions_file"] = predictions_file

        if is_main_process():
            write_json(self.predictions(records, val_result.dataset), predictions_file)
            write_json(metrics, metrics_file)
            for note in metrics.get("notes", []):
                print(note)
            if self.scored(metrics):
                append_evaluate_line(metrics, registry.get_path("output_dir"))
                print(self.table(metrics, split_name))
            if skipped:
                print("skipped %d %s could not be read (listed in %s under skipped_unreadable): "
                      "%s" % (len(skipped), self.SKIPPED_WHAT, metrics_file,
                              ", ".join(r["path"] for r in skipped[:5])
                              + (", ..." if len(skipped) > 5 else "")))
            print("predictions: %s\nmetrics: %s" % (predictions_file, metrics_file))
        distributed.barrier()  # the files exist on every rank's return
        return dict(metrics)


__all__ = ["XFormerEvalTask", "EvalOutput", "loader_dataset", "model_info", "run_settings"]
