"""Flowers-102, Food-101 and SugarCrepe (issue 15 point 1): the readers on files in the
publishers' formats, the scores against a direct computation, and the project files run
through lavis.evaluate's entry point with the tiny stage-1 model."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_xformer  # noqa: F401  (registers the plugin)
from _testlib import REPO, build_model, tiny_eval_project
from lavis.common.registry import registry
from lavis_xformer.tasks.xformer_zeroshot import classification_metrics, sugarcrepe_metrics

EVAL = REPO / "projects" / "xformer" / "eval"


# ----------------------------------------------------------------- scores

def test_classification_metrics_against_a_direct_computation():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 7))
    labels = rng.integers(0, 7, size=40)
    labels[:3] = 6
    m = classification_metrics(scores, labels, 7)
    top1 = [int(np.argmax(s) == y) for s, y in zip(scores, labels)]
    top5 = [int(y in sorted(range(7), key=lambda c: -s[c])[:5]) for s, y in zip(scores, labels)]
    per_class = [np.mean([t for t, y in zip(top1, labels) if y == c]) for c in sorted(set(labels))]
    assert m["accuracy"] == round(100 * sum(top1) / 40, 2)
    assert m["top5_accuracy"] == round(100 * sum(top5) / 40, 2)
    assert m["mean_per_class_accuracy"] == round(100 * float(np.mean(per_class)), 2)
    assert m["accuracy"] != m["mean_per_class_accuracy"]  # unbalanced labels: the two differ


def test_sugarcrepe_rule_is_strictly_greater_and_averages_categories():
    records = []
    for cat, pairs in (("add_obj", [(2, 1), (1, 2), (1, 1)]), ("swap_att", [(0.5, 0.1)])):
        for pos, neg in pairs:
            r = {"category": cat}
            for kind, (p, n) in (("itc", (pos, neg)), ("itm", (neg, pos)), ("itm_itc", (pos, pos))):
                r[kind + "_pos"], r[kind + "_neg"] = p, n
            records.append(r)
    m = sugarcrepe_metrics(records)
    # add_obj: itc 1 of 3 (a tie counts as wrong, as SugarCrepe's main_eval.py), swap_att 1 of 1
    assert m["per_category"]["add_obj"]["itc"] == 33.33 and m["per_category"]["swap_att"]["itc"] == 100.0
    assert m["itc"] == round((33.33 + 100.0) / 2, 2) and m["agg_metrics"] == m["itc"]
    assert m["per_category"]["add_obj"]["itm"] == 33.33 and m["per_category"]["swap_att"]["itm"] == 0.0
    assert m["itm_itc"] == 0.0 and m["num_images"] == 4


# ----------------------------------------------------------------- readers

def _image(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def data(tmp_path):
    import scipy.io

    root = tmp_path / "data"
    # Flowers-102: 8 images, labels 1..3 (1-based, as VGG's imagelabels.mat), test = 2,4,5,7,8
    flowers = root / "flowers102"
    for n in range(1, 9):
        _image(flowers / "jpg" / ("image_%05d.jpg" % n), n)
    scipy.io.savemat(flowers / "imagelabels.mat", {"labels": np.array([[1, 2, 3, 1, 2, 3, 1, 2]])})
    scipy.io.savemat(flowers / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[6]]),
                                              "tstid": np.array([[2, 4, 5, 7, 8]])})
    # Food-101: meta/classes.txt, meta/test.json, images/<class>/<id>.jpg
    food = root / "food-101"
    (food / "meta").mkdir(parents=True)
    (food / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\ncup_cakes\n")
    test = {"cup_cakes": ["cup_cakes/11", "cup_cakes/12"], "apple_pie": ["apple_pie/21"],
            "baby_back_ribs": ["baby_back_ribs/31"]}
    (food / "meta" / "test.json").write_text(json.dumps(test))
    for entries in test.values():
        for i, e in enumerate(entries):
            _image(food / "images" / (e + ".jpg"), 50 + i + len(e))
    # SugarCrepe: two category files, COCO val2017 images
    sc = root / "sugar_crepe"
    sc.mkdir()
    (sc / "add_obj.json").write_text(json.dumps({
        "0": {"filename": "000000000139.jpg", "caption": "a red circle next to a square",
              "negative_caption": "a red circle next to a square and a dog"},
        "1": {"filename": "000000000285.jpg", "caption": "two blue triangles",
              "negative_caption": "two blue triangles and a cat"}}))
    (sc / "swap_att.json").write_text(json.dumps({
        "7": {"filename": "000000000139.jpg", "caption": "a red circle and a green square",
              "negative_caption": "a green circle and a red square"}}))
    for i, name in enumerate(("000000000139.jpg", "000000000285.jpg")):
        _image(root / "coco" / "val2017" / name, 90 + i)
    return root


def _builder(name, **build_info):
    cls = registry.get_builder_class(name)
    cfg = OmegaConf.load(cls.default_config_path()).datasets[name]
    for key, value in build_info.items():
        OmegaConf.update(cfg.build_info, key, value, merge=False)
    return cls(cfg)


def test_flowers_reader_takes_vgg_files(data):
    ds = _builder("flowers102_eval", **{
        "annotations.test.storage": [str(data / "flowers102" / "imagelabels.mat"),
                                     str(data / "flowers102" / "setid.mat")],
        "images.storage": str(data / "flowers102")}).build_datasets()["test"]
    assert [a["image"] for a in ds.annotation] == ["jpg/image_%05d.jpg" % n for n in (2, 4, 5, 7, 8)]
    assert [a["label"] for a in ds.annotation] == [1, 0, 1, 0, 1]  # 0-based
    assert len(ds.classnames) == 102 and ds.classnames[0] == "pink primrose"
    assert ds.templates == ["a photo of a {}, a type of flower."]
    item = ds[1]
    assert item["label"] == 0 and item["image"].shape == (3, 224, 224)


def test_food_reader_takes_eth_files(data):
    ds = _builder("food101_eval", **{
        "annotations.test.storage": [str(data / "food-101" / "meta" / "test.json"),
                                     str(data / "food-101" / "meta" / "classes.txt")],
        "images.storage": str(data / "food-101" / "images")}).build_datasets()["test"]
    assert ds.classnames == ["apple pie", "baby back ribs", "cup cakes"]
    assert [(a["image"], a["label"]) for a in ds.annotation] == [
        ("apple_pie/21.jpg", 0), ("baby_back_ribs/31.jpg", 1), ("cup_cakes/11.jpg", 2),
        ("cup_cakes/12.jpg", 2)]


def test_sugarcrepe_reader_takes_the_published_json(data):
    ds = _builder("sugarcrepe_eval", **{
        "annotations.test.storage": [str(data / "sugar_crepe" / "add_obj.json"),
                                     str(data / "sugar_crepe" / "swap_att.json")],
        "images.storage": str(data / "coco" / "val2017")}).build_datasets()["test"]
    assert [(a["category"], a["source_id"]) for a in ds.annotation] == [
        ("add_obj", "0"), ("add_obj", "1"), ("swap_att", "7")]
    assert ds.annotation[2]["negative_caption"] == "a green circle and a red square"
    bad = data / "sugar_crepe" / "bad.json"
    bad.write_text(json.dumps({"0": {"filename": "x.jpg", "caption": "c"}}))
    with pytest.raises(ValueError, match="lacks \\['negative_caption'\\]"):
        _builder("sugarcrepe_eval", **{"annotations.test.storage": [str(bad)],
                                       "images.storage": str(data)}).build_datasets()


# ----------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny stage-1 model and a checkpoint of its weights, so that the run and the direct
    computation see the same model."""
    model = build_model("xformer", "tiny", seed=0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "stage1.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def _run(cfg, tmp_path, monkeypatch):
    from lavis_xformer import evaluate

    monkeypatch.chdir(tmp_path)
    logs = evaluate.main(["--cfg-path", str(cfg), "--options", "run.output_dir=out"])
    result = tmp_path / "out" / "latest" / "result"
    return logs, result


def _processed(paths):
    process = registry.get_processor_class("blip_image_eval").from_config(OmegaConf.create({"image_size": 64}))
    return torch.stack([process(Image.open(p).convert("RGB")) for p in paths])


def _caption(text):
    return registry.get_processor_class("blip_caption").from_config(OmegaConf.create({}))(text)


@pytest.mark.slow
def test_flowers_project_classifies_by_itc_as_computed_directly(data, tiny_model, tmp_path, monkeypatch, capsys):
    model, ckpt = tiny_model
    names = ["pink primrose", "sweet pea", "sunflower"]
    cfg = tiny_eval_project(EVAL / "flowers102.yaml", tmp_path / "flowers.yaml", {
        "datasets.flowers102_eval.build_info.annotations.test.storage": [
            str(data / "flowers102" / "imagelabels.mat"), str(data / "flowers102" / "setid.mat")],
        "datasets.flowers102_eval.build_info.images.storage": str(data / "flowers102"),
        "datasets.flowers102_eval.build_info.classnames": names,
        "datasets.flowers102_eval.build_info.templates": ["a photo of a {}, a type of flower.", "a {}."]},
        pretrained=ckpt, model_defaults=["fusion"])
    logs, result = _run(cfg, tmp_path, monkeypatch)
    predictions = json.loads((result / "test_classification_predictions.json").read_text())
    metrics = json.loads((result / "test_classification_metrics.json").read_text())
    # direct: extract_features, CLIP-style prompt ensembling, max over queries
    with torch.no_grad():
        text = torch.stack([model.extract_features(
            {"text_input": [_caption(t.format(c)) for t in ("a photo of a {}, a type of flower.", "a {}.")]},
            mode="text").text_embeds_proj[:, 0].mean(0) for c in names])
        text = text / text.norm(dim=-1, keepdim=True)
        images = _processed([data / "flowers102" / "jpg" / ("image_%05d.jpg" % n) for n in (2, 4, 5, 7, 8)])
        feats = model.extract_features({"image": images}, mode="image").image_embeds_proj
        sim = torch.stack([(feats @ t).max(dim=1).values for t in text], dim=1)  # (5, 3)
    labels = [1, 0, 1, 0, 1]
    assert [p["image_id"] for p in predictions] == list(range(5))
    assert [p["prediction"] for p in predictions] == sim.argmax(1).tolist()
    assert [p["label_score"] for p in predictions] == pytest.approx(
        [float(sim[i, y]) for i, y in enumerate(labels)], abs=1e-4)
    expected = classification_metrics(sim.numpy(), np.array(labels), 3)
    for key in ("accuracy", "top5_accuracy", "mean_per_class_accuracy"):
        assert metrics[key] == expected[key]
    assert logs["test"]["agg_metrics"] == metrics["accuracy"] and metrics["benchmark"] == "flowers102"
    assert "Zero-shot classification" in capsys.readouterr().out


@pytest.mark.slow
def test_sugarcrepe_project_scores_itc_and_itm_as_computed_directly(data, tiny_model, tmp_path, monkeypatch):
    model, ckpt = tiny_model
    cfg = tiny_eval_project(EVAL / "sugarcrepe_blip2.yaml", tmp_path / "sc.yaml", {
        "datasets.sugarcrepe_eval.build_info.annotations.test.storage": [
            str(data / "sugar_crepe" / "add_obj.json"), str(data / "sugar_crepe" / "swap_att.json")],
        "datasets.sugarcrepe_eval.build_info.images.storage": str(data / "coco" / "val2017")},
        pretrained=ckpt, model_defaults=["fusion"])
    logs, result = _run(cfg, tmp_path, monkeypatch)
    records = json.loads((result / "test_sugarcrepe_predictions.json").read_text())
    metrics = json.loads((result / "test_sugarcrepe_metrics.json").read_text())
    files = ["000000000139.jpg", "000000000285.jpg", "000000000139.jpg"]
    pos = ["a red circle next to a square", "two blue triangles", "a red circle and a green square"]
    neg = ["a red circle next to a square and a dog", "two blue triangles and a cat",
           "a green circle and a red square"]
    images = _processed([data / "coco" / "val2017" / f for f in files])
    with torch.no_grad():
        feats = model.extract_features({"image": images}, mode="image").image_embeds_proj
        for side, texts in (("pos", pos), ("neg", neg)):
            texts = [_caption(t) for t in texts]
            t = model.extract_features({"text_input": texts}, mode="text").text_embeds_proj[:, 0]
            itc = (feats * t[:, None]).sum(-1).max(-1).values
            mm = model.extract_features({"image": images, "text_input": texts}, mode="multimodal")
            itm = model.itm_head(mm.multimodal_embeds).mean(dim=1)[:, 1]
            assert [r["itc_" + side] for r in records] == pytest.approx(itc.tolist(), abs=1e-4)
            assert [r["itm_" + side] for r in records] == pytest.approx(itm.tolist(), abs=1e-4)
    assert metrics["itc"] == sugarcrepe_metrics(records)["itc"] == logs["test"]["agg_metrics"]
    assert set(metrics["per_category"]) == {"add_obj", "swap_att"}
