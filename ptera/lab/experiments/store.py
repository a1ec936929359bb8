"""Where trials live: SQLite (WAL) for configs and metrics, files for checkpoints.

Decisions:

* A trial's row holds its config (JSON) and ``epochs``, the last epoch whose
  metrics and checkpoint are both committed (-1: nothing yet; 0: the evaluation
  before training). Metrics, the checkpoint's path and ``epochs`` of one epoch are
  written in ONE transaction, after the checkpoint file is in place (written to a
  temporary name and renamed), so a crash at any point loses at most the epoch
  in progress and never leaves a metric without its checkpoint.
* Each checkpoint holds its trial's id and epoch, and its row the SHA-256 of its
  bytes: a damaged, truncated or swapped file is a ``CheckpointError`` naming it,
  never weights loaded silently (the trial then resumes from its last good
  epoch, see ``trial.py``). Temporary files of writes cut short are removed
  when the trial next runs.
* Checkpoint paths are stored relative to the store's folder: the folder can move.
* A diverged metric is stored as what it is: infinities as SQLite's infinite
  REALs, NaN (which SQLite would turn into NULL, a missing value) as the text
  ``'nan'``, read back as ``float('nan')``.
* One process trains a trial at a time: it takes the trial's lease (a row with
  its host, pid and heartbeat, written in a transaction) and keeps it fresh
  while it trains; another process waits for it, and takes over a lease whose
  holder died (its pid is gone, or its heartbeat stopped for a minute). A
  process holding several leases (a batched group, a Ray driver relaying its
  workers' epochs) keeps them fresh from one thread (``Leases``).
* A checkpoint is verified from its bytes and recorded checksum wherever it is
  read (``verify_checkpoint``): from the store's folder, or from bytes relayed
  to a worker without the folder.
* Every process opens its own connection; WAL and a busy timeout let workers of
  one experiment commit side by side.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Checkpoint", "CheckpointError", "Leases", "Store", "verify_checkpoint"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    epochs INTEGER NOT NULL DEFAULT -1,
    updated REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    trial TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (trial, epoch, split, name)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    trial TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT,
    PRIMARY KEY (trial, epoch)
);CREATE TABLE IF NOT EXISTS leases (
    trial TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    key TEXT PRIMARY KEY,
    layout TEXT NOT NULL,
    n_epochs INTEGER NOT NULL,
    updated REAL
);
"""


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or not the trial's and epoch's."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file written for an epoch, and the SHA-256 of its bytes."""

    path: Path
    sha256: str


