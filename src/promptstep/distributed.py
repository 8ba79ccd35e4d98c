"""Data-parallel meta-training over several processes: torch.distributed with gloo on CPU and NCCL on GPU.

A run is launched either by `accelerate launch --multi_gpu --num_processes N -m promptstep.cli meta-train ...`
(or torchrun), which set RANK / WORLD_SIZE / LOCAL_RANK, or by `meta-train --num-processes N`, which spawns N
local processes. Every process holds the whole model and takes every N-th example of each batch; the outer
gradients are summed across processes before clipping and the Adam step, so the step equals the one-process
step on the same batch. Only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from promptstep.errors import InputError

T = TypeVar("T")
# Ranks other than 0 wait in the next collective while rank 0 evaluates or writes a checkpoint.
TIMEOUT = timedelta(hours=2)


def launched() -> bool:
    """Whether a launcher (accelerate, torchrun, --num-processes) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(spec: str, local_rank: int = 0, several: bool = False) -> torch.device:
    """'auto' (the local GPU if there is one, else CPU), 'cpu', 'cuda' or 'cuda:N', checked against this machine."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise InputError(f"device '{spec}' is not supported (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise InputError(f"device '{spec}' requested but torch sees no CUDA GPU here")
    if several and device.index is not None:
        raise InputError(f"device '{spec}': with several processes pass --device cuda (each takes its local GPU)")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise InputError(f"device cuda:{index} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


@dataclass
class Processes:
    """This process's place among the processes of a run (one process: rank 0 of 1, no collectives)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch: Sequence[T]) -> list[T]:
        """This process's examples of a batch: every world_size-th one, starting at its rank."""
        return list(batch[self.rank :: self.world_size])

    def reduce(self, params: Sequence[torch.Tensor], sums: dict[str, float]) -> dict[str, float]:
        """Sum every parameter's `.grad` and the logged loss sums over all processes (in place for the grads).

        A parameter that got no gradient in any process keeps `.grad = None`, as in one process.
        """
        if self.world_size == 1:
            return sums
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (sums, [p.grad is not None for p in params]))
        for index, param in enumerate(params):
            if not any(flags[index] for _, flags in gathered):
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)
        total: dict[str, float] = {}
        for part, _ in gathered:
            for key, value in part.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """`fn()` on rank 0 only (None elsewhere); an InputError it raises is raised on every rank."""
        return self._main_then_others(fn, others=False)

    def main_first(self, fn: Callable[[], T]) -> T:
        """`fn()` on rank 0, then on the others (to fill a cache once); rank 0's InputError is raised everywhere."""
        return self._main_then_others(fn, others=True)

    def _main_then_others(self, fn: Callable[[], T], others: bool) -> T | None:
        if self.world_size == 1:
            return fn()
        result, message = None, None
        if self.is_main:
            try:
                result = fn()
            except InputError as err:
                message = str(err)
        message = self.broadcast(message)
        if message is not None:
            raise InputError(message)
        if self.is_main:
            return result
        return fn() if others else None


@contextmanager
def processes(device: str = "auto") -> Iterator[Processes]:
    """The processes of this run, with the process group set up (and torn down) when a launcher started several."""
    if not launched():
        yield Processes(device=resolve_device(device))
        return
    rank, world, local = (int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    resolved = resolve_device(device, local, several=True)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        backend = "gloo"
        if not dist.is_gloo_available():
            raise InputError("this torch build has no gloo backend for multi-process CPU training")
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=resolved if backend == "nccl" else None)
    try:
        yield Processes(rank, world, resolved)
    finally:
        if owner:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, run: Callable, config: Any,
            expected: tuple[type[BaseException], ...], errors: Any, environ: dict[str, str]) -> None:
    os.environ.clear()  # the launching process's environment now, not the fork server's from its start
    os.environ.update(environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        run(config)
    except expected as err:
        errors.put((rank, err))
        sys.exit(2)


def spawn(run: Callable[[Any], Any], config: Any, n: int, expected: tuple[type[BaseException], ...]) -> None:
    """Run `run(config)` in `n` local processes; the `expected` error of the lowest rank is raised here.

    The torch threads of this process are split among the workers (at least one each).
    """
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed; run with --num-processes 1")
    threads = max(1, torch.get_num_threads() // n)
    # A fork server imports `run`'s module (torch, transformers) once and forks the workers from that clean
    # process, which never ran torch ops or touched CUDA; where there is none (Windows), spawn them afresh.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    context = mp.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([run.__module__])
    errors = context.SimpleQueue()
    args = (n, _free_port(), threads, run, config, expected, errors, dict(os.environ))
    try:
        mp.start_processes(_worker, args=args, nprocs=n, start_method=method)
    except (mp.ProcessExitedException, mp.ProcessRaisedException):
        reported = []
        while not errors.empty():
            reported.append(errors.get())
        if reported:
            raise min(reported, key=lambda item: item[0])[1] from None
        raise
