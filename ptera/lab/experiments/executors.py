"""Where trials run: in this process, in a local process pool, or on Ray.

Every executor runs the same function (``trial.run_trial``) on the same
``Setup`` and writes to the same store; they differ only in where. An
intervention trial is submitted when its control has finished (its metrics may
read the control's checkpoints).

Decisions:

* The setup is pickled once per worker with ``cloudpickle`` (lambdas in
  ``Tweak`` and metric classes defined in a script travel by value).
* Worker processes are forked on Linux (starting one costs milliseconds, where a
  spawned one spends seconds importing torch), unless CUDA is initialized, and
  spawned elsewhere. A forked worker sets one thread before any torch operation,
  so it never enters a thread pool inherited from the parent. With spawn, a
  script that runs an experiment needs the usual ``if __name__ == "__main__":``.
* Workers die with the parent, even after its ``kill -9`` (the kernel's
  parent-death signal on Linux, a thread watching the parent's pid elsewhere):
  no orphan keeps training into the store.
* An executor is any object with ``run(setup, jobs, n_epochs, done)``: ``done(trial,
  epochs_trained)`` is called in this process as each trial ends.
* The first failing trial stops the run: pending trials are cancelled, and its
  error (naming the trial) is raised. Finished epochs stay in the store.
* An interrupt (Ctrl-C, SIGINT) stops a pool at once: pending trials are
  cancelled and the workers terminated (they ignore SIGINT themselves, so a
  terminal's Ctrl-C reaches only the parent's handling); epochs committed so far
  stay, and the next run resumes from them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from .trial import Setup, run_trial

__all__ = ["Job", "ProcessExecutor", "RayExecutor", "SerialExecutor", "make_executor"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Job:
    """A trial to run, and the trial it must wait for (its control), if any."""

    id: str
    after: str | None = None


Done = Callable[[str, int], None] | None  # called in this process as each trial ends


class SerialExecutor:
    """Run trials one after the other in this process (the default)."""

    def run(self, setup: Setup, jobs: list[Job], n_epochs: int, done: Done = None) -> dict:
        queue: list[str] = []  # submitted trials, run one at a time as they are waited for

        def submit(job: Job) -> str:
            queue.append(job.id)
            return job.id

        def wait_any(handles: list) -> list:
            trial = queue.pop(0)
            return [(trial, run_trial(setup, trial, n_epochs))]

        return dispatch(jobs, submit, wait_any, lambda handles: None, done)


def dispatch(
    jobs: list[Job], submit: Callable, wait_any: Callable, cancel: Callable, done: Done
) -> dict:
    """Submit jobs as their controls finish; ``wait_any(handles) -> [(handle, result)]``."""
    waiting: dict[str | None, list[Job]] = {}
    for j in jobs:
        waiting.setdefault(j.after, []).append(j)
    running = {submit(j): j.id for j in waiting.pop(None, [])}
    results: dict[str, int] = {}
    try:
        while running:
            for handle, value in wait_any(list(running)):
                tid = running.pop(handle)
                results[tid] = value
                if done is not None:
                    done(tid, value)
                for j in waiting.pop(tid, []):
                    running[submit(j)] = j.id
    except BaseException:
        cancel(list(running))
        raise
    if waiting:  # a job waiting on a trial that was not in this run
        for j in (j for group in waiting.values() for j in group):
            raise ValueError(f"trial {j.id} waits for {j.after}, which was not scheduled")
    return results


_worker_setup: dict[str, Setup] = {}  # per worker process: the unpickled setup, by key


def setup_in_worker(key: str, payload: bytes) -> Setup:
    """The setup that ``pickle_setup`` made ``payload`` of, unpickled once per worker process."""
    setup = _worker_setup.get(key)
    if setup is None:
        import pickle

        import cloudpickle  # noqa: F401 -- registers what its pickles need

        setup = _worker_setup[key] = pickle.loads(payload)
    return setup


def _install(key: str, payload: bytes, parent: int) -> None:
    import torch

    _die_with(parent)
    # Ctrl-C in a terminal reaches the whole process group: the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    setup_in_worker(key, payload)


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` dies, even by ``kill -9``.

    A forked worker inherits both ends of the pool's task pipe, so it never reads
    EOF when the parent is gone: the kernel's parent-death signal (Linux) or a
    thread watching the parent's pid (elsewhere) ends it instead.
    """
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="ptera-parent-watch", daemon=True).start()


