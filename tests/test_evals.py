"""The paper's evaluations (projects/xformer/eval/): benchmark scores against direct
computations, the public file formats read unchanged, the BLIP-2 twin decoding exactly as
xformer_opt, and the project files run end to end on tiny fixtures (VQAv2 and GVTBench OC
through `python -m lavis.evaluate`; NoCaps captioning and Flickr30K retrieval in-process)."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from _testlib import build_model, lavis_command, run_command, tiny_eval_project
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_xformer  # noqa: F401  (registers everything)
from lavis.common.registry import registry
from lavis_xformer import scoring as M
from lavis_xformer.datasets import benchmarks
from lavis_xformer.datasets.easyvqa import package_data_root
from lavis_xformer.scoring import metrics_table, score
from lavis_xformer.tasks.xformer_caption import caption_scores
from lavis_xformer.tasks.xformer_retrieval import recall_metrics

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "projects" / "xformer" / "eval"


# ----------------------------------------------------------------------------- metrics

def direct_vqa_accuracy(prediction, answers):
    """The official formula written out: mean over the 10 leave-one-out subsets of
    min(#matches in the other 9 / 3, 1)."""
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        accs.append(min(1.0, sum(a == prediction for a in others) / 3.0))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("prediction, answers", [
    ("2", ["2"] * 10),
    ("2", ["2"] * 3 + ["3"] * 7),
    ("2", ["2"] * 2 + ["3"] * 8),
    ("2", ["2"] + ["3"] * 9),
    ("yes", ["no"] * 10),
    ("red", ["red"] * 4 + ["blue"] * 6),
])
def test_vqa_accuracy_equals_the_official_formula(prediction, answers):
    assert M.vqa_accuracy(prediction, answers) == pytest.approx(direct_vqa_accuracy(prediction, answers))


def test_vqa_accuracy_normalises_as_lavis_vqaeval():
    assert M.vqa_accuracy("Two.", ["2"] * 4 + ["3"] * 6) == 1.0  # prediction normalised
    # answers differ: LAVIS 1.0.2 strips their punctuation only ("two" stays a word) ...
    assert M.vqa_accuracy("2", ["two"] * 2 + ["3"] * 8) == 0.0
    # ... the VQA authors' current code normalises them fully (the second column)
    assert M.official_vqa_accuracy("2", ["two"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    # all human answers identical: both leave them as they are
    assert M.vqa_accuracy("2", ["two"] * 10) == 0.0
    with pytest.raises(ValueError, match="no human answers"):
        M.vqa_accuracy("2", [])


@pytest.mark.parametrize("text, count", [
    ("3", 3), ("There are 12 dogs.", 12), ("three", 3), ("Twenty-one", 21), ("twenty one", 21),
    ("forty", 40), ("2.5", 2), ("zero", 0), ("none", None), ("many", None), ("a few, 4 maybe 5", 4),
    ("eleven or 7", 11),
])
def test_count_parsing_takes_the_first_integer(text, count):
    assert M.parse_count(text) == count


def test_object_counting_accuracy_mae_rmse_against_a_direct_computation():
    truths = ["3", "5", "2", "10", "1"]
    predictions = ["3", "four", "many", "12 cars", "one"]
    records = [M.score_record({"question_id": i, "answer": a, "prediction": p,
                               "question_type": "n_obj_exist " + b}, "oc")
               for i, (a, p, b) in enumerate(zip(truths, predictions, ["1-9"] * 4 + ["10-19"]))]
    counts = [3, 4, 0, 12, 1]  # an unparsed prediction counts as 0
    errors = [c - int(t) for c, t in zip(counts, truths)]
    metrics = score(records, metric="oc")
    assert metrics["accuracy"] == 40.0
    assert metrics["mae"] == sum(abs(e) for e in errors) / 5
    assert metrics["rmse"] == math.sqrt(sum(e * e for e in errors) / 5)
    assert metrics["num_unparsed"] == 1
    # GVTBench's count.py bins by the true count in steps of 3, not by n_obj_exist
    assert list(metrics["per_question_type"]) == ["count 0-2", "count 3-5", "count 9-11"]
    assert metrics["per_question_type"]["count 9-11"]["accuracy"] == 0.0
    assert metrics["per_question_type"]["count 3-5"]["num_questions"] == 2
    table = metrics_table(metrics, "t")
    assert "MAE" in table and "RMSE" in table
    with pytest.raises(ValueError, match="not an integer"):
        M.score_record({"answer": "some", "prediction": "2"}, "oc")


def test_mci_uses_gvtbench_substring_rule_and_reports_a_strict_one():
    cases = [("yes", "Yes", 1, 1), ("Yes, there is.", "Yes", 1, 1), ("no", "No", 1, 1),
             ("not sure", "No", 1, 0),     # GVTBench's rule: "no" inside "not"
             ("I don't know", "No", 1, 0),  # ... and inside "know"
             ("yes", "No", 0, 0), ("nope", "Yes", 0, 0), ("yes", "yes", 0, 1)]  # lowercase truth: never right
    for prediction, answer, gvt, strict in cases:
        record = M.score_record({"answer": answer, "prediction": prediction}, "mci")
        assert (record["score"], record["correct_strict"]) == (gvt, bool(strict)), (prediction, answer)
    records = [M.score_record({"answer": a, "prediction": p}, "mci") for p, a, _, _ in cases]
    metrics = score(records, metric="mci")
    assert metrics["accuracy"] == round(100 * 5 / 8, 2)
    assert metrics["accuracy_strict"] == round(100 * 4 / 8, 2)


def test_gvtbench_bins_follow_its_evaluation():
    assert [M.n_obj_bin(n) for n in (1, 9, 10, 19, 20, 35)] == ["1-9", "1-9", "10-19", "10-19", ">=20", ">=20"]
    assert [M.gvt_count_bin(n) for n in (0, 2, 3, 11, 12)] == ["count 0-2", "count 0-2", "count 3-5",
                                                           "count 9-11", "count 12-14"]


def test_vqa_metric_groups_by_answer_type_and_gqa_by_two_types():
    records = [
        {"answers": ["yes"] * 10, "prediction": "yes", "question_type": "yes/no"},
        {"answers": ["2"] * 2 + ["3"] * 8, "prediction": "2", "question_type": "number"},
        {"answers": ["cat"] * 10, "prediction": "dog", "question_type": "other"},
    ]
    metrics = score(records, metric="vqa_accuracy")
    assert metrics["accuracy"] == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    assert metrics["per_question_type"]["number"]["accuracy"] == 60.0
    gqa = [{"answer": "left", "prediction": "left", "question_type": ["structural/choose", "semantic/rel"]},
           {"answer": "yes", "prediction": "no", "question_type": ["structural/verify", "semantic/rel"]}]
    metrics = score(gqa, metric="exact_match")
    assert metrics["per_question_type"]["semantic/rel"] == {"num_questions": 2, "accuracy": 50.0,
                                                            "accuracy_normalised": 50.0}
    assert metrics["per_question_type"]["structural/choose"]["accuracy"] == 100.0
    with pytest.raises(ValueError, match="run.metric='bleu' is not known"):
        M.score_record({"answer": "a", "prediction": "a"}, "bleu")


def test_recall_at_k_against_a_crafted_similarity_matrix():
    # 3 images, 6 texts; image i owns texts 2i and 2i+1
    img2txt = {0: [0, 1], 1: [2, 3], 2: [4, 5]}
    txt2img = {t: t // 2 for t in range(6)}
    score_i2t = np.array([[9, 1, 0, 0, 0, 0],     # image 0: its text first -> rank 1
                          [9, 8, 1, 0, 0, 0],     # image 1: its text 3rd -> rank 3
                          [9, 8, 7, 6, 5, 4]], dtype=float)  # image 2: its texts 5th, 6th -> rank 5
    score_t2i = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=float)
    m, i2t_ranks, t2i_ranks = recall_metrics(score_i2t, score_t2i, img2txt, txt2img)
    assert list(i2t_ranks) == [0, 2, 4] and list(t2i_ranks) == [0, 1, 0, 1, 0, 0]
    assert (m["txt_r1"], m["txt_r5"], m["txt_r10"]) == (100 / 3, 100.0, 100.0)
    # text 1 (image 0) ranks image 1 first; text 3 (image 1) ranks image 0 first
    assert (m["img_r1"], m["img_r5"], m["img_r10"]) == (100 * 4 / 6, 100.0, 100.0)
    assert m["r_mean"] == (m["txt_r_mean"] + m["img_r_mean"]) / 2
    assert m["agg_metrics"] == m["txt_r_mean"]  # as LAVIS's RetrievalTask


def test_caption_scores_equal_pycocoevalcap_run_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    references = {1: ["A man riding a horse.", "a person rides a brown horse"],
                  2: ["Two dogs play in the snow.", "dogs in the snow"],
                  3: ["a plate of food on a table", "food on a white plate"]}
    predictions = {1: "a man riding a horse", 2: "a dog in the snow", 3: "a cat on a sofa"}
    scores = caption_scores(references, predictions)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in references.items()})
    res = tok.tokenize({i: [{"caption": p}] for i, p in predictions.items()})
    bleu4, cider = Bleu(4).compute_score(gts, res)[0][3], Cider().compute_score(gts, res)[0]
    assert (scores["bleu4"], scores["cider"]) == (100 * bleu4, 100 * cider)
    assert scores["agg_metrics"] == cider + bleu4  # LAVIS's CaptionTask: CIDEr + BLEU-4 as fractions
    assert scores["num_images"] == 3 and scores["cider"] > 0
    with pytest.raises(KeyError, match="no reference captions"):
        caption_scores(references, {9: "x"})


# ----------------------------------------------------------------------------- fixtures

def _easyvqa_images(n):
    folder = os.path.join(package_data_root(), "test", "images")
    return [Image.open(os.path.join(folder, "%d.png" % i)).convert("RGB") for i in range(n)]


def _save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny files in each benchmark's public format, over easy-VQA images."""
    root = tmp_path_factory.mktemp("benchmarks")
    images = _easyvqa_images(4)
    # VQAv2 / OK-VQA: official questions + annotations files, COCO val2014 names
    for i, image in enumerate(images):
        _save(image, root / "coco" / "images" / "val2014" / ("COCO_val2014_%012d.jpg" % (i + 1)))
        _save(image, root / "coco" / "images" / "val2017" / ("%012d.jpg" % (i + 1)))
    questions = [(11, 1, "what color is the shape?", ["blue"] * 10, "other"),
                 (12, 2, "is there a circle?", ["yes"] * 9 + ["no"], "yes/no"),
                 (13, 3, "how many shapes are there?", ["1"] * 4 + ["one"] * 2 + ["2"] * 4, "number"),
                 (14, 4, "what shape is present?", ["circle"] * 10, "other"),
                 (15, 1, "does the image contain a red shape?", ["no"] * 10, "yes/no")]
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "q.json").write_text(json.dumps({"questions": [
        {"question_id": q, "image_id": im, "question": text} for q, im, text, _, _ in questions]}))
    (root / "coco" / "annotations" / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": q, "image_id": im, "answer_type": t, "question_type": "what",
         "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(ans)]}
        for q, im, _, ans, t in questions]}))
    # GQA: the official dict with types
    for i, image in enumerate(images[:2]):
        _save(image, root / "gqa" / "images" / ("n%d.jpg" % i))
    (root / "gqa" / "testdev.json").write_text(json.dumps({
        "201": {"imageId": "n0", "question": "Is the shape blue?", "answer": "yes",
                "types": {"structural": "verify", "semantic": "attr", "detailed": "x"}},
        "202": {"imageId": "n1", "question": "Which shape is it?", "answer": "circle",
                "types": {"structural": "query", "semantic": "obj", "detailed": "y"}}}))
    # GVTBench: COCO ids (val2017 names) and VCR relative paths
    (root / "gvt").mkdir()
    (root / "gvt" / "coco_oc.json").write_text(json.dumps([
        {"image_id": i + 1, "text_in": "How many shapes are there in the image?", "text_out": "1",
         "n_obj_exist": n} for i, n in enumerate([1, 3, 12])]))
    for i, image in enumerate(images[:2]):
        _save(image, root / "vcr" / "movie_a" / ("shot_%d.jpg" % i))
    (root / "gvt" / "vcr_mci.json").write_text(json.dumps([
        {"image_id": "movie_a/shot_%d.jpg" % i, "text_in": "Does person exist in the image?",
         "text_out": answer, "n_obj_exist": 2} for i, answer in enumerate(["Yes", "No"])]))
    # NoCaps: COCO format with domains
    for i, image in enumerate(images[:3]):
        _save(image, root / "nocaps" / "val" / ("%04x.jpg" % i))
    (root / "nocaps" / "nocaps_val.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": "%04x.jpg" % i, "domain": d}
                   for i, d in enumerate(["in-domain", "near-domain", "out-domain"])],
        "annotations": [{"image_id": i, "id": 10 * i + j, "caption": c}
                        for i in range(3) for j, c in enumerate(["a blue shape", "a coloured circle"])]}))
    # Flickr30K: the Karpathy-style test list
    for i, image in enumerate(images[:3]):
        _save(image, root / "flickr" / ("%d.jpg" % i))
    (root / "flickr" / "test.json").write_text(json.dumps([
        {"image": "%d.jpg" % i, "caption": ["a shape number %d" % i, "picture %d of a shape" % i]}
        for i in range(3)]))
    return root


