"""Issue 5, points 4-6: query diversity, reconstruction pictures, comparison report."""
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import lavis_xformer  # noqa: F401  (registers the plugin)
from lavis_xformer.tools import compare, loading, query_diversity as qd, recon_grid
from lavis_xformer.tools.loading import ToolError
from lavis_xformer.tools.results_io import PAPER_RESULTS, ResultsError, load_paper, load_run


# ------------------------------------------------------------------ query diversity: formula

def test_diversity_formula_by_hand():
    # two queries, three text tokens and one padding token (which must not count)
    image = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])          # normalised: (1,0), (0,1)
    text = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-5.0, 7.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    sim = qd.query_text_similarity(image, text)
    r = 1 / math.sqrt(2)
    assert torch.allclose(sim[0, :, :3], torch.tensor([[1.0, 0.0, r], [0.0, 1.0, r]]))
    scores = qd.marginal_scores(sim, mask)
    assert torch.allclose(scores, torch.tensor([[(1 + r) / 3, (1 + r) / 3]]))
    assert torch.allclose(qd.query_diversity(scores), torch.zeros(1), atol=1e-7)  # alike queries
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    scores = qd.marginal_scores(qd.query_text_similarity(opposite, text), mask)
    assert torch.allclose(scores, torch.tensor([[(1 + r) / 3, -(1 + r) / 3]]))
    assert torch.allclose(qd.query_diversity(scores), torch.tensor([(1 + r) / 3]))  # std of +-a = a


def test_diversity_matches_a_direct_loop_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(3, 5, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    d = qd.query_diversity(qd.marginal_scores(qd.query_text_similarity(image, text), mask))
    for i in range(3):
        L = int(mask[i].sum())
        s = []
        for q in range(5):
            a = image[i, q].numpy()
            cos = [a @ text[i, t].numpy() / np.linalg.norm(a) / np.linalg.norm(text[i, t].numpy())
                   for t in range(L)]
            s.append(np.mean(cos))
        assert d[i].item() == pytest.approx(np.std(s), rel=1e-5)
    with pytest.raises(ValueError, match="without tokens"):
        qd.marginal_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3))
    summary = qd.summarize(d, torch.randn(3, 5), torch.zeros(3))
    assert summary["diversity"] == pytest.approx(d.mean().item())
    assert summary["num_samples"] == 3 and summary["num_queries"] == 5


@pytest.fixture(scope="module")
def tiny_xformer():
    cfg, _, _ = loading.model_config("xformer:tiny")
    torch.manual_seed(0)
    return cfg, loading.build_model(cfg)


