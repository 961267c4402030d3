"""The stage-1 model `xformer`: losses, gradients, masks, frozen parts, size, bad input."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from _testlib import meta_model, model_config

import lavis_xformer  # noqa: F401  (registers the plugin)
from lavis.common.registry import registry
from lavis.models import load_model
from lavis_xformer.models.base import ImageFeatures
from lavis_xformer.models.sources import WeightSourceError

TEXTS = ["a blue circle", "a red rectangle on the left", "a green triangle", "a gray circle"]


def tiny_cfg(**overrides):
    return model_config("xformer", "tiny", **overrides)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("xformer", "tiny")


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return {"image": torch.randn(4, 3, 64, 64), "text_input": list(TEXTS)}


def run(model, samples, seed=0):
    torch.manual_seed(seed)
    return model(samples)


@pytest.mark.slow
def test_forward_returns_finite_losses_that_sum_to_loss(model, batch):
    model.train()
    out = run(model, batch)
    parts = [out.loss_itc, out.loss_itm, out.loss_lm, out.loss_rec]
    assert all(torch.isfinite(p) and p > 0 for p in parts)
    torch.testing.assert_close(out.loss, sum(parts))


def test_shapes_of_image_path_and_features(model, batch):
    model.eval()
    feats = model.encode_image(batch["image"])
    assert isinstance(feats, ImageFeatures)
    assert feats.context.shape == (4, 1 + 64, 192)  # CLIP tokens: CLS + (64/8)^2 patches
    assert feats.queries.shape == (4, 16, 384)  # 16 queries at the Q-Former width
    assert feats.enriched.shape == (4, 1 + 64, 192) and feats.side.mask.sum() == 0  # no masking at inference
    assert feats.side.tokens.shape == (4, 1 + 64, 192)  # the MAE encoder's tokens (CLS + visible)
    model.train()
    feats = model.encode_image(batch["image"])
    assert feats.enriched.shape == (4, 1 + 32, 192) and feats.side.mask.sum() == 4 * 32  # ratio 0.5
    model.eval()
    feats = model.extract_features(batch, mode="image")
    assert feats.image_embeds_proj.shape == (4, 16, 128)
    feats = model.extract_features(batch, mode="text")
    assert feats.text_embeds_proj.shape == (4, 16, 128)  # max_txt_len
    feats = model.extract_features(batch, mode="multimodal")
    assert feats.multimodal_embeds.shape == (4, 16, 384)


def test_loss_weights_scale_the_parts():
    torch.manual_seed(0)
    model = registry.get_model_class("xformer").from_config(
        tiny_cfg(loss_weights={"itc": 1.0, "itm": 0.0, "lm": 2.0, "rec": 0.5}))
    model.train()
    torch.manual_seed(1)
    out = run(model, {"image": torch.randn(4, 3, 64, 64), "text_input": TEXTS})
    assert out.loss_itm == 0
    torch.testing.assert_close(out.loss, out.loss_itc + 2 * out.loss_lm + 0.5 * out.loss_rec)
    with pytest.raises(ValueError, match="unknown keys \\['itg'\\]"):
        registry.get_model_class("xformer").from_config(tiny_cfg(loss_weights={"itg": 1.0}))


@pytest.mark.slow
def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    run(model, batch).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and
               (p.grad is None or p.grad.abs().sum() == 0)]
    # text-only embeddings rows of unused tokens get zero grad; every module gets some.
    no_grad = [n for n in no_grad if "word_embeddings" not in n]
    assert not no_grad, no_grad
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad
    frozen = {n for n, _ in model.named_parameters()} - trainable
    assert all(n.startswith(("visual_encoder.", "mae_branch.")) for n in frozen)
    assert any(n.startswith("visual_encoder.") for n in frozen)
    assert any(n.startswith("mae_branch.mae.decoder.") for n in frozen)
    assert all(not n.startswith(("visual_encoder.", "mae_branch.")) for n in trainable)
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_frozen_weights_bit_identical_after_an_optimizer_step(batch):
    torch.manual_seed(0)
    model = load_model("xformer", "tiny")
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                              weight_decay=0.05)
    run(model, batch).loss.backward()
    optim.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert not torch.equal(model.fusion.query_block.mlp.fc1.weight,
                           trainable["fusion.query_block.mlp.fc1.weight"])
    # frozen MAE and CLIP ViT stay in eval mode under model.train()
    assert not model.mae_branch.mae.training and not model.visual_encoder.training


@pytest.mark.slow
def test_itc_image_features_do_not_depend_on_the_text(model, batch):
    model.train()
    captured = []
    hook = model.vision_proj.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    try:
        run(model, batch)
        other = dict(batch, text_input=["something else entirely"] * 4)
        run(model, other)
    finally:
        hook.remove()
    torch.testing.assert_close(captured[0], captured[1])


def test_itg_logits_at_position_t_ignore_later_tokens(model, batch):
    model.eval()
    with torch.no_grad():
        feats = model.encode_image(batch["image"])
        image_embeds, enhanced = feats.context, feats.queries
        tokens = model.tokenize(TEXTS, "cpu")
        ids = tokens.input_ids.clone()
        ids[:, 0] = model.tokenizer.bos_token_id
        labels = ids.masked_fill(ids == 0, -100)
        a = model.text_pass(ids, tokens.attention_mask, enhanced, image_embeds, labels).logits
        changed = ids.clone()
        changed[:, 3:] = model.tokenizer.convert_tokens_to_ids("zebra")
        b = model.text_pass(changed, tokens.attention_mask, enhanced, image_embeds, labels).logits
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_itm_sees_the_text(model, batch):
    model.eval()
    with torch.no_grad():
        feats = model.encode_image(batch["image"])
        image_embeds, enhanced = feats.context, feats.queries
        outputs = []
        for text in (TEXTS, ["zebra zebra"] * 4):
            tokens = model.tokenize(text, "cpu")
            hidden = model.text_pass(tokens.input_ids, tokens.attention_mask, enhanced, image_embeds)
            outputs.append(model.itm_head(hidden[:, :16]).mean(1))
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.slow
def test_every_loss_changes_when_only_the_mae_input_changes(batch):
    torch.manual_seed(0)
    model = load_model("xformer", "tiny")
    model.train()
    before = run(model, batch, seed=3)
    with torch.no_grad():  # a different frozen MAE encoder; CLIP, text and seeds unchanged
        model.mae_branch.mae.vit.layernorm.bias.add_(0.5)
    after = run(model, batch, seed=3)
    for name in ("loss_itc", "loss_itm", "loss_lm", "loss_rec"):
        assert not torch.isclose(before[name], after[name]), name


@pytest.mark.slow
def test_generate_returns_one_string_per_image_and_caption(model, batch):
    model.eval()
    images = {"image": batch["image"][:2]}
    captions = model.generate(images, num_beams=3, max_length=8, min_length=2)
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    sampled = model.generate(images, use_nucleus_sampling=True, num_captions=3, max_length=8, min_length=2)
    assert len(sampled) == 6


def test_pretrain_type_on_meta_device_has_the_paper_size():
    model = meta_model("xformer", "pretrain")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fusion = sum(p.numel() for p in model.fusion.parameters())
    # BLIP-2's stage-1 Q-Former is 186.7M; the paper's X-Former module adds about 22M.
    assert 205e6 <= trainable <= 216e6, trainable
    assert 186.0e6 <= trainable - fusion <= 187.5e6
    mae = sum(p.numel() for p in model.mae_branch.parameters())
    assert 650e6 < mae < 665e6  # ViT-H encoder + 8-layer 512-d decoder
    assert model.visual_encoder.num_features == 1408 and len(model.visual_encoder.blocks) == 39


@pytest.mark.parametrize("key", ["qformer_weights", "clip_vit_weights", "mae_weights", "pretrained"])
def test_missing_weight_path_is_one_clear_error(key, tmp_path):
    missing = str(tmp_path / "nowhere" / "weights.pth")
    with pytest.raises(WeightSourceError) as err:
        registry.get_model_class("xformer").from_config(tiny_cfg(**{key: missing}))
    assert f"model.{key}=" in str(err.value) and missing in str(err.value)


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    corrupt = tmp_path / "eva_vit_g.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightSourceError, match=f"model.clip_vit_weights: {corrupt} is truncated or not a torch checkpoint"):
        registry.get_model_class("xformer").from_config(tiny_cfg(clip_vit_weights=str(corrupt)))


def test_random_init_loads_nothing(tmp_path):
    cfg = tiny_cfg(random_init=True, qformer_weights=str(tmp_path / "absent"))
    registry.get_model_class("xformer").from_config(cfg)  # the bad path is never touched


def test_bad_samples_get_clear_errors(model, batch):
    model.train()
    with pytest.raises(ValueError, match="is 32x32 but this model takes 64x64"):
        model({"image": torch.randn(2, 3, 32, 32), "text_input": TEXTS[:2]})
    with pytest.raises(KeyError, match="samples has no 'text_input'"):
        model({"image": batch["image"]})
    with pytest.raises(ValueError, match="4 images but 2 texts"):
        model({"image": batch["image"], "text_input": TEXTS[:2]})
    with pytest.raises(ValueError, match="must be a \\(B, 3, H, W\\) tensor"):
        model({"image": torch.randn(3, 64, 64), "text_input": TEXTS[:1]})


def test_one_sample_check_serves_both_stages():
    from lavis_xformer.models.base import check_samples

    image = torch.zeros(2, 3, 8, 8)
    got, texts = check_samples({"image": image, "text_input": ("a", "b")}, 8)
    assert got is image and texts == ["a", "b"]
    assert check_samples({"image": image[:1], "text_input": "one"}, 8)[1] == ["one"]
    with pytest.raises(KeyError, match="samples has no 'image' \\(keys: \\['text_input'\\]\\)"):
        check_samples({"text_input": ["a"]}, 8)
    with pytest.raises(ValueError, match="is 8x8 but this model takes 16x16"):
        check_samples({"image": image, "text_input": ["a", "b"]}, 16)


def test_unknown_model_type_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown model type 'huge' for 'xformer'; available: \\['mini', 'pretrain', 'tiny'\\]"):
        load_model("xformer", "huge")


def test_unknown_fusion_is_a_clear_error():
    with pytest.raises(ValueError, match="model.fusion='sum' is out of range; allowed: one of 'xformer'"):
        registry.get_model_class("xformer").from_config(tiny_cfg(fusion="sum"))


@pytest.mark.slow
def test_checkpoint_round_trip_through_pretrained_key(tmp_path, batch):
    torch.manual_seed(0)
    model = load_model("xformer", "tiny")
    trainable = {n: p for n, p in model.state_dict().items()
                 if n in dict(model.named_parameters()) and dict(model.named_parameters())[n].requires_grad}
    path = tmp_path / "checkpoint_0.pth"
    torch.save({"model": copy.deepcopy(trainable)}, path)
    torch.manual_seed(123)
    restored = registry.get_model_class("xformer").from_config(tiny_cfg(pretrained=str(path)))
    for name, value in trainable.items():
        assert torch.equal(restored.state_dict()[name], value), name


@pytest.mark.slow
def test_load_model_and_preprocess_in_a_fresh_offline_process():
    code = (
        "import lavis_xformer, torch\n"
        "from PIL import Image\n"
        "from lavis.models import load_model_and_preprocess\n"
        "m, vis, txt = load_model_and_preprocess('xformer', 'tiny', is_eval=True)\n"
        "img = vis['eval'](Image.new('RGB', (80, 60), 'red')).unsqueeze(0)\n"
        "assert img.shape == (1, 3, 64, 64), img.shape\n"
        "print(len(m.generate({'image': img}, max_length=6, min_length=2)))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "1"


def test_model_config_fields_are_the_keys_of_the_model_yamls():
    """Every ``model.*`` key of the plugin's model-type yamls is a field of ``ModelConfig``
    (models/config.py), the one schema that config_keys.py derives the known model keys from
    (tests/test_model_schema.py: the yamls state only what differs from its defaults)."""
    import dataclasses
    import glob

    from omegaconf import OmegaConf

    from lavis_xformer import PACKAGE_DIR
    from lavis_xformer.models.config import ModelConfig

    lavis_own = {"arch", "model_type", "load_pretrained", "load_finetuned", "finetuned"}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for path in glob.glob(os.path.join(PACKAGE_DIR, "configs", "models", "*.yaml")):
        keys = set(OmegaConf.load(path).model) - lavis_own
        assert keys <= fields, (os.path.basename(path), sorted(keys - fields))
    # read once: no model file reads the config by key any more
    for path in glob.glob(os.path.join(PACKAGE_DIR, "models", "*.py")):
        with open(path) as f:
            assert "cfg.get(" not in f.read().replace("task_cfg.get(", ""), path
