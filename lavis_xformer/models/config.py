"""The one schema of the plugin's ``model.*`` keys, as open_clip's ``CLIPVisionCfg`` or nanoGPT's
``GPTConfig``: ``ModelConfig`` holds every key the plugin's models read, with its default, its
check (the field's type and its allowed values), its one-line meaning and the models that read
it. A model reads it once (``ModelConfig.from_cfg``) when it is built.

Derived from it, and stated nowhere else:

* the known ``model.*`` keys of each of the plugin's models, with their types and allowed values
  (``model_schema``), against which config_keys.py checks a run file before anything is built;
* the allowed fusions: the names in nn/fusions.py's ``FUSIONS``, the one table from a fusion's
  name to its class.

A new model key is one field here. The model-type yamls under ``configs/models/`` state only
what differs from these defaults (LAVIS merges them under the run file's ``model`` section).
LAVIS's own keys (``arch``, ``model_type``, ``load_pretrained``, ``load_finetuned``,
``finetuned``) are not read by the models and are not fields.
"""
import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Optional, Union

from lavis_xformer.models import fp8
from lavis_xformer.models.compiled import COMPILABLE, MODES
from lavis_xformer.nn.fusions import FUSIONS
from lavis_xformer.schema import ANY, ConfigError, merge_spec, out_of_range

MAE_SOURCES = ("mae", "clip_layer", "clip")
PRECISIONS = ("fp32", "fp16", "fp8")
LLM_PRECISIONS = ("fp32", "fp16", "bf16")
# the losses of each stage and their default weights (a weight of 0 switches a loss off)
STAGE1_LOSSES = {"itc": 1.0, "itm": 1.0, "lm": 1.0, "rec": 1.0}
STAGE2_LOSSES = {"lm": 1.0, "rec": 0.0}

# the plugin's models (their registered names), grouped by the keys they read
STAGE1 = ("xformer",)
STAGE2 = ("xformer_opt", "xformer_t5")
XFORMER = STAGE1 + STAGE2
LLM_MODELS = STAGE2 + ("blip2_opt_twin",)
PLUGIN_MODELS = XFORMER + ("blip2_opt_twin",)

# the keys of `vit` (LAVIS's EVA VisionTransformer), in config_keys.RUN_KEYS' form
VIT_KEYS = {
    "patch_size": ("int", ">= 1", "patch side in pixels"),
    "embed_dim": ("int", ">= 1", "token width"),
    "depth": ("int", ">= 1", "blocks (ViT-g: 39 of its 40, as BLIP-2)"),
    "num_heads": ("int", ">= 1", "attention heads"),
    "mlp_ratio": ("float", "> 0", "MLP width over token width"),
}


