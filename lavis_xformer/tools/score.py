"""Re-score predictions without a model: the table and metrics JSON of an evaluation run, for
predictions made anywhere (this project's runs, stock BLIP-2 run elsewhere, any model).

    python -m lavis_xformer.tools.score --benchmark {oc,mci,vqav2,okvqa,gqa}
        --annotations FILE [FILE] --predictions FILE [--prediction-field NAME]
        [--out metrics.json [--overwrite]] [--name oc_coco] [--split test] [--subset]

``--annotations``: the file(s) the evaluation project file reads under
``datasets.<key>.build_info.annotations.<split>.storage``: GVTBench's published JSON list
(``coco_oc.json``, ``coco_mci.json``, ``vcr_oc.json``, ``vcr_mci.json``); VQAv2's or OK-VQA's
official questions and annotations files (two files, either order); GQA's
``testdev_balanced_questions.json`` (or LAVIS's converted list). Their content is checked
before anything is scored: a file of another benchmark (an OC count given for MCI, a VQA file
for GQA, ...) or a ground truth the reference code would misread (a null, an MCI answer that
is not Yes/No, an OC answer that is not an integer) is one line naming the file and entry.

``--predictions``: a JSON list of objects; the field that holds the prediction is read by
name, by format:

    this project's ``<split>_vqa_predictions.json``, or a plain list:  "prediction"
    LAVIS's GQATask result file {"question_id", "pred_ans", "gt_ans"}:  "pred_ans"
    LAVIS's VQATask result file {"question_id", "answer"}:             "answer"

A file in which any entry has "prediction" needs it on every entry (else "pred_ans" likewise).
"answer" is read only from entries that hold nothing but "question_id" and "answer", because
in this project's files "answer" is the ground truth: it is never scored in the prediction's
place. ``--prediction-field`` names another field (the same rules apply to it).

Question ids are taken as written, never converted: ints (for GVTBench, a row's index in the
published file, 0-based; over several files, counted on across them, as the evaluation does),
for GQA GQA's id strings (or ints, as LAVIS's GQATask writes them). A repeated id and an id the
annotations do not hold are errors.

Every question of the annotations needs a prediction (``--subset`` scores only those that
have one, e.g. for a run with ``build_info.max_items``). The scoring is the evaluation's own
(``lavis_xformer/scoring.py``; docs/scoring.md says which reference each headline
number equals): headline keys ``accuracy`` (and ``mae``, ``rmse`` for OC), ``agg_metrics``,
the variant columns and ``per_question_type``. ``--out`` writes a new file: it is never one
of the inputs, and it replaces an existing file only with ``--overwrite``.

Input files must be UTF-8 JSON without NaN or Infinity; anything the tool cannot use stops it
with one line (``error: ...``, exit status 2) before it writes anything.
"""
import argparse
import hashlib
import json
import os
import sys
from collections import OrderedDict

from lavis_xformer import scoring
from lavis_xformer.datasets import benchmarks
from lavis_xformer.tasks.results import write_json

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


def _no_constant(name):
    raise ScoreError("holds %s, which is not a JSON value (Python writes it for a float that is "
                     "not a number); fix or drop that entry" % name)


