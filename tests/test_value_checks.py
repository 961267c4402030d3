"""Every value is checked with its key, before anything is built (issue 21 point 5): a run,
model, dataset or world key of the right type but out of range is one line naming the key,
the value and what is allowed, and nothing is built or written. World configs are as strict as
run files: unknown keys in every section, wrong types, values out of range."""
import dataclasses
import os

import pytest

from _testlib import TINY_STAGE1, launch_args, lavis_command, run_command

import lavis_xformer  # noqa: F401  (registers builders, models, tasks, runner)
from lavis_xformer.config_keys import RUN_KEYS, ConfigError, out_of_range
from lavis_xformer.models.config import ModelConfig
from lavis_xformer.scoring import METRICS
from lavis_xformer.training import launch
from lavis_xformer.world import config as world_config
from lavis_xformer.world.scenes import WorldSettings


@pytest.mark.parametrize("value, allowed, words", [
    (0, ">= 1", ">= 1"), (1, ">= 1", None), (-1, ">= 0", ">= 0"), (0, "> 0", "> 0"),
    (0.0, "[0, 1)", None), (1.0, "[0, 1)", "[0, 1)"), (1.5, "[0, 1)", "[0, 1)"),
    (float("nan"), "[0, 1)", "[0, 1)"), (0.0, "(0, 1)", "(0, 1)"), (1, "[0, 1]", None),
    ("rank", ("generate", "rank"), None), ("beam", ("generate", "rank"), "one of 'generate', 'rank'"),
    (["a", "c"], ("a", "b"), "items among 'a', 'b'"), (["a"], ("a", "b"), None),
    (None, ">= 1", None),  # null is the type check's (int|null)
])
def test_out_of_range_names_what_is_allowed(value, allowed, words):
    assert out_of_range(value, allowed) == words


# --- run files -----------------------------------------------------------------------------

OUT_OF_RANGE = [
    # zero batch, zero log_freq (a ZeroDivisionError mid-epoch before), negative workers, seed
    ("run.batch_size_train=0", "run.batch_size_train=0 is out of range; allowed: >= 1"),
    ("run.batch_size_eval=0", "run.batch_size_eval=0 is out of range; allowed: >= 1"),
    ("run.log_freq=0", "run.log_freq=0 is out of range; allowed: >= 1"),
    ("run.num_workers=-1", "run.num_workers=-1 is out of range; allowed: >= 0"),
    ("run.seed=-1", "run.seed=-1 is out of range; allowed: [0, 2147483647]"),
    # max_epoch <= 0 exited 0 without training
    ("run.max_epoch=0", "run.max_epoch=0 is out of range; allowed: >= 1"),
    ("run.max_epoch=-2", "run.max_epoch=-2 is out of range; allowed: >= 1"),
    ("run.init_lr=-0.1", "run.init_lr=-0.1 is out of range; allowed: > 0"),
    ("run.warmup_steps=-1", "run.warmup_steps=-1 is out of range; allowed: >= 0"),
    ("run.accum_grad_iters=0", "run.accum_grad_iters=0 is out of range; allowed: >= 1"),
    ("run.beta2=1.0", "run.beta2=1.0 is out of range; allowed: [0, 1)"),
    ("run.num_beams=0", "run.num_beams=0 is out of range; allowed: >= 1"),
    ("run.world_size=0", "run.world_size=0 is out of range; allowed: >= 1"),
    ("run.checkpoint_every_iters=-5", "run.checkpoint_every_iters=-5 is out of range; allowed: >= 0"),
    ("run.metric=accuracy", "run.metric='accuracy' is out of range; allowed: one of 'exact_match', "
                            "'vqa_accuracy', 'oc', 'mci'"),
    # model: mask_ratio must leave patches visible (0: nothing masked, no reconstruction)
    ("model.mask_ratio=1.5", "model.mask_ratio=1.5 is out of range; allowed: [0, 1)"),
    ("model.mask_ratio=1.0", "model.mask_ratio=1.0 is out of range; allowed: [0, 1)"),
    ("model.loss_weights.itc=-1", "model.loss_weights.itc=-1 is out of range; allowed: >= 0"),
    ("model.drop_path_rate=1.0", "model.drop_path_rate=1.0 is out of range; allowed: [0, 1)"),
    ("model.fusion=sum", "model.fusion='sum' is out of range; allowed: one of 'xformer', 'blip2', "
                         "'concat', 'early_ca'"),
    ("model.num_query_token=0", "model.num_query_token=0 is out of range; allowed: >= 1"),
    # dataset limits: a negative one was a Python slice (max_images=-5: all but 5 images)
    ("datasets.easyvqa_caption.build_info.max_images=-5",
     "datasets.easyvqa_caption.build_info.max_images=-5 is out of range; allowed: >= 1"),
    ("datasets.easyvqa_caption.build_info.max_images=0",
     "datasets.easyvqa_caption.build_info.max_images=0 is out of range; allowed: >= 1"),
]


