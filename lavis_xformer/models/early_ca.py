"""Early cross-attention (paper section 2.2, Fig. 1c): new MAE cross-attention layers inside
the Q-Former, on the layers that have no CLIP cross-attention.

The paper describes the variant only by its size (Table 9: 183M trainable parameters in
stage 2 with OPT, 75M more than BLIP-2). Decision: after each Q-Former layer without CLIP
cross-attention (layers 1, 3, 5, ... with ``cross_attention_freq: 2``) the query positions go
through one pre-norm ``CrossBlock`` (self-attention over the queries, cross-attention to the
MAE tokens, MLP; the same timm-style block as X-Former's). The MAE tokens are first projected
to the CLIP width by one linear layer (as in Concat), so that the fusion hands the Q-Former a
single context tensor [CLIP; MAE] and every pass of the Q-Former (query pass, ITM, ITG,
generation) carries the MAE tokens without special cases. The CLIP cross-attention layers see
only the CLIP part of that context, the new blocks only the MAE part. At paper size:
MLP ratio 4 gives 172.7M (5.6% under the paper), ratio 5 (the default, ``early_ca_mlp_ratio``)
179.8M, ratio 6 186.9M; see tests/test_variants.py.

This module is the LAVIS side of the variant (the layer class and putting the blocks into the
Q-Former); the fusion itself, which builds the blocks, is ``nn.fusions.EarlyCAFusion``.

Text positions never meet the MAE tokens directly, as text never meets the CLIP tokens: in the
ITM and ITG passes they see them through the queries in the shared self-attention.
"""
import torch
from lavis.models.blip2_models.Qformer import BertLayer



class EarlyCALayer(BertLayer):
    """A LAVIS Q-Former layer whose cross-attention context is [CLIP tokens; MAE tokens].

    ``clip_tokens`` splits the context; ``mae_block`` (a ``CrossBlock`` or None) refines the
    query positions with the MAE tokens after the layer. The layer's own parameters keep
    their names, so BLIP-2 and X-Former Q-Former checkpoints load into it unchanged.
    """

    @classmethod
    def convert(cls, layer: BertLayer, clip_tokens: int, mae_block=None) -> "EarlyCALayer":
        """Turn a built ``BertLayer`` into this class in place (no re-initialisation)."""
        layer.__class__ = cls
        layer.clip_tokens = clip_tokens
        layer.mae_block = mae_block
        return layer

    def forward(self, hidden_states, attention_mask=None, head_mask=None,
                encoder_hidden_states=None, encoder_attention_mask=None, past_key_value=None,
                output_attentions=False, query_length=0):
        side = None
        if encoder_hidden_states is not None:
            side = encoder_hidden_states[:, self.clip_tokens:]
            encoder_hidden_states = encoder_hidden_states[:, : self.clip_tokens]
            if encoder_attention_mask is not None:
                encoder_attention_mask = encoder_attention_mask[..., : self.clip_tokens]
        outputs = super().forward(
            hidden_states, attention_mask, head_mask, encoder_hidden_states,
            encoder_attention_mask, past_key_value, output_attentions, query_length,
        )
        if self.mae_block is None or query_length == 0 or side is None:
            return outputs
        hidden = outputs[0]
        queries = self.mae_block(hidden[:, :query_length], side)
        return (torch.cat([queries, hidden[:, query_length:]], dim=1),) + outputs[1:]


def install(qformer, blocks, clip_tokens: int):
    """Turn every layer of LAVIS's Q-Former into an ``EarlyCALayer`` holding its block of
    ``blocks`` (``EarlyCAFusion.layer_blocks``: a ``CrossBlock`` or None per layer)."""
    layers = qformer.bert.encoder.layer
    if len(blocks) != len(layers):
        raise ValueError(f"{len(blocks)} early cross-attention blocks for {len(layers)} Q-Former layers")
    for layer, block in zip(layers, blocks):
        EarlyCALayer.convert(layer, clip_tokens, block)
