"""X-Former stage 2 (paper "Stage 2: LLM Alignment"): enhanced queries -> one linear layer ->
a frozen LLM, trained with the language-modelling loss.

    ``xformer_opt``  OPT (decoder-only): [projected queries; prompt + text + "\\n"] with the
                     loss on the text tokens only (queries, prompt and padding are masked).
    ``xformer_t5``   FlanT5 (encoder-decoder), prefix LM as in BLIP-2's supplementary: each
                     caption is split at a random word between its start and its middle
                     (the paper's rule); [projected queries; prefix] is the
                     encoder input and the suffix the decoder target.

Samples that carry answers (``text_output``, or ``answer`` as VQA sets give it) train VQA:
prompt(question) -> answer, the loss on the answer only; LAVIS's VQA train sets give several
answers per question and one is drawn by its weight (``vqa_targets``). With
``qformer_text_input: true`` (VQA fine-tuning, as BLIP-2) the question also goes into the
Q-Former beside the queries, in training and in ``predict_answers``.

Both image encoders and the LLM are frozen; the Q-Former, the fusion block and the projection
train (``freeze_fusion: true``: only the projection). The Q-Former's text-only parts (word and position embeddings, text FFNs, LM head) are
not built, as in BLIP-2's stage 2, so DDP needs no ``find_unused_parameters``. The masked-patch
reconstruction is off by default in stage 2 (``loss_weights.rec: 0``, the paper's ablation shows
it hurts); then the MAE sees every patch, as at inference, and its decoder is not built.

Zero-shot VQA follows the paper: prompt "Question: {} Short Answer:", beam 5, length penalty 0,
generation stops at a newline and answers are cut there, as BLIP-2 does.
"""
import os
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch

from lavis.common.registry import registry
from transformers.modeling_outputs import ModelOutput

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.models import encoders
from lavis_xformer.models.base import XFormerBase
from lavis_xformer.models.config import STAGE2_LOSSES
from lavis_xformer.models.generation import VQA_PROMPT, format_prompts  # noqa: F401
from lavis_xformer.models.llm_head import FrozenLLMHead, OPTHead
from lavis_xformer.nn import freeze


@dataclass
class XFormerLLMOutput(ModelOutput):
    """Stage-2 losses: ``loss`` is ``loss_lm`` plus ``model.loss_weights.rec`` times
    ``loss_rec`` (None, and absent from the keys, when stage 2 does not reconstruct)."""

    loss: Optional[torch.FloatTensor] = None
    loss_lm: Optional[torch.FloatTensor] = None
    loss_rec: Optional[torch.FloatTensor] = None


class XFormerLLMBase(FrozenLLMHead, XFormerBase):
    """Stage 2 over the X-Former image path: the stage-2 losses; the frozen LLM, its
    projection and decoding come from the head shared with the BLIP-2 twin (llm_head.py)."""

    # new in stage 2: a stage-1 `pretrained` checkpoint cannot hold it (sources.check_pretrained_fit)
    PRETRAINED_MAY_LACK = ("llm_proj.",)
    # stage 1's ITC/ITM heads, which a stage-1 `pretrained` checkpoint holds
    UNBUILT = ("vision_proj", "text_proj", "itm_head", "temp")

    LOSSES = STAGE2_LOSSES

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.model_config
        self.qformer_text_input = c.qformer_text_input
        if self.rec_weight and not self.mask_ratio:
            raise ValueError("model.loss_weights.rec > 0 needs masked patches: set model.mask_ratio (e.g. 0.5)")
        if not self.rec_weight:
            self.mask_ratio = 0.0  # the MAE sees the whole image, as at inference
        if c.freeze_fusion:
            if self.rec_weight:
                raise ValueError("model.freeze_fusion: true leaves the reconstruction loss nothing to train; set loss_weights.rec: 0")
            self.freeze_image_side()
        self.build_llm_head(c, self.Qformer.config.hidden_size)

    def qformer_text_parts(self, c):
        """VQA fine-tuning (supplementary section 2): the question also goes into the Q-Former,
        as BLIP-2's fine-tuning does, so its text encoder is built (from the stage-1
        checkpoint); otherwise only the query pass, as BLIP-2's stage 2."""
        return "encoder" if c.qformer_text_input else "none"

    @cached_property
    def qformer_tokenizer(self):
        """The Q-Former's BERT tokenizer (``model.tokenizer``), for ``qformer_text_input``."""
        return encoders.build_tokenizer(self.model_config.tokenizer)

    def qformer_text(self, texts, device):
        """BERT tokens of the texts the Q-Former reads beside its queries, or None when
        ``qformer_text_input`` is off."""
        if not self.qformer_text_input or texts is None:
            return None
        return self.qformer_tokenizer(list(texts), padding="longest", truncation=True,
                                      max_length=self.max_txt_len, return_tensors="pt").to(device)

    @staticmethod
    def vqa_targets(samples, rng=None):
        """(questions, answers) of a VQA training batch, else None. LAVIS's VQA train sets
        (``coco_vqa``, ``vg_vqa``) collate each question's answers flat with ``n_answers`` and
        ``weight`` (the share of the human answers that gave it): one answer per question is
        drawn by those weights, i.e. one of its human answers at random, as the paper's VQA
        fine-tuning does. Datasets with one ``answer`` per question (easy-VQA) use it."""
        if "answer" not in samples and "text_output" not in samples:
            return None
        questions = samples["text_input"]
        questions = [questions] if isinstance(questions, str) else list(questions)
        if "n_answers" not in samples:
            answers = samples.get("text_output", samples.get("answer"))
            answers = [answers] if isinstance(answers, str) else list(answers)
            return questions, answers
        counts = [int(n) for n in samples["n_answers"]]
        weights = torch.as_tensor(samples["weight"], dtype=torch.float).flatten().cpu()
        flat = list(samples["answer"])
        if len(flat) != sum(counts) or len(counts) != len(questions):
            raise ValueError("VQA batch: %d questions, n_answers %s, %d answers" % (
                len(questions), counts, len(flat)))
        answers, start = [], 0
        for n in counts:
            pick = int(torch.multinomial(weights[start:start + n], 1, generator=rng))
            answers.append(flat[start + pick])
            start += n
        return questions, answers

    def freeze_image_side(self):
        """``freeze_fusion: true`` (supplementary Table 12, "X-Former Frozen"): the stage-1
        Q-Former, query tokens, ln_vision and fusion stay as loaded; only ``llm_proj`` trains."""
        for part in (self.Qformer, self.fusion, self.ln_vision, self.query_tokens):
            freeze(part)

    def visual_prefix(self, image, mask_ratio=None, qformer_text=None):
        """Projected enhanced queries (B, Nq, H_llm) in the LLM's dtype, plus the stage-2
        reconstruction loss when it is switched on (else None). ``qformer_text``: B strings
        the Q-Former reads beside its queries (the questions), with ``qformer_text_input``."""
        tokens = self.qformer_text(qformer_text, image.device)
        feats = self.encode_image(image, mask_ratio, text_tokens=tokens)
        loss_rec = None
        if self.rec_weight and self.training:
            loss_rec = self.mae_branch.reconstruction_loss(feats.enriched, feats.side)
        return self.project(feats.queries), loss_rec

    def decode_prefix(self, image, qformer_text=None):
        return self.visual_prefix(image, mask_ratio=0.0, qformer_text=qformer_text)[0]

    def forward(self, samples):
        image, text = self.check_samples(samples)
        vqa = self.vqa_targets(samples)
        if vqa is not None:  # VQA fine-tuning: prompt(question) -> one answer
            questions, answers = vqa
            samples = dict(samples, text_input=format_prompts(questions, self.prompt),
                           text_output=answers)
            text = samples["text_input"]
        prefix, loss_rec = self.visual_prefix(image, qformer_text=vqa[0] if vqa else None)
        with self.llm_autocast():
            loss_lm = self.lm_loss(prefix, samples, text)
        loss = loss_lm if loss_rec is None else loss_lm + self.rec_weight * loss_rec
        return XFormerLLMOutput(loss=loss, loss_lm=loss_lm, loss_rec=loss_rec)


