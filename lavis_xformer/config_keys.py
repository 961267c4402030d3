"""Every configuration key that something reads, and the check that a run names no other.

A misspelt key (``run.chekpoint_every_iters``, ``model.mask_ration``) used to be ignored: on a
multi-day run that meant, say, no mid-epoch checkpoints. ``check_config`` runs on the run file
merged with ``--options``, before anything is built, and stops at

* a key that nothing reads: the message names it, where it was written (the yaml file or
  ``--options``) and the closest known key;
* a value of the wrong type: the message names the key and the type expected;
* a value of the right type out of range (a zero batch size, ``mask_ratio: 1.5``, a negative
  ``max_images``): the message names the key, the value and the allowed values.

Where the known keys come from:

* ``run.*``: RUN_KEYS below, the one list of every run key that the plugin or the parts of
  LAVIS it runs (RunnerBase, the tasks, Config, the lr schedules) read, with its type,
  allowed values and meaning. A new run key is one line here.
* ``model.*``: derived, never listed, plus LAVIS's own model keys (LAVIS_MODEL_KEYS). For the
  plugin's models: the fields of ``ModelConfig`` (models/config.py) that the chosen
  ``model.arch`` reads, with their types, allowed values and the keys inside them
  (``model_schema``); a model key is added as one field there. For LAVIS's own models: the
  union of the keys (nested ones too) of the arch's model-type yamls, typed by their values
  (a float key takes an int too; a key null in some yaml takes null).
* ``datasets.<name>.*``: the structure LAVIS's builders read (``data_type``, ``build_info``
  with ``annotations.<split>.{url,storage}`` and ``<data_type>.storage``, ``vis_processor`` /
  ``text_processor`` with ``train`` / ``eval`` entries naming a registered processor), plus
  the keys of the builder's own default yaml; the limits in BUILD_INFO_KEYS are typed and
  bounded.

The one place for keys meant for a user's own code: ``run.user`` (a mapping; never checked,
kept in the run's config as ``cfg.run_cfg.user``).
"""
import difflib
import functools

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavis_xformer.schema import ANY, ConfigError, describe, fits, merge_spec, out_of_range

