"""The easy-VQA caption set and the early configuration / data checks of the run scripts."""
import os
import sys

import numpy as np
import pytest

from _testlib import REPO, TINY_STAGE1, launch_args, run_command
from PIL import Image

import lavis_xformer  # noqa: F401  (registers builders, models, tasks, runner)
from lavis.common.registry import registry
from lavis_xformer.datasets import easyvqa
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.training import launch

STAGE1 = REPO / "projects" / "xformer" / "stage1.yaml"
STAGE1_DATASETS = ("coco_caption", "vg_caption", "capfilt_web")
MAP_STYLE_DATASETS = ("coco_caption", "vg_caption")  # capfilt_web: webdataset shards


def _split_dir(split):
    return os.path.join(easyvqa.package_data_root(), split)


# --- captions -------------------------------------------------------------------------------

@pytest.mark.parametrize("image_id, caption", [
    (0, "a blue rectangle"),   # "what is the blue shape?" -> rectangle
    (1, "a blue triangle"),    # "what color is the triangle?" -> blue
    (2, "a red triangle"),
    (3, "a brown rectangle"),
    (4, "a red circle"),
])
def test_captions_of_known_train_images(image_id, caption):
    anns = {a["image_id"]: a for a in easyvqa.load_annotations(_split_dir("train"), max_images=5)}
    assert anns[image_id]["caption"] == caption
    assert anns[image_id]["image"].endswith(os.path.join("train", "images", "%d.png" % image_id))


def test_yes_no_answers_negation_and_elimination():
    # "is there not a teal shape?" answered "no": a teal shape is there
    assert easyvqa.describe([("is there not a teal shape?", "no")]) == ("teal", None)
    # two shapes absent leave the third
    pairs = [("is there a circle?", "no"), ("does the image not contain a triangle?", "yes")]
    assert easyvqa.describe(pairs) == (None, "rectangle")
    assert easyvqa.caption_from_qa(pairs) == "a rectangle"
    assert easyvqa.caption_from_qa([("is a red shape present?", "yes")]) == "a red shape"
    assert easyvqa.caption_from_qa([("is a red shape present?", "no")]) == "a shape"
    with pytest.raises(ValueError, match="contradicting"):
        easyvqa.describe([("what color is the shape?", "red"), ("is there a red shape?", "no")])


def test_caption_colours_match_the_pixels():
    """easy-VQA draws each shape in a flat named colour on a light background: the most
    frequent pixel value far from the background is the colour the caption names."""
    rgb = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
           "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42),
           "yellow": (255, 255, 0)}
    anns = easyvqa.load_annotations(_split_dir("test"), max_images=400)
    checked = 0
    for ann in anns:
        colour = ann["caption"].split()[1]
        if colour not in rgb:
            continue
        pixels = np.asarray(Image.open(ann["image"]).convert("RGB")).reshape(-1, 3).astype(int)
        values, counts = np.unique(pixels, axis=0, return_counts=True)
        order = np.argsort(-counts)
        background = values[order[0]]
        shape = next(values[j] for j in order[1:] if np.abs(values[j] - background).sum() > 100)
        assert tuple(shape) == rgb[colour], (ann, tuple(shape))
        checked += 1
    assert checked > 340


def test_every_image_is_captioned_and_most_fully():
    for split, n_images in (("train", 4000), ("test", 1000)):
        anns = easyvqa.load_annotations(_split_dir(split))
        assert len(anns) == n_images
        full = [a for a in anns if len(a["caption"].split()) == 3 and a["caption"].split()[1] != "shape"
                and a["caption"].split()[1] in easyvqa.COLORS]
        assert len(full) >= 0.85 * n_images


def test_builder_items_like_lavis_pretrain_datasets():
    builder_cls = registry.get_builder_class("easyvqa_caption")
    assert os.path.isabs(builder_cls.default_config_path())
    builder = builder_cls()  # the packaged default config
    builder.config.build_info.max_images = 3
    datasets = builder.build_datasets()
    assert set(datasets) == {"train", "test"}
    assert len(datasets["train"]) == 3 and len(datasets["test"]) == 3
    item = datasets["train"][0]
    assert set(item) == {"image", "text_input", "image_id"}
    assert tuple(item["image"].shape) == (3, 64, 64)
    assert item["text_input"] == "a blue rectangle" and item["image_id"] == 0
    batch = datasets["train"].collater([datasets["train"][i] for i in range(3)])
    assert tuple(batch["image"].shape) == (3, 3, 64, 64)
    assert batch["text_input"] == ["a blue rectangle", "a blue triangle", "a red triangle"]