def key(default, meaning, allowed=None, read_by=PLUGIN_MODELS, **inside):
    """A model key: its ``default``, its one-line ``meaning``, its ``allowed`` values
    (schema.out_of_range: a range such as ">= 1" or "[0, 1)", a tuple of choices, or None for
    any value of the field's type) and the models that read it (``read_by``, registered names).

    ``inside`` describes the keys of a mapping: ``keys`` ({key: (type, allowed, meaning)}),
    ``entries`` (the allowed values of every entry; their names are the model's losses) or
    ``transformers`` (the transformers configs it is handed to as keyword arguments: any of
    their attributes)."""
    metadata = dict(inside, meaning=meaning, allowed=allowed, read_by=read_by)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    # where weights come from (models/sources.py); parts without a source are random, seeded
    pretrained: Union[str, list, None] = key(
        None, "checkpoint (path or URL; a list: loaded in order) loaded over the built model")
    allow_partial_pretrained: bool = key(
        False, "a `pretrained` file may lack trainable weights (they stay as built)")
    random_seed: int = key(0, "seeds the random weights of parts built without a weight source", ">= 0")
    random_init: bool = key(False, "every part random: no weight source is loaded")
    image_size: Optional[int] = key(None, "image side in pixels", ">= 1")
    # the frozen CLIP ViT (LAVIS's EVA ViT)
    clip_vit_weights: Optional[str] = key(None, "CLIP ViT checkpoint (path or URL); null: random")
    vit: dict = key({}, "the CLIP ViT's size", keys=VIT_KEYS)
    drop_path_rate: float = key(0.0, "the CLIP ViT's stochastic depth", "[0, 1)")
    use_grad_checkpoint: bool = key(False, "recompute the CLIP ViT's blocks in backward")
    vit_precision: str = key("fp32", "CLIP ViT precision when CUDA is available (fp32 on CPU); "
                             "fp8: linear layers on fp8 tensor cores (H100/H200)", PRECISIONS)
    freeze_vit: bool = key(True, "the CLIP ViT is frozen")
    unfreeze_vit_layernorm: bool = key(
        False, "with freeze_vit: the CLIP ViT's LayerNorms train (VQA fine-tuning)")
    # the frozen MAE (transformers' ViTMAEForPreTraining)
    mae_weights: Optional[str] = key(None, "MAE weights (hub name or folder); null: random",
                                     read_by=XFORMER)
    mae: dict = key({}, "the ViTMAEConfig of a random MAE (loaded weights bring their own)",
                    read_by=XFORMER, transformers=("ViTMAEConfig",))
    mae_precision: str = key("fp32", "MAE encoder + decoder precision when CUDA is available; "
                             "fp8: the encoder on fp8 tensor cores", PRECISIONS, read_by=XFORMER)
    mask_ratio: float = key(0.5, "share of the MAE's patches masked in training; 0: none, so no "
                            "reconstruction", "[0, 1)", read_by=XFORMER)
    # the Q-Former (LAVIS's BertLMHeadModel)
    qformer_weights: Optional[str] = key(
        None, "the Q-Former's BERT weights (skipped when `pretrained` is set); null: random")
    tokenizer: Optional[str] = key(None, "the Q-Former's BERT tokenizer (hub name or folder)",
                                   read_by=XFORMER)
    qformer: dict = key({}, "the Q-Former's BertConfig", transformers=("BertConfig",))
    num_query_token: Optional[int] = key(None, "learned query tokens", ">= 1")
    cross_attention_freq: int = key(2, "every Nth Q-Former layer cross-attends to the image", ">= 1")
    # The variant (paper section 2.2, Table 9): "xformer" (X-Former block after the Q-Former),
    # "blip2" (no MAE: nothing MAE is built or loaded), "concat" (MAE tokens, projected to the
    # CLIP width, appended to the CLIP tokens the Q-Former attends to), "early_ca" (MAE
    # cross-attention blocks in the Q-Former layers without CLIP cross-attention). All but
    # xformer have no reconstruction (the MAE sees whole images) and use the learned query
    # tokens as the ITM/ITG prefix.
    fusion: str = key("xformer", "the variant: a name in nn/fusions.FUSIONS", tuple(FUSIONS),
                      read_by=XFORMER)
    fusion_num_heads: int = key(12, "attention heads of the fusion's blocks", ">= 1", read_by=XFORMER)
    fusion_mlp_ratio: float = key(4.0, "MLP ratio of the X-Former block", "> 0", read_by=XFORMER)
    fusion_self_attn: bool = key(True, "self-attention before the fusion's cross-attentions "
                                 "(False: the paper's \"w/o SA\")", read_by=XFORMER)
    early_ca_mlp_ratio: float = key(5.0, "early_ca: MLP ratio of its blocks (5.0: 180M stage-2 "
                                    "parameters at paper size)", "> 0", read_by=XFORMER)
    # What stands in the MAE encoder's place (ablations): "mae"; "clip_layer" (the frozen CLIP
    # ViT's features after block clip_layer_index, whole image, no reconstruction; paper
    # Section 3.3 / Fig. 7 uses 26 and 30); "clip" (the masked image through the frozen CLIP
    # ViT, fused, and reconstructed by the frozen MAE decoder; supplementary Table 12).
    mae_source: str = key("mae", "what stands in the MAE encoder's place", MAE_SOURCES, read_by=XFORMER)
    clip_layer_index: Optional[int] = key(
        None, "mae_source clip_layer: the CLIP ViT block (1-based)", ">= 1", read_by=XFORMER)
    # speed (same results; docs/performance.md)
    fused_attention: bool = key(True, "fused SDPA attention in Q-Former, CLIP ViT and MAE; "
                                "False: the libraries' own", read_by=XFORMER)
    compile_modules: list = key([], "torch.compile these modules (eager if it fails)", COMPILABLE,
                                read_by=XFORMER)
    compile_mode: str = key("default", "torch.compile mode (reduce-overhead: also CUDA graphs)",
                            MODES, read_by=XFORMER)
    share_image_kv: bool = key(True, "image keys/values of each cross-attention layer computed "
                               "once per step (same losses)", read_by=STAGE1)
    # stage 1's heads and text
    embed_dim: int = key(256, "width of the ITC projections", ">= 1", read_by=STAGE1)
    max_txt_len: int = key(32, "text tokens kept", ">= 1")
    # A weight of 0 switches a loss off ("w/o ITC/ITM/ITG") and freezes its own head; rec: 0
    # with mask_ratio: 0 is "no reconstruction, MAE unmasked" (the MAE decoder is dropped).
    loss_weights: dict = key({}, "weight of each loss of the stage; resolved: every loss",
                             read_by=XFORMER, entries=">= 0")
    # stage 2: the frozen LLM and its head
    llm_weights: Optional[str] = key(None, "the LLM's weights (hub name or folder); null: random",
                                     read_by=LLM_MODELS)
    llm_tokenizer: Optional[str] = key(None, "the LLM's tokenizer; null: the one in llm_weights",
                                       read_by=LLM_MODELS)
    llm: dict = key({}, "the OPTConfig / T5Config of a random LLM", read_by=LLM_MODELS,
                    transformers=("OPTConfig", "T5Config"))
    llm_precision: str = key("fp16", "frozen LLM precision on GPU (fp32 on CPU)", LLM_PRECISIONS,
                             read_by=LLM_MODELS)
    prompt: str = key("", "text before the queries' answer", read_by=LLM_MODELS)
    qformer_text_input: bool = key(False, "the question also goes into the Q-Former beside the "
                                   "queries (VQA fine-tuning, as BLIP-2)", read_by=STAGE2)
    freeze_fusion: bool = key(False, "stage 1's Q-Former and fusion frozen: only the projection "
                              "to the LLM trains", read_by=STAGE2)

    @classmethod
    def from_cfg(cls, cfg, losses: Optional[dict] = None) -> "ModelConfig":
        """From a model config (LAVIS's ``model`` node, or any mapping): the keys that are
        fields, the rest (LAVIS's own) left. ``losses``: the stage's losses and their default
        weights (``STAGE1_LOSSES``, ``STAGE2_LOSSES``); ``loss_weights`` is resolved against
        them, and any other name in it is an error (None: taken as written, for a builder
        alone or a model without losses)."""
        from omegaconf import DictConfig, OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        fields = dataclasses.fields(cls)
        values = {f.name: data[f.name] for f in fields if f.name in data}
        for f in fields:
            if f.type in (dict, list) and f.name in values and values[f.name] is None:
                del values[f.name]  # null: the default (empty)
        weights = {name: float(w) for name, w in values.pop("loss_weights", {}).items()}
        if losses is not None:
            unknown = set(weights) - set(losses)
            if unknown:
                raise ValueError(f"model.loss_weights has unknown keys {sorted(unknown)}; "
                                 f"known: {', '.join(losses)}")
            weights = {name: weights.get(name, default) for name, default in losses.items()}
        values["loss_weights"] = weights
        for f in fields:
            if f.type is float and f.name in values:
                values[f.name] = float(values[f.name])  # a yaml writes 0 for 0.0
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
        for name in ("vit_precision", "mae_precision"):
            if getattr(self, name) != "fp8" or (name == "mae_precision" and not self.builds_mae):
                continue
            # fp8 (fp8.py) needs fp8 tensor cores, a frozen encoder and the fused attention
            # (LAVIS's own EVA attention reads its qkv weight directly)
            fp8.check_fp8_device(name)
            if name == "vit_precision" and not self.freeze_vit:
                raise ValueError("model.vit_precision=fp8 needs model.freeze_vit: true (fp8 layers have no backward)")
            if not self.fused_attention:
                raise ValueError(f"model.{name}=fp8 needs model.fused_attention: true")
        if self.freeze_vit and self.unfreeze_vit_layernorm and self.use_grad_checkpoint:
            # LAVIS's EVA ViT uses torch's reentrant checkpoint: its blocks' parameters get
            # no gradient when the blocks' input needs none (the frozen patch embedding)
            raise ValueError("model.unfreeze_vit_layernorm: True does not work with "
                             "model.use_grad_checkpoint: True (the LayerNorms would get no "
                             "gradient); set use_grad_checkpoint: False")

    def _bounded_values(self):
        """(dotted key, value, allowed values) of every field, and of each key inside ``vit``
        and ``loss_weights``, as declared with ``key``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            yield f.name, value, f.metadata["allowed"]
            if "keys" in f.metadata or "entries" in f.metadata:
                inside = _inside(f, tuple(value))
                for name, entry in value.items():
                    yield "%s.%s" % (f.name, name), entry, inside.get(name, (None, None))[1]

    @property
    def uses_mae(self) -> bool:
        """Whether the fusion consumes side tokens (the MAE's or their stand-in)."""
        return FUSIONS[self.fusion].uses_mae

    @property
    def builds_mae(self) -> bool:
        """Whether the frozen MAE is built: for its encoder (MAE source) or its decoder (CLIP
        source)."""
        return self.uses_mae and self.mae_source in ("mae", "clip")

    @property
    def can_reconstruct(self) -> bool:
        """Whether the variant has a reconstruction path: a fusion that feeds the MAE decoder
        and a side encoder whose tokens it can decode."""
        return FUSIONS[self.fusion].reconstructs and self.mae_source in ("mae", "clip")

    @property
    def rec_weight(self) -> float:
        """The reconstruction loss's weight in force: 0 without a reconstruction path."""
        return self.loss_weights.get("rec", 0.0) if self.can_reconstruct else 0.0


_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict",
               type(None): "null"}