# name: (type, allowed values, meaning). Types: int, float (an int too), bool, str, list, dict,
# any; "|null" also allows null. Allowed values (of the right type; null is never out of range):
# None (any), a range (">= 1", "> 0", "[0, 1)") or a tuple of choices. A key is known, typed and
# bounded here, in one line, and nowhere else.
RUN_KEYS = {
    # what runs
    "task": ("str", None, "registered task (xformer_pretrain, xformer_vqa, xformer_caption, ...)"),
    "runner": ("str", None, "registered runner (runner_xformer; LAVIS's runner_base, runner_iter)"),
    "requires": ("str|null", None, "project file whose run writes model.pretrained (named in errors)"),
    "imports": ("list|null", None, "modules imported before the configuration is built, for what "
                "the run names that the plugin does not register on import (e.g. "
                "lavis_xformer.world.datasets, the miniature world's caption builder)"),
    "evaluate": ("bool", None, "evaluation only: no training"),
    "train_splits": ("list", None, "dataset splits to train on"),
    "valid_splits": ("list", None, "splits to validate on after each epoch (best checkpoint)"),
    "test_splits": ("list", None, "splits to evaluate at the end"),
    "train_dataset_ratios": ("list|dict|null", None, "sampling ratios of several train datasets (runner_xformer, as RunnerBase: a list in loader order; runner_iter: by dataset name)"),
    # optimisation
    "lr_sched": ("str", None, "registered lr schedule"),
    "init_lr": ("float", "> 0", "peak learning rate"),
    "min_lr": ("float", ">= 0", "final learning rate of the cosine schedules"),
    "warmup_lr": ("float", ">= 0", "learning rate at the start of the warm-up"),
    "warmup_steps": ("int", ">= 0", "warm-up iterations"),
    "lr_decay_rate": ("float|null", "> 0", "decay of the step schedule"),
    "weight_decay": ("float", ">= 0", "AdamW weight decay"),
    "beta2": ("float", "[0, 1)", "AdamW beta2"),
    "max_epoch": ("int", ">= 1", "epochs to train"),
    "max_iters": ("int", ">= 1", "iterations to train (LAVIS's runner_iter)"),
    "iters_per_inner_epoch": ("int", ">= 1", "iterations per inner epoch (runner_iter)"),
    "iters_per_epoch": ("int|null", ">= 1", "iterations per epoch for per-iteration schedules"),
    "accum_grad_iters": ("int", ">= 1", "gradient accumulation steps"),
    "batch_size_train": ("int", ">= 1", "training batch size per process"),
    "batch_size_eval": ("int", ">= 1", "evaluation batch size per process"),
    "num_workers": ("int", ">= 0", "data loader workers per process"),
    "amp": ("bool", None, "mixed precision on CUDA"),
    "seed": ("int", "[0, 2147483647]", "random seed (data order, augmentation, initialisation)"),
    "check_finite_loss": ("bool", None, "stop at a NaN/inf loss or gradient (default true)"),
    "find_unused_parameters": ("bool", None, "DDP's find_unused_parameters"),
    # output, checkpoints, resume
    "output_dir": ("str", None, "folder of the run's job directories"),
    "resume_ckpt_path": ("str|null", None, "checkpoint file or job directory to resume from"),
    "checkpoint_every_iters": ("int|null", ">= 0", "also save every N iterations within an epoch"),
    "log_freq": ("int", ">= 1", "progress line every N iterations / batches"),
    "resume_predictions": ("str|null", None, "evaluation: job directory (or result folder) of an "
                           "interrupted evaluation whose predictions are kept and not redone"),
    # devices and processes
    "device": ("str", None, "cpu or cuda"),
    "distributed": ("bool", None, "use torch.distributed when launched by torchrun"),
    "world_size": ("int", ">= 1", "number of processes (set from torchrun)"),
    "dist_url": ("str", None, "torch.distributed init method"),
    "use_dist_eval_sampler": ("bool", None, "each process evaluates its share"),
    "rank": ("int", ">= 0", "process rank (set from torchrun)"),
    "gpu": ("int", ">= 0", "local device index (set from torchrun)"),
    "dist_backend": ("str", ("gloo", "nccl"), "gloo or nccl (set at start)"),
    # evaluation protocol (xformer_vqa, xformer_caption, xformer_retrieval, LAVIS's tasks)
    "inference_method": ("str", ("generate", "rank"), "VQA: generate or rank"),
    "prompt": ("str|null", None, "VQA / captioning prompt"),
    "num_beams": ("int", ">= 1", "beam search width"),
    "max_len": ("int", ">= 1", "maximum generated tokens"),
    "min_len": ("int", ">= 0", "minimum generated tokens"),
    "length_penalty": ("float", None, "beam search length penalty"),
    "num_ans_candidates": ("int", ">= 1", "VQA ranking: answer candidates"),
    "metric": ("str", ("exact_match", "vqa_accuracy", "oc", "mci"), "VQA scoring"),
    "benchmark": ("str|null", None, "benchmark name in the metrics JSON"),
    "spice": ("bool", None, "captioning: try SPICE (needs a download)"),
    "k_test": ("int", ">= 1", "retrieval: ITC candidates re-ranked by ITM"),
    "report_metric": ("bool", None, "LAVIS's caption/retrieval tasks: compute metrics"),
    # the escape hatch
    "user": ("dict|null", None, "keys for your own code; never checked"),
}
OPEN_RUN_KEYS = ("user",)
# pairs of run keys where the first may not exceed the second (checked when both are given)
RUN_ORDER = (("min_len", "max_len"),)

# Keys of every LAVIS model config besides a model type's own (BaseModel, load_model).
LAVIS_MODEL_KEYS = {"arch": "str", "model_type": "str", "load_pretrained": "bool",
                    "load_finetuned": "bool", "pretrained": "str|list|null", "finetuned": "str|null"}

DATASET_KEYS = ("data_type", "build_info", "vis_processor", "text_processor", "type",
                "dataset_card")
LAVIS_SPLITS = ("train", "val", "test")
# build_info keys of the plugin's builders, checked in every dataset that has them, in
# RUN_KEYS' form (a negative limit used to be taken as a Python slice: max_images=-5 kept all
# but 5 images; 0 left an empty dataset)
BUILD_INFO_KEYS = {
    "max_images": ("int|null", ">= 1", "keep the first N images of each split; null: all"),
    "max_questions": ("int|null", ">= 1", "then the first N questions of each split; null: all"),
    "max_items": ("int|null", ">= 1", "keep the first N records of each split; null: all"),
}


