"""Timing, memory and FLOP measurement of one callable at a time.

``Clock`` times on the device the work runs on (CUDA events on a GPU, wall clock on a CPU);
each measured call ends with a synchronisation, so a step's time is the whole step's.
"""
import math
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
    """Run every named step ``warmup`` times, then ``repeats`` rounds of one call each, in an
    order that rotates by round (a, b, c; b, c, a; ...), so that drift in the machine's speed
    hits every step alike and each round gives a paired ratio (``paired_ratio``).

    Returns {name: {"times_ms": [...], "median_ms", "peak_memory_mib"}}; the peak memory is
    what the step's own calls allocate on top of what was allocated before them (weights and
    optimizer state of every model in the process are left out: add the step's own)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    peaks = {name: 0.0 for name in steps}
    names = list(steps)
    for i in range(repeats):
        # the order rotates by round, so that no step always runs first (or after the same one)
        for name in names[i % len(names):] + names[: i % len(names)]:
            fn = steps[name]
            reset_peak_memory(device)
            before = allocated_mib(device)
            with clock.time(times[name]):
                fn()
            peak = peak_memory_mib(device)
            peaks[name] = None if peak is None else max(peaks[name], peak - before)
    return {name: {"times_ms": [round(t, 3) for t in times[name]],
                   "median_ms": statistics.median(times[name]),
                   "peak_memory_mib": peaks[name]} for name in steps}


def median_ci_ranks(n: int, confidence: float = 0.95):
    """1-based ranks (lo, hi) of the order statistics that bound the median of ``n`` samples
    with at least ``confidence`` (distribution-free: the number of samples below the median
    is Binomial(n, 1/2)), and their exact coverage; None when n is too small (n < 6 at 95%)."""
    alpha = 1.0 - confidence
    cdf, k = 0.0, 0
    for i in range(n + 1):  # largest k with P(X <= k - 1) <= alpha / 2
        cdf += math.comb(n, i) / 2 ** n
        if cdf > alpha / 2:
            break
        k = i + 1
    if k < 1:
        return None
    below = sum(math.comb(n, i) for i in range(k)) / 2 ** n
    return k, n - k + 1, 1.0 - 2 * below


def paired_ratio(numerator_ms, denominator_ms, confidence: float = 0.95) -> dict:
    """Per-round ratios of two steps timed in the same rounds: their median, the
    order-statistic confidence interval of that median (``median_ci_ranks``), and their spread."""
    if len(numerator_ms) != len(denominator_ms) or not numerator_ms:
        raise ValueError("paired_ratio needs two equally long, non-empty lists of times")
    ratios = sorted(a / b for a, b in zip(numerator_ms, denominator_ms))
    ranks = median_ci_ranks(len(ratios), confidence)
    return {
        "median": statistics.median(ratios),
        "ci": None if ranks is None else [ratios[ranks[0] - 1], ratios[ranks[1] - 1]],
        "ci_confidence": None if ranks is None else round(ranks[2], 4),
        "rounds": len(ratios),
        "min": ratios[0],
        "max": ratios[-1],
    }
