"""Timing, memory and FLOP measurement of one callable at a time.

``Clock`` times on the device the work runs on (CUDA events on a GPU, wall clock on a CPU);
each measured call ends with a synchronisation, so a step's time is the whole step's.
"""
import statistics
import time
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class Clock:
    """Start/stop timer in milliseconds for ``device`` ("cpu" or "cuda[:i]")."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    def synchronize(self):
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def time(self, into: list):
        """Append the elapsed milliseconds of the block to ``into``."""
        self.synchronize()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()
            into.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            yield
            into.append((time.perf_counter() - start) * 1e3)


def reset_peak_memory(device: str):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def allocated_mib(device: str) -> float:
    return torch.cuda.memory_allocated() / 2**20 if torch.device(device).type == "cuda" else 0.0


def peak_memory_mib(device: str):
    """Peak allocated device memory since the last reset (MiB); None on a CPU, where PyTorch
    keeps no per-allocation peak (a process-wide RSS peak would mix the two models)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20


class _FlopCounter(TorchDispatchMode):
    """Sums PyTorch's FLOP formulas (``torch.utils.flop_counter.flop_registry``) over every op
    dispatched inside it. (``FlopCounterMode`` itself also tracks modules with autograd hooks,
    which fail on LAVIS's Q-Former under no_grad.)"""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls, convolutions and attention,
    forward and backward). Elementwise work is not counted, so the ratio of two counts is
    the cost ratio a compute-bound device would show."""
    from lavis_xformer.models.base import frozen_encoders_under_no_grad

    counter = _FlopCounter()
    with frozen_encoders_under_no_grad(), counter:  # the counter cannot see inference mode
        fn()
    return counter.total


def alternate(steps: dict, clock: Clock, warmup: int, repeats: int, device: str) -> dict:
    """Run every named step ``warmup`` times, then ``repeats`` times in turn (a, b, a, b, ...),
    so that drift in the machine's speed hits every step alike.

    Returns {name: {"times_ms": [...], "median_ms", "peak_memory_mib"}}; the peak memory is
    what the step's own calls allocate on top of what was allocated before them (weights and
    optimizer state of every model in the process are left out: add the step's own)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    peaks = {name: 0.0 for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            reset_peak_memory(device)
            before = allocated_mib(device)
            with clock.time(times[name]):
                fn()
            peak = peak_memory_mib(device)
            peaks[name] = None if peak is None else max(peaks[name], peak - before)
    return {name: {"times_ms": [round(t, 3) for t in times[name]],
                   "median_ms": statistics.median(times[name]),
                   "peak_memory_mib": peaks[name]} for name in steps}
