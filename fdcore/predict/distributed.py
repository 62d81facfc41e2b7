"""Sharding a prediction run over processes started by ``accelerate launch`` or ``torchrun``.

Rank 0 locks the output folder, checks the binding, lists the inputs and decides what is left to score; it
broadcasts that list, every rank scores ``todo[rank::world_size]`` into its own work log, and after a barrier
rank 0 merges all logs into the final files. Without ``WORLD_SIZE > 1`` in the environment nothing here touches
``torch.distributed``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence


@dataclasses.dataclass
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def process_group(device: str) -> ProcessGroup:
    """The launcher's process group (initialised here when ``WORLD_SIZE > 1``), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return ProcessGroup()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    import torch.distributed as dist

    if not dist.is_initialized():
        # Object broadcasts go through gloo on CPU; NCCL is used when each rank owns a GPU.
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return ProcessGroup(rank=rank, world_size=world_size, local_rank=local_rank)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Round-robin shard of a sorted list: balanced, and independent of everything but the list itself."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])
