"""Data-parallel training under torchrun (`torchrun --nproc_per_node N -m agent.cli world train
unified ...`): each process trains on its share of every batch and DDP averages the gradients; the
stages that are not data parallel run on rank 0 while the others wait. Without torchrun: one
process, rank 0 of 1, and nothing here does anything."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, rows: list) -> list:
        """This process's rows of a batch (all of them in one process)."""
        return rows[self.rank::self.world]

    def wrap(self, model):
        """The model as this process trains it: DDP averages gradients across processes."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def wait(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def alone(self):
        """A stage rank 0 runs by itself: it gets every process's thread while the others wait."""
        import torch

        threads = torch.get_num_threads()
        if self.main:
            torch.set_num_threads(threads * self.world)
        try:
            yield self.main
        finally:
            torch.set_num_threads(threads)
        self.wait()


def init_ranks() -> Ranks:
    """Joins the process group torchrun set up (gloo on CPUs, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # rank 0's stages alone (the VQ tokenizer: half an hour on a CPU) must not time the others out
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=12))
    return Ranks(dist.get_rank(), world)
