"""easy-VQA as a small, real image-caption set (builder ``easyvqa_caption``).

The ``easy-vqa`` pip package ships 64x64 images of one coloured shape each (4000 train, 1000
test) with ~48k question/answer pairs (``questions.json``: ``[question, answer, image_id]``)
about the shape's colour and kind. Every image gets one caption, "a <colour> <shape>"
(e.g. "a blue rectangle"), read off its own question/answer pairs:

* open questions state the answer directly ("what color is the triangle?" -> blue, which also
  names the shape; "what is the red shape?" -> circle; "what shape is present?" -> circle);
* yes/no questions state that a colour or shape is present or absent ("is there not a teal
  shape?" answered "no" means a teal shape is present);
* when no pair names the colour (or the shape) outright, it is taken by elimination if the
  absent ones leave exactly one candidate; otherwise the caption leaves it out ("a triangle",
  "a red shape").

Items are ``{"image": processed tensor, "text_input": processed caption, "image_id": int}``,
as in LAVIS's image-text pre-training datasets.
"""
import importlib.util
import json
import logging
import os
import re
from collections import defaultdict

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.datasets.datasets.base_dataset import BaseDataset
from PIL import Image

from lavis_xformer import PACKAGE_DIR

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
_WORDS = "|".join(COLORS + SHAPES)

# open questions: (pattern, what the answer gives, what the question itself names)
_OPEN_QUESTIONS = (
    (re.compile(r"^what (?:color is|is the color of) the shape\?$"), "color", None),
    (re.compile(r"^what (?:color is|is the color of) the (%s)\?$" % "|".join(SHAPES)),
     "color", "shape"),
    (re.compile(r"^what shape (?:is in the image|does the image contain|is present)\?$"),
     "shape", None),
    (re.compile(r"^what is the (%s) shape\?$" % "|".join(COLORS)), "shape", "color"),
)
_YES_NO_TARGET = re.compile(r"\b(%s)\b" % _WORDS)
_NEGATION = re.compile(r"\b(?:not|no)\b")


def _kind(word):
    return "color" if word in COLORS else "shape"


def describe(qa_pairs):
    """(colour, shape) of one easy-VQA image from its (question, answer) pairs; None where
    the pairs do not determine it. Contradicting pairs raise ValueError."""
    present = {"color": set(), "shape": set()}
    absent = {"color": set(), "shape": set()}
    for question, answer in qa_pairs:
        question, answer = question.strip().lower(), answer.strip().lower()
        if answer in ("yes", "no"):
            target = _YES_NO_TARGET.search(question)
            if target is None:
                raise ValueError("cannot read the yes/no question %r" % question)
            word = target.group(1)
            is_there = (answer == "yes") != bool(_NEGATION.search(question))
            (present if is_there else absent)[_kind(word)].add(word)
            continue
        for pattern, answer_kind, named_kind in _OPEN_QUESTIONS:
            match = pattern.match(question)
            if match:
                present[answer_kind].add(answer)
                if named_kind is not None:
                    present[named_kind].add(match.group(1))
                break
        else:
            raise ValueError("cannot read the question %r (answer %r)" % (question, answer))

    result = []
    for kind, vocabulary in (("color", COLORS), ("shape", SHAPES)):
        if present[kind] & absent[kind] or len(present[kind]) > 1:
            raise ValueError("contradicting %s answers: present %s, absent %s" % (
                kind, sorted(present[kind]), sorted(absent[kind])))
        if present[kind]:
            result.append(next(iter(present[kind])))
            continue
        left = [w for w in vocabulary if w not in absent[kind]]
        result.append(left[0] if len(left) == 1 else None)
    return tuple(result)


def caption_from_qa(qa_pairs):
    """Caption of one easy-VQA image, e.g. "a blue rectangle"."""
    color, shape = describe(qa_pairs)
    return "a %s %s" % (color or "", shape or "shape") if color else "a %s" % (shape or "shape")


def package_data_root():
    """The easy-vqa package's data folder, or None when the package is not installed."""
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_annotations(split_dir, max_images=None):
    """[{"image": path, "caption": str, "image_id": int}] for one split folder, by image id."""
    with open(os.path.join(split_dir, "questions.json")) as f:
        questions = json.load(f)
    pairs = defaultdict(list)
    for question, answer, image_id in questions:
        pairs[int(image_id)].append((question, answer))
    image_ids = sorted(pairs)
    if max_images is not None:
        image_ids = image_ids[: int(max_images)]
    return [
        {"image": os.path.join(split_dir, "images", "%d.png" % i),
         "caption": caption_from_qa(pairs[i]),
         "image_id": i}
        for i in image_ids
    ]


class EasyVQACaptionDataset(BaseDataset):
    """One split of easy-VQA as (image, caption) pairs."""

    def __init__(self, vis_processor, text_processor, split_dir, max_images=None):
        super().__init__(vis_processor=vis_processor, text_processor=text_processor,
                         vis_root=os.path.join(split_dir, "images"), ann_paths=[])
        self.annotation = load_annotations(split_dir, max_images)
        self._add_instance_ids()

    def __getitem__(self, index):
        ann = self.annotation[index]
        image = Image.open(ann["image"]).convert("RGB")
        return {
            "image": self.vis_processor(image),
            "text_input": self.text_processor(ann["caption"]),
            "image_id": ann["image_id"],
        }


@registry.register_builder("easyvqa_caption")
class EasyVQACaptionBuilder(BaseDatasetBuilder):
    """Builds the splits listed in ``build_info.splits`` (train, test) of easy-VQA.

    ``build_info.root``: folder holding ``<split>/images/*.png`` and ``<split>/questions.json``;
    null means the installed easy-vqa package's data; a relative path is taken from the
    current directory. ``build_info.max_images``: keep only the first N images (by image id)
    of each split; null keeps all.
    """

    train_dataset_cls = EasyVQACaptionDataset
    eval_dataset_cls = EasyVQACaptionDataset

    # absolute: LAVIS joins relative paths to its own package directory
    DATASET_CONFIG_DICT = {
        "default": os.path.join(PACKAGE_DIR, "configs", "datasets", "easyvqa", "defaults_cap.yaml"),
    }

    @staticmethod
    def data_root(build_info):
        root = build_info.get("root", None)
        if root:
            return os.path.abspath(os.path.expanduser(str(root)))
        return package_data_root()

    @classmethod
    def expected_data_paths(cls, name, config):
        """What must exist before building: [(split, kind, path, what to set)]."""
        build_info = config.get("build_info", {}) or {}
        fix = ("set `datasets.%s.build_info.root` to a folder holding <split>/images/*.png and "
               "<split>/questions.json for the splits %s" % (
                   name, list(build_info.get("splits", ["train", "test"]))))
        root = cls.data_root(build_info)
        if root is None:
            return [("all", "data folder", "<the easy-vqa package's data: package not installed>",
                     fix + ", or install the package: pip install easy-vqa==1.0")]
        if not os.path.isdir(root):
            return [("all", "data folder", root, fix)]
        paths = []
        for split in build_info.get("splits", ["train", "test"]):
            split_dir = os.path.join(root, str(split))
            paths.append((split, "annotation file", os.path.join(split_dir, "questions.json"), fix))
            paths.append((split, "image directory", os.path.join(split_dir, "images"), fix))
        return paths

    def _download_data(self):
        pass  # nothing to download: the data ships with the easy-vqa package

    def build(self):
        self.build_processors()
        build_info = self.config.build_info
        root = self.data_root(build_info)
        max_images = build_info.get("max_images", None)
        datasets = {}
        for split in build_info.get("splits", ["train", "test"]):
            is_train = split == "train"
            kind = "train" if is_train else "eval"
            dataset_cls = self.train_dataset_cls if is_train else self.eval_dataset_cls
            datasets[split] = dataset_cls(
                vis_processor=self.vis_processors[kind],
                text_processor=self.text_processors[kind],
                split_dir=os.path.join(root, str(split)),
                max_images=max_images,
            )
            logging.info("easyvqa_caption %s: %d images from %s", split,
                         len(datasets[split]), root)
        return datasets
