"""BLIP's CapFilt captions for the web images (the paper, supplementary section 1: "we use the
WebCapFilt captions from BLIP for the LAION115M, SBU, and Conceptual Captions datasets, each
of which contains one synthetic caption per image"), through LAVIS's webdataset builder.

BLIP publishes them as JSON lists of {"url", "caption"} (github.com/salesforce/BLIP,
"Pre-training datasets download"), one synthetic caption per image, filtered by the ViT-L
CapFilt model:

    ccs_synthetic_filtered_large.json    CC3M + CC12M + SBU in one file
    laion_synthetic_filtered_large.json  LAION-115M

The images come from their URLs, so the usual route (LAVIS's, MiniGPT-4's) is img2dataset
into webdataset shards (``--url_col url --caption_col caption --output_format webdataset``:
each sample a ``.jpg`` and a ``.json`` holding the caption), which LAVIS's ``laion2B_multi``
builder reads (``LaionDataset``: image + ``json["caption"]``, shuffled, resampled shards).
``capfilt_web`` is that builder under its own name and defaults: its ``storage`` takes one
or several shard patterns, and a missing shard is named at launch with the file to fetch
(``annotation_sources``) instead of failing inside the stream.
"""
import os

from lavis.common.registry import registry
from lavis.datasets.builders.image_text_pair_builder import Laion2BMultiBuilder

from lavis_xformer import PACKAGE_DIR
from lavis_xformer.datasets.checks import _storage_path

CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs", "datasets", "capfilt")

CCS_SOURCE = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/ccs_synthetic_filtered_large.json"
LAION_SOURCE = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/laion_synthetic_filtered_large.json"


def shard_patterns(storage):
    """``build_info.storage`` as a list of brace patterns: a list in the yaml, or one string
    whose patterns are joined by "::" (webdataset's own notation)."""
    if not storage:
        return []
    if isinstance(storage, str):
        return [p for p in storage.split("::") if p]
    return [str(p) for p in storage]


@registry.register_builder("capfilt_web")
class CapFiltWebBuilder(Laion2BMultiBuilder):
    """LAVIS's webdataset builder over shards made from BLIP's CapFilt files; ``storage`` may
    name several shard sets (CC3M + CC12M + SBU, LAION-115M), which are resampled as one
    stream, shard by shard (a ChainDataset of two endless streams would never reach the
    second)."""

    DATASET_CONFIG_DICT = {"default": os.path.join(CONFIG_DIR, "capfilt_web.yaml")}

    @classmethod
    def expected_data_paths(cls, name, config):
        """Every shard of ``build_info.storage`` (relative to LAVIS's cache root, as LAVIS's
        other storage paths), for the launch-time check (checks.py)."""
        import braceexpand

        build_info = config.get("build_info", None) or {}
        sources = [str(s) for s in (build_info.get("annotation_sources", None) or [])]
        fix = "set `datasets.%s.build_info.storage` to the shards' brace pattern(s)" % name
        if sources:
            fix += ("; shards are made from %s (img2dataset --input_format json --url_col url "
                    "--caption_col caption --output_format webdataset)" % " and ".join(sources))
        patterns = shard_patterns(build_info.get("storage", None))
        if not patterns:
            return [("train", "webdataset shard", "(build_info.storage is empty)", fix)]
        paths = []
        for pattern in patterns:  # one entry per pattern: its first missing shard, or its first
            shards = [_storage_path(p) for p in braceexpand.braceexpand(pattern)]
            missing = [p for p in shards if not os.path.isfile(p)]
            note = fix if not missing else "%d of the %d shards of %s are missing; %s" % (
                len(missing), len(shards), pattern, fix)
            paths.append(("train", "webdataset shard", (missing or shards)[0], note))
        return paths

    def build(self):
        patterns = shard_patterns(self.config.build_info.storage)
        self.config.build_info.storage = "::".join(_storage_path(p) for p in patterns)
        return super().build()