@pytest.mark.parametrize("option, message", OUT_OF_RANGE)
def test_values_out_of_range_stop_before_anything_is_built(option, message, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, "run.output_dir=%s" % out, option))
    assert str(info.value) == "--options: " + message
    assert not out.exists()


def test_a_value_out_of_range_in_the_yaml_names_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(TINY_STAGE1.read_text().replace("  log_freq: 2\n", "  log_freq: 0\n"))
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(cfg, "run.output_dir=%s" % (tmp_path / "out")))
    assert str(info.value) == "%s: run.log_freq=0 is out of range; allowed: >= 1" % cfg
    assert sorted(os.listdir(tmp_path)) == ["run.yaml"]


@pytest.mark.parametrize("options, message", [
    (["run.min_len=5", "run.max_len=3"],
     "--options: run.max_len=3 is below run.min_len=5; allowed: run.max_len >= run.min_len"),
    (["run.foo=[1,2"], "--options run.foo=[1,2: the value is not valid YAML (did not find expected "
                       "',' or ']'); write a list as [1, 2]"),
    (["run.prompt={a:"], "--options run.prompt={a:: the value is not valid YAML"),
    (["run.device=gpu"], "run.device='gpu' is not a device this plugin runs on; set run.device=cpu"),
    # cross-key checks of the model config, before the datasets and the model are built
    (["model.mask_ratio=0"], "model.loss_weights.rec=1.0 needs masked patches: set model.mask_ratio > 0"),
    (["model.mae_source=clip_layer", "model.clip_layer_index=99"],
     "model.clip_layer_index=99 is outside 1..2 (CLIP ViT blocks)"),
])
def test_values_that_do_not_fit_together_or_parse_are_one_line(options, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, "run.output_dir=%s" % (tmp_path / "out"), *options))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_output_dir_that_is_a_file_is_refused_and_the_file_kept(where, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("my results\n")
    output_dir = existing if where == "file" else existing / "run"
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, "run.output_dir=%s" % output_dir))
    assert str(info.value) == ("run.output_dir=%r: %s is a file, not a folder; give a folder (new or "
                               "existing) for the run's job folders" % (str(output_dir), existing))
    assert existing.read_text() == "my results\n"


def test_boundary_values_are_accepted(tmp_path):
    """0 is a real setting where the code gives it a meaning: no masking (mask_ratio), no
    mid-epoch checkpoints, no warm-up, loader in the main process."""
    cfg = launch.load_config(launch_args(
        TINY_STAGE1, "run.output_dir=%s" % (tmp_path / "out"), "model.mask_ratio=0",
        "model.loss_weights.rec=0", "run.checkpoint_every_iters=0", "run.warmup_steps=0",
        "run.num_workers=0", "run.seed=0", "datasets.easyvqa_caption.build_info.max_images=1"))
    assert cfg.model_cfg.mask_ratio == 0 and cfg.run_cfg.log_freq == 2


def test_choices_in_the_registry_are_the_code_s_own():
    assert RUN_KEYS["metric"][1] == METRICS
    assert ModelConfig().fusion == "xformer"  # defaults are within their own ranges
    with pytest.raises(ConfigError, match=r"model.mask_ratio=1.5 is out of range; allowed: \[0, 1\)"):
        ModelConfig(mask_ratio=1.5)  # builders that skip the run file are checked too


def test_the_training_command_prints_one_error_line_and_exit_status_2(tmp_path):
    out = tmp_path / "out"
    result = run_command(lavis_command(TINY_STAGE1, "run.output_dir=%s" % out, "run.log_freq=0",
                                       "run.device=cpu"), tmp_path, expect=2)
    assert "Traceback" not in result.stderr
    assert [l for l in result.stderr.splitlines() if l.startswith("error: ")] == [
        "error: --options: run.log_freq=0 is out of range; allowed: >= 1"]
    assert not out.exists()


# --- world configs -------------------------------------------------------------------------

CI = open(world_config._path("ci")).read()

