"""Every configuration key that something reads, and the check that a run names no other.

A misspelt key (``run.chekpoint_every_iters``, ``model.mask_ration``) used to be ignored: on a
multi-day run that meant, say, no mid-epoch checkpoints. ``check_config`` runs on the run file
merged with ``--options``, before anything is built, and stops at

* a key that nothing reads: the message names it, where it was written (the yaml file or
  ``--options``) and the closest known key;
* a value of the wrong type: the message names the key and the type expected.

Where the known keys come from:

* ``run.*``: RUN_KEYS below, the one list of every run key that the plugin or the parts of
  LAVIS it runs (RunnerBase, the tasks, Config, the lr schedules) read, with its type and
  meaning. A new run key is one line here.
* ``model.*``: derived, never listed: the union of the keys (nested ones too) of every
  model-type yaml of the chosen ``model.arch`` (``PRETRAINED_MODEL_CONFIG_DICT``; for the
  plugin's models ``lavis_xformer/configs/models/``), plus LAVIS's own model keys. A model
  key is added by adding it, with its default, to the model-type yamls of the models that
  read it. The type expected is that of the defaults (a float key takes an int too; a key
  whose default is null in some yaml takes null). Sections that are handed to a transformers
  config as keyword arguments (``qformer``, ``mae``, ``llm``) take that config's attributes.
* ``datasets.<name>.*``: the structure LAVIS's builders read (``data_type``, ``build_info``
  with ``annotations.<split>.{url,storage}`` and ``<data_type>.storage``, ``vis_processor`` /
  ``text_processor`` with ``train`` / ``eval`` entries naming a registered processor), plus
  the keys of the builder's own default yaml.

The one place for keys meant for a user's own code: ``run.user`` (a mapping; never checked,
kept in the run's config as ``cfg.run_cfg.user``).
"""
import difflib
import functools

from omegaconf import DictConfig, ListConfig, OmegaConf

ANY = "any"

