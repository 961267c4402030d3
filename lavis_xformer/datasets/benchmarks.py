"""Evaluation sets of the paper's zero-shot benchmarks, each read from its public files
unchanged, as LAVIS builders (one dataset key per benchmark):

    vqav2_eval         VQAv2 val: v2_OpenEnded_mscoco_val2014_questions.json +
                       v2_mscoco_val2014_annotations.json (10 human answers, answer types),
                       COCO val2014 images.
    okvqa_eval         OK-VQA (its test set, on COCO val2014): OpenEnded_mscoco_val2014_questions.json
                       + mscoco_val2014_annotations.json.
    gqa_eval           GQA test-dev balanced: testdev_balanced_questions.json as GQA publishes it
                       (a dict by question id with "types"), or LAVIS's converted list.
    gvtbench           GVTBench OC or MCI: a JSON list of {"image_id", "text_in", "text_out",
                       "n_obj_exist"}; COCO images by id (val2017 file names), VCR images by
                       relative path.
    coco_caption_eval  COCO Karpathy test: coco_karpathy_test.json (LAVIS/BLIP's list of
                       {"image", "caption": [5 captions]}), COCO images.
    nocaps_eval        NoCaps val: nocaps_val_4500_captions.json (COCO format with "domain"),
                       Open Images val images.
    flickr30k_eval     Flickr30K 1K test for retrieval: LAVIS's flickr30k builder, test split only.

Paths follow LAVIS's layout: ``build_info.annotations.<split>.storage`` (a file or a list)
and ``build_info.images.storage``; relative paths are taken under LAVIS's ``cache_root``, as
LAVIS does. Only the splits listed are built, and nothing is downloaded: a missing file stops
the run at launch with the key to set, and so does an entry that lacks what the reader takes
from it, or holds null there (datasets/checks.py; each dataset's ``annotation_problems``). ``build_info.max_items`` keeps the
first N questions (images, for captioning) of each split; null keeps all.

Items are what the tasks need in a batch (``image``, ``text_input``, ``question_id`` or
``image_id``); the ground truth stays in the dataset's ``annotation`` records, where the tasks
look it up by id (VQAv2's 10 answers do not collate).
"""
import json
import logging
import os
import re

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.datasets.builders.retrieval_builder import Flickr30kBuilder
from lavis.datasets.datasets.base_dataset import BaseDataset
from PIL import Image

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.datasets.checks import (
    ID, LAVIS_SPLITS, PATH, TEXT, TEXT_OR_TEXTS, Kind, _as_list, _of_type, _storage_path,
    entry_problems, optional)
from lavis_xformer.scoring import gvt_true_count, gvt_yes_no_truth, n_obj_bin

CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs", "datasets", "benchmarks")


def read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError("%s %s is not valid JSON (%s)" % (what, path, e)) from None


class BenchmarkDataset(BaseDataset):
    """One evaluation split: ``load`` turns the files into annotation records, each with an
    ``image`` path relative to ``vis_root``. ``annotation_problems(data, run_cfg)``, where a
    class has it, checks one of its files' content before anything is built (checks.py)."""

    NAME = "benchmark"

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths, max_items=None,
                 **options):
        super().__init__(vis_processor=vis_processor, text_processor=text_processor,
                         vis_root=vis_root, ann_paths=[])
        self.ann_paths = list(ann_paths)
        self.annotation = self.load(self.ann_paths, **options)
        if max_items is not None:
            self.annotation = self.annotation[: int(max_items)]
        self._add_instance_ids()

    def load(self, ann_paths, **options):
        raise NotImplementedError

    def image(self, ann):
        path = os.path.join(self.vis_root, str(ann["image"]))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                "%s: image %s not found (record %s); set build_info.images.storage to the folder "
                "that holds it" % (self.NAME, path, ann.get("question_id", ann.get("image_id"))))
        return self.vis_processor(Image.open(path).convert("RGB"))


class QuestionDataset(BenchmarkDataset):
    """Items: image, text_input (the processed question), question_id."""

    def __getitem__(self, index):
        ann = self.annotation[index]
        return {"image": self.image(ann), "text_input": self.text_processor(ann["question"]),
                "question_id": ann["question_id"]}


# ------------------------------------------------------------------ VQAv2 / OK-VQA

