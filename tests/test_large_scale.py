"""BLIP's CapFilt captions through LAVIS's webdataset builder, the stage-1 data section and the
large-scale project files (issue 15 points 3 and 4)."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import lavis_xformer  # noqa: F401  (registers the plugin)
from lavis.common.registry import registry
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.datasets.checks import check_datasets
from lavis_xformer.training.run_files import load_run_file

REPO = Path(__file__).resolve().parents[1]
PROJECTS = REPO / "projects" / "xformer"
CCS = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/ccs_synthetic_filtered_large.json"
LAION = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/laion_synthetic_filtered_large.json"


def _shard(path, captions, seed):
    """A webdataset shard as img2dataset writes it: <key>.jpg + <key>.json with the caption."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, caption in enumerate(captions):
            image = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image, format="JPEG")
            meta = json.dumps({"caption": caption, "url": "http://example.org/%d.jpg" % i}).encode()
            for ext, data in (("jpg", image.getvalue()), ("json", meta)):
                info = tarfile.TarInfo("%s%05d.%s" % (path.stem, i, ext))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _builder(**build_info):
    cls = registry.get_builder_class("capfilt_web")
    cfg = OmegaConf.load(cls.default_config_path()).datasets.capfilt_web
    cfg.vis_processor.train.image_size = 32
    for key, value in build_info.items():
        OmegaConf.update(cfg.build_info, key, value, merge=False)
    return cfg, cls


def test_capfilt_web_streams_every_shard_set_through_lavis_laion_dataset(tmp_path):
    _shard(tmp_path / "ccs" / "00000.tar", ["a dog on a couch", "a red bus"], 0)
    _shard(tmp_path / "laion" / "00000.tar", ["a bowl of soup"], 1)
    cfg, cls = _builder(storage=[str(tmp_path / "ccs" / "{00000..00000}.tar"),
                                 str(tmp_path / "laion" / "00000.tar")])
    check_datasets(OmegaConf.create({"capfilt_web": cfg}))  # every shard there: no error
    stream = cls(cfg).build_datasets()["train"]
    seen = set()
    for sample, _ in zip(stream, range(60)):
        assert sample["image"].shape == (3, 32, 32)
        seen.add(sample["text_input"])
    assert seen == {"a dog on a couch", "a red bus", "a bowl of soup"}  # both sets, one stream


def test_missing_shards_are_counted_and_the_capfilt_file_named(tmp_path):
    _shard(tmp_path / "ccs" / "00000.tar", ["a cat"], 0)
    cfg, _ = _builder(storage=[str(tmp_path / "ccs" / "{00000..00002}.tar")])
    with pytest.raises(ConfigError) as info:
        check_datasets(OmegaConf.create({"capfilt_web": cfg}))
    message = str(info.value)
    assert "webdataset shard not found at %s" % (tmp_path / "ccs" / "00001.tar") in message
    assert "2 of the 3 shards" in message and CCS in message
    assert message.count("capfilt_web") <= 3  # one entry per pattern, not one per shard


def test_stage1_data_are_coco_vg_and_blips_capfilt_web_captions():
    for name in ("stage1.yaml", "stage2.yaml", "stage2_opt6.7b.yaml"):
        cfg = load_run_file(str(PROJECTS / name))
        assert set(cfg.datasets) == {"coco_caption", "vg_caption", "capfilt_web"}, name
        web = cfg.datasets.capfilt_web.build_info
        assert list(web.annotation_sources) == [CCS] and len(web.storage) == 1
        # LAVIS orders a mixed training set [map-style (COCO + VG), stream]
        assert list(cfg.run.train_dataset_ratios) == [1.34, 13.8]
        per_gpu = cfg.run.batch_size_train
        assert cfg.run.iters_per_epoch == round(15.14e6 / (per_gpu * 8)), name


def test_large_scale_project_files():
    s1 = load_run_file(str(PROJECTS / "large_scale" / "stage1.yaml"))
    assert (s1.model.arch, s1.run.max_epoch) == ("xformer", 9)
    t5 = load_run_file(str(PROJECTS / "large_scale" / "stage2_flant5xl.yaml"))
    opt = load_run_file(str(PROJECTS / "large_scale" / "stage2_opt2.7b.yaml"))
    assert (t5.model.arch, t5.model.model_type) == ("xformer_t5", "pretrain_flant5xl")
    assert (opt.model.arch, opt.model.model_type) == ("xformer_opt", "pretrain_opt2.7b")
    for cfg in (s1, t5, opt):
        web = cfg.datasets.capfilt_web.build_info
        assert list(web.annotation_sources) == [CCS, LAION]
        assert [s.split("/")[1] for s in web.storage] == ["ccs", "laion115m"]
        assert list(cfg.run.train_dataset_ratios) == [1.34, 118.8]
        assert cfg.run.iters_per_epoch == round(120.14e6 / (cfg.run.batch_size_train * 8))
    for cfg in (t5, opt):  # the paper: stage 2 from the stage 1 trained on 14M, one epoch
        assert cfg.model.pretrained == "output/xformer/stage1/latest/checkpoint_8.pth"
        assert cfg.run.max_epoch == 1 and cfg.run.min_lr == 5e-5
    assert len({c.run.output_dir for c in (s1, t5, opt)}) == 3


@pytest.mark.slow  # one tiny stage-1 iteration, a minute or two on 2 loaded cores
def test_tiny_stage1_trains_on_coco_like_and_webdataset_data_together(tmp_path, monkeypatch):
    from lavis_xformer import train

    _shard(tmp_path / "web" / "00000.tar", ["a red circle", "a blue square", "a green triangle"], 3)
    (tmp_path / "run.yaml").write_text(
        "includes: [%s]\n" % (PROJECTS / "tiny" / "stage1.yaml") +
        "datasets:\n  easyvqa_caption:\n    build_info: {max_images: 2}\n"
        "  capfilt_web:\n    build_info:\n      storage: [%s]\n" % (tmp_path / "web" / "00000.tar") +
        "    vis_processor:\n      train: {name: blip2_image_train, image_size: 64}\n"
        "run:\n  batch_size_train: 2\n  iters_per_epoch: 2\n  train_dataset_ratios: [1, 1]\n"
        "  output_dir: %s\n" % (tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    train.main(["--cfg-path", str(tmp_path / "run.yaml")])
    log = (tmp_path / "out" / "latest" / "log.txt").read_text()
    assert '"train_loss"' in log and (tmp_path / "out" / "latest" / "checkpoint_0.pth").is_file()
    # without iters_per_epoch the stream has no epoch length: one clear message
    text = (tmp_path / "run.yaml").read_text().replace("  iters_per_epoch: 2\n", "")
    (tmp_path / "run2.yaml").write_text(text.replace(str(tmp_path / "out"), str(tmp_path / "out2")))
    with pytest.raises(ValueError, match="set run.iters_per_epoch"):
        train.main(["--cfg-path", str(tmp_path / "run2.yaml")])
