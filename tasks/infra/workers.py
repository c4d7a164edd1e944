"""Where the loop computes: worker processes, so that a study's method loops run side by side on the cores.

`side_by_side` runs a study's jobs (one per method and grid point) in as many threads as there are
workers; each thread keeps its Prefect subflow and MLflow bookkeeping here and sends the computation
of every generation (`compute`) to a pool of that many worker processes (loky, `shared`). With one
worker, jobs run one after the other and compute in this process. A sweep whose points run in
threads shares one pool among them the same way.

Every computation runs with one torch intra-op thread, here or in a worker, so its numbers do not
depend on the number of workers (its randomness is keyed by seed, purpose, method and generation, and
one thread adds in one order). The tensors of the CPU presets are small: a gmm ple fit took 9.3 s with
one thread and 10.1 s with two, and two processes of one thread each took 8.4 s and 9.0 s side by side
on 2 cores. AUTOPHAGY_WORKERS sets the number of workers; by default the cores this process may use,
or 1 on a CUDA device (its kernels are the computation, and they do not share it well).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import pickle
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from loky import ProcessPoolExecutor

from tasks.errors import UserError
from tasks.infra.prefect_server import die_with

ENV = "AUTOPHAGY_WORKERS"
T = TypeVar("T")

_KEPT: OrderedDict[str, Any] = OrderedDict()  # in a worker: the studies it was sent last, by the sha256 of their pickle
_keep = 2  # in a worker: how many it keeps (twice the threads that send it work)
_POOL: contextvars.ContextVar[ProcessPoolExecutor | None] = contextvars.ContextVar("workers", default=None)
_threads_lock = threading.Lock()
_inside = 0  # computations under `one_thread` in this process
_saved_threads = 1


def count() -> int:
    """The number of worker processes: AUTOPHAGY_WORKERS, else the cores this process may use (1 with CUDA)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return 1 if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{ENV}={value!r} is not a number of worker processes: set it to a whole number >= 1 "
                        "(1 computes in the study's own process), or unset it to use every core")
    return int(value)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 while any computation of this process is inside (restored after the
    last one): threads waiting for each other on small tensors made a fit 25 times slower on busy cores."""
    global _inside, _saved_threads
    with _threads_lock:
        if _inside == 0:
            _saved_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _inside += 1
    try:
        yield
    finally:
        with _threads_lock:
            _inside -= 1
            if _inside == 0:
                torch.set_num_threads(_saved_threads)


def compute(fn: Callable[..., T], study: Any, *args: Any) -> T:
    """fn(study, *args) with one torch thread: in a worker process of the current `shared` block, else here. A worker
    keeps its copy of the studies it was sent last (by the hash of their pickle; at most one study per thread is
    running, and it keeps twice as many), so what a study caches (its cached properties: the reference features, the
    probes' MLE fits) is computed once per worker, not every generation."""
    pool = _POOL.get()
    if pool is None:
        with one_thread():
            return fn(study, *args)
    data = pickle.dumps(study)
    return pool.submit(_with_kept, hashlib.sha256(data).hexdigest(), data, fn, *args).result()


def _with_kept(key: str, data: bytes, fn: Callable[..., T], *args: Any) -> T:
    if key not in _KEPT:
        _KEPT[key] = pickle.loads(data)
        while len(_KEPT) > _keep:
            _KEPT.popitem(last=False)
    _KEPT.move_to_end(key)
    return fn(_KEPT[key], *args)


def _start_worker(study_process: int, keep: int) -> None:
    """A worker computes with one torch thread, keeps `keep` studies, leaves Ctrl-C to the study's process, which
    stops it, and is killed with that process."""
    global _keep
    _keep = keep
    die_with(study_process)()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


@contextmanager
def shared(workers: int) -> Iterator[None]:
    """`compute` calls made in this block, or in threads given a copy of its context, go to `workers` worker
    processes, started here (a worker dies with the thread that started it: `die_with`). None with one worker,
    and none inside another such block, whose workers they share. An exception, or Ctrl-C, kills them."""
    if workers <= 1 or _POOL.get() is not None:
        yield
        return
    # The kept studies are memory a worker means to hold: loky's check for leaks would restart it once it grows by
    # 300 MB (a fairness study's classifiers), from a thread of its own, which `die_with` ties the new worker to.
    pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(os.getpid(), 2 * workers),
                               env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(2**62)})
    token, failed = _POOL.set(pool), True
    try:
        pool.submit(int).result()  # every worker starts now, from this thread
        yield
        failed = False
    finally:
        _POOL.reset(token)
        pool.shutdown(wait=True, kill_workers=failed)


def side_by_side(job: Callable[..., T], jobs: list[tuple], workers: int) -> list[T]:
    """job(*args) for every args of `jobs`, results in that order: `workers` at a time, each in a thread with a
    copy of this context (its Prefect flow run) whose `compute` calls go to the workers of `shared(workers)`; one
    after the other, in this thread, with one worker or inside a `shared` block (a sweep's points run side by
    side). The first failure, or Ctrl-C, kills the workers, cancels the jobs not started and is raised once the
    threads have ended."""
    workers = min(workers, len(jobs))
    if workers <= 1 or _POOL.get() is not None:
        return [job(*args) for args in jobs]
    threads = ThreadPoolExecutor(workers, thread_name_prefix="method-loop")
    try:
        with shared(workers):
            try:
                futures = [threads.submit(contextvars.copy_context().run, job, *args) for args in jobs]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f.exception() for f in futures if f in done and f.exception() is not None), None)
                if failed is not None:
                    raise failed
                return [f.result() for f in futures]
            except BaseException:
                threads.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        threads.shutdown(wait=True)