def load_official_vqa(ann_paths, image_pattern):
    """Questions + annotations files of the official VQA format (VQAv2, OK-VQA), in either
    order -> records with question_id, image_id, image, question, answers (the human answers),
    question_type (the answer type: "yes/no", "number", "other")."""
    if len(ann_paths) != 2:
        raise ValueError("VQA evaluation needs two annotation files, the questions and the "
                         "annotations (official VQA format); got %s" % ann_paths)
    files = [read_json(p, "VQA annotation file") for p in ann_paths]
    questions = next((f["questions"] for f in files if "questions" in f), None)
    annotations = next((f["annotations"] for f in files if "annotations" in f), None)
    if questions is None or annotations is None:
        raise ValueError("%s: expected one file with a \"questions\" list and one with an "
                         "\"annotations\" list (official VQA format)" % ann_paths)
    by_id = {a["question_id"]: a for a in annotations}
    records = []
    for q in questions:
        a = by_id.get(q["question_id"])
        if a is None:
            raise ValueError("question %s has no entry in the annotations file" % q["question_id"])
        records.append({
            "question_id": q["question_id"], "image_id": q["image_id"],
            "image": image_pattern.format(q["image_id"]), "question": q["question"],
            "answers": [x["answer"] for x in a["answers"]],
            "question_type": a.get("answer_type", "other"),
        })
    return records


class OfficialVQADataset(QuestionDataset):
    NAME = "VQA"

    def load(self, ann_paths, image_pattern="val2014/COCO_val2014_{:012d}.jpg"):
        return load_official_vqa(ann_paths, image_pattern)


# ------------------------------------------------------------------ GQA

def load_gqa(path):
    """GQA questions: the official dict {question id: {"imageId", "question", "answer",
    "types": {"structural", "semantic", ...}}} (types become question_type
    ["structural/<t>", "semantic/<t>"]), or LAVIS's converted list of {"image", "question",
    "answer", "question_id"}."""
    data = read_json(path, "GQA questions file")
    records = []
    if isinstance(data, dict):
        for qid, q in data.items():
            types = q.get("types") or {}
            records.append({
                "question_id": str(qid), "image_id": q["imageId"], "image": q["imageId"] + ".jpg",
                "question": q["question"], "answer": q["answer"],
                "question_type": ["%s/%s" % (k, types[k]) for k in ("structural", "semantic")
                                  if types.get(k)],
            })
    elif isinstance(data, list):
        for q in data:
            records.append({"question_id": str(q["question_id"]), "image": q["image"],
                            "question": q["question"], "answer": q["answer"]})
    else:
        raise ValueError("%s: expected GQA's dict of questions or a list" % path)
    return records


class GQADataset(QuestionDataset):
    NAME = "GQA"
    # what load_gqa reads: GQA's own dict by question id, or LAVIS's converted list
    OFFICIAL_FIELDS = {"imageId": TEXT, "question": TEXT, "answer": TEXT}
    LIST_FIELDS = {"question_id": ID, "image": PATH, "question": TEXT, "answer": TEXT}

    def load(self, ann_paths):
        return [r for p in ann_paths for r in load_gqa(p)]

    @classmethod
    def annotation_problems(cls, data, run_cfg=None):
        if isinstance(data, dict):
            return entry_problems(data, cls.OFFICIAL_FIELDS, entry="question")
        return entry_problems(data, cls.LIST_FIELDS)


# ------------------------------------------------------------------ GVTBench OC / MCI

def gvt_image_path(image_id):
    """COCO images come by numeric id (val2017 name: 12 digits + .jpg), VCR images by their
    path relative to the VCR image folder."""
    if isinstance(image_id, int) or re.fullmatch(r"\d+", str(image_id)):
        return "%012d.jpg" % int(image_id)
    return str(image_id)


def _reads(parse):
    """True where ``parse(value)`` does not raise ValueError (the scorer's own reading)."""
    def ok(value):
        try:
            parse(value)
        except ValueError:
            return False
        return True
    return ok


# GVTBench's ground truth by run.metric: count.py reads int(text_out), multiclass.py looks for
# "Yes"/"No" in it; other metrics compare str(text_out). A null would be scored as "None".
GVT_COUNT = Kind("a count (an integer, or a string of one such as \"3\")",
                 lambda v: type(v) is int or (isinstance(v, str) and _reads(gvt_true_count)(v)))
GVT_ANSWERS = {"oc": GVT_COUNT,
               "mci": Kind("\"Yes.\" or \"No.\"",
                           lambda v: isinstance(v, str) and _reads(gvt_yes_no_truth)(v))}
