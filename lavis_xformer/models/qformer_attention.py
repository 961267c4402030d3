"""Fused attention (``torch.nn.functional.scaled_dot_product_attention``) in LAVIS's Q-Former.

LAVIS 1.0.2's ``BertSelfAttention`` materialises the (B, heads, N, M) score and probability
tensors in separate kernels (matmul, scale, add mask, softmax, dropout, matmul). The fused
kernel computes the same softmax(Q K^T / sqrt(d) + mask) V without storing them, for every
attention of the Q-Former: query self-attention, cross-attention to the image tokens, the
text passes with their padding and causal masks, and the cached keys/values of generation.

Same results: in eval mode the outputs equal LAVIS's to float rounding (tests); in training
the attention dropout draws its mask from the same RNG but in another pattern, so single
steps differ while the distribution of the dropout is the same. Cases the fused kernel does
not cover fall back to LAVIS's own code: attention maps requested (``output_attentions``,
Grad-CAM's ``save_attention``), head masks, relative position embeddings.
"""
import torch
import torch.nn.functional as F

from lavis.models.blip2_models.Qformer import BertSelfAttention


class FusedBertSelfAttention(BertSelfAttention):
    """LAVIS's ``BertSelfAttention`` with the fused kernel; same parameters, same outputs.

    Shapes: hidden_states (B, N, D); encoder_hidden_states (B, M, Dc) for cross-attention;
    attention masks additive, broadcastable to (B, heads, N, M); past_key_value a pair of
    (B, heads, P, D/heads). Returns (context (B, N, D), (keys, values)).
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
            keys = self.transpose_for_scores(self.key(encoder_hidden_states))
            values = self.transpose_for_scores(self.value(encoder_hidden_states))
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
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        B, _, N, _ = context.shape
        return context.transpose(1, 2).reshape(B, N, self.all_head_size), (keys, values)


def use_fused_attention(qformer):
    """Switch every attention of a LAVIS Q-Former (``BertLMHeadModel`` or ``BertModel``) to
    the fused kernel, in place; parameters and state dict are unchanged. Returns ``qformer``."""
    for module in qformer.modules():
        if type(module) is BertSelfAttention:
            module.__class__ = FusedBertSelfAttention
    return qformer


def use_lavis_attention(qformer):
    """Undo ``use_fused_attention`` (LAVIS's own attention again)."""
    for module in qformer.modules():
        if type(module) is FusedBertSelfAttention:
            module.__class__ = BertSelfAttention
    return qformer
