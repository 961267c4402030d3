"""What every X-Former model shares: the frozen encoders, the Q-Former query pass and the fusion.

    image --(frozen CLIP ViT, ln_vision)--> image_embeds (B, 1+N, Dc)
          --(Q-Former query pass)---------> queries Q (B, Nq, D)
    image --(frozen MAE encoder, visible)-> MAE tokens M (B, 1+N_visible, Dm)
    fusion(Q, M) -----------------------> enhanced queries Q' (B, Nq, D), enriched MAE Z

Stage 1 (``xformer``) adds the text losses and the reconstruction; stage 2 (``xformer_opt``,
``xformer_t5``) feeds Q' to a frozen LLM through one linear layer.
"""
import torch
from torch import nn

from lavis.models.blip2_models.blip2 import Blip2Base, LayerNorm, disabled_train

from lavis_xformer import compat
from lavis_xformer.models import encoders, sources
from lavis_xformer.modules import MAEBranch, XFormerFusion

FUSIONS = ("xformer",)


def build_fusion(cfg, dim: int, mae_dim: int) -> nn.Module:
    """The module that fuses Q-Former queries with MAE tokens, picked by ``model.fusion``."""
    name = cfg.get("fusion", "xformer")
    if name == "xformer":
        return XFormerFusion(
            dim=dim,
            mae_dim=mae_dim,
            num_heads=cfg.get("fusion_num_heads", 12),
            mlp_ratio=cfg.get("fusion_mlp_ratio", 4.0),
            self_attn=cfg.get("fusion_self_attn", True),
        )
    raise ValueError(f"model.fusion={name!r} is not known; available: {', '.join(FUSIONS)}")


def freeze(module: nn.Module) -> nn.Module:
    """Freeze all parameters and pin the module in eval mode."""
    for param in module.parameters():
        param.requires_grad = False
    module.eval()
    module.train = disabled_train.__get__(module)
    return module


class XFormerBase(Blip2Base):
    """Frozen CLIP ViT + frozen MAE + Q-Former + fusion block, built from a model config."""

    PRETRAINED_MODEL_CONFIG_DICT = {}

    def __init__(self, cfg):
        super().__init__()
        random_init = cfg.get("random_init", False)
        self.image_size = cfg.get("image_size")
        self.mask_ratio = cfg.get("mask_ratio", 0.5)

        self.visual_encoder = encoders.build_eva_vit(cfg, random_init)
        if cfg.get("vit_precision", "fp32") == "fp16" and torch.cuda.is_available():
            from lavis.models.eva_vit import convert_weights_to_fp16

            convert_weights_to_fp16(self.visual_encoder)
        self.ln_vision = LayerNorm(self.visual_encoder.num_features)
        if cfg.get("freeze_vit", True):
            self.visual_encoder = freeze(self.visual_encoder)

        self.mae_branch = MAEBranch(encoders.build_mae(cfg, random_init), mask_ratio=self.mask_ratio)
        # With a `pretrained` X-Former checkpoint, which always holds the Q-Former, the BERT
        # weights would be overwritten at once: skip loading them (no download needed).
        self.Qformer, self.query_tokens = encoders.build_qformer(
            cfg, self.visual_encoder.num_features, random_init or bool(cfg.get("pretrained"))
        )
        self.fusion = build_fusion(cfg, self.Qformer.config.hidden_size, self.mae_branch.width)

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

    @classmethod
    def from_config(cls, cfg):
        """Build from a model config; ``pretrained`` (a checkpoint path) is then loaded
        non-strictly and what was loaded, missing and ignored is logged."""
        model = cls(cfg)
        if cfg.get("pretrained"):
            path = sources.resolve("pretrained", cfg.get("pretrained"))
            state_dict = sources.load_checkpoint_file("pretrained", path)
            compat.load_state_dict_logged(model, state_dict, path)
        return model

    @staticmethod
    def ones(tokens):
        """An all-ones attention mask for (B, N, D) tokens."""
        return torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)

    def check_image(self, image):
        if not torch.is_tensor(image) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"samples['image'] must be a (B, 3, H, W) tensor, got {shape}")
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"samples['image'] is {image.shape[-2]}x{image.shape[-1]} but this model takes "
                f"{self.image_size}x{self.image_size}; use the model's image processors "
                f"(load_model_and_preprocess) or set image_size in the processor config"
            )

    @staticmethod
    def check_text(samples, key="text_input"):
        if key not in samples:
            raise KeyError(
                f"samples has no {key!r} (keys: {sorted(samples)}); this model needs a text "
                f"per image, e.g. from a LAVIS caption dataset with a text processor"
            )
        text = samples[key]
        return [text] if isinstance(text, str) else list(text)

    def encode_clip(self, image):
        """Frozen CLIP ViT + ln_vision: (B, 3, H, W) -> (B, 1 + N, Dc) in fp32."""
        with self.maybe_autocast():
            embeds = self.ln_vision(self.visual_encoder(image))
        return embeds.float()

    def encode_image(self, image, mask_ratio=None):
        """The image path shared by every loss and by inference.

        Returns (image_embeds (B, 1+N, Dc), enhanced queries (B, Nq, D),
        enriched MAE tokens (B, 1+N_visible, Dm), MAE encoding).
        Patches are masked only while training (``mask_ratio`` overrides).
        """
        self.check_image(image)
        if mask_ratio is None:
            mask_ratio = self.mask_ratio if self.training else 0.0
        image_embeds = self.encode_clip(image)
        with self.maybe_autocast():
            mae = self.mae_branch.encode(image, mask_ratio)
        queries = self.Qformer.bert(
            query_embeds=self.query_tokens.expand(image.shape[0], -1, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self.ones(image_embeds),
            return_dict=True,
        ).last_hidden_state
        enhanced, enriched = self.fusion(queries, mae.tokens.float())
        return image_embeds, enhanced, enriched, mae
