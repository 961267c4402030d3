"""Scoring of the zero-shot benchmarks: per-question scores, their summaries (overall, per
question type, the majority baseline) and the printed tables. Each headline number is the one
the benchmark's reference code computes for the same predictions (docs/scoring.md); a variant
goes beside it in a column of its own, never in its place. Pure functions, a library below the
tasks, the datasets, ``tools.score`` and the world: no LAVIS run needed.

``run.metric`` of the ``xformer_vqa`` task picks one:

    exact_match   GQA (and easy-VQA): LAVIS 1.0.2's ``GQATask``: the prediction normalised by
                  LAVIS's VQA normalisation, the ground truth as written, compared for
                  equality. ``accuracy_normalised``: both sides normalised (LAVIS's main
                  branch since 2023-12).
    vqa_accuracy  VQAv2 / OK-VQA: LAVIS 1.0.2's ``VQAEval``, called as ``VQATask`` calls it
                  (the prediction normalised fully; the human answers, when they differ, by
                  punctuation only). ``accuracy_official``: the VQA authors' current
                  ``vqaEval.py``, where both sides are normalised fully when the human answers
                  differ and neither is when they all agree.
    oc            GVTBench object counting: its ``count.py``: number words replaced by digits
                  as substrings ("someone" holds a 1), then the first run of digits, else 0;
                  accuracy, MAE, RMSE, and bins of the true count in steps of 3.
                  ``accuracy_parsed``, ``mae_parsed``, ``rmse_parsed``, ``num_unparsed``: this
                  project's parser (whole words, any case, up to ninety-nine).
    mci           GVTBench multi-class identification: its ``multiclass.py`` (substring yes/no
                  rule), bins of ``n_obj_exist``. ``accuracy_strict``: the prediction's first
                  word must be the answer's yes/no.

Every scored record gets ``score`` in [0, 1]; accuracies are 100 * the reference's fraction,
kept at full precision (tables round when printing).
"""
import contextlib
import io
import math
import re
from collections import Counter, OrderedDict

from lavis.common.vqa_tools.vqa_eval import VQAEval

METRICS = ("exact_match", "vqa_accuracy", "oc", "mci")
_VQA_EVAL = VQAEval()  # only its answer normalisation (no annotations needed)
# VQAEval rounds every accuracy to ``n`` decimals with round(); CPython's float round returns
# its argument unchanged when ndigits exceeds 323 (NDIGITS_MAX), so this keeps full precision.
# LAVIS's VQATask uses n=2: round(our value, 2) is its number.
FULL_PRECISION = 400


def _lavis_normalise(text):
    """LAVIS's (and the VQA authors') answer normalisation, as its tasks apply it:
    punctuation, then lowercase, number words zero..ten to digits, articles dropped,
    contractions restored."""
    return _VQA_EVAL.processDigitArticle(_VQA_EVAL.processPunctuation(text))


def normalize_answer(text):
    """The VQA answer normalisation with whitespace (newlines, tabs, repeats) collapsed first;
    used for the strict yes/no column."""
    text = " ".join(str(text).replace("\n", " ").replace("\t", " ").split())
    return " ".join(_lavis_normalise(text).split())


# ------------------------------------------------------------------ GQA (exact match)

def lavis_gqa_correct(prediction, answer):
    """LAVIS 1.0.2's ``GQATask._report_metrics`` with ``inference_method="generate"``: the
    prediction normalised, the ground truth left as written."""
    return float(_lavis_normalise(prediction) == answer)


def exact_match(prediction, answer):
    """Both sides normalised, as LAVIS's main branch (commit 71a2da9, 2023-12) scores GQA."""
    return float(_lavis_normalise(prediction) == _lavis_normalise(answer))


# ------------------------------------------------------------------ VQAv2 / OK-VQA

class _VQAIndex:
    """The two things ``VQAEval.evaluate`` reads from LAVIS's ``VQA`` objects."""

    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):  # noqa: N802 (LAVIS's name)
        return list(self.qa)


