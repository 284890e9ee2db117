"""Worker pools that an interrupt ends promptly: the one place our process and thread pools are made."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def pool(jobs: int, threads: bool = False, start_method: str | None = None,
         initializer: Callable[[], None] | None = None) -> Iterator[cf.Executor]:
    """A thread or process pool that is abandoned at once when its body raises (Ctrl-C included).

    A plain ``with ProcessPoolExecutor()`` waits on exit for the tasks in
    flight; a second Ctrl-C during that wait left the interpreter joining
    live workers for minutes. Here any exception cancels what has not started
    and kills the worker processes before it propagates.
    """
    if threads:
        executor: cf.Executor = cf.ThreadPoolExecutor(jobs, thread_name_prefix="kcomplexity", initializer=initializer)
    else:
        executor = processes(jobs, start_method, initializer)
    try:
        yield executor
    except BaseException:
        abandon(executor)
        raise
    executor.shutdown(wait=True)


def processes(jobs: int, start_method: str | None = None,
              initializer: Callable[[], None] | None = None) -> cf.ProcessPoolExecutor:
    """A process pool whose ``jobs`` workers are all started now (each runs ``initializer`` at once)."""
    method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    executor = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context(method), initializer=initializer)
    # start every worker now, from this thread: a worker is started by the thread whose submit needs it, and
    # one that asked to die with its parent (PR_SET_PDEATHSIG) dies with that *thread*, e.g. a feeder thread
    for _ in range(jobs):
        executor.submit(_nothing)
    return executor


def _nothing() -> None:
    """A task that makes the pool start a worker."""


def abandon(executor: cf.Executor) -> None:
    """Cancel queued work and kill any worker processes now (threads finish their current task on their own)."""
    # taken before shutdown, which drops the executor's table of its processes
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.kill()
        except (OSError, AttributeError, ValueError):  # already gone
            pass


__all__ = ["pool", "processes", "abandon"]