def _builder(name, **build_info):
    builder = registry.get_builder_class(name)()
    for key, value in build_info.items():
        OmegaConf.update(builder.config.build_info, key, value, merge=False)
    builder.config.vis_processor.eval.image_size = 64
    return builder


def test_official_vqa_files_are_read_unchanged(data):
    ann = data / "coco" / "annotations"
    datasets = _builder("vqav2_eval", **{
        "annotations.val.storage": [str(ann / "a.json"), str(ann / "q.json")],  # either order
        "images.storage": str(data / "coco" / "images")}).build_datasets()
    assert list(datasets) == ["val"]
    val = datasets["val"]
    assert len(val) == 5
    record = val.annotation[2]
    assert record["question_id"] == 13 and record["question_type"] == "number"
    assert record["answers"] == ["1"] * 4 + ["one"] * 2 + ["2"] * 4
    assert record["image"] == "val2014/COCO_val2014_000000000003.jpg"
    item = val[0]
    assert set(item) == {"image", "text_input", "question_id"} and tuple(item["image"].shape) == (3, 64, 64)
    with pytest.raises(ValueError, match="two annotation files"):
        benchmarks.load_official_vqa([str(ann / "q.json")], "{}")


def test_gqa_gvtbench_and_caption_files(data):
    gqa = benchmarks.load_gqa(str(data / "gqa" / "testdev.json"))
    assert gqa[0]["question_type"] == ["structural/verify", "semantic/attr"]
    assert gqa[1]["image"] == "n1.jpg" and gqa[1]["question_id"] == "202"
    oc = benchmarks.load_gvtbench(str(data / "gvt" / "coco_oc.json"))
    assert [r["image"] for r in oc] == ["%012d.jpg" % i for i in (1, 2, 3)]
    assert [r["question_type"] for r in oc] == ["n_obj_exist 1-9", "n_obj_exist 1-9", "n_obj_exist 10-19"]
    mci = benchmarks.load_gvtbench(str(data / "gvt" / "vcr_mci.json"))
    assert mci[1]["image"] == "movie_a/shot_1.jpg" and mci[1]["answer"] == "No"
    (data / "bad.json").write_text(json.dumps([{"image_id": 1, "text_in": "q"}]))
    with pytest.raises(ValueError, match=r"entry 0 lacks \['text_out'\]"):
        benchmarks.load_gvtbench(str(data / "bad.json"))
    caps = benchmarks.load_captions(str(data / "nocaps" / "nocaps_val.json"))
    assert caps[2] == {"image_id": 2, "image": "0002.jpg", "domain": "out-domain",
                       "captions": ["a blue shape", "a coloured circle"]}
    karpathy = data / "karpathy.json"
    karpathy.write_text(json.dumps([{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["a", "b"]}]))
    assert benchmarks.load_captions(str(karpathy))[0]["image_id"] == 391895


