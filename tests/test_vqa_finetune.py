"""VQA fine-tuning (issue 15 point 2, paper supplementary section 2): the question in the
Q-Former, one drawn answer as the target with the loss on it alone, only the CLIP ViT's
LayerNorms unfrozen in the ViT, position embeddings interpolated for larger images, and the
recipe run through lavis.train on LAVIS's own VQA train format."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

import lavis_xformer  # noqa: F401  (registers the plugin)
from _testlib import REPO, build_model
from lavis.common.registry import registry
from lavis_xformer.models.generation import format_prompts

PROMPT = "Question: {} Short Answer:"


def build(seed=0, **overrides):
    """A tiny stage-2 model (xformer_opt)."""
    return build_model("xformer_opt", "tiny", seed, **overrides)


@pytest.fixture(scope="module")
def model():
    return build(qformer_text_input=True, unfreeze_vit_layernorm=True, prompt=PROMPT).eval()


@pytest.mark.slow
def test_question_goes_through_the_qformer_as_in_lavis_instruct(model):
    torch.manual_seed(0)
    image = torch.randn(2, 3, 64, 64)
    questions = ["is the circle red?", "what shape is it?"]
    with torch.no_grad():
        prefix, _ = model.visual_prefix(image, qformer_text=questions)
        # direct: LAVIS's blip2_t5_instruct forward with qformer_text_input, then the fusion
        tok = model.qformer_tokenizer(questions, padding="longest", truncation=True,
                                      max_length=model.max_txt_len, return_tensors="pt")
        clip = model.encode_clip(image)
        query = model.query_tokens.expand(2, -1, -1)
        out = model.Qformer.bert(tok.input_ids, attention_mask=torch.cat(
            [torch.ones(query.shape[:2], dtype=torch.long), tok.attention_mask], dim=1),
            query_embeds=query, encoder_hidden_states=clip,
            encoder_attention_mask=torch.ones(clip.shape[:2], dtype=torch.long),
            return_dict=True).last_hidden_state[:, : query.shape[1]]
        mae = model.encode_side(image, 0.0)
        enhanced, _ = model.fusion(out, mae.tokens.float())
        assert torch.allclose(prefix, model.llm_proj(enhanced), atol=1e-5)
        other, _ = model.visual_prefix(image, qformer_text=["how many?", "is it blue?"])
        assert not torch.allclose(prefix, other)
    # the Q-Former keeps its text parts; without the flag stage 2 strips them (as BLIP-2)
    assert model.Qformer.bert.embeddings.word_embeddings is not None
    assert build().Qformer.bert.embeddings.word_embeddings is None


def test_predict_answers_feeds_the_question_to_the_qformer(model, monkeypatch):
    seen = []
    original = model.visual_prefix
    monkeypatch.setattr(model, "visual_prefix", lambda image, mask_ratio=None, qformer_text=None:
                        seen.append(qformer_text) or original(image, mask_ratio, qformer_text))
    model.predict_answers({"image": torch.randn(1, 3, 64, 64), "text_input": ["is it red?"]},
                          num_beams=2, max_len=2)
    assert seen == [["is it red?"]]


def test_one_answer_is_drawn_by_weight_per_question():
    cls = registry.get_model_class("xformer_opt")
    # LAVIS's VQADataset.collater: answers flat, their weights, n_answers per question
    samples = {"text_input": ["q1", "q2"], "answer": ["yes", "no", "two", "2", "3"],
               "weight": torch.tensor([0.7, 0.3, 0.5, 0.25, 0.25]), "n_answers": torch.tensor([2, 3])}
    rng = torch.Generator().manual_seed(0)
    draws = [cls.vqa_targets(samples, rng)[1] for _ in range(4000)]
    first = np.mean([d[0] == "yes" for d in draws])
    second = {a: np.mean([d[1] == a for d in draws]) for a in ("two", "2", "3")}
    assert abs(first - 0.7) < 0.03 and abs(second["two"] - 0.5) < 0.03 and abs(second["3"] - 0.25) < 0.03
    assert all(d[0] in ("yes", "no") and d[1] in ("two", "2", "3") for d in draws)
    assert cls.vqa_targets({"text_input": ["q"], "answer": ["red"]}) == (["q"], ["red"])
    assert cls.vqa_targets({"text_input": ["a caption"]}) is None  # caption data: stage 2 as before


def test_vqa_loss_is_on_the_answer_tokens_only(model):
    torch.manual_seed(1)
    image = torch.randn(2, 3, 64, 64)
    samples = {"image": image, "text_input": ["is it red?", "what shape?"], "answer": ["yes", "circle"]}
    loss = model(samples)["loss"]
    # direct: [prefix; "Question: q Short Answer: a\n"], labels on " a\n" only
    prefix, _ = model.visual_prefix(image, qformer_text=samples["text_input"])
    tok = model.llm_tokenizer
    total, count = 0.0, 0
    for i, (q, a) in enumerate(zip(samples["text_input"], samples["answer"])):
        prompt = PROMPT.format(q)
        ids = tok(prompt + " " + a + "\n", return_tensors="pt").input_ids
        n_prompt = len(tok(prompt).input_ids)
        embeds = model.llm_model.get_input_embeddings()(ids)
        logits = model.llm_model(inputs_embeds=torch.cat([prefix[i:i + 1], embeds], 1)).logits[0]
        start = prefix.shape[1] + n_prompt  # first answer token
        targets = ids[0, n_prompt:]
        total = total + F.cross_entropy(logits[start - 1:-1], targets, reduction="sum")
        count += len(targets)
    assert torch.allclose(loss, total / count, atol=1e-5)
    assert format_prompts(["q"], PROMPT) == ["Question: q Short Answer:"]


@pytest.mark.slow
def test_only_the_clip_layernorms_train_in_the_vit(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    vit = {n for n in trainable if n.startswith("visual_encoder.")}
    norms = {"visual_encoder." + n + "." + p for n, m in model.visual_encoder.named_modules()
             if isinstance(m, torch.nn.LayerNorm) for p in ("weight", "bias")}
    assert vit == norms and norms
    assert not any(n.startswith(("mae_branch.", "llm_model.")) for n in trainable)
    model.train()
    out = model({"image": torch.randn(2, 3, 64, 64), "text_input": ["q1", "q2"], "answer": ["a", "b"]})
    out["loss"].backward()
    assert all(model.get_parameter(n).grad is not None for n in norms)
    model.zero_grad(set_to_none=True)
    model.eval()
    frozen = build()
    assert not any(p.requires_grad for p in frozen.visual_encoder.parameters())
    with pytest.raises(ValueError, match="does not work with model.use_grad_checkpoint"):
        build(unfreeze_vit_layernorm=True, use_grad_checkpoint=True)


@pytest.mark.slow
def test_larger_images_interpolate_clip_and_mae_position_embeddings(tmp_path):
    small = build(qformer_text_input=True)
    clip_file = tmp_path / "clip.pth"
    torch.save(small.visual_encoder.state_dict(), clip_file)
    small.mae_branch.mae.save_pretrained(tmp_path / "mae")
    big = build(image_size=96, clip_vit_weights=str(clip_file), mae_weights=str(tmp_path / "mae"),
                qformer_text_input=True, unfreeze_vit_layernorm=True)

    def direct(pos, grid):  # bicubic on the patch grid, CLS kept (as LAVIS's interpolate_pos_embed)
        g = int((pos.shape[1] - 1) ** 0.5)
        patches = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)

    assert big.visual_encoder.pos_embed.shape[1] == 1 + 12 * 12
    assert torch.allclose(big.visual_encoder.pos_embed, direct(small.visual_encoder.pos_embed, 12), atol=1e-6)
    mae_small, mae_big = small.mae_branch.mae, big.mae_branch.mae
    assert torch.allclose(mae_big.vit.embeddings.position_embeddings,
                          direct(mae_small.vit.embeddings.position_embeddings, 12), atol=1e-6)
    assert mae_big.config.image_size == 96 and big.mae_branch.image_size == 96
    out = big.train()({"image": torch.randn(2, 3, 96, 96), "text_input": ["q1", "q2"], "answer": ["a", "b"]})
    assert torch.isfinite(out["loss"])
    with pytest.raises(Exception, match="not a multiple of the MAE's patch size"):
        build(image_size=100, clip_vit_weights=str(clip_file), mae_weights=str(tmp_path / "mae"))


# ----------------------------------------------------------------- through lavis.train

def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(48, 48, 3), dtype=np.uint8)).save(path)


@pytest.mark.slow  # about 50 s on 2 CPU cores
def test_tiny_finetune_project_trains_on_lavis_vqa_files(tmp_path, monkeypatch):
    """projects/xformer/tiny/vqa_finetune.yaml with LAVIS's VQAv2 and VG train formats (the
    files of projects/xformer/vqa_finetune.yaml) in place of easy-VQA."""
    from lavis_xformer import train
    from lavis_xformer.training.run_files import load_run_file

    root = tmp_path / "data"
    coco = [{"question_id": i, "question": "what color is it %d?" % i, "image": "val2014/%d.jpg" % i,
             "answer": ["red"] * 6 + ["blue"] * 4, "dataset": "vqa"} for i in range(3)]
    vg = [{"question_id": 10 + i, "question": "where is it?", "image": "vg/%d.jpg" % i,
           "answer": "on the table", "dataset": "vg"} for i in range(2)]
    (root / "ann").mkdir(parents=True)
    (root / "ann" / "vqa_train.json").write_text(json.dumps(coco[:2]))
    (root / "ann" / "vqa_val.json").write_text(json.dumps(coco[2:]))
    (root / "ann" / "vg_qa.json").write_text(json.dumps(vg))
    for i in range(3):
        _image(root / "coco" / "val2014" / ("%d.jpg" % i), i)
    for i in range(2):
        _image(root / "vg" / "vg" / ("%d.jpg" % i), 10 + i)
    # the tiny stage-1 and stage-2 weights the recipe starts from
    torch.save({"model": build_model("xformer", "tiny", seed=0).state_dict()}, tmp_path / "s1.pth")
    torch.save({"model": build(seed=1).state_dict()}, tmp_path / "s2.pth")

    cfg = load_run_file(str(REPO / "projects/xformer/tiny/vqa_finetune.yaml"))
    cfg.model.pretrained = [str(tmp_path / "s1.pth"), str(tmp_path / "s2.pth")]
    processor = cfg.datasets.easyvqa_vqa
    cfg.datasets = {
        "coco_vqa_train": {"build_info": {"annotations": {"train": {"storage": [
            str(root / "ann" / "vqa_train.json"), str(root / "ann" / "vqa_val.json")]}},
            "images": {"storage": str(root / "coco")}},
            "vis_processor": processor.vis_processor, "text_processor": processor.text_processor},
        "vg_vqa_train": {"build_info": {"annotations": {"train": {"storage": str(root / "ann" / "vg_qa.json")}},
                                        "images": {"storage": str(root / "vg")}},
                         "vis_processor": processor.vis_processor, "text_processor": processor.text_processor}}
    cfg.run.update(batch_size_train=2, output_dir=str(tmp_path / "out"))
    OmegaConf.save(cfg, tmp_path / "ft.yaml")
    monkeypatch.chdir(tmp_path)
    train.main(["--cfg-path", str(tmp_path / "ft.yaml")])
    ckpt = torch.load(tmp_path / "out" / "latest" / "checkpoint_0.pth", map_location="cpu")
    saved = set(ckpt["model"])
    assert "visual_encoder.blocks.0.norm1.weight" in saved  # the unfrozen CLIP LayerNorms
    assert "visual_encoder.blocks.0.attn.qkv.weight" not in saved
    assert "Qformer.bert.embeddings.word_embeddings.weight" in saved  # question input parts
    # nothing frozen (LAVIS's checkpoint keeps the OPT head tied to the frozen embeddings)
    assert not any(k.startswith(("mae_branch.", "llm_model.")) for k in saved - {"llm_model.lm_head.weight"})
    log = (tmp_path / "out" / "latest" / "log.txt").read_text()
    assert '"train_loss"' in log
