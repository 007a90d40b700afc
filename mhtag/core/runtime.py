"""Where work runs: process setup (threads), device choice, seeding, distributed (torchrun) setup, progress."""

from __future__ import annotations

import atexit
import os
import random
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_THREADS: list[int] = []  # the thread count `setup` chose, applied to torch whenever torch is loaded


def default_threads() -> int:
    """`OMP_NUM_THREADS` when the user set it, else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, os.cpu_count() or 1)


def setup(threads: int | None = None, load_torch: bool = True) -> int:
    """Explicit process setup for CPU work: the thread count, and for torch flushing denormals, which otherwise
    slow CPU inference several-fold (measured 4x on a ViT here). `load_torch=False` (a server that may only
    search): torch is set up when something loads it (`torch_setup`). Returns the thread count in use."""
    n = threads if threads and threads > 0 else default_threads()
    _THREADS[:] = [n]
    if load_torch or "torch" in sys.modules:
        torch_setup()
    return n


def torch_setup() -> None:
    """Apply `setup`'s choices to torch (called by `setup`, and by whatever loads a model later)."""
    import torch

    torch.set_num_threads(_THREADS[0] if _THREADS else default_threads())
    torch.set_flush_denormal(True)


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_workers(requested: int | None = None) -> int:
    """Decoding processes: with a GPU, enough to keep it fed; on a small CPU machine none, since every
    worker takes a core from the forward pass (measured: indexing at 0.66 of bare forward speed with two
    workers on 2 cores, 0.90 with none)."""
    if requested is not None and requested >= 0:
        return requested
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        return min(8, cores)
    return 0 if cores <= 2 else min(4, cores // 4)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_process_group)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), world, local)


def _leave_process_group() -> None:
    """Destroy the process group while the interpreter is whole. Left to interpreter teardown, Gloo's worker
    threads can still hold tensors whose release then aborts the process (SIGABRT, exit -6, after the work is
    done: pytorch/pytorch#179291), which torchrun reports as a failed run."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on GPU; a no-op on CPU, where fp32 is both faster and exact."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
