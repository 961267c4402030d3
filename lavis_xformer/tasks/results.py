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


def format_table(header, rows):
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] +
                     [line(row) for row in cells[1:]])


# --- Predictions written as they are made -----------------------------------------------------

class PredictionLog:
    """Every process appends its prediction records to ``<result_dir>/<name>.rank<r>.jsonl``
    as each batch is done (one JSON line per record, flushed), so that a crash or a kill keeps
    what was predicted. ``run.resume_predictions`` names an interrupted evaluation's job
    directory (or its ``result/`` folder): the records of all its ``<name>.rank*.jsonl`` files
    (any number of processes) are taken over, written into this run's own file by rank 0,
    and their keys are not predicted again (``done``). A line cut short by the kill is
    ignored."""

    def __init__(self, result_dir, name, key, resume_from=None):
        self.key = key
        self.path = os.path.join(result_dir, "%s.rank%d.jsonl" % (name, distributed.get_rank()))
        self.carried = []
        if resume_from:
            folder = str(resume_from)
            if os.path.isdir(os.path.join(folder, "result")):
                folder = os.path.join(folder, "result")
            if not os.path.isdir(folder):
                raise FileNotFoundError("run.resume_predictions: no folder %s" % resume_from)
            seen = {}
            for path in sorted(glob.glob(os.path.join(folder, "%s.rank*.jsonl" % name))):
                for record in _read_jsonl(path):
                    if key in record:
                        seen.setdefault(record[key], record)
            self.carried = list(seen.values())
            logging.info("run.resume_predictions: %d predictions kept from %s; predicting the "
                         "rest", len(self.carried), folder)
        self.done = {r[key] for r in self.carried}
        # a fresh file per evaluation (validation after each epoch writes it again); a run
        # never shares its job folder, so nothing of another run is overwritten
        self._file = open(self.path, "w")
        if self.carried and distributed.get_rank() == 0:
            self.append(self.carried)

    def append(self, records):
        for record in records:
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def _read_jsonl(path):
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the last line of a killed process may be cut short
            if isinstance(record, dict):
                records.append(record)
    return records


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
