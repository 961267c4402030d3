"""Stage 2: `xformer_opt` and `xformer_t5` losses, labels, checkpoints, decoding and size."""
import random

import pytest
import torch

from _testlib import build_model, meta_model

import lavis_xformer  # noqa: F401
from lavis.common.registry import registry
from lavis.models import load_model

CAPTIONS = ["a blue circle", "a red rectangle on the left of the image", "a green triangle"]


def build(name, model_type="tiny", **overrides):
    return build_model(name, model_type, 0, **overrides)


@pytest.fixture(scope="module")
def opt():
    torch.manual_seed(0)
    return load_model("xformer_opt", "tiny")


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


@pytest.mark.slow
def test_loss_is_finite_and_gradients_reach_only_xformer_and_projection(opt, images):
    opt.train()
    opt.zero_grad(set_to_none=True)
    out = opt({"image": images, "text_input": CAPTIONS})
    assert torch.isfinite(out["loss"]) and "loss_rec" not in out
    out["loss"].backward()
    trainable = [n for n, p in opt.named_parameters() if p.requires_grad]
    assert trainable and all(
        n.startswith(("Qformer.", "query_tokens", "ln_vision.", "fusion.", "llm_proj.")) for n in trainable)
    assert [n for n in trainable if dict(opt.named_parameters())[n].grad is None] == []
    assert all(p.grad is None for n, p in opt.named_parameters() if not p.requires_grad)
    # the Q-Former's text-only parts and the reconstruction head are gone
    assert opt.Qformer.cls is None and opt.Qformer.bert.embeddings.word_embeddings is None
    assert opt.fusion.mae_out is None and opt.mae_branch.mae.decoder is None
    opt.zero_grad(set_to_none=True)


def test_labels_mask_queries_prompt_and_padding(images):
    model = build("xformer_opt", prompt="a photo of")
    model.train()
    seen = {}

    def capture(module, args, kwargs):
        seen.update(kwargs)

    hook = model.llm_model.register_forward_pre_hook(capture, with_kwargs=True)
    model({"image": images, "text_input": CAPTIONS})
    hook.remove()
    labels, mask = seen["labels"], seen["attention_mask"]
    nq = model.query_tokens.shape[1]
    tok = model.llm_tokenizer
    assert (labels[:, :nq] == -100).all()
    plen = len(tok("a photo of").input_ids)
    assert (labels[:, nq:nq + plen] == -100).all()
    for i, caption in enumerate(CAPTIONS):
        ids = tok("a photo of" + caption + "\n").input_ids
        text = labels[i, nq + plen:nq + len(ids)]
        assert text.tolist() == ids[plen:]  # the caption and its newline are predicted
        assert (labels[i, nq + len(ids):] == -100).all()  # padding
        assert mask[i, nq + len(ids):].sum() == 0


@pytest.mark.slow
def test_stage1_checkpoint_round_trips_into_stage2(tmp_path, caplog):
    stage1 = build("xformer")
    trainable = {n for n, p in stage1.named_parameters() if p.requires_grad}
    state = {k: v for k, v in stage1.state_dict().items() if k in trainable}
    path = tmp_path / "checkpoint_8.pth"
    torch.save({"model": state}, path)
    with caplog.at_level("INFO"):
        stage2 = build("xformer_opt", pretrained=str(path))
    s2 = stage2.state_dict()
    shared = [k for k in state if k in s2]
    assert any(k.startswith("fusion.query_block") for k in shared)
    assert any(k.startswith("Qformer.bert.encoder.layer.0.crossattention") for k in shared)
    for key in shared:
        assert torch.equal(s2[key], state[key]), key
    left_out = set(state) - set(s2)  # stage-1 heads and text parts, which stage 2 drops
    assert "itm_head.weight" in left_out and "Qformer.cls.predictions.bias" in left_out
    assert "fusion.mae_out.1.weight" in left_out
    assert any("Ignored" in r.message and "not in the model" in r.message for r in caplog.records)
    # the stage-1 parts stage 2 does not build are ignored deliberately; a key that fits no
    # part of the model, built or left out, is named
    assert not any("fit no part" in r.message for r in caplog.records)
    torch.save({"model": dict(state, **{"renamed_block.weight": torch.zeros(1)})}, path)
    caplog.clear()
    with caplog.at_level("INFO"):
        build("xformer_opt", pretrained=str(path))
    strays = [r.message for r in caplog.records if "fit no part" in r.message]
    assert len(strays) == 1 and "renamed_block.weight" in strays[0] and "holds 1 tensors" in strays[0]


