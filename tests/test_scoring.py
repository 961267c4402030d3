"""Every headline score equals its reference implementation on the same predictions
(docs/scoring.md):

* GVTBench OC and MCI: GVTBench's count.py and multiclass.py, transcribed below from the
  published code (TencentARC/GVT, gvt/gvt/modules/evaluations/) as independent references,
  run against the package's scorers on tens of thousands of strings;
* VQAv2 / OK-VQA: LAVIS 1.0.2's own VQATask._report_metrics (VQA + VQAEval, reading official
  format files), and the VQA authors' current vqaEval.py (transcribed) for the second column;
* GQA: LAVIS 1.0.2's own GQATask._report_metrics;
* retrieval: LAVIS's own RetrievalTask._report_metrics, agg_metrics included;

and GVTBench's published rows load, and `python -m lavis_xformer.tools.score` re-scores them.
"""
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import lavis_xformer  # noqa: F401  (registers everything)
from lavis_xformer import scoring as M
from lavis_xformer.datasets import benchmarks
from lavis_xformer.scoring import metrics_table, score
from lavis_xformer.tasks.xformer_retrieval import recall_metrics
from lavis_xformer.tools import score as score_tool

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = json.loads((REPO / "tests" / "data" / "gvtbench_published_rows.json").read_text())


# ----------------------------------------------------------------------------- references

def gvt_extract_digit(text):
    """GVTBench count.py's extract_digit, transcribed: its dict of words is applied in order
    with str.replace, then re.findall(r"\\d+") and int() of the first match, else 0."""
    table = {"none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
             "seven": 7, "eight": 8, "nive": 9}
    for word in table:
        text = text.replace(word, str(table[word]))
    found = re.findall(r"\d+", text)
    return int(found[0]) if len(found) else 0


def gvt_count_report(pairs):
    """count.py's _report_metrics and stat over (prediction, gt string) pairs: overall
    accuracy (fraction), MAE, RMSE, and per bin gt // 3 the same three."""
    def stats(rows):
        n = len(rows)
        correct = sum(p == g for p, g in rows)
        abs_sum = sum(abs(g - p) for p, g in rows)
        sq_sum = sum((g - p) ** 2 for p, g in rows)
        return correct / n, abs_sum / n, float(np.sqrt(sq_sum / n))

    rows = [(gvt_extract_digit(p), int(g)) for p, g in pairs]
    bins = defaultdict(list)
    for p, g in rows:
        bins[g // 3].append((p, g))
    return stats(rows), {k: stats(v) for k, v in bins.items()}


def gvt_multiclass_report(triples):
    """multiclass.py's eval over (prediction, gt, n_obj_exist): accuracy and the three bins."""
    hits = [int(("Yes" in g and "yes" in p.lower()) or ("No" in g and "no" in p.lower()))
            for p, g, _ in triples]
    bins = defaultdict(list)
    for hit, (_, _, n) in zip(hits, triples):
        bins[0 if n < 10 else (1 if n < 20 else 2)].append(hit)
    return sum(hits) / len(hits), {k: sum(v) / len(v) for k, v in bins.items()}


def official_vqa_reference(prediction, answers):
    """GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py (commit a013f00),
    transcribed, with LAVIS's copy of its two normalisation steps (identical tables)."""
    from lavis.common.vqa_tools.vqa_eval import VQAEval
    tool = VQAEval()
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(gts)) > 1:
        gts = [tool.processDigitArticle(tool.processPunctuation(a)) for a in gts]
        res = tool.processDigitArticle(tool.processPunctuation(res))
    accs = [min(1, sum(1 for j, a in enumerate(gts) if j != i and a == res) / 3)
            for i in range(len(gts))]
    return sum(accs) / len(accs)


# ----------------------------------------------------------------------------- strings

