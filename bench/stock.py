"""Stock LAVIS 1.0.2 BLIP-2 stage 1: ``lavis.models.blip2_models.blip2_qformer.Blip2Qformer``
itself (its ``forward``, LAVIS's Q-Former and EVA ViT attention classes), with random weights.

``Blip2Qformer.__init__`` downloads bert-base-uncased and EVA ViT-g, so the instance is made
without it and given the modules its ``__init__`` would build, from the same builders the
plugin uses (LAVIS's ``VisionTransformer`` with ``create_eva_vit_g``'s arguments, frozen and
in fp16 on CUDA as ``init_vision_encoder`` leaves it; LAVIS's ``BertLMHeadModel`` with
``init_Qformer``'s config, the [DEC] row and the query FFNs copied from the text FFNs), with
nothing of the plugin's speed work: eager attention, no shared keys/values, no compilation.

``Blip2Qformer.forward`` calls ``torch.distributed.get_rank()`` unconditionally and gathers
across ranks: ``one_process_group`` gives it a real process group of one (gloo on a CPU, NCCL
on a GPU), as a one-GPU ``torchrun`` does, for the benchmark only.
"""
import contextlib
import os
import tempfile

import torch
import torch.distributed as dist

from bench.models import build


def stock_blip2(size: str, device: str, tokenizers: dict = None):
    """LAVIS's Blip2Qformer at ``size`` on ``device`` (random weights)."""
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
    from lavis.models.blip2_models.Qformer import BertLMHeadModel

    parts = build(size, 1, "blip2", device, tokenizers,
                  {"fused_attention": False, "share_image_kv": False})
    stock = Blip2Qformer.__new__(Blip2Qformer)
    torch.nn.Module.__init__(stock)
    for name in ("visual_encoder", "ln_vision", "Qformer", "query_tokens", "vision_proj",
                 "text_proj", "itm_head", "temp"):
        setattr(stock, name, getattr(parts, name))
    stock.Qformer.__class__ = BertLMHeadModel  # the plugin's subclass only changes generation
    stock.tokenizer = parts.tokenizer
    stock.max_txt_len = parts.max_txt_len
    stock.image_size = parts.image_size
    return stock.to(device)


@contextlib.contextmanager
def one_process_group(device: str):
    """A process group of one process (what ``Blip2Qformer.forward`` needs) unless one exists."""
    if dist.is_initialized():
        yield
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method="file://" + os.path.join(tmp, "pg"),
                                rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()
