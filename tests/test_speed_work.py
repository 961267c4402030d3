"""Issue #16's speed work keeps the numbers and removes the work it should: image keys/values
shared by a step's passes (exactly equal losses, gradients to rounding, and the FLOPs of the
repeated projections gone), fused AdamW, the compiled small modules with their fallback, the
frozen ViT's fused add+LayerNorm path, the fp8 frozen encoders, and the benchmark statistics."""
import math

import pytest
import torch

import lavis_xformer  # noqa: F401  (registers the plugin)
from _testlib import build_model

TEXTS = ["a blue circle", "a red rectangle on the left of a green triangle", "two shapes", "a square"]


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
    model = build_model(fusion=fusion)
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
    model = build_model()
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

    model = build_model()
    model.train()
    flops = {share: count_flops(lambda s=share: step(model, images, share=s)) for share in (False, True)}
    layers = len(cross_attention_modules(model))
    B, Nc, Dc = len(TEXTS), 1 + (64 // 8) ** 2, 192
    D = model.Qformer.config.hidden_size
    expected = layers * 2 * (4 * B) * Nc * Dc * D * 6
    assert flops[False] - flops[True] == expected
    assert flops[True] < flops[False]


def test_shared_image_kv_projects_rows_of_other_ranks_afresh():
    """With several processes ITM's negative images may come from other ranks: those rows
    (``Fresh``) are projected, the step's own rows gathered; the keys/values and the gradients
    equal the projection of the concatenated tokens."""
    from lavis.models.blip2_models.Qformer import BertConfig

    from lavis_xformer.models import shared_kv
    from lavis_xformer.models.fused_attention import FusedBertSelfAttention

    config = BertConfig(hidden_size=32, num_attention_heads=4, encoder_width=24)
    attention = FusedBertSelfAttention(config, is_cross_attention=True)
    torch.manual_seed(0)
    own = torch.randn(3, 5, 24, requires_grad=True)
    other = torch.randn(2, 5, 24, requires_grad=True)  # stands for another rank's images
    rows = torch.tensor([2, 0, 1])
    tokens = torch.cat([own, other, own[rows]])
    expected = shared_kv.project(attention, tokens)
    grads_expected = torch.autograd.grad(sum(t.square().sum() for t in expected), (own, other))
    with shared_kv.shared_image_kv() as scope:
        shared_kv.register_base(own)
        assert shared_kv.lookup(attention, own) is not None
        shared_kv.bind(tokens, [torch.arange(3), shared_kv.Fresh(other), rows])
        got = shared_kv.lookup(attention, tokens)
        assert shared_kv.lookup(attention, tokens.clone()) is None  # unbound tokens: computed as usual
    assert scope is not None and shared_kv.lookup(attention, tokens) is None  # scope closed
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(sum(t.square().sum() for t in got), (own, other))
    for a, b in zip(grads, grads_expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_shared_image_kv_is_the_default_and_a_model_key():
    assert build_model().share_image_kv is True
    assert build_model(share_image_kv=False).share_image_kv is False


# ----------------------------------------------------------------- fused AdamW

def test_adamw_is_fused_on_cuda_only_and_updates_alike():
    from lavis_xformer.optims import adamw, fused_like

    torch.manual_seed(0)
    weights = [torch.randn(16, 8), torch.randn(8)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    runs = {}
    for fused in (None, True):  # None: the choice for these (CPU) parameters
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = adamw([{"params": params[:1], "weight_decay": 0.05}, {"params": params[1:], "weight_decay": 0}],
                    fused=fused, lr=1e-2, betas=(0.9, 0.999))
        assert bool(opt.defaults["fused"]) is bool(fused)  # CPU parameters: not fused unless asked
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        runs[fused] = params
    for a, b in zip(runs[None], runs[True]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the runner's rebuild keeps LAVIS's groups and hyper-parameters
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    stock = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.05}, {"params": params[1:], "weight_decay": 0}],
                              lr=3e-4, weight_decay=0.05, betas=(0.9, 0.98))
    rebuilt = fused_like(stock)
    assert [g["weight_decay"] for g in rebuilt.param_groups] == [0.05, 0]
    assert rebuilt.defaults["lr"] == 3e-4 and rebuilt.defaults["betas"] == (0.9, 0.98)
    assert [g["params"] for g in rebuilt.param_groups] == [g["params"] for g in stock.param_groups]


# ----------------------------------------------------------------- torch.compile and fallback

def test_compile_modules_fall_back_to_eager_when_compiling_fails(images, caplog):
    from lavis_xformer.models import compiled

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model = build_model()
    model.eval()
    with torch.no_grad():
        expected = model.encode_image(images).queries
    compiled.compile_modules(model, ["fusion"], backend=broken_backend)
    with torch.no_grad(), caplog.at_level("WARNING"):
        got = model.encode_image(images).queries
    assert torch.equal(got, expected)
    assert "compiling fusion failed" in caplog.text
    assert model.fusion.forward.compiled is None  # eager from now on


def test_compile_modules_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"model.compile_modules=\['vit'\] is out of range; allowed: items among 'qformer'"):
        build_model(compile_modules=["vit"])


