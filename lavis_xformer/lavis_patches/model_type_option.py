"""``--options model.model_type=X`` selects X's default model yaml.

Defect (LAVIS 1.0.2): ``lavis.common.config.Config.build_model_config`` looks the chosen model
type up as ``kwargs.get("model.model_type")``, but ``Config`` hands it the --options as a
nested config (``{"model": {"model_type": ...}}``), so ``--options model.model_type=X`` never
selects X's default model yaml: the run keeps the defaults of the run file's model type with
only the name changed (e.g. OPT-2.7B sizes under the name pretrain_opt6.7b).

Patch: ``apply_model_type_option`` rebuilds the model and preprocess sections as LAVIS means
to (X's defaults, then the run file's model section, then the options); ``training/launch.py``
calls it on the built config.

Removal: once ``build_model_config`` reads ``OmegaConf.select(kwargs, "model.model_type")``,
delete the call in launch.py and this module.
"""
from omegaconf import OmegaConf


def apply_model_type_option(cfg, options):
    """Fix up a built ``lavis.common.config.Config`` when ``options`` (a DictConfig of the
    --options) choose another model type than the run file."""
    from lavis.common.registry import registry

    from lavis_xformer.training.run_files import load_run_file

    model_type = OmegaConf.select(options, "model.model_type")
    file_model = load_run_file(cfg.args.cfg_path).get("model", None) or {}
    if not model_type or model_type == file_model.get("model_type", None):
        return cfg
    model_cls = registry.get_model_class(cfg.config.model.arch)
    defaults = OmegaConf.load(model_cls.default_config_path(model_type))
    user = {key: options[key] for key in ("model", "preprocess") if key in options}
    rebuilt = OmegaConf.merge(defaults, {"model": file_model}, user)
    cfg.config.model = rebuilt.model
    if "preprocess" in rebuilt:
        cfg.config.preprocess = rebuilt.preprocess
    return cfg