NUMBER_FRAGMENTS = [
    "one", "One", "ONE", "two", "Two", "three", "four", "five", "six", "seven", "eight", "nine",
    "nive", "ten", "eleven", "twelve", "fourteen", "eighteen", "twenty", "twenty-one", "eighty",
    "none", "None", "zero", "someone", "phone", "weight", "height", "money", "0", "1", "2", "3",
    "10", "12", "007", "2.5", "-3", "1,000", "\u0663", "\u00b2", " ", "-", ",", ".", "\n", "a",
    "the", "dogs", "There are", "is", "no", "yes", "many", "several", "",
]


def varied_strings(seed=0, per_length=2500):
    rng = random.Random(seed)
    strings = set(NUMBER_FRAGMENTS)
    for n in range(1, 5):
        for _ in range(per_length):
            strings.add(rng.choice(["", " "]).join(rng.choice(NUMBER_FRAGMENTS) for _ in range(n)))
    return sorted(strings)


# ----------------------------------------------------------------------------- OC

@pytest.mark.parametrize("text, gvt, parsed", [
    ("Two", 0, 2), ("ten", 0, 10), ("eighteen", 8, 18), ("twenty-one", 1, 21), ("someone", 1, None),
    ("nine", 0, 9), ("none", 0, None), ("There are 3 dogs.", 3, 3), ("weight 2", 8, 2),
    ("2.5", 2, 2), ("", 0, None),
])
def test_oc_counts_of_the_issue_examples(text, gvt, parsed):
    assert M.gvt_count(text) == gvt_extract_digit(text) == gvt
    assert M.parse_count(text) == parsed


def test_oc_count_equals_gvtbench_extract_digit_on_a_wide_range_of_strings():
    strings = varied_strings()
    assert len(strings) > 6000
    assert [M.gvt_count(s) for s in strings] == [gvt_extract_digit(s) for s in strings]
    # the two parsers really differ on such strings
    assert sum(M.gvt_count(s) != (M.parse_count(s) or 0) for s in strings) > 1000


def test_oc_metrics_and_bins_equal_gvtbench_report():
    rng = random.Random(3)
    strings = varied_strings(seed=5, per_length=300)
    truths = [str(rng.choice([0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14])) for _ in strings]
    records = [M.score_record({"question_id": i, "answer": t, "prediction": s}, "oc")
               for i, (s, t) in enumerate(zip(strings, truths))]
    metrics = score(records, metric="oc")
    (acc, mae, rmse), bins = gvt_count_report(list(zip(strings, truths)))
    assert metrics["accuracy"] == pytest.approx(100 * acc, rel=1e-12)
    assert (metrics["mae"], metrics["rmse"]) == (mae, rmse)  # bit for bit
    assert metrics["agg_metrics"] == metrics["accuracy"]
    per_bin = metrics["per_question_type"]
    assert sorted(per_bin) == sorted("count %d-%d" % (3 * k, 3 * k + 2) for k in bins)
    for k, (b_acc, b_mae, b_rmse) in bins.items():
        row = per_bin["count %d-%d" % (3 * k, 3 * k + 2)]
        assert row["accuracy"] == pytest.approx(100 * b_acc, rel=1e-12)
        assert (row["mae"], row["rmse"]) == (b_mae, b_rmse)
    # the project's parser stays as its own column
    parsed = [M.parse_count(s) for s in strings]
    assert metrics["accuracy_parsed"] == pytest.approx(
        100 * sum(p == int(t) for p, t in zip(parsed, truths)) / len(strings))
    assert metrics["num_unparsed"] == sum(p is None for p in parsed)
    assert metrics["mae_parsed"] == pytest.approx(
        sum(abs(int(t) - (p or 0)) for p, t in zip(parsed, truths)) / len(strings))
    assert metrics["accuracy_parsed"] != metrics["accuracy"]
    table = metrics_table(metrics, "oc")
    assert "count 0-2" in table and "parsed %" in table and "MAE" in table


def test_oc_ground_truth_must_be_an_integer():
    with pytest.raises(ValueError, match="not an integer .*int\\(\\)"):
        M.score_record({"question_id": 4, "answer": "three", "prediction": "3"}, "oc")


# ----------------------------------------------------------------------------- MCI

