"""Checks run on a run configuration before anything is built, downloaded or trained.

LAVIS 1.0.2 finds out about missing data late: its builders try to download annotation files
(which fails without network, or with a bare URL error), only warn about a missing image
folder, and the run then dies inside a DataLoader worker. These checks stop a run at once with
one message that names the dataset, the split, the expected path and the yaml key to set.
(The checks of the checkpoints a run reads are training/checkpoints.py's.)
"""
import os

from lavis.common.registry import registry
from lavis.common.utils import get_cache_path, is_url

from lavis_xformer.config_keys import ConfigError

LAVIS_SPLITS = ("train", "val", "test")  # the splits BaseDatasetBuilder.build() builds


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
        check_annotations(datasets_cfg)
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


# --- Annotation content ------------------------------------------------------------------------
#
# LAVIS reads annotation files with a bare json.load and indexes entries as it goes, so a file
# that is a dict, empty or truncated, or an entry without its caption, ends hours later in a
# traceback that names nothing (or, for a null caption, in a DataLoader worker). Here each
# annotation file of the run is read once before anything is built; a problem stops the run
# with the file, the entry's index and the field.

MAX_REPORTED = 5


def _fields_of(dataset_cls):
    """{field: (types, what)} that entries of ``dataset_cls``'s annotation must have."""
    from lavis.datasets.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset
    from lavis.datasets.datasets.image_text_pair_datasets import ImageTextPairDataset

    text, key = (str,), (str, int)
    if dataset_cls is None:
        return None
    if issubclass(dataset_cls, CaptionDataset):
        return {"image": (text, "a string path"), "caption": (text, "a string"),
                "image_id": (key, "a string or integer id")}
    if issubclass(dataset_cls, ImageTextPairDataset):
        return {"image": (text, "a string path"), "caption": (text, "a string")}
    if issubclass(dataset_cls, CaptionEvalDataset):
        return {"image": (text, "a string path"), "image_id": (key, "a string or integer id")}
    return None


def read_annotation_file(path, what="annotation file"):
    """The JSON list in ``path``; ConfigError naming the file when it is empty, truncated,
    not JSON, not a list or a list without entries."""
    import json

    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ConfigError("%s %s is empty (%d bytes); it must hold a JSON list of entries"
                          % (what, path, len(raw)))
    try:
        data = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError("%s %s is not valid JSON (truncated or damaged? %s)" % (
            what, path, " ".join(str(e).split()))) from None
    if not isinstance(data, list):
        raise ConfigError("%s %s holds a JSON %s; LAVIS reads a JSON list of entries "
                          "([{...}, {...}])" % (what, path, type(data).__name__.replace(
                              "dict", "object (a mapping)")))
    if not data:
        raise ConfigError("%s %s holds an empty list: no entries" % (what, path))
    return data


def entry_problems(data, fields, limit=MAX_REPORTED):
    """['entry 3: field 'caption' is null, must be a string', ...] (at most ``limit``)."""
    problems = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            problems.append("entry %d is a %s, not a mapping with %s" % (
                i, type(entry).__name__, ", ".join(repr(f) for f in fields)))
        else:
            for field, (types, what) in fields.items():
                if field not in entry:
                    problems.append("entry %d has no field %r (%s)" % (i, field, what))
                elif entry[field] is None:
                    problems.append("entry %d: field %r is null, must be %s" % (i, field, what))
                elif not isinstance(entry[field], types) or isinstance(entry[field], bool):
                    problems.append("entry %d: field %r is %s %r, must be %s" % (
                        i, field, type(entry[field]).__name__, entry[field], what))
                elif isinstance(entry[field], str) and not entry[field].strip():
                    problems.append("entry %d: field %r is an empty string" % (i, field))
        if len(problems) >= limit:
            break
    return problems


def check_annotations(datasets_cfg):
    """Read every annotation file of the run's datasets and raise ConfigError at the first
    file with bad content (see above). Builders may check their own format with a classmethod
    ``annotation_problems(data, split)`` returning such lines; LAVIS's caption and image-text
    builders are checked by the fields their dataset classes read."""
    for name in datasets_cfg:
        config = datasets_cfg[name]
        builder_cls = registry.get_builder_class(name)
        expected = getattr(builder_cls, "expected_data_paths", None)
        paths = expected(name, config) if expected else lavis_expected_data_paths(name, config)
        own = getattr(builder_cls, "annotation_problems", None)
        for split, kind, path, _ in paths:
            if kind != "annotation file" or not os.path.isfile(path):
                continue
            if own is None:
                dataset_cls = getattr(builder_cls, "train_dataset_cls" if split == "train"
                                      else "eval_dataset_cls", None)
                fields = _fields_of(dataset_cls)
                if fields is None:
                    continue  # a format this check does not know: LAVIS reads it as it is
            data = read_annotation_file(path, "annotation file (dataset '%s', split '%s')"
                                        % (name, split))
            problems = own(data, split) if own is not None else entry_problems(data, fields)
            if problems:
                more = " (first %d shown)" % MAX_REPORTED if len(problems) >= MAX_REPORTED else ""
                raise ConfigError("annotation file %s (dataset '%s', split '%s'): %s%s; fix or "
                                  "drop those entries" % (path, name, split, "; ".join(problems),
                                                          more))
