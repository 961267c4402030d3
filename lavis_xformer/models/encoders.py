"""Builders for the pretrained parts, each from a configurable weight source (see sources.py).

LAVIS 1.0.2 hard-codes these sources (``bert-base-uncased`` from the hub in
``Blip2Base.init_tokenizer``/``init_Qformer``, a URL in ``create_eva_vit_g``); the plugin builds
the same modules itself so that every source is a config key and ``random_init`` loads nothing.
"""
import logging
from functools import partial

import torch
from torch import nn

from lavis_xformer.lavis_patches.eva_vit_meta import linspace_on_cpu
from lavis_xformer.models import sources


def build_eva_vit(c) -> nn.Module:
    """LAVIS's EVA ViT (``lavis.models.eva_vit.VisionTransformer``) at the configured size.

    The pretrain type uses ViT-g with 39 of its 40 blocks, i.e. features from the
    second-to-last layer, as BLIP-2 and the paper do.
    """
    from lavis.models.eva_vit import VisionTransformer, interpolate_pos_embed

    vit = c.vit
    source = None if c.random_init else sources.resolve("clip_vit_weights", c.clip_vit_weights)
    with linspace_on_cpu(), sources.random_weights(c.random_seed, "clip_vit"):
        model = VisionTransformer(
            img_size=c.image_size,
            patch_size=vit.get("patch_size"),
            use_mean_pooling=False,
            embed_dim=vit.get("embed_dim"),
            depth=vit.get("depth"),
            num_heads=vit.get("num_heads"),
            mlp_ratio=vit.get("mlp_ratio"),
            qkv_bias=True,
            drop_path_rate=c.drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_checkpoint=c.use_grad_checkpoint,
        )
    if source is None:
        logging.info("CLIP ViT: random weights (model.clip_vit_weights is null or random_init)")
        return model
    state_dict = sources.load_checkpoint_file("clip_vit_weights", source)
    with sources.loading("clip_vit_weights", source):
        interpolate_pos_embed(model, state_dict)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} ViT weights, e.g. {missing[:3]}")
    return model


def mae_config(c):
    from transformers import ViTMAEConfig

    return ViTMAEConfig(image_size=c.image_size, **c.mae)


def build_mae(c, encoder: bool = True, decoder: bool = True) -> nn.Module:
    """transformers' ``ViTMAEForPreTraining``, e.g. facebook/vit-mae-huge, holding the parts the
    model uses: the encoder (``.vit``) unless ``encoder`` is False (the CLIP ViT stands in), the
    decoder (``.decoder``) unless ``decoder`` is False (no reconstruction loss); an unused part
    is None.

    Both parts come from one source as one model: the released weights are one
    ``from_pretrained`` checkpoint, and random weights are drawn for the whole model under the
    config's seed, so that a part has the same values whichever parts a stage keeps (stage 1
    and stage 2 of a tiny run share their frozen MAE).
    """
    model = _load_mae(c)
    if not encoder:
        model.vit = None
    if not decoder:
        model.decoder = None
    return model


def _load_mae(c) -> nn.Module:
    from transformers import ViTMAEForPreTraining

    source = None if c.random_init else sources.resolve("mae_weights", c.mae_weights)
    if source is None:
        logging.info("MAE: random weights (model.mae_weights is null or random_init)")
        with sources.random_weights(c.random_seed, "mae"):
            return ViTMAEForPreTraining(mae_config(c))
    with sources.loading("mae_weights", source):
        model = ViTMAEForPreTraining.from_pretrained(source)
    if model.config.image_size != c.image_size:
        image_size, patch = c.image_size, model.config.patch_size
        if image_size % patch:
            raise sources.WeightSourceError(
                f"model.image_size {image_size} is not a multiple of the MAE's patch size "
                f"{patch} (model.mae_weights={source!r}); use e.g. {image_size // patch * patch}"
            )
        logging.info("MAE: position embeddings interpolated from %dpx to %dpx",
                     model.config.image_size, image_size)
        resize_mae_positions(model, image_size)
    return model


def interpolate_grid(pos, grid):
    """Position embeddings (1, 1 + g*g, D) -> (1, 1 + grid*grid, D): the patch positions
    resized bicubically on their square grid, the CLS position kept, as LAVIS's
    ``eva_vit.interpolate_pos_embed`` does for the CLIP ViT."""
    import torch.nn.functional as F

    cls, patches = pos[:, :1], pos[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    if old * old != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position embeddings do not form a square grid")
    if old == grid:
        return pos
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).flatten(1, 2).to(pos.dtype)
    return torch.cat([cls, patches], dim=1)


@torch.no_grad()
def resize_mae_positions(mae, image_size: int):
    """Make a loaded ``ViTMAEForPreTraining`` take ``image_size`` images (the paper's 490 px VQA
    fine-tuning): the encoder's and the decoder's (fixed, frozen) position embeddings are
    interpolated to the new patch grid and the config follows."""
    grid = image_size // mae.config.patch_size
    emb = mae.vit.embeddings
    emb.position_embeddings = nn.Parameter(interpolate_grid(emb.position_embeddings, grid),
                                           requires_grad=False)
    emb.patch_embeddings.image_size = (image_size, image_size)
    emb.patch_embeddings.num_patches = grid * grid
    decoder = mae.decoder
    decoder.decoder_pos_embed = nn.Parameter(interpolate_grid(decoder.decoder_pos_embed, grid),
                                             requires_grad=False)
    mae.config.image_size = image_size
    return mae