# --- early checks ---------------------------------------------------------------------------

def test_tiny_config_passes_the_checks():
    cfg = launch.load_config(launch_args(TINY_STAGE1))
    assert cfg.run_cfg.runner == "runner_xformer" and cfg.run_cfg.task == "xformer_pretrain"
    assert cfg.model_cfg.arch == "xformer" and cfg.model_cfg.model_type == "tiny"


def test_missing_easyvqa_data_names_dataset_split_path_and_key(tmp_path):
    key = "`datasets.easyvqa_caption.build_info.root`"
    root = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, "datasets.easyvqa_caption.build_info.root=%s" % root))
    message = str(info.value)
    assert "dataset 'easyvqa_caption', split 'all': data folder not found at %s" % root in message
    assert key in message

    root.mkdir()  # a folder without the test split
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "questions.json").write_text("[]")
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, "datasets.easyvqa_caption.build_info.root=%s" % root))
    message = str(info.value)
    assert "split 'train'" not in message
    assert ("dataset 'easyvqa_caption', split 'test': annotation file not found at %s"
            % (root / "test" / "questions.json")) in message
    assert "split 'test': image directory not found at %s" % (root / "test" / "images") in message
    assert key in message


def test_missing_stage1_data_names_every_file_and_key():
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(STAGE1))
    message = str(info.value)
    cache_root = registry.get_path("cache_root")
    assert "dataset 'coco_caption', split 'train': annotation file not found at %s" % os.path.join(
        cache_root, "coco/annotations/coco_karpathy_train.json") in message
    assert "`datasets.coco_caption.build_info.annotations.train.storage`" in message
    assert "`datasets.coco_caption.build_info.images.storage`" in message
    assert "of the 1300 shards of capfilt/ccs/{00000..01299}.tar are missing" in message
    assert "BLIP/datasets/ccs_synthetic_filtered_large.json" in message  # the CapFilt file to fetch
    for name in STAGE1_DATASETS:
        assert "dataset '%s'" % name in message


def test_stage1_passes_the_checks_once_its_data_exist(tmp_path):
    shard = tmp_path / "capfilt" / "00000.tar"
    shard.parent.mkdir()
    shard.write_bytes(b"")
    options = ["run.device=cpu", "datasets.capfilt_web.build_info.storage=[%s]" % shard]
    for name in MAP_STYLE_DATASETS:
        (tmp_path / name / "images").mkdir(parents=True)
        options.append("datasets.%s.build_info.images.storage=%s" % (name, tmp_path / name / "images"))
        splits = ("train", "val", "test") if name == "coco_caption" else ("train",)
        for split in splits:
            ann = tmp_path / name / ("%s.json" % split)
            # one entry with what every builder here reads (an empty list is an error now)
            ann.write_text('[{"image": "a.jpg", "caption": "a cat", "image_id": 0}]')
            options.append("datasets.%s.build_info.annotations.%s.storage=[%s]" % (name, split, ann))
    cfg = launch.load_config(launch_args(STAGE1, *options))
    assert cfg.model_cfg.model_type == "pretrain" and cfg.model_cfg.mask_ratio == 0.5
    assert cfg.run_cfg.max_epoch == 9 and cfg.run_cfg.warmup_steps == 2000
    vis = cfg.datasets_cfg.coco_caption.vis_processor.train
    assert vis.name == "blip2_image_train" and vis.image_size == 224


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(TINY_STAGE1.read_text().replace("easyvqa_caption:", "no_such_data:"))
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(cfg))
    message = str(info.value)
    assert "unknown dataset 'no_such_data'" in message
    assert "easyvqa_caption" in message and "coco_caption" in message


def test_malformed_yaml_is_one_clear_error(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("model:\n  arch: xformer\n  model_type: [tiny\nrun: {task: x\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid yaml"):
        launch.load_config(launch_args(cfg))
    with pytest.raises(ConfigError, match="no such file"):
        launch.load_config(launch_args(tmp_path / "absent.yaml"))


@pytest.mark.slow
def test_cli_stops_at_once_on_missing_data(tmp_path):
    result = run_command(
        [sys.executable, "-m", "lavis_xformer.train", "--cfg-path", str(TINY_STAGE1), "--options",
         "datasets.easyvqa_caption.build_info.root=%s" % (tmp_path / "nowhere"),
         "run.output_dir=%s" % (tmp_path / "out")], tmp_path, expect=2, threads=None, timeout=300)
    assert "error: data for this run is missing" in result.stderr
    assert "datasets.easyvqa_caption.build_info.root" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Building datasets" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()
