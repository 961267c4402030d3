"""One schema for the model keys (issue 22, item 1): ``ModelConfig`` (models/config.py) holds
every key with its default, check, meaning and readers; the known-key list of config_keys.py
and the allowed fusions are derived from it; the model-type yamls state only what differs
from its defaults, and the models they build are the ones built before the yamls were cut."""
import ast
import dataclasses
import glob
import os

import pytest
from omegaconf import OmegaConf

from lavis.common.registry import registry

from lavis_xformer import PACKAGE_DIR, config_keys
from lavis_xformer.config_keys import ConfigError, check_config
from lavis_xformer.models.base import PluginModel
from lavis_xformer.models.config import PLUGIN_MODELS, ModelConfig, model_schema
from lavis_xformer.nn.fusions import FUSIONS

FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
LAVIS_OWN = {"arch", "model_type", "load_pretrained", "load_finetuned", "finetuned"}

# Measured on the code before the yamls were cut to their differences (same seeds): trainable
# and all parameters, and resolved keys of each tiny type.
TINY = {
    ("xformer", "tiny", None): (36161534, 38296894, dict(
        image_size=64, fusion="xformer", mask_ratio=0.5, fusion_num_heads=6, embed_dim=128,
        num_query_token=16, loss_weights={"itc": 1.0, "itm": 1.0, "lm": 1.0, "rec": 1.0})),
    ("xformer", "tiny", "blip2"): (31278014, 32217086, dict(fusion="blip2")),
    ("xformer", "tiny", "concat"): (31315070, 33193982, dict(fusion="concat")),
    ("xformer", "tiny", "early_ca"): (38859518, 40738430, dict(fusion="early_ca", early_ca_mlp_ratio=5.0)),
    ("xformer_opt", "tiny", None): (16821568, 22050880, dict(
        fusion="xformer", mask_ratio=0.0, llm_precision="fp32", prompt="", freeze_fusion=False,
        loss_weights={"lm": 1.0, "rec": 0.0})),
    ("xformer_t5", "tiny", None): (16821568, 25332928, dict(
        fusion="xformer", mask_ratio=0.0, llm_precision="fp32", qformer_text_input=False)),
    ("blip2_opt_twin", "tiny", None): (12012736, 16302208, dict(
        image_size=64, num_query_token=16, llm_precision="fp32", max_txt_len=16)),
}


def _default(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@pytest.mark.parametrize("arch, model_type, fusion", sorted(TINY, key=str))
def test_tiny_types_build_as_before(arch, model_type, fusion):
    trainable, total, resolved = TINY[arch, model_type, fusion]
    cls = registry.get_model_class(arch)
    cfg = OmegaConf.load(cls.default_config_path(model_type)).model
    if fusion:
        cfg.fusion = fusion
    model = cls.from_config(cfg)
    c = model.model_config
    assert {k: getattr(c, k) for k in resolved} == resolved
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in model.parameters()) == total
    if arch != "blip2_opt_twin":  # the twin has no fusion
        assert type(model.fusion) is FUSIONS[c.fusion]


def test_model_type_yamls_state_only_what_differs_from_the_defaults():
    for path in glob.glob(os.path.join(PACKAGE_DIR, "configs", "models", "*.yaml")):
        model = OmegaConf.to_container(OmegaConf.load(path).model)
        for key in set(model) - LAVIS_OWN:
            assert key in FIELDS, (path, key)
            assert model[key] != _default(FIELDS[key]), "%s: %s states the default" % (path, key)
            assert model["arch"] in FIELDS[key].metadata["read_by"], "%s: %s is not read" % (path, key)


def test_every_key_has_a_meaning_a_check_and_readers():
    for f in FIELDS.values():
        assert f.metadata["meaning"], f.name
        assert "allowed" in f.metadata and set(f.metadata["read_by"]) <= set(PLUGIN_MODELS), f.name
        ModelConfig(**{f.name: _default(f)})  # a default is within its own check
    plugin = {name for name, cls in registry.mapping["model_name_mapping"].items()
              if isinstance(cls, type) and issubclass(cls, PluginModel)}
    assert plugin == set(PLUGIN_MODELS)


def test_known_model_keys_are_derived_from_the_schema():
    for arch in PLUGIN_MODELS:
        known = config_keys.model_keys(arch)
        top = {k for k in known if "." not in k}
        read = {name for name, f in FIELDS.items() if arch in f.metadata["read_by"]}
        assert top == read | LAVIS_OWN | {"pretrained"}, arch
    assert "loss_weights.itc" in config_keys.model_keys("xformer")
    assert "loss_weights.itc" not in config_keys.model_keys("xformer_opt")  # stage 2: lm, rec
    assert model_schema("xformer")["fusion"] == ("str", tuple(FUSIONS), FIELDS["fusion"].metadata["meaning"])
    assert model_schema("xformer")["image_size"][0] == "int|null"  # from the annotation
    assert model_schema("blip2_opt") is None  # LAVIS's own: its yamls' keys


@pytest.mark.parametrize("key, value, message", [
    ("llm_weights", "x", "unknown key model.llm_weights"),  # stage 1 reads no LLM key
    ("image_size", 64.5, "model.image_size=64.5 must be an integer or null"),
    ("vit.depth", 0, "model.vit.depth=0 is out of range; allowed: >= 1"),
    ("qformer.hidden_size", "wide", "model.qformer.hidden_size='wide' must be a number"),
    ("fusion", "sum", "allowed: one of 'xformer', 'blip2', 'concat', 'early_ca'"),
])
def test_the_run_file_check_reads_the_schema(key, value, message):
    config = OmegaConf.create({"model": {"arch": "xformer", "model_type": "tiny"}})
    OmegaConf.update(config, "model." + key, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(config)


def test_fusions_come_from_one_table():
    assert ModelConfig().fusion == "xformer" and ModelConfig().uses_mae
    assert not ModelConfig(fusion="blip2").uses_mae
    with pytest.raises(ConfigError, match="model.vit.patch_size=0 is out of range"):
        ModelConfig(vit={"patch_size": 0})


def test_the_schema_imports_no_run_file_check():
    """config_keys.py imports models/config.py; both take the check words from schema.py."""
    for name in ("models/config.py", "schema.py", "nn/fusions.py"):
        with open(os.path.join(PACKAGE_DIR, name)) as f:
            tree = ast.parse(f.read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "lavis_xformer.config_keys" not in imported, name