@registry.register_model("xformer_opt")
class XFormerOPT(OPTHead, XFormerLLMBase):
    """X-Former stage 2 with a frozen OPT.

    Supported model types:
        - pretrain_opt2.7b, pretrain_opt6.7b: paper size with facebook/opt-2.7b / -6.7b.
        - tiny: the tiny stage-1 model with a small random OPT and an offline GPT-2 BPE tokenizer.

    Usage:
        >>> from lavis.models import load_model
        >>> model = load_model("xformer_opt", "tiny", is_eval=True)
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_opt2.7b": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt2.7b.yaml"),
        "pretrain_opt6.7b": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt6.7b.yaml"),
        "tiny": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt_tiny.yaml"),
        "mini": os.path.join(PACKAGE_DIR, "configs/models/xformer_opt_mini.yaml"),
    }

    def lm_loss(self, prefix, samples, text):
        """Language-modelling loss on [prefix; prompt + text + "\\n"], right-padded; labels
        mask the query positions, the prompt and the padding."""
        tokenizer = self.llm_tokenizer
        tokenizer.padding_side = "right"
        if "text_output" in samples:
            # VQA: the text is "<prompt with the question> <answer>\n", loss on the answer
            answers = self.check_text(samples, "text_output")
            full = [t + " " + a + "\n" for t, a in zip(text, answers)]
            prompt_lengths = [len(tokenizer(t).input_ids) for t in text]
        else:
            full = [self.prompt + t + "\n" for t in text]
            prompt_lengths = [self.prompt_length] * len(text)
        tokens = tokenizer(
            full, return_tensors="pt", padding="longest", truncation=True,
            max_length=self.max_txt_len,
        ).to(prefix.device)
        labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
        for row, n in enumerate(prompt_lengths):
            labels[row, :n] = -100
        labels = torch.cat([torch.full(prefix.shape[:2], -100, device=prefix.device), labels], dim=1)
        embeds = self.llm_model.get_input_embeddings()(tokens.input_ids)
        return self.llm_model(
            inputs_embeds=torch.cat([prefix.to(embeds.dtype), embeds], dim=1),
            attention_mask=torch.cat([self.ones(prefix), tokens.attention_mask], dim=1),
            labels=labels,
            return_dict=True,
        ).loss


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
        """Split a caption of n words after a random word from its start to its middle:
        the prefix is the first k words, k drawn uniformly from 0..n//2 (the paper's
        supplementary section 3: "a random value from start to middle of sentence"), the
        suffix the rest, so the suffix is never empty and holds at least half the words."""
        words = text.split()
        cut = rng.randint(0, len(words) // 2)
        return " ".join(words[:cut]), " ".join(words[cut:])

    def lm_loss(self, prefix, samples, text):
        if "text_output" in samples:  # VQA: the inputs are already the formatted prompts
            inputs, targets = text, self.check_text(samples, "text_output")
        else:
            pairs = [self.split_prefix(t) for t in text]
            inputs, targets = [self.prompt + p for p, _ in pairs], [s for _, s in pairs]
        tokenizer = self.llm_tokenizer
        tokenizer.padding_side = "right"
        enc = tokenizer(inputs, return_tensors="pt", padding="longest",
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
               num_beams=5, qformer_text=None, **kwargs):
        prefix = self.decode_prefix(image, qformer_text=qformer_text)
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
