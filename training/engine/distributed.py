"""Data-parallel training under torchrun: which process this is, and the few collectives the
training loop needs.

``torchrun --nproc_per_node=N -m training.commands.train ...`` (or ``-P nproc=N``, which launches
torchrun itself) starts N copies of the same run. Each builds the same model from the same
seed, trains on its own share of every epoch's batches inside ``DistributedDataParallel``
(gloo on CPU, NCCL on GPU), and only rank 0 talks to MLflow: it validates, logs, checkpoints
and registers, and tells the others what it decided.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from training.config import LR_SCALING

log = logging.getLogger(__name__)

T = TypeVar("T")



@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that talks to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def lr_factor(self, scaling: str) -> float:
        """What the configured learning rate is multiplied by for this many processes."""
        if scaling == "linear":
            return float(self.size)
        if scaling == "sqrt":
            return float(self.size) ** 0.5
        if scaling == "none":
            return 1.0
        raise ValueError(f"lr_scaling={scaling!r} is not one of {', '.join(LR_SCALING)}")

    def place(self, device: torch.device) -> torch.device:
        """On CUDA, this process's own GPU (``cuda:<local rank>``); else ``device``."""
        if not self.distributed or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {self.local_rank} of this machine has no GPU of its own "
                             f"({torch.cuda.device_count()} here): lower nproc")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every process (any picklable object)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the processes (every process passes the same keys)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return dict(zip(keys, tensor.cpu().tolist()))

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every process: each process
        updated them on its own batches since DDP last broadcast them."""
        if not self.distributed:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def current_world() -> World:
    """The world torchrun describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(rank=int(os.environ.get("RANK", "0")), size=size,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """The process group for the run (gloo on CPU, NCCL on GPU), torn down after it."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                            **({"device_id": device} if device.type == "cuda" else {}))
    log.info("process %d of %d joined the %s process group", world.rank, world.size, backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap(module: nn.Module, world: World, device: torch.device,
         find_unused: bool = False) -> nn.Module:
    """``module`` inside DistributedDataParallel, or as it is for one process.
    ``find_unused``: some parameters take no part in the loss (see ``unused_parameters``)."""
    if not world.distributed:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused)


def unused_parameters(module: nn.Module, *inputs: Any) -> list[str]:
    """The trainable parameters that get no gradient from one step of ``module(*inputs)``
    (a timm stage read-out may keep the later blocks). DDP waits forever for their
    gradients unless told to look for unused ones, which costs a graph walk every step, so
    it is told only when there are some. The step runs on a copy, with the random state
    put back, so training is as if it had not happened."""
    probe = copy.deepcopy(module)
    devices = [inputs[0].device.index or 0] if inputs[0].is_cuda else []
    with torch.random.fork_rng(devices=devices):
        loss = probe(*inputs)[0]
        loss.backward()
    return [name for name, p in probe.named_parameters() if p.requires_grad and p.grad is None]


def checksum(module: nn.Module) -> str:
    """A short digest of every parameter and buffer: equal on every process, or the
    replicas drifted apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def launch(nproc: int, module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` as ``nproc`` processes on this machine with torchrun's
    launcher (its ``--standalone`` rendezvous), each with its share of the CPU cores;
    returns 0, or 1 when a process failed (its error is printed above)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=uuid.uuid4().hex, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0)
    log.info("starting %d data-parallel processes of %s", nproc, module)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", module, *argv)
    except SignalException as exc:  # Ctrl-C / SIGTERM: the processes got it too and said why
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        print(f"error: {len(exc.failures)} of {nproc} data-parallel processes failed (exit "
              f"{', '.join(map(str, codes))}); the first one's error is above", file=sys.stderr)
        return next((c for c in codes if c > 1), 1)  # 130/143 (interrupted) before 1
    return 0
