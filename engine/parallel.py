"""Worker processes for a stage's per-image CPU work: `WorkerPool` builds and encodes output files while
the main process keeps the GPU busy; `map_unordered` spreads a CPU stage's images over the cores."""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from engine.cores import cores_per_process

MAX_DEFAULT_WORKERS = 8


def default_pool_workers(loader_workers: int) -> int:
    """Pool workers per process: the cores this process's share leaves after its loader workers and
    itself, at least 1, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(MAX_DEFAULT_WORKERS, cores_per_process() - loader_workers - 1))


def map_unordered(function: Callable, items: Sequence, num_workers: int, max_chunk: int = 1) -> Iterator:
    """`function` over `items`: in this process and in order (num_workers 0), or in a pool of
    num_workers processes, results as they complete, handed out in chunks of up to max_chunk items
    (about four chunks a worker). A generator: the pool lives while it is consumed."""
    if num_workers == 0:
        yield from map(function, items)
        return
    chunk = max(1, min(max_chunk, len(items) // (4 * num_workers)))
    with multiprocessing.Pool(num_workers) as pool:
        yield from pool.imap_unordered(function, items, chunksize=chunk)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerPool:
    """Runs `function(*args)` jobs in worker processes, at most two jobs per worker queued (the main
    process waits rather than piling up images); with 0 workers, inline. A job's error surfaces at the
    next `submit` or at `close`. A context manager: leaving the block waits for every job.

    Workers come from a fork server that imports `preload` (the modules holding the jobs'
    functions) once: unlike plain fork it holds no CUDA or thread state, unlike spawn each worker
    starts in a moment."""

    def __init__(self, num_workers: int, preload: Sequence[str] = ()):
        self.pool = None
        if num_workers > 0:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(preload))
            # Ctrl-C reaches the whole process group: the main process stops the pool, the
            # workers finish their (atomic) write instead of each printing a traceback.
            self.pool = ProcessPoolExecutor(num_workers, mp_context=context, initializer=_ignore_sigint)
            # Start the fork server now, so that its imports overlap the caller's next steps.
            self.pool.submit(os.getpid)
        self.max_pending = 2 * num_workers
        self.pending: collections.deque[Future] = collections.deque()

    def submit(self, function: Callable, *args) -> None:
        if self.pool is None:
            function(*args)
            return
        self.pending.append(self.pool.submit(function, *args))
        while len(self.pending) > self.max_pending or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
