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
* The driver holds the lease of each trial it dispatches (claimed before the
  task is submitted, kept fresh while it runs, kept across a resubmission,
  released when the trial ends, fails or is cancelled): to other processes a
  relayed trial is leased like a local one. A trial another live process holds
  is submitted once the driver can claim it (and is then found done).
* Checkpoints travel as the bytes the store writes, with their SHA-256: the
  driver writes the relayed bytes themselves (the same checksum is recorded as
  for a local commit, and a mismatch is an error), and a worker verifies every
  checkpoint it was sent (checksum, trial id, epoch) before loading it. The
  driver picks the resume point it sends as the serial path does: a damaged
  last checkpoint is a warning, and the trial resumes from its last good epoch.
* The setup sent to workers holds a store that refuses to open: a worker that
  tried to touch the driver's disk would fail loudly, not write elsewhere.
* A worker that dies mid-trial (killed, out of memory, node lost) is resubmitted
  by the driver with a new snapshot: the trial resumes from its last committed
  epoch (``retries`` times). A trial that raises is not retried. Ray's own task
  retries are off (a retried task would restart from its old snapshot).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .executors import Job
from .executors import dispatch as _dispatch
from .executors import pickle_setup as _pickle
from .executors import setup_in_worker as _setup_in_worker
from .store import Checkpoint, CheckpointError, Leases, checkpoint_bytes, verify_checkpoint
from .trial import Setup, backfill, resume_point, run_trial

__all__ = ["RelayStore", "run_relayed"]


class RelayStore:
    """A trial's store on a worker: reads from the task's snapshot, commits to the queue.

    ``checkpoints`` maps ``(trial, epoch)`` to the checkpoint's bytes and SHA-256.
    """

    def __init__(self, epochs: dict[str, int], checkpoints: dict, queue: Any):
        self._epochs, self._checkpoints, self.queue = dict(epochs), dict(checkpoints), queue
        self._pending: dict[tuple[str, int], bytes] = {}
        self.path = Path("relay")

    def epochs(self, trials: Any = None) -> dict[str, int]:
        trials = self._epochs if trials is None else trials
        return {t: self._epochs.get(t, -1) for t in trials}

    def hold(self, trial: str) -> Any:
        return nullcontext()  # the driver holds the lease for this worker

    def remove_leftovers(self, trial: str) -> list:
        return []  # the checkpoint folder is the driver's

    def load_checkpoint(self, trial: str, epoch: int) -> dict:
        sent = self._checkpoints.get((trial, epoch))
        if sent is None:
            raise FileNotFoundError(f"trial {trial}: epoch {epoch} was not sent to this worker")
        where = f"{trial}/epoch-{epoch}.pt (relayed to this worker)"
        return verify_checkpoint(*sent, trial, epoch, where)

    def save_checkpoint(self, trial: str, epoch: int, state: dict) -> Checkpoint:
        data = self._pending[(trial, epoch)] = checkpoint_bytes(state)
        return Checkpoint(self.path / trial / f"epoch-{epoch}.pt", _sha256(data))

    def commit_epoch(
        self, trial: str, epoch: int, metrics: dict, checkpoint: Checkpoint | None
    ) -> None:
        data = self._pending.pop((trial, epoch)) if checkpoint is not None else None
        sha = None if checkpoint is None else checkpoint.sha256
        self.queue.put(("commit", trial, epoch, metrics, data, sha))  # returns once queued
        if data is not None:
            self._checkpoints[(trial, epoch)] = (data, sha)
            self._epochs[trial] = max(self._epochs.get(trial, -1), epoch)

    def rollback(self, trial: str, epoch: int) -> None:
        self.queue.put(("rollback", trial, epoch))
        self._epochs[trial] = epoch
        for key in [k for k in self._checkpoints if k[0] == trial and k[1] > epoch]:
            del self._checkpoints[key]

    def fail(self, trial: str, error: str) -> None:
        self.queue.put(("fail", trial, error))

    def metric_names(self, trial: str) -> dict:
        return {}

    def close(self) -> None:
        pass


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


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
    """What ``trial`` will read: epochs, its resume checkpoint, its control's checkpoints.

    Checkpoints go as ``(bytes, sha256)``; the resume point is the last epoch
    whose checkpoint verifies here (a damaged one is rolled back, with a warning).
    """
    plan, store = setup.plans[trial], setup.store
    store.remove_leftovers(trial)
    done, _ = resume_point(store, plan, store.epochs([trial])[trial])
    epochs = store.epochs({trial, plan.control})
    checkpoints = {}
    if done >= 0:
        checkpoints[(trial, done)] = store.read_checkpoint(trial, done)
    if setup.metrics.registered and not plan.is_control:
        for epoch in range(max(done, 0), min(n_epochs, epochs[plan.control]) + 1):
            checkpoints[(plan.control, epoch)] = store.read_checkpoint(plan.control, epoch)
    return epochs, checkpoints


