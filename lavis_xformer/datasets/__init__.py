"""Dataset builders of the plugin; importing this registers them into LAVIS's registry."""
from lavis_xformer.datasets import benchmarks, capfilt, checks, vqa_train, zeroshot  # noqa: F401
from lavis_xformer.datasets.easyvqa import (  # noqa: F401
    EasyVQACaptionBuilder, EasyVQACaptionDataset, EasyVQAQuestionDataset, EasyVQAVQABuilder)
