"""X-Former stage 2 (paper "Stage 2: LLM Alignment"): enhanced queries -> one linear layer ->
a frozen LLM, trained with the language-modelling loss.

    ``xformer_opt``  OPT (decoder-only): [projected queries; prompt + text + "\\n"] with the
                     loss on the text tokens only (queries, prompt and padding are masked).
    ``xformer_t5``   FlanT5 (encoder-decoder), prefix LM as in BLIP-2's supplementary: each
                     caption is split at a random word; [projected queries; prefix] is the
                     encoder input and the suffix the decoder target. Samples that carry
                     ``text_output`` (VQA) use text_input -> text_output instead.

Both image encoders and the LLM are frozen; the Q-Former, the fusion block and the projection
train (``freeze_fusion: true``: only the projection). The Q-Former's text-only parts (word and position embeddings, text FFNs, LM head) are
deleted, as BLIP-2's stage 2 does, so DDP needs no ``find_unused_parameters``. The masked-patch
reconstruction is off by default in stage 2 (``loss_weights.rec: 0``, the paper's ablation shows
it hurts); then the MAE sees every patch, as at inference, and its decoder is dropped.

Zero-shot VQA follows the paper: prompt "Question: {} Short Answer:", beam 5, length penalty 0,
generation stops at a newline and answers are cut there, as BLIP-2 does.
"""
import os
import random
from functools import cached_property

import torch
from torch import nn

from lavis.common.registry import registry

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.models import llm as llm_builders
from lavis_xformer.models.base import XFormerBase
from lavis_xformer.models.generation import VQA_PROMPT, LLMDecodingMixin, opt_generate  # noqa: F401


class XFormerLLMBase(LLMDecodingMixin, XFormerBase):
    """Shared stage-2 parts: stripping the Q-Former, the projection, losses; ``generate`` and
    ``predict_answers`` come from ``LLMDecodingMixin`` over each LLM's ``decode``."""

    LLM_KIND = None

    def __init__(self, cfg):
        super().__init__(cfg)
        random_init = cfg.get("random_init", False)
        weights = dict(cfg.get("loss_weights") or {})
        unknown = set(weights) - {"lm", "rec"}
        if unknown:
            raise ValueError(f"model.loss_weights has unknown keys {sorted(unknown)}; known: lm, rec")
        rec_weight = float(weights.get("rec", 0.0))
        if rec_weight and self.can_reconstruct and not self.mask_ratio:
            raise ValueError("model.loss_weights.rec > 0 needs masked patches: set model.mask_ratio (e.g. 0.5)")
        self.rec_weight = self.setup_reconstruction(rec_weight)
        if not self.rec_weight:
            self.mask_ratio = 0.0  # the MAE sees the whole image, as at inference
        self.strip_qformer_text_parts()
        if cfg.get("freeze_fusion", False):
            if self.rec_weight:
                raise ValueError("model.freeze_fusion: true leaves the reconstruction loss nothing to train; set loss_weights.rec: 0")
            self.freeze_image_side()

        self.prompt = cfg.get("prompt", "")
        self.max_txt_len = cfg.get("max_txt_len", 32)
        self.cfg_tokenizer = {k: cfg.get(k) for k in ("llm_tokenizer", "llm_weights")}
        self.llm_model = llm_builders.build_llm(cfg, random_init, self.LLM_KIND)
        for param in self.llm_model.parameters():
            param.requires_grad = False
        self.llm_proj = nn.Linear(self.Qformer.config.hidden_size, self.llm_model.config.hidden_size)

    @cached_property
    def llm_tokenizer(self):
        """Loaded on first use, so that building (random_init, meta device) loads nothing."""
        return llm_builders.build_tokenizer(self.cfg_tokenizer, self.LLM_KIND)

    def strip_qformer_text_parts(self):
        self.Qformer.cls = None
        self.Qformer.bert.embeddings.word_embeddings = None
        self.Qformer.bert.embeddings.position_embeddings = None
        for layer in self.Qformer.bert.encoder.layer:
            layer.output = None
            layer.intermediate = None

    def freeze_image_side(self):
        """``freeze_fusion: true`` (supplementary Table 12, "X-Former Frozen"): the stage-1
        Q-Former, query tokens, ln_vision and fusion stay as loaded; only ``llm_proj`` trains."""
        from lavis_xformer.models.base import freeze

        self.Qformer = freeze(self.Qformer)
        self.fusion = freeze(self.fusion)
        self.ln_vision = freeze(self.ln_vision)
        self.query_tokens.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self.llm_model.eval()  # frozen: no dropout
        return self

    def llm_autocast(self):
        """Autocast to the frozen LLM's half precision on GPU; nothing on CPU."""
        dtype = torch.bfloat16 if self.llm_model.dtype == torch.bfloat16 else torch.float16
        return self.maybe_autocast(dtype)

    def visual_prefix(self, image, mask_ratio=None):
        """Projected enhanced queries (B, Nq, H_llm) in the LLM's dtype, plus the stage-2
        reconstruction loss when it is switched on (else None)."""
        _, enhanced, enriched, mae = self.encode_image(image, mask_ratio)
        loss_rec = None
        if self.rec_weight and self.training:
            loss_rec = self.mae_branch.reconstruction_loss(enriched, mae)
        return self.llm_proj(enhanced), loss_rec

    def forward(self, samples):
        if "image" not in samples:
            raise KeyError(f"samples has no 'image' (keys: {sorted(samples)})")
        text = self.check_text(samples)
        image = samples["image"]
        self.check_image(image)
        if len(text) != image.shape[0]:
            raise ValueError(f"{image.shape[0]} images but {len(text)} texts in samples")
        prefix, loss_rec = self.visual_prefix(image)
        with self.llm_autocast():
            loss_lm = self.lm_loss(prefix, samples, text)
        out = {"loss_lm": loss_lm, "loss": loss_lm}
        if loss_rec is not None:
            out["loss_rec"] = loss_rec
            out["loss"] = loss_lm + self.rec_weight * loss_rec
        return out


