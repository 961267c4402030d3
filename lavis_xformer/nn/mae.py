"""The frozen MAE branch of X-Former: re-normalise, mask, encode visible patches, decode, score.

Wraps a transformers ``ViTMAEForPreTraining`` (encoder ``.vit`` and decoder ``.decoder``) but
does its own masking and loss, so that the mask ratio is ours (0.5 while training, none at
inference) and the loss does not depend on ``forward_loss`` (gone in transformers 5).

* The encoder is frozen and runs under ``torch.no_grad``: it only ever sees the visible patches.
* The decoder is frozen but differentiable: the reconstruction gradient must flow through it
  into the X-Former block that produced its input.
* Images arrive normalised with CLIP statistics (LAVIS's BLIP-2 processors);
  ``renormalize`` maps them to the statistics the MAE weights were trained with.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from lavis_xformer.nn.frozen import freeze

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MAEEncoding:
    """What the encoder returns.

    tokens: (B, 1 + N_visible, Dm) encoder output (CLS first), visible patches in shuffled order.
    mask: (B, N) float, 1 = masked (hidden from the encoder), 0 = visible, in patch order.
    ids_restore: (B, N) long, un-shuffles [visible, masked] back to patch order.
    pixels: (B, 3, H, W) the MAE-normalised image (the reconstruction target's source).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    pixels: torch.Tensor


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float, device,
                      noise: Optional[torch.Tensor] = None) -> tuple:
    """Per-sample random subset of patches to keep.

    ``noise`` (B, N) in [0, 1), as transformers' ViT-MAE takes it: the patches with the
    smallest noise are kept; drawn uniformly when None. Passing it makes the mask explicit
    (tests, figures that compare models under one mask).
    Returns ids_keep (B, N_keep), ids_restore (B, N), mask (B, N) with 1 = masked.
    With mask_ratio 0 every patch is kept in its own order.
    """
    num_keep = num_patches - int(round(num_patches * mask_ratio))
    if num_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch of {num_patches}")
    if noise is not None and tuple(noise.shape) != (batch, num_patches):
        raise ValueError(f"noise must be (B, N) = ({batch}, {num_patches}), got {tuple(noise.shape)}")
    if num_keep == num_patches:
        ids_shuffle = torch.arange(num_patches, device=device).expand(batch, -1)
    else:
        if noise is None:
            noise = torch.rand(batch, num_patches, device=device)
        ids_shuffle = noise.to(device).argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :num_keep], ids_restore, mask


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, channels last in a patch
    (the layout of the MAE decoder's prediction)."""
    B, C, H, W = pixels.shape
    h, w = H // patch_size, W // patch_size
    x = pixels.reshape(B, C, h, patch_size, w, patch_size)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, patch_size**2 * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify`` for square images: (B, N, p*p*C) -> (B, C, H, W)."""
    B, N, _ = patches.shape
    h = int(N**0.5)
    x = patches.reshape(B, h, h, patch_size, patch_size, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch_size, h * patch_size)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only.

    pred, target: (B, N, P); mask: (B, N) with 1 = masked. Returns a scalar.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


class MAEBranch(nn.Module):
    """Frozen MAE encoder + decoder with re-normalisation, masking and the masked-patch loss.

    Args:
        mae: a ``transformers.ViTMAEForPreTraining``; all its parameters are frozen here.
        input_mean, input_std: statistics the incoming images are normalised with.
        mae_mean, mae_std: statistics the MAE weights expect.
        norm_pix_loss: normalise each target patch (MAE's option; off for vit-mae-huge).
    """

    def __init__(
        self,
        mae: nn.Module,
        input_mean: Sequence[float] = CLIP_MEAN,
        input_std: Sequence[float] = CLIP_STD,
        mae_mean: Sequence[float] = IMAGENET_MEAN,
        mae_std: Sequence[float] = IMAGENET_STD,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        self.mae = mae
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = mae.config.patch_size
        self.image_size = mae.config.image_size
        self.width = mae.config.hidden_size
        # (x * s_in + m_in - m_mae) / s_mae == x * scale + shift
        scale = torch.tensor(input_std) / torch.tensor(mae_std)
        shift = (torch.tensor(input_mean) - torch.tensor(mae_mean)) / torch.tensor(mae_std)
        self.register_buffer("renorm_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", shift.view(1, 3, 1, 1), persistent=False)
        freeze(self.mae)  # in eval mode (no dropout) whatever the parent does

    def renormalize(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) input-normalised -> MAE-normalised."""
        return image * self.renorm_scale.to(image.dtype) + self.renorm_shift.to(image.dtype)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, mask_ratio: float,
               noise: Optional[torch.Tensor] = None) -> MAEEncoding:
        """Encode the visible patches of ``image`` (B, 3, H, W) with the frozen encoder;
        ``noise`` (B, N) picks them as in ``random_patch_mask``."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"MAE branch expects {self.image_size}x{self.image_size} images, got "
                f"{tuple(image.shape[-2:])}; set the image processor's image_size to match"
            )
        vit = self.mae.vit
        emb = vit.embeddings
        pixels = self.renormalize(image)
        patches = emb.patch_embeddings.projection(pixels.to(emb.cls_token.dtype))
        patches = patches.flatten(2).transpose(1, 2) + emb.position_embeddings[:, 1:, :]
        B, N, D = patches.shape
        ids_keep, ids_restore, mask = random_patch_mask(B, N, mask_ratio, image.device, noise)
        visible = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        cls = (emb.cls_token + emb.position_embeddings[:, :1, :]).expand(B, -1, -1)
        hidden = vit.encoder(torch.cat([cls, visible], dim=1))[0]
        return MAEEncoding(vit.layernorm(hidden), mask, ids_restore, pixels)

    def decode(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Frozen, differentiable decoder: (B, 1 + N_visible, Dm) -> (B, N, p*p*3) pixels."""
        dtype = self.mae.decoder.decoder_embed.weight.dtype  # half on GPU (mae_precision)
        return self.mae.decoder(tokens.to(dtype), ids_restore)[0]

    def target(self, pixels: torch.Tensor) -> torch.Tensor:
        """Reconstruction target (B, N, p*p*3) from MAE-normalised pixels."""
        target = patchify(pixels, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def reconstruction_loss(self, tokens: torch.Tensor, encoding: MAEEncoding) -> torch.Tensor:
        """Masked-patch MSE of the decoder's reconstruction from ``tokens``."""
        pred = self.decode(tokens, encoding.ids_restore)
        return masked_mse(pred, self.target(encoding.pixels), encoding.mask)
