"""Run files that include other run files.

A run file (``--cfg-path``) may start with a top-level ``includes:`` key naming one or more
run files, relative to the including file's folder. They are merged in order with OmegaConf,
then the including file on top: mappings merge key by key, any other value (lists included)
is replaced. So an ablation file holds only what it changes::

    includes: [base_stage1.yaml]
    model:
      fusion_self_attn: False
    run:
      output_dir: output/xformer/ablations/no_sa_stage1

LAVIS 1.0.2's ``Config`` reads ``--cfg-path`` with a plain ``OmegaConf.load`` and knows no such
key; ``IncludingConfig`` is that class fed with the resolved file instead. Everything else
(model and builder defaults under the run file, then ``--options``) is LAVIS's own order.
"""
import os

import yaml
from lavis.common.config import Config
from lavis.common.registry import registry
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavis_xformer.config_keys import ConfigError

INCLUDES_KEY = "includes"


def _load_mapping(path, named_by):
    if not os.path.isfile(path):
        raise ConfigError("%s: no such file: %s" % (named_by, path))
    try:
        config = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError("%s is not valid yaml: %s" % (path, " ".join(str(e).split()))) from None
    if not isinstance(config, DictConfig):
        raise ConfigError("%s must hold a mapping with `model`, `datasets` and `run`" % path)
    return config


def load_run_file(path, named_by="--cfg-path", _chain=()):
    """The run file at ``path`` with its ``includes:`` resolved (recursively), as one DictConfig
    without the ``includes`` key. Raises ConfigError naming the file for a missing include, an
    include cycle, bad yaml or an ``includes`` value that is not a file name or list of them."""
    config = _load_mapping(path, named_by)
    here = os.path.realpath(path)
    if here in _chain:
        cycle = " -> ".join(list(_chain[_chain.index(here):]) + [here])
        raise ConfigError("%s: run files include each other in a cycle: %s" % (path, cycle))
    includes = config.pop(INCLUDES_KEY, None)
    if includes is None:
        return config
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, (list, ListConfig)) or not all(isinstance(i, str) for i in includes):
        raise ConfigError("%s: `%s:` must be a file name or a list of file names (relative to "
                          "this file), got %r" % (path, INCLUDES_KEY, includes))
    merged = OmegaConf.create()
    for name in includes:
        included = os.path.join(os.path.dirname(path), name)
        merged = OmegaConf.merge(merged, load_run_file(
            included, "%s: %s" % (path, INCLUDES_KEY), _chain + (here,)))
    return OmegaConf.merge(merged, config)


class IncludingConfig(Config):
    """``lavis.common.config.Config`` over an already-resolved run file (``load_run_file``).

    The body is LAVIS 1.0.2's ``Config.__init__`` with its one ``OmegaConf.load(cfg_path)``
    replaced by the resolved file; the merge order is unchanged."""

    def __init__(self, args, run_file=None):
        self.config = {}
        self.args = args
        registry.register("configuration", self)
        user_config = self._build_opt_list(self.args.options)
        config = run_file if run_file is not None else load_run_file(self.args.cfg_path)
        runner_config = self.build_runner_config(config)
        model_config = self.build_model_config(config, **user_config)
        dataset_config = self.build_dataset_config(config)
        self.config = OmegaConf.merge(runner_config, model_config, dataset_config, user_config)


def option_dotlist(options):
    """LAVIS's --options forms: `a.b=1 c=2`, or `a.b 1 c 2`."""
    options = list(options or [])
    if not options:
        return options
    if "=" not in options[0]:
        if len(options) % 2 or any("=" in k for k in options[0::2]):
            raise ConfigError("--options %s: expected key=value, e.g. run.max_epoch=1"
                              % " ".join(options))
        options = ["%s=%s" % (k, v) for k, v in zip(options[0::2], options[1::2])]
    for option in options:
        key, sep, _ = option.partition("=")
        if not sep or not key or not all(key.split(".")):
            raise ConfigError("--options %s: expected key=value with a dotted key, e.g. "
                              "run.max_epoch=1" % option)
    return options


def parse_options(options):
    """The --options as one OmegaConf mapping; a value that is not valid YAML (``run.foo=[1,2``)
    is a ConfigError naming the option."""
    parsed = []
    for option in option_dotlist(options):
        try:
            parsed.append(OmegaConf.from_dotlist([option]))
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            reason = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError("--options %s: the value is not valid YAML (%s); write a list as "
                              "[1, 2], a mapping as {a: 1}, and quote a string holding brackets, "
                              "braces or ': '" % (option, reason)) from None
    try:
        return OmegaConf.merge(OmegaConf.create(), *parsed)
    except OmegaConfBaseException as e:
        raise ConfigError("--options: %s" % " ".join(str(e).split())) from None
