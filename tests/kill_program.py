"""Kill -9 a training program once it has committed enough: the experiments' crash tests."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def kill_when_committed(
    program: str, store: Path, args: list[str], enough: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    """Run ``tests/program store *args`` and ``kill -9`` it as soon as the epochs its
    store has committed per trial satisfy ``enough``; return what was committed then.

    The store is read while the program writes it (a locked read just retries); the
    program must still be running when killed, or the test could not show anything.
    """
    proc = subprocess.Popen(
        [sys.executable, str(HERE / program), str(store), *args],
        cwd=HERE.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    committed: dict[str, int] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    db = sqlite3.connect(store, timeout=5)
                    committed = dict(db.execute("SELECT id, epochs FROM trials").fetchall())
                    db.close()
                except sqlite3.OperationalError:
                    committed = {}
                if enough(committed):
                    break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    return committed
