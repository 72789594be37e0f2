"""Deterministic, resumable, rank-sharded batch order.

One *step* = one optimizer step = ``global_batch`` images, the same images
whatever the number of processes: epoch ``e`` permutes the dataset with a
generator seeded by ``(seed, e)``; step ``t`` takes
``perm[t*B:(t+1)*B]``; with gradient accumulation ``A`` that chunk is cut
into ``A`` micro-batches, and rank ``r`` of ``W`` takes every ``W``-th item
of each micro-batch (``DistributedSampler``'s interleaving). So one process
with batch 8 and two processes with 4 each see the same global batches, and a
resumed run continues at (epoch, step) without replaying anything.

Items are ``(epoch, index)`` keys: datasets seed their per-sample randomness
from them.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Sampler


def steps_per_epoch(dataset_len: int, global_batch: int) -> int:
    return dataset_len // global_batch


class StepBatchSampler(Sampler[List[Tuple[int, int]]]):
    def __init__(
        self,
        dataset_len: int,
        global_batch: int,
        grad_accum: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
    ) -> None:
        if global_batch < 1 or grad_accum < 1 or world_size < 1:
            raise ValueError("global_batch, grad_accum and world_size must be >= 1")
        if global_batch % (grad_accum * world_size):
            raise ValueError(
                f"batch_size {global_batch} must be divisible by grad_accum x world_size = "
                f"{grad_accum} x {world_size}")
        if dataset_len < global_batch:
            raise ValueError(f"the dataset has {dataset_len} sample(s), fewer than one batch of {global_batch}")
        self.n, self.batch, self.accum = dataset_len, global_batch, grad_accum
        self.world, self.rank = world_size, rank
        self.seed, self.epoch, self.start_step, self.shuffle = seed, epoch, start_step, shuffle
        self.steps = steps_per_epoch(dataset_len, global_batch)
        self.micro = global_batch // grad_accum
        self.per_rank = self.micro // world_size

    def order(self) -> List[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + int(self.epoch)) & 0x7FFFFFFFFFFFFFFF)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        perm = self.order()
        for t in range(self.start_step, self.steps):
            chunk = perm[t * self.batch:(t + 1) * self.batch]
            for m in range(self.accum):
                micro = chunk[m * self.micro:(m + 1) * self.micro]
                yield [(self.epoch, i) for i in micro[self.rank::self.world]]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.accum


class RunBatchSampler(Sampler[List[Tuple[int, int]]]):
    """The micro-batches of ``steps`` optimizer steps from (``epoch``, ``start_step``) on, across epochs.

    Exactly :class:`StepBatchSampler`'s batches, epoch after epoch, behind one
    iterator: a single DataLoader then serves the whole run, so its workers
    are started once and keep prefetching across epoch boundaries (a loader per
    epoch restarted every worker and drained the prefetch queue each epoch).
    """

    def __init__(self, dataset_len: int, global_batch: int, grad_accum: int = 1, world_size: int = 1, rank: int = 0,
                 seed: int = 0, epoch: int = 0, start_step: int = 0, steps: int = 0, shuffle: bool = True) -> None:
        self.args = dict(dataset_len=dataset_len, global_batch=global_batch, grad_accum=grad_accum,
                         world_size=world_size, rank=rank, seed=seed, shuffle=shuffle)
        first = StepBatchSampler(epoch=epoch, start_step=start_step, **self.args)  # validates the arguments
        self.epoch, self.accum, self.steps = epoch, grad_accum, max(0, int(steps))
        self.start_step = start_step
        if start_step >= first.steps:  # resumed exactly at an epoch end
            self.epoch, self.start_step = epoch + 1, 0

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        left = self.steps * self.accum
        epoch, start = self.epoch, self.start_step
        while left > 0:
            for micro in StepBatchSampler(epoch=epoch, start_step=start, **self.args):
                yield micro
                left -= 1
                if left == 0:
                    return
            epoch, start = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps * self.accum
