"""Neural modules of X-Former, free of LAVIS: testable and reusable on their own."""
from lavis_xformer.modules.mae_branch import MAEBranch, MAEEncoding, masked_mse, patchify
from lavis_xformer.modules.xformer_block import Attention, CrossBlock, Mlp, XFormerFusion
