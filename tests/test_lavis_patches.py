"""lavis_patches/: each patch is needed (the LAVIS defect is real) and does its job."""
import pkgutil

import pytest
import torch

import lavis_xformer.lavis_patches as lavis_patches


def _vit():
    from lavis.models.eva_vit import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                             drop_path_rate=0.2)


def test_eva_vit_needs_the_patch_on_meta_and_builds_with_it_without_touching_torch():
    from lavis_xformer.lavis_patches.eva_vit_meta import linspace_on_cpu

    linspace = torch.linspace
    with torch.device("meta"):
        with pytest.raises(RuntimeError, match="meta"):
            _vit()  # the defect: .item() on a meta linspace
        with linspace_on_cpu():
            vit = _vit()
            assert torch.linspace(0, 1, 2, device="meta").is_meta  # an explicit device wins
        assert torch.linspace(0, 1, 2).is_meta  # the mode ended with the `with`
    assert torch.linspace is linspace
    assert all(p.is_meta for p in vit.parameters())
    rates = [b.drop_path.drop_prob for b in vit.blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2])  # torch.linspace(0, 0.2, 3)[1:] as LAVIS means


def test_generation_cache_classes_are_lavis_classes_with_the_same_weights():
    from lavis.models.blip2_models import modeling_opt

    from lavis_xformer.lavis_patches.generation_cache import OPTForCausalLM

    assert issubclass(OPTForCausalLM, modeling_opt.OPTForCausalLM)
    config = modeling_opt.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                    ffn_dim=32, num_attention_heads=2, max_position_embeddings=16,
                                    word_embed_proj_dim=16)
    torch.manual_seed(0)
    ours = OPTForCausalLM(config)
    torch.manual_seed(0)
    theirs = modeling_opt.OPTForCausalLM(config)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    cache = ((torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8)),)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert theirs.prepare_inputs_for_generation(ids, past_key_values=cache)["past_key_values"] is None
    assert ours.prepare_inputs_for_generation(ids, past_key_values=cache)["past_key_values"] is cache


def test_every_patch_module_names_its_defect_and_its_removal_and_is_in_the_index():
    names = [m.name for m in pkgutil.iter_modules(lavis_patches.__path__)]
    assert len(names) >= 7
    for name in names:
        module = __import__("lavis_xformer.lavis_patches." + name, fromlist=["_"])
        doc = module.__doc__ or ""
        assert "Defect (LAVIS 1.0.2)" in doc and "Patch:" in doc and "Removal:" in doc, name
        assert "\n    %s " % name in lavis_patches.__doc__, name
