"""The neural modules on their own, without LAVIS: shapes, masking, the masked-patch loss."""
import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from lavis_xformer.nn import MAEBranch, XFormerFusion, freeze, masked_mse, patchify
from lavis_xformer.nn.mae import (
    CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, random_patch_mask, unpatchify,
)


@pytest.fixture(scope="module")
def branch():
    torch.manual_seed(0)
    config = ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        intermediate_size=96, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64,
    )
    return MAEBranch(ViTMAEForPreTraining(config))


def test_fusion_shapes_and_parameter_count_at_paper_width():
    fusion = XFormerFusion(dim=64, mae_dim=96, num_heads=4)
    queries, mae = torch.randn(2, 8, 64), torch.randn(2, 17, 96)
    enhanced, enriched = fusion(queries, mae)
    assert enhanced.shape == (2, 8, 64)
    assert enriched.shape == (2, 17, 96)
    with torch.device("meta"):
        paper = XFormerFusion(dim=768, mae_dim=1280, num_heads=12)
    assert 20.5e6 < sum(p.numel() for p in paper.parameters()) < 21.5e6


def test_fusion_without_self_attention_has_no_self_attention_layers():
    fusion = XFormerFusion(dim=32, mae_dim=48, num_heads=4, self_attn=False)
    assert fusion.mae_block.self_attn is None and fusion.query_block.self_attn is None
    full = XFormerFusion(dim=32, mae_dim=48, num_heads=4)
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in fusion.parameters())


def test_fusion_without_reconstruction_builds_no_head_and_gives_the_same_queries():
    torch.manual_seed(0)
    full = XFormerFusion(dim=32, mae_dim=48, num_heads=4).eval()
    torch.manual_seed(0)
    bare = XFormerFusion(dim=32, mae_dim=48, num_heads=4, reconstruct=False).eval()
    assert bare.mae_out is None and not bare.reconstructs and full.reconstructs
    head = sum(p.numel() for p in full.mae_out.parameters())  # LayerNorm(32) + Linear(32, 48)
    assert head == 2 * 32 + 32 * 48 + 48
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in bare.parameters()) == head
    queries, mae = torch.randn(1, 4, 32), torch.randn(1, 9, 48)
    (q_full, z_full), (q_bare, z_bare) = full(queries, mae), bare(queries, mae)
    assert torch.equal(q_full, q_bare) and z_full.shape == (1, 9, 48) and z_bare is None


def test_fusion_both_streams_depend_on_both_inputs():
    torch.manual_seed(0)
    fusion = XFormerFusion(dim=32, mae_dim=48, num_heads=4).eval()
    queries, mae = torch.randn(1, 4, 32), torch.randn(1, 9, 48)
    enhanced, enriched = fusion(queries, mae)
    enhanced_m, enriched_m = fusion(queries, mae + torch.randn_like(mae))
    enhanced_q, enriched_q = fusion(queries + torch.randn_like(queries), mae)
    assert not torch.allclose(enhanced, enhanced_m) and not torch.allclose(enhanced, enhanced_q)
    assert not torch.allclose(enriched, enriched_q)


def test_renormalize_maps_clip_statistics_to_imagenet_statistics(branch):
    raw = torch.rand(2, 3, 32, 32)
    clip = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    expected = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(branch.renormalize(clip), expected)


def test_random_patch_mask_hides_the_configured_fraction():
    ids_keep, ids_restore, mask = random_patch_mask(3, 16, 0.5, "cpu")
    assert ids_keep.shape == (3, 8)
    assert mask.sum(dim=1).tolist() == [8.0, 8.0, 8.0]
    for b in range(3):  # kept patches are exactly the unmasked ones
        assert set(ids_keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())
    _, _, no_mask = random_patch_mask(3, 16, 0.0, "cpu")
    assert no_mask.sum() == 0