def lavis_vqa_eval(items):
    """LAVIS 1.0.2's own ``VQAEval`` on ``items``: (question_id, prediction, human answers,
    answer type) tuples. Returns (per-question accuracy in [0, 1] by question id, overall %,
    {answer type: %}), the numbers ``VQATask._report_metrics`` reports (there rounded to 2
    decimals).

    Each human answer gets its position as ``answer_id``, as in the official annotation files:
    ``VQAEval`` leaves an answer out by comparing whole answer dicts, so the ids make the
    ten leave-one-out subsets."""
    gts, res = OrderedDict(), OrderedDict()
    for qid, prediction, answers, answer_type in items:
        if not answers:
            raise ValueError("VQA accuracy: question %r has no human answers to score against" % qid)
        gts[qid] = {"question_id": qid, "question_type": answer_type, "answer_type": answer_type,
                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}
        res[qid] = {"question_id": qid, "answer": prediction}
    if not gts:
        return {}, 0.0, {}
    scorer = VQAEval(_VQAIndex(gts), _VQAIndex(res), n=FULL_PRECISION)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
        scorer.evaluate()
    per_question = {qid: acc / 100.0 for qid, acc in scorer.evalQA.items()}
    return (per_question, scorer.accuracy["overall"], dict(scorer.accuracy["perAnswerType"]))


def vqa_accuracy(prediction, answers):
    """One question's accuracy in [0, 1] by LAVIS 1.0.2's ``VQAEval``."""
    return lavis_vqa_eval([(0, prediction, list(answers), "all")])[0][0]


