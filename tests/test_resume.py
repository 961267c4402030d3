"""Resume: the data position and random states a checkpoint records, atomic checkpoint
writes, and a tiny stage-1 run that is SIGKILLed mid-epoch and resumed ending with exactly
the weights of a run that was never stopped."""
import glob
import os
import signal

import pytest

from _testlib import TINY_STAGE1, lavis_command, run_until, tiny_stage1_options
import torch
from torch.utils.data import DataLoader

from lavis_xformer.datasets.sampling import ResumableIterLoader, ResumableSampler, pass_order
from lavis_xformer.training import checkpoints


def _loader(n, batch_size, seed=3, replicas=1, rank=0):
    sampler = ResumableSampler(n, seed=seed, num_replicas=replicas, rank=rank)
    dataloader = DataLoader(list(range(n)), batch_size=batch_size, sampler=sampler, drop_last=True)
    return ResumableIterLoader(dataloader, sampler, batch_size)


# --- data order ----------------------------------------------------------------------------

def test_pass_order_depends_on_seed_and_pass_only():
    assert pass_order(10, 1, 0) == pass_order(10, 1, 0)
    assert sorted(pass_order(10, 1, 0)) == list(range(10))
    assert pass_order(10, 1, 0) != pass_order(10, 1, 1)
    assert pass_order(10, 1, 1) == pass_order(10, 2, 0)  # seed + pass, as DistributedSampler
    assert pass_order(5, 1, 0, shuffle=False) == [0, 1, 2, 3, 4]


