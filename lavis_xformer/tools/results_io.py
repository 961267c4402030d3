"""Read what evaluation runs leave behind, and the paper's reported numbers.

A run is found from any of: a metrics JSON file, a job directory (``<output_dir>/<job_id>``),
its ``result/`` folder, or a run's ``output_dir`` (then its ``latest`` job, see
``training.runner.point_latest``). From a job directory every ``result/*metrics*.json`` is read;
a job without one falls back to the last line of LAVIS's ``evaluate.txt``.

A metrics JSON is read tolerantly as

    {benchmark name (``benchmark`` | ``dataset`` key; else the run config's dataset; else the
     file name), optional ``model`` {arch, model_type, fusion, ...},
     metric name -> number, ...,
     optional ``per_<group>`` -> {type -> number | {accuracy: number, ...}}}

(``xformer_vqa`` writes ``accuracy`` and ``per_question_type``; a GQA-style file may carry
``per_structural_type`` and ``per_semantic_type``). Book-keeping numbers (``num_questions``,
``epoch``, ...) are skipped; pycocoevalcap's raw caption scores (``Bleu_4``, ``CIDEr``, ... in
[0, 1+]) are multiplied by 100 and renamed as the paper prints them (B@4, CIDEr); LAVIS's
retrieval keys (``txt_r1``, ``img_r5``, ...) become TR@1, IR@5, ...

The model (``arch:model_type``) and its variant come from the metrics JSON's ``model`` entry,
where the run recorded them (``tasks/evaluation.model_info``; the variant named as in
``tasks/variants.py``). Runs written before the variant was recorded fall back to decoding it
from their configuration: the ``model`` entry, else the run configuration LAVIS writes at the
top of ``<job>/log.txt``, the stage-1 ablation keys followed back through ``model.pretrained``
where that path can still be found.
"""
import glob
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Optional

import yaml

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.tasks.variants import describe_model, run_config

PAPER_RESULTS = os.path.join(PACKAGE_DIR, "configs", "reference", "paper_results.yaml")

# numbers in a metrics JSON that are not scores
BOOKKEEPING = {"num_questions", "epoch", "questions_in_split", "agg_metrics", "num_images",
               "num_samples", "best_epoch", "num_skipped_unreadable", "images_in_split"}
