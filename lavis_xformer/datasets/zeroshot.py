"""Evaluation sets of the paper's supplementary fine-grained results (supplementary Tables 6
and 14), each read from its publisher's files unchanged, as LAVIS builders:

    flowers102_eval  Oxford Flowers-102 (VGG): ``imagelabels.mat`` (``labels``: 1..102 per
                     image) and ``setid.mat`` (``trnid``/``valid``/``tstid``: 1-based image
                     numbers); images ``jpg/image_%05d.jpg`` from ``102flowers.tgz``. Test split
                     = ``tstid`` (6,149 images; ``build_info.setid_key``). Class names: the
                     list CLIP's ``data/prompts.md`` uses (VGG publishes numbers only), in
                     the dataset yaml (``build_info.classnames``).
    food101_eval     Food-101 (ETH): ``food-101/meta/test.json`` ({class: ["class/id", ...]},
                     25,250 images) and ``food-101/meta/classes.txt`` (the label order);
                     images ``food-101/images/<class>/<id>.jpg``. Class names: the folder
                     names with "_" read as spaces ("apple_pie" -> "apple pie"), which is
                     CLIP's list, unless ``build_info.classnames`` gives them.
    sugarcrepe_eval  SugarCrepe (RAIVNLab/sugar-crepe ``data/``): one JSON per category
                     (``add_obj``, ``add_att``, ``replace_obj``, ``replace_att``,
                     ``replace_rel``, ``swap_obj``, ``swap_att``), each a dict
                     {id: {"filename", "caption", "negative_caption"}}; the category is the
                     file's name. Images: COCO val2017 (``filename``).

Classification items: ``image``, ``label`` (class index), ``image_id`` (record index); the
dataset carries ``classnames`` and ``templates`` (the prompts, "{}" replaced by a class name).
SugarCrepe items: ``image``, ``image_id`` (record index); the two captions and the category
stay in ``annotation``. Paths, ``max_items`` and the missing-file checks are as in
benchmarks.py.
"""
import os

from lavis.common.registry import registry

from lavis_xformer.datasets.benchmarks import (
    BenchmarkBuilder, BenchmarkDataset, _config, by_dataset_rule, read_json)
from lavis_xformer.datasets.checks import PATH, TEXT, entry_problems


def _loadmat(path, key):
    import scipy.io  # scipy comes with LAVIS's scikit-image; only the Flowers reader needs it

    try:
        data = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError) as e:
        raise ValueError("Flowers-102 file %s is not a readable MATLAB file (%s)" % (path, e)) from None
    if key not in data:
        raise ValueError("Flowers-102 file %s has no %r array (keys: %s)" % (
            path, key, ", ".join(k for k in data if not k.startswith("__"))))
    return [int(v) for v in data[key].reshape(-1)]


class ClassificationDataset(BenchmarkDataset):
    """Items: image, label, image_id. ``classnames`` and ``templates`` name the classes."""

    NAME = "classification"

    def __init__(self, *args, classnames=None, templates=None, **kwargs):
        self.given_classnames = list(classnames) if classnames else None
        super().__init__(*args, **kwargs)
        self.templates = list(templates or ["a photo of a {}."])
        if not all("{}" in t for t in self.templates):
            raise ValueError("%s: build_info.templates must each hold \"{}\" where the class name "
                             "goes; got %s" % (self.NAME, self.templates))
        labels = {r["label"] for r in self.annotation}
        if labels and max(labels) >= len(self.classnames):
            raise ValueError("%s: label %d but only %d class names (build_info.classnames)" % (
                self.NAME, max(labels), len(self.classnames)))

    def __getitem__(self, index):
        ann = self.annotation[index]
        return {"image": self.image(ann), "label": ann["label"], "image_id": ann["image_id"]}


