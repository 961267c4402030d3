"""Re-score predictions without a model: the table and metrics JSON of an evaluation run, for
predictions made anywhere (this project's runs, stock BLIP-2 run elsewhere, any model).

    python -m lavis_xformer.tools.score --benchmark {oc,mci,vqav2,okvqa,gqa}
        --annotations FILE [FILE] --predictions FILE [--out metrics.json]
        [--name oc_coco] [--split test] [--subset]

``--annotations``: the file(s) the evaluation project file reads under
``datasets.<key>.build_info.annotations.<split>.storage``: GVTBench's published JSON list
(``coco_oc.json``, ``coco_mci.json``, ``vcr_oc.json``, ``vcr_mci.json``); VQAv2's or OK-VQA's
official questions and annotations files (two files, either order); GQA's
``testdev_balanced_questions.json`` (or LAVIS's converted list).

``--predictions``: a JSON list, either this project's ``<split>_vqa_predictions.json`` or a
plain list of ``{"question_id", "prediction"}``; LAVIS's own result files read too
(``{"question_id", "answer"}`` from VQATask, ``{"question_id", "pred_ans"}`` from GQATask).
Question ids are the benchmark's own; for GVTBench, a row's index in the published file
(0-based; over several files, counted on across them, as the evaluation does).

Every question of the annotations needs a prediction (``--subset`` scores only those that
have one, e.g. for a run with ``build_info.max_items``). The scoring is the evaluation's own
(``lavis_xformer/tasks/metrics.py``; docs/scoring.md says which reference each headline
number equals): headline keys ``accuracy`` (and ``mae``, ``rmse`` for OC), ``agg_metrics``,
the variant columns and ``per_question_type``.
"""
import argparse
import hashlib
import json
import os
import sys
from collections import OrderedDict

from lavis_xformer.datasets import benchmarks
from lavis_xformer.tasks import metrics as bench_metrics
from lavis_xformer.tasks.results import write_json
from lavis_xformer.tasks.xformer_vqa import metrics_table, score

# benchmark -> (run.metric, kind of annotation file)
BENCHMARKS = OrderedDict([("oc", ("oc", "gvtbench")), ("mci", ("mci", "gvtbench")),
                          ("vqav2", ("vqa_accuracy", "vqa")), ("okvqa", ("vqa_accuracy", "vqa")),
                          ("gqa", ("exact_match", "gqa"))])

# GVTBench's published files (github.com/TencentARC/GVT, commit fead7e3), by sha256. The
# repository holds coco_oc.json twice with different rows (docs/scoring.md).
GVTBENCH_FILES = {
    "10f2144b1d2d79d6620af0758f6d3591cb5798eba09ba6d5c0f405c0dd3fb21b": "GVTBench/coco_oc.json",
    "bf5c31c8390fecfa6b7b8c33a16082778e294e0153f0f4595ec225afbd613dba": "GVTBench/GVTBench/coco_oc.json",
    "eedc0e47f92cb9059116bb35aff784f522bf80d7a0f9becfa3d846252596b745": "GVTBench/coco_mci.json",
    "b5d5231c20633095c879c4f31f4bc9ea621a76e2e26540f8e815004d8d23f03f": "GVTBench/vcr_oc.json",
    "0445315cc4f3c69a3005727ee44437a7652cf56196b9b96d805e7bf232c1d8de": "GVTBench/vcr_mci.json",
}


class ScoreError(ValueError):
    """Input the scorer cannot use; the message says what and how to fix it."""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_annotations(benchmark, paths):
    """Annotation records as the evaluation's dataset builds them (question_id, answer or
    answers, question_type, ...)."""
    for path in paths:
        if not os.path.isfile(path):
            raise ScoreError("--annotations %s: no such file" % path)
    kind = BENCHMARKS[benchmark][1]
    if kind == "gvtbench":
        records = [r for p in paths for r in benchmarks.load_gvtbench(p)]
        for i, r in enumerate(records):  # as GVTBenchDataset numbers rows over several files
            r["question_id"] = i
        return records
    if kind == "vqa":
        return benchmarks.load_official_vqa(paths, "{}")
    return [r for p in paths for r in benchmarks.load_gqa(p)]


def _key(benchmark, question_id, where):
    """Question ids compared as the evaluation keeps them: strings for GQA, ints otherwise."""
    if BENCHMARKS[benchmark][1] == "gqa":
        return str(question_id)
    try:
        return int(question_id)
    except (TypeError, ValueError):
        raise ScoreError("%s: question_id %r is not an integer (%s question ids are%s)" % (
            where, question_id, benchmark,
            " the row's index in the published file" if benchmark in ("oc", "mci") else
            " the official integer ids")) from None


