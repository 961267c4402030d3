"""Per-question scores of the zero-shot benchmarks, as each benchmark's own evaluation computes
them, and their summaries. Pure functions: no LAVIS run needed.

``run.metric`` of the ``xformer_vqa`` task picks one:

    exact_match   1 if the normalised prediction equals the normalised answer (GQA, easy-VQA).
    vqa_accuracy  VQAv2 / OK-VQA: the official accuracy with the official answer
                  normalisation: for each of the (10) human answers, min(#other humans who gave
                  the prediction / 3, 1), averaged over the answers left out in turn.
    oc            GVTBench object counting: the first integer in the prediction (number words
                  mapped to digits) against the answer's; accuracy, MAE and RMSE of the counts.
    mci           GVTBench multi-class identification (yes/no), scored with GVTBench's own rule:
                  correct if the answer contains "Yes" and the lowercased prediction contains
                  "yes", or the answer contains "No" and the prediction contains "no" (a
                  substring test: "not", "know", "none" count as "no"). ``accuracy_strict``
                  (the prediction's first word is the answer's yes/no) is reported beside it.

Every scored record gets ``score`` in [0, 1]; accuracies are 100 * mean(score).
"""
import math
import re
from collections import Counter, OrderedDict

from lavis.common.vqa_tools.vqa_eval import VQAEval

METRICS = ("exact_match", "vqa_accuracy", "oc", "mci")
_VQA_EVAL = VQAEval()  # only its answer normalisation (no annotations needed)


def normalize_answer(text):
    """VQA's answer normalisation (the official evaluation's, as LAVIS ships it): whitespace,
    lowercase, punctuation (kept inside numbers such as 2.5 or 1,000), number words to digits,
    articles (a, an, the) dropped, common contractions restored."""
    text = " ".join(str(text).replace("\n", " ").replace("\t", " ").split())
    text = _VQA_EVAL.processPunctuation(text)
    text = _VQA_EVAL.processDigitArticle(text)
    return " ".join(text.split())


def exact_match(prediction, answer):
    return float(normalize_answer(prediction) == normalize_answer(answer))


def vqa_accuracy(prediction, answers):
    """The official VQA accuracy of one prediction against the human ``answers`` (a list of
    strings, 10 in VQAv2 and OK-VQA), as ``vqaEval.py`` computes it: the prediction is
    normalised; the human answers only when they differ among themselves (as the official
    code does); then the mean over i of min(#{j != i: answer_j == prediction} / 3, 1)."""
    answers = [" ".join(str(a).replace("\n", " ").replace("\t", " ").split()) for a in answers]
    if not answers:
        raise ValueError("vqa_accuracy: no human answers to score against")
    prediction = normalize_answer(prediction)
    if len(set(answers)) > 1:
        answers = [normalize_answer(a) for a in answers]
    scores = []
    for i in range(len(answers)):
        matching = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        scores.append(min(1.0, matching / 3.0))
    return sum(scores) / len(scores)


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}


def parse_count(text):
    """The first integer in ``text``: digits ("3", "12 dogs", "2.5" -> 2) or number words
    ("three", "twenty-one", "twenty one"), whichever comes first; None when there is none."""
    tokens = re.findall(r"\d+|[a-z]+", str(text).lower())
    for i, token in enumerate(tokens):
        if token.isdigit():
            return int(token)
        if token in _UNITS:
            return _UNITS[token]
        if token in _TENS:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following in _UNITS and 0 < _UNITS[following] < 10:
                return _TENS[token] + _UNITS[following]
            return _TENS[token]
    return None


def gvt_yes_no(prediction, answer):
    """GVTBench's multi-class identification rule (its evaluation code, unchanged)."""
    prediction = str(prediction).lower()
    return float(("Yes" in answer and "yes" in prediction) or ("No" in answer and "no" in prediction))


def strict_yes_no(prediction, answer):
    """1 if the prediction's first word is the answer's yes/no (case-insensitive)."""
    words = normalize_answer(prediction).split()
    truth = normalize_answer(answer).split()
    return float(bool(words) and bool(truth) and words[0] == truth[0] and words[0] in ("yes", "no"))


def score_record(record, metric):
    """Add the per-question score fields to ``record`` (which holds ``prediction`` and the
    ground truth: ``answer``, or ``answers`` for vqa_accuracy); returns it."""
    prediction = record["prediction"]
    if metric == "exact_match":
        record["correct"] = bool(exact_match(prediction, record["answer"]))
        record["score"] = float(record["correct"])
    elif metric == "vqa_accuracy":
        answers = record["answers"]
        record["score"] = round(vqa_accuracy(prediction, answers), 4)
    elif metric == "oc":
        truth = parse_count(record["answer"])
        if truth is None:
            raise ValueError("object counting: the ground-truth answer %r of question %r holds no "
                             "number" % (record["answer"], record.get("question_id")))
        count = parse_count(prediction)
        record["predicted_count"] = count
        record["true_count"] = truth
        record["correct"] = count == truth
        record["score"] = float(record["correct"])
    elif metric == "mci":
        record["score"] = gvt_yes_no(prediction, record["answer"])
        record["correct"] = bool(record["score"])
        record["correct_strict"] = bool(strict_yes_no(prediction, record["answer"]))
    else:
        raise ValueError("run.metric=%r is not known; available: %s" % (metric, ", ".join(METRICS)))
    return record


def _percent(value, total):
    return round(100.0 * value / total, 2) if total else 0.0


def summarize(records, metric):
    """One row of metrics over scored records: num_questions, accuracy (%), plus for ``oc``
    mae, rmse and num_unparsed (predictions without a number, counted as 0 for MAE/RMSE),
    and for ``mci`` accuracy_strict."""
    n = len(records)
    row = OrderedDict(num_questions=n, accuracy=_percent(sum(r["score"] for r in records), n))
    if metric == "oc":
        errors = [((r["predicted_count"] or 0) - r["true_count"]) for r in records]
        row["mae"] = round(sum(abs(e) for e in errors) / n, 4) if n else 0.0
        row["rmse"] = round(math.sqrt(sum(e * e for e in errors) / n), 4) if n else 0.0
        row["num_unparsed"] = sum(r["predicted_count"] is None for r in records)
    if metric == "mci":
        row["accuracy_strict"] = _percent(sum(r["correct_strict"] for r in records), n)
    return row


def n_obj_bin(n_obj_exist):
    """GVTBench's bins of ``n_obj_exist``: "1-9", "10-19", ">=20"."""
    n = int(n_obj_exist)
    return "1-9" if n < 10 else ("10-19" if n < 20 else ">=20")


def majority(answers):
    """The most frequent of a list of answers (the record's readable ``answer``)."""
    return Counter(answers).most_common(1)[0][0] if answers else ""
