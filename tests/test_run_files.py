"""Run files that include a base (``includes:``), the ablation files as short overrides of one
base per stage, and the switchable flip of ``xformer_image_train`` (issue 15 point 5, issue 11
point 2)."""
import argparse
import glob
import os

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_xformer  # noqa: F401  (registers the plugin)
from lavis.common.registry import registry
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.training import launch
from lavis_xformer.training.run_files import IncludingConfig, load_run_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = os.path.join(ROOT, "projects/xformer/ablations")


def _write(path, text):
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------- the include step

def test_includes_merge_in_order_relative_to_the_file_and_options_win(tmp_path):
    (tmp_path / "bases").mkdir()
    _write(tmp_path / "bases" / "a.yaml", "model: {arch: xformer, model_type: tiny, mask_ratio: 0.1}\n"
           "run: {task: xformer_pretrain, lr: [1, 2, 3], seed: 1}\ndatasets: {easyvqa_caption: {}}\n")
    _write(tmp_path / "bases" / "b.yaml", "includes: a.yaml\nrun: {seed: 2, lr: [9]}\n")
    top = _write(tmp_path / "top.yaml", "includes: [bases/b.yaml]\nmodel: {mask_ratio: 0.3}\n")
    cfg = load_run_file(top)
    assert "includes" not in cfg
    assert cfg.model == {"arch": "xformer", "model_type": "tiny", "mask_ratio": 0.3}
    assert cfg.run.seed == 2 and list(cfg.run.lr) == [9]  # lists are replaced, not appended
    assert cfg.run.task == "xformer_pretrain" and "easyvqa_caption" in cfg.datasets
    # LAVIS's Config over it: the model yaml's defaults under the run file, --options on top
    args = argparse.Namespace(cfg_path=top, options=["model.mask_ratio=0.7"])
    built = IncludingConfig(args).config
    assert built.model.mask_ratio == 0.7 and built.model.num_query_token == 16  # from xformer_tiny.yaml
    assert built.run.seed == 2