# name: (type, meaning). Types: int, float (an int too), bool, str, list, dict, any; "|null"
# also allows null.
RUN_KEYS = {
    # what runs
    "task": ("str", "registered task (xformer_pretrain, xformer_vqa, xformer_caption, ...)"),
    "runner": ("str", "registered runner (runner_xformer; LAVIS's runner_base, runner_iter)"),
    "requires": ("str|null", "project file whose run writes model.pretrained (named in errors)"),
    "evaluate": ("bool", "evaluation only: no training"),
    "train_splits": ("list", "dataset splits to train on"),
    "valid_splits": ("list", "splits to validate on after each epoch (best checkpoint)"),
    "test_splits": ("list", "splits to evaluate at the end"),
    "train_dataset_ratios": ("list|dict|null", "sampling ratios of several train datasets (runner_xformer, as RunnerBase: a list in loader order; runner_iter: by dataset name)"),
    # optimisation
    "lr_sched": ("str", "registered lr schedule"),
    "init_lr": ("float", "peak learning rate"),
    "min_lr": ("float", "final learning rate of the cosine schedules"),
    "warmup_lr": ("float", "learning rate at the start of the warm-up"),
    "warmup_steps": ("int", "warm-up iterations"),
    "lr_decay_rate": ("float|null", "decay of the step schedule"),
    "weight_decay": ("float", "AdamW weight decay"),
    "beta2": ("float", "AdamW beta2"),
    "max_epoch": ("int", "epochs to train"),
    "max_iters": ("int", "iterations to train (LAVIS's runner_iter)"),
    "iters_per_inner_epoch": ("int", "iterations per inner epoch (runner_iter)"),
    "iters_per_epoch": ("int|null", "iterations per epoch for per-iteration schedules"),
    "accum_grad_iters": ("int", "gradient accumulation steps"),
    "batch_size_train": ("int", "training batch size per process"),
    "batch_size_eval": ("int", "evaluation batch size per process"),
    "num_workers": ("int", "data loader workers per process"),
    "amp": ("bool", "mixed precision on CUDA"),
    "seed": ("int", "random seed (data order, augmentation, initialisation)"),
    "check_finite_loss": ("bool", "stop at a NaN/inf loss or gradient (default true)"),
    "find_unused_parameters": ("bool", "DDP's find_unused_parameters"),
    # output, checkpoints, resume
    "output_dir": ("str", "folder of the run's job directories"),
    "resume_ckpt_path": ("str|null", "checkpoint file or job directory to resume from"),
    "checkpoint_every_iters": ("int|null", "also save every N iterations within an epoch"),
    "log_freq": ("int", "progress line every N iterations / batches"),
    "resume_predictions": ("str|null", "evaluation: job directory (or result folder) of an "
                           "interrupted evaluation whose predictions are kept and not redone"),
    # devices and processes
    "device": ("str", "cpu or cuda"),
    "distributed": ("bool", "use torch.distributed when launched by torchrun"),
    "world_size": ("int", "number of processes (set from torchrun)"),
    "dist_url": ("str", "torch.distributed init method"),
    "use_dist_eval_sampler": ("bool", "each process evaluates its share"),
    "rank": ("int", "process rank (set from torchrun)"),
    "gpu": ("int", "local device index (set from torchrun)"),
    "dist_backend": ("str", "gloo or nccl (set at start)"),
    # evaluation protocol (xformer_vqa, xformer_caption, xformer_retrieval, LAVIS's tasks)
    "inference_method": ("str", "VQA: generate or rank"),
    "prompt": ("str|null", "VQA / captioning prompt"),
    "num_beams": ("int", "beam search width"),
    "max_len": ("int", "maximum generated tokens"),
    "min_len": ("int", "minimum generated tokens"),
    "length_penalty": ("float", "beam search length penalty"),
    "num_ans_candidates": ("int", "VQA ranking: answer candidates"),
    "metric": ("str", "VQA scoring: exact_match, vqa_accuracy, oc, mci"),
    "benchmark": ("str|null", "benchmark name in the metrics JSON"),
    "spice": ("bool", "captioning: try SPICE (needs a download)"),
    "k_test": ("int", "retrieval: ITC candidates re-ranked by ITM"),
    "report_metric": ("bool", "LAVIS's caption/retrieval tasks: compute metrics"),
    # the escape hatch
    "user": ("dict|null", "keys for your own code; never checked"),
}
OPEN_RUN_KEYS = ("user",)

# Keys of every LAVIS model config besides a model type's own (BaseModel, load_model).
LAVIS_MODEL_KEYS = {"arch": "str", "model_type": "str", "load_pretrained": "bool",
                    "load_finetuned": "bool", "pretrained": "str|list|null", "finetuned": "str|null"}

# model sections handed to a transformers config as keyword arguments: any of its attributes
OPEN_MODEL_SECTIONS = {
    "qformer": ("transformers", "BertConfig"),
    "mae": ("transformers", "ViTMAEConfig"),
    "llm": ("transformers", "OPTConfig", "T5Config"),
}

DATASET_KEYS = ("data_type", "build_info", "vis_processor", "text_processor", "type",
                "dataset_card")
LAVIS_SPLITS = ("train", "val", "test")


class ConfigError(ValueError):
    """A run configuration that cannot work (a key nothing reads, a value of the wrong type, a
    missing file, ...); the message says what to change. launch.run_main prints it and exits
    with status 2."""


# ------------------------------------------------------------------ types

