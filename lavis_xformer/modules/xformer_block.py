"""The X-Former fusion block (paper section 2.3), as small composable modules.

Nothing in this file knows about LAVIS: the block takes the Q-Former's query output and the
frozen MAE encoder's tokens and returns the enhanced queries and the enriched MAE tokens.

Data flow (B batch, Nq queries, Nm MAE tokens, D = Q-Former width, Dm = MAE width)::

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
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention when context is None).

    Args:
        dim: width D of ``x`` and of the output.
        num_heads: number of heads; must divide ``dim``.
        context_dim: width of ``context``; defaults to ``dim``.

    Shapes: x (B, N, D), context (B, M, Dc), key_padding_mask (B, M) bool with True = attend.
    Returns (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: Optional[int] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention width {dim} is not divisible by num_heads={num_heads}")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        B, N, D = x.shape
        context = x if context is None else context
        M = context.shape[1]
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, D // h).transpose(1, 2)
        k, v = self.kv(context).reshape(B, M, 2, h, D // h).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = key_padding_mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """Two-layer GELU MLP. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossBlock(nn.Module):
    """Pre-norm block: [self-attention] -> cross-attention to ``context`` -> MLP, each residual.

    Shapes: x (B, N, D), context (B, M, Dc) -> (B, N, D).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: Optional[int] = None,
        mlp_ratio: float = 4.0,
        self_attn: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        context_dim = context_dim or dim
        self.norm_self = nn.LayerNorm(dim, eps=eps) if self_attn else None
        self.self_attn = Attention(dim, num_heads) if self_attn else None
        self.norm_cross = nn.LayerNorm(dim, eps=eps)
        self.norm_context = nn.LayerNorm(context_dim, eps=eps)
        self.cross_attn = Attention(dim, num_heads, context_dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.self_attn is not None:
            x = x + self.self_attn(self.norm_self(x))
        x = x + self.cross_attn(self.norm_cross(x), self.norm_context(context))
        return x + self.mlp(self.norm_mlp(x))


class XFormerFusion(nn.Module):
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

    The fusion interface the models use (shared with the baselines in ``fusions.py``):
    ``uses_mae``, ``reconstructs``, ``fused_prefix`` (the ITM/ITG query prefix is the fused
    output, not the learned query tokens) and ``context`` (the Q-Former's cross-attention input).
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

    def context(self, image_embeds: torch.Tensor, mae_tokens: Optional[torch.Tensor]) -> torch.Tensor:
        """The Q-Former cross-attends to the CLIP tokens alone (MAE enters after it)."""
        return image_embeds

    def forward(
        self, queries: torch.Tensor, mae_tokens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        enriched = self.mae_block(self.mae_in(mae_tokens), context=queries)
        enhanced = self.query_block(queries, context=enriched)
        return enhanced, None if self.mae_out is None else self.mae_out(enriched)
