"""Evaluation results across processes: gather, de-duplicate, write, tabulate.

LAVIS 1.0.2 merges results with ``BaseTask.save_result``, which has quirks this module avoids:

* every rank writes ``<name>_rank<r>.json`` and rank 0 reads them all back, so it needs a file
  system shared by every node;
* there is no barrier after the merge: the other ranks return the merged file's path before
  rank 0 has written it, and only rank 0 has the merged results at all;
* it de-duplicates with a list (``if id not in id_list``), quadratic in the number of results
  (minutes for VQAv2's 214k questions), and keeps the ranks' interleaved order.

Duplicates are expected: torch's DistributedSampler pads the last round with repeated
samples so that every rank gets as many. Here the results travel with
``torch.distributed.all_gather_object`` (gloo and nccl), every rank ends up with the same
merged list, sorted by its key, and rank 0 alone writes files.
"""
import glob
import json
import logging
import os

import torch.distributed as dist

from lavis_xformer.config_keys import ConfigError
from lavis_xformer.lavis_patches import distributed


def gather_results(records, key):
    """Merge per-rank result records (dicts) over all processes: one record per ``key``
    value (the first seen, in rank order, so the original beats a sampler's padding copy),
    sorted by it. In a single process: just de-duplicated and sorted."""
    if distributed.dist_ready():
        parts = [None] * distributed.get_world_size()
        dist.all_gather_object(parts, list(records))
        records = [r for part in parts for r in part]
    merged = {}
    for record in records:
        merged.setdefault(record[key], record)
    return [merged[k] for k in sorted(merged)]


def append_evaluate_line(metrics, output_dir):
    """One JSON line per evaluation in ``<output_dir>/evaluate.txt`` (split, epoch,
    agg_metrics), the file LAVIS's own tasks keep and the comparison report falls back to."""
    with open(os.path.join(output_dir, "evaluate.txt"), "a") as f:
        f.write(json.dumps({k: metrics[k] for k in ("split", "epoch", "agg_metrics")
                            if k in metrics}) + "\n")


def write_json(obj, path):
    """Write JSON atomically (a temporary file renamed over the target)."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


# --- Predictions written as they are made -----------------------------------------------------

# the first line of every prediction log: {SETTINGS_KEY: {setting: value}}, what its
# predictions depend on (benchmark, split, model and checkpoint, generation protocol; the
# task's XFormerEvalTask.log_settings), compared when run.resume_predictions takes them over
SETTINGS_KEY = "prediction_log_settings"
FIX = ("evaluate without run.resume_predictions, or with the settings that made those "
       "predictions")


class PredictionLog:
    """Every process appends its prediction records to ``<result_dir>/<name>.rank<r>.jsonl``
    as each batch is done (one JSON line per record, flushed), so that a crash or a kill keeps
    what was predicted; the first line holds the ``settings`` they are made under.
    ``run.resume_predictions`` names an interrupted evaluation's job directory (or its
    ``result/`` folder): the records of all its ``<name>.rank*.jsonl`` files (any number of
    processes) are taken over, written into this run's own file by rank 0, and their keys are
    not predicted again (``done``); a file made under other settings, or without a settings
    line, stops the evaluation (ConfigError, check_settings) before anything is predicted. A
    line cut short by the kill is ignored."""

    def __init__(self, result_dir, name, key, resume_from=None, settings=None):
        self.key = key
        self.path = os.path.join(result_dir, "%s.rank%d.jsonl" % (name, distributed.get_rank()))
        self.carried = []
        if resume_from:
            folder = resume_folder(resume_from)
            seen = {}
            for path in sorted(glob.glob(os.path.join(folder, "%s.rank*.jsonl" % name))):
                for record in check_settings(path, settings):
                    if key in record:
                        seen.setdefault(record[key], record)
            self.carried = list(seen.values())
            logging.info("run.resume_predictions: %d predictions kept from %s; predicting the "
                         "rest", len(self.carried), folder)
        self.done = {r[key] for r in self.carried}
        # a fresh file per evaluation (validation after each epoch writes it again); a run
        # never shares its job folder, so nothing of another run is overwritten
        self._file = open(self.path, "w")
        self.append([{SETTINGS_KEY: settings or {}}])
        if self.carried and distributed.get_rank() == 0:
            self.append(self.carried)

    def append(self, records):
        for record in records:
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def resume_folder(resume_from):
    """The folder of ``run.resume_predictions``'s prediction logs: the job directory's
    ``result/`` folder, or the folder named."""
    folder = os.path.expanduser(str(resume_from))
    if os.path.isdir(os.path.join(folder, "result")):
        folder = os.path.join(folder, "result")
    if not os.path.isdir(folder):
        raise ConfigError("run.resume_predictions: no folder %s; name the job directory of the "
                          "interrupted evaluation" % resume_from)
    return folder


def read_prediction_log(path):
    """(the settings of its first line, or None when it has none, the records) of a log."""
    settings, records = None, []
    with open(path) as f:
        for i, line in enumerate(f):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the last line of a killed process may be cut short
            if isinstance(record, dict) and SETTINGS_KEY in record:
                settings = record[SETTINGS_KEY] if i == 0 else settings
            elif isinstance(record, dict):
                records.append(record)
    return settings, records


def _read_jsonl(path):
    return read_prediction_log(path)[1]


def check_settings(path, settings):
    """The records of the prediction log ``path`` when it was made under ``settings``; else
    ConfigError, one line naming the file and each setting that differs (then vs now)."""
    old, records = read_prediction_log(path)
    if old is None and records:
        raise ConfigError("run.resume_predictions: %s has no settings line (written before "
                          "prediction logs recorded their model, benchmark and protocol), so "
                          "its predictions cannot be verified to fit this evaluation; %s"
                          % (path, FIX))
    if old is None:
        return records  # empty: its process was killed before its first line
    new = json.loads(json.dumps(settings or {}))  # as the log holds them (tuples -> lists)
    differ = ["%s: %s vs %s" % (k, _shown(old, k), _shown(new, k))
              for k in list(new) + [k for k in old if k not in new]
              if (k in old, old.get(k)) != (k in new, new.get(k))]
    if differ:
        more = len(differ) - 4
        raise ConfigError("run.resume_predictions: %s holds predictions made under other "
                          "settings (then vs now: %s%s); %s" % (
                              path, "; ".join(differ[:4]),
                              "; and %d more" % more if more > 0 else "", FIX))
    return records


def _shown(settings, key):
    return json.dumps(settings[key]) if key in settings else "(not set)"


def select_samples(samples, keep):
    """The batch ``samples`` (a dict of tensors / lists of the batch size) restricted to the
    positions where ``keep`` (list of bools) is true."""
    import torch

    n = len(keep)
    index = [i for i, k in enumerate(keep) if k]
    out = {}
    for name, value in samples.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
            out[name] = value[torch.tensor(index, dtype=torch.long, device=value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            out[name] = [value[i] for i in index]
        else:
            out[name] = value
    return out


def gather_skipped(skipped):
    """Skipped-sample records (SkipUnreadable) of all processes, one per index, sorted."""
    if distributed.dist_ready():
        parts = [None] * distributed.get_world_size()
        dist.all_gather_object(parts, list(skipped))
        skipped = [r for part in parts for r in part]
    merged = {}
    for record in skipped:
        merged.setdefault(record["index"], record)
    return [merged[k] for k in sorted(merged)]
