"""Multi-process training on torch.distributed: gloo on CPU, nccl on CUDA; torchrun-compatible.

``momos train --devices N`` spawns N ranks on this machine that talk over
127.0.0.1 only. Every rank builds the same model from the same seed, DDP
averages the gradients, and rank 0 projects with the seeded MoMos generator
and broadcasts the weights, so they stay identical on every rank (the log
records a checksum per rank to show it). Rank 0 alone writes the run directory. Under
``torchrun`` (RANK and WORLD_SIZE set) the ranks it started are used as they are.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import RunError

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all ranks (identity with one rank)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def checksums(self, module: torch.nn.Module) -> list[str]:
        """Every rank's checksum of its trainable parameters, in rank order."""
        mine = checksum(module)
        if self.world == 1:
            return [mine]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, mine)
        return out

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Every rank's trainable parameters set to rank 0's (no-op with one rank)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in module.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, 0)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.broadcast(t, 0)
        return bool(t.item())


def current() -> Ranks:
    return Ranks(dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else Ranks()


def checksum(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of the bytes of every trainable parameter, in order."""
    h = hashlib.sha256()
    for p in module.parameters():
        if p.requires_grad:
            h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def backend(device: str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str, rank: int) -> str:
    """Each rank's own GPU on CUDA; the CPU is shared."""
    return f"cuda:{rank}" if torch.device(device).type == "cuda" else device


#: what torchrun sets for every rank; a partial set is a leftover of another launch
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: how long a rank waits for its peers before giving up (a peer that never comes must not hang a run)
RENDEZVOUS_TIMEOUT = timedelta(seconds=120)


def under_torchrun() -> bool:
    """True when torchrun started this process: every variable it sets is present and consistent.

    RunError for a partial or inconsistent set (stale variables in a shell),
    which would otherwise wait for peers that never come.
    """
    present = [v for v in TORCHRUN_VARS if v in os.environ]
    if not present:
        return False
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RunError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}, as torchrun would: "
                       "leftovers of another launch? unset them, or start the ranks with torchrun")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        int(os.environ["MASTER_PORT"])
    except ValueError:
        raise RunError("RANK, WORLD_SIZE and MASTER_PORT must be integers (torchrun sets them)") from None
    if not 0 <= rank < world:
        raise RunError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world}); unset stale variables or "
                       "start the ranks with torchrun")
    return True


def init_from_env(device: str) -> Ranks:
    """Join the process group torchrun described in the environment (RunError after RENDEZVOUS_TIMEOUT)."""
    try:
        dist.init_process_group(backend(device), timeout=RENDEZVOUS_TIMEOUT)
    except (RuntimeError, ValueError) as exc:  # torch raises DistNetworkError/DistStoreError (RuntimeErrors)
        raise RunError(f"could not meet the other ranks at {os.environ.get('MASTER_ADDR')}:"
                       f"{os.environ.get('MASTER_PORT')}: {str(exc).splitlines()[0][:200]}") from None
    return current()


def spawn(fn: Callable[..., Any], world: int, device: str, args: tuple) -> None:
    """Run ``fn(*args)`` on ``world`` new ranks of this machine (loopback only) and wait for all of them."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on the loopback interface
        s.bind((LOCALHOST, 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_entry, args=(world, port, backend(device), fn, args), nprocs=world, join=True)


def _rank_entry(rank: int, world: int, port: int, backend_name: str, fn: Callable[..., Any], args: tuple) -> None:
    die_with_parent()
    if backend_name == "gloo":  # ranks share the CPU: split its cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend_name, init_method=f"tcp://{LOCALHOST}:{port}", rank=rank, world_size=world,
                            timeout=RENDEZVOUS_TIMEOUT)
    try:
        fn(*args)
        # all ranks done before any tears its connections down: a rank that destroyed its group while a
        # peer was still finishing aborted now and then ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # the rank's work is written and its group torn down: leave without interpreter finalisation, where the
    # destructors of torch.distributed's C++ state aborted a rank now and then under load after a complete run
    # (SIGABRT, "terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def die_with_parent() -> None:
    """On Linux a rank is killed with the process that spawned it, so a killed run leaves no rank writing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


__all__ = ["Ranks", "current", "checksum", "spawn", "under_torchrun", "init_from_env", "backend", "rank_device"]
