"""Ray without a shared filesystem: workers relay each epoch to the driver, the store's only writer.

``RayExecutor(shared_filesystem=False)`` runs trials as Ray tasks that never open
the store: SQLite on a network filesystem is fragile, and a cluster's nodes may
share no disk at all.

Decisions:

* A task carries a snapshot of what its trial reads: the last committed epoch of
  the trial and of its control, the trial's last checkpoint (to resume), and the
  control's checkpoints of the epochs it will measure (for metrics relative to
  the control). A trial's store on the worker (``RelayStore``) answers from it.
* Each committed epoch (metrics and the checkpoint's bytes) goes to a Ray queue;
  the driver drains it and writes through the ordinary ``Store`` (checkpoint file
  first, then one transaction), so a worker commits exactly what the serial path
  commits. A trial counts as finished only after the queue is drained: its epochs
  are in the store before its interventions are submitted.
* The setup sent to workers holds a store that refuses to open: a worker that
  tried to touch the driver's disk would fail loudly, not write elsewhere.
* A worker that dies mid-trial (killed, out of memory, node lost) is resubmitted
  by the driver with a new snapshot: the trial resumes from its last committed
  epoch (``retries`` times). A trial that raises is not retried. Ray's own task
  retries are off (a retried task would restart from its old snapshot).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from .executors import Job
from .executors import dispatch as _dispatch
from .executors import pickle_setup as _pickle
from .executors import setup_in_worker as _setup_in_worker
from .trial import Setup, run_trial

__all__ = ["RelayStore", "run_relayed"]


def _to_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class RelayStore:
    """A trial's store on a worker: reads from the task's snapshot, commits to the queue."""

    def __init__(self, epochs: dict[str, int], checkpoints: dict, queue: Any):
        self._epochs, self._checkpoints, self.queue = dict(epochs), dict(checkpoints), queue
        self._pending: dict[tuple[str, int], bytes] = {}
        self.path = Path("relay")

    def epochs(self, trials: Any = None) -> dict[str, int]:
        trials = self._epochs if trials is None else trials
        return {t: self._epochs.get(t, -1) for t in trials}

    def load_checkpoint(self, trial: str, epoch: int) -> dict:
        data = self._checkpoints.get((trial, epoch))
        if data is None:
            raise FileNotFoundError(f"trial {trial}: epoch {epoch} was not sent to this worker")
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")

    def save_checkpoint(self, trial: str, epoch: int, state: dict) -> Path:
        self._pending[(trial, epoch)] = _to_bytes(state)
        return self.path / trial / f"epoch-{epoch}.pt"

    def commit_epoch(self, trial: str, epoch: int, metrics: dict, checkpoint: Path | None) -> None:
        data = self._pending.pop((trial, epoch)) if checkpoint is not None else None
        self.queue.put(("commit", trial, epoch, metrics, data))  # returns once queued
        if data is not None:
            self._checkpoints[(trial, epoch)] = data
            self._epochs[trial] = max(self._epochs.get(trial, -1), epoch)

    def fail(self, trial: str, error: str) -> None:
        self.queue.put(("fail", trial, error))

    def metric_names(self, trial: str) -> dict:
        return {}

    def close(self) -> None:
        pass


class _Unreachable:
    """The store as workers see it: any use is an error."""

    def __init__(self, path: Path):
        self.path = path

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"a worker tried to use the store ({name}) at {self.path}; with"
            " shared_filesystem=False only the driver writes it"
        )

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def snapshot(setup: Setup, trial: str, n_epochs: int) -> tuple[dict, dict]:
    """What ``trial`` will read: epochs, its last checkpoint, its control's checkpoints."""
    plan, store = setup.plans[trial], setup.store
    epochs = store.epochs({trial, plan.control})
    checkpoints = {}
    done = epochs[trial]
    if done >= 0:
        checkpoints[(trial, done)] = _to_bytes(store.load_checkpoint(trial, done))
    if setup.metrics.registered and not plan.is_control:
        for epoch in range(max(done, 0), min(n_epochs, epochs[plan.control]) + 1):
            checkpoints[(plan.control, epoch)] = _to_bytes(
                store.load_checkpoint(plan.control, epoch)
            )
    return epochs, checkpoints


def _run_relayed(
    key: str, payload: Any, trial: str, n_epochs: int, epochs: dict, checkpoints: dict, queue: Any
) -> int:
    setup = _setup_in_worker(key, payload)
    local = dataclasses.replace(setup, store=RelayStore(epochs, checkpoints, queue))
    return run_trial(local, trial, n_epochs)


class _Task:
    """A submitted trial; its Ray reference changes when it is resubmitted."""

    def __init__(self, job: Job, ref: Any):
        self.job, self.ref, self.attempts = job, ref, 1


def run_relayed(
    setup: Setup, jobs: list[Job], n_epochs: int, done: Any, cpus: float, retries: int
) -> dict:
    """Run ``jobs`` as Ray tasks (Ray initialized) with this process as the only writer."""
    import ray
    from ray.util.queue import Empty, Queue

    crashed = tuple(
        getattr(ray.exceptions, name)
        for name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
        if hasattr(ray.exceptions, name)
    )
    store = setup.store
    key, payload = _pickle(dataclasses.replace(setup, store=_Unreachable(store.path)))
    ref = ray.put(payload)
    queue = Queue()
    remote = ray.remote(num_cpus=cpus, max_retries=0)(_run_relayed)

    def start(job: Job) -> Any:
        epochs, checkpoints = snapshot(setup, job.id, n_epochs)
        return remote.remote(key, ref, job.id, n_epochs, epochs, checkpoints, queue)

    def drain() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except Empty:
                return
            if item[0] == "fail":
                store.fail(item[1], item[2])
                continue
            _, trial, epoch, metrics, data = item
            path = None
            if data is not None:
                state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
                path = store.save_checkpoint(trial, epoch, state)
            store.commit_epoch(trial, epoch, metrics, path)

    def submit(job: Job) -> _Task:
        return _Task(job, start(job))

    def wait_any(tasks: list[_Task]) -> list:
        while True:
            ready, _ = ray.wait([t.ref for t in tasks], num_returns=1, timeout=0.2)
            drain()
            if not ready:
                continue
            task = next(t for t in tasks if t.ref == ready[0])
            try:
                return [(task, ray.get(task.ref))]
            except crashed:
                if task.attempts > retries:
                    raise
                task.attempts += 1
                task.ref = start(task.job)  # from its last committed epoch
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # the trial's own error

    def cancel(tasks: list[_Task]) -> None:
        for t in tasks:
            ray.cancel(t.ref)

    try:
        return _dispatch(jobs, submit, wait_any, cancel, done)
    finally:
        drain()
        queue.shutdown()
