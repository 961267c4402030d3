"""The model factory (lavis_xformer/factory.py), the one checkpoint rule
(training/checkpoints.find_checkpoint) and the variant a run records in its metrics JSON."""
import json
import os

import pytest
import torch

from lavis_xformer import factory
from lavis_xformer.tasks.evaluation import model_info
from lavis_xformer.tools.results_io import load_run
from lavis_xformer.training import checkpoints


def test_model_config_reads_the_type_yaml_and_applies_overrides_last():
    cfg = factory.model_config("xformer", "tiny", {"fusion": "blip2", "loss_weights.rec": 0,
                                                   "vit": {"depth": 1}})
    assert (cfg.arch, cfg.model_type, cfg.fusion) == ("xformer", "tiny", "blip2")
    assert cfg.loss_weights.rec == 0 and cfg.loss_weights.itc == 1  # a dotted key sets one entry
    assert cfg.vit.depth == 1 and cfg.vit.embed_dim == 192  # a mapping merges into its section


def test_unknown_names_are_one_line_errors():
    with pytest.raises(factory.ModelTypeError, match="no model 'nope' is registered"):
        factory.model_config("nope", "tiny")
    with pytest.raises(factory.ModelTypeError, match="Unknown model type 'huge'"):
        factory.model_config("xformer", "huge")


def test_create_model_loads_a_run_through_its_latest_link(tmp_path):
    torch.manual_seed(0)
    model = factory.create_model("xformer", "tiny")
    with torch.no_grad():
        model.query_tokens.add_(1.5)
    job = tmp_path / "run" / "20260101000000_1_abcdef01"
    job.mkdir(parents=True)
    torch.save({"model": {"query_tokens": model.query_tokens.detach().clone()}}, job / "checkpoint_0.pth")
    os.symlink(job.name, tmp_path / "run" / checkpoints.LATEST)
    loaded = factory.create_model("xformer", "tiny", {"allow_partial_pretrained": True},
                                  checkpoint=tmp_path / "run")
    assert torch.equal(loaded.query_tokens, model.query_tokens)
    assert factory.create_model("xformer", "tiny", device="meta").query_tokens.is_meta


def test_find_checkpoint_is_one_rule_for_resume_and_for_the_trained_model(tmp_path):
    job = tmp_path / "20260101000000_1_abcdef01"
    job.mkdir()
    for name in ("checkpoint_0.pth", "checkpoint_2.pth", "checkpoint_10.pth", "checkpoint_3_iter4.pth"):
        (job / name).write_bytes(b"x")
    checkpoints.point_link(job / "checkpoint_3_iter4.pth", job / checkpoints.CHECKPOINT_LATEST)
    os.symlink(job.name, tmp_path / checkpoints.LATEST)
    real = os.path.realpath(job)
    assert checkpoints.find_checkpoint(tmp_path) == os.path.join(real, "checkpoint_10.pth")
    assert checkpoints.find_checkpoint(job, newest=True) == os.path.join(real, "checkpoint_3_iter4.pth")
    assert checkpoints.resolve_resume_path(tmp_path) == os.path.join(real, "checkpoint_3_iter4.pth")
    (job / "checkpoint_best.pth").write_bytes(b"x")
    assert checkpoints.find_checkpoint(job) == str(job / "checkpoint_best.pth")
    assert checkpoints.find_checkpoint(job / "checkpoint_0.pth") == str(job / "checkpoint_0.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        checkpoints.find_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="directory without checkpoint_latest.pth"):
        checkpoints.find_checkpoint(tmp_path / "empty", newest=True)


def test_a_run_records_its_variant_and_the_reader_takes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = model_info({"arch": "xformer", "model_type": "tiny", "fusion": "concat",
                       "loss_weights": {"itc": 1, "itm": 0, "lm": 1, "rec": 0}})
    assert (info["arch"], info["model_type"], info["variant"]) == ("xformer", "tiny", "concat+no_itm")
    assert model_info({"arch": "blip2_opt_twin", "model_type": "tiny"})["variant"] == "blip2"
    result_dir = tmp_path / "job" / "result"
    result_dir.mkdir(parents=True)
    recorded = dict(info, variant="recorded", fusion="xformer")  # the record wins over decoding
    (result_dir / "test_vqa_metrics.json").write_text(json.dumps(
        {"benchmark": "easyvqa", "split": "test", "accuracy": 1.0, "model": recorded}))
    (result,) = load_run(str(tmp_path / "job"))
    assert (result.variant, result.model) == ("recorded", "xformer:tiny")
