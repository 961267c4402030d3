"""``mini_world_caption``: the miniature world's images with their captions, for stages 1 and 2.

``build_info.root``: the world folder (default ``output/mini/assets/world``, the link that
``python -m lavis_xformer.world.build`` publishes; relative to the current directory).
``build_info.splits``: the splits to build. ``build_info.text``:

    caption      one item per image: its COCO-like caption (stage 1; stage 2 as BLIP-2 does).
    caption+qa   also one item per train-split question (stage 2), so that the small LLM
                 learns to answer from the visual prefix. The questions of the held-out test
                 split are never used.
    qa           the train-split questions alone.

Items are ``{"image", "text_input", "image_id"}`` as in LAVIS's image-text datasets; with
``caption+qa`` and ``qa`` every item is a (``text_input``, ``text_output``) pair instead, which the stage-2
model reads as prompt -> target with the loss on the target only (its VQA path): a question
is the zero-shot prompt "Question: {q} Short Answer:" (the question as LAVIS's
``blip_question`` gives it) -> its answer, a caption is "" -> the caption. One key set for
every item, because LAVIS's collater keeps only the keys all samples share.
The held-out questions are read by the ``gvtbench`` builder (their files are in its layout).
"""
import json
import logging
import os
import re

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis.datasets.datasets.base_dataset import BaseDataset
from lavis.processors.blip_processors import BlipQuestionProcessor
from PIL import Image

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.datasets.checks import INTEGER, PATH, TEXT, Kind, entry_problems
from lavis_xformer.models.generation import VQA_PROMPT

TEXT_MODES = ("caption", "caption+qa", "qa")
QUESTION_FILES = ("oc", "mci", "attr")
# what load_items reads of each file: captions.json, and the question files for the qa modes
# (a question's image number is read off its image_id, e.g. "test/images/00012.png")
CAPTION_FIELDS = {"image": PATH, "caption": TEXT, "image_id": INTEGER}
QUESTION_FIELDS = {
    "image_id": Kind("a path ending in <number>.png", lambda v: isinstance(v, str) and bool(
        re.fullmatch(r"\d+\.png", os.path.basename(v)))),
    "text_in": TEXT, "text_out": TEXT}


def load_items(split_dir, text="caption", max_images=None):
    """[{"image": path, "kind": "caption" | "qa", "image_id": int, ...}]: a "caption" item
    has "text" (the caption), a "qa" item "prompt" (the question in the zero-shot prompt)
    and "answer"."""
    if text not in TEXT_MODES:
        raise ValueError("datasets.mini_world_caption.build_info.text=%r is not known; use one of %s"
                         % (text, ", ".join(TEXT_MODES)))
    with open(os.path.join(split_dir, "captions.json")) as f:
        records = json.load(f)
    if max_images is not None:
        records = records[: int(max_images)]
    keep = {r["image_id"] for r in records}
    items = [] if text == "qa" else [
        {"image": os.path.join(split_dir, r["image"]), "text": r["caption"], "kind": "caption",
         "image_id": r["image_id"]} for r in records]
    if text in ("caption+qa", "qa"):
        question = BlipQuestionProcessor()
        for name in QUESTION_FILES:
            with open(os.path.join(split_dir, "%s.json" % name)) as f:
                for q in json.load(f):
                    image_id = int(os.path.basename(q["image_id"])[:-4])
                    if image_id in keep:
                        asked = question(q["text_in"])
                        items.append({"image": os.path.join(split_dir, "images", "%05d.png" % image_id),
                                      "kind": "qa",
                                      "prompt": VQA_PROMPT.format(asked), "answer": q["text_out"],
                                      "image_id": image_id})
    return items


class MiniWorldCaptionDataset(BaseDataset):
    def __init__(self, vis_processor, text_processor, split_dir, text="caption", max_images=None):
        super().__init__(vis_processor=vis_processor, text_processor=text_processor,
                         vis_root=os.path.join(split_dir, "images"), ann_paths=[])
        self.annotation = load_items(split_dir, text, max_images)
        self.pairs = text != "caption"
        self._add_instance_ids()

    def __getitem__(self, index):
        ann = self.annotation[index]
        image = self.vis_processor(Image.open(ann["image"]).convert("RGB"))
        if not self.pairs:
            return {"image": image, "text_input": self.text_processor(ann["text"]), "image_id": ann["image_id"]}
        # the prompt is already in its exact format (the caption processor would strip its colons)
        if ann["kind"] == "qa":
            prompt, target = ann["prompt"], ann["answer"]
        else:
            prompt, target = "", self.text_processor(ann["text"])
        return {"image": image, "text_input": prompt, "text_output": target, "image_id": ann["image_id"]}


@registry.register_builder("mini_world_caption")
class MiniWorldCaptionBuilder(BaseDatasetBuilder):
    train_dataset_cls = MiniWorldCaptionDataset
    eval_dataset_cls = MiniWorldCaptionDataset
    DATASET_CONFIG_DICT = {
        "default": os.path.join(PACKAGE_DIR, "configs", "datasets", "mini_world", "defaults_cap.yaml"),
    }

    @staticmethod
    def data_root(build_info):
        return os.path.abspath(os.path.expanduser(str(build_info.get("root", None) or
                                                      "output/mini/assets/world")))

    @classmethod
    def expected_data_paths(cls, name, config):
        """What must exist before building: [(split, kind, path, what to set)]."""
        build_info = config.get("build_info", {}) or {}
        root = cls.data_root(build_info)
        fix = ("build the world first (python -m lavis_xformer.world.build --config mini) or set "
               "`datasets.%s.build_info.root` to a world folder" % name)
        qa = build_info.get("text", "caption") != "caption"
        files = ["captions"] + (list(QUESTION_FILES) if qa else [])
        return [(split, "annotation file", os.path.join(root, str(split), "%s.json" % stem), fix)
                for split in build_info.get("splits", ["train"]) for stem in files]

    @classmethod
    def annotation_problems(cls, path, data, split, run_cfg=None):
        """checks.check_annotations: the fields load_items reads."""
        captions = os.path.basename(path) == "captions.json"
        return entry_problems(data, CAPTION_FIELDS if captions else QUESTION_FIELDS)

    def _download_data(self):
        pass  # the world is built locally by lavis_xformer.world.build

    def build(self):
        self.build_processors()
        build_info = self.config.build_info
        root = self.data_root(build_info)
        datasets = {}
        for split in build_info.get("splits", ["train"]):
            kind = "train" if split == "train" else "eval"
            datasets[split] = MiniWorldCaptionDataset(
                self.vis_processors[kind], self.text_processors[kind], os.path.join(root, str(split)),
                text=build_info.get("text", "caption"), max_images=build_info.get("max_images", None))
            logging.info("mini_world_caption %s: %d items from %s", split, len(datasets[split]), root)
        return datasets
