"""Process-group set-up for torchrun/SLURM launches (NCCL on CUDA, gloo on CPU) and small collectives."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so, is_distributed_env

from timm_asap_lab.runtime import resolve_device

__all__ = ['DistEnv', 'init_distributed']

_logger = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process runs and how it talks to the others.

    Attributes:
        device: this process's device (``cuda:<local_rank>`` in distributed CUDA runs).
        rank: global rank (0 in a single process).
        local_rank: rank within the node.
        world_size: number of processes.
        distributed: a process group is in use.
        owns_group: this object created the process group (and destroys it in :meth:`close`).
    """

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False
    owns_group: bool = False

    @property
    def is_primary(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (identity in a single process)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for all ranks."""
        if self.distributed:
            if self.device.type == 'cuda':
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str | torch.device | None = None) -> DistEnv:
    """Join the process group that torchrun (or SLURM) describes in the environment, if any.

    Uses timm's ``init_distributed_device_so``: NCCL for CUDA devices, gloo for CPU. In a distributed
    CUDA run each process uses ``cuda:<LOCAL_RANK>``. Without launcher variables this is a single
    process on ``device``. An existing process group (created by the caller) is reused.

    Args:
        device: ``cuda``, ``cpu``, ``cuda:1``, ...; None or ``auto`` picks CUDA when available
            (:func:`timm_asap_lab.runtime.resolve_device`).

    Returns:
        The :class:`DistEnv` of this process.

    Raises:
        ValueError: not a device, or CUDA was asked for but is not available.
    """
    device = str(resolve_device(device))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get('LOCAL_RANK', rank))
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
        return DistEnv(torch.device(device), rank, local_rank, world, world > 1, owns_group=False)
    if not is_distributed_env():
        if device.startswith('cuda:'):
            torch.cuda.set_device(device)
        return DistEnv(torch.device(device))
    info = init_distributed_device_so(device=device)
    env = DistEnv(torch.device(info['device']), info['global_rank'], info['local_rank'], info['world_size'],
                  info['distributed'], owns_group=info['distributed'])
    if env.is_primary:
        backend = dist.get_backend() if env.distributed else 'none'
        _logger.info(f"distributed: world size {env.world_size}, backend {backend}, device {env.device}")
    return env
