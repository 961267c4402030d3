"""Fused attention (``torch.nn.functional.scaled_dot_product_attention``) in the parts this
plugin takes from LAVIS 1.0.2 and transformers 4.26: the Q-Former (``BertSelfAttention``),
the EVA CLIP ViT (``eva_vit.Attention``) and the MAE encoder and decoder
(``ViTMAESelfAttention``).

Those classes materialise the (B, heads, N, M) score and probability tensors in separate
kernels (matmul, scale, mask, softmax, dropout, matmul). The fused kernel computes the same
softmax(Q K^T * scale + mask) V without storing them. Measured on an H200 at the paper's size
(docs/performance.md): 7% off the stage-1 step of both BLIP-2 and X-Former and 4 GB less
peak memory from the Q-Former alone.

Same results: in eval mode the outputs equal the original classes' to float rounding
(tests); in training the attention dropout draws its mask in another pattern, so single
steps differ while the dropout's distribution is the same. What the fused kernel does not
cover falls back to the original code: attention maps requested (``output_attentions``,
Grad-CAM's ``save_attention``), head masks, relative position tables.

``use_fused_attention(module)`` swaps the classes in place (parameters and state dict
unchanged); ``use_eager_attention`` swaps them back. Models apply it unless
``model.fused_attention: false``.
"""
import torch
import torch.nn.functional as F

from lavis.models.blip2_models.Qformer import BertSelfAttention
from lavis.models.eva_vit import Attention as EvaAttention
from transformers.models.vit_mae.modeling_vit_mae import ViTMAESelfAttention

from lavis_xformer.models import fp8, shared_kv


def _dropout(module_dropout, training):
    return module_dropout.p if training else 0.0


class FusedBertSelfAttention(BertSelfAttention):
    """LAVIS's Q-Former attention, fused.

    Shapes: hidden_states (B, N, D); encoder_hidden_states (B, M, Dc) for cross-attention;
    attention masks additive, broadcastable to (B, heads, N, M); past_key_value a pair of
    (B, heads, P, D/heads). Returns (context (B, N, D), (keys, values)), as the original.
    """

    def forward(self, hidden_states, attention_mask=None, head_mask=None,
                encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_value=None, output_attentions=False):
        if (output_attentions or head_mask is not None or self.save_attention
                or self.position_embedding_type != "absolute"):
            return super().forward(hidden_states, attention_mask, head_mask,
                                   encoder_hidden_states, encoder_attention_mask,
                                   past_key_value, output_attentions)
        if encoder_hidden_states is not None:
            # image keys/values shared by a training step's passes (shared_kv.py), if bound
            shared = shared_kv.lookup(self, encoder_hidden_states)
            keys, values = shared if shared is not None else shared_kv.project(self, encoder_hidden_states)
            attention_mask = encoder_attention_mask
        else:
            keys = self.transpose_for_scores(self.key(hidden_states))
            values = self.transpose_for_scores(self.value(hidden_states))
            if past_key_value is not None:
                keys = torch.cat([past_key_value[0], keys], dim=2)
                values = torch.cat([past_key_value[1], values], dim=2)
        queries = self.transpose_for_scores(self.query(hidden_states))
        if attention_mask is not None:
            attention_mask = attention_mask.to(queries.dtype)
        context = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=attention_mask,
            dropout_p=_dropout(self.dropout, self.training))
        B, _, N, _ = context.shape
        return context.transpose(1, 2).reshape(B, N, self.all_head_size), (keys, values)


class FusedEvaAttention(EvaAttention):
    """LAVIS's EVA ViT attention, fused. x (B, N, C), rel_pos_bias (heads, N, N) -> (B, N, C)."""

    def forward(self, x, rel_pos_bias=None):
        if self.relative_position_bias_table is not None:  # not in BLIP-2's EVA ViT-g
            return super().forward(x, rel_pos_bias)
        B, N, _ = x.shape
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = fp8.linear(self.qkv, x, qkv_bias).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if rel_pos_bias is None else rel_pos_bias.unsqueeze(0).to(qkv.dtype)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask, scale=self.scale,
                                           dropout_p=_dropout(self.attn_drop, self.training))
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))


def _split_heads(x, heads):
    """(B, N, heads * d) -> (B, heads, N, d)."""
    B, N, _ = x.shape
    return x.view(B, N, heads, -1).transpose(1, 2)


class FusedViTMAESelfAttention(ViTMAESelfAttention):
    """transformers' ViT-MAE attention, fused. (B, N, D) -> ((B, N, D),).

    Uses only the projections and sizes, not ``transpose_for_scores`` (gone from newer
    transformers) or the ``dropout`` module (``dropout_prob`` there).
    """

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        if head_mask is not None or output_attentions:
            return super().forward(hidden_states, head_mask, output_attentions)
        q, k, v = (_split_heads(layer(hidden_states), self.num_attention_heads)
                   for layer in (self.query, self.key, self.value))
        dropout = getattr(self, "dropout", None)
        p = _dropout(dropout, self.training) if dropout is not None else (
            getattr(self, "dropout_prob", 0.0) if self.training else 0.0)
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        B, _, N, _ = context.shape
        return (context.transpose(1, 2).reshape(B, N, self.all_head_size),)


FUSED = {BertSelfAttention: FusedBertSelfAttention, EvaAttention: FusedEvaAttention,
         ViTMAESelfAttention: FusedViTMAESelfAttention}
EAGER = {fused: eager for eager, fused in FUSED.items()}


def _swap(module, classes):
    for child in module.modules():
        replacement = classes.get(type(child))
        if replacement is not None:
            child.__class__ = replacement
    return module


def use_fused_attention(module):
    """Switch every Q-Former, EVA ViT and ViT-MAE attention inside ``module`` to the fused
    kernel, in place. Returns ``module``."""
    return _swap(module, FUSED)


def use_eager_attention(module):
    """Undo ``use_fused_attention``: the libraries' own attention code again."""
    return _swap(module, EAGER)
