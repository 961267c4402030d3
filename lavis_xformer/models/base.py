"""What every X-Former model shares: the frozen encoders, the Q-Former query pass and the fusion.

    image --(frozen CLIP ViT, ln_vision)--> image_embeds (B, 1+N, Dc)
    image --(side encoder)----------------> side tokens M (B, Nm, Dm): the frozen MAE encoder
                                            on the visible patches (``mae_source``)
    fusion.context(image_embeds, M) ------> Q-Former cross-attention context C
    query tokens --(Q-Former, C)----------> queries Q (B, Nq, D)
    fusion(Q, M) -------------------------> output queries Q' (B, Nq, D), enriched tokens Z

The variant is chosen by ``model.fusion``, the name of its class in ``nn.fusions.FUSIONS``
(built by ``build_fusion``); the model only asks the fusion object (``uses_mae``, ``context``, ``fused_prefix``,
``reconstructs``), never the variant's name:

    xformer   X-Former (section 2.3): C = CLIP tokens; Q' from the dual cross-attention block.
    blip2     BLIP-2: no MAE branch at all; Q' = Q.
    concat    Concat (Fig. 1b): C = [CLIP; Linear(MAE)] along the tokens; Q' = Q.
    early_ca  Early cross-attention (Fig. 1c): C = [CLIP; Linear(MAE)]; the Q-Former's layers
              without CLIP cross-attention get MAE cross-attention blocks (nn/fusions.py,
              models/early_ca.py).

``model.mae_source`` says what stands in the MAE encoder's place (paper's ablations):

    mae         the frozen MAE encoder (default).
    clip_layer  the frozen CLIP ViT's features after block ``clip_layer_index`` (1-based), whole
                image, no reconstruction (Section 3.3 "Leveraging Early Layer CLIP features").
    clip        the frozen CLIP ViT run on the visible patches of the masked image; its tokens go
                through the fusion and the frozen MAE decoder (supplementary Table 12 row 1).

Without a reconstruction path (blip2, concat, early_ca, clip_layer) or with its weight at 0 the
MAE decoder and the fusion's reconstruction head are not built, so no trainable parameter goes
unused; variants that cannot reconstruct also never mask the MAE input.

Stage 1 (``xformer``) adds the text losses and the reconstruction; stage 2 (``xformer_opt``,
``xformer_t5``) feeds Q' to a frozen LLM through one linear layer.
"""
import dataclasses
import logging
import os
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from lavis.models.blip2_models.blip2 import Blip2Base, LayerNorm

from lavis_xformer.models import early_ca, encoders, fp8, shared_kv, sources
from lavis_xformer.models.compiled import compile_modules
from lavis_xformer.models.config import ModelConfig
from lavis_xformer.models.fused_attention import use_fused_attention
from lavis_xformer.nn import MAEBranch, MAEEncoding, freeze, random_patch_mask
from lavis_xformer.nn.fusions import FUSIONS, FusionShape


@dataclasses.dataclass
class ImageFeatures:
    """What ``XFormerBase.encode_image`` returns (B images, Nq queries).

    context: (B, Nc, Dc) the Q-Former's cross-attention input: the CLIP tokens, with the
        projected MAE tokens appended for concat/early_ca (what the ITM/ITG passes attend to).
    queries: (B, Nq, D) the output queries: the enhanced queries Q' for X-Former, the
        Q-Former's query output for the other variants.
    enriched: (B, 1 + N_visible, Dm) the enriched MAE tokens for the MAE decoder, or None
        (no reconstruction path).
    side: the side encoder's output (``MAEEncoding``: tokens, mask, ids_restore, pixels), or
        None without MAE.
    """

    context: torch.Tensor
    queries: torch.Tensor
    enriched: Optional[torch.Tensor]
    side: Optional[MAEEncoding]


def build_fusion(c: ModelConfig, qformer, side_dim: int, clip_dim: int, clip_tokens: int,
                 decoder_dim: int, reconstruct: bool = True):
    """The module that fuses the Q-Former with the side (MAE) tokens: the class that
    ``nn.fusions.FUSIONS`` names for ``model.fusion``, with the blocks it puts inside
    ``qformer``'s layers installed (early_ca). ``reconstruct``: build X-Former's head to the
    MAE decoder (``decoder_dim`` wide), only when a reconstruction loss uses it.
    """
    shape = FusionShape(qformer.config.hidden_size, side_dim, clip_dim, clip_tokens, decoder_dim,
                        reconstruct, tuple(layer.has_cross_attention for layer in qformer.bert.encoder.layer))
    fusion = FUSIONS[c.fusion].build(shape, c)
    blocks = fusion.qformer_blocks(shape, c)
    if blocks is not None:
        early_ca.install(qformer, blocks, clip_tokens)
    return fusion


