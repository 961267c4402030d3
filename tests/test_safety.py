"""Safety: no file the plugin is pointed at can run code; configuration mistakes, bad
annotation data and weights that do not fit stop the run before anything is built or
trained, each with one line naming what is wrong."""
import argparse
import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from _testlib import (REPO, TINY_STAGE1, launch_args, lavis_command, model_config,
                      run_command, tiny_stage1_options)
from omegaconf import OmegaConf

import lavis_xformer  # noqa: F401  (registers builders, models, tasks, runner)
from lavis_xformer.datasets import checks, easyvqa
from lavis_xformer.config_keys import ConfigError
from lavis_xformer.models import encoders, sources
from lavis_xformer.models.config import ModelConfig
from lavis_xformer.training import checkpoints, launch



def _model_cfg(arch="xformer", model_type="tiny", **overrides):
    cfg = model_config(arch, model_type, **overrides)
    cfg.model_type = model_type
    return cfg


# --- crafted checkpoints ------------------------------------------------------------------

class _Payload:
    """Unpickling this calls builtins.open(marker, "w"): the marker file appears exactly when
    a loader runs code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """(path of a crafted checkpoint with real-looking weights, marker path). The payload is
    proven live: a full unpickler (weights_only=False) on a copy creates its marker."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil" / "checkpoint_0.pth"
    path.parent.mkdir()
    torch.save({"model": {"query_tokens": torch.zeros(1, 16, 384)}, "epoch": 0,
                "payload": _Payload(marker)}, path)
    probe = tmp_path / "probe"
    torch.save({"payload": _Payload(probe)}, tmp_path / "probe.pth")
    torch.load(tmp_path / "probe.pth", weights_only=False)
    assert probe.exists()  # the payload runs under a full unpickler
    return path, marker


def _refused(message, path, key):
    assert "refused to load %s" % path in message, message
    assert key in message and "convert_checkpoint" in message and "--i-trust-this-file" in message
    assert "weights_only" not in message and "False" not in message  # never the unsafe advice


def test_model_pretrained_file_is_refused(crafted):
    path, marker = crafted
    from lavis_xformer.models.xformer import XFormer

    with pytest.raises(sources.UnsafeCheckpointError) as info:
        XFormer.from_config(_model_cfg(pretrained=str(path)))
    _refused(str(info.value), path, "model.pretrained")
    # names what the file wanted to build: open (io.open; _io.open on Python >= 3.12)
    assert re.search(r"e\.g\. _?io\.open", str(info.value)), str(info.value)
    assert not marker.exists()


