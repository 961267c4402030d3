"""The miniature world's configuration file: world settings, the three frozen parts' settings
and the main job's runs, in one yaml (``lavis_xformer/configs/world/*.yaml``).

``load`` checks it as strictly as a run file (config_keys.py), before anything is built or
trained: a key nothing reads (with the closest known key), a value of the wrong type or out of
range is one line naming the file, the key, the value and what is allowed (ConfigError). Every
key is in the registries below, in RUN_KEYS' form: {key: (type, allowed values, meaning)}."""
import os

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.config_keys import BUILD_INFO_KEYS, RUN_KEYS, ConfigError, Problems, check_keys
from lavis_xformer.world import cache
from lavis_xformer.world.scenes import HARD_CASES, WorldSettings

CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs", "world")
SECTIONS = ("name", "world", "clip", "mae", "lm", "job")
SPLITS = ("train", "val", "test")  # every one is read (training, probes, held-out questions)

WORLD_KEYS = {  # scenes.WorldSettings
    "seed": ("int", ">= 0", "the world's random seed"),
    "image_size": ("int", ">= 1", "scene size in pixels: the mini model's image_size"),
    "splits": ("dict", None, "scenes of each split: train, val, test"),
    "max_count": ("int", ">= 1", "counts of the asked shape: 1..max_count"),
    "max_objects": ("int", ">= 1", "all objects of a scene together"),
    "hard_cases": ("dict", None, "share of the scenes of each hard case"),
    "supersample": ("int", ">= 1", "drawn at this many times the size, then reduced"),
    "colour_jitter": ("int", ">= 0", "per object and channel: shades of one colour name"),
    "pixel_noise": ("float", ">= 0", "per pixel sensor noise (std, 0-255 scale)"),
}
SPLIT_KEYS = {split: ("int", ">= 1", "scenes of the split") for split in SPLITS}
HARD_CASE_KEYS = {case: ("float", ">= 0", "share of the scenes") for case in HARD_CASES}

PART_KEYS = {  # what pretrain.py reads of each frozen part's section
    "steps": ("int", ">= 1", "training steps"),
    "batch_size": ("int", ">= 1", "images or texts per step"),
    "lr": ("float", "> 0", "peak learning rate"),
    "warmup": ("int", ">= 0", "warm-up steps"),
    "weight_decay": ("float", ">= 0", "AdamW weight decay"),
    "seed": ("int", ">= 0", "random seed"),
    "threads": ("int|null", ">= 1", "torch threads while training"),
}
PARTS = {
    "clip": dict(PART_KEYS, embed_dim=("int", ">= 1", "joint embedding size"),
                 text_dim=("int", ">= 4", "text tower width (a multiple of its 4 heads)"),
                 text_depth=("int", ">= 1", "text tower layers")),
    # 0 would hide no patch: MAE's loss (over the hidden patches) is then 0/0
    "mae": dict(PART_KEYS, mask_ratio=("float", "(0, 1)", "share of patches hidden")),
    "lm": PART_KEYS,
}

JOB_KEYS = {  # what main.py reads of ``job``
    "variants": ("list", None, "the models to run (VARIANTS)"),
    "seeds": ("list", None, "a pipeline per variant and seed"),
    "parallel": ("int", ">= 1", "pipelines (and frozen-part trainings) at once"),
    "threads": ("int", ">= 1", "torch threads of each process"),
    "stage1": ("dict", None, "run keys of stage 1, and max_images"),
    "stage2": ("dict", None, "run keys of stage 2, and max_images"),
    "eval": ("dict", None, "run keys of the evaluations, and max_items"),
}
# each stage's keys become `run.<key>` options of its run; the limits its dataset's build_info
STAGE_KEYS = {
    "stage1": dict(RUN_KEYS, max_images=BUILD_INFO_KEYS["max_images"]),
    "stage2": dict(RUN_KEYS, max_images=BUILD_INFO_KEYS["max_images"]),
    "eval": dict(RUN_KEYS, max_items=BUILD_INFO_KEYS["max_items"]),
}


def _path(path_or_name):
    if os.path.isfile(path_or_name):
        return path_or_name
    candidate = os.path.join(CONFIG_DIR, "%s.yaml" % path_or_name)
    if not os.path.isfile(candidate):
        names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        raise ConfigError("world config %r: no such file, and no packaged config of that name "
                          "(packaged: %s)" % (path_or_name, ", ".join(names)))
    return candidate


def load(path_or_name):
    """A config by path, or by name (``mini``, ``ci``, ``finding``) from the package, checked
    (``check``): raises ConfigError, one line per problem."""
    path = _path(path_or_name)
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError("world config %s is not valid yaml: %s" % (path, " ".join(str(e).split()))) from None
    if not isinstance(cfg, dict):
        raise ConfigError("world config %s must hold a mapping with the sections %s" % (
            path, ", ".join(SECTIONS)))
    cfg.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    check(cfg, path)
    return cfg