def read_json(path, flag):
    """(content, sha256) of a UTF-8 JSON file; anything else is one line naming the file."""
    if not os.path.isfile(path):
        raise ScoreError("%s %s: no such file" % (flag, path))
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ScoreError("%s %s is empty" % (flag, path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScoreError("%s %s is not UTF-8 text (byte %d is 0x%02x); save it as UTF-8 JSON" % (
            flag, path, e.start, raw[e.start])) from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ScoreError as e:
        raise ScoreError("%s %s %s" % (flag, path, e)) from None
    except json.JSONDecodeError as e:
        raise ScoreError("%s %s is not valid JSON (%s)" % (flag, path, e)) from None
    return data, hashlib.sha256(raw).hexdigest()


def _json_type(value):
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------ annotations

def _kind_of(data):
    """Which benchmark's annotations ``data`` holds, judged by content: "gvtbench" (a list of
    {text_in, text_out}), "vqa" (official {"questions"} or {"annotations"}), "gqa" (GQA's
    {id: {"imageId", ...}} or LAVIS's list of {question_id, answer: str}), or None."""
    if isinstance(data, dict):
        if isinstance(data.get("questions"), list) or isinstance(data.get("annotations"), list):
            return "vqa"
        first = next(iter(data.values()), None)
        return "gqa" if isinstance(first, dict) and "imageId" in first else None
    first = data[0] if isinstance(data, list) and data else None
    if isinstance(first, dict) and "text_out" in first:
        return "gvtbench"
    if isinstance(first, dict) and "question_id" in first and isinstance(first.get("answer"), str):
        return "gqa"
    return None


KIND_NAMES = {"gvtbench": ("GVTBench's", "oc or mci"), "vqa": ("official VQA", "vqav2 or okvqa"),
              "gqa": ("GQA's", "gqa")}


def _count(value):
    """GVTBench's OC ground truth (int(text_out)) or None; only a string or an int is read,
    so that 1.7 or true is never taken as 1."""
    if isinstance(value, str) or type(value) is int:
        try:
            return scoring.gvt_true_count(value)
        except ValueError:
            return None
    return None


def _yes_no(value):
    try:
        return scoring.gvt_yes_no_truth(value)
    except ValueError:
        return None


def _check_gvtbench(benchmark, path, data):
    """Every row's ground truth is of ``benchmark``'s kind: a count for OC, Yes/No for MCI;
    a row of the other kind says that the file is the other benchmark's."""
    where = "--annotations %s: entry %d: text_out"
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ScoreError("--annotations %s: entry %d is %r, not an object {image_id, text_in, "
                             "text_out, n_obj_exist}" % (path, i, row))
        if "text_out" not in row:
            continue  # the loader names the missing fields
        value = row["text_out"]
        if value is None:
            raise ScoreError((where + " is null; GVTBench's %s ground truth is %s: fix or drop "
                              "the entry") % (path, i, benchmark.upper(),
                                              "a count" if benchmark == "oc" else "\"Yes.\" or \"No.\""))
        if benchmark == "oc" and _count(value) is None:
            hint = ("; the file looks like GVTBench MCI annotations: use --benchmark mci"
                    if _yes_no(value) else "")
            raise ScoreError((where + " %r is not a count (GVTBench's count.py reads int(text_out))%s")
                             % (path, i, value, hint))
        if benchmark == "mci" and _yes_no(value) is None:
            hint = ("; the file looks like GVTBench OC annotations: use --benchmark oc"
                    if _count(value) is not None else "")
            raise ScoreError((where + " %r is not \"Yes.\" or \"No.\" (GVTBench's MCI answers)%s")
                             % (path, i, value, hint))


def _check_vqa(path, data):
    """Integer question ids, and human answers that are text (VQAEval compares them as such)."""
    for part in ("questions", "annotations"):
        for i, entry in enumerate(data.get(part) or []):
            entry = entry if isinstance(entry, dict) else {}
            answers = entry.get("answers") if part == "annotations" else [{"answer": ""}]
            if type(entry.get("question_id")) is not int or not isinstance(answers, list) or not answers \
                    or not all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers):
                raise ScoreError("--annotations %s: %s entry %d (question_id %r) needs an integer "
                                 "question_id%s" % (path, part, i, entry.get("question_id"),
                                                    " and a non-empty list of {\"answer\": text} answers"
                                                    if part == "annotations" else ""))


def _check_gqa(path, data):
    rows = data.items() if isinstance(data, dict) else enumerate(data)
    for i, row in rows:
        answer = row.get("answer") if isinstance(row, dict) else row
        if not isinstance(answer, str):
            raise ScoreError("--annotations %s: entry %r: the answer is %s, not text (GQA's "
                             "ground truth)" % (path, i, json.dumps(answer)))


def check_annotation_file(benchmark, path, data):
    """One line, before any scoring, for a file of another benchmark or a ground truth that
    the benchmark's reference code would misread."""
    kind = BENCHMARKS[benchmark][1]
    if not data:
        raise ScoreError("--annotations %s holds no questions" % path)
    found = _kind_of(data)
    if found is not None and found != kind:
        raise ScoreError("--annotations %s holds %s annotations, not %s's: use --benchmark %s, "
                         "or give %s's file" % (path, KIND_NAMES[found][0], benchmark,
                                                KIND_NAMES[found][1], benchmark))
    if kind == "gvtbench":
        if not isinstance(data, list):
            raise ScoreError("--annotations %s holds a JSON %s; GVTBench's files are a JSON list "
                             "of {image_id, text_in, text_out, n_obj_exist}" % (path, _json_type(data)))
        _check_gvtbench(benchmark, path, data)
    elif kind == "vqa":
        if found is None:
            raise ScoreError("--annotations %s: expected an official VQA file (a JSON object with "
                             "a \"questions\" or an \"annotations\" list)" % path)
        _check_vqa(path, data)
    elif isinstance(data, (dict, list)):
        _check_gqa(path, data)


def load_annotations(benchmark, paths):
    """(annotation records as the evaluation's dataset builds them (question_id, answer or
    answers, question_type, ...), sha256 per path). Every file is checked first."""
    digests = []
    for path in paths:
        data, digest = read_json(path, "--annotations")
        check_annotation_file(benchmark, path, data)
        digests.append(digest)
    kind = BENCHMARKS[benchmark][1]
    if kind == "gvtbench":
        records = [r for p in paths for r in benchmarks.load_gvtbench(p)]
        for i, r in enumerate(records):  # as GVTBenchDataset numbers rows over several files
            r["question_id"] = i
    elif kind == "vqa":
        records = benchmarks.load_official_vqa(paths, "{}")
    else:
        records = [r for p in paths for r in benchmarks.load_gqa(p)]
    return records, digests


# ------------------------------------------------------------------ predictions

# The prediction field of each format. In this project's predictions files "answer" is the
# ground truth, so "answer" is read only from LAVIS's VQATask files, which hold nothing else.
PREDICTION_FIELDS = ("prediction", "pred_ans", "answer")
LAVIS_VQA_FIELDS = {"question_id", "answer"}


def prediction_field(data, path, field=None):
    """The field that holds the predictions: ``field`` if given, else "prediction" if any
    entry has it, else "pred_ans" (LAVIS's GQATask) if any has it, else "answer" (LAVIS's
    VQATask)."""
    if field is None:
        field = next((f for f in PREDICTION_FIELDS
                      if any(isinstance(r, dict) and f in r for r in data)), None)
        if field is None:
            raise ScoreError("--predictions %s: every entry needs \"question_id\" and "
                             "\"prediction\" (or LAVIS's \"pred_ans\" / \"answer\"), or name the "
                             "field with --prediction-field" % path)
    if field == "answer":
        for i, entry in enumerate(data):
            if isinstance(entry, dict) and set(entry) != LAVIS_VQA_FIELDS:
                raise ScoreError(
                    "--predictions %s: entry %d (question_id %r) holds %s: \"answer\" is read "
                    "as the prediction only from LAVIS's VQATask files, which hold just "
                    "\"question_id\" and \"answer\" (in this project's files \"answer\" is the "
                    "ground truth); give every entry a \"prediction\"" % (
                        path, i, entry.get("question_id"), sorted(entry)))
    return field


def _key(benchmark, question_id, where):
    """A question id as the evaluation keeps it, taken as written (never converted): an int,
    or for GQA a string (LAVIS's GQATask writes GQA's ids as ints: those are matched as
    their digits)."""
    gqa = BENCHMARKS[benchmark][1] == "gqa"
    if type(question_id) is int:
        return str(question_id) if gqa else question_id
    if gqa and isinstance(question_id, str):
        return question_id
    raise ScoreError("%s: question_id %r is a %s, not %s (%s question ids are%s; ids are "
                     "matched as written, never converted)" % (
                         where, question_id, type(question_id).__name__,
                         "a string" if gqa else "an integer", benchmark,
                         " the row's index in the published file" if benchmark in ("oc", "mci")
                         else " GQA's id strings" if gqa else " the official integer ids"))


def load_predictions(path, benchmark, field=None, known=None):
    """{question id: prediction string} from a JSON list of records; ``known`` (the
    annotations' question ids) makes an unknown id an error."""
    data, _ = read_json(path, "--predictions")
    if not isinstance(data, list) or not data:
        got = "an empty list" if data == [] else "a JSON %s" % _json_type(data)
        raise ScoreError("--predictions %s: expected a non-empty JSON list of {\"question_id\", "
                         "\"prediction\"}, got %s" % (path, got))
    field = prediction_field(data, path, field)
    predictions, first_entry, unknown = OrderedDict(), {}, []
    for i, entry in enumerate(data):
        where = "--predictions %s: entry %d" % (path, i)
        if not isinstance(entry, dict):
            raise ScoreError("%s is %r, not an object with \"question_id\" and %r" % (where, entry, field))
        if "question_id" not in entry:
            raise ScoreError("%s has no \"question_id\"" % where)
        where += " (question_id %r)" % (entry["question_id"],)
        if field not in entry:
            raise ScoreError("%s has no %r: every entry of this file needs it%s" % (
                where, field, "; \"answer\" (the ground truth in this project's files) is never "
                              "scored in its place" if "answer" in entry else ""))
        if not isinstance(entry[field], str):
            raise ScoreError("%s: %r is %r, not a string" % (where, field, entry[field]))
        key = _key(benchmark, entry["question_id"], where)
        if key in predictions:
            raise ScoreError("--predictions %s: entries %d and %d both have question_id %r" % (
                path, first_entry[key], i, key))
        if known is not None and key not in known:
            unknown.append((i, key))
        predictions[key] = entry[field]
        first_entry[key] = i
    if unknown:
        raise ScoreError("--predictions %s: %d predictions have question ids that the annotations "
                         "do not hold (first: entry %d, question_id %r); check --benchmark and "
                         "--annotations" % (path, len(unknown), unknown[0][0], unknown[0][1]))
    return predictions


def build_records(benchmark, annotations, predictions, subset=False):
    """Records like the evaluation's: the annotation's ground truth and the prediction."""
    by_id = OrderedDict((a["question_id"], a) for a in annotations)
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
            record["answer"] = scoring.majority(record["answers"])
        elif "answer" in ann:
            record["answer"] = ann["answer"]
        record["prediction"] = predictions[key]
        records.append(record)
    return records


def rescore(benchmark, annotation_paths, predictions_path, name=None, split=None, subset=False,
            prediction_field=None):
    """(metrics dict, scored records): what an evaluation run writes, without the model."""
    if benchmark not in BENCHMARKS:
        raise ScoreError("--benchmark %r is not known; available: %s" % (benchmark, ", ".join(BENCHMARKS)))
    metric = BENCHMARKS[benchmark][0]
    try:
        annotations, digests = load_annotations(benchmark, annotation_paths)
    except ScoreError:
        raise
    except (KeyError, ValueError) as e:  # the loaders' messages name the file and the fault
        raise ScoreError("--annotations %s: %s" % (" ".join(annotation_paths), e)) from None
    predictions = load_predictions(predictions_path, benchmark, prediction_field,
                                   known={a["question_id"] for a in annotations})
    records = build_records(benchmark, annotations, predictions, subset)
    metrics = OrderedDict(benchmark=name or benchmark)
    if split:
        metrics["split"] = split
    metrics["metric"] = metric
    metrics.update(scoring.score(records, None, metric))
    metrics["questions_in_split"] = len(annotations)  # as an evaluation run counts its split
    files = []
    for path, digest in zip(annotation_paths, digests):
        entry = OrderedDict(path=os.path.abspath(path), sha256=digest)
        if digest in GVTBENCH_FILES:
            entry["published_as"] = GVTBENCH_FILES[digest]
        files.append(entry)
    metrics["annotations"] = files
    metrics["predictions_file"] = os.path.abspath(predictions_path)
    return metrics, records


def check_out(out, inputs, overwrite=False):
    """``--out`` may never be one of the inputs, nor replace a file without ``--overwrite``."""
    real = os.path.realpath(out)
    for flag, path in inputs:
        if os.path.realpath(path) == real:
            raise ScoreError("--out %s is the %s file; write the metrics to another path" % (out, flag))
    if os.path.isdir(out):
        raise ScoreError("--out %s is a folder; give a file path such as %s" % (
            out, os.path.join(out, "metrics.json")))
    if os.path.lexists(out) and not overwrite:
        raise ScoreError("--out %s exists; pass --overwrite to replace it, or choose another path" % out)
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ScoreError("--out %s: folder %s does not exist" % (out, folder))


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
    parser.add_argument("--prediction-field", metavar="NAME",
                        help="the entries' field that holds the prediction (default: "
                             "\"prediction\", else LAVIS's \"pred_ans\", else LAVIS's \"answer\")")
    parser.add_argument("--out", metavar="FILE", help="write the metrics JSON here (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    parser.add_argument("--name", help="benchmark name for the metrics JSON (e.g. oc_coco; "
                                       "default: --benchmark)")
    parser.add_argument("--split", help="split name for the metrics JSON")
    parser.add_argument("--subset", action="store_true",
                        help="score only the questions that have a prediction")
    args = parser.parse_args(argv)
    try:
        if args.out:  # before any work
            check_out(args.out, [("--predictions", args.predictions)] +
                      [("--annotations", a) for a in args.annotations], args.overwrite)
        metrics, _ = rescore(args.benchmark, args.annotations, args.predictions, args.name,
                             args.split, args.subset, args.prediction_field)
    except ScoreError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    for entry in metrics["annotations"]:
        print("annotations: %s (sha256 %s%s)" % (entry["path"], entry["sha256"][:16],
                                                  ", published as " + entry["published_as"]
                                                  if "published_as" in entry else ""))
    print(scoring.metrics_table(metrics, "[%s, %s] Re-scored predictions%s: %d questions (%s)" % (
        metrics["benchmark"], metrics["metric"], ", split %r" % args.split if args.split else "",
        metrics["num_questions"], args.predictions)))
    if args.out:
        write_json(metrics, args.out)
        print("metrics: %s" % args.out)
    return metrics


if __name__ == "__main__":
    main()
