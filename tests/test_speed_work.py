"""Issue #16's speed work keeps the numbers and removes the work it should: image keys/values
shared by a step's passes (exactly equal losses, gradients to rounding, and the FLOPs of the
repeated projections gone), fused AdamW, the compiled small modules with their fallback, the
frozen ViT's fused add+LayerNorm path, the fp8 frozen encoders, and the benchmark statistics."""
import math

import pytest
import torch
from omegaconf import OmegaConf

import lavis_xformer  # noqa: F401  (registers the plugin)
from lavis.common.registry import registry

TEXTS = ["a blue circle", "a red rectangle on the left of a green triangle", "two shapes", "a square"]


def build(name="xformer", **overrides):
    cls = registry.get_model_class(name)
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    torch.manual_seed(0)
    return cls.from_config(cfg)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(len(TEXTS), 3, 64, 64)


def step(model, images, share, seed=3):
    """One training forward + backward; returns (losses, {param name: grad})."""
    model.share_image_kv = share
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # ITM's hard negatives and dropout
    out = model({"image": images, "text_input": TEXTS})
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


# ----------------------------------------------------------------- shared image keys/values

@pytest.mark.parametrize("fusion", ["xformer", "blip2"])
def test_shared_image_kv_gives_the_same_losses_and_gradients(fusion, images):
    """Training mode (dropout on, negatives sampled): the forward is bit-identical, since
    every pass reads the keys/values it computed before; the gradients differ only by the
    order in which the passes' contributions to the one projection are summed."""
    model = build(fusion=fusion)
    model.train()
    old, old_grads = step(model, images, share=False)
    new, new_grads = step(model, images, share=True)
    for name in ("loss", "loss_itc", "loss_itm", "loss_lm", "loss_rec"):
        assert torch.equal(old[name], new[name]), name
    assert old_grads.keys() == new_grads.keys()
    for name, grad in old_grads.items():
        torch.testing.assert_close(new_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def cross_attention_modules(model):
    return [layer.crossattention.self for layer in model.Qformer.bert.encoder.layer
            if getattr(layer, "has_cross_attention", False)]


def test_shared_image_kv_computes_each_layers_keys_once(images):
    """Counted at the key projections: one call per cross-attention layer and step (the
    query pass), where the unshared path projects in the query pass, ITM and ITG."""
    model = build()
    model.train()
    calls = []
    hooks = [m.key.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
             for m in cross_attention_modules(model)]
    try:
        step(model, images, share=False)
        unshared, calls[:] = list(calls), []
        step(model, images, share=True)
    finally:
        for hook in hooks:
            hook.remove()
    layers, B = len(hooks), len(TEXTS)
    assert layers == 3
    assert sorted(unshared) == sorted([B, 3 * B, B] * layers)  # query pass, ITM, ITG
    assert calls == [B] * layers


def test_shared_image_kv_removes_the_repeated_projection_flops(images):
    """FLOP counts (bench's counter, forward + backward): sharing removes exactly the key and
    value projections of 4B of the 5B image rows in every cross-attention layer, i.e.
    layers x 2 projections x 4B x Nc x Dc x D x 6 (2 forward, 2 + 2 backward: the input
    gradient flows to the trained ln_vision)."""
    from bench.measure import count_flops

    model = build()
    model.train()
    flops = {share: count_flops(lambda s=share: step(model, images, share=s)) for share in (False, True)}
    layers = len(cross_attention_modules(model))
    B, Nc, Dc = len(TEXTS), 1 + (64 // 8) ** 2, 192
    D = model.Qformer.config.hidden_size
    expected = layers * 2 * (4 * B) * Nc * Dc * D * 6
    assert flops[False] - flops[True] == expected
    assert flops[True] < flops[False]


def test_shared_image_kv_is_the_default_and_a_model_key():
    assert build().share_image_kv is True
    assert build(share_image_kv=False).share_image_kv is False
