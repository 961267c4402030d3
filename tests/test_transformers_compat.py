"""What keeps the plugin on transformers 4.26 and ready for newer releases (issue 14).

- transformers 4.26's import-time check on ``tokenizers<0.14`` is relaxed by the start-up hook
  and by ``import lavis_xformer``, with a one-line notice and an off switch
  (``LAVIS_XFORMER_KEEP_TOKENIZERS_PIN``). A newer tokenizers is simulated by a dist-info
  directory that reports version 0.99.0, which is what transformers' check reads.
- ``add_token_rows`` gives exactly what 4.26's ``resize_token_embeddings`` gave, also on the
  meta device, without calling it.
- The fused ViT-MAE attention runs without ``transpose_for_scores``.
"""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
NOTICE = "lavis_xformer: transformers "


def run(code, tmp_path, fake_tokenizers=None, **env):
    environ = dict(os.environ)
    environ.pop("LAVIS_XFORMER_NO_HOOK", None)
    environ.pop("LAVIS_XFORMER_KEEP_TOKENIZERS_PIN", None)
    paths = [str(REPO)] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
    if fake_tokenizers:
        info = tmp_path / ("tokenizers-%s.dist-info" % fake_tokenizers)
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: tokenizers\nVersion: %s\n" % fake_tokenizers)
        paths.insert(0, str(tmp_path))
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ, text=True,
                          capture_output=True, timeout=300)


def notices(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith(NOTICE)]


def test_hook_relaxes_the_pin_with_one_notice(tmp_path):
    proc = run("import transformers; print(transformers.__version__)", tmp_path, "0.99.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = notices(proc)
    assert "tokenizers>=0.11.1,!=0.11.3,<0.14" in line and "tokenizers 0.99.0" in line
    assert "LAVIS_XFORMER_KEEP_TOKENIZERS_PIN=1" in line


def test_direct_call_under_the_hook_decides_once(tmp_path):
    """relax_tokenizers_pin() looks transformers up through the hook's own finder: no loop."""
    code = ("import sys; hook = sys.modules['lavis_xformer._hook']; "
            "first = hook.relax_tokenizers_pin(); import transformers; "
            "print(first == hook.relax_tokenizers_pin() == 'tokenizers>=0.11.1,!=0.11.3,<0.14')")
    proc = run(code, tmp_path, "0.99.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True"] and len(notices(proc)) == 1


def test_switch_keeps_the_pin(tmp_path):
    proc = run("import transformers", tmp_path, "0.99.0", LAVIS_XFORMER_KEEP_TOKENIZERS_PIN="1")
    assert proc.returncode != 0
    assert "tokenizers>=0.11.1,!=0.11.3,<0.14 is required" in proc.stderr
    assert not notices(proc)


def test_without_the_hook_only_the_plugin_relaxes_it(tmp_path):
    """Hook off: a bare transformers keeps its pin; importing the plugin relaxes it."""
    bare = run("import transformers", tmp_path, "0.99.0", LAVIS_XFORMER_NO_HOOK="1")
    assert bare.returncode != 0 and not notices(bare)
    (tmp_path / "again").mkdir()
    plugin = run("import lavis_xformer, transformers", tmp_path / "again", "0.99.0",
                 LAVIS_XFORMER_NO_HOOK="1")
    assert plugin.returncode == 0, plugin.stderr[-3000:]
    assert len(notices(plugin)) == 1


def test_notice_only_when_the_installed_tokenizers_needs_it(tmp_path):
    proc = run("import transformers", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    newer = tuple(int(p) for p in importlib.metadata.version("tokenizers").split(".")[:2]) >= (0, 14)
    assert len(notices(proc)) == (1 if newer else 0)


def _qformer(vocab=50, seed=0):
    from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel

    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, pad_token_id=0)
    config.encoder_width, config.add_cross_attention = 16, True
    config.cross_attention_freq, config.query_length = 2, 4
    torch.manual_seed(seed)
    model = BertLMHeadModel(config)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # a trained head has a non-zero bias
    return model


def test_add_token_rows_equals_transformers_4_26_resize():
    import transformers

    from lavis_xformer.models.encoders import add_token_rows

    if not transformers.__version__.startswith("4.26."):
        pytest.skip("the reference is transformers 4.26's resize_token_embeddings")
    ours, theirs = _qformer(), _qformer()
    torch.manual_seed(1)
    add_token_rows(ours, 1)
    torch.manual_seed(1)
    theirs.resize_token_embeddings(51)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert ours.config.vocab_size == theirs.config.vocab_size == 51
    head = ours.cls.predictions
    assert head.decoder.bias is head.bias and head.bias.shape == (51,)
    assert head.decoder.weight is ours.get_input_embeddings().weight
    assert torch.equal(head.bias[:50], _qformer().cls.predictions.bias) and head.bias[50] == 0
    ids = torch.tensor([[1, 50, 3]])
    assert ours(input_ids=ids).logits.shape == (1, 3, 51)


def test_add_token_rows_on_the_meta_device():
    from lavis_xformer.models.encoders import add_token_rows

    with torch.device("meta"):
        model = _qformer()
        add_token_rows(model, 1)
    assert model.get_input_embeddings().weight.shape == (51, 32)
    assert model.get_input_embeddings().weight.is_meta
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


def test_fused_mae_attention_needs_no_transpose_for_scores(monkeypatch):
    from transformers import ViTMAEConfig
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAESelfAttention

    from lavis_xformer.models.fused_attention import FusedViTMAESelfAttention

    torch.manual_seed(0)
    attention = ViTMAESelfAttention(ViTMAEConfig(hidden_size=32, num_attention_heads=4)).eval()
    x = torch.randn(2, 7, 32)
    expected = attention(x)[0]

    def removed(*args, **kwargs):
        raise AssertionError("transpose_for_scores was called")

    monkeypatch.setattr(ViTMAESelfAttention, "transpose_for_scores", removed, raising=False)
    attention.__class__ = FusedViTMAESelfAttention
    torch.testing.assert_close(attention(x)[0], expected, rtol=1e-5, atol=1e-6)