# pycocoevalcap's raw names -> the paper's, scaled by 100
CAPTION_KEYS = OrderedDict([("Bleu_1", "B@1"), ("Bleu_2", "B@2"), ("Bleu_3", "B@3"),
                            ("Bleu_4", "B@4"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"),
                            ("CIDEr", "CIDEr"), ("SPICE", "SPICE")])
_RETRIEVAL = re.compile(r"^(txt|img)_r(\d+)$")


class ResultsError(ValueError):
    """A run directory or metrics file that cannot be read; the message says why."""


@dataclass
class Result:
    """One evaluation: a run's scores on one benchmark split.

    metrics: metric name -> value (overall); groups: group name -> {type -> value}
    (per question type, accuracy); baseline: the majority-answer baseline if the file has one,
    with the same layout {"metrics": {...}, "groups": {...}, "answer": str}.
    """

    label: str
    variant: str
    model: str
    benchmark: str
    split: str
    source: str
    metrics: Dict[str, float] = field(default_factory=OrderedDict)
    groups: Dict[str, Dict[str, float]] = field(default_factory=OrderedDict)
    baseline: Optional[dict] = None


def canonical(name):
    """Lower-case alphanumerics only: 'OK-VQA' -> 'okvqa'."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def load_paper(path=PAPER_RESULTS):
    """The paper's numbers: {benchmark: {aliases, metrics, rows: [...]}} (see the yaml)."""
    with open(path) as f:
        data = yaml.safe_load(f)
    return data["benchmarks"]


def load_costs(path=PAPER_RESULTS):
    """The paper's computational-cost table (supplementary Table 7), or None."""
    with open(path) as f:
        return yaml.safe_load(f).get("costs")


def benchmark_name(raw, paper):
    """The paper's name for a benchmark given as a dataset/benchmark name; else ``raw``."""
    for key in (canonical(raw), canonical(_strip_split(raw))):
        for name, entry in paper.items():
            if key == canonical(name) or key in {canonical(a) for a in entry.get("aliases", ())}:
                return name
    return str(raw)


def _strip_split(raw):
    """'gqa_testdev_vqa' style names: drop a trailing '_vqa' / '_eval' task suffix."""
    return re.sub(r"(_vqa|_eval|_caption|_retrieval)$", "", str(raw))


# ------------------------------------------------------------------ metrics files

def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rename_metric(name, value, raw_caption):
    """(display name, value) of one overall metric."""
    if raw_caption and name in CAPTION_KEYS:
        return CAPTION_KEYS[name], 100.0 * value
    m = _RETRIEVAL.match(name)
    if m:
        return ("TR@" if m.group(1) == "txt" else "IR@") + m.group(2), value
    if name == "r_mean":
        return "R mean", value
    return name, value


def parse_metrics(data):
    """(overall metrics, per-type groups, majority baseline or None) of a metrics dict."""
    if not isinstance(data, dict):
        raise ResultsError("a metrics JSON must hold an object, got %s" % type(data).__name__)
    if isinstance(data.get("metrics"), dict):  # {"benchmark": ..., "metrics": {...}}
        inner = dict(data["metrics"])
        data = dict(data, **inner)
    raw_caption = "Bleu_4" in data
    metrics, groups = OrderedDict(), OrderedDict()
    for key, value in data.items():
        if _number(value) and key not in BOOKKEEPING:
            name, value = rename_metric(key, value, raw_caption)
            metrics[name] = float(value)
    if not metrics and _number(data.get("agg_metrics")):
        metrics["agg_metrics"] = float(data["agg_metrics"])
    baseline_groups = OrderedDict()
    for key, value in data.items():
        if not (key.startswith("per_") and isinstance(value, dict)):
            continue
        group = key[len("per_"):]
        types, base = OrderedDict(), OrderedDict()
        for qtype, entry in value.items():
            if _number(entry):
                types[str(qtype)] = float(entry)
            elif isinstance(entry, dict):
                score = entry.get("accuracy")
                if not _number(score):
                    score = next((v for k, v in entry.items() if _number(v) and k not in BOOKKEEPING
                                  and k != "majority_baseline"), None)
                if score is not None:
                    types[str(qtype)] = float(score)
                if _number(entry.get("majority_baseline")):
                    base[str(qtype)] = float(entry["majority_baseline"])
        if types:
            groups[group] = types
        if base:
            baseline_groups[group] = base
    baseline = None
    majority = data.get("majority_baseline")
    if isinstance(majority, dict) and _number(majority.get("accuracy")):
        baseline = {"answer": majority.get("answer"), "metrics": {"accuracy": float(majority["accuracy"])},
                    "groups": baseline_groups}
    return metrics, groups, baseline


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ResultsError("%s is not valid JSON (%s)" % (path, e))


def _job_dirs(path):
    """Job directories under a path given on the command line."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "latest")):
        return [os.path.realpath(os.path.join(path, "latest"))]
    if os.path.basename(path) == "result":
        return [os.path.dirname(path)]
    return [path]


def metrics_files(job_dir):
    files = sorted(glob.glob(os.path.join(job_dir, "result", "*metrics*.json")))
    return files or sorted(glob.glob(os.path.join(job_dir, "*metrics*.json")))


def _from_evaluate_txt(job_dir):
    """LAVIS tasks without a metrics file log ``{split: {metric: value}}`` or a flat dict to
    ``evaluate.txt``; the last line is taken."""
    path = os.path.join(job_dir, "evaluate.txt")
    if not os.path.isfile(path):
        return []
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    if not lines:
        return []
    data = json.loads(lines[-1])
    if all(isinstance(v, dict) for v in data.values()):
        return [(split, values) for split, values in data.items()]
    return [(data.get("split", "?"), data)]


def load_run(path, label=None, paper=None):
    """The results (a list of ``Result``) of one run given as a metrics file or a directory."""
    if paper is None:
        paper = load_paper()
    if not os.path.exists(path):
        raise ResultsError("%s: no such file or directory (give a run's output_dir, a job "
                           "directory, its result/ folder or a metrics JSON)" % path)
    if os.path.isfile(path):
        job_dir = os.path.dirname(os.path.abspath(path))
        if os.path.basename(job_dir) == "result":
            job_dir = os.path.dirname(job_dir)
        entries = [(path, read_json(path))]
    else:
        job_dir = _job_dirs(path)[0]
        files = metrics_files(job_dir)
        entries = [(f, read_json(f)) for f in files]
        if not entries:
            entries = [(os.path.join(job_dir, "evaluate.txt"), dict(values, split=split))
                       for split, values in _from_evaluate_txt(job_dir)]
        if not entries:
            raise ResultsError(
                "%s holds no evaluation results: expected result/*_metrics.json (as the "
                "xformer_vqa task writes) or an evaluate.txt in %s; was the evaluation run "
                "(python -m lavis.evaluate) and did it finish?" % (path, job_dir))
    config = run_config(job_dir) or {}
    results = []
    for source, data in entries:
        metrics, groups, baseline = parse_metrics(data)
        if not metrics and not groups:
            raise ResultsError("%s has no numeric metrics" % source)
        variant, model = run_model(data, config, job_dir)
        raw = data.get("benchmark") or data.get("dataset")
        if not raw and len(config.get("datasets", {})) == 1:
            raw = next(iter(config["datasets"]))
        if not raw:
            raw = re.sub(r"_?metrics.*$", "", os.path.basename(source)) or "benchmark"
        split = str(data.get("split", ""))
        results.append(Result(
            label=label or _default_label(variant, job_dir), variant=variant, model=model,
            benchmark=benchmark_name(raw, paper), split=split, source=source,
            metrics=metrics, groups=groups, baseline=baseline))
    return results


def run_model(data, config, job_dir):
    """(variant, ``arch:model_type``) of one metrics dict: as the run recorded them in its
    ``model`` entry; else (a run written before the variant was recorded) decoded from that
    entry or from the job's run configuration (``tasks/variants.describe_model``); else "?"."""
    entry = data.get("model") if isinstance(data.get("model"), dict) else None
    if entry is not None and entry.get("variant"):
        return entry["variant"], "%s:%s" % (entry.get("arch", "?"), entry.get("model_type", "?"))
    if entry is not None:  # fallback for older runs: decoding, kept for their files only
        return describe_model({"model": entry}, job_dir)
    if config:
        return describe_model(config, job_dir)
    return "?", "?"


def _default_label(variant, job_dir):
    return variant if variant != "?" else os.path.basename(os.path.dirname(job_dir)) or job_dir
