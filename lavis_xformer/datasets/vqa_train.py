"""Training sets of the VQA fine-tuning (paper, supplementary section 2: VQAv2 train + val and
Visual Genome QA, as BLIP/BLIP-2 fine-tune): LAVIS's own ``coco_vqa`` and ``vg_vqa`` datasets
(``COCOVQADataset``, ``VGVQADataset``: each question with its answers and their weights,
collated flat with ``n_answers``) under builders that build the train split only and download
nothing. LAVIS's ``coco_vqa`` builder also builds its val and test splits from its defaults,
which a project file cannot drop, and fetches missing files from URLs.
"""
import os

from lavis.common.registry import registry
from lavis.datasets.builders.vqa_builder import COCOVQABuilder, VGVQABuilder

from lavis_xformer import PACKAGE_DIR

CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs", "datasets", "vqa_train")


@registry.register_builder("coco_vqa_train")
class COCOVQATrainBuilder(COCOVQABuilder):
    DATASET_CONFIG_DICT = {"default": os.path.join(CONFIG_DIR, "coco_vqa_train.yaml")}

    def _download_data(self):
        pass  # nothing is downloaded: checks.check_datasets names missing files at launch


@registry.register_builder("vg_vqa_train")
class VGVQATrainBuilder(VGVQABuilder):
    DATASET_CONFIG_DICT = {"default": os.path.join(CONFIG_DIR, "vg_vqa_train.yaml")}

    def _download_data(self):
        pass  # nothing is downloaded: checks.check_datasets names missing files at launch