def _type_of(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "dict"
    return ANY


def _fits(value, spec):
    allowed = spec.split("|")
    if ANY in allowed:
        return True
    kind = _type_of(value)
    if kind in allowed:
        return True
    return "float" in allowed and kind == "int"


_TYPE_WORDS = {"int": "an integer", "float": "a number", "float|int": "a number", "bool": "true or false",
               "str": "a string", "list": "a list", "dict": "a mapping", "null": "null"}


def _describe(spec):
    kinds = spec.split("|")
    if "float" in kinds:
        kinds = [k for k in kinds if k != "int"]
    return " or ".join(_TYPE_WORDS.get(t, t) for t in kinds)


# ------------------------------------------------------------------ known keys

def _flatten(node, prefix=""):
    """{dotted key: value} of a mapping, nested mappings included (both the section and its
    keys)."""
    out = {}
    for key in node:
        value = node[key]
        name = "%s%s" % (prefix, key)
        out[name] = value
        if isinstance(value, (dict, DictConfig)):
            out.update(_flatten(value, name + "."))
    return out


def _merge_spec(old, value):
    """The type spec of a model key after seeing one more default. Numbers are one kind (a
    yaml writes `drop_path_rate: 0` where the key takes any number)."""
    kind = _type_of(value)
    if kind == ANY or old == ANY:
        return ANY
    kinds = set(old.split("|")) if old else set()
    kinds.update(("int", "float") if kind in ("int", "float") else (kind,))
    return "|".join(sorted(kinds))


@functools.lru_cache(maxsize=None)
def _hf_attributes(module, *names):
    import importlib

    keys = set()
    mod = importlib.import_module(module)
    for name in names:
        keys.update(getattr(mod, name)().to_dict())
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def model_keys(arch):
    """{dotted model key: type spec} for ``arch``: the union over its model-type yamls, plus
    LAVIS's model keys. A key whose default is null in every yaml takes anything."""
    from lavis.common.registry import registry

    cls = registry.get_model_class(arch)
    known = dict(LAVIS_MODEL_KEYS)
    for model_type in getattr(cls, "PRETRAINED_MODEL_CONFIG_DICT", {}) or {}:
        try:
            path = cls.default_config_path(model_type)
            model = OmegaConf.load(path).get("model", None) or {}
        except Exception:  # noqa: BLE001 - a model type whose yaml LAVIS does not ship
            continue
        for key, value in _flatten(model).items():
            if key in LAVIS_MODEL_KEYS:
                continue
            known[key] = _merge_spec(known.get(key), value)
    for key, spec in list(known.items()):
        if spec == "null":  # null in every yaml: nothing says what it takes
            known[key] = ANY
    return known


def _known_model_key(key, known):
    if key in known:
        return True
    section = key.split(".")[0]
    if section in OPEN_MODEL_SECTIONS and section in known and key.count(".") == 1:
        return key.split(".", 1)[1] in _hf_attributes(*OPEN_MODEL_SECTIONS[section])
    return False


@functools.lru_cache(maxsize=None)
def _builder_keys(name):
    """Dotted keys of the default yaml(s) of builder ``name`` (under datasets.<name>)."""
    from lavis.common.registry import registry

    cls = registry.get_builder_class(name)
    keys = set()
    for config_type in getattr(cls, "DATASET_CONFIG_DICT", {}) or {}:
        try:
            config = OmegaConf.load(cls.default_config_path(config_type))
            keys.update(_flatten(config.datasets[name]))
        except Exception:  # noqa: BLE001 - a builder default LAVIS does not ship
            continue
    return frozenset(keys)


# ------------------------------------------------------------------ the check

def _closest(key, candidates):
    near = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if not near:  # compare the last part alone: run.chekpoint_every_iters
        tail = key.rsplit(".", 1)
        if len(tail) == 2:
            prefix = tail[0] + "."
            tails = [c[len(prefix):] for c in candidates if c.startswith(prefix)
                     and "." not in c[len(prefix):]]
            near = [prefix + t for t in difflib.get_close_matches(tail[1], tails, n=1, cutoff=0.6)]
    return near[0] if near else None


class _Problems:
    def __init__(self, cfg_path, option_keys):
        self.cfg_path, self.option_keys, self.lines = cfg_path, option_keys, []

    def where(self, key):
        return "--options" if key in self.option_keys else self.cfg_path

    def unknown(self, key, candidates, hint=""):
        near = _closest(key, candidates)
        line = "%s: unknown key %s" % (self.where(key), key)
        line += "; did you mean %s?" % near if near else "; nothing reads it"
        if hint:
            line += " " + hint
        self.lines.append(line)

    def wrong_type(self, key, value, spec):
        self.lines.append("%s: %s=%r must be %s" % (self.where(key), key, _plain(value),
                                                    _describe(spec)))


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value)
    return value


_USER_HINT = "(keys for your own code go under run.user)"