# what each named variant changes (model keys); its stage-1 keys go to stage 1 only
VARIANTS = {
    "blip2": {"model": {"fusion": "blip2"}},
    "xformer": {"model": {"fusion": "xformer"}},
    "xformer_no_rec": {"model": {"fusion": "xformer"},
                       "stage1": {"loss_weights.rec": 0, "mask_ratio": 0}},
    "concat": {"model": {"fusion": "concat"}},
}
# the frozen parts are saved for the sizes of the stage-2 mini model type
MODEL_YAML = os.path.join(PACKAGE_DIR, "configs", "models", "xformer_opt_mini.yaml")


def architecture():
    """The sizes the frozen parts are saved for: the ``mini`` model type's yaml, the one
    source of truth (the CLIP ViT, the MAE and the OPT config all come from it)."""
    model = OmegaConf.to_container(OmegaConf.load(MODEL_YAML).model, resolve=True)
    return {"image_size": model["image_size"], "vit": model["vit"], "mae": model["mae"],
            "llm": model["llm"]}


def check(cfg, path):
    """Raise ConfigError listing every unknown key, wrongly typed value and value out of range
    of the world config ``cfg`` (read from ``path``, which the lines name)."""
    problems = Problems(path, ())
    for section in cfg:
        if section not in SECTIONS:
            problems.unknown(section, SECTIONS)
    sections = {}  # the mapping sections that are mappings
    for section in SECTIONS[1:]:
        node = cfg.get(section, {})
        if not isinstance(node, dict):
            problems.wrong_type(section, node, "dict")
        else:
            sections[section] = node
    name = cfg["name"]
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name:
        problems.lines.append("%s: name=%r must be a folder name (output/<name>/ holds the job's "
                              "files)" % (path, name))

    world = sections.get("world", {})
    check_keys(world, WORLD_KEYS, "world.", problems)
    for key, schema in (("splits", SPLIT_KEYS), ("hard_cases", HARD_CASE_KEYS)):
        if isinstance(world.get(key), dict):
            check_keys(world[key], schema, "world.%s." % key, problems)
    splits = world.get("splits")
    if isinstance(splits, dict) and set(SPLITS) - set(splits):
        problems.lines.append("%s: world.splits=%r lacks %s; give the scenes of each of %s" % (
            path, splits, ", ".join(s for s in SPLITS if s not in splits), ", ".join(SPLITS)))
    cases = world.get("hard_cases")
    if isinstance(cases, dict) and not any(isinstance(v, (int, float)) and v > 0 for v in cases.values()):
        problems.lines.append("%s: world.hard_cases=%r: give at least one case a share > 0" % (path, cases))
    count, objects = world.get("max_count", 8), world.get("max_objects", 12)
    if isinstance(count, int) and isinstance(objects, int) and count > objects:
        problems.lines.append("%s: world.max_count=%r is above world.max_objects=%r; allowed: "
                              "world.max_objects >= world.max_count" % (path, count, objects))
    size = architecture()["image_size"]
    if world.get("image_size", size) != size and _fits_int(world.get("image_size")):
        problems.lines.append("%s: world.image_size=%r: the frozen parts are built for %d px images "
                              "(image_size of %s); set it to %d" % (
                                  path, world["image_size"], size, os.path.basename(MODEL_YAML), size))

    for part, schema in PARTS.items():
        check_keys(sections.get(part, {}), schema, part + ".", problems)
    text_dim = sections.get("clip", {}).get("text_dim")
    if _fits_int(text_dim) and text_dim % 4:
        problems.lines.append("%s: clip.text_dim=%r must be a multiple of 4 (the text tower's "
                              "heads)" % (path, text_dim))

    job = sections.get("job", {})
    check_keys(job, JOB_KEYS, "job.", problems)
    for stage, schema in STAGE_KEYS.items():
        if isinstance(job.get(stage), dict):
            check_keys(job[stage], schema, "job.%s." % stage, problems)
    for key in ("variants", "seeds"):
        if job.get(key) == []:
            problems.lines.append("%s: job.%s=[] runs nothing; give at least one" % (path, key))
    variants = job.get("variants")
    if isinstance(variants, list):
        problems.check_range("job.variants", variants, tuple(VARIANTS))
    seeds = job.get("seeds")
    if isinstance(seeds, list):
        for i, seed in enumerate(seeds):
            if not _fits_int(seed):
                problems.wrong_type("job.seeds[%d]" % i, seed, "int")
            else:
                problems.check_range("job.seeds[%d]" % i, seed, RUN_KEYS["seed"][1])
    problems.raise_any()
    try:
        WorldSettings.from_dict(world)  # its own checks, kept as the last word
    except (TypeError, ValueError) as e:
        raise ConfigError("%s: %s" % (path, e)) from None


def _fits_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def world_key(cfg):
    return cache.key("world", WorldSettings.from_dict(cfg.get("world", {})).to_dict())


def assets_dir(cfg):
    """Where the links to the cached products go: output/<name>/assets (relative to the
    current directory, as the project files' other paths are)."""
    return os.path.join("output", cfg["name"], "assets")