_FROZEN_INFERENCE_MODE = [True]


@contextmanager
def frozen_encoders_under_no_grad():
    """Within this block ``run_frozen`` uses ``torch.no_grad`` instead of inference mode, for
    tools that trace operations (PyTorch's dispatch modes, e.g. FLOP counters, do not see
    operations run under inference mode)."""
    _FROZEN_INFERENCE_MODE.append(False)
    try:
        yield
    finally:
        _FROZEN_INFERENCE_MODE.pop()


def build_clip(c: ModelConfig):
    """The CLIP ViT (fp16 on GPU with ``vit_precision: fp16``, frozen unless
    ``freeze_vit: false``) and the trained LayerNorm on its output, as BLIP-2 has them."""
    vit = encoders.build_eva_vit(c)
    if c.vit_precision in ("fp16", "fp8") and torch.cuda.is_available():
        from lavis.models.eva_vit import convert_weights_to_fp16

        convert_weights_to_fp16(vit)
    ln_vision = LayerNorm(vit.num_features)
    if c.freeze_vit:
        vit = freeze(vit)
        if c.unfreeze_vit_layernorm:
            # VQA fine-tuning (paper, supplementary section 2): only the CLIP ViT's LayerNorms
            # train; the ViT stays in eval mode (it has no dropout or drop-path to switch).
            for module in vit.modules():
                if isinstance(module, nn.LayerNorm):
                    for param in module.parameters():
                        param.requires_grad = True
    if c.vit_precision == "fp8":
        fp8.convert_to_fp8(vit)  # the linear layers; patch embedding and norms stay fp16
    return vit, ln_vision


def build_mae_branch(c: ModelConfig, encoder: bool = True, decoder: bool = True) -> MAEBranch:
    """The frozen MAE branch (``nn.mae.MAEBranch``) over ``encoders.build_mae(c, encoder,
    decoder)``, in ``mae_precision`` (fp16/fp8 on GPU): the one way the MAE is loaded, by the
    models and by the miniature world's probes."""
    branch = MAEBranch(encoders.build_mae(c, encoder=encoder, decoder=decoder))
    # Frozen, so half precision loses nothing trainable; the decoder stays differentiable.
    if c.mae_precision in ("fp16", "fp8") and torch.cuda.is_available():
        branch.mae.half()
    if c.mae_precision == "fp8" and branch.mae.vit is not None:
        fp8.convert_to_fp8(branch.mae.vit)  # the encoder; the decoder keeps fp16
    return branch


def run_frozen(module: nn.Module, fn, *args):
    """``fn(*args)`` under ``torch.inference_mode`` (no autograd bookkeeping at all) when no
    parameter of the frozen ``module`` trains. Tensors in the result (also inside a
    dataclass) are cloned out of inference mode, so that trained layers can save them for
    backward: a tensor made under inference mode cannot enter autograd, its clone can."""
    if any(p.requires_grad for p in module.parameters()):
        return fn(*args)  # a trained ViT (freeze_vit: false)
    if not _FROZEN_INFERENCE_MODE[-1]:
        with torch.no_grad():
            return fn(*args)
    if torch.is_inference_mode_enabled():
        return fn(*args)
    with torch.inference_mode():
        result = fn(*args)
    return _clone_out(result)


def _clone_out(value):
    if torch.is_tensor(value):
        return value.clone() if value.is_inference() else value
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _clone_out(getattr(value, f.name))
                                            for f in dataclasses.fields(value)})
    return value


def check_image(image, image_size: int):
    """A clear error unless ``image`` is a (B, 3, image_size, image_size) tensor."""
    if not torch.is_tensor(image) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(f"samples['image'] must be a (B, 3, H, W) tensor, got {shape}")
    if image.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"samples['image'] is {image.shape[-2]}x{image.shape[-1]} but this model takes "
            f"{image_size}x{image_size}; use the model's image processors "
            f"(load_model_and_preprocess) or set image_size in the processor config"
        )


