"""The paper's baselines and ablations as model-config keys (issue 5, points 1-3 and 7).

``fusion: blip2 | concat | early_ca | xformer`` in stage 1 and stage 2, ``mae_source``,
``loss_weights``, ``freeze_fusion``; BLIP-2 against stock LAVIS; paper-size parameter counts;
the ablation project files.
"""
import copy
import glob
import os

import pytest
import torch

from _testlib import build_model, meta_model
import torch.distributed as dist

import lavis_xformer  # noqa: F401  (registers the plugin)

TEXTS = ["a blue circle", "a red rectangle on the left"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("xformer", "blip2", "concat", "early_ca")


def build(name="xformer", model_type="tiny", seed=0, **overrides):
    return build_model(name, model_type, seed, **overrides)


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def unused_after_backward(model):
    """Trainable parameters without a gradient (word-embedding rows of unseen tokens aside)."""
    return [n for n, p in trainable(model).items()
            if (p.grad is None or not p.grad.abs().sum()) and "word_embeddings" not in n]


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


# ----------------------------------------------------------------- every variant, both stages

@pytest.mark.slow
@pytest.mark.parametrize("fusion", VARIANTS)
def test_variant_trains_in_stage1_and_stage2_and_answers(fusion, images, tmp_path):
    stage1 = build(fusion=fusion)
    stage1.train()
    out = stage1({"image": images, "text_input": TEXTS})
    assert all(torch.isfinite(out[k]) for k in ("loss", "loss_itc", "loss_itm", "loss_lm"))
    out.loss.backward()
    assert unused_after_backward(stage1) == []
    assert all(p.grad is None for p in stage1.parameters() if not p.requires_grad)
    stage1.eval()
    assert len(stage1.generate({"image": images}, num_beams=2, max_length=5, min_length=2)) == 2
    # ITM/ITG query prefix: the fused queries for X-Former, the learned tokens otherwise (BLIP-2)
    with torch.no_grad():
        queries = stage1.encode_image(images).queries
    prefix = stage1.text_prefix(queries)
    if fusion == "xformer":
        assert prefix is queries
    else:
        assert torch.equal(prefix, stage1.query_tokens.expand(2, -1, -1))

    state = {k: v for k, v in stage1.state_dict().items() if k in trainable(stage1)}
    path = tmp_path / "checkpoint_8.pth"
    torch.save({"model": state}, path)
    stage2 = build("xformer_opt", fusion=fusion, pretrained=str(path), seed=5)
    s2 = stage2.state_dict()
    loaded = [k for k in trainable(stage2) if k != "llm_proj.weight" and k != "llm_proj.bias"]
    assert loaded and all(k in state and torch.equal(s2[k], state[k]) for k in loaded)
    stage2.train()
    loss = stage2({"image": images, "text_input": TEXTS})["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert unused_after_backward(stage2) == []
    stage2.eval()
    answers = stage2.predict_answers({"image": images, "text_input": ["what?", "which?"]},
                                     num_beams=2, max_len=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_blip2_builds_and_loads_no_mae():
    model = build(fusion="blip2", mae_weights="/nonexistent/mae")  # never read
    assert model.mae_branch is None
    assert not any("mae" in k for k in model.state_dict())
    assert not any(k.startswith("fusion.") for k in model.state_dict())


def test_concat_and_early_ca_put_the_mae_tokens_into_the_qformer_context(images):
    for fusion in ("concat", "early_ca"):
        model = build(fusion=fusion)
        model.eval()
        with torch.no_grad():
            feats = model.encode_image(images)
            queries = feats.queries
            assert feats.context.shape == (2, 65 + 65, 192) and feats.enriched is None  # [CLIP; MAE]
            assert feats.side.mask.sum() == 0  # the MAE sees the whole image
            model.mae_branch.mae.vit.layernorm.bias.add_(0.5)  # another frozen MAE
            changed = model.encode_image(images).queries
        assert not torch.allclose(queries, changed), fusion
    # one MAE block per Q-Former layer without CLIP cross-attention, inside the Q-Former
    layers = model.Qformer.bert.encoder.layer
    assert [layer.mae_block is not None for layer in layers] == [False, True] * 3
    assert all(layer.has_cross_attention == (layer.mae_block is None) for layer in layers)


def test_unknown_variant_keys_are_clear_errors():
    with pytest.raises(ValueError, match="model.mae_source='dino' is out of range; allowed: one of 'mae'"):
        build(mae_source="dino")
    with pytest.raises(ValueError, match="needs model.clip_layer_index"):
        build(mae_source="clip_layer")
    with pytest.raises(ValueError, match="clip_layer_index=9 is outside 1..2"):
        build(mae_source="clip_layer", clip_layer_index=9)
    with pytest.raises(ValueError, match="model.fusion='blip2' uses no MAE features"):
        build(fusion="blip2", mae_source="clip_layer", clip_layer_index=1)


# ----------------------------------------------------------------- BLIP-2 equals stock LAVIS

def stock_blip2_qformer(model):
    """LAVIS's own Blip2Qformer around deep copies of ``model``'s modules (no download)."""
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer

    stock = Blip2Qformer.__new__(Blip2Qformer)
    torch.nn.Module.__init__(stock)
    for name in ("visual_encoder", "ln_vision", "Qformer", "vision_proj", "text_proj", "itm_head"):
        setattr(stock, name, copy.deepcopy(getattr(model, name)))
    stock.query_tokens = copy.deepcopy(model.query_tokens)
    stock.temp = copy.deepcopy(model.temp)
    stock.tokenizer = model.tokenizer
    stock.max_txt_len = model.max_txt_len
    stock.load_state_dict(model.state_dict(), strict=False)  # the same weights, checked below
    for key, value in stock.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    return stock


@pytest.fixture
def one_process_group(tmp_path):
    """Blip2Qformer.forward calls torch.distributed.get_rank() unconditionally."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.slow
def test_blip2_losses_equal_stock_lavis_blip2(images, one_process_group, monkeypatch):
    """Same weights, same inputs: ITC, ITM (with the same negatives) and ITG equal LAVIS's.

    Random numbers are used differently in two places, both handled here: the ITM negatives
    are drawn with one multinomial call per direction (LAVIS: one per sample), so the draw is
    made deterministic (the hardest negative) for both; and in training mode our ITG re-runs
    the query prefix where LAVIS reuses the query pass's cached keys/values, so dropout is drawn
    afresh; the comparison runs in eval mode (no dropout), where the two are the same function.
    Measured: ITM is bit-identical; ITC and ITG agree to float rounding (2e-7 relative), as
    ITC's similarity is an einsum here and a matmul in LAVIS, and ITG's query prefix is
    recomputed inside the [queries; text] pass here (other matrix shapes, same mask) where
    LAVIS feeds the cached keys/values of the query pass.
    """
    model = build(fusion="blip2")
    stock = stock_blip2_qformer(model)
    model.eval()
    stock.eval()
    monkeypatch.setattr(torch, "multinomial", lambda w, n: w.argmax(dim=-1, keepdim=True))
    samples = {"image": images, "text_input": TEXTS}
    with torch.no_grad():
        ours = model(samples)
        theirs = stock(samples)
    for name in ("loss_itc", "loss_itm", "loss_lm"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- ablations

@pytest.mark.slow
def test_no_reconstruction_with_unmasked_mae_leaves_nothing_unused(images):
    model = build(**{"loss_weights": {"itc": 1.0, "itm": 1.0, "lm": 1.0, "rec": 0.0}, "mask_ratio": 0.0})
    assert model.mae_branch.mae.decoder is None and model.fusion.mae_out is None
    model.train()
    out = model({"image": images, "text_input": TEXTS})
    assert out.loss_rec == 0
    assert model.encode_image(images).side.mask.sum() == 0  # the MAE sees every patch while training
    out.loss.backward()
    assert unused_after_backward(model) == []


@pytest.mark.slow
@pytest.mark.parametrize("off", [("itc",), ("itm", "lm")])
def test_switched_off_loss_freezes_its_head(off, images):
    """Without ITC its projections still mine ITM's negatives, so they are frozen, not dropped."""
    heads = {"itc": "vision_proj.weight", "itm": "itm_head.weight",
             "lm": "Qformer.cls.predictions.transform.dense.weight"}
    model = build(loss_weights={"itc": 1.0, "itm": 1.0, "lm": 1.0, "rec": 1.0, **{k: 0.0 for k in off}})
    assert {heads[k] for k in off}.isdisjoint(trainable(model))
    assert set(heads.values()) - {heads[k] for k in off} <= set(trainable(model))
    model.train()
    out = model({"image": images, "text_input": TEXTS})
    out.loss.backward()
    assert unused_after_backward(model) == []
    assert all(out[f"loss_{k}"] == 0 for k in off if k != "itc")


def test_clip_layer_features_stand_in_for_the_mae(images):
    model = build(mae_source="clip_layer", clip_layer_index=1)
    assert model.mae_branch is None and model.fusion.mae_out is None  # no reconstruction
    model.train()
    out = model({"image": images, "text_input": TEXTS})
    assert out.loss_rec == 0
    out.loss.backward()
    assert unused_after_backward(model) == []
    model.eval()
    with torch.no_grad():
        side = model.encode_side(images, 0.0).tokens
        torch.testing.assert_close(side, model.visual_encoder.get_intermediate_layers(images)[0])
        q1 = model.encode_image(images).queries
        model.clip_layer_index = 2
        q2 = model.encode_image(images).queries
    assert side.shape == (2, 65, 192) and not torch.allclose(q1, q2)


def test_clip_encoder_with_the_mae_decoder(images):
    model = build(mae_source="clip")
    assert model.mae_branch.mae.vit is None and model.mae_branch.mae.decoder is not None
    assert model.fusion.mae_in.in_features == 192  # CLIP width in
    assert model.fusion.mae_out[1].out_features == 192  # MAE width out, to its decoder
    model.train()
    torch.manual_seed(2)
    out = model({"image": images, "text_input": TEXTS})
    assert out.loss_rec > 0
    side = model.encode_image(images).side
    assert side.tokens.shape == (2, 1 + 32, 192) and side.mask.sum() == 2 * 32  # masked CLIP input
    out.loss.backward()
    assert unused_after_backward(model) == []


def test_reconstruction_in_stage2_is_ignored_by_variants_without_it(images):
    model = build("xformer_opt", fusion="concat", mask_ratio=0.5,
                  **{"loss_weights": {"lm": 1.0, "rec": 1.0}})
    assert model.rec_weight == 0 and model.mask_ratio == 0 and model.mae_branch.mae.decoder is None
    model.train()
    assert "loss_rec" not in model({"image": images, "text_input": TEXTS})


def test_frozen_fusion_in_stage2_trains_only_the_projection(images):
    model = build("xformer_opt", freeze_fusion=True)
    assert set(trainable(model)) == {"llm_proj.weight", "llm_proj.bias"}
    model.train()
    assert not model.Qformer.training and not model.fusion.training  # no dropout either
    model({"image": images, "text_input": TEXTS})["loss"].backward()
    assert unused_after_backward(model) == []
    with pytest.raises(ValueError, match="freeze_fusion: true leaves the reconstruction loss"):
        build("xformer_opt", freeze_fusion=True, mask_ratio=0.5, **{"loss_weights": {"lm": 1.0, "rec": 1.0}})


# ----------------------------------------------------------------- paper size

@pytest.mark.parametrize("fusion,paper", [("blip2", 108e6), ("concat", 110e6), ("early_ca", 183e6),
                                          ("xformer", 130e6)])
def test_paper_size_stage2_trainable_parameters_match_table_9(fusion, paper):
    """Table 9 counts stage 2 with OPT-6.7B (its 108M/130M rows are the OPT-6.7B rows of
    Table 3; OPT-2.7B gives 107M/129M)."""
    model = meta_model("xformer_opt", "pretrain_opt6.7b", fusion=fusion)
    count = sum(p.numel() for p in trainable(model).values())
    assert abs(count - paper) / paper < 0.05, count
    assert (model.mae_branch is None) == (fusion == "blip2")


# ----------------------------------------------------------------- project files

def test_ablation_project_files_exist_for_both_stages_and_parse():
    files = sorted(glob.glob(os.path.join(ROOT, "projects/xformer/ablations/*.yaml")))
    names = {os.path.basename(f)[: -len(".yaml")] for f in files}
    for variant in ("blip2", "concat", "early_ca", "xformer", "no_rec", "rec_both", "frozen_fusion",
                    "clip_layer26", "clip_recon", "no_sa", "no_itc", "no_itm", "no_itg", "no_hflip"):
        stages = {n for n in names if n.startswith(variant + "_stage")}
        assert stages, variant
    from lavis_xformer.training.run_files import load_run_file

    for path in files:
        cfg = load_run_file(path)  # the file with its `includes:` (base/stage<N>.yaml) resolved
        name = os.path.basename(path)[: -len(".yaml")]
        stage = name.rsplit("_", 1)[1]
        assert cfg.run.task == "xformer_pretrain" and cfg.run.runner == "runner_xformer", name
        assert cfg.run.output_dir == f"output/xformer/ablations/{name}", name
        if stage == "stage2":
            assert cfg.model.arch == "xformer_opt" and cfg.run.max_epoch == 1 and cfg.run.min_lr == 5e-5
            first = name[: -len("stage2")] + "stage1"
            if first + ".yaml" not in {os.path.basename(f) for f in files}:
                first = "xformer_stage1"  # stage-2-only ablations start from X-Former's stage 1
            assert cfg.model.pretrained == f"output/xformer/ablations/{first}/latest/checkpoint_8.pth"
        else:
            assert cfg.model.arch == "xformer" and cfg.run.max_epoch == 9
