"""Unreadable training samples are skipped, logged with their path and counted; never fatal.

A web-scale training set (CC3M, CC12M, SBU) always holds some files that are missing,
truncated or not images at all. LAVIS 1.0.2 either dies on them in a DataLoader worker
(hours into a run) or, for its COCO-style caption sets, silently pads truncated images with
grey (``coco_caption_datasets`` sets PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES = True``
on import). Here every training dataset the runner builds is wrapped in ``SkipBadSamples``:

* an item whose loading raises a file or decoding error (``BAD_SAMPLE_ERRORS``) becomes a
  ``Skipped`` marker, and a warning names its index, path and the error;
* truncated images count as unreadable: the wrapper loads with ``LOAD_TRUNCATED_IMAGES`` off;
* ``SkippingCollater`` collates the good items and records the skipped paths under
  ``batch["skipped_samples"]``; a batch without any good item is ``{"skipped_samples": [...]}``
  only, and the training loop takes the next batch instead.

Other errors (a bug in a processor, a wrong annotation key) still stop the run: hiding them
would hide a broken data set.
"""
import bisect
import logging
import os

from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

SKIPPED_KEY = "skipped_samples"

# file missing or unreadable (OSError: FileNotFoundError, PIL.UnidentifiedImageError, "image
# file is truncated"), PIL's "broken PNG file" (SyntaxError), decompression bombs
BAD_SAMPLE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


class Skipped:
    """Stands in for an item that could not be loaded."""

    __slots__ = ("index", "path", "reason")

    def __init__(self, index, path, reason):
        self.index, self.path, self.reason = index, path, reason

    def __repr__(self):
        return "Skipped(%d, %r, %r)" % (self.index, self.path, self.reason)


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


class SkipBadSamples(Dataset):
    """Map-style dataset wrapper: ``dataset[i]``, or ``Skipped`` when it cannot be read.
    Other attributes are the wrapped dataset's."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":  # not yet set (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            return self.dataset[index]
        except BAD_SAMPLE_ERRORS as e:
            path = sample_path(self.dataset, index)
            reason = "%s: %s" % (type(e).__name__, e)
            logging.warning("skipping unreadable training sample %d, %s (%s)", index, path, reason)
            return Skipped(index, path, reason)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated


class SkippingCollater:
    """Collate the good items with ``collate_fn`` (default: torch's default_collate) and
    list the skipped items' paths under ``SKIPPED_KEY``."""

    def __init__(self, collate_fn=None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, samples):
        good = [s for s in samples if not isinstance(s, Skipped)]
        skipped = [s.path for s in samples if isinstance(s, Skipped)]
        batch = self.collate_fn(good) if good else {}
        if not isinstance(batch, dict):
            raise TypeError("SkippingCollater needs batches that are dicts (LAVIS's), got %s"
                            % type(batch).__name__)
        batch[SKIPPED_KEY] = skipped
        return batch


def pop_skipped(batch):
    """(batch without the record, list of skipped paths); ``batch`` is None when it held no
    good item. Batches of other loaders (no record, or not a dict) pass unchanged."""
    if not isinstance(batch, dict):
        return batch, []
    skipped = batch.pop(SKIPPED_KEY, [])
    return (batch if batch else None), skipped