def test_model_pretrained_url_is_refused(crafted, tmp_path, monkeypatch):
    """A URL is downloaded (here from a local server) and then read as safely as a file; the
    refused download is not kept in the plugin's cache."""
    path, marker = crafted
    monkeypatch.setenv("LAVIS_XFORMER_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = "http://127.0.0.1:%d/%s" % (server.server_address[1], path.name)
        with pytest.raises(sources.UnsafeCheckpointError) as info:
            sources.load_checkpoint_file("pretrained", url)
        from lavis_xformer.training.runner import RunnerXFormer

        with pytest.raises(sources.UnsafeCheckpointError) as resume:  # run.resume_ckpt_path=URL
            RunnerXFormer._read_resume_checkpoint(url)
    finally:
        server.shutdown()
    assert str(resume.value).startswith("run.resume_ckpt_path: refused to load %s" % url)
    message = str(info.value)
    assert message.startswith("model.pretrained: refused to load %s: it holds Python objects" % url)
    assert ("download it to checkpoint_0.pth yourself and convert it once: python -m "
            "lavis_xformer.tools.convert_checkpoint checkpoint_0.pth checkpoint_0.safe.pth "
            "--i-trust-this-file, then point model.pretrained at the converted file") in message
    assert os.listdir(tmp_path / "cache" / "downloads") == []  # the refused download is gone
    assert not marker.exists()


def test_inherited_loaders_use_the_safe_reader(crafted, tmp_path, monkeypatch):
    """LAVIS's public loaders on the plugin's models (load_model(checkpoint=) and
    load_checkpoint_from_config call load_checkpoint) read as model.pretrained does: refused
    with the plugin's message, also when the unsafe torch default is forced after the build."""
    path, marker = crafted
    from lavis_xformer.models.xformer import XFormer

    model = XFormer.from_config(_model_cfg())
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"model": {"resnet.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    torch.save({"model": {k: torch.ones_like(v) for k, v in trained.items()}}, tmp_path / "good.pth")
    for method in ("load_checkpoint", "load_from_pretrained"):
        load = getattr(model, method)
        with pytest.raises(sources.UnsafeCheckpointError) as info:
            load(str(path))
        _refused(str(info.value), path, "XFormer.%s()" % method)
        assert "then pass the converted file instead" in str(info.value)
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        with pytest.raises(sources.WeightSourceError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"):
            load(str(path))
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        # a safe file goes through model.pretrained's fit checks
        with pytest.raises(sources.WeightSourceError, match=r"^XFormer\.%s\(\)='.*other.pth': "
                           r"none of its 1 tensors fits model XFormer" % method):
            load(str(tmp_path / "other.pth"))
        with pytest.raises(sources.WeightSourceError, match="no such file or directory; pass the path"):
            load(str(tmp_path / "missing.pth"))
    with pytest.raises(sources.UnsafeCheckpointError):
        model.load_checkpoint_from_config(OmegaConf.create({"finetuned": str(path)}))
    assert not marker.exists()
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters() if n in trained)
    # a file that fits loads, returning the missing and unexpected keys as LAVIS's does
    result = model.load_checkpoint(str(tmp_path / "good.pth"))
    assert result.unexpected_keys == [] and torch.equal(model.query_tokens,
                                                        torch.ones_like(trained["query_tokens"]))
    from lavis.common.registry import registry

    from lavis_xformer.models.base import PluginModel

    plugin = [c for c in registry.mapping["model_name_mapping"].values()
              if c.__module__.startswith("lavis_xformer.")]
    assert len(plugin) >= 4 and all(  # every model of the plugin, the BLIP-2 twin included
        c.load_checkpoint is PluginModel.load_checkpoint and
        c.load_from_pretrained is PluginModel.load_from_pretrained for c in plugin), plugin
    # LAVIS's init_vision_encoder (a fixed EVA URL, a bare torch.load) is refused, not run
    with pytest.raises(sources.WeightSourceError, match=r"init_vision_encoder\(\): not used by the plugin.*model\.clip_vit_weights"):
        XFormer.init_vision_encoder("eva_clip_g", 224, 0, False, "fp32")


def test_clip_vit_weights_are_refused(crafted):
    path, marker = crafted
    with pytest.raises(sources.UnsafeCheckpointError) as info:
        encoders.build_eva_vit(ModelConfig.from_cfg(_model_cfg(clip_vit_weights=str(path))))
    _refused(str(info.value), path, "model.clip_vit_weights")
    assert not marker.exists()


def test_from_pretrained_folder_with_pickled_weights_is_refused(crafted, tmp_path):
    """transformers' from_pretrained (model.mae_weights, qformer_weights, llm weights) reads
    pytorch_model.bin with torch's safe default; the refusal is reported like the others."""
    path, marker = crafted
    from transformers import ViTMAEForPreTraining

    folder = tmp_path / "mae"
    cfg = ModelConfig.from_cfg(_model_cfg())
    ViTMAEForPreTraining(encoders.mae_config(cfg)).config.save_pretrained(folder)
    shutil.copy(path, folder / "pytorch_model.bin")
    with pytest.raises(sources.UnsafeCheckpointError) as info:
        encoders.build_mae(ModelConfig.from_cfg(_model_cfg(mae_weights=str(folder))))
    _refused(str(info.value), folder, "model.mae_weights")
    assert str(folder / "pytorch_model.bin") in str(info.value)
    assert not marker.exists()


def test_folder_refusal_names_a_command_that_converts_the_folder(tmp_path, capsys):
    """For a from_pretrained folder whose pytorch_model.bin is refused, the advice is
    convert_checkpoint on the folder; that command writes a folder that then loads."""
    import shlex

    from transformers import ViTMAEForPreTraining

    from lavis_xformer.tools import convert_checkpoint

    cfg = _model_cfg()
    mae = ViTMAEForPreTraining(encoders.mae_config(ModelConfig.from_cfg(cfg)))
    folder = tmp_path / "mae"
    mae.config.save_pretrained(folder)
    # numpy arrays: harmless, but torch's weights-only unpickler refuses them
    torch.save({k: v.numpy() for k, v in mae.state_dict().items()}, folder / "pytorch_model.bin")
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(sources.UnsafeCheckpointError) as info:
        encoders.build_mae(ModelConfig.from_cfg(_model_cfg(mae_weights=str(folder))))
    message = str(info.value)
    command = re.search(r"convert it once: (.*?), then point model\.mae_weights at the converted "
                        r"folder$", message).group(1)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", convert_checkpoint.__name__]
    assert argv[3:] == [str(folder), str(folder) + ".safe", "--i-trust-this-file"], message
    convert_checkpoint.main(argv[3:])
    converted = encoders.build_mae(ModelConfig.from_cfg(_model_cfg(mae_weights=argv[4])))
    assert all(torch.equal(v, mae.state_dict()[k]) for k, v in converted.state_dict().items())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == original  # source untouched
    # the converted folder is never replaced by a second run
    stamp = os.stat(os.path.join(argv[4], "pytorch_model.bin")).st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main(argv[3:])
    assert exit_info.value.code == 2 and "%s exists" % argv[4] in capsys.readouterr().err
    assert os.stat(os.path.join(argv[4], "pytorch_model.bin")).st_mtime_ns == stamp
    convert_checkpoint.main(argv[3:] + ["--overwrite"])  # asked for: replaced once complete
    assert os.stat(os.path.join(argv[4], "pytorch_model.bin")).st_mtime_ns != stamp
    assert sorted(os.listdir(tmp_path)) == ["mae", "mae.safe"]  # no temporary folder left


def test_hub_name_refusal_names_the_download_and_the_folder_conversion(crafted):
    """A hub name (e.g. model.llm_weights) whose pickled weights transformers' loader refuses:
    the advice fetches it as a folder and converts that folder."""
    path, marker = crafted
    with pytest.raises(sources.UnsafeCheckpointError) as info:
        with sources.loading("llm_weights", "org/opt-tiny"):  # as from_pretrained meets the file
            torch.load(path, map_location="cpu", weights_only=True)
    assert str(info.value).endswith(
        "If you trust its origin, download it (huggingface-cli download org/opt-tiny --local-dir "
        "opt-tiny) and convert it once: python -m lavis_xformer.tools.convert_checkpoint opt-tiny "
        "opt-tiny.safe --i-trust-this-file, then point model.llm_weights at the converted folder")
    assert not marker.exists()


@pytest.mark.slow
def test_resume_file_is_refused_in_a_real_run(crafted, tmp_path):
    """The training command itself: one line, exit status 2, no traceback, no payload."""
    path, marker = crafted
    result = run_command(lavis_command(TINY_STAGE1, *tiny_stage1_options(tmp_path / "out", images=4,
                                                                  max_epoch=None),
                                       "run.resume_ckpt_path=%s" % path), tmp_path, expect=2)
    assert "Traceback" not in result.stderr
    error = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
    assert len(error) == 1, result.stderr[-3000:]
    _refused(error[0], path, "run.resume_ckpt_path")
    assert not marker.exists()


def test_analysis_tools_refuse(crafted, tmp_path, capsys):
    path, marker = crafted
    from lavis_xformer.tools import compare, query_diversity, recon_grid

    # a run folder / checkpoint named as the model, and a checkpoint given with --checkpoint
    for argv in ([str(path.parent), "--out", str(tmp_path / "g.png")],
                 ["xformer:tiny", "--checkpoint", str(path), "--out", str(tmp_path / "g.png")]):
        with pytest.raises(SystemExit) as info:
            recon_grid.main(argv)
        assert info.value.code == 2
        _refused(capsys.readouterr().err, path, "")
    with pytest.raises(SystemExit):
        query_diversity.main([str(path), "--out", str(tmp_path / "q")])
    _refused(capsys.readouterr().err, path, "model %s" % path)
    # compare reads metrics JSON and logs only: a checkpoint beside them is never opened
    with pytest.raises(SystemExit):
        compare.main([str(path.parent), "--out", str(tmp_path / "c")])
    assert not marker.exists()


def test_forced_unsafe_torch_default_is_refused(monkeypatch, tmp_path):
    torch.save({"a": torch.ones(1)}, tmp_path / "ok.pth")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(sources.WeightSourceError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"):
        sources.read_checkpoint(str(tmp_path / "ok.pth"), "model.pretrained")


def test_plugin_checkpoints_and_safetensors_load_safely(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(4.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(sources.read_checkpoint(str(tmp_path / "w.safetensors"), "k")["w"],
                       torch.arange(4.0))
    state = {"model": {"w": torch.ones(2)}, "rng": checkpoints.rng_state(), "epoch": 1,
             "config": {"run": {"seed": 42}}}
    checkpoints.atomic_save(state, tmp_path / "c.pth")
    assert sources.read_checkpoint(str(tmp_path / "c.pth"), "k")["epoch"] == 1


# --- converting a trusted old checkpoint ------------------------------------------------------

def test_convert_checkpoint_makes_a_trusted_file_safe(tmp_path, capsys):
    from lavis_xformer.tools import convert_checkpoint

    old = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(3)}, "config": OmegaConf.create({"run": {"seed": 1}}),
                "args": argparse.Namespace(lr=0.1), "mean": np.float32(0.5),
                "table": np.arange(3)}, old)
    with pytest.raises(sources.UnsafeCheckpointError):
        sources.read_checkpoint(str(old), "model.pretrained")
    new = tmp_path / "old.safe.pth"
    with pytest.raises(SystemExit) as info:  # nothing is unpickled without the explicit flag
        convert_checkpoint.main([str(old), str(new)])
    assert info.value.code == 2 and not new.exists()
    assert "--i-trust-this-file" in capsys.readouterr().err
    convert_checkpoint.main([str(old), str(new), "--i-trust-this-file"])
    safe = sources.read_checkpoint(str(new), "model.pretrained")
    assert torch.equal(safe["model"]["w"], torch.ones(3))
    assert safe["config"] == {"run": {"seed": 1}} and safe["args"] == {"lr": 0.1}
    assert safe["mean"] == 0.5 and torch.equal(safe["table"], torch.arange(3))
    convert_checkpoint.main([str(old), str(tmp_path / "w.safetensors"), "--i-trust-this-file"])
    assert set(sources.read_checkpoint(str(tmp_path / "w.safetensors"), "k")) == {"w"}


# --- weights that do not fit ------------------------------------------------------------------

def test_pretrained_matching_no_tensor_is_an_error(tmp_path):
    from lavis_xformer.models.xformer import XFormer

    torch.save({"model": {"resnet.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(sources.WeightSourceError, match="none of its 1 tensors fits model XFormer"):
        XFormer.from_config(_model_cfg(pretrained=str(tmp_path / "other.pth")))


@pytest.mark.slow
def test_stage1_checkpoint_without_fusion_block_is_an_error_unless_allowed(tmp_path):
    from lavis_xformer.models.xformer import XFormer
    from lavis_xformer.models.xformer_llm import XFormerOPT

    stage1 = XFormer.from_config(_model_cfg())
    trainable = {n for n, p in stage1.named_parameters() if p.requires_grad}
    state = {k: v for k, v in stage1.state_dict().items() if k in trainable}
    torch.save({"model": state}, tmp_path / "full.pth")
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("fusion.")}},
               tmp_path / "no_fusion.pth")
    # a whole stage-1 checkpoint: stage 2's projection is new, nothing else lacks
    model = XFormerOPT.from_config(_model_cfg("xformer_opt", pretrained=str(tmp_path / "full.pth")))
    assert model.pretrained_lacks and all(k.startswith("llm_proj.") for k in model.pretrained_lacks)
    # ... which stage-2 training starts fresh, but an evaluation must not score untrained
    from types import SimpleNamespace

    run = SimpleNamespace(run_cfg=OmegaConf.create({"evaluate": False}),
                          model_cfg=OmegaConf.create({"pretrained": "full.pth"}))
    launch.check_evaluated_weights(run, model)
    run.run_cfg.evaluate = True
    with pytest.raises(sources.WeightSourceError, match=r"lacks 2 trained tensors this "
                       r"evaluation would use untrained: llm_proj.weight \(1\), llm_proj.bias \(1\)"):
        launch.check_evaluated_weights(run, model)
    with pytest.raises(sources.WeightSourceError) as info:
        XFormerOPT.from_config(_model_cfg("xformer_opt", pretrained=str(tmp_path / "no_fusion.pth")))
    message = str(info.value)
    assert "lacks" in message and "fusion." in message and "Qformer" not in message
    assert "model.allow_partial_pretrained: true" in message
    XFormerOPT.from_config(_model_cfg("xformer_opt", pretrained=str(tmp_path / "no_fusion.pth"),
                                      allow_partial_pretrained=True))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_resume_file_names_the_last_good_checkpoint(tmp_path, damage):
    job = tmp_path / "job"
    job.mkdir()
    good = checkpoints.atomic_save({"model": {"w": torch.ones(1000)}}, job / "checkpoint_0_iter2.pth")
    os.utime(good, (1, 1))  # older than the damaged one
    bad = job / "checkpoint_0_iter4.pth"
    data = Path(good).read_bytes()
    bad.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    checkpoints.point_link(bad, job / checkpoints.CHECKPOINT_LATEST)
    for value in (bad, job):
        with pytest.raises(ConfigError) as info:
            launch.load_config(launch_args(TINY_STAGE1, "run.resume_ckpt_path=%s" % value))
        message = str(info.value)
        assert "\n" not in message
        assert str(bad) in message and ("empty (0 bytes)" if damage == "empty" else "truncated") in message
        assert "last good checkpoint there is %s" % good in message


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("option, message", [
    ("run.chekpoint_every_iters=100", "--options: unknown key run.chekpoint_every_iters; did you mean "
                                      "run.checkpoint_every_iters?"),
    ("model.mask_ration=0.3", "--options: unknown key model.mask_ration; did you mean model.mask_ratio?"),
    ("model.loss_weights.itg=0", "unknown key model.loss_weights.itg; did you mean model.loss_weights.itm?"),
    ("model.qformer.hiden_size=8", "did you mean model.qformer.hidden_size?"),
    ("datasets.easyvqa_caption.build_info.max_image=8",
     "did you mean datasets.easyvqa_caption.build_info.max_images?"),
    ("run.init_lr=abc", "--options: run.init_lr='abc' must be a number"),
    ("run.max_epoch=1.5", "run.max_epoch=1.5 must be an integer"),
    ("run.amp=sometimes", "run.amp='sometimes' must be true or false"),
    ("model.fusion_self_attn=7", "model.fusion_self_attn=7 must be true or false"),
])
def test_unknown_keys_and_wrong_types_in_options(option, message):
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, option))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_the_yaml_names_the_file(tmp_path):
    text = TINY_STAGE1.read_text().replace("  max_epoch: 1\n", "  max_epoch: 1\n  chekpoint_every_iters: 100\n")
    text = text.replace("  mask_ratio: 0.5\n", "  mask_ration: 0.5\n")
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(cfg))
    lines = str(info.value).splitlines()
    assert "%s: unknown key model.mask_ration; did you mean model.mask_ratio?" % cfg in lines[0] + lines[1] \
        or any(l.startswith("%s: unknown key model.mask_ration" % cfg) for l in lines)
    assert any(l.startswith("%s: unknown key run.chekpoint_every_iters; did you mean "
                            "run.checkpoint_every_iters?" % cfg) for l in lines)


