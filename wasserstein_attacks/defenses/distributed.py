"""Data parallelism for training: the process group from ``torchrun``'s environment, shards, sums.

Each rank trains on its contiguous slice of every global batch (and attacks only that slice). Attacks
draw their randomness per example from the run seed and the example's dataset index, so a slice gives the
same adversarial examples as the whole batch in one process, and the summed gradient equals the one-process
gradient up to float rounding. Gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_info", "init_from_env", "shard_positions", "all_sum"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``[0, world)``, ``world`` processes, its ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True on the rank that writes files and logs (rank 0)."""
        return self.rank == 0


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {device!r}") from None


def dist_info(device: str | torch.device | None = None) -> DistInfo:
    """Return this process's rank, world size (1 without an initialised process group) and device.

    ``device``: ``"auto"``/``None`` (``cuda:$LOCAL_RANK`` when CUDA is available, else CPU) or a device.
    """
    dev = _pick_device(device)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), dev)
    return DistInfo(0, 1, dev)


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...).

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or the group exists already.
    ``backend``: default ``nccl`` with CUDA, else ``gloo``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def shard_positions(batch: int, rank: int, world: int) -> torch.Tensor:
    """Positions ``[n]`` (int64) of a global batch of ``batch`` examples that ``rank`` trains on.

    Every ``world``-th position from ``rank`` on: the shards partition the batch, differ in size by one at
    most, and each takes an equal share of any leading run of positions (the clean share of a batch
    falls on every rank alike, so the ranks' attack work stays balanced). With ``batch < world`` some
    ranks get none.
    """
    return torch.arange(batch)[rank::world]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (``t`` itself in one process); ``t`` is summed in place."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
