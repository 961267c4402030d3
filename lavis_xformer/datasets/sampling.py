"""Training data order that a checkpoint can record and a resumed run can reproduce.

LAVIS 1.0.2 trains from ``IterLoader(DataLoader(shuffle=True))`` in one process (the order
comes from torch's global random generator at the start of every pass, so it cannot be
replayed) and from ``DistributedSampler`` under torchrun; neither can start a pass in the
middle. Here the order of pass ``p`` is a pure function of ``(run.seed, p)`` in one process
and under torchrun alike, and a pass can start after the first ``k`` batches without reading
(decoding) them: the sampler just leaves their indices out.

With W processes and a per-process batch of B/W, global batch j of a pass holds exactly the
samples that batch j of a one-process run with batch B holds (rank r takes the permutation's
indices r, r+W, r+2W, ...), so a two-process run sees the same data per step as one process
with the same global batch.

The random augmentation of each item (crops, flips) is made a function of ``(run.seed, pass,
item index)`` too (``SeededIndices``, ``sample_seed``): the sampler hands each item its seed
and the dataset wrapper (``SkipBadSamples``) draws the item's augmentation from it. So loader
workers (whose random streams depend on which worker got which batch and on what it drew
before) change nothing, and a run resumed mid-pass with workers draws what the uninterrupted
run drew.
"""
import math

import torch
from torch.utils.data import Sampler


def pass_order(num_items: int, seed: int, pass_index: int, shuffle: bool = True) -> list:
    """The order of one pass over ``num_items`` items: a permutation drawn from a generator
    seeded with ``seed + pass_index`` (as DistributedSampler does), or 0..n-1 without shuffle."""
    if not shuffle:
        return list(range(num_items))
    generator = torch.Generator()
    generator.manual_seed(int(seed) + int(pass_index))
    return torch.randperm(num_items, generator=generator).tolist()


class ResumableSampler(Sampler):
    """Indices of one process's share of a pass, optionally starting part-way in.

    Like ``DistributedSampler``: the pass order (``pass_order``) is padded with its first
    indices to a multiple of ``num_replicas`` and rank r takes every ``num_replicas``-th index
    starting at r; ``set_epoch(p)`` chooses the pass. ``skip_next(k)`` leaves out the first k
    indices of the next iteration only (a resumed run's consumed samples).
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError("rank %d is not in [0, %d)" % (rank, num_replicas))
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.num_samples = math.ceil(self.num_items / self.num_replicas)
        self._skip = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def skip_next(self, count: int):
        self._skip = int(count)

    def indices(self) -> list:
        """This process's indices of the current pass, all of them."""
        order = pass_order(self.num_items, self.seed, self.epoch, self.shuffle)
        total = self.num_samples * self.num_replicas
        if total > len(order) and order:
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return iter(self.indices()[skip:])

    def __len__(self):
        return self.num_samples


_MASK = (1 << 63) - 1


def sample_seed(seed: int, pass_index: int, index: int) -> int:
    """The random seed for item ``index`` in pass ``pass_index`` of a run seeded ``seed``: a
    fixed mix of the three (splitmix64's finaliser), the same in every process and worker."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(pass_index) * 0xBF58476D1CE4E5B9 + int(index)) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class SeededIndices(Sampler):
    """``(index, sample_seed)`` for every index a ``ResumableSampler`` yields, for a dataset
    that seeds each item's augmentation (``SkipBadSamples``)."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def __iter__(self):
        seed, pass_index = self.sampler.seed, self.sampler.epoch
        return ((i, sample_seed(seed, pass_index, i)) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class ResumableIterLoader:
    """An endless iterator over a DataLoader's passes (LAVIS's ``IterLoader``) that knows
    its data position: the pass it is in and how many batches of it were taken.

    ``state_dict()`` records the position; ``load_state_dict()`` makes the next batch the one
    that followed it, without loading the skipped batches. Needs a DataLoader whose sampler
    is a ``ResumableSampler`` (``sampler``) and a fixed ``batch_size``.
    """

    def __init__(self, dataloader, sampler: ResumableSampler, batch_size: int):
        self._dataloader = dataloader
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.pass_index = 0
        self.batches_taken = 0
        self._iterator = None

    @property
    def epoch(self) -> int:  # LAVIS's IterLoader name
        return self.pass_index

    def _start_pass(self):
        self.sampler.set_epoch(self.pass_index)
        self._iterator = iter(self._dataloader)

    def __next__(self):
        if self._iterator is None:
            self._start_pass()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.pass_index += 1
            self.batches_taken = 0
            self._start_pass()
            batch = next(self._iterator)
        self.batches_taken += 1
        return batch

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._dataloader)

    def state_dict(self) -> dict:
        return {"pass": self.pass_index, "batches": self.batches_taken,
                "batch_size": self.batch_size, "num_items": self.sampler.num_items,
                "num_replicas": self.sampler.num_replicas, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict):
        """Continue after ``state``'s position. The data must be laid out as when it was
        saved (same number of items, batch size, processes and seed), else ValueError."""
        mine = self.state_dict()
        changed = [k for k in ("batch_size", "num_items", "num_replicas", "seed")
                   if k in state and state[k] != mine[k]]
        if changed:
            raise ValueError(
                "cannot continue the checkpoint's data position: %s changed (%s); resume "
                "with the same data, run.batch_size_train, number of processes and run.seed, "
                "or start a new run from its weights with model.pretrained=<checkpoint>" % (
                    ", ".join(changed), ", ".join("%s %s -> %s" % (k, state[k], mine[k])
                                                  for k in changed)))
        self.pass_index = int(state["pass"])
        self.batches_taken = int(state["batches"])
        self.sampler.set_epoch(self.pass_index)
        self.sampler.skip_next(self.batches_taken * self.batch_size)
        self._iterator = iter(self._dataloader)

    def start_fresh_pass(self, pass_index: int):
        """Make the next batch the first of pass ``pass_index`` (a resume whose data changed)."""
        self.pass_index = int(pass_index)
        self.batches_taken = 0
        self._iterator = None
