"""Global-batch sampling: the same global batches for any number of processes.

Each epoch shuffles all indices with a generator seeded by (seed, epoch) and cuts them
into global batches of `global_batch` examples; process r takes the r-th equal slice of
every global batch. So W processes with a per-process batch of B/W see, together, exactly
the batches one process with batch B sees — which makes DDP training equal to
single-process training — and a resumed run continues at (epoch, batch) without
replaying anything. The incomplete last global batch is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from modelplane_runtime.errors import ConfigError


class GlobalBatchSampler:
    def __init__(
        self, size: int, *, global_batch: int, rank: int, world_size: int, seed: int
    ) -> None:
        if global_batch % world_size:
            raise ConfigError(
                f"hyperparameters.batchSize {global_batch} must be divisible by the "
                f"{world_size} training processes (nodes x gpusPerNode)"
            )
        if size < global_batch:
            raise ConfigError(
                f"hyperparameters.batchSize {global_batch} is larger than the "
                f"{size} training examples"
            )
        self.size = size
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.seed = seed

    def __len__(self) -> int:
        return self.size // self.global_batch

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """This process's index tensors for `epoch`, from global batch `start` on."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator)
        lo = self.rank * self.per_rank
        for batch in range(start, len(self)):
            chunk = order[batch * self.global_batch : (batch + 1) * self.global_batch]
            yield chunk[lo : lo + self.per_rank]
