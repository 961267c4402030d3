"""``blip2_opt_twin``: stock BLIP-2 OPT (LAVIS's ``Blip2OPT``) for like-for-like comparisons.

It is LAVIS's ``Blip2OPT`` class (same module names and state-dict keys: ``visual_encoder``,
``ln_vision``, ``Qformer``, ``query_tokens``, ``opt_proj``, ``opt_model``; its own ``forward``),
with two things added or changed, both without editing LAVIS:

* Defect worked around: LAVIS 1.0.2's ``Blip2OPT`` has no ``predict_answers``, so LAVIS's VQA
  tasks cannot evaluate it. The twin gets ``predict_answers`` and ``generate`` from the OPT
  head it shares with ``xformer_opt`` (``llm_head.OPTHead``), i.e. the very code ``xformer_opt``
  builds its LLM with and decodes with (prompt
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

from lavis.common.registry import registry
from lavis.models.blip2_models.blip2 import Blip2Base
from lavis.models.blip2_models.blip2_opt import Blip2OPT

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.models import encoders
from lavis_xformer.models.base import PluginModel, build_clip, check_image, query_pass
from lavis_xformer.models.config import ModelConfig
from lavis_xformer.models.llm_head import OPTHead


@registry.register_model("blip2_opt_twin")
class Blip2OPTTwin(OPTHead, PluginModel, Blip2OPT):
    """Stock BLIP-2 with a frozen OPT, evaluated through the plugin's decoding.

    Supported model types:
        - pretrain_opt2.7b, pretrain_opt6.7b: LAVIS's released BLIP-2 OPT checkpoints
          (the ``blip2_opt`` types of the same names).
        - tiny: random tiny parts (the sizes of ``xformer_opt`` tiny), built offline.

    Usage:
        >>> from lavis.models import load_model
        >>> model = load_model("blip2_opt_twin", "tiny", is_eval=True)
    """

    # Blip2OPT's module names, so that its forward and its checkpoints work unchanged
    LLM_ATTR = "opt_model"
    PROJ_ATTR = "opt_proj"
    # new in stage 2: a stage-1 `pretrained` checkpoint cannot hold it (sources.check_pretrained_fit)
    PRETRAINED_MAY_LACK = ("opt_proj.",)

    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_opt2.7b": os.path.join(PACKAGE_DIR, "configs/models/blip2_opt_twin_opt2.7b.yaml"),
        "pretrain_opt6.7b": os.path.join(PACKAGE_DIR, "configs/models/blip2_opt_twin_opt6.7b.yaml"),
        "tiny": os.path.join(PACKAGE_DIR, "configs/models/blip2_opt_twin_tiny.yaml"),
    }

    def __init__(self, cfg):
        Blip2Base.__init__(self)  # not Blip2OPT.__init__: it downloads every part
        c = self.model_config = ModelConfig.from_cfg(cfg)
        self.image_size = c.image_size
        self.visual_encoder, self.ln_vision = build_clip(c)
        # the query pass alone, as Blip2OPT (no LM head, text embeddings or text FFNs); the
        # released BLIP-2 checkpoint holds the Q-Former: BERT is then not loaded
        self.Qformer, self.query_tokens = encoders.build_qformer(
            c, self.visual_encoder.num_features, load_weights=not c.pretrained, text="none")
        self.unbuilt_parts = encoders.text_parts_unbuilt(
            "none", len(self.Qformer.bert.encoder.layer))
        self.build_llm_head(c, self.Qformer.config.hidden_size)

    # Blip2OPT.forward reads the tokenizer under this name (Blip2OPT loads it in __init__)
    @cached_property
    def opt_tokenizer(self):
        return self.llm_tokenizer

    def decode_prefix(self, image, qformer_text=None):
        """(B, 3, H, W) -> projected Q-Former queries (B, Nq, H_llm), in fp32: the same path
        and precision as ``xformer_opt`` with ``fusion: blip2``. The twin reads no text in its
        Q-Former (``qformer_text`` is always None)."""
        check_image(image, self.image_size)
        with self.maybe_autocast():
            image_embeds = self.ln_vision(self.visual_encoder(image))
        return self.project(query_pass(self.Qformer, self.query_tokens, image_embeds.float()))