def test_missing_stage1_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "output" / "checkpoint_8.pth"
    with pytest.raises(Exception, match=f"model.pretrained='{missing}': no such file"):
        build("xformer_opt", pretrained=str(missing))


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_and_predict_answers_return_strings_of_the_right_count(opt, images, num_beams):
    opt.eval()
    captions = opt.generate({"image": images}, num_beams=num_beams, max_length=5)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    if num_beams > 1:
        several = opt.generate({"image": images}, num_beams=num_beams, num_captions=2, max_length=5)
        assert len(several) == 6
    answers = opt.predict_answers(
        {"image": images, "text_input": ["what color?", "what shape is it?", "is it red?"]},
        num_beams=num_beams, max_len=4)
    assert len(answers) == 3 and all(isinstance(a, str) and "\n" not in a for a in answers)


def test_left_padded_batch_answers_equal_one_by_one(opt, images):
    opt.eval()
    questions = ["what?", "what color is the shape in this image?", "is there a circle?"]
    batch = opt.predict_answers({"image": images, "text_input": questions}, num_beams=3, max_len=5)
    single = [opt.predict_answers({"image": images[i:i + 1], "text_input": [q]}, num_beams=3, max_len=5)[0]
              for i, q in enumerate(questions)]
    assert batch == single


def test_predict_answers_uses_the_paper_prompt_and_rejects_rank_mode(opt, images):
    seen = {}
    original = opt.decode

    def spy(image, prompts, **kwargs):
        seen["prompts"], seen["kwargs"] = prompts, kwargs
        return ["blue\nmore text"] * len(prompts)

    opt.decode = spy
    try:
        answers = opt.predict_answers({"image": images[:1], "text_input": ["what color?"]})
    finally:
        opt.decode = original
    assert seen["prompts"] == ["Question: what color? Short Answer:"]
    assert seen["kwargs"]["num_beams"] == 5 and seen["kwargs"]["length_penalty"] == 0
    assert answers == ["blue"]  # cut at the newline
    with pytest.raises(ValueError, match="inference_method='rank' is not supported"):
        opt.predict_answers({"image": images[:1], "text_input": ["q"]}, inference_method="rank")


def test_reconstruction_can_be_switched_on_in_stage2(images):
    model = build("xformer_opt", **{"loss_weights": {"lm": 1.0, "rec": 1.0}, "mask_ratio": 0.5})
    model.train()
    out = model({"image": images, "text_input": CAPTIONS})
    assert torch.isfinite(out["loss_rec"]) and out["loss_rec"] > 0
    torch.testing.assert_close(out["loss"], out["loss_lm"] + out["loss_rec"])
    # one output type per stage, read by name or by key (XFormerOutput's counterpart)
    assert out.loss is out["loss"] and out.loss_rec is out["loss_rec"]
    with pytest.raises(ValueError, match="needs masked patches"):
        build("xformer_opt", **{"loss_weights": {"lm": 1.0, "rec": 1.0}, "mask_ratio": 0.0})


def test_stage2_checks_samples_as_stage1_and_keeps_its_llm_in_eval_mode(images):
    model = build("xformer_opt")
    # a random LLM is built in train mode and frozen without switching it (freeze(eval_now=False)),
    # as it always was; the first train() puts it, like every frozen part, in eval mode
    assert model.llm.training
    model.train()
    assert model.Qformer.training and not model.llm.training and not model.mae_branch.mae.training
    with pytest.raises(KeyError, match="samples has no 'image'"):
        model({"text_input": CAPTIONS})
    with pytest.raises(KeyError, match="samples has no 'text_input'"):
        model({"image": images})
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        model({"image": images, "text_input": CAPTIONS[:2]})
    with pytest.raises(ValueError, match="is 32x32 but this model takes 64x64"):
        model({"image": torch.randn(3, 3, 32, 32), "text_input": CAPTIONS})