class Flowers102Dataset(ClassificationDataset):
    NAME = "Flowers-102"

    def load(self, ann_paths, setid_key="tstid"):
        if len(ann_paths) != 2:
            raise ValueError("Flowers-102 needs two files, imagelabels.mat and setid.mat; got %s" % ann_paths)
        labels_file = next((p for p in ann_paths if "label" in os.path.basename(p)), ann_paths[0])
        setid_file = next(p for p in ann_paths if p != labels_file)
        labels = _loadmat(labels_file, "labels")
        numbers = _loadmat(setid_file, setid_key)
        if not self.given_classnames:
            raise ValueError("Flowers-102: build_info.classnames is empty; the dataset yaml "
                             "lists the 102 names")
        self.classnames = self.given_classnames
        records = []
        for n in numbers:
            if not 1 <= n <= len(labels):
                raise ValueError("Flowers-102: %s lists image %d, but %s labels only %d images" % (
                    setid_file, n, labels_file, len(labels)))
            records.append({"image_id": len(records), "image": "jpg/image_%05d.jpg" % n,
                            "label": labels[n - 1] - 1})
        return records


class Food101Dataset(ClassificationDataset):
    NAME = "Food-101"

    def load(self, ann_paths):
        split_file = next((p for p in ann_paths if p.endswith(".json")), None)
        classes_file = next((p for p in ann_paths if p.endswith(".txt")), None)
        if split_file is None or classes_file is None:
            raise ValueError("Food-101 needs meta/test.json (or train.json) and meta/classes.txt; got %s" % ann_paths)
        with open(classes_file) as f:
            folders = [line.strip() for line in f if line.strip()]
        self.classnames = self.given_classnames or [c.replace("_", " ") for c in folders]
        if len(self.classnames) != len(folders):
            raise ValueError("Food-101: %d class names but %s lists %d classes" % (
                len(self.classnames), classes_file, len(folders)))
        index = {c: i for i, c in enumerate(folders)}
        split = read_json(split_file, "Food-101 split file")
        if not isinstance(split, dict):
            raise ValueError("%s: expected Food-101's {class: [\"class/id\", ...]}" % split_file)
        records = []
        for folder in folders:  # the label order, so that records come class by class
            for entry in split.get(folder, []):
                records.append({"image_id": len(records), "image": entry + ".jpg",
                                "label": index[folder]})
        unknown = sorted(set(split) - set(index))
        if unknown:
            raise ValueError("%s: classes %s are not in %s" % (split_file, unknown[:3], classes_file))
        return records


class SugarCrepeDataset(BenchmarkDataset):
    """Items: image, image_id. ``annotation[i]``: caption, negative_caption, category."""

    NAME = "SugarCrepe"
    FIELDS = {"filename": PATH, "caption": TEXT, "negative_caption": TEXT}

    @classmethod
    def annotation_problems(cls, data, run_cfg=None):
        if not isinstance(data, dict):
            return ["a JSON list; SugarCrepe's files are {id: {filename, caption, "
                    "negative_caption}}"]
        return entry_problems(data, cls.FIELDS)

    def load(self, ann_paths):
        records = []
        for path in ann_paths:
            category = os.path.splitext(os.path.basename(path))[0]
            data = read_json(path, "SugarCrepe file")
            if not isinstance(data, dict):
                raise ValueError("%s: expected SugarCrepe's {id: {filename, caption, "
                                 "negative_caption}}" % path)
            for key, item in data.items():
                missing = {"filename", "caption", "negative_caption"} - set(item)
                if missing:
                    raise ValueError("%s: entry %s lacks %s" % (path, key, sorted(missing)))
                records.append({"image_id": len(records), "image": item["filename"],
                                "caption": item["caption"],
                                "negative_caption": item["negative_caption"],
                                "category": category, "source_id": key})
        return records

    def __getitem__(self, index):
        ann = self.annotation[index]
        return {"image": self.image(ann), "image_id": ann["image_id"]}


@registry.register_builder("flowers102_eval")
class Flowers102EvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = Flowers102Dataset
    OPTIONS = ("setid_key", "classnames", "templates")
    DATASET_CONFIG_DICT = _config("flowers102_eval")


@registry.register_builder("food101_eval")
class Food101EvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = Food101Dataset
    OPTIONS = ("classnames", "templates")
    DATASET_CONFIG_DICT = _config("food101_eval")


@registry.register_builder("sugarcrepe_eval")
class SugarCrepeEvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = SugarCrepeDataset
    annotation_problems = by_dataset_rule
    DATASET_CONFIG_DICT = _config("sugarcrepe_eval")