def test_include_errors_name_the_file(tmp_path):
    missing = _write(tmp_path / "m.yaml", "includes: [nowhere.yaml]\nrun: {}\n")
    with pytest.raises(ConfigError, match=r"m.yaml: includes: no such file: .*nowhere.yaml"):
        load_run_file(missing)
    _write(tmp_path / "x.yaml", "includes: y.yaml\n")
    cyc = _write(tmp_path / "y.yaml", "includes: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_run_file(cyc)
    bad = _write(tmp_path / "b.yaml", "includes: {a: 1}\n")
    with pytest.raises(ConfigError, match="must be a file name or a list"):
        load_run_file(bad)


def test_launcher_resolves_includes_before_its_checks(tmp_path):
    """`python -m lavis.train` / `lavis.evaluate` load through launch.load_config: the pre-checks
    see the included sections, and --options model.model_type keeps the included model keys."""
    _write(tmp_path / "base.yaml", open(os.path.join(ROOT, "projects/xformer/tiny/stage1.yaml")).read())
    top = _write(tmp_path / "top.yaml", "includes: [base.yaml]\nmodel: {mask_ratio: 0.25}\n"
                 "run: {output_dir: %s}\n" % (tmp_path / "out"))
    cfg = launch.load_config(launch.parse_args(["--cfg-path", top, "--options", "run.device=cpu"]))
    assert cfg.model_cfg.mask_ratio == 0.25 and cfg.run_cfg.output_dir == str(tmp_path / "out")
    assert cfg.run_cfg.task == "xformer_pretrain"
    nothing = _write(tmp_path / "empty.yaml", "includes: [base.yaml]\nrun: {task: nonexistent}\n")
    with pytest.raises(ConfigError, match="unknown task 'nonexistent'"):
        launch.load_config(launch.parse_args(["--cfg-path", nothing]))


# ----------------------------------------------------------------- the ablation files

# Each ablation's final model keys where they differ from X-Former's own run (as the files
# before the restructuring had them, written out in full), and its stage-1 run for stage 2.
STAGE1_CHANGES = {
    "xformer": {},
    "blip2": {"fusion": "blip2", "mask_ratio": 0.0, "loss_weights.rec": 0.0},
    "concat": {"fusion": "concat", "mask_ratio": 0.0, "loss_weights.rec": 0.0},
    "early_ca": {"fusion": "early_ca", "mask_ratio": 0.0, "loss_weights.rec": 0.0},
    "clip_layer26": {"mae_source": "clip_layer", "clip_layer_index": 26, "mask_ratio": 0.0,
                     "loss_weights.rec": 0.0},
    "clip_recon": {"mae_source": "clip"},
    "no_itc": {"loss_weights.itc": 0.0},
    "no_itg": {"loss_weights.lm": 0.0},
    "no_itm": {"loss_weights.itm": 0.0},
    "no_rec": {"mask_ratio": 0.0, "loss_weights.rec": 0.0},
    "no_sa": {"fusion_self_attn": False},
    "no_hflip": {},
}
STAGE2_CHANGES = {
    "xformer": {}, "blip2": {"fusion": "blip2"}, "concat": {"fusion": "concat"},
    "early_ca": {"fusion": "early_ca"},
    "clip_layer26": {"mae_source": "clip_layer", "clip_layer_index": 26},
    "clip_recon": {"mae_source": "clip"}, "no_itc": {}, "no_itg": {}, "no_itm": {}, "no_rec": {},
    "no_sa": {"fusion_self_attn": False}, "no_hflip": {},
    "frozen_fusion": {"freeze_fusion": True},
    "rec_both": {"mask_ratio": 0.5, "loss_weights.rec": 1.0},
}
TRAIN_SETS = ("coco_caption", "vg_caption", "sbu_caption", "conceptual_caption_3m",
              "conceptual_caption_12m")


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def _built(path):
    cfg = IncludingConfig(argparse.Namespace(cfg_path=path, options=None)).config
    return _flat(OmegaConf.to_container(cfg))


@pytest.mark.parametrize("stage,changes", [("stage1", STAGE1_CHANGES), ("stage2", STAGE2_CHANGES)])
def test_each_ablation_file_is_xformer_plus_its_change(stage, changes):
    files = {os.path.basename(p)[: -len("_%s.yaml" % stage)]
             for p in glob.glob(os.path.join(ABLATIONS, "*_%s.yaml" % stage))}
    assert files == set(changes)
    reference = _built(os.path.join(ABLATIONS, "xformer_%s.yaml" % stage))
    # the paper's ablation batch: 320 (stage 1) / 272 (stage 2) in total on 8 GPUs
    assert reference["run.batch_size_train"] * 8 == (320 if stage == "stage1" else 272)
    for name, change in changes.items():
        path = os.path.join(ABLATIONS, "%s_%s.yaml" % (name, stage))
        raw = OmegaConf.load(path)
        assert list(raw.includes) == ["base/%s.yaml" % stage], name
        expected = dict(reference)
        expected.update({"model." + k: v for k, v in change.items()})
        expected["run.output_dir"] = "output/xformer/ablations/%s_%s" % (name, stage)
        if stage == "stage2":
            first = name if name in STAGE1_CHANGES else "xformer"
            expected["model.pretrained"] = "output/xformer/ablations/%s_stage1/latest/checkpoint_8.pth" % first
        if name == "no_hflip":
            for dataset in TRAIN_SETS:
                key = "datasets.%s.vis_processor.train." % dataset
                expected[key + "name"], expected[key + "hflip"] = "xformer_image_train", False
        assert _built(path) == expected, name
        # "only what it changes": a short file, no section copied from the base
        assert len(open(path).read().splitlines()) <= (45 if name == "no_hflip" else 20), name


# ----------------------------------------------------------------- the flip switch

def _processor(**cfg):
    cls = registry.get_processor_class("xformer_image_train")
    return cls.from_config(OmegaConf.create(dict(image_size=16, min_scale=1.0, max_scale=1.0, **cfg)))


def test_xformer_image_train_flips_like_blip2_and_never_without_hflip():
    image = Image.fromarray((torch.arange(16 * 16 * 3) % 251).reshape(16, 16, 3).byte().numpy())
    stock = registry.get_processor_class("blip2_image_train").from_config(
        OmegaConf.create(dict(image_size=16, min_scale=1.0, max_scale=1.0)))
    flipping, plain = _processor(), _processor(hflip=False)
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        a = stock(image)
        torch.manual_seed(seed)
        assert torch.equal(flipping(image), a)  # default: the same draws as blip2_image_train
        torch.manual_seed(seed)
        b = plain(image)
        # scale 1 with the image's own aspect: the crop is the whole image, so any difference
        # between the two is the flip
        assert not torch.equal(b, b.flip(-1))
        flips += int(torch.equal(a, b.flip(-1)))
        if not torch.equal(a, b):
            assert torch.equal(a, b.flip(-1))
    assert 0 < flips < 20
    unflipped = [plain(image) for _ in range(5)]
    assert all(torch.equal(u, unflipped[0]) for u in unflipped)
    with pytest.raises(ValueError, match="hflip must be True or False"):
        _processor(hflip="no")


def test_the_world_is_an_application_registered_only_by_run_imports(tmp_path):
    """`import lavis` does not import the miniature world; a run file that names its builder
    lists the module under run.imports, and a module that is not there is one line."""
    import subprocess
    import sys

    from _testlib import subprocess_env

    code = ("import sys, lavis; from lavis.common.registry import registry; "
            "print(sorted(m for m in sys.modules if m.startswith('lavis_xformer.world')), "
            "registry.get_builder_class('mini_world_caption'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[] None", out.stdout + out.stderr[-2000:]

    stage1 = os.path.join(ROOT, "projects", "xformer", "mini", "stage1.yaml")
    assert "lavis_xformer.world.datasets" in load_run_file(stage1).run.imports
    launch.import_run_modules(load_run_file(stage1))
    assert registry.get_builder_class("mini_world_caption") is not None
    with pytest.raises(ConfigError, match=r"^run.imports: cannot import lavis_xformer.wrold "
                       r"\(No module named 'lavis_xformer.wrold'\); name an installed module$"):
        launch.import_run_modules(OmegaConf.create({"run": {"imports": ["lavis_xformer.wrold"]}}))
    with pytest.raises(ConfigError, match=r"must be a list of module names"):
        launch.import_run_modules(OmegaConf.create({"run": {"imports": "lavis_xformer.world"}}))