def test_missing_image_names_the_key_to_set(data):
    dataset = _builder("gvtbench", **{"annotations.test.storage": [str(data / "gvt" / "coco_oc.json")],
                                      "images.storage": str(data / "nowhere")}).build_datasets()["test"]
    with pytest.raises(FileNotFoundError, match="set build_info.images.storage"):
        dataset[0]


# ----------------------------------------------------------------------------- BLIP-2 twin

def _build(name, seed=0, **overrides):
    return build_model(name, "tiny", seed, **overrides).eval()


@pytest.mark.slow
def test_blip2_twin_answers_as_xformer_opt_with_blip2_fusion_for_the_same_weights():
    from lavis.models.blip2_models.blip2_opt import Blip2OPT

    xformer = _build("xformer_opt", fusion="blip2")
    twin = _build("blip2_opt_twin", seed=3)
    assert isinstance(twin, Blip2OPT)  # LAVIS's class: its forward and state-dict keys
    # one head (llm_head.OPTHead) for both: the same prompt length, an int in both
    assert type(twin).decode is type(xformer).decode
    prompts = twin.prompt, xformer.prompt
    for prompt in ("", "a photo of"):
        for model in (twin, xformer):
            model.__dict__.pop("prompt_length", None)  # a cached property
            model.prompt = prompt
        assert type(twin.prompt_length) is int and twin.prompt_length == xformer.prompt_length
        # the value LAVIS's Blip2OPT computes (as a tensor) for its forward's label mask
        assert twin.prompt_length == int(twin.opt_tokenizer(prompt, return_tensors="pt").attention_mask.sum())
    for model, prompt in zip((twin, xformer), prompts):
        model.__dict__.pop("prompt_length")
        model.prompt = prompt
    # same parameter names as LAVIS's Blip2OPT: llm_model/llm_proj there are opt_model/opt_proj here
    state = {k.replace("llm_model.", "opt_model.").replace("llm_proj.", "opt_proj."): v
             for k, v in xformer.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    torch.manual_seed(1)
    samples = {"image": torch.randn(3, 3, 64, 64),
               "text_input": ["what color is the shape?", "is there a circle?", "which shape?"]}
    answers = twin.predict_answers(samples, max_len=4)
    assert answers == xformer.predict_answers(samples, max_len=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    captions = twin.generate({"image": samples["image"], "prompt": ["a photo of"] * 3}, max_length=4)
    assert captions == xformer.generate({"image": samples["image"], "prompt": ["a photo of"] * 3}, max_length=4)
    # LAVIS's own Blip2OPT.forward trains it
    loss = twin({"image": samples["image"], "text_input": ["a red circle"] * 3})["loss"]
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="inference_method='rank' is not supported"):
        twin.predict_answers(samples, inference_method="rank")
    with pytest.raises(ValueError, match="this model takes 64x64"):
        twin.predict_answers({"image": torch.randn(1, 3, 32, 32), "text_input": ["q"]})


@pytest.mark.slow
def test_both_models_decode_through_the_one_shared_function(monkeypatch):
    from lavis_xformer.models import generation, llm_head

    calls = []
    original = generation.opt_generate

    def spy(llm, tokenizer, prefix, prompts, eos, **kwargs):
        calls.append(list(prompts))
        return original(llm, tokenizer, prefix, prompts, eos, **kwargs)

    monkeypatch.setattr(llm_head, "opt_generate", spy)  # the one call site of both models
    samples = {"image": torch.randn(1, 3, 64, 64), "text_input": ["is it red?"]}
    _build("xformer_opt").predict_answers(samples, max_len=2)
    _build("blip2_opt_twin").predict_answers(samples, max_len=2)
    assert calls == [["Question: is it red? Short Answer:"]] * 2


# ----------------------------------------------------------------------------- end to end

def _evaluate(cfg_path, cwd, *options):
    return run_command(lavis_command(cfg_path, "run.output_dir=out", "run.max_len=3", *options,
                                     script="lavis.evaluate"), cwd).output


def _result(cwd, name):
    with open(Path(cwd) / "out" / "latest" / "result" / name) as f:
        return json.load(f)


@pytest.mark.slow
def test_vqav2_project_runs_with_lavis_evaluate(data, tmp_path):
    ann = data / "coco" / "annotations"
    cfg = tiny_eval_project(EVAL / "vqav2.yaml", tmp_path / "vqav2.yaml", {
        "datasets.vqav2_eval.build_info.annotations.val.storage": [str(ann / "q.json"), str(ann / "a.json")],
        "datasets.vqav2_eval.build_info.images.storage": str(data / "coco" / "images")})
    output = _evaluate(cfg, tmp_path)
    predictions = _result(tmp_path, "val_vqa_predictions.json")
    metrics = _result(tmp_path, "val_vqa_metrics.json")
    assert [p["question_id"] for p in predictions] == [11, 12, 13, 14, 15]
    for p in predictions:  # LAVIS 1.0.2's VQAEval (tests/test_scoring.py), the official one beside it
        assert p["score"] == pytest.approx(M.vqa_accuracy(p["prediction"], p["answers"]))
        assert p["score_official"] == M.official_vqa_accuracy(p["prediction"], p["answers"])
    assert metrics["benchmark"] == "vqav2" and metrics["metric"] == "vqa_accuracy"
    assert metrics["model"]["arch"] == "xformer_opt" and metrics["model"]["fusion"] == "xformer"
    assert metrics["accuracy"] == pytest.approx(100 * sum(p["score"] for p in predictions) / 5)
    _same_scores_from_the_score_tool(metrics, tmp_path, "val_vqa_predictions.json", "vqav2",
                                     [str(ann / "q.json"), str(ann / "a.json")])
    assert set(metrics["per_question_type"]) == {"yes/no", "number", "other"}
    assert metrics["protocol"]["prompt"] == "Question: {} Short Answer:"
    assert "Evaluation  [0/3]" in output and "[vqav2, vqa_accuracy] Zero-shot VQA, split 'val'" in output


def _same_scores_from_the_score_tool(metrics, run_dir, predictions_name, benchmark, annotations):
    """`python -m lavis_xformer.tools.score` on the run's predictions file gives the run's
    metrics JSON (all but the run's own book-keeping: model, protocol, files)."""
    from lavis_xformer.tools import score as score_tool

    predictions = Path(run_dir) / "out" / "latest" / "result" / predictions_name
    rescored = score_tool.main(["--benchmark", benchmark, "--annotations", *annotations,
                                "--predictions", str(predictions), "--name", metrics["benchmark"],
                                "--split", metrics["split"]])
    rescored = json.loads(json.dumps(rescored))
    own = {"model", "protocol", "predictions_file", "epoch", "annotations"}
    assert {k: v for k, v in rescored.items() if k not in own} == {
        k: v for k, v in metrics.items() if k not in own}


@pytest.mark.slow
def test_oc_twin_project_runs_with_lavis_evaluate(data, tmp_path):
    cfg = tiny_eval_project(EVAL / "oc_coco_blip2.yaml", tmp_path / "oc.yaml", {
        "datasets.gvtbench.build_info.annotations.test.storage": [str(data / "gvt" / "coco_oc.json")],
        "datasets.gvtbench.build_info.images.storage": str(data / "coco" / "images" / "val2017")})
    output = _evaluate(cfg, tmp_path)
    predictions = _result(tmp_path, "test_vqa_predictions.json")
    metrics = _result(tmp_path, "test_vqa_metrics.json")
    assert len(predictions) == 3 and metrics["model"]["arch"] == "blip2_opt_twin"
    assert metrics["model"]["fusion"] == "blip2" and metrics["metric"] == "oc"
    counts = [M.gvt_count(p["prediction"]) for p in predictions]  # GVTBench's count.py
    assert [p["predicted_count"] for p in predictions] == counts
    errors = [c - 1 for c in counts]
    assert metrics["mae"] == pytest.approx(sum(abs(e) for e in errors) / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 3))
    assert metrics["accuracy"] == pytest.approx(100 * sum(c == 1 for c in counts) / 3)
    _same_scores_from_the_score_tool(metrics, tmp_path, "test_vqa_predictions.json", "oc",
                                     [str(data / "gvt" / "coco_oc.json")])
    assert "MAE" in output and "RMSE" in output


