"""Neural modules of X-Former, torch only (no LAVIS): attention blocks, the fusion variants
behind one interface, the frozen MAE branch with its masking, and ``freeze``, the one way a
part is frozen. Testable and reusable on their own."""
from lavis_xformer.nn.attention import Attention, CrossBlock, Mlp
from lavis_xformer.nn.frozen import freeze
from lavis_xformer.nn.fusions import (ConcatFusion, EarlyCAFusion, Fusion, QueryPassthrough,
                                      XFormerFusion)
from lavis_xformer.nn.mae import MAEBranch, MAEEncoding, masked_mse, patchify, random_patch_mask
