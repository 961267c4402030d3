"""Stage 1's own measure of learning: image -> caption retrieval on held-out scenes by ITC.

The stage-1 model (``xformer`` type ``mini``, any fusion) embeds each test image (its output
queries through ``vision_proj``) and each test caption (``text_proj`` of the [CLS] output);
an image's score for a caption is the best query's cosine similarity, as in BLIP-2's ITC.
Recall@1 and @5 over N images against their N captions; chance is 1/N and 5/N. A Q-Former
whose queries do not depend on the image stays at chance, whatever its language losses did.
"""
import json
import os

import torch
from PIL import Image


def stage1_retrieval(checkpoint, assets, model_options=None, split="test", n=200, device="cpu"):
    """{"r1", "r5", "chance_r1", "chance_r5", "n"} (in %) of one stage-1 checkpoint."""
    from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor

    from lavis_xformer import factory
    from lavis_xformer.world.pretrain import asset_model_keys

    cfg = factory.model_config("xformer", "mini", dict(asset_model_keys(assets, "stage1"),
                                                       **(model_options or {})))
    model = factory.build_model(cfg, checkpoint=checkpoint).eval().to(device)
    with open(os.path.join(assets["world"], split, "captions.json")) as f:
        records = json.load(f)[:n]
    image_processor = BlipImageEvalProcessor(image_size=cfg.image_size)
    text_processor = BlipCaptionProcessor()
    images = torch.stack([image_processor(Image.open(os.path.join(assets["world"], split, r["image"])).convert("RGB"))
                          for r in records])
    texts = [text_processor(r["caption"]) for r in records]
    with torch.no_grad():
        image_feats = torch.cat([model.extract_features({"image": images[i:i + 50].to(device)},
                                                        mode="image").image_embeds_proj.cpu()
                                 for i in range(0, len(images), 50)])
        text_feats = model.extract_features({"text_input": texts}, mode="text").text_embeds_proj[:, 0].cpu()
    sim = torch.einsum("iqd,td->iqt", image_feats, text_feats).max(dim=1).values
    target = torch.arange(len(sim)).unsqueeze(1)
    n = len(sim)
    return {"r1": round(100.0 * (sim.topk(1, dim=1).indices == target).any(1).float().mean().item(), 2),
            "r5": round(100.0 * (sim.topk(5, dim=1).indices == target).any(1).float().mean().item(), 2),
            "chance_r1": round(100.0 / n, 2), "chance_r5": round(500.0 / n, 2), "n": n}
