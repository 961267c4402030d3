"""The fusion variants (paper sections 2.2 and 2.3) behind one small interface. Torch only.

    blip2     ``QueryPassthrough``: the Q-Former's output queries, no MAE.
    concat    ``ConcatFusion``: the Q-Former cross-attends to [CLIP; Linear(MAE)].
    early_ca  ``EarlyCAFusion``: Concat's context plus MAE cross-attention blocks inside the
              Q-Former (its ``layer_blocks``; models/early_ca.py puts them into LAVIS's layers).
    xformer   ``XFormerFusion``: the dual cross-attention block after the Q-Former.

``FUSIONS`` (end of this module) is the one table from a variant's name (``model.fusion``) to its
class: the model builds ``FUSIONS[name].build(shape, c)`` and the model keys allow its names.
``build`` reads the fusion's model keys from ``c`` (models/config.ModelConfig:
``fusion_num_heads``, ``fusion_mlp_ratio``, ``fusion_self_attn``, ``early_ca_mlp_ratio``) and
its sizes from a ``FusionShape``.

Every fusion is a ``Fusion`` and answers these questions for the model
(``lavis_xformer.models.base``), so that the model never branches on the variant's name:

* ``uses_mae``: does it consume side features (MAE tokens, or their stand-in)? If not, no MAE
  branch is built or loaded.
* ``context(image_embeds (B, Nc, Dc), side (B, Nm, Dm) or None)``: the Q-Former's
  cross-attention input, (B, Nc', Dc).
* ``forward(queries (B, Nq, D), side)``: ``(output queries (B, Nq, D), enriched side tokens for
  the MAE decoder or None)``.
* ``fused_prefix``: whether the ITM/ITG passes take the fused output as their query prefix
  (X-Former) or the learned query tokens, as BLIP-2 does (the Q-Former-side variants).
* ``reconstructs``: whether it can produce features for the MAE decoder (a class attribute;
  ``XFormerFusion`` built with ``reconstruct=False`` sets it False on the instance).
* ``qformer_blocks(shape, c)``: blocks that go inside the Q-Former's layers (early_ca's; the
  model installs them, models/early_ca.py), or None.

X-Former (``XFormerFusion``, paper section 2.3). Data flow (B batch, Nq queries, Nm MAE
tokens, D = Q-Former width, Dm = MAE width)::

    Q  (B, Nq, D)   Q-Former output queries
    M  (B, Nm, Dm)  frozen MAE encoder tokens (CLS + visible patches)

    m  = mae_in(M)                                   (B, Nm, D)
    m' = CrossBlock_mae(m, context=Q)                enriched MAE features: self-attention over
                                                     MAE tokens, then cross-attention 1 (MAE
                                                     tokens are queries, Q is keys/values), MLP
    q' = CrossBlock_query(Q, context=m')             enhanced queries: self-attention over the
                                                     queries, then cross-attention 2 (Q is the
                                                     query, m' keys/values), MLP
    Z  = mae_out(m')                                 (B, Nm, Dm), fed to the frozen MAE decoder

Decision (the paper names one self-attention layer "before the cross-attention with MAE" and
is silent on its width): each stream gets a pre-norm self-attention layer before its
cross-attention. ``self_attn=False`` removes both (the paper's "w/o SA" ablation). With the
paper's widths (D=768, Dm=1280, MLP ratio 4) the block has 20.9M parameters, which puts stage 2
at 128M trainable with OPT-2.7B against the paper's 129M (Tables 3 and 9).
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from lavis_xformer.nn.attention import CrossBlock


@dataclass(frozen=True)
class FusionShape:
    """The sizes a fusion is built for, known once the model's encoders are built."""

    dim: int            # Q-Former width D
    side_dim: int       # side (MAE) token width Dm
    clip_dim: int       # CLIP token width Dc
    clip_tokens: int    # CLIP tokens Nc
    decoder_dim: int    # the MAE decoder's input width
    reconstruct: bool   # build the head to the MAE decoder (a reconstruction loss uses it)
    cross_attention: Tuple[bool, ...] = ()  # per Q-Former layer: does it attend to the CLIP tokens


class Fusion(nn.Module):
    """The interface (module docstring). By default the Q-Former cross-attends to the CLIP
    tokens alone; a subclass defines ``forward`` and overrides what differs."""

    uses_mae = False
    reconstructs = False
    fused_prefix = False

    @classmethod
    def build(cls, shape: FusionShape, c) -> "Fusion":
        """The fusion for ``shape``, configured by the model keys ``c`` (module docstring)."""
        return cls()

    def qformer_blocks(self, shape: FusionShape, c) -> Optional[list]:
        return None

    def context(self, image_embeds: torch.Tensor, side: Optional[torch.Tensor]) -> torch.Tensor:
        return image_embeds


class QueryPassthrough(Fusion):
    """BLIP-2: the Q-Former's output queries are the image representation; no MAE at all."""

    def forward(self, queries: torch.Tensor, side: Optional[torch.Tensor]):
        return queries, None


