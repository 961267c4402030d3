"""``blip2_opt_twin``: stock BLIP-2 OPT (LAVIS's ``Blip2OPT``) for like-for-like comparisons.

It is LAVIS's ``Blip2OPT`` class (same module names and state-dict keys: ``visual_encoder``,
``ln_vision``, ``Qformer``, ``query_tokens``, ``opt_proj``, ``opt_model``; its own ``forward``),
with two things added or changed, both without editing LAVIS:

* Defect worked around: LAVIS 1.0.2's ``Blip2OPT`` has no ``predict_answers``, so LAVIS's VQA
  tasks cannot evaluate it. The twin gets ``predict_answers`` and ``generate`` from
  ``generation.LLMDecodingMixin``, i.e. the very code ``xformer_opt`` decodes with (prompt
  formatting, left padding, beam search, newline stop, answer cut). Stock ``Blip2OPT.generate``
  pads nothing and takes one prompt for the batch; the twin's takes one per image.
* Every part is built from a configurable source, as the plugin's models are (``Blip2OPT``
  hard-codes ``bert-base-uncased`` and the EVA ViT-g URL and always loads OPT from the hub), so
  the ``tiny`` type builds offline with random parts and the paper-size types load LAVIS's
  released BLIP-2 checkpoints (``model.pretrained``; LAVIS's own URLs) over EVA ViT-g and OPT.

The image path equals ``xformer_opt`` with ``fusion: blip2``: (frozen CLIP ViT, ln_vision) ->
Q-Former query pass -> linear projection -> frozen OPT; for the same weights both give the
same answers (tests/test_evals.py).
"""
import os
from functools import cached_property

import torch
from torch import nn

from lavis.common.registry import registry
from lavis.models.blip2_models.blip2 import Blip2Base
from lavis.models.blip2_models.blip2_opt import Blip2OPT

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.models import encoders, sources
from lavis_xformer.models import llm as llm_builders
from lavis_xformer.models.base import build_clip
from lavis_xformer.models.generation import LLMDecodingMixin, opt_generate


@registry.register_model("blip2_opt_twin")
class Blip2OPTTwin(LLMDecodingMixin, Blip2OPT):
    """Stock BLIP-2 with a frozen OPT, evaluated through the plugin's decoding.

    Supported model types:
        - pretrain_opt2.7b, pretrain_opt6.7b: LAVIS's released BLIP-2 OPT checkpoints
          (the ``blip2_opt`` types of the same names).
        - tiny: random tiny parts (the sizes of ``xformer_opt`` tiny), built offline.

    Usage:
        >>> from lavis.models import load_model
        >>> model = load_model("blip2_opt_twin", "tiny", is_eval=True)
    """

    # new in stage 2: a stage-1 `pretrained` checkpoint cannot hold it (sources.check_pretrained_fit)
    PRETRAINED_MAY_LACK = ("opt_proj.",)

    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_opt2.7b": os.path.join(PACKAGE_DIR, "configs/models/blip2_opt_twin_opt2.7b.yaml"),
        "pretrain_opt6.7b": os.path.join(PACKAGE_DIR, "configs/models/blip2_opt_twin_opt6.7b.yaml"),
        "tiny": os.path.join(PACKAGE_DIR, "configs/models/blip2_opt_twin_tiny.yaml"),
    }

    def __init__(self, cfg):
        Blip2Base.__init__(self)  # not Blip2OPT.__init__: it downloads every part
        random_init = cfg.get("random_init", False)
        self.image_size = cfg.get("image_size")
        self.visual_encoder, self.ln_vision = build_clip(cfg, random_init)
        # the released BLIP-2 checkpoint holds the Q-Former: BERT is then not loaded
        self.Qformer, self.query_tokens = encoders.build_qformer(
            cfg, self.visual_encoder.num_features, random_init or bool(cfg.get("pretrained")))
        self.Qformer.cls = None  # as Blip2OPT: the text-only parts go
        self.Qformer.bert.embeddings.word_embeddings = None
        self.Qformer.bert.embeddings.position_embeddings = None
        for layer in self.Qformer.bert.encoder.layer:
            layer.output = None
            layer.intermediate = None

        self.cfg_tokenizer = {k: cfg.get(k) for k in ("llm_tokenizer", "llm_weights")}
        self.opt_model = llm_builders.build_llm(cfg, random_init, "opt")
        for param in self.opt_model.parameters():
            param.requires_grad = False
        self.opt_proj = nn.Linear(self.Qformer.config.hidden_size, self.opt_model.config.hidden_size)
        self.max_txt_len = cfg.get("max_txt_len", 32)
        self.prompt = cfg.get("prompt", "")

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(f"Unknown model type {model_type!r} for 'blip2_opt_twin'; available: "
                             f"{sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}")
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def from_config(cls, cfg):
        """Build, then load ``model.pretrained`` (a LAVIS BLIP-2 checkpoint: path or URL)
        non-strictly, logging what was loaded and missing (the frozen parts are not in it)."""
        return sources.load_pretrained(cls(cfg), cfg)

    # Blip2OPT sets these in __init__ from a hub tokenizer; here they load on first use
    @cached_property
    def opt_tokenizer(self):
        return llm_builders.build_tokenizer(self.cfg_tokenizer, "opt")

    @cached_property
    def eos_token_id(self):
        """Generation ends at the newline, as in Blip2OPT."""
        return self.opt_tokenizer("\n", add_special_tokens=False).input_ids[0]

    @cached_property
    def prompt_length(self):
        return self.opt_tokenizer(self.prompt, return_tensors="pt").attention_mask.sum(1)

    def visual_prefix(self, image):
        """(B, 3, H, W) -> projected Q-Former queries (B, Nq, H_llm), in fp32: the same path
        and precision as ``xformer_opt`` with ``fusion: blip2``."""
        with self.maybe_autocast():
            image_embeds = self.ln_vision(self.visual_encoder(image))
        image_embeds = image_embeds.float()
        queries = self.Qformer.bert(
            query_embeds=self.query_tokens.expand(image.shape[0], -1, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long,
                                              device=image.device),
            return_dict=True,
        ).last_hidden_state
        return self.opt_proj(queries)

    def decode(self, image, prompts, num_return_sequences=1, use_nucleus_sampling=False,
               num_beams=5, **kwargs):
        if not torch.is_tensor(image) or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError("samples['image'] must be a (B, 3, H, W) tensor")
        if self.image_size and tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"samples['image'] is {image.shape[-2]}x{image.shape[-1]} but this model takes "
                f"{self.image_size}x{self.image_size}; set image_size in the processor config")
        prefix = self.visual_prefix(image)
        dtype = torch.bfloat16 if self.opt_model.dtype == torch.bfloat16 else torch.float16
        with self.maybe_autocast(dtype):
            return opt_generate(
                self.opt_model, self.opt_tokenizer, prefix, prompts, self.eos_token_id,
                num_return_sequences=num_return_sequences,
                use_nucleus_sampling=use_nucleus_sampling, num_beams=num_beams, **kwargs,
            )

    def train(self, mode=True):
        super().train(mode)
        self.opt_model.eval()  # frozen: no dropout
        return self