def test_user_keys_pass_and_known_keys_are_accepted(tmp_path):
    cfg = launch.load_config(launch_args(TINY_STAGE1, "run.user.my_flag=3", "model.qformer.hidden_dropout_prob=0.2",
                                   "model.drop_path_rate=0.1", "run.checkpoint_every_iters=5"))
    assert cfg.run_cfg.user.my_flag == 3
    from lavis_xformer.config_keys import check_config
    from lavis_xformer.training.run_files import load_run_file

    for path in sorted((REPO / "projects").rglob("*.yaml")):  # every shipped project file
        check_config(load_run_file(str(path)), str(path))  # with its `includes:` resolved


@pytest.mark.parametrize("options, message", [
    (["key"], "--options key: expected key=value"),
    (["run.max_epoch=1", "key"], "--options key: expected key=value"),
    (["=3"], "--options =3: expected key=value"),
])
def test_options_without_equals_are_one_line(options, message):
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, *options))
    assert message in str(info.value) and "\n" not in str(info.value)


# --- bad annotation data ----------------------------------------------------------------------

@pytest.fixture
def easyvqa_root(tmp_path):
    source = os.path.join(easyvqa.package_data_root(), "train")
    split = tmp_path / "data" / "train"
    (split / "images").mkdir(parents=True)
    questions = [q for q in easyvqa.read_questions(source) if int(q[2]) < 4]
    (split / "questions.json").write_text(json.dumps(questions))
    for i in range(4):
        shutil.copy(easyvqa.image_path(source, i), split / "images" / ("%d.png" % i))
    return tmp_path / "data", questions


