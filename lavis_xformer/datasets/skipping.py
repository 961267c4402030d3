"""Unreadable training samples are skipped, logged with their path and counted; never fatal.

A web-scale training set (CC3M, CC12M, SBU) always holds some files that are missing,
truncated or not images at all. LAVIS 1.0.2 either dies on them in a DataLoader worker
(hours into a run) or, for its COCO-style caption sets, silently pads truncated images with
grey (``coco_caption_datasets`` sets PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES = True``
on import). Here every training dataset the runner builds is wrapped in ``SkipBadSamples``:

* an item whose loading raises a file or decoding error (``BAD_SAMPLE_ERRORS``) is skipped
  with a warning naming its index, path and the error, and the next item of the dataset
  (index + 1, + 2, ...) takes its place. Replacing rather than dropping keeps every batch at
  its size: under torchrun the ITC/ITM all-gathers need equal batches on every process, and
  ITM's hard-negative mining needs at least two samples. The replacement is a fixed function
  of the index, so a resumed run sees the same batches;
* each item's augmentation is drawn from its own seed when the sampler gives one
  (``sampling.SeededIndices``), so that it does not depend on loader workers or resumption;
* truncated images count as unreadable: the wrapper loads with ``LOAD_TRUNCATED_IMAGES`` off;
* the replacing item carries the skipped paths under ``SKIPPED_KEY``; ``SkippingCollater``
  takes them off before collating and lists them under ``batch["skipped_samples"]``, which
  the training loop counts (and removes);
* ``SkipBadSamples.max_tries`` (100) unreadable items in a row stop the run with a clear
  error: that is a broken data set, not a few bad files.

Other errors (a bug in a processor, a wrong annotation key) still stop the run: hiding them
would hide a broken data set.
"""
import bisect
import logging
import os
import random
from contextlib import contextmanager

import numpy as np
import torch

from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

SKIPPED_KEY = "skipped_samples"

# file missing or unreadable (OSError: FileNotFoundError, PIL.UnidentifiedImageError, "image
# file is truncated"), PIL's "broken PNG file" (SyntaxError), decompression bombs
BAD_SAMPLE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


def sample_path(dataset, index):
    """Best-effort path of item ``index``: the ``image`` (or ``video``) of its annotation,
    joined to the dataset's ``vis_root`` when relative; through torch ConcatDatasets."""
    while hasattr(dataset, "cumulative_sizes") and hasattr(dataset, "datasets"):
        which = bisect.bisect_right(dataset.cumulative_sizes, index)
        if which:
            index -= dataset.cumulative_sizes[which - 1]
        dataset = dataset.datasets[which]
    try:
        ann = dataset.annotation[index]
    except (AttributeError, IndexError, KeyError, TypeError):
        return "<item %d of %s>" % (index, type(dataset).__name__)
    for key in ("image", "video", "path"):
        if isinstance(ann, dict) and ann.get(key):
            path = str(ann[key])
            root = getattr(dataset, "vis_root", None)
            return path if os.path.isabs(path) or not root else os.path.join(str(root), path)
    return "<item %d of %s>" % (index, type(dataset).__name__)


