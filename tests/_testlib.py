"""Helpers shared by the test files (pytest puts tests/ on sys.path; not a package, since
LAVIS's wheel already installs a top-level package named ``tests``)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def subprocess_env(threads=None, **extra):
    """The environment for a child Python (``python -m lavis.train``, torchrun, ...): this
    checkout first on PYTHONPATH, so the child runs the code under test; ``threads`` sets
    OMP_NUM_THREADS (1 where several processes share the two cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


def model_config(name="xformer", model_type="tiny", **overrides):
    """The model section of a registered model type's yaml, with dotted-key ``overrides``
    (e.g. ``**{"loss_weights.rec": 0}``)."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(registry.get_model_class(name).default_config_path(model_type)).model
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def build_model(name="xformer", model_type="tiny", seed=0, **overrides):
    """A registered model built from its type's yaml (plus ``overrides``) after seeding
    torch's global generator with ``seed``, so trainable weights are reproducible."""
    import torch
    from lavis.common.registry import registry

    cfg = model_config(name, model_type, **overrides)
    torch.manual_seed(seed)
    return registry.get_model_class(name).from_config(cfg)
