"""Preemption with real signals to real processes: SIGTERM (what schedulers send) finishes the
current step, writes a complete checkpoint, prints one line with the resume command and exits
with status 75; the resumed run continues in a job folder of its own to the same weights as a
run that was never stopped; a second signal ends the process at once; temporary files of a
killed save are removed at the next start. In one process and under torchrun."""
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _testlib import TINY_STAGE1, lavis_command, run_command, run_until, tiny_stage1_options

from lavis_xformer.models import sources
from lavis_xformer.training import checkpoints
from lavis_xformer.training.preemption import EXIT_PREEMPTED

def _train_cmd(out, images=8, processes=1):
    # 8 images, batch 2: 4 iterations in one process
    return lavis_command(TINY_STAGE1, *tiny_stage1_options(out, images), processes=processes)


def _signalled(cmd, cwd, signals=(signal.SIGTERM,), after="Train: data epoch: [0]  [0/"):
    """Start ``cmd``, send ``signals`` (one right after the other) once ``after`` is printed;
    returns (exit status, output)."""
    def send(proc):
        for sig in signals:
            proc.send_signal(sig)
    return run_until(cmd, cwd, lambda line: after in line, send)


def _stop_line(output):
    found = [l for l in output.splitlines() if l.startswith("stopped on request after epoch 0")]
    assert len(found) == 1, output[-5000:]
    return found[0]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_printed_command_resumes_exactly(tmp_path):
    out = tmp_path / "out"
    status, output = _signalled(_train_cmd(out), tmp_path)
    assert status == EXIT_PREEMPTED, output[-5000:]
    assert "SIGTERM received: finishing the current step" in output
    assert "Traceback" not in output
    line = _stop_line(output)
    job = os.path.realpath(out / "latest")
    saved = checkpoints.resolve_resume_path(job)
    assert "checkpoint %s is complete" % saved in line
    state = sources.read_checkpoint(saved, "checkpoint")  # complete, and safe to load
    assert 1 <= state["iters_done"] < 4 and state["epoch"] == 0
    assert "iteration %d of 4" % state["iters_done"] in line

    # a save killed half-way leaves a temporary file: the next start removes it
    stale = Path(job) / (".checkpoint_0_iter3.pth.%s.%d.tmp" % (
        socket.gethostname().split(".")[0], _dead_pid()))
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")

    command = line.split("resume with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "lavis.train"] or argv[0].startswith("python")
    assert argv[-1] == "run.resume_ckpt_path=%s" % job
    run_command([sys.executable] + argv[1:], tmp_path)
    assert not stale.exists()
    resumed_job = os.path.realpath(out / "latest")
    assert resumed_job != job  # a job folder of its own; `latest` follows it
    assert os.path.isfile(saved)  # the stopped run's checkpoint is kept

    whole = tmp_path / "whole"
    run_command(_train_cmd(whole), tmp_path)
    want = sources.read_checkpoint(os.path.join(os.path.realpath(whole / "latest"), "checkpoint_0.pth"), "k")
    got = sources.read_checkpoint(os.path.join(resumed_job, "checkpoint_0.pth"), "k")
    different = [k for k in want["model"] if not torch.equal(want["model"][k], got["model"][k])]
    assert not different, different[:5]


@pytest.mark.slow
def test_second_signal_stops_at_once(tmp_path):
    status, output = _signalled(_train_cmd(tmp_path / "out"), tmp_path,
                                signals=(signal.SIGINT, signal.SIGTERM))
    assert status == 128 + signal.SIGTERM, output[-4000:]
    assert "SIGINT received" in output and "SIGTERM again: stopping at once" in output
    assert "stopped on request" not in output


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_process_after_one_checkpoint(tmp_path):
    out = tmp_path / "out"
    status, output = _signalled(_train_cmd(out, images=16, processes=2), tmp_path)
    assert status != 0  # torchrun itself reports the signal it got
    # torchrun passes SIGTERM to both workers; they agree on the step and rank 0 saves once
    assert output.count("SIGTERM received: finishing the current step") == 2, output[-6000:]
    line = _stop_line(output)
    assert "resume with: torchrun --nproc_per_node=2 -m lavis.train" in line
    job = os.path.realpath(out / "latest")
    saved = checkpoints.resolve_resume_path(job)
    state = sources.read_checkpoint(saved, "checkpoint")
    assert len(state["rng"]) == 2 and state["data"][0]["num_replicas"] == 2
    assert "iteration %d of 4" % state["iters_done"] in line  # 16 images, 2 processes, batch 2
    assert not [n for n in os.listdir(job) if n.endswith(".tmp")]
