"""``torch.compile`` for the small modules of a step (``model.compile_modules``), with a
fallback to eager code where compilation is unavailable or fails.

The Q-Former, the X-Former block and the MAE decoder run at a small fraction of the GPU's peak
(launch- and elementwise-bound, issue #16): compiling fuses their elementwise work and, with
``model.compile_mode: reduce-overhead``, replays them as CUDA graphs (shapes are static in
training: text padded to ``max_txt_len``, fixed batch).

``vit_norm``: the frozen EVA ViT's blocks with their residual add, LayerNorm (fp32, as under
autocast) and cast to the matmul precision fused into one kernel each (``FusedNormEvaBlock``;
LAVIS runs them as three: add, layer_norm, cast). Same arithmetic: results agree to rounding.

Names (``COMPILABLE``): qformer (its encoder), fusion (the X-Former block / fusion
module), mae_decoder, vit_norm. Off by default; the GPU benchmark (bench/device/paper_speed.sh)
measures each.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from lavis.models.eva_vit import Block as EvaBlock

COMPILABLE = ("qformer", "fusion", "mae_decoder", "vit_norm")
MODES = ("default", "reduce-overhead", "max-autotune")


def compile_available() -> bool:
    try:
        import torch._dynamo

        return torch._dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001  (any import or platform failure means: not available)
        return False


class CompiledOrEager:
    """Calls ``fn`` compiled; if compiling fails (no compiler, unsupported platform or
    construct), logs one warning and calls ``fn`` itself from then on. An error that eager
    code raises too is raised as eager code raises it."""

    def __init__(self, fn, name: str, mode: str = "default", backend: str = "inductor"):
        self.fn, self.name = fn, name
        self.compiled = torch.compile(fn, mode=mode, backend=backend, dynamic=False) if compile_available() else None
        if self.compiled is None:
            logging.warning("model.compile_modules: torch.compile is not available here; %s runs eagerly", name)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001
                self.compiled = None
                logging.warning("model.compile_modules: compiling %s failed (%s: %s); it runs eagerly",
                                self.name, type(error).__name__, str(error).splitlines()[0][:200])
        return self.fn(*args, **kwargs)


def _norm_cast(x, weight, bias, eps: float, dtype: torch.dtype):
    """LayerNorm in fp32 (what autocast does with LAVIS's fp32 norms), cast to ``dtype``."""
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps).to(dtype)


def _add_norm_cast(x, y, weight, bias, eps: float, dtype: torch.dtype):
    """(x + y, LayerNorm(x + y) cast to ``dtype``): a residual add and the next norm."""
    x = x + y
    return x, _norm_cast(x, weight, bias, eps, dtype)


class FusedNormEvaBlock(EvaBlock):
    """LAVIS's EVA ViT block with its residual adds and LayerNorms fused (x (B, N, C) ->
    (B, N, C)); ``norm_cast``/``add_norm_cast`` are set by ``compile_modules``. Falls back to
    LAVIS's forward where it differs (layer scale, drop path in training)."""

    norm_cast = staticmethod(_norm_cast)
    add_norm_cast = staticmethod(_add_norm_cast)

    def forward(self, x, rel_pos_bias=None):
        if self.gamma_1 is not None or (self.training and not isinstance(self.drop_path, nn.Identity)):
            return super().forward(x, rel_pos_bias)
        dtype = matmul_dtype(getattr(self.attn.proj, "weight", None), x)  # fp8 layers have none
        h = self.norm_cast(x, self.norm1.weight, self.norm1.bias, self.norm1.eps, dtype)
        x, h = self.add_norm_cast(x, self.attn(h, rel_pos_bias=rel_pos_bias),
                                  self.norm2.weight, self.norm2.bias, self.norm2.eps, dtype)
        return x + self.mlp(h)


def matmul_dtype(weight, x):
    """The dtype the next linear layer computes in: autocast's if on, else its weight's
    (an fp8 layer quantises its input itself, from any float dtype)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype if weight is not None and weight.dtype.is_floating_point and weight.dtype.itemsize > 1 else x.dtype


def _compile_attr(owner, attr: str, name: str, mode: str, backend: str):
    setattr(owner, attr, CompiledOrEager(getattr(owner, attr), name, mode, backend))


def compile_modules(model, names, mode: str = "default", backend: str = "inductor"):
    """Compile the named parts of ``model`` (an XFormerBase) in place; unknown names are a
    one-line error. Returns the names compiled."""
    names = list(names or [])
    unknown = sorted(set(names) - set(COMPILABLE))
    if unknown:
        raise ValueError(f"model.compile_modules has unknown names {unknown}; known: {list(COMPILABLE)}")
    if mode not in MODES:
        raise ValueError(f"model.compile_mode={mode!r} is not one of {MODES}")
    done = []
    for name in names:
        if name == "qformer":
            # the whole encoder: one graph per pass shape (query, text, ITM, ITG), not per layer
            _compile_attr(model.Qformer.bert.encoder, "forward", "qformer", mode, backend)
        elif name == "fusion":
            _compile_attr(model.fusion, "forward", "fusion", mode, backend)
        elif name == "mae_decoder":
            branch = model.mae_branch
            if branch is None or branch.mae.decoder is None:
                continue  # no decoder in this variant: nothing to compile
            _compile_attr(branch.mae.decoder, "forward", "mae_decoder", mode, backend)
        elif name == "vit_norm":
            # one compiled function of each kind, shared by the blocks (same shapes: compiled once)
            norm_cast = CompiledOrEager(_norm_cast, "vit_norm", mode, backend)
            add_norm_cast = CompiledOrEager(_add_norm_cast, "vit_norm", mode, backend)
            for block in model.visual_encoder.blocks:
                if type(block) in (EvaBlock, FusedNormEvaBlock):
                    block.__class__ = FusedNormEvaBlock
                    block.norm_cast, block.add_norm_cast = norm_cast, add_norm_cast
        done.append(name)
    return done

