"""torchrun's environment contract: who am I, how many are we, where is rank 0.

Pods run under torchrun (node rank = the Job's completion index); local mode sets the
same variables itself. NCCL on GPUs, Gloo on CPUs. `MODELPLANE_DIST_TIMEOUT_S` (seconds,
default 600) bounds how long a collective waits for the other ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from modelplane_runtime.contract import ENV_DIST_TIMEOUT
from modelplane_runtime.errors import ConfigError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0


def collective_timeout(environ: Mapping[str, str]) -> timedelta:
    """`MODELPLANE_DIST_TIMEOUT_S` as a timedelta (600 s when unset). Anything but a
    positive, finite number of seconds is a configuration error: a run must not start
    with a timeout it would misread."""
    raw = environ.get(ENV_DIST_TIMEOUT)
    if raw is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"{ENV_DIST_TIMEOUT}={raw!r}: must be a positive number of seconds "
            f"(unset for the default, {DEFAULT_TIMEOUT_S:.0f})"
        )
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls) -> DistEnv:
        env = os.environ
        return cls(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
            node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", "0"))),
        )

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def init(self) -> None:
        """Join the process group (MASTER_ADDR/MASTER_PORT and the collective timeout
        from the environment). A bad timeout fails even a single process: the same
        config must not pass alone and fail when scaled out."""
        timeout = collective_timeout(os.environ)
        if not self.distributed or dist.is_initialized():
            return
        device = self.device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=self.rank,
            world_size=self.world_size,
            timeout=timeout,
        )

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def from_main(self, make: Callable[[], T]) -> T:
        """`make()` run on rank 0 only; every rank gets its result (pickled)."""
        if not dist.is_initialized():
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()
