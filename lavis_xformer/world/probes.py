"""Linear probes of the frozen image encoders: what does each one keep of a scene?

The paper's mechanism (section 1) is that a contrastive encoder keeps global semantics and
drops local detail, and that an MAE keeps the detail. In the miniature world that claim can be
measured directly on the frozen parts, before any Q-Former is trained: each encoder embeds the
train and held-out val scenes (its CLS token and the mean of its patch tokens), and a linear
classifier, fit on the train features, predicts from them on val

    shape presence   for each of the four shapes: is one in the scene? (4 binary probes)
    colour presence  for each of the eight colours: is one in the scene? (8 binary probes)
    shape count      for each shape: how many (0..max_count) are in the scene? (4 probes)

Each is reported as accuracy next to the majority answer's accuracy on the same val scenes
(mean over the probes of a kind). An encoder that has not learned a property stays at the
majority line; the gap between CLIP side and MAE on counts is the mechanism's claim, measured.
"""
import json
import os

import torch
import torch.nn.functional as F

from lavis_xformer.world.scenes import COLOURS, SHAPES

PROBE_STEPS = 300


def scene_targets(scenes, max_count):
    """{"shape": (N, 4) 0/1, "colour": (N, 8) 0/1, "count": (N, 4) counts clipped at max_count}."""
    shapes = torch.tensor([[sum(o["shape"] == s for o in sc["objects"]) for s in SHAPES] for sc in scenes])
    colours = torch.tensor([[any(o["colour"] == c for o in sc["objects"]) for c in COLOURS] for sc in scenes])
    return {"shape": (shapes > 0).long(), "colour": colours.long(), "count": shapes.clamp(max=max_count)}


def fit_probe(train_x, train_y, val_x, classes, seed=0):
    """A linear softmax classifier on standardised features (full-batch AdamW); val predictions."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    weight = (torch.randn(train_x.shape[1], classes, generator=gen) * 0.01).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.AdamW([weight, bias], lr=1e-2, weight_decay=0.1)
    for _ in range(PROBE_STEPS):
        loss = F.cross_entropy(train_x @ weight + bias, train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (val_x @ weight + bias).argmax(1)


def probe_features(train_x, val_x, train_t, val_t):
    """{kind: {"acc", "majority"}} in %, each the mean over that kind's probes."""
    out = {}
    for kind in ("shape", "colour", "count"):
        accs, majorities = [], []
        for j in range(train_t[kind].shape[1]):
            ytr, yva = train_t[kind][:, j], val_t[kind][:, j]
            classes = int(max(ytr.max(), yva.max())) + 1
            pred = fit_probe(train_x, ytr, val_x, classes, seed=j)
            accs.append((pred == yva).float().mean().item())
            majorities.append((yva == torch.bincount(ytr, minlength=classes).argmax()).float().mean().item())
        out[kind] = {"acc": round(100 * sum(accs) / len(accs), 1),
                     "majority": round(100 * sum(majorities) / len(majorities), 1)}
    return out


def _pooled(tokens):
    """(B, 1 + N, D) -> (B, 2D): the CLS token and the mean of the patch tokens."""
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1)


@torch.no_grad()
def encoder_features(encode, images, batch=250):
    return torch.cat([_pooled(encode(images[i:i + batch]).float()) for i in range(0, len(images), batch)])


def frozen_encoders(clip_dir, mae_dir, arch):
    """{"clip_vit", "mae"}: uint8 images (B, 3, H, W) -> tokens (B, 1 + N, D) of the cached CLIP
    side (``vit.pth``) and MAE (``save_pretrained`` folder), built and fed as an X-Former model
    builds and feeds its own (``XFormerBase``), so that the features are the model's: the CLIP
    ViT (before the trained ``ln_vision``) and the model's MAE branch (``build_mae_branch``) on
    the whole image, with the model's attention kernel, both given CLIP-normalised images (the
    branch re-normalises to the MAE's statistics itself)."""
    from lavis_xformer.models.base import build_mae_branch
    from lavis_xformer.models.config import ModelConfig
    from lavis_xformer.models.encoders import build_eva_vit
    from lavis_xformer.models.fused_attention import use_fused_attention
    from lavis_xformer.world import pretrain

    c = ModelConfig.from_cfg({
        "image_size": arch["image_size"], "vit": arch["vit"], "drop_path_rate": 0.0,
        "clip_vit_weights": os.path.join(clip_dir, "vit.pth"), "mae_weights": mae_dir})
    vit = build_eva_vit(c).eval()
    mae = build_mae_branch(c, decoder=False).eval()
    if c.fused_attention:
        use_fused_attention(vit)
        use_fused_attention(mae)

    def clip_input(images):
        return pretrain.normalise(images, pretrain.CLIP_MEAN, pretrain.CLIP_STD)

    return {"clip_vit": lambda x: vit(clip_input(x)),
            "mae": lambda x: mae.encode(clip_input(x), mask_ratio=0.0).tokens}


def probe_frozen_parts(world, clip_dir, mae_dir, arch, n_train=2000):
    """Probe the cached CLIP side and MAE (``frozen_encoders``) on the world's train (first
    ``n_train``) and val scenes: {"clip_vit": {...}, "mae": {...}, "n_train", "n_val"}."""
    from lavis_xformer.world import pretrain

    with open(os.path.join(world, "settings.json")) as f:
        max_count = int(json.load(f)["max_count"])
    split_data = {}
    for split, n in (("train", n_train), ("val", None)):
        images, _ = pretrain.load_images(world, split)
        with open(os.path.join(world, split, "scenes.json")) as f:
            scenes = json.load(f)
        split_data[split] = (images[:n], scene_targets(scenes[:n], max_count))
    result = {"n_train": len(split_data["train"][0]), "n_val": len(split_data["val"][0])}
    for name, encode in frozen_encoders(clip_dir, mae_dir, arch).items():
        feats = {split: encoder_features(encode, images) for split, (images, _) in split_data.items()}
        result[name] = probe_features(feats["train"], feats["val"], split_data["train"][1], split_data["val"][1])
    return result


def format_probes(result):
    lines = ["linear probes of the frozen encoders (val scenes, %d; accuracy %% / majority %%):" % result["n_val"]]
    for name in ("clip_vit", "mae"):
        r = result[name]
        lines.append("  %-8s shape presence %.1f / %.1f   colour presence %.1f / %.1f   shape count %.1f / %.1f" % (
            name, r["shape"]["acc"], r["shape"]["majority"], r["colour"]["acc"], r["colour"]["majority"],
            r["count"]["acc"], r["count"]["majority"]))
    return "\n".join(lines)
