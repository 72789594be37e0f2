"""CPU-checkable proxies for GPU overhead: how many aten ops a call runs, which casts touch weights.

On a GPU most aten ops are one kernel launch, so the op count per frame tracks launch
overhead; BatchNorm ops and casts of weights are the overheads the inference path removes.
Both are counted with torch.profiler on the CPU, so CI can pin them without a GPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["OpProfile", "profile_ops"]


@dataclass
class OpProfile:
    counts: Counter = field(default_factory=Counter)  # aten op name -> calls (nested calls included)
    cast_shapes: list = field(default_factory=list)  # input shape of every aten::_to_copy

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def batch_norm(self) -> int:
        return sum(n for name, n in self.counts.items() if "batch_norm" in name)

    @property
    def casts(self) -> int:
        return len(self.cast_shapes)

    def weight_casts(self, tensors: Iterable[torch.Tensor]) -> list[tuple[int, ...]]:
        """Casts whose input is shaped like one of ``tensors`` (e.g. ``model.parameters()``).

        The profiler cannot tell a weight from an activation of the same shape; OVSAM's weights
        have no batch axis (except the position embedding), so the shapes tell them apart.
        """
        shapes = {tuple(t.shape) for t in tensors if t.dim() > 0}
        return [s for s in self.cast_shapes if s in shapes]


def profile_ops(fn: Callable[[], Any]) -> OpProfile:
    """Run ``fn`` once under torch.profiler (CPU) and count its aten ops and dtype casts."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out = OpProfile()
    for event in prof.events():
        if event.name.startswith("aten::"):
            out.counts[event.name] += 1
            if event.name == "aten::_to_copy" and event.input_shapes:
                out.cast_shapes.append(tuple(event.input_shapes[0]))
    return out
