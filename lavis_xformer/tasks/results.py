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
import json
import os

import torch.distributed as dist

from lavis_xformer import compat


def gather_results(records, key):
    """Merge per-rank result records (dicts) over all processes: one record per ``key``
    value (the first seen, in rank order, so the original beats a sampler's padding copy),
    sorted by it. In a single process: just de-duplicated and sorted."""
    if compat.dist_ready():
        parts = [None] * compat.get_world_size()
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