def _run_relayed(
    key: str, payload: Any, trial: str, n_epochs: int, epochs: dict, checkpoints: dict, queue: Any
) -> int:
    setup = _setup_in_worker(key, payload)
    local = dataclasses.replace(setup, store=RelayStore(epochs, checkpoints, queue))
    return run_trial(local, trial, n_epochs)


class _Task:
    """A submitted trial; its Ray reference changes when it is resubmitted.

    ``ref`` is ``None`` while another process holds the trial's lease.
    """

    def __init__(self, job: Job):
        self.job, self.ref, self.attempts = job, None, 0
        self.finished = False  # found done after another process let go of it


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
    leases = Leases(store)

    def start(task: _Task) -> None:
        if not leases.claim(task.job.id):
            return  # another live process trains it: submitted once it lets go
        if store.epochs([task.job.id])[task.job.id] >= n_epochs:  # it did, meanwhile
            plan = setup.plans[task.job.id]
            backfill(setup, plan, store.epochs([plan.id])[plan.id])  # here: all checkpoints
            task.finished = True
            return
        epochs, checkpoints = snapshot(setup, task.job.id, n_epochs)
        task.attempts += 1
        task.ref = remote.remote(key, ref, task.job.id, n_epochs, epochs, checkpoints, queue)

    def drain() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except Empty:
                return
            if item[0] == "fail":
                store.fail(item[1], item[2])
            elif item[0] == "rollback":
                store.rollback(item[1], item[2])
            else:
                _, trial, epoch, metrics, data, sha = item
                saved = None
                if data is not None:
                    saved = store.save_checkpoint_bytes(trial, epoch, data)
                    if saved.sha256 != sha:
                        raise CheckpointError(
                            f"checkpoint {saved.path} (trial {trial}, epoch {epoch}) relayed"
                            " from a worker does not match the checksum the worker computed"
                        )
                store.commit_epoch(trial, epoch, metrics, saved)

    def submit(job: Job) -> _Task:
        task = _Task(job)
        start(task)
        return task

    def wait_any(tasks: list[_Task]) -> list:
        while True:
            for task in tasks:
                if task.ref is None and not task.finished:
                    start(task)
                if task.finished:
                    leases.release(task.job.id)
                    return [(task, 0)]
            refs = [t.ref for t in tasks if t.ref is not None]
            ready = []
            if refs:
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
            else:
                time.sleep(0.2)
            drain()
            if not ready:
                continue
            task = next(t for t in tasks if t.ref == ready[0])
            try:
                result = ray.get(task.ref)
            except crashed:
                if task.attempts > retries:
                    raise
                task.ref = None
                start(task)  # from its last committed epoch, the lease still held
                continue
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # the trial's own error
            leases.release(task.job.id)
            return [(task, result)]

    def cancel(tasks: list[_Task]) -> None:
        for t in tasks:
            if t.ref is not None:
                ray.cancel(t.ref)

    with leases:  # leaving it releases the leases of failed and cancelled trials
        try:
            return _dispatch(jobs, submit, wait_any, cancel, done)
        finally:
            drain()
            queue.shutdown()
