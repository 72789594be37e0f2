"""Device and numeric precision selection, in one place for the predictor, CLI and node."""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

log = logging.getLogger(__name__)

#: Why fp16 never runs on a CPU: PyTorch has no fast fp16 CPU kernels for these convolutions. Measured
#: on a 2-core AMD EPYC (Zen 4), torch 2.14, tiny preset, 1 thread: image encoder 624 ms in fp16 vs
#: 20 ms in fp32; ``ovsam segment --model rn50x16`` gave no result in 10 min in fp16 vs 33 s in fp32.
CPU_FP16_COST = "measured 30x slower than fp32; rn50x16: no result in 10 min vs 33 s"

#: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX), same machine, 2 threads, RN50x16 preset:
#: image encoder 4.9 s vs 9.6 s in fp32 (prompt decoder equal); tiny preset: no difference (noise).
#: Without native bf16 (oneDNN limited to AVX2) bf16 is emulated: 27x slower than fp32 (tiny).
CPU_BF16_GAIN = "RN50x16 image encoder 1.9x faster than fp32"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX), not emulated."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device, source: str = "") -> str:
    """The precision a predictor built for ``device`` runs: ``precision``, except fp16 on a CPU.

    fp16 on a CPU runs fp32, with one WARNING that says so; this holds for an explicit request
    (``--precision fp16 --device cpu``) too: fp16 on a CPU is never what a user wants
    (:data:`CPU_FP16_COST`), and fp32 is the exact result fp16 approximates. bf16 is not picked
    automatically, although on CPUs with native bf16 it can be faster (:data:`CPU_BF16_GAIN`):
    it is less exact than the fp16 that was asked for (docs/fidelity.md) and much slower on CPUs
    without native bf16; the warning names it as the opt-in. Other precisions and devices pass
    unchanged. ``source``: where ``precision`` came from, for the message (e.g. a YAML path).
    """
    check_precision(precision)
    device = torch.device(device)
    if precision != "fp16" or device.type != "cpu":
        return precision
    where = f" ({source})" if source else ""
    if cpu_has_native_bf16():
        bf16 = (f" This CPU has native bf16: precision bf16 is faster ({CPU_BF16_GAIN}) but less exact than fp16 "
                "(docs/fidelity.md).")
    else:
        bf16 = " bf16 would be slower still (this CPU has no native bf16)."
    log.warning("precision fp16%s on cpu: running fp32 instead (fp16 has no fast CPU kernels: %s; it runs on "
                "CUDA only and cannot be forced on a CPU).%s", where, CPU_FP16_COST, bf16)
    return "fp32"


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Mixed precision for the heavy matmuls/convs; fp32 runs without autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])