WORLD_CASES = [
    # typos inside the sections were silently ignored
    ("clip: {steps: 300,", "clip: {stpes: 300,", "unknown key clip.stpes; did you mean clip.steps?"),
    ("mae: {steps: 100,", "mae: {step: 100,", "unknown key mae.step; did you mean mae.steps?"),
    ("lm: {steps: 150,", "lm: {steps: 150, lr_rate: 1,", "unknown key lm.lr_rate; did you mean lm.lr?"),
    ("  max_count: 8\n", "  max_cont: 8\n", "unknown key world.max_cont; did you mean world.max_count?"),
    ("hard_cases: {plain: 0.4,", "hard_cases: {plane: 0.4,",
     "unknown key world.hard_cases.plane; did you mean world.hard_cases.plain?"),
    ("  parallel: 3\n", "  paralel: 3\n", "unknown key job.paralel; did you mean job.parallel?"),
    ("stage1: {max_epoch: 2,", "stage1: {max_epochs: 2,",
     "unknown key job.stage1.max_epochs; did you mean job.stage1.max_epoch?"),
    ("name: ci\n", "name: ci\nclips: {}\n", "unknown key clips; did you mean clip?"),
    # wrong types
    ("clip: {steps: 300,", "clip: {steps: many,", "clip.steps='many' must be an integer"),
    ("lm: {steps: 150, batch_size: 64, lr: 1.0e-3, warmup: 10, seed: 0}", "lm: 5", "lm=5 must be a mapping"),
    # out of range
    ("mask_ratio: 0.75", "mask_ratio: 1.5", "mae.mask_ratio=1.5 is out of range; allowed: (0, 1)"),
    ("lm: {steps: 150,", "lm: {steps: 0,", "lm.steps=0 is out of range; allowed: >= 1"),
    ("warmup: 10, embed_dim", "warmup: -1, embed_dim", "clip.warmup=-1 is out of range; allowed: >= 0"),
    ("  seed: 0\n  image_size", "  seed: -3\n  image_size", "world.seed=-3 is out of range; allowed: >= 0"),
    ("train: 1500,", "train: 0,", "world.splits.train=0 is out of range; allowed: >= 1"),
    ("  parallel: 3\n", "  parallel: 0\n", "job.parallel=0 is out of range; allowed: >= 1"),
    ("seeds: [42]", "seeds: [-1]", "job.seeds[0]=-1 is out of range; allowed: [0, 2147483647]"),
    ("variants: [xformer]", "variants: [xformr]",
     "job.variants=['xformr'] is out of range; allowed: items among 'blip2', 'xformer'"),
    ("stage1: {max_epoch: 2,", "stage1: {max_epoch: 0,", "job.stage1.max_epoch=0 is out of range; allowed: >= 1"),
    ("stage1: {max_epoch: 2, batch_size_train: 16, max_images: null",
     "stage1: {max_epoch: 2, batch_size_train: 16, max_images: -5",
     "job.stage1.max_images=-5 is out of range; allowed: >= 1"),
    ("eval: {max_items: null}", "eval: {max_items: 0}", "job.eval.max_items=0 is out of range; allowed: >= 1"),
    # values that do not fit together
    ("  max_count: 8\n", "  max_count: 20\n",
     "world.max_count=20 is above world.max_objects=12; allowed: world.max_objects >= world.max_count"),
    ("splits: {train: 1500, val: 100, test: 200}", "splits: {train: 1500}",
     "world.splits={'train': 1500} lacks val, test"),
    ("image_size: 64", "image_size: 32", "world.image_size=32: the frozen parts are built for 64 px"),
    ("text_dim: 128", "text_dim: 130", "clip.text_dim=130 must be a multiple of 4"),
    ("name: ci\n", "name: ../elsewhere\n", "name='../elsewhere' must be a folder name"),
]


@pytest.mark.parametrize("old, new, message", WORLD_CASES, ids=[c[2][:40] for c in WORLD_CASES])
def test_world_config_problems_are_one_line_naming_file_key_and_value(old, new, message, tmp_path):
    assert old in CI
    path = tmp_path / "world.yaml"
    path.write_text(CI.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        world_config.load(str(path))
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("%s: %s" % (path, message)), lines


@pytest.mark.parametrize("text, message", [
    ("clip: {lr: [1, warmup: 1}\n", "is not valid yaml"),
    ("- a list\n", "must hold a mapping with the sections"),
])
def test_world_config_that_is_not_a_mapping_is_one_line(text, message, tmp_path):
    path = tmp_path / "world.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        world_config.load(str(path))
    with pytest.raises(ConfigError, match="no such file, and no packaged config of that name"):
        world_config.load(str(tmp_path / "nowhere"))


def test_world_registries_cover_what_the_code_reads():
    for name in ("mini", "ci", "finding"):
        world_config.load(name)  # every shipped world config passes
    assert set(world_config.WORLD_KEYS) == {f.name for f in dataclasses.fields(WorldSettings)}


def test_world_main_stops_before_building_anything(tmp_path, capsys, monkeypatch):
    from _testlib import REPO
    from lavis_xformer.world import main as world_main

    monkeypatch.chdir(REPO)  # the project files are found from the repository's root
    path = tmp_path / "world.yaml"
    path.write_text(CI.replace("clip: {steps: 300,", "clip: {stpes: 300,").replace("name: ci", "name: vc_test"))
    with pytest.raises(SystemExit) as info:
        world_main.main(["--config", str(path), "--cache-dir", str(tmp_path / "cache")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: %s: unknown key clip.stpes; did you mean clip.steps?" % path in err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["world.yaml"]
    assert not (REPO / "output" / "vc_test").exists()
