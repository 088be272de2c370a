"""Data-parallel training on several processes (`torchrun`, DistributedDataParallel, gloo on CPU).

`torchrun --nproc_per_node N ...` starts N copies of the program with `RANK`, `WORLD_SIZE`,
`MASTER_ADDR` and `MASTER_PORT` in their environment. `setup()` joins them into one process group
(gloo, which runs on CPUs; NCCL would need GPUs), and the trainer then:

- draws the same shuffled order of rows on every rank (one seeded generator) and gives rank `r`
  the rows `r, r + N, r + 2N, ...` of each global batch of `batch_size` rows, so an epoch on N
  processes sees the same batches, in the same order, as an epoch on one (DistributedSampler's
  split, per batch rather than per epoch);
- averages the gradients across ranks after every backward pass (DDP), so every rank takes the
  same optimiser step and the weights stay identical;
- sums validation losses across ranks, so every rank makes the same early-stopping decision;
- lets only rank 0 print, write checkpoints and save the model.

Without those environment variables (or with `WORLD_SIZE=1`) none of this happens: one process
trains exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def requested() -> bool:
    """True when this process was started by torchrun (or the like) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or (dist.is_available() and dist.is_initialized())


def setup() -> World:
    """Join the process group torchrun describes in the environment (once); the current `World`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return current()


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a global batch. A batch smaller than the world lends its first row to
    the ranks left without one: every rank must take part in every step (DDP's all-reduce)."""
    part = idx[world.rank::world.size]
    return part if len(part) or not len(idx) else idx[:1]


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sums over every rank (float64, so the sum does not depend on the rank count)."""
    if not current().parallel:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of `t` (same shape and dtype on every rank), in rank order."""
    world = current()
    if not world.parallel:
        return [t]
    out = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(out, t.contiguous())
    return out


def barrier() -> None:
    if current().parallel:
        dist.barrier()