GVT_FIELDS = {"image_id": ID, "text_in": TEXT,
              "text_out": Kind("a string or an integer", _of_type(str, int)),
              "n_obj_exist": optional(GVT_COUNT)}


def load_gvtbench(path):
    data = read_json(path, "GVTBench file")
    if not isinstance(data, list):
        raise ValueError("%s: expected GVTBench's JSON list of {image_id, text_in, text_out, "
                         "n_obj_exist}" % path)
    records = []
    for i, item in enumerate(data):
        missing = {"image_id", "text_in", "text_out"} - set(item)
        if missing:
            raise ValueError("%s: entry %d lacks %s" % (path, i, sorted(missing)))
    problems = entry_problems(data, GVT_FIELDS, limit=1)
    if problems:  # e.g. a null answer, which str() below would turn into "None"
        raise ValueError("%s: %s" % (path, problems[0]))
    for i, item in enumerate(data):
        record = {"question_id": i, "image_id": item["image_id"],
                  "image": gvt_image_path(item["image_id"]), "question": item["text_in"],
                  "answer": str(item["text_out"])}
        if item.get("n_obj_exist") is not None:
            record["n_obj_exist"] = int(item["n_obj_exist"])
            record["question_type"] = "n_obj_exist " + n_obj_bin(item["n_obj_exist"])
        records.append(record)
    return records


class GVTBenchDataset(QuestionDataset):
    NAME = "GVTBench"

    @classmethod
    def annotation_problems(cls, data, run_cfg=None):
        metric = run_cfg.get("metric", None) if run_cfg is not None else None
        answer = GVT_ANSWERS.get(metric, GVT_FIELDS["text_out"])
        return entry_problems(data, dict(GVT_FIELDS, text_out=answer))

    def load(self, ann_paths):
        records = [r for p in ann_paths for r in load_gvtbench(p)]
        for i, r in enumerate(records):  # unique ids over several files
            r["question_id"] = i
        return records


# ------------------------------------------------------------------ captioning

def _coco_image_id(name):
    digits = re.findall(r"\d+", os.path.basename(str(name)))
    return int(digits[-1]) if digits else None


def load_captions(path):
    """Reference captions per image: records with image_id, image, captions (list), and
    domain where given. Reads a COCO-format file ({"images": [{"id", "file_name",
    "domain"?}], "annotations": [{"image_id", "caption"}]}: NoCaps) or the Karpathy list of
    {"image", "caption": [...]} (image id from the COCO file name)."""
    data = read_json(path, "caption file")
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        captions = {}
        for a in data["annotations"]:
            captions.setdefault(a["image_id"], []).append(a["caption"])
        records = []
        for img in data["images"]:
            record = {"image_id": img["id"], "image": img["file_name"],
                      "captions": captions.get(img["id"], [])}
            if "domain" in img:
                record["domain"] = img["domain"]
            records.append(record)
        return records
    if isinstance(data, list):
        records = []
        for i, item in enumerate(data):
            caps = item.get("caption", [])
            image_id = item.get("image_id", _coco_image_id(item["image"]))
            records.append({"image_id": i if image_id is None else image_id,
                            "image": item["image"], "captions": _as_list(caps)})
        return records
    raise ValueError("%s: expected a COCO-format caption file or a Karpathy-style list" % path)