@registry.register_model("xformer_opt")
class XFormerOPT(XFormerLLMBase):
    """X-Former stage 2 with a frozen OPT.

    Supported model types:
        - pretrain_opt2.7b, pretrain_opt6.7b: paper size with facebook/opt-2.7b / -6.7b.
        - tiny: the tiny stage-1 model with a small random OPT and an offline GPT-2 BPE tokenizer.

    Usage:
        >>> from lavis.models import load_model
        >>> model = load_model("xformer_opt", "tiny", is_eval=True)
    """

    LLM_KIND = "opt"
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_opt2.7b": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt2.7b.yaml"),
        "pretrain_opt6.7b": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt6.7b.yaml"),
        "tiny": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt_tiny.yaml"),
        "mini": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt_mini.yaml"),
    }

    @cached_property
    def newline_id(self):
        """Generation ends at the newline BLIP-2 appends to every training text."""
        return self.llm_tokenizer("\n", add_special_tokens=False).input_ids[0]

    @cached_property
    def prompt_length(self):
        return len(self.llm_tokenizer(self.prompt).input_ids)

    def lm_loss(self, prefix, samples, text):
        """Language-modelling loss on [prefix; prompt + text + "\\n"], right-padded; labels
        mask the query positions, the prompt and the padding."""
        tokenizer = self.llm_tokenizer
        tokenizer.padding_side = "right"
        tokens = tokenizer(
            [self.prompt + t + "\n" for t in text], return_tensors="pt", padding="longest",
            truncation=True, max_length=self.max_txt_len,
        ).to(prefix.device)
        labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
        labels[:, : self.prompt_length] = -100
        labels = torch.cat([torch.full(prefix.shape[:2], -100, device=prefix.device), labels], dim=1)
        embeds = self.llm_model.get_input_embeddings()(tokens.input_ids)
        return self.llm_model(
            inputs_embeds=torch.cat([prefix.to(embeds.dtype), embeds], dim=1),
            attention_mask=torch.cat([self.ones(prefix), tokens.attention_mask], dim=1),
            labels=labels,
            return_dict=True,
        ).loss

    def decode(self, image, prompts, num_return_sequences=1, use_nucleus_sampling=False,
               num_beams=5, **kwargs):
        """Generate after [prefix; prompt] with ``generation.opt_generate``, the code path the
        BLIP-2 twin (``blip2_opt_twin``) shares."""
        prefix, _ = self.visual_prefix(image, mask_ratio=0.0)
        with self.llm_autocast():
            return opt_generate(
                self.llm_model, self.llm_tokenizer, prefix, prompts, self.newline_id,
                num_return_sequences=num_return_sequences,
                use_nucleus_sampling=use_nucleus_sampling, num_beams=num_beams, **kwargs,
            )


