"""The frozen-encoder probes (lavis_xformer.world.probes): targets read off the scenes, and a
probe that finds a property a feature carries and stays at the majority line on one it lacks."""
import torch

from lavis_xformer.world import probes
from lavis_xformer.world import scenes as S


def test_scene_targets_follow_the_scene_descriptions():
    scenes = [{"objects": [{"shape": "circle", "colour": "red"}, {"shape": "circle", "colour": "blue"},
                           {"shape": "square", "colour": "red"}]},
              {"objects": [{"shape": "diamond", "colour": "white"}] * 9}]
    t = probes.scene_targets(scenes, max_count=8)
    circle, square, diamond = (S.SHAPES.index(s) for s in ("circle", "square", "diamond"))
    assert t["count"][0, circle] == 2 and t["count"][0, square] == 1 and t["count"][1, diamond] == 8
    assert t["shape"][0].tolist() == [int(s in ("circle", "square")) for s in S.SHAPES]
    colours = list(S.COLOURS)
    assert t["colour"][0].tolist() == [int(c in ("red", "blue")) for c in colours]


def test_probe_reads_a_carried_property_and_not_an_absent_one():
    gen = torch.Generator().manual_seed(0)
    n, d = 600, 16
    labels = torch.randint(0, 3, (n,), generator=gen)
    carried = torch.randn(n, d, generator=gen) * 0.3
    carried[:, 0] += labels.float() * 2.0  # the label, linearly, in one feature
    noise = torch.randn(n, d, generator=gen)  # features that know nothing of the label
    train, val = slice(0, 400), slice(400, None)
    good = probes.fit_probe(carried[train], labels[train], carried[val], 3)
    assert (good == labels[val]).float().mean() > 0.95
    blind = probes.fit_probe(noise[train], labels[train], noise[val], 3)
    majority = (labels[val] == torch.bincount(labels[train]).argmax()).float().mean()
    assert (blind == labels[val]).float().mean() < majority + 0.1


def test_probe_features_are_the_model_branches_features(tmp_path):
    """The probes load the frozen parts the models' way: on the same image their CLIP ViT and
    MAE features are the model's, exactly."""
    from _testlib import build_model
    from lavis_xformer.world import pretrain

    model = build_model("xformer", "tiny").eval()
    c = model.model_config
    torch.save(model.visual_encoder.state_dict(), tmp_path / "vit.pth")
    model.mae_branch.mae.save_pretrained(tmp_path / "mae")
    encode = probes.frozen_encoders(str(tmp_path), str(tmp_path / "mae"),
                                    {"image_size": c.image_size, "vit": c.vit})
    images = torch.randint(0, 256, (2, 3, c.image_size, c.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    processed = pretrain.normalise(images, pretrain.CLIP_MEAN, pretrain.CLIP_STD)
    with torch.no_grad():
        assert torch.equal(encode["mae"](images), model.mae_branch.encode(processed, 0.0).tokens)
        assert torch.equal(encode["clip_vit"](images), model.visual_encoder(processed))
