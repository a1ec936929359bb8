"""Per-epoch progress in the process that runs an experiment, whatever trains its trials.

``EpochWatcher(store, trials, progress)`` calls ``progress(trial, epoch, numbers)``
for every epoch the trials commit while it is open.

Decisions:

* It reads the store, the one place every executor commits to (a worker process,
  a batched group, a Ray task on a shared folder, the Ray driver relaying its
  workers' epochs), so one mechanism serves all of them, in this process.
* A thread polls the store (its own connection) every ``interval`` seconds and
  calls ``progress`` from that thread; leaving the block polls once more from
  the caller's thread, so every epoch committed during the block is reported,
  exactly once and in order per trial. An error in ``progress`` stops the
  reports and is raised when the block ends (never into a trial).
* Epochs committed before the block opened are not reported; an epoch rolled
  back and committed again (a damaged checkpoint) is reported again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .store import Store

__all__ = ["EpochWatcher"]


class EpochWatcher:
    """Calls ``progress(trial, epoch, {(split, name): value})`` as epochs are committed."""

    def __init__(
        self,
        store: Store,
        trials: list[str],
        progress: Callable[[str, int, dict], Any],
        interval: float = 0.2,
    ):
        if not callable(progress):
            raise TypeError(
                f"progress must be a function (trial, epoch, numbers), got {progress!r}"
            )
        self.path, self.trials, self.progress, self.interval = (
            store.path,
            list(trials),
            progress,
            interval,
        )
        self.seen: dict[str, int] = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EpochWatcher:
        own = Store(self.path)
        try:
            self.seen = own.epochs(self.trials)
        finally:
            own.close()
        self._thread = threading.Thread(target=self._watch, name="ptera-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        own = Store(self.path)
        try:
            self.poll(own)
        finally:
            own.close()
        if self.error is not None and exc[0] is None:
            raise self.error

    def _watch(self) -> None:
        own = Store(self.path)
        try:
            while not self._stop.wait(self.interval):
                self.poll(own)
        finally:
            own.close()

    def poll(self, store: Store) -> None:
        """Report the epochs committed since the last poll."""
        with self._lock:
            if self.error is not None:
                return
            now = store.epochs(self.trials)
            for trial in self.trials:
                before, after = self.seen.get(trial, -1), now[trial]
                if after < before:  # rolled back: its epochs will be committed again
                    self.seen[trial] = after
                    continue
                if after == before:
                    continue
                rows = store.metrics([trial])
                for epoch in range(before + 1, after + 1):
                    numbers = {(s, n): v for _, e, s, n, v in rows if e == epoch}
                    try:
                        self.progress(trial, epoch, numbers)
                    except Exception as exc:  # raised when the block ends
                        self.error = exc
                        return
                self.seen[trial] = after