def qformer_config(c, vision_width: int):
    from lavis.models.blip2_models.Qformer import BertConfig

    config = BertConfig(**c.qformer)
    config.encoder_width = vision_width
    config.add_cross_attention = True
    config.cross_attention_freq = c.cross_attention_freq
    config.query_length = c.num_query_token
    return config


QFORMER_TEXT = ("all", "encoder", "none")


def build_qformer(c, vision_width: int, load_weights: bool = True, text: str = "all"):
    """LAVIS's Q-Former (``BertLMHeadModel`` with cross-attention every N-th layer).

    The text embeddings get one extra row for the ``[DEC]`` token the tokenizer adds, and the
    query FFNs start as copies of the text FFNs, as in ``Blip2Qformer``. ``load_weights``:
    False when a checkpoint loaded next holds the Q-Former (then BERT is not loaded).
    ``text`` says which text parts the model uses: "all" (stage 1: text encoder and LM head),
    "encoder" (text read beside the queries: no LM head), "none" (the query pass alone, as
    BLIP-2's stage 2: no LM head, word and position embeddings or text FFNs). The others are
    not kept (``text_parts_unbuilt`` names their keys); they are part of the BERT checkpoint
    and the query FFNs are initialised from the text FFNs, so they are dropped here, after
    loading, and never reach the model.
    Returns ``(qformer, query_tokens)``.
    """
    if text not in QFORMER_TEXT:
        raise ValueError(f"Q-Former text parts {text!r} is not one of {QFORMER_TEXT}")
    # LAVIS's class with the generation cache passed on (lavis_patches/generation_cache.py)
    from lavis_xformer.lavis_patches.generation_cache import BertLMHeadModel

    config = qformer_config(c, vision_width)
    source = None
    if load_weights and not c.random_init:
        source = sources.resolve("qformer_weights", c.qformer_weights)
    if source is None:
        logging.info("Q-Former: random weights (model.qformer_weights is null or random_init)")
        qformer = BertLMHeadModel(config)
    else:
        with sources.loading("qformer_weights", source):
            qformer = BertLMHeadModel.from_pretrained(source, config=config)
    add_token_rows(qformer, 1)  # + [DEC]
    state_dict = qformer.state_dict()
    for name, param in qformer.named_parameters():
        if "_query" in name:
            param.data.copy_(state_dict[name.replace("_query", "")])
    query_tokens = nn.Parameter(torch.zeros(1, config.query_length, config.hidden_size))
    query_tokens.data.normal_(mean=0.0, std=config.initializer_range)
    if text != "all":
        qformer.cls = None
    if text == "none":
        qformer.bert.embeddings.word_embeddings = None
        qformer.bert.embeddings.position_embeddings = None
        for layer in qformer.bert.encoder.layer:
            layer.output = None
            layer.intermediate = None
    return qformer, query_tokens


def text_parts_unbuilt(text: str, num_layers: int) -> tuple:
    """Names (state-dict key prefixes) of the Q-Former parts ``build_qformer(text=...)`` leaves out,
    whose weights a checkpoint of a stage that has them (stage 1) may hold."""
    if text == "all":
        return ()
    prefixes = ("Qformer.cls",)
    if text == "none":
        prefixes += ("Qformer.bert.embeddings.word_embeddings",
                     "Qformer.bert.embeddings.position_embeddings")
        for i in range(num_layers):
            prefixes += (f"Qformer.bert.encoder.layer.{i}.output",
                         f"Qformer.bert.encoder.layer.{i}.intermediate")
    return prefixes


def add_token_rows(qformer, count: int) -> None:
    """Grow the Q-Former's vocabulary by ``count`` tokens, in place.

    Gives what ``resize_token_embeddings`` gave in transformers 4.26, without calling it
    (newer releases mean-initialise the new rows from a covariance, which fails on the meta
    device, and no longer pad the LM head's bias): a new word-embedding table whose first
    rows are the old ones and whose new rows are drawn as the Q-Former initialises weights
    (same random draws as 4.26), the LM head's weight tied to it and its bias, still the
    very parameter ``cls.predictions.bias`` (LAVIS ties ``decoder.bias`` to it), padded
    with zeros.
    """
    old = qformer.get_input_embeddings()
    rows, dim = old.weight.shape
    new = nn.Embedding(rows + count, dim)
    new.to(old.weight.device, dtype=old.weight.dtype)
    qformer._init_weights(new)
    new.weight.data[:rows] = old.weight.data
    qformer.set_input_embeddings(new)
    qformer.config.vocab_size = rows + count
    head = qformer.cls.predictions
    head.decoder.weight = new.weight
    head.decoder.out_features = rows + count
    head.bias.data = nn.functional.pad(head.bias.data, (0, count))
    head.decoder.bias = head.bias


def build_tokenizer(tokenizer: str):
    """BERT tokenizer from ``model.tokenizer`` with ``[DEC]`` added as BOS (id = vocab size)."""
    from transformers import BertTokenizer

    source = sources.resolve("tokenizer", tokenizer)
    if source is None:
        raise sources.WeightSourceError(
            "model.tokenizer is null; set it to a BERT vocab (hub name or local directory)"
        )
    with sources.loading("tokenizer", source):
        tokenizer = BertTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer
