"""Resume under torchrun: every process's random state and the data position come back."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _testlib import subprocess_env

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "projects" / "xformer" / "tiny" / "stage1.yaml"


def _env():
    return subprocess_env(threads=1)


@pytest.mark.slow
def test_resume_under_torchrun_restores_every_process_random_state(tmp_path):
    """Two epochs under torchrun vs one epoch, then a resumed second epoch: the same weights.
    Every random draw is on (augmentation, MAE masks, ITM negatives, dropout), and each
    process draws from its own generator, so this holds only if the checkpoint restores each
    process's random state and the data position."""
    def run(out, *options):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "-m", "lavis.train", "--cfg-path", str(TINY), "--options",
             "run.output_dir=%s" % out, "datasets.easyvqa_caption.build_info.max_images=4",
             "datasets.easyvqa_caption.build_info.splits=[train]", "run.batch_size_train=2",
             "run.log_freq=1", *options],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        return result.stdout + result.stderr

    run(tmp_path / "whole", "run.max_epoch=2")
    run(tmp_path / "first", "run.max_epoch=1")
    first = torch.load(tmp_path / "first" / "latest" / "checkpoint_0.pth", map_location="cpu")
    assert len(first["rng"]) == 2  # one random state per process
    assert not torch.equal(first["rng"][0]["torch"], first["rng"][1]["torch"])
    assert first["data"][0]["num_replicas"] == 2
    output = run(tmp_path / "resumed", "run.max_epoch=2",
                 "run.resume_ckpt_path=%s" % (tmp_path / "first" / "latest"))
    assert "Train: data epoch: [0]" not in output and "Train: data epoch: [1]" in output

    want = torch.load(tmp_path / "whole" / "latest" / "checkpoint_1.pth", map_location="cpu")["model"]
    got = torch.load(tmp_path / "resumed" / "latest" / "checkpoint_1.pth", map_location="cpu")["model"]
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, different[:5]
