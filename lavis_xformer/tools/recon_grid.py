"""Reconstruction pictures: what the frozen MAE decoder makes of X-Former's enriched features.

    python -m lavis_xformer.tools.recon_grid MODEL --out grid.png [--checkpoint CKPT]
        [--options model.KEY=VALUE ...] [--num-images 4] [--mask-ratio 0.5] [--seed 0]
        [--annotations captions.json --image-root DIR | --split test] [--scale 2]

MODEL as for ``query_diversity`` (``xformer:tiny`` or a stage-1 run / checkpoint). One row per
image, four columns:

    original | masked input | X-Former reconstruction | frozen MAE's own reconstruction

* masked input: the patches hidden from the MAE encoder painted mid-grey;
* X-Former: the frozen MAE decoder fed with X-Former's enriched MAE features Z (cross-attention
  1 of the X-Former block: MAE tokens attending to the Q-Former output), as the
  reconstruction loss trains it;
* MAE's own: the same frozen decoder fed with the MAE encoder's own visible tokens M, i.e. the
  plain MAE; both use the same mask.

As in the MAE paper's figures, the visible patches are pasted back from the original, so the
two reconstructions differ only where the mask hid the image; with ``--no-paste`` every patch
is the decoder's prediction. Images are shown un-normalised (the MAE's ImageNet statistics
undone; ``norm_pix_loss`` predictions are mapped back with each true patch's mean and
variance). Needs a model with the reconstruction path: ``fusion: xformer`` with the MAE
(``mae_source: mae`` or ``clip``) and ``loss_weights.rec`` > 0.
"""
import argparse
import os
import sys

import torch

from lavis_xformer.nn.mae import IMAGENET_MEAN, IMAGENET_STD, patchify, unpatchify
from lavis_xformer.tools import loading
from lavis_xformer.tools.loading import ToolError
from lavis_xformer.tools.results_io import ResultsError

GREY = 0.5
COLUMNS = ("original", "masked input", "X-Former recon", "MAE-own recon")
PAD = 4
HEADER = 16