@pytest.mark.slow  # graph capture of four modules: ~40 s alone, minutes on a loaded machine
def test_compiled_small_modules_give_the_same_losses(images):
    """torch.compile's graph capture (backend aot_eager: the traced forward and backward
    graphs, run without code generation, which needs no C++ compiler) of the Q-Former layers,
    the X-Former block, the MAE decoder and the ViT norm path keeps the losses and gradients."""
    from lavis_xformer.models import compiled

    # no dropout: compiled code draws its dropout masks from the generator in another pattern
    model = build_model(**{"qformer.hidden_dropout_prob": 0.0, "qformer.attention_probs_dropout_prob": 0.0})
    model.train()
    old, old_grads = step(model, images, share=True)
    compiled.compile_modules(model, list(compiled.COMPILABLE), backend="aot_eager")
    new, new_grads = step(model, images, share=True)
    assert all(m.forward.compiled is not None
               for m in (model.fusion, model.mae_branch.mae.decoder, model.Qformer.bert.encoder))
    for name in ("loss", "loss_itc", "loss_itm", "loss_lm", "loss_rec"):
        torch.testing.assert_close(new[name], old[name], rtol=1e-5, atol=1e-6, msg=name)
    for name, grad in old_grads.items():
        torch.testing.assert_close(new_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_norm_vit_block_equals_lavis_block_within_rounding():
    """Under bf16 autocast (the GPU's fp16 path, on a CPU) the fused residual/LayerNorm/cast
    block gives LAVIS's block's output to rounding; in fp32 exactly."""
    from lavis.models.eva_vit import Block

    from lavis_xformer.models.compiled import FusedNormEvaBlock

    torch.manual_seed(0)
    block = Block(64, 4, qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        ref32 = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16 = block(x)
        block.__class__ = FusedNormEvaBlock
        got32 = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got16 = block(x)
    assert torch.equal(got32, ref32)
    assert got16.dtype == ref16.dtype
    torch.testing.assert_close(got16, ref16, rtol=2e-2, atol=2e-2)  # bf16 rounding of the matmuls
    torch.testing.assert_close(got16.float(), ref32, rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------- fp8 frozen encoders

@pytest.mark.parametrize("key", ["vit_precision", "mae_precision"])
def test_fp8_without_fp8_tensor_cores_is_a_one_line_error(key):
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this machine has fp8 tensor cores")
    with pytest.raises(ValueError, match=rf"model.{key}=fp8 needs .*fp8 tensor cores") as info:
        build_model(**{key: "fp8"})
    assert "\n" not in str(info.value)


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model.vit_precision='int4' is out of range; allowed: one of 'fp32', 'fp16', 'fp8'"):
        build_model(vit_precision="int4")


def test_fp8_linear_layers_keep_the_vit_features():
    """The fp8 arithmetic itself (torch._scaled_mm also runs on a CPU): a tiny EVA ViT with
    its linear layers in e4m3 gives features with cosine similarity > 0.99 to fp32."""
    from lavis_xformer.models import fp8

    model = build_model()
    vit = model.visual_encoder
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = vit(image)
        replaced = fp8.convert_to_fp8(vit, out_dtype=torch.bfloat16)
        got = vit(image).float()
    assert replaced == 2 * 4  # per block: qkv, proj, fc1, fc2
    assert not any(type(m) is torch.nn.Linear for m in vit.modules())
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1), dim=-1)
    assert cos.min() > 0.99, cos


# ----------------------------------------------------------------- benchmark statistics

def test_median_confidence_interval_ranks_match_the_binomial_tables():
    """Order statistics bounding the median with >= 95% (tables for the sign test: n=30 ->
    10th and 21st, n=100 -> 40th and 61st), checked against a direct binomial sum."""
    from bench.measure import median_ci_ranks, paired_ratio

    assert median_ci_ranks(30)[:2] == (10, 21)
    assert median_ci_ranks(100)[:2] == (40, 61)
    assert median_ci_ranks(5) is None
    lo, hi, coverage = median_ci_ranks(30)
    direct = sum(math.comb(30, i) for i in range(lo, hi)) / 2 ** 30  # P(lo <= #below < hi)
    assert coverage == pytest.approx(direct) and coverage >= 0.95
    a = [float(i) for i in range(1, 31)]
    r = paired_ratio(a, [1.0] * 30)
    assert r["median"] == 15.5 and r["ci"] == [10.0, 21.0] and r["rounds"] == 30
    with pytest.raises(ValueError):
        paired_ratio([1.0], [])


# ----------------------------------------------------------------- the stock baseline

def test_bench_stock_baseline_is_lavis_own_blip2_qformer(images):
    """bench/stock.py: LAVIS's Blip2Qformer with LAVIS's own attention classes and its own
    forward (needs a process group: one_process_group), and nothing of the speed work."""
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
    from lavis.models.blip2_models.Qformer import BertLMHeadModel, BertSelfAttention
    from lavis.models.eva_vit import Attention

    from bench.stock import one_process_group, stock_blip2
    from lavis_xformer.models.fused_attention import EAGER, FUSED

    stock = stock_blip2("tiny", "cpu")
    assert type(stock) is Blip2Qformer and type(stock.Qformer) is BertLMHeadModel
    kinds = {type(m) for m in stock.modules() if type(m) in FUSED or type(m) in EAGER}
    assert kinds == {BertSelfAttention, Attention}
    assert type(stock).forward is Blip2Qformer.forward
    stock.train()
    with one_process_group("cpu"):
        out = stock({"image": images, "text_input": TEXTS})
    assert torch.isfinite(out.loss) and out.loss_itm > 0