class CaptionEvalDataset(BenchmarkDataset):
    """Items: image, image_id. References: ``annotation[i]["captions"]``."""

    NAME = "captioning"
    # what load_captions reads: a Karpathy-style list (the id comes from the file name where
    # an entry has none), or a COCO-format file's images and annotations
    KARPATHY_FIELDS = {"image": PATH, "caption": TEXT_OR_TEXTS, "image_id": optional(ID)}
    COCO_FIELDS = {"images": {"id": ID, "file_name": PATH, "domain": optional(TEXT)},
                   "annotations": {"image_id": ID, "caption": TEXT}}

    @classmethod
    def annotation_problems(cls, data, run_cfg=None):
        if isinstance(data, list):
            return entry_problems(data, cls.KARPATHY_FIELDS)
        lists = [k for k in cls.COCO_FIELDS if not isinstance(data.get(k), list)]
        if lists:
            return ["a JSON object without %s list%s (COCO format: {\"images\": [...], "
                    "\"annotations\": [...]}); or give a Karpathy-style list" % (
                        " and ".join(repr(k) for k in lists), "s" if len(lists) > 1 else "")]
        return [p for key, fields in cls.COCO_FIELDS.items()
                for p in entry_problems(data[key], fields, entry="%s entry" % key)]

    def load(self, ann_paths):
        records = [r for p in ann_paths for r in load_captions(p)]
        ids = [r["image_id"] for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError("%s: image ids repeat; one record per image expected" % ann_paths)
        empty = [r["image_id"] for r in records if not r["captions"]]
        if empty:
            raise ValueError("%s: %d images have no reference caption (e.g. image id %s); "
                             "use the file with the ground-truth captions" % (
                                 ann_paths, len(empty), empty[0]))
        return records

    def __getitem__(self, index):
        ann = self.annotation[index]
        return {"image": self.image(ann), "image_id": ann["image_id"]}


# ------------------------------------------------------------------ builders

class BenchmarkBuilder(BaseDatasetBuilder):
    """Builds the splits listed under ``build_info.annotations`` from local files only."""

    eval_dataset_cls = None
    OPTIONS = ()  # further build_info keys handed to the dataset
    READS_MAPPINGS = True  # GQA's and COCO-format files are JSON objects

    def _download_data(self):
        pass  # nothing is downloaded: checks.check_datasets names missing files at launch

    def build(self):
        self.build_processors()
        build_info = self.config.build_info
        vis_root = _storage_path(build_info.images.storage)
        options = {k: build_info.get(k) for k in self.OPTIONS if build_info.get(k, None) is not None}
        datasets = {}
        for split, info in (build_info.annotations or {}).items():
            if split not in LAVIS_SPLITS or not info:
                continue
            ann_paths = [_storage_path(p) for p in _as_list(info.storage)]
            datasets[split] = self.eval_dataset_cls(
                vis_processor=self.vis_processors["eval"],
                text_processor=self.text_processors["eval"],
                vis_root=vis_root, ann_paths=ann_paths,
                max_items=build_info.get("max_items", None), **options)
            logging.info("%s %s: %d records from %s", self.eval_dataset_cls.NAME, split,
                         len(datasets[split]), ", ".join(ann_paths))
        return datasets


def _config(name):
    return {"default": os.path.join(CONFIG_DIR, name + ".yaml")}


@classmethod
def by_dataset_rule(cls, path, data, split, run_cfg=None):
    """A builder's ``annotation_problems`` (checks.check_annotations) where its dataset class
    has a rule; builders without one (e.g. Flowers-102's .mat files) are not read there."""
    return cls.eval_dataset_cls.annotation_problems(data, run_cfg)


@registry.register_builder("vqav2_eval")
class VQAv2EvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = OfficialVQADataset
    OPTIONS = ("image_pattern",)
    DATASET_CONFIG_DICT = _config("vqav2_eval")


@registry.register_builder("okvqa_eval")
class OKVQAEvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = OfficialVQADataset
    OPTIONS = ("image_pattern",)
    DATASET_CONFIG_DICT = _config("okvqa_eval")


@registry.register_builder("gqa_eval")
class GQAEvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = GQADataset
    annotation_problems = by_dataset_rule
    DATASET_CONFIG_DICT = _config("gqa_eval")


@registry.register_builder("gvtbench")
class GVTBenchBuilder(BenchmarkBuilder):
    eval_dataset_cls = GVTBenchDataset
    annotation_problems = by_dataset_rule
    DATASET_CONFIG_DICT = _config("gvtbench")


@registry.register_builder("coco_caption_eval")
class COCOCaptionEvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = CaptionEvalDataset
    annotation_problems = by_dataset_rule
    DATASET_CONFIG_DICT = _config("coco_caption_eval")


@registry.register_builder("nocaps_eval")
class NoCapsEvalBuilder(BenchmarkBuilder):
    eval_dataset_cls = CaptionEvalDataset
    annotation_problems = by_dataset_rule
    DATASET_CONFIG_DICT = _config("nocaps_eval")


@registry.register_builder("flickr30k_eval")
class Flickr30kEvalBuilder(Flickr30kBuilder):
    """LAVIS's flickr30k builder (RetrievalEvalDataset: ``text``, ``img2txt``, ``txt2img``)
    with the test split alone, so that the train and val files need not exist."""

    DATASET_CONFIG_DICT = _config("flickr30k_eval")

    def _download_data(self):
        pass  # nothing is downloaded: checks.check_datasets names missing files at launch