def check_text(samples, key="text_input") -> list:
    """The texts of ``samples[key]`` as a list (one string becomes a list of one), or a clear
    error when the key is missing."""
    if key not in samples:
        raise KeyError(
            f"samples has no {key!r} (keys: {sorted(samples)}); this model needs a text "
            f"per image, e.g. from a LAVIS caption dataset with a text processor"
        )
    text = samples[key]
    return [text] if isinstance(text, str) else list(text)


def check_samples(samples, image_size: int) -> tuple:
    """(image, texts) of a training batch, the one check of both stages' ``forward``: an
    ``image`` key holding a (B, 3, image_size, image_size) tensor and B texts in
    ``text_input``; else a clear error."""
    if "image" not in samples:
        raise KeyError(f"samples has no 'image' (keys: {sorted(samples)})")
    texts = check_text(samples)
    image = samples["image"]
    check_image(image, image_size)
    if len(texts) != image.shape[0]:
        raise ValueError(f"{image.shape[0]} images but {len(texts)} texts in samples")
    return image, texts


def ones(tokens):
    """An all-ones attention mask for (B, N, D) tokens."""
    return torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)


def query_pass(qformer, query_tokens, context, text_tokens=None):
    """The Q-Former's query pass, as BLIP-2 runs it: the learned ``query_tokens`` (1, Nq, D)
    cross-attend to ``context`` (B, Nc, Dc); returns the query outputs (B, Nq, D).

    ``text_tokens`` (BERT tokens with ``input_ids`` and ``attention_mask``, (B, L)): text the
    Q-Former reads beside the queries (LAVIS's ``qformer_text_input``); [queries; text] share
    the self-attention (bi-directional) and only the query outputs are returned.
    """
    queries = query_tokens.expand(context.shape[0], -1, -1)
    text = {}
    if text_tokens is not None:
        text = dict(input_ids=text_tokens.input_ids, attention_mask=torch.cat(
            [ones(queries), text_tokens.attention_mask], dim=1))
    return qformer.bert(
        query_embeds=queries,
        encoder_hidden_states=context,
        encoder_attention_mask=ones(context),
        return_dict=True,
        **text,
    ).last_hidden_state[:, : queries.shape[1]]


class PluginModel:
    """LAVIS's model-type lookup, ``from_config`` and checkpoint loaders for every model of the
    plugin: model types map to the yaml files in ``PRETRAINED_MODEL_CONFIG_DICT``;
    ``model.pretrained`` is loaded after building, and ``load_checkpoint`` /
    ``load_from_pretrained`` load the same way (``sources.load_pretrained``)."""

    PRETRAINED_MODEL_CONFIG_DICT = {}

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(
                f"Unknown model type {model_type!r} for {cls.registered_name()!r}; available: "
                f"{sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}"
            )
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def registered_name(cls):
        from lavis.common.registry import registry

        names = [k for k, v in registry.mapping["model_name_mapping"].items() if v is cls]
        return names[0] if names else cls.__name__

    # the losses the model has and their default weights (config.py); None: no loss weights
    LOSSES = None

    @classmethod
    def from_config(cls, cfg):
        """Build from a model config; ``pretrained`` (a checkpoint path or URL) is then loaded
        non-strictly and what was loaded, missing and ignored is logged."""
        model = cls(cfg)
        c = model.model_config
        sources.load_pretrained(model, c.pretrained, c.allow_partial_pretrained)
        return model

    # Defect: LAVIS's public loaders (BaseModel.load_checkpoint, which load_model(checkpoint=)
    # and load_checkpoint_from_config call, and Blip2Base.load_from_pretrained) call torch.load
    # themselves: a file could run code, and a refusal surfaced as torch's raw error. Here they
    # take model.pretrained's path: the safe reader, its refusal message and its fit checks.
    def load_checkpoint(self, url_or_filename):
        """Load a checkpoint file or URL non-strictly, as ``model.pretrained`` is loaded
        (``sources.load_pretrained``); returns the missing and unexpected keys."""
        return self._load_weights(url_or_filename, "load_checkpoint")

    def load_from_pretrained(self, url_or_filename):
        """As ``load_checkpoint``."""
        return self._load_weights(url_or_filename, "load_from_pretrained")

    @classmethod
    def init_vision_encoder(cls, *args, **kwargs):
        # Defect: Blip2Base.init_vision_encoder downloads EVA ViT-g from a fixed URL into a cache
        # keyed by file name and reads it with a bare torch.load; the plugin never calls it.
        raise sources.WeightSourceError(
            "%s.init_vision_encoder(): not used by the plugin, which builds its CLIP ViT from "
            "model.clip_vit_weights (a path, URL or null, read by the safe reader); set that key "
            "and build the model with load_model or from_config" % cls.__name__)

    def _load_weights(self, value, method):
        key = "%s.%s()" % (type(self).__name__, method)
        if not value or not isinstance(value, (str, os.PathLike)):
            raise sources.WeightSourceError("%s: got %r; pass the path or URL of a checkpoint "
                                            "file" % (key, value))
        return sources.load_pretrained(self, os.fspath(value),
                                       self.model_config.allow_partial_pretrained, key=key)


