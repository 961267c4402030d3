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


def check_datasets(datasets_cfg, run_cfg=None):
    """Raise ConfigError naming every missing annotation file or data folder of the run's
    datasets (their builder defaults merged with the run file and --options), then the first
    annotation file with bad content (``run_cfg``: what the task reads, e.g. run.metric)."""
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
        check_annotations(datasets_cfg, run_cfg)
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
# traceback that names nothing (or, for a null caption, in a DataLoader worker, or after the
# whole evaluation has generated). Here each annotation file of the run is read once before
# anything is built; a problem stops the run with the file, the entry's index and the field.
#
# What is checked is one rule per dataset: the fields its code reads, each with the kind of
# value it must hold (_lavis_rules below for LAVIS's dataset classes; the plugin's builders
# declare theirs next to their readers). Fields the code does not read are never demanded.

MAX_REPORTED = 5


class Kind:
    """What a field's value must be: ``what`` (the words of the message) and ``ok(value)``.
    ``item``: the kind of each element when the value is a list (a list must not be empty).
    ``optional``: the field may be absent or null (the reader has a default for it)."""

    def __init__(self, what, ok, item=None, optional=False):
        self.what, self.ok, self.item, self.optional = what, ok, item, optional


def _of_type(*types):
    return lambda v: isinstance(v, types) and not isinstance(v, bool)


def optional(kind):
    return Kind(kind.what, kind.ok, kind.item, optional=True)


TEXT = Kind("a string", _of_type(str))
PATH = Kind("a string path", _of_type(str))
ID = Kind("a string or integer id", _of_type(str, int))
INTEGER = Kind("an integer", _of_type(int))
TEXTS = Kind("a non-empty list of strings", _of_type(list), item=TEXT)
# a string iterated as a list would give its characters: only where the reader wraps a string
TEXT_OR_TEXTS = Kind("a string or a non-empty list of strings", _of_type(str, list), item=TEXT)


def _lavis_rules():
    """(LAVIS dataset class, {field: Kind}) of what each class reads from an entry; the most
    specific class first (the first one the builder's class is a subclass of applies)."""
    from lavis.datasets.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset
    from lavis.datasets.datasets.coco_caption_datasets import COCOCapEvalDataset, NoCapsEvalDataset
    from lavis.datasets.datasets.coco_vqa_datasets import COCOVQADataset
    from lavis.datasets.datasets.image_text_pair_datasets import ImageTextPairDataset
    from lavis.datasets.datasets.retrieval_datasets import RetrievalDataset, RetrievalEvalDataset
    from lavis.datasets.datasets.vg_vqa_datasets import VGVQADataset

    return (
        # the image id comes from the file name: Karpathy val/test files need no image_id
        (COCOCapEvalDataset, {"image": PATH}),
        (NoCapsEvalDataset, {"image": PATH, "img_id": ID}),
        (CaptionEvalDataset, {"image": PATH, "image_id": ID}),
        (CaptionDataset, {"image": PATH, "caption": TEXT, "image_id": ID}),
        (ImageTextPairDataset, {"image": PATH, "caption": TEXT}),
        # every caption of an image is a text to retrieve (a string would give its characters)
        (RetrievalEvalDataset, {"image": PATH, "caption": TEXTS}),
        (RetrievalDataset, {"image": PATH, "caption": TEXT, "image_id": ID}),
        # the answers are weighted by their share of the list
        (COCOVQADataset, {"image": PATH, "question": TEXT, "answer": TEXTS}),
        (VGVQADataset, {"image": PATH, "question": TEXT, "answer": TEXT}),
    )


def _fields_of(dataset_cls):
    """{field: Kind} that entries of ``dataset_cls``'s annotation must have; None when the
    class is not one of _lavis_rules' (its format is not known here)."""
    if dataset_cls is None:
        return None
    return next((fields for cls, fields in _lavis_rules() if issubclass(dataset_cls, cls)), None)