class Store:
    """The SQLite file of an experiment and the folder of its checkpoints."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()
        self.checkpoints = self.path.with_name(self.path.stem + ".checkpoints")
        self._db: sqlite3.Connection | None = None
        self._pid = -1

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # never share a connection across fork
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(checkpoints)")}
                if "sha256" not in columns:  # a store written before checksums
                    db.execute("ALTER TABLE checkpoints ADD COLUMN sha256 TEXT")
            except sqlite3.DatabaseError as exc:
                raise ValueError(f"{self.path} is not a usable experiment store: {exc}") from None
            self._db, self._pid = db, os.getpid()
        return self._db

    def __getstate__(self) -> dict:
        return {"path": self.path, "checkpoints": self.checkpoints, "_db": None, "_pid": -1}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @classmethod
    def existing(cls, path: str | os.PathLike) -> Store:
        """The store at ``path``; ``FileNotFoundError`` (creating nothing) if there is none."""
        store = cls(path)
        if not store.path.is_file():
            raise FileNotFoundError(f"{store.path}: no such store (nothing has run yet)")
        return store

    # -- experiments -------------------------------------------------------------
    def record_experiment(self, key: str, layout: list[dict], n_epochs: int) -> None:
        """Remember an experiment's grid and the epochs it is being run to."""
        self.db.execute(
            "INSERT OR REPLACE INTO experiments VALUES (?, ?, ?, ?)",
            (key, json.dumps(layout), n_epochs, time.time()),
        )

    def experiment(self, key: str) -> tuple[list[dict], int] | None:
        """The layout and target epochs recorded under ``key`` (``None``: never run)."""
        row = self.db.execute(
            "SELECT layout, n_epochs FROM experiments WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    # -- trials ------------------------------------------------------------------
    def register(self, trial: str, config: dict) -> None:
        """Record a trial's config (once; an existing trial keeps its progress)."""
        self.db.execute(
            "INSERT OR IGNORE INTO trials (id, config, updated) VALUES (?, ?, ?)",
            (trial, json.dumps(config, sort_keys=True), time.time()),
        )

    def epochs(self, trials: Iterable[str] | None = None) -> dict[str, int]:
        """The last committed epoch of each trial (-1: none)."""
        rows = self.db.execute("SELECT id, epochs FROM trials").fetchall()
        out = dict(rows)
        return out if trials is None else {t: out.get(t, -1) for t in trials}

    def errors(self) -> dict[str, str]:
        """The last error of each trial that failed and has not committed since."""
        return dict(self.db.execute("SELECT id, error FROM trials WHERE error IS NOT NULL"))

    def fail(self, trial: str, error: str) -> None:
        self.db.execute(
            "UPDATE trials SET error = ?, updated = ? WHERE id = ?", (error, time.time(), trial)
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``): committed when
        the block ends, even by ``return``; rolled back when it raises."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- leases: one process trains a trial at a time -------------------------------
    def claim(self, trial: str) -> bool:
        """Take ``trial``'s lease unless a live process holds it (in one transaction).

        A holder is dead when its heartbeat is older than ``LEASE_STALE`` seconds,
        or, on this machine, when its process is gone.
        """
        with self._transaction() as db:
            row = db.execute("SELECT owner, heartbeat FROM leases WHERE trial = ?", (trial,))
            held = row.fetchone()
            if held is not None and held[0] != _owner() and _holder_alive(*held):
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (trial, _owner(), time.time())
            )
            return True

    def heartbeat(self, trial: str) -> None:
        """Tell other processes that this one still trains ``trial``."""
        self.db.execute(
            "UPDATE leases SET heartbeat = ? WHERE trial = ? AND owner = ?",
            (time.time(), trial, _owner()),
        )

    def release(self, trial: str) -> None:
        self.db.execute("DELETE FROM leases WHERE trial = ? AND owner = ?", (trial, _owner()))

    @contextmanager
    def hold(self, trial: str, poll: float = 0.5):
        """Wait for ``trial``'s lease, keep it fresh while inside, release it at the end."""
        with Leases(self) as leases:
            while not leases.claim(trial):
                time.sleep(poll)
            yield

    # -- epochs -----------------------------------------------------------------
    def checkpoint_path(self, trial: str, epoch: int) -> Path:
        return self.checkpoints / trial / f"epoch-{epoch}.pt"

    def save_checkpoint(self, trial: str, epoch: int, state: dict) -> Checkpoint:
        """Write ``state`` atomically (temporary file, then rename); returns its checksum."""
        return self.save_checkpoint_bytes(trial, epoch, checkpoint_bytes(state))

    def save_checkpoint_bytes(self, trial: str, epoch: int, data: bytes) -> Checkpoint:
        """Write a serialized checkpoint as ``save_checkpoint`` writes one (relayed bytes)."""
        path = self.checkpoint_path(trial, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return Checkpoint(path, hashlib.sha256(data).hexdigest())

    def load_checkpoint(self, trial: str, epoch: int) -> dict:
        """The state of ``trial`` at ``epoch``, verified (``CheckpointError`` if damaged).

        The file must have the checksum recorded when it was committed, and hold
        this trial's id and this epoch.
        """
        data, sha256, path = self._read(trial, epoch)
        return verify_checkpoint(data, sha256, trial, epoch, str(path))

    def read_checkpoint(self, trial: str, epoch: int) -> tuple[bytes, str | None]:
        """The bytes of ``trial``'s checkpoint at ``epoch`` and their recorded SHA-256."""
        return self._read(trial, epoch)[:2]

    def _read(self, trial: str, epoch: int) -> tuple[bytes, str | None, Path]:
        row = self.db.execute(
            "SELECT path, sha256 FROM checkpoints WHERE trial = ? AND epoch = ?", (trial, epoch)
        ).fetchone()
        if row is None:
            raise FileNotFoundError(f"trial {trial} has no checkpoint for epoch {epoch}")
        path = self.path.parent / row[0]
        try:
            return path.read_bytes(), row[1], path
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint {path} (trial {trial}, epoch {epoch}) cannot be read:"
                f" {exc.strerror or exc}"
            ) from None

    def rollback(self, trial: str, epoch: int) -> None:
        """Forget what ``trial`` committed after ``epoch`` (-1: everything)."""
        with self._transaction() as db:
            db.execute("DELETE FROM metrics WHERE trial = ? AND epoch > ?", (trial, epoch))
            db.execute("DELETE FROM checkpoints WHERE trial = ? AND epoch > ?", (trial, epoch))
            db.execute(
                "UPDATE trials SET epochs = ?, updated = ? WHERE id = ?",
                (epoch, time.time(), trial),
            )

    def remove_leftovers(self, trial: str) -> list[Path]:
        """Delete temporary files of checkpoint writes whose process has died."""
        removed = []
        for tmp in (self.checkpoints / trial).glob(".*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _running(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def commit_epoch(
        self,
        trial: str,
        epoch: int,
        metrics: dict[tuple[str, str], float],
        checkpoint: Checkpoint | None,
    ) -> None:
        """Metrics of ``epoch``, its checkpoint and the trial's progress, in one transaction."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                [
                    (trial, epoch, split, name, _stored(value))
                    for (split, name), value in metrics.items()
                ],
            )
            if checkpoint is not None:
                rel = os.path.relpath(checkpoint.path, self.path.parent)
                db.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                    (trial, epoch, rel, checkpoint.sha256),
                )
                db.execute(
                    "UPDATE trials SET epochs = MAX(epochs, ?), updated = ?, error = NULL"
                    " WHERE id = ?",
                    (epoch, time.time(), trial),
                )

    def diverged(self) -> set[str]:
        """Trials with a NaN or infinite metric value at some epoch."""
        rows = self.db.execute(
            "SELECT DISTINCT trial FROM metrics"
            " WHERE typeof(value) = 'text' OR abs(value) > 1.7976931348623157e308"
        )
        return {t for (t,) in rows}

    def metric_names(self, trial: str) -> dict[int, set[tuple[str, str]]]:
        out: dict[int, set] = {}
        for epoch, split, name in self.db.execute(
            "SELECT epoch, split, name FROM metrics WHERE trial = ?", (trial,)
        ):
            out.setdefault(epoch, set()).add((split, name))
        return out

    def metrics(self, trials: Iterable[str]) -> list[tuple[str, int, str, str, float]]:
        """Rows ``(trial, epoch, split, name, value)`` of the given trials."""
        ids = list(dict.fromkeys(trials))
        out: list[Any] = []
        for i in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out += [
                (t, e, s, n, _loaded(v))
                for t, e, s, n, v in self.db.execute(
                    f"SELECT trial, epoch, split, name, value FROM metrics WHERE trial IN ({marks})"
                    " ORDER BY trial, epoch, split, name",
                    chunk,
                )
            ]
        return out


def checkpoint_bytes(state: dict) -> bytes:
    """A checkpoint's state serialized as the store writes it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def verify_checkpoint(data: bytes, sha256: str | None, trial: str, epoch: int, where: str) -> dict:
    """The state in a checkpoint's ``data``, checked against its checksum, trial and epoch."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {where} (trial {trial}, epoch {epoch}) {why}")

    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise bad("does not match its checksum (damaged, truncated or replaced)")
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise bad(f"cannot be loaded: {exc}") from None
    if not isinstance(state, dict) or state.get("epoch") != epoch:
        raise bad("holds another epoch")
    if state.get("trial", trial) != trial:
        raise bad(f"belongs to trial {state['trial']}")
    return state


class Leases:
    """The leases this process holds in a store, kept fresh by one heartbeat thread.

    ``claim`` never waits (``False``: another live process holds the lease);
    ``release`` gives one back, leaving the context releases the rest.
    """

    def __init__(self, store: Store):
        self.store, self.held = store, set()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, trial: str) -> bool:
        if trial in self.held:
            return True
        if not self.store.claim(trial):
            return False
        with self._lock:
            self.held.add(trial)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="ptera-leases", daemon=True)
            self._thread.start()
        return True

    def release(self, trial: str) -> None:
        with self._lock:
            if trial not in self.held:
                return
            self.held.discard(trial)
        self.store.release(trial)

    def _beat(self) -> None:
        own = Store(self.store.path)  # a connection of this thread's own
        try:
            while not self._stop.wait(HEARTBEAT):
                with self._lock:
                    held = list(self.held)
                for trial in held:
                    own.heartbeat(trial)
        finally:
            own.close()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for trial in list(self.held):
            self.release(trial)


def _owner() -> str:
    """This process as a lease holder (computed each time: a forked worker is another)."""
    return f"{socket.gethostname()}:{os.getpid()}"


LEASE_STALE = 60.0  # seconds without a heartbeat after which a lease is free
HEARTBEAT = 5.0  # seconds between heartbeats


def _holder_alive(owner: str, heartbeat: float) -> bool:
    if time.time() - heartbeat > LEASE_STALE:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _running(int(pid))
    return True


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stored(value: float) -> float | str:
    # SQLite turns a NaN into NULL (a missing value): keep it as the text 'nan'.
    return "nan" if value != value else value


def _loaded(value: Any) -> float:
    return float(value) if isinstance(value, str) else value
