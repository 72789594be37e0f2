"""Timing and memory measurement shared by every benchmark stage.

* :func:`measure` runs a callable ``warmup`` times untimed, then ``repeats``
  times timed (device synchronised before and after each call), and reports
  median / p90 / mean / min in milliseconds.
* Memory is measured in ONE extra, untimed call so the sampler cannot disturb
  the timings: on CUDA ``torch.cuda.max_memory_allocated`` minus what was
  allocated before the call; on the CPU the peak resident set size (sampled
  from ``/proc/self/statm`` every millisecond by a thread) minus the RSS before
  the call, after handing the allocator's free pages back to the OS (else memory
  freed by the timed calls is reused unseen). CPU numbers are approximate (sampling period);
  they answer "about how much extra memory does this stage need".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - not on CI machines
        torch.mps.synchronize()


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty list."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int
    samples_ms: list[float] = field(default_factory=list)

    @classmethod
    def from_samples(cls, samples_s: list[float], warmup: int) -> "Timing":
        ms = [s * 1e3 for s in samples_s]
        return cls(
            median_ms=statistics.median(ms), p90_ms=percentile(ms, 90), mean_ms=statistics.fmean(ms),
            min_ms=min(ms), repeats=len(ms), warmup=warmup, samples_ms=[round(v, 4) for v in ms],
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> Timing:
    """Median/p90 wall time of ``fn()`` with the device synchronised around every call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
    return Timing.from_samples(samples, warmup)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - non-Linux: fall back to the high-water mark
        return peak_rss_bytes()


def release_free_heap() -> None:
    """Give the allocator's free pages back to the OS (glibc ``malloc_trim``), so that memory freed by
    earlier calls is not silently reused: without this a call whose buffers fit in already-resident
    free heap (glibc keeps freed blocks below its ~32 MB mmap threshold) shows no RSS growth at all."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): RSS deltas only see fresh pages
        return None


def peak_rss_bytes() -> int:
    """Process high-water mark (ru_maxrss is kB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _RssSampler:
    def __init__(self, period_s: float = 0.001) -> None:
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            self._stop.wait(self.period_s)

    def __enter__(self) -> "_RssSampler":
        self.peak = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


@dataclass
class Memory:
    peak_mb: float  # extra memory at the peak of the call, relative to just before it
    kind: str  # "cuda_max_allocated" | "cpu_rss_sampled"

    def to_dict(self) -> dict[str, Any]:
        return {"peak_mb": round(self.peak_mb, 2), "kind": self.kind}


def measure_memory(fn: Callable[[], Any], device: torch.device) -> Memory:
    """Extra memory needed by one call of ``fn`` (see module docstring)."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return Memory(peak / 2**20, "cuda_max_allocated")
    release_free_heap()
    before = current_rss_bytes()
    with _RssSampler() as sampler:
        out = fn()
    del out
    return Memory(max(0, sampler.peak - before) / 2**20, "cpu_rss_sampled")


@dataclass
class StageResult:
    """One row of the benchmark table."""

    name: str  # e.g. "clip_encoder", "decode", "recognition"
    group: str  # "image" (once per frame), "prompt" (per prompt batch), "vocabulary", "everything"
    params: dict[str, Any] = field(default_factory=dict)  # {"prompts": 10} / {"classes": 1203}
    timing: Optional[Timing] = None
    memory: Optional[Memory] = None
    flops: Optional[int] = None  # torch.utils.flop_counter count (2 per multiply-add)
    note: str = ""

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}[" + ",".join(f"{k}={v}" for k, v in self.params.items()) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "group": self.group, "params": dict(self.params), "label": self.label,
            "timing": self.timing.to_dict() if self.timing else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "flops": self.flops, "gflops": None if self.flops is None else round(self.flops / 1e9, 4),
            "gmacs": None if self.flops is None else round(self.flops / 2e9, 4), "note": self.note,
        }