def unnormalize(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(B, 3, H, W) normalised -> [0, 1] (clamped)."""
    mean = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * std + mean).clamp(0, 1)


def mask_patches(images, mask, patch_size, value=GREY):
    """Paint the masked patches of (B, 3, H, W) images (values in [0, 1]) with ``value``.

    mask: (B, N) with 1 = masked, patches in row-major order."""
    patches = patchify(images, patch_size)
    patches = torch.where(mask.bool().unsqueeze(-1), torch.full_like(patches, value), patches)
    return unpatchify(patches, patch_size)


def paste_visible(prediction, target, mask):
    """(B, N, P) prediction with the visible patches (mask 0) replaced by the target's."""
    return torch.where(mask.bool().unsqueeze(-1), prediction, target)


def denormalize_patches(prediction, target, norm_pix):
    """Undo norm_pix_loss: per-patch prediction -> pixel space with the true patch statistics."""
    if not norm_pix:
        return prediction
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return prediction * (var + 1.0e-6) ** 0.5 + mean


def check_model(model, name):
    if not getattr(model, "has_reconstruction_path", False) or model.mae_branch is None:
        raise ToolError(
            "%s has no reconstruction path (fusion %r, mae_source %r, decoder %s): the grid needs "
            "fusion: xformer with the MAE and loss_weights.rec > 0 (a stage-1 X-Former; stage-2 "
            "models drop the decoder unless trained with loss_weights.rec > 0)" % (
                name, getattr(model, "fusion", None).__class__.__name__,
                getattr(model, "mae_source", None),
                "dropped" if model.mae_branch is None or model.mae_branch.mae.decoder is None else "kept"))


@torch.no_grad()
def reconstruction_panels(model, images, mask_ratio=0.5, seed=0, paste=True):
    """The four panels of every image, each (B, 3, H, W) in [0, 1], plus the mask (B, N).

    images: (B, 3, H, W) normalised as the model's processors do (CLIP statistics).
    One forward pass gives both decoder inputs under the same mask: X-Former's enriched
    features Z and the MAE encoder's own tokens M (``encode_image`` returns both).
    """
    branch = model.mae_branch
    torch.manual_seed(seed)
    feats = model.encode_image(images, mask_ratio=mask_ratio)
    enriched, side = feats.enriched, feats.side
    if enriched is None or side is None or side.mask is None:
        raise ToolError("the model returned no enriched MAE features; it cannot reconstruct")
    p = branch.patch_size
    target = patchify(side.pixels, p)  # MAE-normalised pixels, (B, N, P)
    panels = {"mask": side.mask}
    for key, tokens in (("xformer", enriched), ("mae", side.tokens)):
        pred = denormalize_patches(branch.decode(tokens.float(), side.ids_restore).float(), target,
                                   branch.norm_pix_loss)
        if paste:
            pred = paste_visible(pred, target, side.mask)
        panels[key] = unnormalize(unpatchify(pred, p))
    panels["original"] = unnormalize(side.pixels)
    panels["masked"] = mask_patches(panels["original"], side.mask, p)
    return panels


def grid_image(panels, scale=2):
    """A PIL image: one row per image, columns ``COLUMNS``, a header line with their names.

    Size: width 4 * (S + PAD) + PAD, height HEADER + B * (S + PAD) + PAD, S = scale * H."""
    from PIL import Image, ImageDraw

    order = ("original", "masked", "xformer", "mae")
    B, _, H, W = panels["original"].shape
    sh, sw = H * scale, W * scale
    width = len(order) * (sw + PAD) + PAD
    height = HEADER + B * (sh + PAD) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(COLUMNS):
        draw.text((PAD + c * (sw + PAD), 2), title, fill=(0, 0, 0))
    for b in range(B):
        for c, key in enumerate(order):
            array = (panels[key][b].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(array).resize((sw, sh), Image.NEAREST)
            canvas.paste(tile, (PAD + c * (sw + PAD), HEADER + PAD + b * (sh + PAD)))
    return canvas


def run(model_spec, out, checkpoint=None, options=(), num_images=4, mask_ratio=0.5, seed=0,
        annotations=None, image_root=None, split="test", scale=2, paste=True):
    """Write the grid PNG; returns (path, panels)."""
    if num_images < 1:
        raise ToolError("--num-images must be at least 1")
    if not 0.0 < mask_ratio < 1.0:
        raise ToolError("--mask-ratio must be in (0, 1), got %s" % mask_ratio)
    if not str(out).lower().endswith(".png"):
        raise ToolError("--out must name a .png file, got %s" % out)
    cfg, checkpoint, name = loading.model_config(model_spec, options, checkpoint)
    model = loading.build_model(cfg)
    check_model(model, name)
    samples = loading.load_samples(cfg, annotations, image_root, split, num_images)
    device = next(model.parameters()).device
    images = torch.stack([s[0] for s in samples]).to(device)
    panels = reconstruction_panels(model, images, mask_ratio, seed, paste)
    if os.path.dirname(os.path.abspath(out)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid_image(panels, scale).save(out)
    return out, panels


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lavis_xformer.tools.recon_grid",
        description="PNG grid per image: original | masked input | frozen MAE decoder fed with "
                    "X-Former's enriched features | the frozen MAE's own reconstruction.")
    parser.add_argument("model", help="ARCH:MODEL_TYPE (e.g. xformer:tiny) or a stage-1 run folder / checkpoint")
    parser.add_argument("--out", required=True, help="the PNG file to write")
    parser.add_argument("--checkpoint", help="weights for an ARCH:MODEL_TYPE model")
    parser.add_argument("--options", nargs="+", default=[], help="model.KEY=VALUE overrides")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    parser.add_argument("--annotations", help="caption annotation JSON [{image, caption}] (default: easy-VQA)")
    parser.add_argument("--image-root", help="folder the annotation image paths are relative to")
    parser.add_argument("--split", default="test", help="easy-VQA split (default test)")
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling of each tile")
    parser.add_argument("--no-paste", action="store_true", help="show the decoder's prediction for every patch")
    args = parser.parse_args(argv)
    try:
        path, _ = run(args.model, args.out, args.checkpoint, args.options, args.num_images,
                      args.mask_ratio, args.seed, args.annotations, args.image_root, args.split,
                      args.scale, not args.no_paste)
    except ResultsError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    print("wrote %s" % path)


if __name__ == "__main__":
    main()