class ConcatFusion(QueryPassthrough):
    """Concat (paper Fig. 1b): MAE tokens, linearly projected to the CLIP width, appended to
    the CLIP tokens along the token axis; the Q-Former cross-attends to both.

    Args:
        side_dim: width Dm of the MAE tokens.
        clip_dim: width Dc of the CLIP tokens.

    ``context``: (B, Nc, Dc), (B, Nm, Dm) -> (B, Nc + Nm, Dc).
    """

    uses_mae = True

    def __init__(self, side_dim: int, clip_dim: int):
        super().__init__()
        self.mae_proj = nn.Linear(side_dim, clip_dim)

    @classmethod
    def build(cls, shape: FusionShape, c) -> "ConcatFusion":
        return cls(shape.side_dim, shape.clip_dim)

    def context(self, image_embeds: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return torch.cat([image_embeds, self.mae_proj(side)], dim=1)


class XFormerFusion(Fusion):
    """Dual cross-attention between Q-Former queries and MAE tokens (module docstring).

    Args:
        dim: Q-Former width D.
        mae_dim: MAE encoder width Dm (the frozen MAE decoder's input width).
        num_heads: attention heads in both streams.
        mlp_ratio: MLP hidden width as a multiple of D.
        self_attn: keep the self-attention layer before each cross-attention.

        out_dim: width of the enriched features handed to the MAE decoder; defaults to
            ``mae_dim`` (differs when another encoder stands in for the MAE encoder).
        reconstruct: build ``mae_out``, the head to the MAE decoder's input; without a
            reconstruction loss it is not built (an unused trainable parameter would stop
            DDP without find_unused_parameters).

    ``forward(queries (B, Nq, D), mae_tokens (B, Nm, Dm))`` returns
    ``(enhanced_queries (B, Nq, D), enriched_mae (B, Nm, out_dim))``; enriched_mae is None
    without the reconstruction head.

    The Q-Former cross-attends to the CLIP tokens alone (``Fusion.context``): the MAE enters
    after it. The ITM/ITG query prefix is the fused output (``fused_prefix``).
    """

    uses_mae = True
    reconstructs = True
    fused_prefix = True

    def __init__(
        self,
        dim: int,
        mae_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        self_attn: bool = True,
        out_dim: Optional[int] = None,
        reconstruct: bool = True,
    ):
        super().__init__()
        self.mae_in = nn.Linear(mae_dim, dim)
        self.mae_block = CrossBlock(dim, num_heads, mlp_ratio=mlp_ratio, self_attn=self_attn)
        self.query_block = CrossBlock(dim, num_heads, mlp_ratio=mlp_ratio, self_attn=self_attn)
        self.reconstructs = reconstruct
        self.mae_out = None
        if reconstruct:
            self.mae_out = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim or mae_dim))

    @classmethod
    def build(cls, shape: FusionShape, c) -> "XFormerFusion":
        return cls(dim=shape.dim, mae_dim=shape.side_dim, num_heads=c.fusion_num_heads,
                   mlp_ratio=c.fusion_mlp_ratio, self_attn=c.fusion_self_attn,
                   out_dim=shape.decoder_dim, reconstruct=shape.reconstruct)

    def forward(
        self, queries: torch.Tensor, mae_tokens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        enriched = self.mae_block(self.mae_in(mae_tokens), context=queries)
        enhanced = self.query_block(queries, context=enriched)
        return enhanced, None if self.mae_out is None else self.mae_out(enriched)


class EarlyCAFusion(ConcatFusion):
    """Early cross-attention (paper Fig. 1c): Concat's context [CLIP; Linear(MAE)], and after
    each Q-Former layer without CLIP cross-attention one ``CrossBlock`` in which the query
    positions attend to the MAE part of that context.

    Args:
        side_dim: width Dm of the MAE tokens.
        clip_dim: width Dc of the CLIP tokens (and of the projected MAE tokens).
        clip_tokens: number Nc of CLIP tokens, where a layer splits the context.

    The blocks run inside the Q-Former, so they live there (models/early_ca.py installs them
    into LAVIS's layers, as ``Qformer.bert.encoder.layer.<i>.mae_block``, so they train, freeze
    and strip with it); ``layer_blocks`` builds them.
    """

    def __init__(self, side_dim: int, clip_dim: int, clip_tokens: int):
        super().__init__(side_dim, clip_dim)
        self.clip_tokens = clip_tokens

    @classmethod
    def build(cls, shape: FusionShape, c) -> "EarlyCAFusion":
        return cls(shape.side_dim, shape.clip_dim, shape.clip_tokens)

    def qformer_blocks(self, shape: FusionShape, c) -> list:
        return self.layer_blocks(shape.dim, shape.cross_attention, num_heads=c.fusion_num_heads,
                                 mlp_ratio=c.early_ca_mlp_ratio, self_attn=c.fusion_self_attn)

    def layer_blocks(self, dim: int, has_cross_attention: Sequence[bool], num_heads: int,
                     mlp_ratio: float, self_attn: bool = True) -> list:
        """One ``CrossBlock`` (width ``dim``, context width Dc) per Q-Former layer without
        CLIP cross-attention, None for the others, in layer order."""
        context_dim = self.mae_proj.out_features
        return [None if cross else CrossBlock(dim, num_heads, context_dim=context_dim,
                                              mlp_ratio=mlp_ratio, self_attn=self_attn)
                for cross in has_cross_attention]


# The one table from a variant's name (model.fusion) to its class, in the order messages list
# them; models/config.py allows these names, the model builds the named class.
FUSIONS = {
    "xformer": XFormerFusion,
    "blip2": QueryPassthrough,
    "concat": ConcatFusion,
    "early_ca": EarlyCAFusion,
}