def official_vqa_accuracy(prediction, answers):
    """One question's accuracy by the VQA authors' current ``vqaEval.py`` (GT-Vision-Lab/VQA,
    commit a013f00, 2021): newlines and tabs become spaces and both sides are stripped; only
    when the human answers differ are both sides normalised (punctuation, digits, articles);
    then the mean over the answers left out in turn of min(#others equal to the prediction
    / 3, 1)."""
    answers = [str(a).replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if not answers:
        raise ValueError("VQA accuracy: no human answers to score against")
    prediction = str(prediction).replace("\n", " ").replace("\t", " ").strip()
    if len(set(answers)) > 1:
        answers = [_lavis_normalise(a) for a in answers]
        prediction = _lavis_normalise(prediction)
    total = 0.0
    for i in range(len(answers)):
        others = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        total += min(1, others / 3)
    return total / len(answers)


# ------------------------------------------------------------------ GVTBench OC

# GVTBench's count.py replaces these words, in this order, wherever they occur (inside other
# words too, case-sensitive) before taking the first run of digits. "nive" (sic) is its word
# for 9, so "nine" stays a word; "none" goes first, so it reads 0 and not "n1".
GVT_NUMBER_WORDS = (("none", "0"), ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"),
                    ("five", "5"), ("six", "6"), ("seven", "7"), ("eight", "8"), ("nive", "9"))
_DIGITS = re.compile(r"\d+")


def gvt_count(prediction):
    """The count GVTBench's ``extract_digit`` reads from a prediction: 0 when it finds none."""
    text = str(prediction)
    for word, digit in GVT_NUMBER_WORDS:
        text = text.replace(word, digit)
    found = _DIGITS.search(text)
    return int(found.group()) if found else 0


def gvt_true_count(answer, question_id=None):
    """GVTBench's ground truth: ``int(text_out)``."""
    try:
        return int(answer)
    except (TypeError, ValueError):
        raise ValueError("object counting: the ground-truth answer %r of question %r is not an "
                         "integer (GVTBench's count.py reads it with int()); use GVTBench's "
                         "OC file" % (answer, question_id)) from None


def gvt_count_bin(true_count):
    """GVTBench's OC bins: true count // 3, printed as "count 0-2", "count 3-5", ..."""
    low = 3 * (int(true_count) // 3)
    return "count %d-%d" % (low, low + 2)


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}


def parse_count(text):
    """This project's parser (the ``*_parsed`` columns): the first integer in ``text``, as
    digits ("3", "12 dogs", "2.5" -> 2) or whole number words in any case ("Three",
    "twenty-one", "twenty one"), whichever comes first; None when there is none."""
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


# ------------------------------------------------------------------ GVTBench MCI

def gvt_yes_no(prediction, answer):
    """GVTBench's ``multiclass.py`` rule: right if the answer contains "Yes" and the lowercased
    prediction "yes", or the answer "No" and the prediction "no" (substrings: "not", "know",
    "nothing" count as "no")."""
    prediction = str(prediction).lower()
    return float(("Yes" in answer and "yes" in prediction) or ("No" in answer and "no" in prediction))


def gvt_yes_no_truth(answer, question_id=None):
    """GVTBench's MCI ground truth ("Yes." or "No."), checked: its yes/no word. Anything else
    is an error, not a guess: ``multiclass.py``'s substring rule would read a null written
    out as "None" (or "Not sure") as "No"."""
    words = normalize_answer(answer).split() if isinstance(answer, str) else []
    if not words or words[0] not in ("yes", "no"):
        raise ValueError("multi-class identification: the ground-truth answer %r of question %r "
                         "is not \"Yes.\" or \"No.\" (GVTBench's MCI answers); use GVTBench's "
                         "MCI file" % (answer, question_id))
    return words[0]


def strict_yes_no(prediction, answer):
    """1 if the prediction's first word is the answer's yes/no (case-insensitive)."""
    words = normalize_answer(prediction).split()
    truth = normalize_answer(answer).split()
    return float(bool(words) and bool(truth) and words[0] == truth[0] and words[0] in ("yes", "no"))


def n_obj_bin(n_obj_exist):
    """GVTBench's MCI bins of ``n_obj_exist``: "1-9", "10-19", ">=20"."""
    n = int(n_obj_exist)
    return "1-9" if n < 10 else ("10-19" if n < 20 else ">=20")


# ------------------------------------------------------------------ records and summaries

def score_record(record, metric):
    """Add the per-question score fields to ``record`` (which holds ``prediction`` and the
    ground truth: ``answer``, or ``answers`` for vqa_accuracy); returns it. For vqa_accuracy
    the headline ``score`` of a batch of records is set by ``score_vqa_records`` (one
    ``VQAEval`` run); one record alone is scored here the same way."""
    prediction = record["prediction"]
    if metric == "exact_match":
        record["correct"] = bool(lavis_gqa_correct(prediction, record["answer"]))
        record["score"] = float(record["correct"])
        record["correct_normalised"] = bool(exact_match(prediction, record["answer"]))
    elif metric == "vqa_accuracy":
        answers = list(record["answers"])
        record["score"] = vqa_accuracy(prediction, answers)
        record["score_official"] = official_vqa_accuracy(prediction, answers)
    elif metric == "oc":
        truth = gvt_true_count(record["answer"], record.get("question_id"))
        record["true_count"] = truth
        record["predicted_count"] = gvt_count(prediction)
        record["correct"] = record["predicted_count"] == truth
        record["score"] = float(record["correct"])
        record["predicted_count_parsed"] = parse_count(prediction)
        record["correct_parsed"] = record["predicted_count_parsed"] == truth
    elif metric == "mci":
        gvt_yes_no_truth(record["answer"], record.get("question_id"))
        record["score"] = gvt_yes_no(prediction, record["answer"])
        record["correct"] = bool(record["score"])
        record["correct_strict"] = bool(strict_yes_no(prediction, record["answer"]))
    else:
        raise ValueError("run.metric=%r is not known; available: %s" % (metric, ", ".join(METRICS)))
    return record


def answer_type(record):
    """The VQA answer type of a record ("yes/no", "number", "other"; the loaders keep it as
    ``question_type``)."""
    qtype = record.get("answer_type", record.get("question_type"))
    return qtype if isinstance(qtype, str) else "all"


def score_vqa_records(records):
    """Score VQAv2/OK-VQA records in one ``VQAEval`` run: sets ``score`` (LAVIS 1.0.2) and
    ``score_official`` on each; returns (overall %, {answer type: %}) as LAVIS reports them."""
    keyed = [(i, r) for i, r in enumerate(records)]
    per_question, overall, per_type = lavis_vqa_eval(
        [(i, r["prediction"], list(r["answers"]), answer_type(r)) for i, r in keyed])
    for i, r in keyed:
        r["score"] = per_question[i]
        r["score_official"] = official_vqa_accuracy(r["prediction"], r["answers"])
    return overall, per_type


def percent(hits, total, lavis_order=False):
    """100 * hits / total; 0 without a total. ``lavis_order``: computed as hits / total * 100,
    LAVIS's GQATask's order of operations, so that the exact_match headline is the very float
    LAVIS stores (the majority baseline and the progress line have always used it too)."""
    if not total:
        return 0.0
    return hits / total * 100 if lavis_order else 100.0 * hits / total


def _errors_stats(errors):
    n = len(errors)
    if not n:
        return 0.0, 0.0
    return sum(abs(e) for e in errors) / n, math.sqrt(sum(e * e for e in errors) / n)


def summarize(records, metric):
    """One row of metrics over scored records: num_questions, accuracy (%), and the metric's
    other columns (see the module docstring). Full precision."""
    n = len(records)
    row = OrderedDict(num_questions=n, accuracy=percent(sum(r["score"] for r in records), n,
                                                        lavis_order=metric == "exact_match"))
    if metric == "exact_match":
        row["accuracy_normalised"] = percent(sum(r["correct_normalised"] for r in records), n)
    elif metric == "vqa_accuracy":
        row["accuracy_official"] = percent(sum(r["score_official"] for r in records), n)
    elif metric == "oc":
        mae, rmse = _errors_stats([r["true_count"] - r["predicted_count"] for r in records])
        row["mae"], row["rmse"] = mae, rmse
        row["accuracy_parsed"] = percent(sum(r["correct_parsed"] for r in records), n)
        # an answer without a number counts as 0 in the parsed MAE/RMSE
        mae, rmse = _errors_stats([r["true_count"] - (r["predicted_count_parsed"] or 0)
                                   for r in records])
        row["mae_parsed"], row["rmse_parsed"] = mae, rmse
        row["num_unparsed"] = sum(r["predicted_count_parsed"] is None for r in records)
    elif metric == "mci":
        row["accuracy_strict"] = percent(sum(r["correct_strict"] for r in records), n)
    return row


def majority(answers):
    """The most frequent of a list of answers (the record's readable ``answer``)."""
    return Counter(answers).most_common(1)[0][0] if answers else ""


# ------------------------------------------------------------------ metrics of a split

def majority_answer(answer_counts):
    """(most frequent answer, its count, total) of a Counter; None when empty or None."""
    if not answer_counts:
        return None
    answer, count = Counter(answer_counts).most_common(1)[0]
    return answer, count, sum(answer_counts.values())


def _types_of(record, metric=None):
    if metric == "oc":  # GVTBench's count.py bins by the true count, in steps of 3
        return [gvt_count_bin(record["true_count"])]
    qtype = record.get("question_type")
    if qtype is None:
        return []
    return [qtype] if isinstance(qtype, str) else list(qtype)


def _baseline_score(answer, record, metric):
    if metric == "vqa_accuracy":
        return vqa_accuracy(answer, record["answers"])
    return lavis_gqa_correct(answer, record["answer"])


def score(records, answer_counts=None, metric="exact_match"):
    """Metrics of records carrying ``prediction`` and the ground truth (``answer``, or
    ``answers`` for vqa_accuracy; maybe ``question_type``, a string or a list): accuracy (%)
    and the metric's extra columns (``summarize``), per question type (OC: per bin of the true
    count), and, for exact_match and vqa_accuracy given the train split's answer counts, the
    majority-answer baseline. Full precision; ``agg_metrics`` is the headline accuracy, as
    LAVIS's VQATask and GQATask set it."""
    lavis_vqa = None
    if metric == "vqa_accuracy":  # one run of LAVIS's VQAEval gives the headline numbers
        lavis_vqa = score_vqa_records(records)
    for record in records:
        if "score" not in record:
            score_record(record, metric)
    majority = majority_answer(answer_counts) if metric in ("exact_match", "vqa_accuracy") else None
    groups = OrderedDict([("all", records)])
    for qtype in sorted({t for r in records for t in _types_of(r, metric)},
                        key=lambda t: (len(t), t) if metric == "oc" else (0, t)):
        groups[qtype] = [r for r in records if qtype in _types_of(r, metric)]

    per_type = OrderedDict()
    for name, group in groups.items():
        row = summarize(group, metric)
        if lavis_vqa is not None:  # VQAEval's own overall and per-answer-type accuracy
            row["accuracy"] = lavis_vqa[0] if name == "all" else lavis_vqa[1].get(name, row["accuracy"])
        if majority is not None:
            row["majority_baseline"] = percent(
                sum(_baseline_score(majority[0], r, metric) for r in group), len(group),
                lavis_order=True)
        per_type[name] = row

    metrics = OrderedDict()
    overall = per_type.pop("all")
    metrics["num_questions"] = overall.pop("num_questions")
    metrics["accuracy"] = overall.pop("accuracy")
    metrics["agg_metrics"] = metrics["accuracy"]
    baseline_accuracy = overall.pop("majority_baseline", None)
    metrics.update(overall)  # the metric's other columns (summarize)
    if majority is not None:
        answer, count, total = majority
        metrics["majority_baseline"] = OrderedDict([
            ("answer", answer),
            ("accuracy", baseline_accuracy),
            ("source", "the most frequent answer of the train split (%d of %d questions)"
             % (count, total)),
        ])
    if per_type:
        metrics["per_question_type"] = per_type
    return metrics


# ------------------------------------------------------------------ printed tables

def format_table(header, rows):
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] +
                     [line(row) for row in cells[1:]])