def check_config(config, cfg_path="the run file", option_keys=()):
    """Raise ConfigError listing every unknown key and wrongly typed value of ``config``
    (the run file merged with the --options; ``option_keys``: the dotted keys the --options
    set, to say where each problem was written)."""
    from lavis.common.registry import registry

    problems = _Problems(cfg_path, set(option_keys))
    for section in config:
        if section not in ("model", "datasets", "run", "preprocess"):
            problems.unknown(section, ["model", "datasets", "run", "preprocess"], _USER_HINT)

    run = config.get("run", None) or {}
    run_names = ["run." + k for k in RUN_KEYS]
    for key in run:
        name = "run.%s" % key
        if key not in RUN_KEYS:
            problems.unknown(name, run_names, _USER_HINT)
            continue
        spec = RUN_KEYS[key][0]
        value = OmegaConf.select(config, name, throw_on_missing=False)
        if not _fits(value, spec):
            problems.wrong_type(name, value, spec)

    model = config.get("model", None) or {}
    arch = model.get("arch", None)
    if arch and registry.get_model_class(arch) is not None:
        known = model_keys(arch)
        names = ["model." + k for k in known]
        for key, value in _flatten(model).items():
            if "." in key and key.split(".")[0] in OPEN_MODEL_SECTIONS and key.count(".") > 1:
                continue  # inside an attribute of a transformers config
            if not _known_model_key(key, known):
                problems.unknown("model." + key, names,
                                 "(a model key is known when a model-type yaml of %s has it)" % arch)
                continue
            spec = known.get(key, ANY)
            if not _fits(value, spec):
                problems.wrong_type("model." + key, value, spec)

    for name in config.get("datasets", None) or {}:
        _check_dataset(name, config.datasets[name], problems, registry)

    if problems.lines:
        raise ConfigError("\n".join(problems.lines))


def _check_dataset(name, node, problems, registry):
    if not isinstance(node, DictConfig) or registry.get_builder_class(name) is None:
        return  # reported by checks.check_dataset_names / the mapping check
    prefix = "datasets.%s." % name
    defaults = _builder_keys(name)
    generic = set(DATASET_KEYS)
    for key in node:
        if key not in generic and key not in defaults:
            problems.unknown(prefix + key, [prefix + k for k in generic | set(defaults)
                                            if "." not in k])
    build_info = node.get("build_info", None)
    if build_info is not None:
        if not isinstance(build_info, DictConfig):
            problems.wrong_type(prefix + "build_info", build_info, "dict")
        else:
            data_type = node.get("data_type", "images")
            allowed = {"annotations", data_type, "images", "videos", "features"}
            allowed |= {k.split(".")[1] for k in defaults if k.startswith("build_info.")}
            for key in build_info:
                if key not in allowed:
                    problems.unknown(prefix + "build_info." + key,
                                     [prefix + "build_info." + k for k in allowed])
            annotations = build_info.get("annotations", None)
            if isinstance(annotations, DictConfig):
                for split in annotations:
                    where = prefix + "build_info.annotations.%s" % split
                    entry = annotations[split]
                    if not isinstance(entry, DictConfig):
                        problems.wrong_type(where, entry, "dict")
                        continue
                    for key in entry:
                        if key not in ("url", "storage"):
                            problems.unknown(where + "." + key, [where + ".url", where + ".storage"])
    for kind in ("vis_processor", "text_processor"):
        processors = node.get(kind, None)
        if processors is None:
            continue
        where = prefix + kind
        if not isinstance(processors, DictConfig):
            problems.wrong_type(where, processors, "dict")
            continue
        for split in processors:
            entry = processors[split]
            if split not in ("train", "eval"):
                problems.unknown("%s.%s" % (where, split), [where + ".train", where + ".eval"])
            elif not isinstance(entry, DictConfig) or not entry.get("name", None):
                problems.lines.append("%s: %s.%s must be a mapping with a processor `name`" % (
                    problems.where("%s.%s" % (where, split)), where, split))
            elif registry.get_processor_class(entry.name) is None:
                problems.lines.append("%s: %s.%s.name: unknown processor %r. Registered: %s" % (
                    problems.where("%s.%s.name" % (where, split)), where, split, entry.name,
                    ", ".join(sorted(registry.mapping["processor_name_mapping"]))))