def type_spec(annotation) -> str:
    """A field's annotation as a type spec (schema.py): ``Optional[int]`` -> "int|null"."""
    return "|".join(_TYPE_NAMES[t] for t in typing.get_args(annotation) or (annotation,))


def _inside(f, losses=()) -> dict:
    """{key: (type, allowed values, meaning)} of the keys inside the mapping field ``f``;
    ``losses``: the names its entries take (``loss_weights``: the model's losses)."""
    if "keys" in f.metadata:
        return f.metadata["keys"]
    if "entries" in f.metadata:
        return {name: ("float", f.metadata["entries"], "weight of the %s loss" % name)
                for name in losses}
    if "transformers" in f.metadata:
        return _transformers_keys(f.metadata["transformers"])
    return {}


@functools.lru_cache(maxsize=None)
def _transformers_keys(names) -> dict:
    """The attributes of the transformers configs ``names`` in ``_inside``'s form, each typed
    by its defaults (null in all of them: anything)."""
    import transformers

    specs = {}
    for name in names:
        for attr, value in getattr(transformers, name)().to_dict().items():
            specs[attr] = merge_spec(specs.get(attr), value)
    meaning = "an attribute of transformers' " + " / ".join(names)
    return {attr: (ANY if spec == "null" else spec, None, meaning) for attr, spec in specs.items()}


@functools.lru_cache(maxsize=None)
def model_schema(arch: str, losses: tuple = ()) -> Optional[dict]:
    """{dotted model key: (type, allowed values, meaning)} of every key that the plugin's model
    ``arch`` reads, the keys inside its mappings included (config_keys.RUN_KEYS' form); None
    for a model that is not the plugin's. ``losses``: the names ``loss_weights`` takes (the
    model class's ``LOSSES``)."""
    if arch not in PLUGIN_MODELS:
        return None
    schema = {}
    for f in dataclasses.fields(ModelConfig):
        if arch in f.metadata["read_by"]:
            schema[f.name] = (type_spec(f.type), f.metadata["allowed"], f.metadata["meaning"])
            schema.update({"%s.%s" % (f.name, name): entry for name, entry in _inside(f, losses).items()})
    return schema


def model_setting(config, name: str):
    """Model key ``name`` of a model config (LAVIS's ``model`` node, or a saved run's): as
    written, else ModelConfig's default when the model (``arch``) reads it, else None."""
    value = config.get(name, None)
    f = _FIELDS[name]
    if value is None and config.get("arch", None) in f.metadata["read_by"]:
        return f.default_factory() if f.default is dataclasses.MISSING else f.default
    return value


_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
