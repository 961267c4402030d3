"""Attention building blocks, timm-style: multi-head attention (self or cross), MLP and the
pre-norm block the fusions are made of. Torch only.

Shapes: B batch, N tokens of ``x``, M tokens of ``context``, D width.
"""
from typing import Optional

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