def test_two_processes_see_the_global_batches_of_one_process():
    n, global_batch = 24, 4
    one = _loader(n, global_batch)
    ranks = [_loader(n, global_batch // 2, replicas=2, rank=r) for r in range(2)]
    for _ in range(2 * n // global_batch):  # two passes
        expected = sorted(next(one).tolist())
        got = sorted(next(ranks[0]).tolist() + next(ranks[1]).tolist())
        assert got == expected


def test_sampler_pads_like_distributed_sampler():
    shares = [list(ResumableSampler(5, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    assert set(shares[0] + shares[1]) == set(range(5))  # one index repeated as padding


def test_loader_state_round_trip_continues_with_the_same_batches():
    n, batch = 10, 3  # 3 batches per pass (drop_last), 1 item left out
    reference = _loader(n, batch)
    batches = [next(reference).tolist() for _ in range(8)]  # crosses two pass boundaries
    for k in range(8):
        run = _loader(n, batch)
        for _ in range(k):
            next(run)
        state = run.state_dict()
        resumed = _loader(n, batch)
        resumed.load_state_dict(state)
        assert [next(resumed).tolist() for _ in range(8 - k)] == batches[k:], k
        assert resumed.state_dict() == reference.state_dict()


def test_resuming_does_not_load_the_consumed_batches():
    loaded = []

    class Recording(list):
        def __getitem__(self, i):
            loaded.append(i)
            return i

    sampler = ResumableSampler(12, seed=0)
    loader = ResumableIterLoader(DataLoader(Recording(range(12)), batch_size=2, sampler=sampler),
                                 sampler, 2)
    loader.load_state_dict({"pass": 0, "batches": 4})
    batch = next(loader).tolist()
    assert loaded == batch == pass_order(12, 0, 0)[8:10]


class RandomlyAugmented:
    """A dataset whose items are random draws (as random crops and flips are): python's,
    numpy's and torch's generators each contribute."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        import random

        import numpy as np

        return {"index": i, "draw": torch.tensor([random.random(), float(np.random.rand()),
                                                  float(torch.rand(()))])}


def _augmented_loader(num_workers, seed=3):
    from lavis_xformer.datasets.sampling import SeededIndices
    from lavis_xformer.datasets.skipping import SkipBadSamples, SkippingCollater
    from torch.utils.data.dataloader import default_collate

    sampler = ResumableSampler(12, seed=seed)
    dataloader = DataLoader(SkipBadSamples(RandomlyAugmented()), batch_size=2,
                            sampler=SeededIndices(sampler), num_workers=num_workers,
                            collate_fn=SkippingCollater(default_collate), drop_last=True,
                            generator=torch.Generator())  # as the runner's (worker seeds)
    return ResumableIterLoader(dataloader, sampler, 2)


def test_augmentation_depends_on_seed_pass_and_item_only():
    """Each item's random augmentation comes from (run.seed, pass, index): loader workers and
    resuming mid-pass with workers change nothing, and the main process's own random
    stream is left where it was."""
    torch.manual_seed(0)
    reference = _augmented_loader(0)
    batches = [next(reference) for _ in range(9)]  # crosses a pass boundary
    after = torch.rand(())
    torch.manual_seed(0)
    assert torch.rand(()) == after  # the loader's draws did not touch the global stream

    with_workers = _augmented_loader(2)
    for expected in batches:
        got = next(with_workers)
        assert got["index"].tolist() == expected["index"].tolist()
        assert torch.equal(got["draw"], expected["draw"])

    resumed = _augmented_loader(2)
    resumed.load_state_dict({"pass": 0, "batches": 4})
    for expected in batches[4:]:
        assert torch.equal(next(resumed)["draw"], expected["draw"])

    # the same item draws differently in another pass and under another seed
    first = {int(i): d for b in batches[:6] for i, d in zip(b["index"], b["draw"])}
    second = {int(i): d for b in batches[6:] for i, d in zip(b["index"], b["draw"])}
    assert all(not torch.equal(first[i], second[i]) for i in second)
    other_seed = next(_augmented_loader(0, seed=4))
    assert not torch.equal(other_seed["draw"][0], batches[0]["draw"][0])


def test_changed_batch_size_is_refused_with_what_changed():
    state = _loader(10, 2).state_dict()
    with pytest.raises(ValueError, match=r"batch_size changed \(batch_size 2 -> 5\)"):
        _loader(10, 5).load_state_dict(state)


# --- atomic checkpoint files ---------------------------------------------------------------

def test_a_failing_save_leaves_the_previous_checkpoint_and_latest_intact(tmp_path):
    first = checkpoints.atomic_save({"step": torch.tensor(1)}, tmp_path / "checkpoint_0_iter2.pth")
    checkpoints.point_link(first, tmp_path / checkpoints.CHECKPOINT_LATEST)

    def dies_half_way(obj, f):  # a kill or a full disk in the middle of torch.save
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        checkpoints.atomic_save({"step": torch.tensor(2)}, tmp_path / "checkpoint_0_iter4.pth",
                                save=dies_half_way)
    with pytest.raises(OSError, match="No space left"):  # overwriting an existing file
        checkpoints.atomic_save({"step": torch.tensor(2)}, first, save=dies_half_way)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_0_iter2.pth", "checkpoint_latest.pth"]
    latest = checkpoints.resolve_resume_path(tmp_path)
    assert latest == os.path.realpath(first)
    assert torch.load(latest)["step"] == 1


def test_latest_link_is_relative_and_replaced(tmp_path):
    for i in (2, 4):
        path = checkpoints.atomic_save({"i": i}, tmp_path / ("checkpoint_0_iter%d.pth" % i))
        checkpoints.point_link(path, tmp_path / checkpoints.CHECKPOINT_LATEST)
    assert os.readlink(tmp_path / checkpoints.CHECKPOINT_LATEST) == "checkpoint_0_iter4.pth"
    assert torch.load(tmp_path / checkpoints.CHECKPOINT_LATEST)["i"] == 4


def test_resume_path_errors_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nope.pth"):
        checkpoints.resolve_resume_path(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="directory without checkpoint_latest.pth"):
        checkpoints.resolve_resume_path(tmp_path)


def test_rng_state_round_trip_and_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(0)
    state = checkpoints.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    torch.save({"rng": state}, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)["rng"]  # torch's default load
    checkpoints.set_rng_state(loaded)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


# --- killed and resumed: the same weights as an uninterrupted run ---------------------------

def _options(output_dir):
    # 8 images, batch 2: 4 iterations; mid-epoch checkpoints every 2. Training augmentation,
    # MAE masks, ITM negatives and dropout all draw random numbers.
    return tiny_stage1_options(output_dir) + ["run.checkpoint_every_iters=2"]


def _trainable(path):
    return torch.load(path, map_location="cpu")["model"]


@pytest.mark.slow
def test_killed_mid_epoch_run_resumes_to_the_same_weights(tmp_path, one_thread):
    killed = tmp_path / "killed"
    status, output = run_until(  # SIGKILL as soon as the first mid-epoch checkpoint is complete
        lavis_command(TINY_STAGE1, *_options(killed)), tmp_path,
        lambda line: "Saved checkpoint" in line and "checkpoint_0_iter2.pth" in line,
        lambda proc: proc.send_signal(signal.SIGKILL))
    assert status == -signal.SIGKILL, output[-4000:]
    job = os.path.realpath(killed / "latest")
    latest = checkpoints.resolve_resume_path(job)
    assert os.path.basename(latest) == "checkpoint_0_iter2.pth", os.listdir(job)
    state = torch.load(latest, map_location="cpu")
    assert (state["epoch"], state["iters_done"], state["iters_per_epoch"]) == (0, 2, 4)
    assert state["data"] == [{"pass": 0, "batches": 2, "batch_size": 2, "num_items": 8,
                              "num_replicas": 1, "seed": 42}]
    assert not glob.glob(os.path.join(job, "checkpoint_0.pth"))

    from lavis_xformer import train

    # resumed from the killed run's output folder (its `latest` job, checkpoint_latest.pth)
    resumed = tmp_path / "resumed"
    train.main(["--cfg-path", str(TINY_STAGE1), "--options", *_options(resumed),
                "run.resume_ckpt_path=%s" % (killed / "latest")])
    resumed_job = os.path.realpath(resumed / "latest")
    assert sorted(f for f in os.listdir(resumed_job) if f.endswith(".pth")) == [
        "checkpoint_0.pth", "checkpoint_latest.pth"]

    uninterrupted = tmp_path / "uninterrupted"
    train.main(["--cfg-path", str(TINY_STAGE1), "--options", *_options(uninterrupted)])
    job = os.path.realpath(uninterrupted / "latest")
    # the mid-epoch checkpoint is removed once the epoch's own is complete
    assert sorted(f for f in os.listdir(job) if f.endswith(".pth")) == [
        "checkpoint_0.pth", "checkpoint_latest.pth"]
    assert os.readlink(os.path.join(job, "checkpoint_latest.pth")) == "checkpoint_0.pth"

    want = _trainable(os.path.join(job, "checkpoint_0.pth"))
    got = _trainable(os.path.join(resumed_job, "checkpoint_0.pth"))
    assert set(want) == set(got)
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, different[:5]
    # and the run did train: the weights moved away from the killed run's iteration 2
    at_kill = state["model"]
    assert any(not torch.equal(at_kill[k], want[k]) for k in want)