@contextmanager
def seeded_random_state(seed: int):
    """Seed python's, numpy's and torch's (CPU) generators within the block; their previous
    states come back after it (the training process's own random stream is untouched)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SkipBadSamples(Dataset):
    """Map-style dataset wrapper: ``dataset[i]``, or when that cannot be read the first
    readable item after it (see the module's docstring). Other attributes are the wrapped
    dataset's."""

    max_tries = 100

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":  # not yet set (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _load(self, index):
        truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            return self.dataset[index]
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated

    def __getitem__(self, key):
        """``key``: an index, or ``(index, seed)`` (``sampling.SeededIndices``): the item is
        then loaded with python's, numpy's and torch's random generators seeded from ``seed``
        and restored afterwards, so its augmentation depends on the seed alone."""
        if isinstance(key, tuple):
            index, seed = key
            with seeded_random_state(seed):
                return self._get(index)
        return self._get(key)

    def _get(self, index):
        skipped = []
        for k in range(min(self.max_tries, len(self.dataset))):
            j = (index + k) % len(self.dataset)
            try:
                item = self._load(j)
            except BAD_SAMPLE_ERRORS as e:
                path = sample_path(self.dataset, j)
                logging.warning("skipping unreadable training sample %d, %s (%s: %s)", j, path,
                                type(e).__name__, e)
                skipped.append(path)
                continue
            if skipped:
                if not isinstance(item, dict):
                    raise TypeError("SkipBadSamples needs items that are dicts (LAVIS's), got %s"
                                    % type(item).__name__)
                item = dict(item)
                item[SKIPPED_KEY] = skipped
            return item
        raise RuntimeError(
            "%d training samples in a row from index %d are unreadable (the last: %s); the data "
            "set looks broken: check its files and its datasets.<name>.build_info paths" % (
                len(skipped), index, skipped[-1] if skipped else "?"))


class SkippingCollater:
    """Take the skipped paths off the items, collate them with ``collate_fn`` (default:
    torch's default_collate) and list the paths under ``SKIPPED_KEY``."""

    def __init__(self, collate_fn=None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, samples):
        skipped = []
        for sample in samples:
            if isinstance(sample, dict):
                skipped.extend(sample.pop(SKIPPED_KEY, []))
        batch = self.collate_fn(samples) if samples else {}
        if not isinstance(batch, dict):
            raise TypeError("SkippingCollater needs batches that are dicts (LAVIS's), got %s"
                            % type(batch).__name__)
        batch[SKIPPED_KEY] = skipped
        return batch


def pop_skipped(batch):
    """(batch without the record, list of skipped paths); ``batch`` is None when it holds
    nothing else. Batches of other loaders (no record, or not a dict) pass unchanged."""
    if not isinstance(batch, dict):
        return batch, []
    skipped = batch.pop(SKIPPED_KEY, [])
    return (batch if batch else None), skipped


# --- Evaluation -------------------------------------------------------------------------------
#
# An evaluation must not die on one unreadable image either, but it must not replace it by
# another (that would score a question twice): the item is dropped from its batch, and what
# was dropped is recorded (index, path, error, the question or image id), so that the metrics
# can say over how many questions they were computed and list what was left out.

class SkipUnreadable(Dataset):
    """Map-style dataset wrapper for evaluation: ``dataset[i]``, or, when its file cannot be
    read, a record ``{SKIPPED_KEY: [{"index", "path", "error", <id fields>}]}`` that
    ``EvalSkippingCollater`` takes out of the batch."""

    ID_FIELDS = ("question_id", "image_id", "instance_id")

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            return self.dataset[index]
        except BAD_SAMPLE_ERRORS as e:
            path = sample_path(self.dataset, index)
            logging.warning("skipping unreadable evaluation sample %d, %s (%s: %s)", index, path,
                            type(e).__name__, e)
            record = {"index": int(index), "path": path, "error": "%s: %s" % (type(e).__name__, e)}
            ann = getattr(self.dataset, "annotation", None)
            try:
                entry = ann[index] if ann is not None else None
            except (IndexError, KeyError, TypeError):
                entry = None
            if isinstance(entry, dict):
                record.update({k: entry[k] for k in self.ID_FIELDS if k in entry})
            return {SKIPPED_KEY: [record]}
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated


class EvalSkippingCollater:
    """Collate the readable items with ``collate_fn`` and list the skipped ones under
    ``SKIPPED_KEY``; a batch of skipped items only is ``{SKIPPED_KEY: [...]}``."""

    def __init__(self, collate_fn=None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, samples):
        skipped, kept = [], []
        for sample in samples:
            if isinstance(sample, dict) and set(sample) == {SKIPPED_KEY}:
                skipped.extend(sample[SKIPPED_KEY])
            else:
                kept.append(sample)
        batch = self.collate_fn(kept) if kept else {}
        batch[SKIPPED_KEY] = skipped
        return batch