def test_model_glue_agrees_with_extract_features(tiny_xformer):
    cfg, model = tiny_xformer
    samples = loading.load_samples(cfg, max_images=3)
    assert len(samples) == 3 and samples[0][1].startswith("a ")  # "a <colour> <shape>"
    images = torch.stack([s[0] for s in samples])
    captions = [s[1] for s in samples]
    summary = qd.measure(model, samples, batch_size=2)  # two batches
    img = model.extract_features({"image": images}, mode="image").image_embeds_proj
    txt = model.extract_features({"text_input": captions}, mode="text").text_embeds_proj
    mask = model.tokenize(captions, images.device).attention_mask
    expected = []
    for i in range(3):
        L = int(mask[i].sum())
        s = (img[i] @ txt[i, :L].T).mean(-1)  # both already unit vectors
        expected.append(s.std(unbiased=False).item())
    assert summary["per_sample_diversity"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert summary["diversity"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert len(summary["per_query_mean_score"]) == model.query_tokens.shape[1]


@pytest.mark.slow
def test_query_diversity_command_two_models_side_by_side(tmp_path, capsys):
    out = tmp_path / "qd"
    results = qd.main(["xformer:tiny", "xformer:tiny", "--options", "model.fusion=blip2",
                       "--labels", "A", "B", "--max-images", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    data = json.loads((out / "query_diversity.json").read_text())
    assert [d["label"] for d in data] == ["A", "B"]
    assert data[0]["fusion"] == "blip2" and data[0]["num_samples"] == 2
    assert "no checkpoint" in data[0]["warning"]
    table = printed.splitlines()
    assert table[1].split() == ["model", "A", "B"]
    assert table[3].startswith("diversity D") and "%.4f" % data[1]["diversity"] in table[3]
    assert Image.open(out / "query_diversity.png").size == (1100, 400)
    assert results[0]["diversity"] == data[0]["diversity"]


def test_query_diversity_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ToolError, match="neither ARCH:MODEL_TYPE"):
        loading.model_config("no/such/run")
    with pytest.raises(ToolError, match="holds no checkpoint"):
        loading.model_config(str(tmp_path))
    with pytest.raises(ToolError, match="expected model.KEY=VALUE"):
        loading.model_config("xformer:tiny", ["fusion=blip2"])
    with pytest.raises(ToolError, match="one or two models"):
        qd.run(["xformer:tiny"] * 3, str(tmp_path))
    with pytest.raises(SystemExit) as info:
        qd.main(["xformer_opt:tiny", "--max-images", "1", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "needs a stage-1 model (arch xformer, any fusion)" in capsys.readouterr().err


# ------------------------------------------------------------------ reconstruction grid

def test_reconstruction_panels_mask_and_differ(tiny_xformer):
    cfg, model = tiny_xformer
    images = torch.stack([s[0] for s in loading.load_samples(cfg, max_images=2)])
    panels = recon_grid.reconstruction_panels(model, images, mask_ratio=0.5, seed=3)
    p = model.mae_branch.patch_size
    mask = panels["mask"].bool()
    assert mask.shape == (2, (64 // p) ** 2) and mask.float().mean().item() == 0.5
    from lavis_xformer.nn.mae import patchify

    masked, original = patchify(panels["masked"], p), patchify(panels["original"], p)
    assert torch.all(masked[mask] == recon_grid.GREY)  # grey exactly where the mask says
    assert torch.equal(masked[~mask], original[~mask])
    assert (original[mask] != recon_grid.GREY).any()
    x, m = patchify(panels["xformer"], p), patchify(panels["mae"], p)
    assert torch.allclose(x[~mask], original[~mask]) and torch.allclose(m[~mask], original[~mask])
    assert (x[mask] - m[mask]).abs().mean() > 1e-3  # the two decoder inputs differ
    for key in ("original", "masked", "xformer", "mae"):
        assert panels[key].min() >= 0 and panels[key].max() <= 1
    # the original is the input image un-normalised: CLIP statistics undone
    from lavis_xformer.nn.mae import CLIP_MEAN, CLIP_STD

    direct = (images * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    assert torch.allclose(panels["original"], direct, atol=1e-5)
    # same seed, same mask; without pasting the visible patches are predictions too
    again = recon_grid.reconstruction_panels(model, images, mask_ratio=0.5, seed=3, paste=False)
    assert torch.equal(again["mask"], panels["mask"])
    assert not torch.allclose(patchify(again["xformer"], p)[~mask], original[~mask])


@pytest.mark.slow
def test_reconstruction_grid_command_writes_the_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    recon_grid.main(["xformer:tiny", "--out", str(out), "--num-images", "3", "--scale", "1"])
    assert "wrote" in capsys.readouterr().out
    image = Image.open(out)
    S = 64
    assert image.size == (4 * (S + recon_grid.PAD) + recon_grid.PAD,
                          recon_grid.HEADER + 3 * (S + recon_grid.PAD) + recon_grid.PAD)
    # the masked column of the first row holds grey patches
    tile = np.asarray(image)[recon_grid.HEADER + recon_grid.PAD:][:S, S + 2 * recon_grid.PAD:][:, :S]
    assert (np.abs(tile.astype(int) - 128) <= 1).all(axis=-1).mean() > 0.3
    for argv, message in (
        (["xformer:tiny", "--options", "model.fusion=blip2"], "has no reconstruction path"),
        (["xformer:tiny", "--options", "model.loss_weights.rec=0"], "loss_weights.rec > 0"),
        (["xformer:tiny", "--mask-ratio", "1.5"], "--mask-ratio must be in (0, 1)"),
    ):
        with pytest.raises(SystemExit):
            recon_grid.main(argv + ["--out", str(out), "--num-images", "1"])
        assert message in capsys.readouterr().err
    with pytest.raises(ToolError, match="must name a .png"):
        recon_grid.run("xformer:tiny", str(tmp_path / "grid.jpg"))


# ------------------------------------------------------------------ comparison report

def _job(root, name, model, metrics_files=None, evaluate_txt=None, datasets=None, latest=True):
    job = root / name / "202601010000"
    (job / "result").mkdir(parents=True)
    config = {"run": {"task": "x"}, "model": model, "datasets": datasets or {"x": {}}}
    (job / "log.txt").write_text(json.dumps(config, indent=4) + '\n{"train_lr": "0.1"}\n')
    for fname, data in (metrics_files or {}).items():
        (job / "result" / fname).write_text(json.dumps(data))
    if evaluate_txt:
        (job / "evaluate.txt").write_text("\n".join(json.dumps(l) for l in evaluate_txt) + "\n")
    if latest:
        os.symlink(job.name, root / name / "latest")
    return root / name


def _vqa(acc, yn, num, other, bench="coco_vqa"):
    return {"benchmark": bench, "split": "val", "num_questions": 100, "accuracy": acc, "agg_metrics": acc,
            "per_question_type": {"yes/no": {"num_questions": 40, "accuracy": yn},
                                  "number": {"num_questions": 10, "accuracy": num},
                                  "other": {"num_questions": 50, "accuracy": other}},
            "protocol": {"num_beams": 5}}


def test_paper_numbers_are_the_papers():
    paper = load_paper()
    vqa = {(r["method"], r["llm"]): r["metrics"] for r in paper["VQAv2"]["rows"]}
    assert vqa[("X-Former", "opt6.7b")] == {"accuracy": 55.0, "other": 45.6, "yes/no": 73.3, "number": 37.8}
    assert vqa[("BLIP-2", "opt2.7b")] == {"accuracy": 49.9, "other": 39.3, "yes/no": 71.5, "number": 27.3}
    # the gains the text quotes: +1.4 / +2.6 (VQAv2), +3.5 / +2.7 (OK-VQA), +13.76 OC-COCO
    assert vqa[("X-Former", "opt2.7b")]["accuracy"] - vqa[("BLIP-2", "opt2.7b")]["accuracy"] == pytest.approx(1.4)
    assert vqa[("X-Former", "opt6.7b")]["accuracy"] - vqa[("BLIP-2", "opt6.7b")]["accuracy"] == pytest.approx(2.6)
    table9 = {r["variant"]: r["metrics"]["accuracy"] for b in ("VQAv2", "GQA", "OK-VQA")
              for r in paper[b]["rows"] if "Table 9" in r["table"]}
    assert len(table9) == 2  # concat and early_ca; BLIP-2 / X-Former rows are Table 1/2's
    rows9 = [(b, r["variant"], r["metrics"]["accuracy"]) for b in ("VQAv2", "GQA", "OK-VQA")
             for r in paper[b]["rows"] if "Table 9" in r["table"]]
    assert set(rows9) == {("VQAv2", "concat", 52.3), ("VQAv2", "early_ca", 53.8), ("GQA", "concat", 32.1),
                          ("GQA", "early_ca", 32.7), ("OK-VQA", "concat", 31.9), ("OK-VQA", "early_ca", 31.5)}
    oc = {r["method"]: r["metrics"]["accuracy"] for r in paper["OC-COCO"]["rows"]}
    assert oc["X-Former"] - oc["BLIP-2"] == pytest.approx(13.76)
    for bench in paper.values():
        for row in bench["rows"]:
            assert row["table"] and set(row["metrics"]) <= set(bench["metrics"]), row
            # every table label verified against the text or marked inferred; every LLM inferred
            assert row["table_label"] in ("text", "inferred"), row
            assert row["llm"] is None or row["llm_label"] == "inferred", row
            assert row["setting"] in ("main", "official", "ablation", "large_scale"), row
    # the labels the text gives next to the numbers (main text: "Table 3", "Table 3.1", "Table 3.2")
    tables = {(b, r["method"], r.get("llm")): r for b in paper for r in paper[b]["rows"]}
    assert tables[("VQAv2", "X-Former", "opt6.7b")]["table"].startswith("Table 3 ")
    assert tables[("GQA", "X-Former", "opt6.7b")]["table"].startswith("Table 3.1 ")
    assert tables[("OC-COCO", "X-Former", None)]["table"].startswith("Table 3.1 ")
    # Tables 11 and 12 are the ablation setting: their X-Former row is not the main one
    assert tables[("GQA", "X-Former", None)]["setting"] == "ablation"
    assert tables[("GQA", "X-Former", None)]["metrics"]["accuracy"] == 31.9
    assert {r["setting"] for r in paper["Captioning (loss ablations)"]["rows"]} == {"ablation"}
    assert {r["setting"] for r in paper["Retrieval (loss ablations)"]["rows"]} == {"ablation"}
    assert {r["setting"] for b in ("VQAv2", "GQA", "OK-VQA") for r in paper[b]["rows"]
            if r["method"] == "BLIP-2*"} == {"official"}
    with open(PAPER_RESULTS) as f:
        raw = yaml.safe_load(f)
    assert raw["source"].startswith("Swetha et al.")
    # supplementary Table 7, as printed
    costs = {r["method"]: r["values"] for r in raw["costs"]["rows"]}
    assert costs["BLIP-2"] == {"train time": "39 h", "GPU mem S1": "3.3G", "GPU mem S2": "21G",
                               "FLOPs S1": "3.08T", "FLOPs S2": "17.12T", "inference time": "680 ms"}
    assert costs["X-Former"]["train time"] == "43 h" and costs["X-Former"]["inference time"] == "890 ms"


def test_compare_reads_runs_of_any_variant_and_benchmark(tmp_path, capsys):
    stage2 = {"arch": "xformer_opt", "model_type": "pretrain_opt6.7b"}
    xf = _job(tmp_path, "xf_vqa", dict(stage2, fusion="xformer"), {"val_vqa_metrics.json": _vqa(54.0, 72.0, 35.5, 44.25)})
    b2 = _job(tmp_path, "b2_vqa", dict(stage2, fusion="blip2"), {"val_vqa_metrics.json": _vqa(51.0, 70.0, 30.0, 42.0)})
    # a GQA file carrying its own model entry and two type groups, given as the file itself
    gqa = _job(tmp_path, "xf_gqa", dict(stage2, fusion="xformer"), {"testdev_metrics.json": {
        "benchmark": "GQA", "split": "testdev", "model": dict(stage2, fusion="concat"), "accuracy": 33.0,
        "per_structural_type": {"verify": 60.0, "query": 20.0},
        "per_semantic_type": {"attr": {"accuracy": 30.0}, "rel": {"accuracy": 25.5}}}})
    # a stock LAVIS retrieval job: evaluate.txt only, dataset from the run config
    ret = _job(tmp_path, "ret", {"arch": "xformer", "model_type": "pretrain", "fusion": "xformer",
                                 "loss_weights": {"itc": 1, "itm": 0, "lm": 1, "rec": 1}},
               evaluate_txt=[{"test": {"txt_r1": 1.0}}, {"test": {"txt_r1": 90.5, "txt_r5": 98.0, "img_r1": 80.0,
                                                                  "img_r5": 95.0, "agg_metrics": 1}}],
               datasets={"flickr30k": {}})
    # a caption job with pycocoevalcap's raw scores
    cap = _job(tmp_path, "cap", {"arch": "xformer", "model_type": "pretrain", "fusion_self_attn": False},
               {"test_metrics.json": {"dataset": "coco_caption", "split": "test", "Bleu_4": 0.365, "CIDEr": 1.201}})
    gqa_file = str(gqa / "latest" / "result" / "testdev_metrics.json")
    report, text = compare.compare([str(xf), str(b2 / "latest"), gqa_file, str(ret), str(cap / "latest" / "result")],
                                   str(tmp_path / "out"))
    assert list(report) == ["VQAv2", "GQA", "Flickr30K retrieval", "Captioning (loss ablations)"]
    overall = report["VQAv2"]["tables"]["overall"]
    runs = [r for r in overall["rows"] if r["kind"] == "run"]
    assert [(r["label"], r["values"]["accuracy"]) for r in runs] == [("xformer", 54.0), ("blip2", 51.0)]
    assert runs[0]["model"] == "xformer_opt:pretrain_opt6.7b"
    paper_rows = [r for r in overall["rows"] if r["kind"] == "paper"]
    assert {r["variant"] for r in paper_rows} == {"xformer", "blip2"}  # matching variants only
    assert ("| _paper: X-Former (opt6.7b, 14M)_ | 55.00 | Table 3 (zero-shot VQAv2 val) "
            "[table label: text; LLM: inferred] |") in text
    per_type = report["VQAv2"]["tables"]["question_type"]
    assert per_type["columns"] == ["yes/no", "number", "other"]
    assert per_type["rows"][0]["values"] == {"yes/no": 72.0, "number": 35.5, "other": 44.25}
    # each number's source: a run's metrics file, a paper row's table
    assert "| **xformer** | 72.00 | 35.50 | 44.25 | `%s` |" % runs[0]["source"] in text
    assert runs[0]["source"].endswith("val_vqa_metrics.json")
    assert ("| _paper: BLIP-2 (opt2.7b, 14M)_ | 71.50 | 27.30 | 39.30 | Table 3 (zero-shot VQAv2 val) "
            "[table label: text; LLM: inferred] |") in text
    gqa_tables = report["GQA"]["tables"]
    assert list(gqa_tables) == ["overall", "structural_type", "semantic_type"]
    assert gqa_tables["semantic_type"]["rows"][0]["values"] == {"attr": 30.0, "rel": 25.5}
    assert gqa_tables["overall"]["rows"][0]["label"] == "concat"  # from the file's model entry
    assert {r["variant"] for r in gqa_tables["overall"]["rows"] if r["kind"] == "paper"} == {"concat"}
    retrieval = report["Flickr30K retrieval"]["tables"]["overall"]
    assert retrieval["rows"][0]["label"] == "no_itm"
    assert retrieval["rows"][0]["values"] == {"TR@1": 90.5, "TR@5": 98.0, "IR@1": 80.0, "IR@5": 95.0}
    assert retrieval["columns"][:4] == ["TR@1", "TR@5", "IR@1", "IR@5"]
    caption = report["Captioning (loss ablations)"]["tables"]
    assert caption["overall"]["rows"][0]["label"] == "no_sa"
    assert caption["overall"]["rows"][0]["values"] == {"B@4": pytest.approx(36.5), "CIDEr": pytest.approx(120.1)}
    # the paper's ablation-setting rows are kept apart, in their own table
    assert not any(r["kind"] == "paper" for r in caption["overall"]["rows"])
    apart = caption["overall / ablation"]
    assert [r["values"] for r in apart["rows"]] == [{"B@4": 35.6, "CIDEr": 120}]
    assert "### overall: paper, ablation setting (8 A100s, batch 320 / 272" in text
    assert "## Computational cost (paper, Suppl. Table 7 (computational cost))" in text
    assert "| _paper: X-Former_ | 43 h | 4.6G | 22G | 3.16T | 17.2T | 890 ms |" in text
    for ext in ("md", "png", "json"):
        assert (tmp_path / "out" / ("comparison." + ext)).stat().st_size > 0
    assert (tmp_path / "out" / "comparison.md").read_text() == text
    assert Image.open(tmp_path / "out" / "comparison.png").size[1] == 360 * 8  # 7 panels + 1 apart

    # all rows / no rows of the paper; labels
    report, text = compare.compare([str(xf), str(b2)], str(tmp_path / "o2"), labels=["mine", "base"], mode="all")
    assert len([r for r in report["VQAv2"]["tables"]["overall"]["rows"] if r["kind"] == "paper"]) == 12
    assert "| **mine** |" in text and "| **base** |" in text
    report, text = compare.compare([str(xf)], str(tmp_path / "o3"), mode="none")
    assert "paper:" not in text


def test_compare_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ResultsError, match="no such file or directory"):
        load_run(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ResultsError, match="holds no evaluation results: expected result/\\*_metrics.json"):
        load_run(str(empty))
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ResultsError, match="is not valid JSON"):
        load_run(str(bad))
    nothing = tmp_path / "nothing_metrics.json"
    nothing.write_text(json.dumps({"split": "val", "num_questions": 3}))
    with pytest.raises(ResultsError, match="has no numeric metrics"):
        load_run(str(nothing))
    with pytest.raises(SystemExit) as info:
        compare.main([str(nothing), str(nothing), "--labels", "a", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "--labels gives 1 labels for 2 runs" in capsys.readouterr().err
    # a metrics file alone: no model known, the benchmark from the file name
    lone = tmp_path / "okvqa_metrics.json"
    lone.write_text(json.dumps({"accuracy": 30.0}))
    (result,) = load_run(str(lone))
    assert (result.benchmark, result.variant, result.metrics) == ("OK-VQA", "?", {"accuracy": 30.0})


@pytest.mark.slow
def test_a_training_run_folder_names_its_model(tmp_path):
    """A run's output_dir -> its latest job's highest checkpoint -> the model rebuilt from the
    stored configuration with the checkpoint's weights."""
    from omegaconf import OmegaConf

    cfg, _, _ = loading.model_config("xformer:tiny", ["model.fusion_self_attn=false"])
    torch.manual_seed(0)
    model = loading.build_model(cfg)
    with torch.no_grad():
        model.query_tokens.add_(1.5)
    state = {k: v for k, v in model.state_dict().items()
             if k in dict(model.named_parameters()) and dict(model.named_parameters())[k].requires_grad}
    job = tmp_path / "run" / "202601010000"
    job.mkdir(parents=True)
    saved = {"model": state, "config": {"model": OmegaConf.to_container(cfg)}, "epoch": 1}
    torch.save(saved, job / "checkpoint_1.pth")
    torch.save({"model": {}, "config": {"model": {}}}, job / "checkpoint_0.pth")
    os.symlink(job.name, tmp_path / "run" / "latest")
    loaded_cfg, checkpoint, name = loading.model_config(str(tmp_path / "run"))
    assert checkpoint == str(job / "checkpoint_1.pth") and "checkpoint_1.pth" in name
    assert loaded_cfg.fusion_self_attn is False and loaded_cfg.pretrained == checkpoint
    rebuilt = loading.build_model(loaded_cfg)
    assert torch.equal(rebuilt.query_tokens, model.query_tokens)
    with pytest.raises(ToolError, match="goes with an ARCH:MODEL_TYPE model"):
        loading.model_config(str(tmp_path / "run"), checkpoint=str(job / "checkpoint_1.pth"))
    torch.save({"model": {}}, tmp_path / "foreign.pth")
    with pytest.raises(ToolError, match="has no stored run configuration"):
        loading.model_config(str(tmp_path / "foreign.pth"))


def test_compare_follows_pretrained_back_to_the_stage1_ablation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _job(tmp_path, "s1", {"arch": "xformer", "model_type": "tiny", "fusion": "xformer",
                          "loss_weights": {"itc": 1, "itm": 0, "lm": 1, "rec": 1}})
    _job(tmp_path, "s2", {"arch": "xformer_opt", "model_type": "tiny", "fusion": "xformer",
                          "pretrained": "s1/latest/checkpoint_0.pth", "loss_weights": {"lm": 1, "rec": 0.5}})
    ev = _job(tmp_path, "ev", {"arch": "xformer_opt", "model_type": "tiny", "fusion": "xformer",
                               "pretrained": "s2/latest/checkpoint_0.pth", "loss_weights": {"lm": 1, "rec": 0.5}},
              {"test_vqa_metrics.json": {"split": "test", "accuracy": 10.0}}, datasets={"easyvqa_vqa": {}})
    (result,) = load_run(str(ev))
    assert (result.variant, result.model, result.benchmark) == ("rec_both+no_itm", "xformer_opt:tiny", "easyvqa_vqa")
    monkeypatch.chdir("/")  # elsewhere: found from the job folder's parents
    assert load_run(str(ev))[0].variant == "rec_both+no_itm"
