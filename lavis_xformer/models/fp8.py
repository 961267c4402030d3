"""fp8 (e4m3) matrix multiplies for the frozen encoders: ``vit_precision: fp8`` (the CLIP ViT)
and ``mae_precision: fp8`` (the MAE encoder; its decoder stays fp16, as the reconstruction
gradient flows through it).

``Fp8Linear`` holds a frozen ``nn.Linear``'s weight in float8_e4m3fn with one fp32 scale, and
quantises its input per call with one dynamic scale (amax / 448), then multiplies on the fp8
tensor cores (``torch._scaled_mm``), accumulating in fp32 and writing fp16. Forward only: it
has no backward, so it replaces layers of encoders that run without gradient only.

Only on CUDA devices with fp8 tensor cores (compute capability 8.9 or more: Ada, Hopper such
as the H100/H200); anywhere else the key is a one-line error. Layers whose sizes are not
multiples of 16 (what the fp8 kernels need) stay in fp16, as do the patch embedding, the
LayerNorms and the attention itself (fused SDPA in fp16).

Fidelity (cosine similarity of the encoder features to fp16) and speed are measured by
bench/device/paper_speed.sh; off by default.
"""
import torch
import torch.nn.functional as F
from torch import nn

E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def check_fp8_device(key: str):
    """Raise a one-line error unless this process runs on a CUDA GPU with fp8 tensor cores."""
    if not torch.cuda.is_available():
        raise ValueError(f"model.{key}=fp8 needs a CUDA GPU with fp8 tensor cores (compute "
                         f"capability >= 8.9, e.g. H100/H200) and this machine has no CUDA "
                         f"device; use {key}: fp16 (GPU) or fp32 (CPU)")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 9):
        raise ValueError(f"model.{key}=fp8 needs fp8 tensor cores (compute capability >= 8.9, "
                         f"e.g. H100/H200); {torch.cuda.get_device_name()} has "
                         f"{capability[0]}.{capability[1]}; use {key}: fp16")


def _scale(amax: torch.Tensor) -> torch.Tensor:
    return (amax.float() / E4M3_MAX).clamp(min=1e-12)


class Fp8Linear(nn.Module):
    """y = x W^T + b with W in e4m3 (per-tensor scale) and x quantised per call.

    x (..., in_features) -> (..., out_features) in ``out_dtype`` (fp16 by default)."""

    def __init__(self, linear: nn.Linear, out_dtype=torch.float16):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = out_dtype
        self.register_buffer("weight_scale", _scale(weight.abs().max()))
        # (out, in) row-major, so that its transpose is the column-major operand _scaled_mm wants
        self.register_buffer("weight_fp8", (weight.float() / self.weight_scale).to(torch.float8_e4m3fn))
        bias = None if linear.bias is None else linear.bias.detach().to(out_dtype)
        self.register_buffer("bias", bias)

    @staticmethod
    def supports(linear: nn.Linear) -> bool:
        return linear.in_features % 16 == 0 and linear.out_features % 16 == 0

    def forward(self, x, bias=None):
        """``bias``: used instead of the layer's own (EVA's qkv has its bias outside the layer)."""
        bias = self.bias if bias is None else bias.to(self.out_dtype)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        x_scale = _scale(x2.abs().max())
        x8 = (x2.float() / x_scale).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                             bias=bias, out_dtype=self.out_dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3"


def linear(layer, x, bias=None):
    """``layer(x)`` with an outside ``bias`` for both nn.Linear (F.linear) and Fp8Linear."""
    if isinstance(layer, Fp8Linear):
        return layer(x, bias)
    return F.linear(x, layer.weight, bias if bias is not None else layer.bias)


def convert_to_fp8(module: nn.Module, out_dtype=torch.float16) -> int:
    """Replace every nn.Linear inside the frozen ``module`` whose sizes suit the fp8 kernels by
    an ``Fp8Linear``, in place. Returns how many were replaced."""
    if any(p.requires_grad for p in module.parameters()):
        raise ValueError("fp8 is for frozen encoders only (a trained layer needs its backward)")
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and Fp8Linear.supports(child):
                setattr(parent, name, Fp8Linear(child, out_dtype).to(child.weight.device))
                replaced += 1
    return replaced