def _run_in_worker(key: str, payload: bytes | None, trial: str, n_epochs: int) -> int:
    return run_trial(setup_in_worker(key, payload), trial, n_epochs)


def _start_method() -> str:
    import torch

    if sys.platform == "linux" and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def pickle_setup(setup: Setup) -> tuple[str, bytes]:
    """``(key, payload)``: the setup pickled (by cloudpickle) for ``setup_in_worker``."""
    try:
        import cloudpickle
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "running trials in other processes needs cloudpickle (pip install 'ptera[lab]')"
        ) from None
    payload = cloudpickle.dumps(setup)
    import hashlib

    return hashlib.sha256(payload).hexdigest()[:16], payload


class ProcessExecutor:
    """Run trials in ``processes`` spawned worker processes on this machine."""

    def __init__(self, processes: int | None = None):
        self.processes = processes or os.cpu_count() or 1
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")

    def run(self, setup: Setup, jobs: list[Job], n_epochs: int, done: Done = None) -> dict:
        key, payload = pickle_setup(setup)
        setup.store.close()
        context = multiprocessing.get_context(_start_method())
        workers = min(self.processes, len(jobs))
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_install, initargs=(key, payload, os.getpid())
        )

        def submit(job: Job) -> Any:
            return pool.submit(_run_in_worker, key, None, job.id, n_epochs)

        def wait_any(futures: list) -> list:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            return [(f, f.result()) for f in done]

        def cancel(futures: list) -> None:
            for f in futures:
                f.cancel()

        try:
            results = dispatch(jobs, submit, wait_any, cancel, done)
        except KeyboardInterrupt:
            _terminate(pool)
            raise
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running trials finish
            raise
        pool.shutdown(wait=True)
        return results


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: workers killed mid-epoch (committed epochs stay), pending cancelled."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(2)
        if p.is_alive():
            p.kill()
            p.join()
    pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Run trials as Ray tasks (``pip install 'ptera[ray]'``); results land in the same store.

    Connects to ``address`` (``ray.init`` arguments in ``init``), or starts a local
    Ray if none is running. On a cluster the store's folder must be shared by the
    nodes (trials write their checkpoints and metrics there), unless
    ``shared_filesystem=False``: then workers send each epoch to this process, the
    store's only writer, and a trial whose worker died is resubmitted (``retries``
    times) from its last committed epoch (``relay``).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus_per_trial: float = 1,
        shared_filesystem: bool = True,
        retries: int = 2,
        **init: Any,
    ):
        self.address, self.cpus, self.init = address, num_cpus_per_trial, init
        self.shared_filesystem, self.retries = shared_filesystem, retries

    def run(self, setup: Setup, jobs: list[Job], n_epochs: int, done: Done = None) -> dict:
        try:
            import ray
        except ModuleNotFoundError:
            raise ModuleNotFoundError("RayExecutor needs Ray: pip install 'ptera[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address, **{"log_to_driver": False, **self.init})
        if not self.shared_filesystem:
            from .relay import run_relayed  # imports this module

            return run_relayed(setup, jobs, n_epochs, done, self.cpus, self.retries)
        key, payload = pickle_setup(setup)
        ref = ray.put(payload)
        remote = ray.remote(num_cpus=self.cpus, max_retries=0)(_run_in_worker)

        def submit(job: Job) -> Any:
            return remote.remote(key, ref, job.id, n_epochs)

        def wait_any(refs: list) -> list:
            done, _ = ray.wait(refs, num_returns=1)
            try:
                return [(r, ray.get(r)) for r in done]
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # the trial's own error

        def cancel(refs: list) -> None:
            for r in refs:
                ray.cancel(r)

        return dispatch(jobs, submit, wait_any, cancel, done)


def make_executor(executor: Any, processes: int | None) -> Any:
    """``None``/``"serial"``, ``"processes"`` (``processes=N``), ``"ray"``, or an object."""
    if executor is None:
        return ProcessExecutor(processes) if processes and processes > 1 else SerialExecutor()
    if executor == "serial":
        return SerialExecutor()
    if executor == "processes":
        return ProcessExecutor(processes)
    if executor == "ray":
        return RayExecutor()
    if executor == "batched":
        from .batched import BatchedExecutor  # imports this module

        return BatchedExecutor()
    if hasattr(executor, "run"):
        return executor
    raise ValueError(
        f"unknown executor {executor!r}: use 'serial', 'processes', 'ray' or an object"
    )