def test_t5_trains_with_prefix_lm_and_answers(images):
    model = build("xformer_t5")
    model.train()
    out = model({"image": images, "text_input": CAPTIONS})
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.llm_proj.weight.grad is not None
    assert all(p.grad is None for p in model.llm_model.parameters())
    vqa = model({"image": images, "text_input": ["q1", "q2", "q3"], "text_output": ["a", "b", "c"]})
    assert torch.isfinite(vqa["loss"])
    model.eval()
    answers = model.predict_answers({"image": images, "text_input": ["what?", "which?", "is it?"]},
                                    num_beams=3, max_len=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_prefix_split_keeps_every_word_and_a_nonempty_suffix():
    rng = random.Random(0)
    split = registry.get_model_class("xformer_t5").split_prefix
    for _ in range(20):
        prefix, suffix = split("a b c d", rng)
        assert suffix and (prefix + " " + suffix).strip() == "a b c d"


@pytest.mark.parametrize("n_words", [1, 2, 3, 4, 7, 10])
def test_t5_prefix_split_point_runs_from_the_start_to_the_middle(n_words):
    """The paper (supplementary section 3): "a random value from start to middle of sentence
    is picked to divide the caption": prefix lengths 0..floor(n/2), each drawn."""
    words = ["w%d" % i for i in range(n_words)]
    rng = random.Random(0)
    split = registry.get_model_class("xformer_t5").split_prefix
    seen = set()
    for _ in range(400):
        prefix, suffix = split(" ".join(words), rng)
        k = len(prefix.split())
        assert prefix.split() == words[:k] and suffix.split() == words[k:]
        seen.add(k)
    assert seen == set(range(n_words // 2 + 1))


@pytest.mark.parametrize("model_type,paper", [("pretrain_opt2.7b", 129e6), ("pretrain_opt6.7b", 130e6)])
def test_full_size_stage2_trainable_parameters_match_the_paper(model_type, paper):
    model = meta_model("xformer_opt", model_type)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(trainable - paper) / paper < 0.03, trainable
    frozen_llm = sum(p.numel() for p in model.llm_model.parameters())
    assert frozen_llm > 2.5e9


def test_random_frozen_parts_are_the_same_in_every_build():
    """Checkpoints hold trainable weights only, so random frozen parts (tiny types) must be
    a function of the config: stage 1, stage 2 and evaluation see the same encoders and LLM."""
    torch.manual_seed(1)
    stage1 = load_model("xformer", "tiny")
    torch.manual_seed(2)
    stage2 = load_model("xformer_opt", "tiny")
    torch.manual_seed(3)
    again = load_model("xformer_opt", "tiny")
    s1, s2, s3 = stage1.state_dict(), stage2.state_dict(), again.state_dict()
    frozen = [k for k in s2 if k.startswith(("visual_encoder.", "mae_branch.", "llm_model."))]
    assert any(k.startswith("llm_model.") for k in frozen)
    for key in frozen:
        assert torch.equal(s2[key], s3[key]), key
        if key in s1:
            assert torch.equal(s1[key], s2[key]), key
    assert not torch.equal(s2["llm_proj.weight"], s3["llm_proj.weight"])  # trainable: global RNG


@pytest.mark.parametrize("name", ["xformer_opt", "xformer_t5"])
def test_generation_uses_the_cache_and_matches_the_uncached_result(name, images):
    """LAVIS 1.0.2's generation classes drop transformers 4.26's cache (lavis_patches/generation_cache.py)."""
    model = load_model(name, "tiny") if name == "xformer_t5" else build(name)
    model.eval()
    seen = []
    target = model.llm_model.decoder if name == "xformer_t5" else model.llm_model.model.decoder
    hook = target.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("past_key_values") is not None), with_kwargs=True)
    try:
        cached = model.generate({"image": images[:2]}, num_beams=3, max_length=6, min_length=6)
    finally:
        hook.remove()
    assert seen[0] is False and len(seen) > 2 and all(seen[1:])  # every later step reuses the cache
    uncached = model.decode(images[:2], [model.prompt] * 2, num_beams=3, max_new_tokens=6,
                            min_length=6, use_cache=False)
    assert cached == uncached
