"""The miniature world's frozen parts: trained by the plugin's own commands, cached by their
configuration, and loaded through the plugin's weight-source keys (the real loading code)."""
import os

import pytest
import torch
from omegaconf import OmegaConf

from lavis_xformer.world import build as world_build
from lavis_xformer.world import cache, pretrain

STEPS = {"steps": 2, "batch_size": 8, "warmup": 1}


def tiny_config(name="unit"):
    return {"name": name,
            "world": {"seed": 3, "splits": {"train": 48, "val": 12, "test": 12}},
            "clip": dict(STEPS, embed_dim=32, text_dim=64, text_depth=1),
            "mae": dict(STEPS), "lm": dict(STEPS)}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    workdir = tmp_path_factory.mktemp("work")
    cwd = os.getcwd()
    os.chdir(workdir)  # the links go to ./output/<name>/assets
    try:
        cfg = tiny_config()
        paths = {part: pretrain.ensure_part(cfg, part, str(root)) for part in pretrain.PARTS}
        paths["world"] = world_build.ensure_world(cfg, str(root))
    finally:
        os.chdir(cwd)
    return cfg, str(root), str(workdir), paths


def test_parts_are_cached_linked_and_rebuilt_on_change(parts, capsys):
    cfg, root, workdir, paths = parts
    for part, path in paths.items():
        assert cache.is_done(path)
        link = os.path.join(workdir, "output", "unit", "assets", part)
        assert os.path.realpath(link) == os.path.realpath(path)
    done = os.path.getmtime(os.path.join(paths["mae"], "DONE.json"))
    capsys.readouterr()
    again = pretrain.ensure_part(cfg, "mae", root, link=False)
    assert again == paths["mae"] and "reusing" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(paths["mae"], "DONE.json")) == done
    changed = tiny_config()
    changed["mae"]["steps"] = 3
    assert pretrain.ensure_part(changed, "mae", root, link=False) != paths["mae"]
    other_world = tiny_config()
    other_world["world"]["seed"] = 4  # a new world: a new world and new parts
    assert world_build.ensure_world(other_world, root, link=False) != paths["world"]


def test_parts_report_their_quality(parts):
    _, _, _, paths = parts
    assert set(cache.read_done(paths["clip"])["result"]["quality"]) >= {"i2t_r1", "t2i_r1"}
    assert cache.read_done(paths["mae"])["result"]["val_loss"] > 0
    assert os.path.isfile(os.path.join(paths["mae"], "reconstruction.png"))
    assert cache.read_done(paths["lm"])["result"]["val_perplexity"] > 1


def test_parts_load_through_the_plugin_keys(parts):
    """Build the mini stage-2 model with the three keys pointing at the trained parts: the
    ViT, the MAE and the OPT hold exactly the saved weights."""
    from lavis.models.blip2_models.modeling_opt import OPTForCausalLM
    from transformers import ViTMAEForPreTraining

    from lavis_xformer.models.xformer_llm import XFormerOPT

    _, _, _, paths = parts
    vit_file = os.path.join(paths["clip"], "vit.pth")
    saved_vit = torch.load(vit_file, weights_only=True)  # tensors only
    cfg = OmegaConf.load(XFormerOPT.default_config_path("mini")).model
    cfg.clip_vit_weights = vit_file
    cfg.mae_weights = paths["mae"]
    cfg.llm_weights = paths["lm"]
    cfg.llm_tokenizer = paths["lm"]
    model = XFormerOPT.from_config(cfg)
    for name, tensor in saved_vit.items():
        assert torch.equal(model.visual_encoder.state_dict()[name], tensor), name
    mae = ViTMAEForPreTraining.from_pretrained(paths["mae"])
    branch = model.mae_branch.mae.state_dict()  # stage 2 without reconstruction: no decoder
    encoder = [name for name in mae.state_dict() if name.startswith("vit.")]
    assert encoder and all(name in branch for name in encoder)
    for name in encoder:
        assert torch.equal(branch[name], mae.state_dict()[name]), name
    llm = OPTForCausalLM.from_pretrained(paths["lm"])
    for name, tensor in llm.state_dict().items():
        assert torch.equal(model.llm_model.state_dict()[name], tensor), name
    tokenizer = model.llm_tokenizer
    text = "Question: how many circles are there in the image? Short Answer: 3"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id == llm.config.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids
