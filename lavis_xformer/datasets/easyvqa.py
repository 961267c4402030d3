"""easy-VQA, a small real VQA set that ships with a pip package, in two LAVIS builders:

* ``easyvqa_caption``: an image-caption set for pre-training (stage 1 and 2);
* ``easyvqa_vqa``: its questions, for open-ended VQA evaluation (the test split's images are
  never in the train split, so a model trained on ``easyvqa_caption`` train answers held-out
  images).

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

Caption items are ``{"image": processed tensor, "text_input": processed caption,
"image_id": int}``, as in LAVIS's image-text pre-training datasets.

Question items are ``{"image", "text_input": processed question (LAVIS's ``blip_question``),
"question_id": int (the question's index in its split's questions.json), "image_id": int,
"answer": str, "question_type": "yes/no" | "color" | "shape"}``, like LAVIS's VQA evaluation
sets plus the ground truth and the type, which the ``xformer_vqa`` task scores. Every split
also carries ``train_answer_counts``, the answer frequencies of the whole train split, from
which the task takes the majority-answer baseline.
"""
import importlib.util
import json
import logging
import os
import re
from collections import Counter, defaultdict

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.datasets.datasets.base_dataset import BaseDataset
from PIL import Image

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.datasets.checks import INTEGER, MAX_REPORTED, TEXT, entry_problems

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


def read_pair(question, answer):
    """What one (question, answer) pair says: [(is there, "color" | "shape", word)].
    ValueError for a question form this reader does not know."""
    question, answer = question.strip().lower(), answer.strip().lower()
    if answer in ("yes", "no"):
        target = _YES_NO_TARGET.search(question)
        if target is None:
            raise ValueError("cannot read the yes/no question %r" % question)
        word = target.group(1)
        return [((answer == "yes") != bool(_NEGATION.search(question)), _kind(word), word)]
    for pattern, answer_kind, named_kind in _OPEN_QUESTIONS:
        match = pattern.match(question)
        if match:
            return [(True, answer_kind, answer)] + (
                [(True, named_kind, match.group(1))] if named_kind is not None else [])
    raise ValueError("cannot read the question %r (answer %r)" % (question, answer))


def describe(qa_pairs):
    """(colour, shape) of one easy-VQA image from its (question, answer) pairs; None where
    the pairs do not determine it. Contradicting pairs raise ValueError."""
    present = {"color": set(), "shape": set()}
    absent = {"color": set(), "shape": set()}
    for question, answer in qa_pairs:
        for is_there, kind, word in read_pair(question, answer):
            (present if is_there else absent)[kind].add(word)

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


def question_type(question, answer):
    """"yes/no", "color" or "shape": what kind of answer the question asks for."""
    question, answer = question.strip().lower(), answer.strip().lower()
    if answer in ("yes", "no"):
        return "yes/no"
    for pattern, answer_kind, _ in _OPEN_QUESTIONS:
        if pattern.match(question):
            return answer_kind
    raise ValueError("cannot read the question %r (answer %r)" % (question, answer))


def read_questions(split_dir):
    """The split's questions.json: [[question, answer, image_id], ...] in file order."""
    with open(os.path.join(split_dir, "questions.json")) as f:
        return json.load(f)


def image_path(split_dir, image_id):
    return os.path.join(split_dir, "images", "%d.png" % image_id)


def _first_images(questions, max_images):
    """The ids of the first ``max_images`` images (by id) that have questions; all if None."""
    image_ids = sorted({int(image_id) for _, _, image_id in questions})
    return image_ids if max_images is None else image_ids[: int(max_images)]


def load_annotations(split_dir, max_images=None):
    """[{"image": path, "caption": str, "image_id": int}] for one split folder, by image id."""
    questions = read_questions(split_dir)
    pairs = defaultdict(list)
    for question, answer, image_id in questions:
        pairs[int(image_id)].append((question, answer))
    return [
        {"image": image_path(split_dir, i), "caption": caption_from_qa(pairs[i]), "image_id": i}
        for i in _first_images(questions, max_images)
    ]


def load_questions(split_dir, max_images=None, max_questions=None):
    """[{"image", "question", "answer", "question_id", "image_id", "question_type"}] for one
    split folder, in file order (grouped by image). ``question_id`` is the question's index in
    questions.json, so it stays the same whatever is kept. ``max_images`` keeps the questions
    of the first N images (by id), then ``max_questions`` the first N of those."""
    questions = read_questions(split_dir)
    keep = set(_first_images(questions, max_images))
    annotation = []
    for question_id, (question, answer, image_id) in enumerate(questions):
        if int(image_id) not in keep:
            continue
        if max_questions is not None and len(annotation) >= int(max_questions):
            break
        annotation.append({
            "image": image_path(split_dir, int(image_id)),
            "question": question,
            "answer": answer,
            "question_id": question_id,
            "image_id": int(image_id),
            "question_type": question_type(question, answer),
        })
    return annotation


def answer_counts(split_dir):
    """Counter of the answers of a whole split; None when the split has no questions.json."""
    if not os.path.isfile(os.path.join(split_dir, "questions.json")):
        return None
    return Counter(answer for _, answer, _ in read_questions(split_dir))


class EasyVQADataset(BaseDataset):
    """One split of easy-VQA; subclasses read its annotations and shape the items."""

    def __init__(self, vis_processor, text_processor, split_dir, **limits):
        super().__init__(vis_processor=vis_processor, text_processor=text_processor,
                         vis_root=os.path.join(split_dir, "images"), ann_paths=[])
        self.split_dir = split_dir
        self.annotation = self.load(split_dir, **limits)
        self._add_instance_ids()

    @staticmethod
    def load(split_dir, **limits):
        raise NotImplementedError

    def image(self, ann):
        return self.vis_processor(Image.open(ann["image"]).convert("RGB"))


class EasyVQACaptionDataset(EasyVQADataset):
    """One split of easy-VQA as (image, caption) pairs."""

    def __init__(self, vis_processor, text_processor, split_dir, max_images=None):
        super().__init__(vis_processor, text_processor, split_dir, max_images=max_images)

    @staticmethod
    def load(split_dir, max_images=None):
        return load_annotations(split_dir, max_images)

    def __getitem__(self, index):
        ann = self.annotation[index]
        return {
            "image": self.image(ann),
            "text_input": self.text_processor(ann["caption"]),
            "image_id": ann["image_id"],
        }


class EasyVQAQuestionDataset(EasyVQADataset):
    """One split of easy-VQA as (image, question, answer) triples."""

    train_answer_counts = None  # Counter of the whole train split's answers, set by the builder

    def __init__(self, vis_processor, text_processor, split_dir, max_images=None,
                 max_questions=None):
        super().__init__(vis_processor, text_processor, split_dir, max_images=max_images,
                         max_questions=max_questions)

    @staticmethod
    def load(split_dir, max_images=None, max_questions=None):
        return load_questions(split_dir, max_images, max_questions)

    def __getitem__(self, index):
        ann = self.annotation[index]
        return {
            "image": self.image(ann),
            "text_input": self.text_processor(ann["question"]),
            "question_id": ann["question_id"],
            "image_id": ann["image_id"],
            "answer": ann["answer"],
            "question_type": ann["question_type"],
        }


class EasyVQABuilder(BaseDatasetBuilder):
    """What both easy-VQA builders share: where the data are, what must exist, and building
    the splits listed in ``build_info.splits``.

    ``build_info.root``: folder holding ``<split>/images/*.png`` and ``<split>/questions.json``;
    null means the installed easy-vqa package's data; a relative path is taken from the
    current directory. ``build_info.max_images``: keep only the first N images (by image id)
    of each split; null keeps all. Subclasses name further limits in ``LIMITS``.
    """

    LIMITS = ("max_images",)
    ANSWER_PRIOR = False  # give every split the train split's answer counts
    # absolute: LAVIS joins relative paths to its own package directory
    DATASET_CONFIG_DICT = {}

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

    QUESTION_FIELDS = (("question", TEXT), ("answer", TEXT), ("image_id", INTEGER))

    @classmethod
    def annotation_problems(cls, path, data, split, run_cfg=None, limit=MAX_REPORTED):
        """checks.check_annotations: questions.json entries are [question, answer, image_id],
        each in a form the builder's reader knows (``read_problems``)."""
        return entry_problems(data, cls.QUESTION_FIELDS, limit) or cls.read_problems(data, limit)

    @staticmethod
    def _unread(i, question, answer):
        return ("entry %d: field 'question' %r (answer %r) is not a question form easy-VQA's "
                "reader knows (easyvqa.read_pair)" % (i, question, answer))

    def _download_data(self):
        pass  # nothing to download: the data ships with the easy-vqa package

    def build(self):
        self.build_processors()
        build_info = self.config.build_info
        root = self.data_root(build_info)
        limits = {key: build_info.get(key, None) for key in self.LIMITS}
        # the whole train split's answers (whatever is kept): the majority-answer baseline
        train_counts = answer_counts(os.path.join(root, "train")) if self.ANSWER_PRIOR else None
        datasets = {}
        for split in build_info.get("splits", ["train", "test"]):
            is_train = split == "train"
            kind = "train" if is_train else "eval"
            dataset_cls = self.train_dataset_cls if is_train else self.eval_dataset_cls
            datasets[split] = dataset_cls(
                vis_processor=self.vis_processors[kind],
                text_processor=self.text_processors[kind],
                split_dir=os.path.join(root, str(split)),
                **limits,
            )
            if self.ANSWER_PRIOR:
                datasets[split].train_answer_counts = train_counts
            logging.info("%s %s: %d %s from %s", self.registered_name(), split,
                         len(datasets[split]), self.ITEMS, root)
        return datasets

    @classmethod
    def registered_name(cls):
        names = [k for k, v in registry.mapping["builder_name_mapping"].items() if v is cls]
        return names[0] if names else cls.__name__


@registry.register_builder("easyvqa_caption")
class EasyVQACaptionBuilder(EasyVQABuilder):
    """easy-VQA as an image-caption set: one "a <colour> <shape>" caption per image."""

    train_dataset_cls = EasyVQACaptionDataset
    eval_dataset_cls = EasyVQACaptionDataset
    ITEMS = "images"

    @classmethod
    def read_problems(cls, data, limit):
        """Questions the caption reader cannot read, then images whose answers contradict."""
        problems, entries = [], defaultdict(list)
        for i, (_, _, image_id) in enumerate(data):
            entries[image_id].append(i)
        for image_id, indices in entries.items():
            try:
                describe([data[i][:2] for i in indices])
            except ValueError as e:  # a question it cannot read, or answers that contradict
                unread = []
                for i in indices:
                    try:
                        read_pair(*data[i][:2])
                    except ValueError:
                        unread.append(cls._unread(i, *data[i][:2]))
                problems += unread or ["image_id %d (entries %s): %s" % (
                    image_id, ", ".join(map(str, indices[:5])), e)]
            if len(problems) >= limit:
                break
        return problems[:limit]

    DATASET_CONFIG_DICT = {
        "default": os.path.join(PACKAGE_DIR, "configs", "datasets", "easyvqa", "defaults_cap.yaml"),
    }


@registry.register_builder("easyvqa_vqa")
class EasyVQAVQABuilder(EasyVQABuilder):
    """easy-VQA's questions for open-ended VQA: one item per question.

    ``build_info.max_questions``: keep the first N questions (in file order, i.e. the
    questions of the first images) of each split after ``max_images``; null keeps all (38575
    train / 9673 test questions).
    """

    train_dataset_cls = EasyVQAQuestionDataset
    eval_dataset_cls = EasyVQAQuestionDataset
    LIMITS = ("max_images", "max_questions")
    ANSWER_PRIOR = True
    ITEMS = "questions"

    @classmethod
    def read_problems(cls, data, limit):
        """Questions whose type (yes/no, color, shape) cannot be read."""
        problems = []
        for i, (question, answer, _) in enumerate(data):
            try:
                question_type(question, answer)
            except ValueError:
                problems.append(cls._unread(i, question, answer))
                if len(problems) >= limit:
                    break
        return problems

    DATASET_CONFIG_DICT = {
        "default": os.path.join(PACKAGE_DIR, "configs", "datasets", "easyvqa", "defaults_vqa.yaml"),
    }