def load_predictions(path, benchmark):
    """{question id: prediction string} from a JSON list of records."""
    if not os.path.isfile(path):
        raise ScoreError("--predictions %s: no such file" % path)
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ScoreError("--predictions %s is not valid JSON (%s)" % (path, e)) from None
    if not isinstance(data, list) or not data:
        raise ScoreError("--predictions %s: expected a non-empty JSON list of {\"question_id\", "
                         "\"prediction\"}" % path)
    # LAVIS's own result files name the prediction "answer" (VQATask) or "pred_ans" (GQATask);
    # in this project's files "answer" is the ground truth, so "prediction" wins when present.
    field = next((f for f in ("prediction", "pred_ans", "answer")
                  if all(isinstance(r, dict) and f in r for r in data)), None)
    if field is None:
        raise ScoreError("--predictions %s: every entry needs \"question_id\" and \"prediction\" "
                         "(or LAVIS's \"answer\" / \"pred_ans\")" % path)
    predictions = OrderedDict()
    for i, entry in enumerate(data):
        if "question_id" not in entry:
            raise ScoreError("--predictions %s: entry %d has no \"question_id\"" % (path, i))
        key = _key(benchmark, entry["question_id"], "--predictions %s, entry %d" % (path, i))
        if key in predictions:
            raise ScoreError("--predictions %s: question_id %r appears twice" % (path, key))
        if not isinstance(entry[field], str):
            raise ScoreError("--predictions %s: entry %d: %r is %r, not a string" % (
                path, i, field, entry[field]))
        predictions[key] = entry[field]
    return predictions


def build_records(benchmark, annotations, predictions, subset=False):
    """Records like the evaluation's: the annotation's ground truth and the prediction."""
    by_id = OrderedDict((_key(benchmark, a["question_id"], "--annotations"), a) for a in annotations)
    unknown = [k for k in predictions if k not in by_id]
    if unknown:
        raise ScoreError("%d predictions have question ids that the annotations do not hold "
                         "(first: %r); check --benchmark and --annotations" % (len(unknown), unknown[0]))
    missing = [k for k in by_id if k not in predictions]
    if missing and not subset:
        raise ScoreError("%d of %d questions have no prediction (first: %r); pass --subset to "
                         "score only the predicted ones" % (len(missing), len(by_id), missing[0]))
    records = []
    for key, ann in by_id.items():
        if key not in predictions:
            continue
        record = OrderedDict(question_id=ann["question_id"])
        for field in ("image_id", "question_type", "n_obj_exist", "question"):
            if field in ann:
                record[field] = ann[field]
        if "answers" in ann:
            record["answers"] = list(ann["answers"])
            record["answer"] = bench_metrics.majority(record["answers"])
        elif "answer" in ann:
            record["answer"] = ann["answer"]
        record["prediction"] = predictions[key]
        records.append(record)
    return records


def rescore(benchmark, annotation_paths, predictions_path, name=None, split=None, subset=False):
    """(metrics dict, scored records): what an evaluation run writes, without the model."""
    if benchmark not in BENCHMARKS:
        raise ScoreError("--benchmark %r is not known; available: %s" % (benchmark, ", ".join(BENCHMARKS)))
    metric = BENCHMARKS[benchmark][0]
    try:
        annotations = load_annotations(benchmark, annotation_paths)
    except ScoreError:
        raise
    except (KeyError, ValueError) as e:  # the loaders' messages name the file and the fault
        raise ScoreError("--annotations %s: %s" % (" ".join(annotation_paths), e)) from None
    predictions = load_predictions(predictions_path, benchmark)
    records = build_records(benchmark, annotations, predictions, subset)
    metrics = OrderedDict(benchmark=name or benchmark)
    if split:
        metrics["split"] = split
    metrics["metric"] = metric
    metrics.update(score(records, None, metric))
    metrics["questions_in_split"] = len(annotations)  # as an evaluation run counts its split
    files = []
    for path in annotation_paths:
        digest = sha256(path)
        entry = OrderedDict(path=os.path.abspath(path), sha256=digest)
        if digest in GVTBENCH_FILES:
            entry["published_as"] = GVTBENCH_FILES[digest]
        files.append(entry)
    metrics["annotations"] = files
    metrics["predictions_file"] = os.path.abspath(predictions_path)
    return metrics, records


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lavis_xformer.tools.score",
        description="Score predictions against a benchmark's annotation file(s) as an evaluation "
                    "run does (same table, same metrics JSON), without a model.")
    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    parser.add_argument("--annotations", required=True, nargs="+", metavar="FILE",
                        help="the annotation file(s) the evaluation project file reads")
    parser.add_argument("--predictions", required=True, metavar="FILE",
                        help="this project's predictions file or a JSON list of "
                             "{\"question_id\", \"prediction\"}")
    parser.add_argument("--out", metavar="FILE", help="write the metrics JSON here")
    parser.add_argument("--name", help="benchmark name for the metrics JSON (e.g. oc_coco; "
                                       "default: --benchmark)")
    parser.add_argument("--split", help="split name for the metrics JSON")
    parser.add_argument("--subset", action="store_true",
                        help="score only the questions that have a prediction")
    args = parser.parse_args(argv)
    try:
        metrics, _ = rescore(args.benchmark, args.annotations, args.predictions, args.name,
                             args.split, args.subset)
    except ScoreError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    for entry in metrics["annotations"]:
        print("annotations: %s (sha256 %s%s)" % (entry["path"], entry["sha256"][:16],
                                                  ", published as " + entry["published_as"]
                                                  if "published_as" in entry else ""))
    print(metrics_table(metrics, "[%s, %s] Re-scored predictions%s: %d questions (%s)" % (
        metrics["benchmark"], metrics["metric"], ", split %r" % args.split if args.split else "",
        metrics["num_questions"], args.predictions)))
    if args.out:
        write_json(metrics, args.out)
        print("metrics: %s" % args.out)
    return metrics


if __name__ == "__main__":
    main()
