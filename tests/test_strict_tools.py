"""The result writers refuse bad input in one line before any work, and never replace a
finished file unless told to: ``tools.score`` (its predictions and annotations, read strictly;
its ``--out``), ``tools.compare`` and ``tools.convert_checkpoint``. Each refusal is checked
for its message, exit status 2, and that the file it might have written is absent or
unchanged."""
import json
import re
from pathlib import Path

import pytest
import torch

import lavis_xformer  # noqa: F401  (registers everything)
from lavis_xformer import scoring as M
from lavis_xformer.tools import compare, convert_checkpoint, score as score_tool

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = json.loads((REPO / "tests" / "data" / "gvtbench_published_rows.json").read_text())
OC, MCI = PUBLISHED["GVTBench/coco_oc.json"], PUBLISHED["GVTBench/coco_mci.json"]  # 6 rows each


def _write(path, content):
    path = Path(path)
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def _refused(capsys, argv, message, main=score_tool.main):
    """``main(argv)`` stops with exit status 2 and one line ``error: ...`` matching ``message``."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    return err


def _own(predictions, truth=OC):
    """This project's predictions file: "answer" is the ground truth, "prediction" the model's."""
    return [{"question_id": i, "question": r["text_in"], "answer": r["text_out"], "prediction": p,
             "score": 0.0} for i, (p, r) in enumerate(zip(predictions, truth))]


def _score(tmp_path, capsys, predictions, message, benchmark="oc", annotations=None, extra=()):
    """Score ``predictions`` (content, or a path) against ``annotations`` (default: the published
    coco_oc rows); the refusal writes no --out."""
    ann = annotations or _write(tmp_path / "ann.json", OC if benchmark == "oc" else MCI)
    pred = predictions if isinstance(predictions, Path) else _write(tmp_path / "p.json", predictions)
    out = tmp_path / "metrics.json"
    err = _refused(capsys, ["--benchmark", benchmark, "--annotations", str(ann), "--predictions",
                            str(pred), "--out", str(out), *extra], message)
    assert not out.exists()
    return err


# ----------------------------------------------------------------------------- predictions

def test_one_entry_without_prediction_never_scores_the_ground_truth(tmp_path, capsys):
    """The issue's case: one entry lacks "prediction"; "answer" (the ground truth) is not
    scored in its place (it would read 100 %)."""
    own = _own(["3", "1", "2", "5", "1", "7"])
    del own[3]["prediction"]
    err = _score(tmp_path, capsys, own, "entry 3 \\(question_id 3\\) has no 'prediction': every "
                                        "entry of this file needs it; \"answer\" .* is never scored")
    assert "100" not in err
    # with "prediction" on every entry the same file scores the predictions, not the truth
    del own[3]
    metrics = score_tool.main(["--benchmark", "oc", "--annotations", str(tmp_path / "ann.json"),
                               "--predictions", str(_write(tmp_path / "p.json", own)), "--subset"])
    right = [M.gvt_count(e["prediction"]) == int(e["answer"]) for e in own]
    assert metrics["num_questions"] == 5 and metrics["accuracy"] == pytest.approx(100 * sum(right) / 5)
    assert 0 < metrics["accuracy"] < 100


@pytest.mark.parametrize("entries, extra", [
    # no entry has "prediction": "answer" is the truth here, not LAVIS's VQATask prediction
    ([{k: v for k, v in e.items() if k != "prediction"} for e in _own(["1"] * 6)], ()),
    (_own(["1"] * 6), ("--prediction-field", "answer")),
])
def test_answer_is_read_only_from_lavis_vqatask_files(tmp_path, capsys, entries, extra):
    _score(tmp_path, capsys, entries, "entry 0 \\(question_id 0\\) holds \\[.*'question'.*\\]: "
                                      "\"answer\" is read as the prediction only from LAVIS's VQATask files",
           extra=extra)


@pytest.mark.parametrize("question_id, kind", [(1.7, "float"), (True, "bool"), ("01", "str"),
                                               (None, "NoneType")])
def test_question_ids_are_never_converted(tmp_path, capsys, question_id, kind):
    entries = [{"question_id": question_id, "prediction": "1"}] + [
        {"question_id": i, "prediction": "1"} for i in (0, 2, 3, 4, 5)]
    _score(tmp_path, capsys, entries, "entry 0 \\(question_id %s\\): question_id %s is a %s, not an "
                                      "integer .* never converted" % (
                                          re.escape(repr(question_id)), re.escape(repr(question_id)), kind))


def test_gqa_ids_are_strings_as_written(tmp_path, capsys):
    ann = _write(tmp_path / "gqa.json", {"05": {"imageId": "n1", "question": "q?", "answer": "yes"}})
    _score(tmp_path, capsys, [{"question_id": 5, "pred_ans": "yes"}],
           "entry 0, question_id '5'\\)", benchmark="gqa", annotations=ann)
    _score(tmp_path, capsys, [{"question_id": 5.0, "pred_ans": "yes"}],
           "question_id 5.0 is a float, not a string", benchmark="gqa", annotations=ann)
    metrics = score_tool.main(["--benchmark", "gqa", "--annotations", str(ann), "--predictions",
                               str(_write(tmp_path / "p.json", [{"question_id": "05", "pred_ans": "yes"}]))])
    assert metrics["accuracy"] == 100.0


@pytest.mark.parametrize("entries, message", [
    ([{"question_id": i, "prediction": "1"} for i in (0, 1, 2, 3, 4, 5, 1)],
     "entries 1 and 6 both have question_id 1"),
    ([{"question_id": i, "prediction": "1"} for i in (0, 1, 2, 3, 4, 5, 17, 18)],
     "2 predictions have question ids that the annotations do not hold \\(first: entry 6, "
     "question_id 17\\); check --benchmark"),
    ([{"question_id": 0, "prediction": 1}], "entry 0 \\(question_id 0\\): 'prediction' is 1, not a string"),
    ([{"question_id": 0, "prediction": "1"}, "1"], "entry 1 is '1', not an object"),
    ({"0": "1"}, "expected a non-empty JSON list .*, got a JSON object"),
    ([], "expected a non-empty JSON list .*, got an empty list"),
    (b"", "p.json is empty"),
    (b"[{\"question_id\": 0, \"prediction\": \"caf\xe9\"}]",
     "p.json is not UTF-8 text \\(byte 38 is 0xe9\\)"),
    (b"[{\"question_id\": NaN, \"prediction\": \"1\"}]", "p.json holds NaN, which is not a JSON value"),
    (b"[{\"question_id\": 0, \"prediction\": \"1\"},", "p.json is not valid JSON"),
])
def test_unreadable_predictions_are_one_line(tmp_path, capsys, entries, message):
    _score(tmp_path, capsys, entries, message)


# ----------------------------------------------------------------------------- annotations

@pytest.mark.parametrize("benchmark, rows, message", [
    ("mci", OC, "entry 0: text_out '1' is not \"Yes.\" or \"No.\" .*; the file looks like GVTBench "
                "OC annotations: use --benchmark oc"),
    ("oc", MCI, "entry 0: text_out 'No.' is not a count .*; the file looks like GVTBench MCI "
                "annotations: use --benchmark mci"),
    ("mci", MCI[:2] + [dict(MCI[2], text_out=None)] + MCI[3:],
     "ann.json: entry 2: text_out is null; GVTBench's MCI ground truth is \"Yes.\" or \"No.\""),
    ("mci", MCI[:1] + [dict(MCI[1], text_out="None")] + MCI[2:],
     "entry 1: text_out 'None' is not \"Yes.\" or \"No.\""),
    ("oc", OC[:4] + [dict(OC[4], text_out=2.5)] + OC[5:], "entry 4: text_out 2.5 is not a count"),
    ("oc", OC[:4] + [dict(OC[4], text_out=True)] + OC[5:], "entry 4: text_out True is not a count"),
    ("vqav2", OC, "ann.json holds GVTBench's annotations, not vqav2's: use --benchmark oc or mci"),
    ("gqa", {"questions": [{"question_id": 1, "image_id": 1, "question": "q"}]},
     "ann.json holds official VQA annotations, not gqa's: use --benchmark vqav2 or okvqa"),
    ("oc", {"1": {"imageId": "n1", "question": "q", "answer": "no"}},
     "ann.json holds GQA's annotations, not oc's: use --benchmark gqa"),
    ("gqa", {"1": {"imageId": "n1", "question": "q", "answer": None}},
     "ann.json: entry '1': the answer is null, not text"),
    ("oc", OC[:5] + [5], "ann.json: entry 5 is 5, not an object"),
    ("oc", {"rows": OC}, "ann.json holds a JSON object; GVTBench's files are a JSON list"),
    ("oc", [], "ann.json holds no questions"),
    ("oc", b"", "ann.json is empty"),
    ("oc", b"[{\"text_out\": \"\xff\"}]", "--annotations .*ann.json is not UTF-8 text"),
    ("oc", json.dumps(OC).replace('"1"', "NaN", 1).encode(), "--annotations .*ann.json holds NaN"),
])
def test_annotations_of_the_wrong_benchmark_or_unreadable_are_one_line(tmp_path, capsys, benchmark, rows,
                                                                      message):
    ann = _write(tmp_path / "ann.json", rows)
    _score(tmp_path, capsys, [{"question_id": i, "prediction": "1"} for i in range(6)], message,
           benchmark=benchmark, annotations=ann)


def test_vqa_annotations_without_text_answers_are_one_line(tmp_path, capsys):
    q = _write(tmp_path / "q.json", {"questions": [{"question_id": 1, "image_id": 1, "question": "q"}]})
    a = _write(tmp_path / "a.json", {"annotations": [{"question_id": 1, "answer_type": "other",
                                                      "answers": [{"answer": None}] * 10}]})
    pred = _write(tmp_path / "p.json", [{"question_id": 1, "answer": "yes"}])
    out = tmp_path / "metrics.json"
    _refused(capsys, ["--benchmark", "vqav2", "--annotations", str(q), str(a), "--predictions", str(pred),
                      "--out", str(out)], "a.json: annotations entry 0 \\(question_id 1\\) needs .* "
                                          "non-empty list of \\{\"answer\": text\\} answers")
    assert not out.exists()


def test_mci_ground_truth_that_is_not_yes_or_no_is_an_error_when_scored():
    """An evaluation run's loader writes a null text_out as "None", which GVTBench's substring
    rule would read as "No"."""
    with pytest.raises(ValueError, match="answer 'None' of question 4 is not \"Yes.\" or \"No.\""):
        M.score_record({"question_id": 4, "answer": "None", "prediction": "no"}, "mci")
    assert M.score_record({"answer": "Yes.", "prediction": "yes"}, "mci")["score"] == 1.0


# ----------------------------------------------------------------------------- --out

def test_out_is_never_an_input_nor_an_existing_file_without_overwrite(tmp_path, capsys):
    ann = _write(tmp_path / "ann.json", OC)
    pred = _write(tmp_path / "p.json", [{"question_id": i, "prediction": "1"} for i in range(6)])
    link = tmp_path / "link.json"
    link.symlink_to(pred)
    before = {p: p.read_bytes() for p in (ann, pred)}
    base = ["--benchmark", "oc", "--annotations", str(ann), "--predictions", str(pred)]
    for out, flag in ((pred, "--predictions"), (ann, "--annotations"), (link, "--predictions")):
        for extra in ([], ["--overwrite"]):  # an input is never replaced, even when asked
            _refused(capsys, base + ["--out", str(out)] + extra, "--out %s is the %s file; write "
                     "the metrics to another path" % (re.escape(str(out)), flag))
    assert {p: p.read_bytes() for p in (ann, pred)} == before
    old = _write(tmp_path / "old_metrics.json", {"accuracy": 12.0})
    _refused(capsys, base + ["--out", str(old)],
             "--out %s exists; pass --overwrite to replace it" % re.escape(str(old)))
    assert json.loads(old.read_text()) == {"accuracy": 12.0}
    _refused(capsys, base + ["--out", str(tmp_path / "no" / "m.json")], "folder .*no does not exist")
    _refused(capsys, base + ["--out", str(tmp_path)], "is a folder; give a file path")
    metrics = score_tool.main(base + ["--out", str(old), "--overwrite"])
    right = sum(int(r["text_out"]) == 1 for r in OC)
    assert json.loads(old.read_text())["accuracy"] == metrics["accuracy"] == pytest.approx(100 * right / 6)


# ----------------------------------------------------------------------------- compare

def test_compare_never_replaces_a_comparison_without_overwrite(tmp_path, capsys):
    run = _write(tmp_path / "okvqa_metrics.json", {"accuracy": 30.0})
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.png").write_bytes(b"earlier chart")
    argv = [str(run), "--out", str(out), "--paper", "none", "--labels", "mine"]
    _refused(capsys, argv, "%s exists; pass --overwrite to replace the comparison in %s" % (
        re.escape(str(out / "comparison.png")), re.escape(str(out))), main=compare.main)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png"]
    assert (out / "comparison.png").read_bytes() == b"earlier chart"
    _refused(capsys, [str(run), "--out", str(run)], "--out .*okvqa_metrics.json is a file", main=compare.main)
    assert json.loads(run.read_text()) == {"accuracy": 30.0}
    compare.main(argv + ["--overwrite"])
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "| **mine** | 30.00 |" in (out / "comparison.md").read_text()
    assert json.loads((out / "comparison.json").read_text())["results"][0]["metrics"] == {"accuracy": 30.0}
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "comparison.png"]


# ----------------------------------------------------------------------------- convert_checkpoint

class _Payload:
    """Unpickling this creates ``marker``: it shows whether the source was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_convert_checkpoint_never_replaces_a_file_without_overwrite(tmp_path, capsys):
    marker = tmp_path / "UNPICKLED"
    old = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(2)}, "payload": _Payload(marker)}, old)
    new = _write(tmp_path / "new.pth", b"an earlier conversion")
    _refused(capsys, [str(old), str(new), "--i-trust-this-file"],
             "%s exists; pass --overwrite to replace it" % re.escape(str(new)), main=convert_checkpoint.main)
    assert new.read_bytes() == b"an earlier conversion" and not marker.exists()  # refused before reading
    link = tmp_path / "same.pth"
    link.symlink_to(old)
    _refused(capsys, [str(old), str(link), "--i-trust-this-file", "--overwrite"],
             "write the converted file beside the old one, not over it", main=convert_checkpoint.main)
    assert not marker.exists()
    torch.save({"model": {"w": torch.ones(2)}}, old)
    convert_checkpoint.main([str(old), str(new), "--i-trust-this-file", "--overwrite"])
    assert torch.equal(torch.load(new, weights_only=True)["model"]["w"], torch.ones(2))