_EXTRA_COLUMNS = (("mae", "MAE"), ("rmse", "RMSE"), ("accuracy_strict", "strict yes/no %"),
                  ("accuracy_normalised", "both normalised %"), ("accuracy_official", "official VQA %"),
                  ("accuracy_parsed", "parsed %"), ("mae_parsed", "parsed MAE"),
                  ("rmse_parsed", "parsed RMSE"), ("num_unparsed", "no number"))


def metrics_table(metrics, title):
    """The printed summary of ``score``'s metrics: one row for all questions, one per
    question type."""
    baseline = metrics.get("majority_baseline")
    extras = [(k, label) for k, label in _EXTRA_COLUMNS if k in metrics]
    header = ["question type", "questions", "accuracy %"] + [label for _, label in extras]
    if baseline:
        header.append('majority "%s" %%' % baseline["answer"])

    def cells(row, base):
        out = ["%.2f" % row["accuracy"]]
        out += [("%.2f" % row[k]) if isinstance(row[k], float) else str(row[k]) for k, _ in extras]
        return out + (["%.2f" % base] if baseline else [])

    rows = [["all", metrics["num_questions"]] + cells(metrics, baseline["accuracy"] if baseline else None)]
    for name, row in metrics.get("per_question_type", {}).items():
        rows.append([name, row["num_questions"]] + cells(row, row.get("majority_baseline")))
    return title + "\n" + format_table(header, rows)
