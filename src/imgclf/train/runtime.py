"""The process a run trains in: torchrun/DDP membership, the device, CPU threads, cross-rank agreement.

Launched by ``torchrun``, a run calls :func:`init_distributed` first (gloo on CPU, nccl on GPU);
the trainer then wraps the model in DDP, shards its data (``batch_size`` stays the global batch),
sums evaluation metrics over ranks (:func:`all_reduce_sum`) and agrees on stop decisions every
step (:func:`any_rank`); only rank 0 writes files or shows progress. :func:`leave_distributed`
ends the process group when the command is done.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import nn


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1).

    Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` for a plain process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size(), local_rank


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def leave_distributed() -> None:
    """Leave the process group if this process joined one (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op in a plain process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def configure_cpu(threads: int | None = None, local_processes: int | None = None) -> int:
    """Intra-op threads: ``threads``, else ``IMGCLF_THREADS``, else this process's share of the CPUs.

    Returns the number set. ``OMP_WAIT_POLICY=PASSIVE`` (set by the CLI before torch loads) keeps
    idle OpenMP threads from spinning on shared machines.
    """
    from imgclf.engine import default_threads

    procs = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = threads or max(1, default_threads() // max(1, procs))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        pass
    return n


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def sync_device(device: torch.device) -> torch.device:
    """Where tensors for collectives live: the training device under nccl, else the CPU (gloo)."""
    return device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` summed over ranks (``t`` itself in a plain process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    t = t.to(sync_device(device))
    dist.all_reduce(t)
    return t


def any_rank(flags: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of ``flags`` over ranks, so every rank takes the same decision."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flags
    t = torch.tensor(flags, device=sync_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def wrap_for_training(module: nn.Module, device: torch.device, *, world: int = 1,
                      find_unused_parameters: bool = False, compile: bool = False) -> nn.Module:
    """What the loop calls: ``module`` itself, in DDP across ``world`` processes, and/or compiled."""
    net = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # A weight with a size-1 dim (a 1-channel input conv) has two valid stride sets; oneDNN
        # returns its grad in the other one and DDP warns on every step although it just copies
        # such a small grad into its bucket.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=find_unused_parameters)
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net