def test_mci_equals_gvtbench_multiclass_with_its_bins():
    rng = random.Random(7)
    candidates = ["yes", "Yes", "no", "No.", "not sure", "I don't know", "nothing", "yesterday",
                  "Yes, there is.", "nope", "none", "there is no cup", "", "YES", "know"]
    triples = [(rng.choice(candidates), rng.choice(["Yes.", "No.", "Yes", "No", "yes"]),
                rng.choice([1, 5, 9, 10, 15, 19, 20, 33])) for _ in range(2000)]
    records = [M.score_record({"answer": g, "prediction": p, "n_obj_exist": n,
                               "question_type": "n_obj_exist " + M.n_obj_bin(n)}, "mci")
               for p, g, n in triples]
    metrics = score(records, metric="mci")
    acc, bins = gvt_multiclass_report(triples)
    assert metrics["accuracy"] == pytest.approx(100 * acc, rel=1e-12)
    names = {0: "n_obj_exist 1-9", 1: "n_obj_exist 10-19", 2: "n_obj_exist >=20"}
    for k, value in bins.items():
        assert metrics["per_question_type"][names[k]]["accuracy"] == pytest.approx(100 * value, rel=1e-12)


# ----------------------------------------------------------------------------- VQA

ANSWER_POOL = ["2", "two", "Two", "3", "three", "yes", "Yes", "no", "red", "red.", "a red one",
               "the dog", "dog", "dogs", "t-shirt", "t shirt", "10", "ten", "1,000", "1000",
               "cant", "can't", "left", "on the left", "2.5", " blue ", "blue"]


def varied_vqa_rows(n=300, seed=11):
    """Rows of 10 human answers drawn so that some agree, some split, with punctuation,
    number words and articles; predictions from the same pool and its variants."""
    rng = random.Random(seed)
    rows = []
    for qid in range(n):
        kind = rng.random()
        if kind < 0.3:
            answers = [rng.choice(ANSWER_POOL)] * 10
        else:
            pool = rng.sample(ANSWER_POOL, rng.randint(2, 4))
            answers = [rng.choice(pool) for _ in range(10)]
        prediction = rng.choice(ANSWER_POOL + [a.upper() for a in ANSWER_POOL[:5]] + ["Two.", "it is 2"])
        atype = rng.choice(["yes/no", "number", "other"])
        rows.append((qid + 1000, answers, prediction, atype))
    rows.append((9999, ["two"] * 4 + ["3"] * 6, "2", "number"))  # the issue's example
    return rows


