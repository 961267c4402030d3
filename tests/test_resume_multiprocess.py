"""Resume under torchrun: every process's random state and the data position come back."""
import pytest
import torch


@pytest.mark.slow
def test_resume_under_torchrun_restores_every_process_random_state(tmp_path, tiny_stage1):
    """Two epochs under torchrun vs one epoch, then a resumed second epoch: the same weights.
    Every random draw is on (augmentation, MAE masks, ITM negatives, dropout), and each
    process draws from its own generator, so this holds only if the checkpoint restores each
    process's random state and the data position."""
    def run(name, *options):
        return tiny_stage1(name, *options, images=4, max_epoch=None, processes=2).output

    run("whole", "run.max_epoch=2")
    run("first", "run.max_epoch=1")
    first = torch.load(tmp_path / "first" / "latest" / "checkpoint_0.pth", map_location="cpu")
    assert len(first["rng"]) == 2  # one random state per process
    assert not torch.equal(first["rng"][0]["torch"], first["rng"][1]["torch"])
    assert first["data"][0]["num_replicas"] == 2
    output = run("resumed", "run.max_epoch=2",
                 "run.resume_ckpt_path=%s" % (tmp_path / "first" / "latest"))
    assert "Train: data epoch: [0]" not in output and "Train: data epoch: [1]" in output

    want = torch.load(tmp_path / "whole" / "latest" / "checkpoint_1.pth", map_location="cpu")["model"]
    got = torch.load(tmp_path / "resumed" / "latest" / "checkpoint_1.pth", map_location="cpu")["model"]
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, different[:5]
