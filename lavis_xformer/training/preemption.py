"""Stopping a training run on request (SIGTERM, SIGINT) without losing work.

Cluster schedulers (SLURM, Kubernetes) send SIGTERM, wait a grace period, then SIGKILL; a
person presses Ctrl-C (SIGINT). While a training epoch runs (RunnerXFormer.train_epoch):

* the first signal sets a flag and says so in one line; the current step finishes;
* after every step the processes agree on the flag (a one-integer all-reduce, on a gloo group
  on the CPU so that it costs no GPU synchronisation), so all of them stop after the same
  step even when only one got the signal;
* the runner then writes a checkpoint atomically (all processes' random states, the data
  position: an exact resume), prints one line with the command that resumes, and every
  process exits with status EXIT_PREEMPTED (75, EX_TEMPFAIL: "try again later");
* a second signal ends the process at once (status 128 + the signal's number); an
  interrupted save leaves the previous checkpoint complete and at worst a temporary file,
  which the next start removes (checkpoints.remove_stale_temporaries).

Outside training epochs (building, evaluation) the signals keep their default effect.
"""
import os
import shlex
import signal
import sys
import threading

import torch
import torch.distributed as dist

from lavis_xformer.lavis_patches import distributed

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on request after a complete checkpoint; the message is the line to
    show (checkpoint and resume command)."""


class StopSignals:
    """Context manager: while inside, SIGTERM/SIGINT request a stop (``requested``) and a
    second one exits at once. Does nothing outside the main thread (signals go there)."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def __enter__(self):
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            os.write(2, ("%s again: stopping at once, without a checkpoint\n" % name).encode())
            os._exit(128 + signum)
        self.requested = name
        os.write(2, ("%s received: finishing the current step, then saving a checkpoint "
                     "(send it again to stop at once)\n" % name).encode())


_cpu_group = None


def agreed_stop(requested) -> bool:
    """True in every process when any process has been asked to stop (all must call it)."""
    global _cpu_group
    flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
    if not distributed.dist_ready():
        return bool(flag.item())
    if dist.get_backend() != "gloo":
        if _cpu_group is None:  # created once, by every process (collective)
            _cpu_group = dist.new_group(backend="gloo")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_cpu_group)
    else:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def ignore_interrupts_in_worker(_worker_id):
    """DataLoader worker_init_fn: Ctrl-C reaches the whole process group; the main process
    handles it (finishing its step), so a loader worker must not die of it first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resume_command(cfg_path, options, resume_from, world_size=1):
    """The command line that continues the run from ``resume_from`` (a job directory)."""
    kept = [o for o in (options or []) if not o.startswith("run.resume_ckpt_path=")]
    kept.append("run.resume_ckpt_path=%s" % resume_from)
    launcher = ("torchrun --nproc_per_node=%d" % world_size if world_size > 1
                else shlex.quote(os.path.basename(sys.executable) or "python"))
    return "%s -m lavis.train --cfg-path %s --options %s" % (
        launcher, shlex.quote(str(cfg_path)), " ".join(shlex.quote(o) for o in kept))