class XFormerBase(PluginModel, Blip2Base):
    """Frozen CLIP ViT + frozen MAE + Q-Former + fusion block, built from a model config."""

    # parts a checkpoint of another stage may hold that this class never builds
    # (sources.check_pretrained_fit ignores their keys deliberately)
    UNBUILT = ()

    def __init__(self, cfg):
        """``cfg``: the model config (read once, into ``self.model_config``, a ``ModelConfig``).

        The reconstruction weight in force is ``self.rec_weight``: without a reconstruction
        path (blip2, concat, early_ca, clip_layer) it is 0 and the side encoder sees whole
        images; at 0 neither the MAE decoder nor the fusion's reconstruction head is built (an
        unused trainable parameter would stop DDP without find_unused_parameters)."""
        super().__init__()
        c = self.model_config = ModelConfig.from_cfg(cfg, self.LOSSES)
        self.image_size = c.image_size
        self.mae_source = c.mae_source
        self.clip_layer_index = int(c.clip_layer_index) if c.mae_source == "clip_layer" else None
        self.rec_weight = c.rec_weight
        if c.loss_weights.get("rec") and not c.can_reconstruct:
            logging.info("model.fusion=%s with mae_source=%s has no reconstruction: loss_weights.rec ignored",
                         c.fusion, c.mae_source)
        self.mask_ratio = c.mask_ratio if c.can_reconstruct else 0.0

        self.visual_encoder, self.ln_vision = build_clip(c)
        clip_dim = self.visual_encoder.num_features
        qformer_text = self.qformer_text_parts(c)
        # The MAE: its encoder for the MAE source, its decoder for the reconstruction loss.
        self.mae_branch = None
        if c.builds_mae:
            self.mae_branch = build_mae_branch(c, encoder=c.mae_source == "mae",
                                               decoder=bool(self.rec_weight))
        side_dim = self.mae_branch.width if self.mae_source == "mae" and self.mae_branch else clip_dim
        decoder_dim = self.mae_branch.width if self.mae_branch is not None else side_dim
        # With a `pretrained` X-Former checkpoint, which always holds the Q-Former, the BERT
        # weights would be overwritten at once: skip loading them (no download needed).
        self.Qformer, self.query_tokens = encoders.build_qformer(
            c, clip_dim, load_weights=not c.pretrained, text=qformer_text)
        self.unbuilt_parts = self.UNBUILT + encoders.text_parts_unbuilt(
            qformer_text, len(self.Qformer.bert.encoder.layer))
        if not self.rec_weight:
            self.unbuilt_parts += ("mae_branch.mae.decoder", "fusion.mae_out")
        if self.mae_source == "clip":
            self.unbuilt_parts += ("mae_branch.mae.vit",)
        clip_tokens = 1 + self.visual_encoder.patch_embed.num_patches
        self.fusion = build_fusion(c, self.Qformer, side_dim, clip_dim, clip_tokens, decoder_dim,
                                   reconstruct=bool(self.rec_weight))
        if c.fused_attention:
            use_fused_attention(self)  # Q-Former, CLIP ViT and MAE attention (fused_attention.py)
        # torch.compile of the small modules and the ViT's norm path (compiled.py), off by default
        compile_modules(self, c.compile_modules, c.compile_mode)

    def qformer_text_parts(self, c: ModelConfig) -> str:
        """The Q-Former text parts the model uses (``encoders.build_qformer``): stage 1 all."""
        return "all"

    @property
    def has_reconstruction_path(self) -> bool:
        """Whether the model was built with its reconstruction path (MAE decoder, fusion head):
        a variant that can reconstruct (``ModelConfig.can_reconstruct``) with a
        reconstruction weight above 0."""
        return bool(self.rec_weight)

    ones = staticmethod(ones)

    check_text = staticmethod(check_text)

    def check_image(self, image):
        check_image(image, self.image_size)

    def check_samples(self, samples):
        """(image, texts) of a training batch, checked (``check_samples``)."""
        return check_samples(samples, self.image_size)

    def encode_clip(self, image):
        """Frozen CLIP ViT + ln_vision: (B, 3, H, W) -> (B, 1 + N, Dc) in fp32."""
        with self.maybe_autocast():
            embeds = self.ln_vision(run_frozen(self.visual_encoder, self.visual_encoder, image))
        return embeds.float()

    def encode_side(self, image, mask_ratio, noise=None):
        """The side tokens the fusion consumes (an ``MAEEncoding``), or None without MAE.
        ``noise`` (B, N): which patches stay visible, as in ``nn.mae.random_patch_mask``."""
        if not self.fusion.uses_mae:
            return None
        if self.mae_source == "clip_layer":
            return MAEEncoding(self.encode_clip_layer(image, self.clip_layer_index), None, None, None)
        if self.mae_source == "clip":
            return self.encode_clip_masked(image, mask_ratio, noise)
        with self.maybe_autocast():
            return run_frozen(self.mae_branch.mae, self.mae_branch.encode, image, mask_ratio, noise)

    @torch.no_grad()
    def clip_tokens_in(self, image, mask_ratio=0.0, noise=None):
        """Frozen CLIP ViT input tokens (CLS + visible patches, positions added), with the
        patch mask as in ``random_patch_mask``."""
        vit = self.visual_encoder
        patches = vit.patch_embed(image)
        B, N, D = patches.shape
        pos = vit.pos_embed if vit.pos_embed is not None else patches.new_zeros(1, 1 + N, D)
        patches = patches + pos[:, 1:]
        ids_keep, ids_restore, mask = random_patch_mask(B, N, mask_ratio, image.device, noise)
        visible = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        cls = (vit.cls_token + pos[:, :1]).expand(B, -1, -1)
        return torch.cat([cls, visible], dim=1), ids_restore, mask

    @torch.no_grad()
    def run_clip_blocks(self, tokens, depth=None):
        vit = self.visual_encoder
        rel_pos_bias = vit.rel_pos_bias() if vit.rel_pos_bias is not None else None
        for block in vit.blocks[:depth]:
            tokens = block(tokens, rel_pos_bias)
        return tokens

    def encode_clip_layer(self, image, index):
        """Frozen CLIP ViT features after block ``index`` (1-based), whole image: (B, 1+N, Dc)."""
        with self.maybe_autocast():
            tokens, _, _ = self.clip_tokens_in(image)
            return self.run_clip_blocks(tokens, index).float()

    def encode_clip_masked(self, image, mask_ratio, noise=None):
        """The frozen CLIP ViT on the visible patches, in the MAE encoder's place."""
        with self.maybe_autocast():
            tokens, ids_restore, mask = self.clip_tokens_in(image, mask_ratio, noise)
            tokens = self.run_clip_blocks(tokens).float()
        return MAEEncoding(tokens, mask, ids_restore, self.mae_branch.renormalize(image))

    def encode_image(self, image, mask_ratio=None, text_tokens=None, noise=None):
        """The image path shared by every loss and by inference.

        Returns ``ImageFeatures`` (context, queries, enriched, side; shapes there).
        Patches are masked only while training (``mask_ratio`` overrides); ``noise`` (B, N)
        chooses the visible ones, as transformers' ViT-MAE takes it (random when None).
        ``text_tokens``: text fed to the Q-Former beside the queries, as BLIP-2 feeds the
        question in VQA fine-tuning (``query_pass``).
        """
        self.check_image(image)
        if mask_ratio is None:
            mask_ratio = self.mask_ratio if self.training else 0.0
        image_embeds = self.encode_clip(image)
        side = self.encode_side(image, mask_ratio, noise)
        side_tokens = None if side is None else side.tokens.float()
        context = self.fusion.context(image_embeds, side_tokens)
        shared_kv.register_base(context)  # inside XFormer.forward: keys/values computed once
        queries = query_pass(self.Qformer, self.query_tokens, context, text_tokens)
        enhanced, enriched = self.fusion(queries, side_tokens)
        return ImageFeatures(context, enhanced, enriched, side)