def read_annotation_file(path, what="annotation file", mapping_ok=False):
    """The JSON list in ``path`` (or a JSON object, where ``mapping_ok``); ConfigError naming
    the file when it is empty, truncated, not JSON, not a list or a list without entries."""
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
    if not isinstance(data, list) and not (mapping_ok and isinstance(data, dict)):
        raise ConfigError("%s %s holds a JSON %s; LAVIS reads a JSON list of entries "
                          "([{...}, {...}])" % (what, path, type(data).__name__.replace(
                              "dict", "object (a mapping)")))
    if not data:
        raise ConfigError("%s %s holds an empty %s: no entries" % (
            what, path, "list" if isinstance(data, list) else "object"))
    return data


def _value_problem(value, kind):
    """Why ``value`` is not of ``kind`` ("is null, must be a string", "is an empty string",
    "item 1 is int 7, must be a string"), or None."""
    if value is None:
        return "is null, must be %s" % kind.what
    if not kind.ok(value):
        return "is %s %r, must be %s" % (type(value).__name__, value, kind.what)
    if isinstance(value, str):
        return None if value.strip() else "is an empty string"
    if kind.item is not None and isinstance(value, list):
        if not value:
            return "is an empty list, must be %s" % kind.what
        for j, item in enumerate(value):
            problem = _value_problem(item, kind.item)
            if problem:
                return "item %d %s" % (j, problem)
    return None


def entry_problems(data, fields, limit=MAX_REPORTED, entry="entry"):
    """['entry 3: field 'caption' is null, must be a string', ...] (at most ``limit``).
    ``fields``: {field: Kind} for entries that are mappings, or ((name, Kind), ...) for
    entries that are lists of those values in that order (easy-VQA's [question, answer,
    image_id]). ``data``: a list, or a mapping whose keys name the entries."""
    problems = []
    positional = isinstance(fields, tuple)
    rule = fields if positional else tuple(fields.items())
    for i, value in (data.items() if isinstance(data, dict) else enumerate(data)):
        label = "%s %s" % (entry, i if isinstance(i, int) else repr(i))
        if positional:
            values = dict(zip(dict(rule), value)) if (
                isinstance(value, list) and len(value) == len(rule)) else None
            if values is None:
                problems.append("%s is %r, not [%s]" % (label, value, ", ".join(dict(rule))))
        else:
            values = value if isinstance(value, dict) else None
            if values is None:
                problems.append("%s is a %s, not a mapping with %s" % (
                    label, type(value).__name__, ", ".join(repr(f) for f in fields)))
        for field, kind in (rule if values is not None else ()):
            if len(problems) >= limit:
                break
            if field not in values:
                if not kind.optional:
                    problems.append("%s has no field %r (%s)" % (label, field, kind.what))
                continue
            if values[field] is None and kind.optional:
                continue
            problem = _value_problem(values[field], kind)
            if problem:
                problems.append("%s: field %r %s" % (label, field, problem))
        if len(problems) >= limit:
            break
    return problems[:limit]


def check_annotations(datasets_cfg, run_cfg=None):
    """Read every annotation file of the run's datasets and raise ConfigError at the first
    file with bad content (see above). A builder may check its own formats with a classmethod
    ``annotation_problems(path, data, split, run_cfg)`` returning such lines
    (``READS_MAPPINGS``: its files may be JSON objects); LAVIS's builders are checked by the
    fields their dataset classes read (_lavis_rules); others are not read here."""
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
            data = read_annotation_file(path, "annotation file (dataset '%s', split '%s')" % (
                name, split), mapping_ok=getattr(builder_cls, "READS_MAPPINGS", False))
            problems = (own(path, data, split, run_cfg) if own is not None
                        else entry_problems(data, fields))
            if problems:
                more = " (first %d shown)" % MAX_REPORTED if len(problems) >= MAX_REPORTED else ""
                raise ConfigError("annotation file %s (dataset '%s', split '%s'): %s%s; fix or "
                                  "drop those entries" % (path, name, split, "; ".join(problems),
                                                          more))