def _lavis_vqa_task_metrics(rows, tmp_path):
    """LAVIS 1.0.2's VQATask._report_metrics on official-format files of ``rows`` (in
    ``tmp_path``, the run's output_dir: the result_dirs fixture)."""
    from lavis.tasks.vqa import VQATask

    head = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
            "license": {}}
    questions = dict(head, questions=[{"question_id": q, "image_id": 1, "question": "?"}
                                      for q, _, _, _ in rows])
    annotations = {"annotations": [
        {"question_id": q, "image_id": 1, "question_type": "what", "answer_type": t,
         "multiple_choice_answer": a[0],
         "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, x in enumerate(a)]} for q, a, _, t in rows]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    (tmp_path / "res.json").write_text(json.dumps([{"question_id": q, "answer": p} for q, _, p, _ in rows]))
    task = VQATask(num_beams=5, max_len=10, min_len=1, evaluate=True, num_ans_candidates=128,
                   inference_method="generate")
    task.ques_files["val"] = str(tmp_path / "q.json")
    task.anno_files["val"] = str(tmp_path / "a.json")
    return task._report_metrics(result_file=str(tmp_path / "res.json"), split="val")


def test_vqa_headline_equals_lavis_vqatask_overall_and_per_answer_type(tmp_path, result_dirs):
    rows = varied_vqa_rows()
    lavis = _lavis_vqa_task_metrics(rows, tmp_path)
    records = [{"question_id": q, "answers": a, "prediction": p, "question_type": t} for q, a, p, t in rows]
    metrics = score(records, metric="vqa_accuracy")
    assert round(metrics["accuracy"], 2) == lavis["agg_metrics"]
    assert metrics["agg_metrics"] == metrics["accuracy"]
    assert metrics["accuracy"] != round(metrics["accuracy"], 2)  # full precision is kept
    for atype in ("yes/no", "number", "other"):
        assert round(metrics["per_question_type"][atype]["accuracy"], 2) == lavis[atype]
    # the second column: the VQA authors' current code, which differs on these rows
    official = [official_vqa_reference(p, a) for _, a, p, _ in rows]
    assert metrics["accuracy_official"] == pytest.approx(100 * sum(official) / len(official), rel=1e-12)
    assert abs(metrics["accuracy_official"] - metrics["accuracy"]) > 1
    example = records[-1]
    assert (example["score"], example["score_official"]) == (0.0, 1.0)
    # one question alone scores as in the batch
    assert [M.vqa_accuracy(p, a) for _, a, p, _ in rows[:40]] == pytest.approx([r["score"] for r in records[:40]])


@pytest.mark.parametrize("prediction, answers, lavis, official", [
    ("2", ["two"] * 4 + ["3"] * 6, 0.0, 1.0),       # LAVIS normalises the answers' punctuation only
    ("Two.", ["2"] * 4 + ["3"] * 6, 1.0, 1.0),      # the prediction is normalised in both
    ("two", ["two"] * 10, 0.0, 1.0),                # all agree: LAVIS still normalises the prediction
    ("Two", ["two"] * 10, 0.0, 0.0),                # ... the official code leaves it as it is
    ("red", ["red."] * 3 + ["blue"] * 7, 0.9, 0.9),  # 3 of 10 left-out subsets keep 2 matches
])
def test_vqa_rules_side_by_side(prediction, answers, lavis, official):
    assert M.vqa_accuracy(prediction, answers) == pytest.approx(lavis)
    assert M.official_vqa_accuracy(prediction, answers) == official_vqa_reference(prediction, answers) == official


def test_vqa_with_no_human_answers_is_an_error():
    with pytest.raises(ValueError, match="no human answers"):
        M.vqa_accuracy("2", [])


# ----------------------------------------------------------------------------- GQA

def test_gqa_headline_equals_lavis_gqatask(tmp_path, result_dirs):
    from lavis.tasks.vqa import GQATask

    rng = random.Random(2)
    gts = ["yes", "no", "left", "t-shirt", "two", "the table", "man", "white", "2"]
    preds = gts + ["Yes.", "T-shirt", "2", "table", "the man", "a man", "White!", "t shirt"]
    rows = [(i, rng.choice(gts), rng.choice(preds)) for i in range(400)]
    (tmp_path / "res.json").write_text(json.dumps(
        [{"question_id": i, "pred_ans": p, "gt_ans": g} for i, g, p in rows]))
    task = GQATask(num_beams=5, max_len=10, min_len=1, evaluate=True, num_ans_candidates=128,
                   inference_method="generate")
    lavis = task._report_metrics(result_file=str(tmp_path / "res.json"), split="val")
    records = [M.score_record({"answer": g, "prediction": p}, "exact_match") for _, g, p in rows]
    metrics = score(records, metric="exact_match")
    assert metrics["accuracy"] == metrics["agg_metrics"] == lavis["agg_metrics"]  # bit for bit
    # LAVIS's main branch normalises the ground truth too: a different, higher number here
    both = sum(M._lavis_normalise(p) == M._lavis_normalise(g) for _, g, p in rows)
    assert metrics["accuracy_normalised"] == pytest.approx(100 * both / len(rows))
    assert metrics["accuracy_normalised"] > metrics["accuracy"]


# ----------------------------------------------------------------------------- retrieval

def test_retrieval_metrics_equal_lavis_retrieval_task(tmp_path, result_dirs):
    from lavis.tasks.retrieval import RetrievalTask

    rng = np.random.default_rng(0)
    n_img = 40
    img2txt = {i: [5 * i + j for j in range(5)] for i in range(n_img)}
    txt2img = {t: t // 5 for t in range(5 * n_img)}
    score_i2t = rng.standard_normal((n_img, 5 * n_img))
    score_t2i = rng.standard_normal((5 * n_img, n_img))
    for i in range(n_img):  # make some right answers rank high
        score_i2t[i, img2txt[i][0]] += rng.uniform(0, 3)
    for t in range(5 * n_img):
        score_t2i[t, txt2img[t]] += rng.uniform(0, 3)
    lavis = RetrievalTask._report_metrics(score_i2t, score_t2i, txt2img, img2txt)
    ours, _, _ = recall_metrics(score_i2t, score_t2i, img2txt, txt2img)
    assert set(lavis) <= set(ours)
    for key, value in lavis.items():
        assert ours[key] == value, key  # bit for bit, agg_metrics = txt_r_mean included
    assert ours["agg_metrics"] == ours["txt_r_mean"] != ours["r_mean"]


# ----------------------------------------------------------------------------- GVTBench files

def _write_published(tmp_path, name):
    """One published file's rows, in its published layout (one JSON list on one line)."""
    path = tmp_path / Path(name).name
    path.write_text(json.dumps(PUBLISHED[name]))
    return path


def test_published_gvtbench_rows_load_and_project_files_use_the_published_names(tmp_path):
    from omegaconf import OmegaConf

    for name in ("GVTBench/coco_oc.json", "GVTBench/GVTBench/coco_oc.json", "GVTBench/coco_mci.json",
                 "GVTBench/vcr_oc.json", "GVTBench/vcr_mci.json"):
        rows = PUBLISHED[name]
        records = benchmarks.load_gvtbench(str(_write_published(tmp_path, name)))
        assert [r["question_id"] for r in records] == list(range(len(rows)))
        assert [r["question"] for r in records] == [r["text_in"] for r in rows]
        assert [r["answer"] for r in records] == [r["text_out"] for r in rows]
        assert [r["n_obj_exist"] for r in records] == [r["n_obj_exist"] for r in rows]
        if "coco" in name:
            assert records[0]["image"] == "%012d.jpg" % rows[0]["image_id"]
        else:
            assert records[0]["image"] == rows[0]["image_id"]
    assert PUBLISHED["GVTBench/coco_oc.json"] != PUBLISHED["GVTBench/GVTBench/coco_oc.json"]
    published = {"oc_coco": "coco_oc.json", "oc_vcr": "vcr_oc.json", "mci_coco": "coco_mci.json",
                 "mci_vcr": "vcr_mci.json"}
    for project, file_name in published.items():
        for suffix in ("", "_blip2"):
            cfg = OmegaConf.load(REPO / "projects" / "xformer" / "eval" / ("%s%s.yaml" % (project, suffix)))
            storage = list(cfg.datasets.gvtbench.build_info.annotations.test.storage)
            assert [Path(s).name for s in storage] == [file_name], (project, suffix)
    default = OmegaConf.load(REPO / "lavis_xformer" / "configs" / "datasets" / "benchmarks" / "gvtbench.yaml")
    assert Path(default.datasets.gvtbench.build_info.annotations.test.storage).name == "coco_oc.json"


# ----------------------------------------------------------------------------- the score tool

def test_score_tool_rescores_published_rows_from_either_predictions_format(tmp_path, capsys):
    ann = _write_published(tmp_path, "GVTBench/vcr_oc.json")
    rows = PUBLISHED["GVTBench/vcr_oc.json"]
    answers = ["3", "Two", "someone", "eighteen", "There are 4.", "ten"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"question_id": i, "prediction": a} for i, a in enumerate(answers)]))
    out = tmp_path / "m.json"
    metrics = score_tool.main(["--benchmark", "oc", "--annotations", str(ann), "--predictions", str(plain),
                               "--out", str(out), "--name", "oc_vcr", "--split", "test"])
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    (acc, mae, rmse), _ = gvt_count_report([(a, r["text_out"]) for a, r in zip(answers, rows)])
    assert written["accuracy"] == pytest.approx(100 * acc) and (written["mae"], written["rmse"]) == (mae, rmse)
    assert written["benchmark"] == "oc_vcr" and written["split"] == "test" and written["metric"] == "oc"
    assert written["agg_metrics"] == written["accuracy"] and "per_question_type" in written
    assert written["annotations"][0]["sha256"] == score_tool.sha256(ann)
    assert json.loads(json.dumps(metrics)) == written
    assert "accuracy %" in printed and "MAE" in printed and "parsed %" in printed
    # this project's own predictions file (extra fields, "answer" = the ground truth) reads too
    own = tmp_path / "own.json"
    own.write_text(json.dumps([{"question_id": i, "question": r["text_in"], "answer": r["text_out"],
                                "prediction": a, "score": 0.0} for i, (a, r) in enumerate(zip(answers, rows))]))
    again = score_tool.main(["--benchmark", "oc", "--annotations", str(ann), "--predictions", str(own)])
    assert again["accuracy"] == written["accuracy"] and again["mae"] == written["mae"]


def test_score_tool_vqa_takes_official_files_and_lavis_result_files(tmp_path, result_dirs, capsys):
    rows = varied_vqa_rows(n=60, seed=4)
    lavis = _lavis_vqa_task_metrics(rows, tmp_path)
    # res.json is LAVIS's own VQATask result file: {"question_id", "answer"}
    metrics = score_tool.main(["--benchmark", "vqav2", "--annotations", str(tmp_path / "a.json"),
                               str(tmp_path / "q.json"), "--predictions", str(tmp_path / "res.json")])
    assert round(metrics["accuracy"], 2) == lavis["agg_metrics"]
    for atype in ("yes/no", "number", "other"):
        assert round(metrics["per_question_type"][atype]["accuracy"], 2) == lavis[atype]


@pytest.mark.parametrize("predictions, message", [
    ([{"question_id": 0, "prediction": "1"}], "5 of 6 questions have no prediction .* --subset"),
    ([{"question_id": i, "prediction": "1"} for i in range(6)] + [{"question_id": 17, "prediction": "2"}],
     "1 predictions have question ids that the annotations do not hold \\(first: entry 6, question_id 17\\)"),
    ([{"question_id": 0, "prediction": "1"}, {"question_id": 0, "prediction": "2"}], "entries 0 and 1 both have question_id 0"),
    ([{"question_id": "first", "prediction": "1"}], "question_id 'first' is a str, not an integer .*row's index"),
    ([{"id": 0, "text": "1"}], "every entry needs \"question_id\" and \"prediction\""),
    ({"0": "1"}, "expected a non-empty JSON list"),
])
def test_score_tool_bad_input_gets_one_clear_line(tmp_path, capsys, predictions, message):
    ann = _write_published(tmp_path, "GVTBench/coco_oc.json")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(predictions))
    with pytest.raises(SystemExit) as exit_info:
        score_tool.main(["--benchmark", "oc", "--annotations", str(ann), "--predictions", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_score_tool_subset_and_missing_files(tmp_path, capsys):
    ann = _write_published(tmp_path, "GVTBench/coco_mci.json")
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"question_id": 1, "prediction": "Yes"}, {"question_id": 2, "prediction": "no"}]))
    metrics = score_tool.main(["--benchmark", "mci", "--annotations", str(ann), "--predictions", str(path),
                               "--subset"])
    truth = [PUBLISHED["GVTBench/coco_mci.json"][i]["text_out"] for i in (1, 2)]
    assert metrics["num_questions"] == 2
    assert metrics["accuracy"] == pytest.approx(100 * gvt_multiclass_report(
        [("Yes", truth[0], 1), ("no", truth[1], 1)])[0])
    with pytest.raises(SystemExit):
        score_tool.main(["--benchmark", "mci", "--annotations", str(tmp_path / "nope.json"),
                         "--predictions", str(path)])
    assert "--annotations %s: no such file" % (tmp_path / "nope.json") in capsys.readouterr().err