@registry.register_model("xformer_t5")
class XFormerT5(XFormerLLMBase):
    """X-Former stage 2 with a frozen FlanT5, trained with the prefix-LM loss.

    Supported model types:
        - pretrain_flant5xl: paper size with google/flan-t5-xl.
        - tiny: the tiny stage-1 model with a small random T5 and the offline GPT-2 BPE tokenizer.
    """

    LLM_KIND = "t5"
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_flant5xl": os.path.join(PACKAGE_DIR, "configs/models/xformer_flant5xl.yaml"),
        "tiny": os.path.join(PACKAGE_DIR, "configs/models/xformer_t5_tiny.yaml"),
    }

    @cached_property
    def target_suffix(self):
        """Targets must end in EOS for generation to stop; T5's tokenizer appends it, the
        offline GPT-2 BPE tokenizer of the tiny type does not."""
        ends_in_eos = self.llm_tokenizer("a").input_ids[-1] == self.llm_tokenizer.eos_token_id
        return "" if ends_in_eos else self.llm_tokenizer.eos_token

    @staticmethod
    def split_prefix(text, rng=random):
        """Split a caption at a random word: (prefix, suffix), the suffix never empty."""
        words = text.split()
        if len(words) < 2:
            return "", text
        cut = rng.randint(0, len(words) - 1)
        return " ".join(words[:cut]), " ".join(words[cut:])

    def lm_loss(self, prefix, samples, text):
        if "text_output" in samples:
            inputs, targets = text, self.check_text(samples, "text_output")
        else:
            pairs = [self.split_prefix(t) for t in text]
            inputs, targets = [p for p, _ in pairs], [s for _, s in pairs]
        tokenizer = self.llm_tokenizer
        tokenizer.padding_side = "right"
        enc = tokenizer([self.prompt + t for t in inputs], return_tensors="pt", padding="longest",
                        truncation=True, max_length=self.max_txt_len).to(prefix.device)
        dec = tokenizer([t + self.target_suffix for t in targets], return_tensors="pt", padding="longest", truncation=True,
                        max_length=self.max_txt_len).to(prefix.device)
        labels = dec.input_ids.masked_fill(dec.attention_mask == 0, -100)
        embeds = self.llm_model.get_input_embeddings()(enc.input_ids.long())  # (B, 0) for empty text
        return self.llm_model(
            inputs_embeds=torch.cat([prefix.to(embeds.dtype), embeds], dim=1),
            attention_mask=torch.cat([self.ones(prefix), enc.attention_mask], dim=1),
            decoder_attention_mask=dec.attention_mask,
            labels=labels,
            return_dict=True,
        ).loss

    def decode(self, image, prompts, num_return_sequences=1, use_nucleus_sampling=False,
               num_beams=5, **kwargs):
        prefix, _ = self.visual_prefix(image, mask_ratio=0.0)
        tokenizer = self.llm_tokenizer
        tokenizer.padding_side = "right"  # encoder input: padding is masked wherever it is
        enc = tokenizer(prompts, return_tensors="pt", padding="longest").to(image.device)
        with self.llm_autocast():
            embeds = self.llm_model.get_input_embeddings()(enc.input_ids.long())  # (B, 0) for empty text
            outputs = self.llm_model.generate(
                inputs_embeds=torch.cat([prefix.to(embeds.dtype), embeds], dim=1),
                attention_mask=torch.cat([self.ones(prefix), enc.attention_mask], dim=1),
                do_sample=use_nucleus_sampling,
                num_beams=1 if use_nucleus_sampling else num_beams,
                num_return_sequences=num_return_sequences,
                **kwargs,
            )
        return [t.strip() for t in tokenizer.batch_decode(outputs, skip_special_tokens=True)]