@pytest.mark.parametrize("content, message", [
    ("{}", "holds a JSON object (a mapping); LAVIS reads a JSON list"),
    ("", "is empty (0 bytes)"),
    ("[]", "holds an empty list"),
    ("truncated", "is not valid JSON (truncated or damaged?"),
    ("null answer", "entry 2: field 'answer' is null, must be a string"),
    ("number question", "entry 1: field 'question' is int 5, must be a string"),
])
def test_bad_easyvqa_annotations_stop_before_training(easyvqa_root, content, message):
    root, questions = easyvqa_root
    path = root / "train" / "questions.json"
    if content == "truncated":
        text = json.dumps(questions)
        path.write_text(text[: len(text) // 2])
    elif content == "null answer":
        questions[2][1] = None
        path.write_text(json.dumps(questions))
    elif content == "number question":
        questions[1][0] = 5
        path.write_text(json.dumps(questions))
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        launch.load_config(launch_args(TINY_STAGE1, "datasets.easyvqa_caption.build_info.root=%s" % root,
                                 "datasets.easyvqa_caption.build_info.splits=[train]"))
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)
    assert "split 'train'" in str(info.value)


@pytest.mark.parametrize("entry, message", [
    ({"image": "a.jpg", "caption": None, "image_id": 1}, "entry 1: field 'caption' is null, must be a string"),
    ({"image": "a.jpg", "caption": 7, "image_id": 1}, "entry 1: field 'caption' is int 7, must be a string"),
    ({"image": "a.jpg", "image_id": 1}, "entry 1 has no field 'caption'"),
    ({"caption": "a dog", "image_id": 1}, "entry 1 has no field 'image'"),
    ("a dog", "entry 1 is a str, not a mapping"),
])
def test_bad_lavis_caption_annotations_name_file_entry_and_field(tmp_path, entry, message):
    """LAVIS's COCO caption builder (CaptionDataset entries: image, caption, image_id)."""
    images = tmp_path / "images"
    images.mkdir()
    files = {}
    for split in ("train", "val", "test"):
        entries = [{"image": "a.jpg", "caption": "a cat", "image_id": 0}]
        if split == "train":
            entries.append(entry)
        else:
            entries = [{"image": "a.jpg", "caption": ["a cat"], "image_id": 0}]
        files[split] = tmp_path / ("%s.json" % split)
        files[split].write_text(json.dumps(entries))
    datasets = OmegaConf.create({"coco_caption": {"data_type": "images", "build_info": {
        "annotations": {s: {"url": "https://example.invalid/%s.json" % s, "storage": str(p)}
                        for s, p in files.items()},
        "images": {"storage": str(images)}}}})
    with pytest.raises(ConfigError) as info:
        checks.check_datasets(datasets)
    assert "annotation file %s (dataset 'coco_caption', split 'train'): %s" % (
        files["train"], message) in str(info.value)
