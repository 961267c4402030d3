"""One typed model config: every ``model.*`` key the plugin's models read, with its default and
its check, read once (``ModelConfig.from_cfg``) when a model is built.

The keys themselves, and the strictness of the run files, stay where LAVIS users look for them:
the model-type yamls under ``configs/models/`` (``config_keys.py`` knows a ``model.*`` key only
if a yaml of the model has it; a test checks that every field here is in one). LAVIS's own
keys (``arch``, ``model_type``, ``load_pretrained``, ``load_finetuned``, ...) are not read by
the models and are not fields.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from lavis_xformer.config_keys import ConfigError, out_of_range
from lavis_xformer.models import fp8
from lavis_xformer.models.compiled import COMPILABLE, MODES
from lavis_xformer.nn import ConcatFusion, EarlyCAFusion, QueryPassthrough, XFormerFusion

FUSION_CLASSES = {
    "xformer": XFormerFusion,
    "blip2": QueryPassthrough,
    "concat": ConcatFusion,
    "early_ca": EarlyCAFusion,
}
FUSIONS = tuple(FUSION_CLASSES)
MAE_SOURCES = ("mae", "clip_layer", "clip")
PRECISIONS = ("fp32", "fp16", "fp8")
LLM_PRECISIONS = ("fp32", "fp16", "bf16")
# the losses of each stage and their default weights (a weight of 0 switches a loss off)
STAGE1_LOSSES = {"itc": 1.0, "itm": 1.0, "lm": 1.0, "rec": 1.0}
STAGE2_LOSSES = {"lm": 1.0, "rec": 0.0}


def _allowed(default, allowed, entries=False):
    """A field whose values are limited to ``allowed`` (config_keys.out_of_range: a range such
    as ">= 1" or "[0, 1)", or a tuple of choices); ``entries``: ``allowed`` holds for each value
    of a mapping. config_keys checks the run file with it, before anything is built."""
    kind = "entries" if entries else "allowed"
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={kind: allowed})
    return field(default=default, metadata={kind: allowed})


@dataclass(frozen=True)
class ModelConfig:
    # where weights come from (models/sources.py); null: random, seeded by random_seed
    pretrained: Optional[object] = None  # a checkpoint path or URL, or a list loaded in order
    allow_partial_pretrained: bool = False
    random_seed: int = _allowed(0, ">= 0")
    random_init: bool = False
    image_size: Optional[int] = _allowed(None, ">= 1")
    # frozen CLIP ViT (LAVIS's EVA ViT)
    clip_vit_weights: Optional[str] = None
    vit: dict = field(default_factory=dict)  # patch_size, embed_dim, depth, num_heads, mlp_ratio
    drop_path_rate: float = _allowed(0.0, "[0, 1)")
    use_grad_checkpoint: bool = False
    vit_precision: str = _allowed("fp32", PRECISIONS)
    freeze_vit: bool = True
    unfreeze_vit_layernorm: bool = False
    # frozen MAE (transformers' ViTMAEForPreTraining); `mae` is its config
    mae_weights: Optional[str] = None
    mae: dict = field(default_factory=dict)
    mae_precision: str = _allowed("fp32", PRECISIONS)
    mask_ratio: float = _allowed(0.5, "[0, 1)")  # 0: no patch masked (no reconstruction)
    # Q-Former (LAVIS's BertLMHeadModel); `qformer` is its BertConfig
    qformer_weights: Optional[str] = None
    tokenizer: Optional[str] = None
    qformer: dict = field(default_factory=dict)
    num_query_token: Optional[int] = _allowed(None, ">= 1")
    cross_attention_freq: int = _allowed(2, ">= 1")
    # fusion variant (nn/fusions.py) and what stands in the MAE encoder's place
    fusion: str = _allowed("xformer", FUSIONS)
    fusion_num_heads: int = _allowed(12, ">= 1")
    fusion_mlp_ratio: float = _allowed(4.0, "> 0")
    fusion_self_attn: bool = True
    early_ca_mlp_ratio: float = _allowed(5.0, "> 0")
    mae_source: str = _allowed("mae", MAE_SOURCES)
    clip_layer_index: Optional[int] = _allowed(None, ">= 1")
    # speed (same results)
    fused_attention: bool = True
    compile_modules: list = _allowed([], COMPILABLE)
    compile_mode: str = _allowed("default", MODES)
    share_image_kv: bool = True
    # stage 1 heads and text
    embed_dim: int = _allowed(256, ">= 1")
    max_txt_len: int = _allowed(32, ">= 1")
    loss_weights: dict = _allowed({}, ">= 0", entries=True)  # resolved: every loss of the stage
    # stage 2: the frozen LLM and its head
    llm_weights: Optional[str] = None
    llm_tokenizer: Optional[str] = None
    llm: dict = field(default_factory=dict)
    llm_precision: str = _allowed("fp16", LLM_PRECISIONS)
    prompt: str = ""
    qformer_text_input: bool = False
    freeze_fusion: bool = False

    @classmethod
    def from_cfg(cls, cfg, losses: Optional[dict] = None) -> "ModelConfig":
        """From a model config (LAVIS's ``model`` node, or any mapping): the keys that are
        fields, the rest (LAVIS's own) left. ``losses``: the stage's losses and their default
        weights (``STAGE1_LOSSES``, ``STAGE2_LOSSES``); ``loss_weights`` is resolved against
        them, and any other name in it is an error (None: taken as written, for a builder
        alone or a model without losses)."""
        from omegaconf import DictConfig, OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for key in ("compile_modules", "loss_weights", "vit", "mae", "qformer", "llm"):
            if values.get(key) is None:
                values.pop(key, None)  # null: the default (empty)
        weights = {name: float(w) for name, w in values.pop("loss_weights", {}).items()}
        if losses is not None:
            unknown = set(weights) - set(losses)
            if unknown:
                raise ValueError(f"model.loss_weights has unknown keys {sorted(unknown)}; "
                                 f"known: {', '.join(losses)}")
            weights = {name: weights.get(name, default) for name, default in losses.items()}
        values["loss_weights"] = weights
        for key in ("mask_ratio", "drop_path_rate", "fusion_mlp_ratio", "early_ca_mlp_ratio"):
            if key in values:
                values[key] = float(values[key])
        return cls(**values)

    def __post_init__(self):
        for name, value, allowed in self._bounded_values():
            words = out_of_range(value, allowed)
            if words:
                raise ConfigError(f"model.{name}={value!r} is out of range; allowed: {words}")
        if self.rec_weight and not self.mask_ratio:
            # nothing masked, nothing to reconstruct: the loss would be left out without a word
            raise ValueError(f"model.loss_weights.rec={self.rec_weight} needs masked patches: set "
                             f"model.mask_ratio > 0 (e.g. 0.5), or model.loss_weights.rec: 0")
        if not self.uses_mae and self.mae_source != "mae":
            raise ValueError(f"model.mae_source={self.mae_source!r} needs a fusion that uses it; "
                             f"model.fusion={self.fusion!r} uses no MAE features")
        if self.mae_source == "clip_layer":
            if self.clip_layer_index is None:
                raise ValueError("model.mae_source='clip_layer' needs model.clip_layer_index (1-based CLIP ViT block)")
            depth = self.vit.get("depth")
            if not 1 <= int(self.clip_layer_index) <= depth:
                raise ValueError(f"model.clip_layer_index={self.clip_layer_index} is outside 1..{depth} (CLIP ViT blocks)")
        for key in ("vit_precision", "mae_precision"):
            if getattr(self, key) != "fp8" or (key == "mae_precision" and not self.builds_mae):
                continue
            # fp8 (fp8.py) needs fp8 tensor cores, a frozen encoder and the fused attention
            # (LAVIS's own EVA attention reads its qkv weight directly)
            fp8.check_fp8_device(key)
            if key == "vit_precision" and not self.freeze_vit:
                raise ValueError("model.vit_precision=fp8 needs model.freeze_vit: true (fp8 layers have no backward)")
            if not self.fused_attention:
                raise ValueError(f"model.{key}=fp8 needs model.fused_attention: true")
        if self.freeze_vit and self.unfreeze_vit_layernorm and self.use_grad_checkpoint:
            # LAVIS's EVA ViT uses torch's reentrant checkpoint: its blocks' parameters get
            # no gradient when the blocks' input needs none (the frozen patch embedding)
            raise ValueError("model.unfreeze_vit_layernorm: True does not work with "
                             "model.use_grad_checkpoint: True (the LayerNorms would get no "
                             "gradient); set use_grad_checkpoint: False")

    def _bounded_values(self):
        """(key, value, allowed values) of every field declared with ``_allowed``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "allowed" in f.metadata:
                yield f.name, value, f.metadata["allowed"]
            if "entries" in f.metadata:
                for key, entry in value.items():
                    yield "%s.%s" % (f.name, key), entry, f.metadata["entries"]

    @property
    def uses_mae(self) -> bool:
        """Whether the fusion consumes side tokens (the MAE's or their stand-in)."""
        return FUSION_CLASSES[self.fusion].uses_mae

    @property
    def builds_mae(self) -> bool:
        """Whether the frozen MAE is built: for its encoder (MAE source) or its decoder (CLIP
        source)."""
        return self.uses_mae and self.mae_source in ("mae", "clip")

    @property
    def can_reconstruct(self) -> bool:
        """Whether the variant has a reconstruction path: a fusion that feeds the MAE decoder
        and a side encoder whose tokens it can decode."""
        return FUSION_CLASSES[self.fusion].reconstructs and self.mae_source in ("mae", "clip")

    @property
    def rec_weight(self) -> float:
        """The reconstruction loss's weight in force: 0 without a reconstruction path."""
        return self.loss_weights.get("rec", 0.0) if self.can_reconstruct else 0.0


_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def allowed_values(key):
    """The allowed values of the model key ``key`` (dotted: ``loss_weights.itc``) as declared in
    ModelConfig; None: any value of its type (config_keys.check_config reads it)."""
    name, _, entry = key.partition(".")
    meta = _FIELDS[name].metadata if name in _FIELDS else {}
    return meta.get("entries" if entry else "allowed")