def test_encoder_sees_visible_patches_only_and_runs_without_grad(branch):
    image = torch.randn(2, 3, 32, 32, requires_grad=True)
    enc = branch.encode(image, mask_ratio=0.5)
    assert enc.tokens.shape == (2, 1 + 8, 48)
    assert not enc.tokens.requires_grad
    full = branch.encode(image, mask_ratio=0.0)
    assert full.tokens.shape == (2, 1 + 16, 48) and full.mask.sum() == 0
    # a masked patch has no influence on the encoding
    torch.manual_seed(1)
    a = branch.encode(image, 0.5)
    masked_patch = int(a.mask[0].nonzero()[0])
    row, col = divmod(masked_patch, 4)
    perturbed = image.detach().clone()
    perturbed[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 5.0
    torch.manual_seed(1)
    b = branch.encode(perturbed, 0.5)
    torch.testing.assert_close(a.tokens, b.tokens)


def test_injected_noise_masks_and_encodes_as_transformers_vit_mae(branch):
    """With the same ``noise``, the visible patches, mask and encoding equal transformers'
    own ViT-MAE (``ViTMAEModel.forward(pixel_values, noise=...)``, mask ratio 0.75 there)."""
    torch.manual_seed(3)
    image = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    ours = branch.encode(image, mask_ratio=0.75, noise=noise)
    vit = branch.mae.vit
    ratio = vit.config.mask_ratio
    vit.config.mask_ratio = 0.75
    try:
        with torch.no_grad():
            theirs = vit(branch.renormalize(image), noise=noise)
    finally:
        vit.config.mask_ratio = ratio
    torch.testing.assert_close(ours.mask, theirs.mask)
    assert torch.equal(ours.ids_restore, theirs.ids_restore)
    torch.testing.assert_close(ours.tokens, theirs.last_hidden_state)
    # the same noise gives the same mask, another noise another one
    assert torch.equal(branch.encode(image, 0.75, noise=noise).mask, ours.mask)
    assert not torch.equal(branch.encode(image, 0.75, noise=1 - noise).mask, ours.mask)
    with pytest.raises(ValueError, match=r"noise must be \(B, N\) = \(2, 16\)"):
        branch.encode(image, 0.75, noise=torch.rand(2, 15))


def test_wrong_image_size_is_a_clear_error(branch):
    with pytest.raises(ValueError, match="expects 32x32 images, got \\(64, 64\\)"):
        branch.encode(torch.randn(1, 3, 64, 64), 0.5)


def test_masked_mse_counts_masked_patches_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0]]).float()
    direct = ((pred - target) ** 2)[mask.bool()].mean()
    torch.testing.assert_close(masked_mse(pred, target, mask), direct)
    changed = pred.clone()
    changed[mask == 0] += 100.0  # visible patches do not count
    torch.testing.assert_close(masked_mse(changed, target, mask), direct)


def test_reconstruction_loss_matches_direct_computation_and_reaches_tokens(branch):
    torch.manual_seed(0)
    enc = branch.encode(torch.randn(2, 3, 32, 32), 0.5)
    tokens = enc.tokens.clone().requires_grad_(True)
    loss = branch.reconstruction_loss(tokens, enc)
    pred = branch.mae.decoder(tokens, enc.ids_restore).logits
    target = branch.mae.patchify(enc.pixels)  # transformers' own ViTMAEForPreTraining.patchify
    direct = ((pred - target) ** 2).mean(-1)[enc.mask.bool()].mean()
    torch.testing.assert_close(loss, direct)
    loss.backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in branch.parameters())  # decoder frozen


def test_patchify_round_trip_and_matches_transformers(branch):
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(unpatchify(patchify(x, 8), 8), x)
    torch.testing.assert_close(patchify(x, 8), branch.mae.patchify(x))


def test_nn_package_imports_only_torch():
    """``lavis_xformer/nn`` is torch only: none of its files imports LAVIS, transformers or
    another part of the plugin (read from the source, since the package's parent imports LAVIS)."""
    import ast
    import pathlib

    import lavis_xformer.nn as package

    allowed = {"torch", "typing", "dataclasses", "lavis_xformer.nn"}
    files = sorted(pathlib.Path(package.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"attention.py", "fusions.py", "mae.py"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert any(name == a or name.startswith(a + ".") for a in allowed), (path.name, name)


def _with_frozen_part(eval_now=True):
    """A trained Linear beside a frozen part with dropout, inside one parent."""
    parent = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    freeze(parent[1], eval_now=eval_now)
    return parent


def test_freeze_stops_training_and_keeps_a_module_in_eval_mode():
    parent = _with_frozen_part()
    frozen = parent[1]
    assert not frozen.training and not frozen[0].training
    parent.train()
    assert parent.training and parent[0].training  # the rest of the model trains
    assert not frozen.training and not frozen[0].training  # no dropout in the frozen part
    frozen.train()
    assert not frozen[0].training
    layer = torch.nn.Linear(3, 3)
    assert freeze(layer) is layer and not any(p.requires_grad for p in layer.parameters())


def test_freeze_of_parameters_leaves_modes_alone():
    layer = torch.nn.Linear(3, 3)
    extra = torch.nn.Parameter(torch.ones(()))
    freeze(extra)
    freeze([layer.bias])
    assert not extra.requires_grad and not layer.bias.requires_grad and layer.weight.requires_grad
    assert layer.training and "train" not in vars(layer)


def test_freeze_without_eval_now_keeps_the_mode_until_the_next_switch():
    """The frozen LLM's way: built in train mode, in eval mode from the first train()/eval()."""
    parent = _with_frozen_part(eval_now=False)
    assert parent[1][0].training
    parent.train()
    assert not parent[1][0].training


def test_freeze_survives_a_deep_copy():
    import copy

    twin = copy.deepcopy(_with_frozen_part())
    twin.train()
    assert twin[0].training and not twin[1][0].training
