"""The paper's baselines (section 2.2) behind the same fusion interface as ``XFormerFusion``.

Every fusion answers four questions for the model (``lavis_xformer.models.base``), so that the
model never branches on the variant's name:

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

Nothing here knows about LAVIS.
"""
from typing import Optional

import torch
from torch import nn


class QueryPassthrough(nn.Module):
    """BLIP-2: the Q-Former's output queries are the image representation; no MAE at all."""

    uses_mae = False
    reconstructs = False
    fused_prefix = False

    def context(self, image_embeds: torch.Tensor, side: Optional[torch.Tensor]) -> torch.Tensor:
        return image_embeds

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

    def context(self, image_embeds: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return torch.cat([image_embeds, self.mae_proj(side)], dim=1)
