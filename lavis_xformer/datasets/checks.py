"""Checks run on a run configuration before anything is built, downloaded or trained.

LAVIS 1.0.2 finds out about missing data late: its builders try to download annotation files
(which fails without network, or with a bare URL error), only warn about a missing image
folder, and the run then dies inside a DataLoader worker. These checks stop a run at once with
one message that names the dataset, the split, the expected path and the yaml key to set.

Likewise a stage-2 or evaluation run whose ``model.pretrained`` names a local checkpoint that
does not exist (typically: the previous stage has not been run) stops with the path, the key
and the command that writes the checkpoint.
"""
import glob
import os

from lavis.common.registry import registry
from lavis.common.utils import get_cache_path, is_url

LAVIS_SPLITS = ("train", "val", "test")  # the splits BaseDatasetBuilder.build() builds


class ConfigError(ValueError):
    """A run configuration that cannot work; the message says what to change."""


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _storage_path(path):
    """LAVIS's rule: relative storage paths are taken under registry path cache_root; a path
    written ``./...`` or ``../...`` is taken from the current directory instead (the
    miniature world's project files point at output/ that way)."""
    path = str(path)
    if path.startswith(("./", "../")):
        return os.path.abspath(path)
    return path if os.path.isabs(path) else get_cache_path(path)


def lavis_expected_data_paths(name, config):
    """[(split, kind, path, what to set)] of a builder that follows BaseDatasetBuilder:
    annotation files under build_info.annotations.<split>.storage and the visual folder under
    build_info.<data_type>.storage. Builders with other layouts (e.g. webdataset shards) have
    neither and are not checked."""
    build_info = config.get("build_info", None) or {}
    paths = []
    annotations = build_info.get("annotations", None) or {}
    for split in annotations:
        if split not in LAVIS_SPLITS:
            continue
        info = annotations[split] or {}
        storages = _as_list(info.get("storage", None))
        urls = _as_list(info.get("url", None))
        key = "datasets.%s.build_info.annotations.%s.storage" % (name, split)
        is_list = not isinstance(info.get("storage", None), str)
        for j, storage in enumerate(storages):
            path = _storage_path(storage)
            source = urls[j] if j < len(urls) else None
            if source and not is_url(str(source)) and os.path.isfile(str(source)):
                continue  # LAVIS copies a local `url` file to the storage path itself
            if is_list:
                fix = "set `%s` to the list of its files (entry %d), e.g. %s=[/path/%s]" % (
                    key, j, key, os.path.basename(path))
            else:
                fix = "set `%s` to its location" % key
            if source:
                fix += "; LAVIS's source for this file: %s" % source
            paths.append((split, "annotation file", path, fix))
    data_type = config.get("data_type", "images")
    visual = build_info.get(data_type, None) or {}
    storage = visual.get("storage", None) if hasattr(visual, "get") else None
    if storage:
        kind = {"images": "image directory", "videos": "video directory"}.get(
            data_type, "%s directory" % data_type)
        paths.append(("all", kind, _storage_path(storage), "set `datasets.%s.build_info.%s.storage` "
                      "to its location" % (name, data_type)))
    return paths


def _exists(kind, path):
    if "directory" in kind or "folder" in kind:
        return os.path.isdir(path)
    return os.path.isfile(path)


def check_dataset_names(names):
    """Unknown builder names -> ConfigError listing the registered ones."""
    unknown = [n for n in names if registry.get_builder_class(n) is None]
    if unknown:
        raise ConfigError(
            "unknown dataset%s %s under `datasets:`. Registered datasets: %s" % (
                "s" if len(unknown) > 1 else "", ", ".join(repr(n) for n in unknown),
                ", ".join(registry.list_datasets())))


def check_datasets(datasets_cfg):
    """Raise ConfigError naming every missing annotation file or data folder of the run's
    datasets (their builder defaults merged with the run file and --options)."""
    check_dataset_names(list(datasets_cfg))
    missing = []
    for name in datasets_cfg:
        config = datasets_cfg[name]
        builder_cls = registry.get_builder_class(name)
        expected = getattr(builder_cls, "expected_data_paths", None)
        paths = expected(name, config) if expected else lavis_expected_data_paths(name, config)
        for split, kind, path, fix in paths:
            if not _exists(kind, path):
                missing.append((name, split, kind, path, fix))
    if not missing:
        return
    lines = ["data for this run is missing (nothing was downloaded, built or trained):"]
    for name, split, kind, path, fix in missing:
        lines.append("  - dataset '%s', split '%s': %s not found at %s" % (name, split, kind, path))
        lines.append("    " + fix)
    if any(".storage`" in fix for *_, fix in missing):
        lines.append("relative `storage` paths are taken under LAVIS's cache_root (%s), "
                     "as LAVIS does; give absolute paths, in the run yaml or as --options "
                     "key=value." % registry.get_path("cache_root"))
    raise ConfigError("\n".join(lines))


CHECKPOINT_KEYS = ("pretrained",)  # model keys naming a checkpoint that some earlier run writes


def _is_remote(value):
    return is_url(value) or value.startswith("pkg:")


def check_checkpoints(model_cfg, run_cfg):
    """Raise ConfigError when ``model.pretrained`` is a local path that does not exist.

    Relative paths are taken from the current directory, as the model does when loading. The
    message names the key and the absolute path, lists the checkpoints that do exist beside it
    (e.g. a shortened stage 1 left checkpoint_0.pth only), and says how to produce the file:
    ``run.requires`` in the project file names the project that writes it (e.g.
    ``projects/xformer/stage1.yaml``); without that hint it says "the previous stage".
    """
    for key in CHECKPOINT_KEYS:
        value = model_cfg.get(key, None)
        if not value or _is_remote(str(value)):
            continue
        path = os.path.abspath(os.path.expanduser(str(value)))
        if os.path.isfile(path):
            continue
        if os.path.isdir(path):
            raise ConfigError("model.%s: %s is a directory; point model.%s at a checkpoint file "
                              "inside it (e.g. checkpoint_<epoch>.pth)" % (key, path, key))
        requires = run_cfg.get("requires", None)
        if requires:
            how = "run %s first (python -m lavis.train --cfg-path %s)" % (requires, requires)
        else:
            how = "run the previous stage first"
        message = "model.%s: no checkpoint at %s" % (key, path)
        if str(value) != path:
            message += " (model.%s=%s, relative to %s)" % (key, value, os.getcwd())
        found = sorted(glob.glob(os.path.join(os.path.dirname(path), "checkpoint_*.pth")))
        if found:
            message += "; that folder holds %s" % ", ".join(os.path.basename(f) for f in found)
        message += "; %s or point model.%s at its checkpoint (--options model.%s=/path/to/" \
                   "checkpoint.pth)" % (how, key, key)
        raise ConfigError(message)


def check_resume(run_cfg):
    """Raise ConfigError when ``run.resume_ckpt_path`` names a local file or job directory
    that holds no checkpoint (LAVIS finds out only after building everything)."""
    value = run_cfg.get("resume_ckpt_path", None)
    if not value or run_cfg.get("evaluate", False) or _is_remote(str(value)):
        return
    from lavis_xformer.runners.checkpoints import resolve_resume_path

    try:
        resolve_resume_path(os.path.abspath(os.path.expanduser(str(value))))
    except FileNotFoundError as e:
        raise ConfigError("%s; a run's job directory (or its output_dir's `latest` link) "
                          "resumes from its newest checkpoint" % e) from None