def _in_process(cfg_path, tmp_path, monkeypatch):
    from lavis_xformer import evaluate

    monkeypatch.chdir(tmp_path)
    return evaluate.main(["--cfg-path", str(cfg_path), "--options", "run.output_dir=out"])


def test_nocaps_captioning_in_process(data, tmp_path, monkeypatch, capsys):
    cfg = tiny_eval_project(EVAL / "nocaps.yaml", tmp_path / "nocaps.yaml", {
        "datasets.nocaps_eval.build_info.annotations.val.storage": [str(data / "nocaps" / "nocaps_val.json")],
        "datasets.nocaps_eval.build_info.images.storage": str(data / "nocaps" / "val"),
        "run.max_len": 5, "run.min_len": 1, "run.num_beams": 2})
    logs = _in_process(cfg, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    predictions = _result(tmp_path, "val_caption_predictions.json")
    metrics = _result(tmp_path, "val_caption_metrics.json")
    assert [p["image_id"] for p in predictions] == [0, 1, 2]
    direct = caption_scores({p["image_id"]: p["references"] for p in predictions},
                            {p["image_id"]: p["prediction"] for p in predictions})
    assert (metrics["bleu4"], metrics["cider"]) == (direct["bleu4"], direct["cider"])
    assert logs["val"]["agg_metrics"] == metrics["agg_metrics"] == direct["agg_metrics"]
    assert set(metrics["per_question_type"]) == {"in-domain", "near-domain", "out-domain"}
    assert "SPICE skipped" in out and "SPICE skipped" in metrics["notes"][0]
    assert "Captioning  [0/2]" in out and "CIDEr" in out


@pytest.mark.slow
def test_flickr_retrieval_in_process_reranks_with_itm(data, tmp_path, monkeypatch, capsys):
    from lavis_xformer.models import retrieval

    cfg = tiny_eval_project(EVAL / "flickr30k_retrieval.yaml", tmp_path / "flickr.yaml", {
        "datasets.flickr30k_eval.build_info.annotations.test.storage": str(data / "flickr" / "test.json"),
        "datasets.flickr30k_eval.build_info.images.storage": str(data / "flickr"),
        "run.k_test": 2})
    itm_calls = []
    original = retrieval.itm_scores
    monkeypatch.setattr(retrieval, "itm_scores", lambda *a: itm_calls.append(a[1].shape[0]) or original(*a))
    logs = _in_process(cfg, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    metrics = _result(tmp_path, "test_retrieval_metrics.json")
    predictions = _result(tmp_path, "test_retrieval_predictions.json")
    assert (metrics["num_images"], metrics["num_texts"]) == (3, 6)
    assert itm_calls == [2] * 3 + [2] * 6  # k_test candidates per image, then per text
    ranks = [p["rank"] for p in predictions["image_to_text"]]
    assert metrics["txt_r1"] == pytest.approx(100 * sum(r <= 1 for r in ranks) / 3)
    t_ranks = [p["rank"] for p in predictions["text_to_image"]]
    assert metrics["img_r1"] == pytest.approx(100 * sum(r <= 1 for r in t_ranks) / 6)
    assert logs["test"]["agg_metrics"] == metrics["txt_r_mean"]
    assert "R@1" in out and "text retrieval" in out


def test_every_benchmark_has_a_blip2_twin_with_the_same_protocol():
    from lavis_xformer.training.run_files import load_run_file

    # zero-shot benchmarks; vqav2_finetuned evaluates the VQA-fine-tuned model (no twin)
    names = sorted(p.stem for p in EVAL.glob("*.yaml")
                   if not p.stem.endswith("_blip2") and p.stem != "vqav2_finetuned")
    assert names == sorted(["vqav2", "gqa", "okvqa", "coco_caption", "nocaps", "flickr30k_retrieval",
                            "oc_coco", "oc_vcr", "mci_coco", "mci_vcr", "flowers102", "food101",
                            "sugarcrepe"])
    for name in names:
        ours, twin = (load_run_file(str(EVAL / ("%s%s.yaml" % (name, s)))) for s in ("", "_blip2"))
        assert ours.datasets == twin.datasets, name
        for key in ("task", "prompt", "num_beams", "max_len", "min_len", "length_penalty",
                    "metric", "k_test", "test_splits"):
            assert ours.run.get(key) == twin.run.get(key), (name, key)
        assert ours.run.output_dir != twin.run.output_dir
        if name in ("flickr30k_retrieval", "flowers102", "food101", "sugarcrepe"):  # stage-1 models
            assert twin.model.arch == "xformer" and twin.model.fusion == "blip2"
        else:
            assert twin.model.arch == "blip2_opt_twin" and ours.model.arch == "xformer_opt"
            assert ours.run.prompt == ("a photo of" if "caption" in ours.run.task else "Question: {} Short Answer:")


def test_missing_benchmark_data_stops_at_launch_naming_the_keys(tmp_path, monkeypatch):
    from lavis_xformer.config_keys import ConfigError
    from lavis_xformer.training import launch

    monkeypatch.chdir(tmp_path)
    args = launch.parse_args(["--cfg-path", str(EVAL / "vqav2_blip2.yaml"), "--options",
                              "run.device=cpu", "datasets.vqav2_eval.build_info.images.storage=%s" % tmp_path])
    with pytest.raises(ConfigError) as error:
        launch.load_config(args)
    message = str(error.value)
    assert "dataset 'vqav2_eval', split 'val': annotation file not found" in message
    assert "v2_mscoco_val2014_annotations.json" in message
    assert "datasets.vqav2_eval.build_info.annotations.val.storage" in message


@pytest.mark.slow
def test_retrieval_under_torchrun_equals_one_process(data, tmp_path):
    """Two gloo processes split the ITM re-ranking; the merged matrices give the same
    metrics and predictions as one process. The trainable weights come from one checkpoint
    (otherwise each process would draw its own: LAVIS seeds seed + rank)."""
    model = _build("xformer", fusion="blip2", seed=4)
    torch.save({"model": model.state_dict()}, tmp_path / "stage1.pth")
    cfg = tiny_eval_project(EVAL / "flickr30k_retrieval_blip2.yaml", tmp_path / "flickr.yaml", {
        "model.pretrained": str(tmp_path / "stage1.pth"),
        "datasets.flickr30k_eval.build_info.annotations.test.storage": str(data / "flickr" / "test.json"),
        "datasets.flickr30k_eval.build_info.images.storage": str(data / "flickr"),
        "run.k_test": 3})
    one = tmp_path / "one"
    one.mkdir()
    _evaluate(cfg, one)
    two = tmp_path / "two"
    two.mkdir()
    output = run_command(lavis_command(cfg, "run.output_dir=out", script="lavis.evaluate",
                                       processes=2), two).output
    assert "distributed init (rank 1, world 2, backend gloo)" in output
    assert output.count("Zero-shot retrieval, split 'test'") == 1
    m1, m2 = (_result(d, "test_retrieval_metrics.json") for d in (one, two))
    assert m1["model"]["fusion"] == "blip2"
    for key in ("txt_r1", "txt_r5", "img_r1", "img_r5", "r_mean"):
        assert m1[key] == m2[key], key
    p1, p2 = (_result(d, "test_retrieval_predictions.json") for d in (one, two))
    assert p1 == p2


def test_model_type_option_selects_that_types_defaults(tmp_path, monkeypatch):
    """LAVIS's Config ignores --options model.model_type when picking the model's default yaml;
    the plugin's launcher rebuilds the model section from the chosen type."""
    from lavis_xformer.training import launch

    monkeypatch.chdir(tmp_path)
    args = launch.parse_args(["--cfg-path", str(EVAL / "okvqa_blip2.yaml"), "--options",
                              "model.model_type=pretrain_opt6.7b", "model.llm_precision=fp32"])
    monkeypatch.setattr(launch, "check_datasets", lambda *a: None)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: True)
    cfg = launch.load_config(args)
    assert cfg.model_cfg.model_type == "pretrain_opt6.7b"
    assert cfg.model_cfg.llm_weights == "facebook/opt-6.7b" and cfg.model_cfg.llm.hidden_size == 4096
    assert cfg.model_cfg.pretrained.endswith("blip2_pretrained_opt6.7b.pth")
    assert cfg.model_cfg.llm_precision == "fp32"  # the other options still apply


@pytest.mark.slow
def test_caption_task_captions_with_stage2_prompt_and_with_a_stage1_model():
    from lavis_xformer.tasks.xformer_caption import XFormerCaptionTask

    task = XFormerCaptionTask(num_beams=2, max_len=4, min_len=1, prompt="a photo of")
    samples = {"image": torch.randn(2, 3, 64, 64), "image_id": torch.tensor([7, 3])}
    stage2 = _build("xformer_opt")
    records = task.valid_step(stage2, samples)
    assert [r["image_id"] for r in records] == [7, 3]
    assert [r["prediction"] for r in records] == stage2.generate(
        {"image": samples["image"], "prompt": ["a photo of"] * 2}, num_beams=2, max_length=4,
        min_length=1, length_penalty=1.0)
    stage1 = _build("xformer")
    records = task.valid_step(stage1, samples)
    assert len(records) == 2 and all(isinstance(r["prediction"], str) for r in records)


def test_gqa_string_ids_keep_leading_zeros_and_find_their_ground_truth(data):
    from lavis_xformer.tasks.xformer_vqa import XFormerVQATask

    class Dataset:
        annotation = [{"question_id": "0201", "answer": "yes", "question_type": ["structural/verify"]},
                      {"question_id": "202", "answer": "circle", "question_type": ["structural/query"]}]

    class Model:
        def before_evaluation(self, **kwargs):
            pass

        def predict_answers(self, samples, **kwargs):
            return ["Yes", "square"]

    task = XFormerVQATask(metric="exact_match")
    task.before_evaluation(Model(), Dataset())
    truth = task.split_state(Model(), Dataset())  # passed to every step of the split
    records = task.valid_step(Model(), {"question_id": ["0201", "202"], "text_input": ["q1", "q2"],
                                        "image": torch.zeros(2, 3, 4, 4)}, truth)
    assert [r["question_id"] for r in records] == ["0201", "202"]
    assert [r["answer"] for r in records] == ["yes", "circle"]
    assert [r["correct"] for r in records] == [True, False]
    assert records[0]["question_type"] == ["structural/verify"]
