"""Scores of the miniature world's evaluation runs, per question kind, count bin and hard case,
next to the majority baseline; and the side-by-side table of several models (and seeds).

Inputs are the files the runs write: the ``xformer_vqa`` task's ``test_vqa_predictions.json``
(one record per question, scored with the task's own metric) and the world's question files,
whose extra keys (``kind``, ``hard_case``) say what each question is.

Scores (all in %, except MAE):
    oc_acc, oc_mae     object counting: GVTBench's first-number parse (scoring.parse_count),
                       exact count accuracy and mean absolute error (no number counts as 0).
    mci_acc            identification, GVTBench's yes/no rule.
    colour_acc, shape_acc   exact match after VQA normalisation.
    oc_acc[bin], oc_acc[case], mci_acc[case]: the same on a subset (count bins by the true
    count: 1-2, 3-4, 5-6, 7-8; hard cases as the generator draws them).
The majority baseline answers every question of a kind with that kind's most frequent answer
in the train split (OC: the most frequent count).
"""
import json
import math
import os
from collections import Counter, OrderedDict

from lavis_xformer.scoring import format_table, normalize_answer, score_record
from lavis_xformer.world.scenes import HARD_CASES

COUNT_BINS = ((1, 2), (3, 4), (5, 6), (7, 8))


def world_count_bin(n):
    for lo, hi in COUNT_BINS:
        if lo <= n <= hi:
            return "%d-%d" % (lo, hi)
    return ">%d" % COUNT_BINS[-1][1]


def _pct(xs):
    return round(100.0 * sum(xs) / len(xs), 2) if xs else None


def score_predictions(questions, predictions):
    """Metrics of one model from its predictions of the three question files.

    ``questions``: {file name: list of question records (the world's JSON)};
    ``predictions``: {file name: list of prediction records (question_id = index in the file)}.
    """
    rows = []
    for name, records in predictions.items():
        qs = questions[name]
        for p in records:
            q = qs[int(p["question_id"])]
            r = {"kind": q["kind"], "hard_case": q["hard_case"], "answer": q["text_out"],
                 "prediction": p["prediction"]}
            if q["kind"] == "oc":
                score_record(r, "oc")
            elif q["kind"] == "mci":
                score_record(r, "mci")
            else:
                score_record(r, "exact_match")
            rows.append(r)
    return summarize(rows)


def summarize(rows):
    m = OrderedDict()
    oc = [r for r in rows if r["kind"] == "oc"]
    m["oc_acc"] = _pct([r["score"] for r in oc])
    m["oc_mae"] = round(sum(abs((r["predicted_count"] or 0) - r["true_count"]) for r in oc) / len(oc), 3) if oc else None
    for kind in ("mci", "colour", "shape"):
        m["%s_acc" % kind] = _pct([r["score"] for r in rows if r["kind"] == kind])
    for lo, hi in COUNT_BINS:
        b = "%d-%d" % (lo, hi)
        m["oc_acc[%s]" % b] = _pct([r["score"] for r in oc if world_count_bin(r["true_count"]) == b])
    for case in HARD_CASES:
        m["oc_acc[%s]" % case] = _pct([r["score"] for r in oc if r["hard_case"] == case])
        m["mci_acc[%s]" % case] = _pct([r["score"] for r in rows if r["kind"] == "mci" and r["hard_case"] == case])
    m["num_questions"] = {k: sum(1 for r in rows if r["kind"] == k) for k in ("oc", "mci", "colour", "shape")}
    return m


def majority_baseline(train_questions, test_questions):
    """The same metrics for the answer-the-most-frequent-train-answer baseline."""
    most = {}
    for q in (x for records in train_questions.values() for x in records):
        most.setdefault(q["kind"], Counter())[normalize_answer(q["text_out"])] += 1
    answers = {k: c.most_common(1)[0][0] for k, c in most.items()}
    rows = []
    for records in test_questions.values():
        for q in records:
            r = {"kind": q["kind"], "hard_case": q["hard_case"], "answer": q["text_out"],
                 "prediction": answers[q["kind"]]}
            score_record(r, {"oc": "oc", "mci": "mci"}.get(q["kind"], "exact_match"))
            rows.append(r)
    out = summarize(rows)
    out["answers"] = answers
    return out


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


MAIN_COLUMNS = (("oc_acc", "OC acc %"), ("oc_mae", "OC MAE"), ("mci_acc", "MCI acc %"),
                ("colour_acc", "colour acc %"), ("shape_acc", "shape acc %"),
                ("itc_r5", "stage-1 ITC R@5 %"))


def _value(run, key):
    if key == "itc_r5":
        return (run.get("stage1_itc") or {}).get("r5")
    return run.get(key)


def table(results, baseline, keys=MAIN_COLUMNS):
    """Text table: one row per model (mean ± std over its seeds), then the baseline."""

    header = ["model", "seeds"] + [label for _, label in keys]
    rows = []
    for name, runs in results.items():
        cells = [name, str(len(runs))]
        for k, _ in keys:
            mean, std = mean_std([_value(r, k) for r in runs])
            cells.append("-" if mean is None else ("%.2f" % mean if len(runs) == 1 else "%.2f ± %.2f" % (mean, std)))
        rows.append(cells)
    rows.append(["majority baseline", "-"] + ["-" if baseline.get(k) is None else "%.2f" % baseline[k] for k, _ in keys])
    return format_table(header, rows)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def world_questions(world, split, names=("oc", "mci", "attr")):
    return {n: load_json(os.path.join(world, split, "%s.json" % n)) for n in names}