def check_keys(node, schema, prefix, problems, hint=""):
    """Check every key of the mapping ``node`` against ``schema`` ({key: (type, allowed,
    meaning)}, as RUN_KEYS): a key not in it, a value of the wrong type or out of range is one
    line in ``problems`` (``Problems``), named ``prefix`` + key."""
    names = [prefix + k for k in schema]
    for key in node:
        name = prefix + str(key)
        if key not in schema:
            problems.unknown(name, names, hint)
            continue
        spec, allowed = schema[key][:2]
        value = OmegaConf.select(node, str(key), throw_on_missing=False) \
            if isinstance(node, DictConfig) else node[key]
        if not fits(value, spec):
            problems.wrong_type(name, value, spec)
        else:
            problems.check_range(name, value, allowed)


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


@functools.lru_cache(maxsize=None)
def model_keys(arch):
    """{dotted model key: (type, allowed values, meaning)} for ``arch``: LAVIS's model keys and
    the keys the model reads: for the plugin's models ModelConfig's schema
    (models/config.model_schema), for LAVIS's own the union of their model-type yamls."""
    from lavis.common.registry import registry
    from lavis_xformer.models.config import model_schema

    cls = registry.get_model_class(arch)
    known = {key: (spec, None, "LAVIS's model key") for key, spec in LAVIS_MODEL_KEYS.items()}
    schema = model_schema(arch, tuple(getattr(cls, "LOSSES", None) or ()))
    for key, entry in (_yaml_model_keys(cls) if schema is None else schema).items():
        known.setdefault(key, entry)
    return known


def _yaml_model_keys(cls):
    """The keys of the model-type yamls of LAVIS's model ``cls`` in model_keys' form, each typed
    by its values (null in every yaml: anything)."""
    specs = {}
    for model_type in getattr(cls, "PRETRAINED_MODEL_CONFIG_DICT", {}) or {}:
        try:
            model = OmegaConf.load(cls.default_config_path(model_type)).get("model", None) or {}
        except Exception:  # noqa: BLE001 - a model type whose yaml LAVIS does not ship
            continue
        for key, value in _flatten(model).items():
            specs[key] = merge_spec(specs.get(key), value)
    return {key: (ANY if spec == "null" else spec, None, "a key of the model-type yamls")
            for key, spec in specs.items()}


def _inside_a_value(key, known):
    """Whether ``key`` lies inside the value of a known key that declares no keys of its own
    (an attribute of a transformers config, e.g. ``llm.rope_scaling``): nothing is checked
    there."""
    parent = key.rpartition(".")[0]
    return parent in known and not any(k.startswith(parent + ".") for k in known)


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


class Problems:
    """The problems found so far, one line each, naming where each key was written (the file,
    or --options)."""

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
                                                    describe(spec)))

    def check_range(self, key, value, allowed):
        words = out_of_range(value, allowed)
        if words:
            self.lines.append("%s: %s=%r is out of range; allowed: %s" % (
                self.where(key), key, _plain(value), words))

    def raise_any(self):
        if self.lines:
            raise ConfigError("\n".join(self.lines))


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

    problems = Problems(cfg_path, set(option_keys))
    for section in config:
        if section not in ("model", "datasets", "run", "preprocess"):
            problems.unknown(section, ["model", "datasets", "run", "preprocess"], _USER_HINT)

    run = config.get("run", None) or {}
    check_keys(run, RUN_KEYS, "run.", problems, _USER_HINT)
    for low, high in RUN_ORDER:
        a, b = run.get(low, None), run.get(high, None)
        if fits(a, "int") and fits(b, "int") and a > b:
            problems.lines.append("%s: run.%s=%r is below run.%s=%r; allowed: run.%s >= run.%s" % (
                problems.where("run." + high), high, b, low, a, high, low))

    model = config.get("model", None) or {}
    arch = model.get("arch", None)
    if arch and registry.get_model_class(arch) is not None:
        known = model_keys(arch)
        names = ["model." + k for k in known]
        hint = "(the keys %s reads: for the plugin's models ModelConfig's fields, " \
               "lavis_xformer/models/config.py; for LAVIS's its model-type yamls' keys)" % arch
        for key, value in _flatten(model).items():
            if _inside_a_value(key, known):
                continue
            if key not in known:
                problems.unknown("model." + key, names, hint)
                continue
            spec, allowed = known[key][:2]
            if not fits(value, spec):
                problems.wrong_type("model." + key, value, spec)
            else:
                problems.check_range("model." + key, value, allowed)

    for name in config.get("datasets", None) or {}:
        _check_dataset(name, config.datasets[name], problems, registry)

    problems.raise_any()


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
            check_keys({k: build_info[k] for k in build_info if k in BUILD_INFO_KEYS},
                       BUILD_INFO_KEYS, prefix + "build_info.", problems)
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
