"""ptera.lab.experiments.relay: Ray without a shared filesystem, the driver as the only writer."""

import hashlib
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter

import pytest
import torch

from ptera.lab.experiments import RayExecutor
from ptera.lab.experiments.relay import RelayStore
from ptera.lab.experiments.store import CheckpointError, checkpoint_bytes

from .experiment_program import DistanceMetrics, perturb_experiment


class CrashOnce(DistanceMetrics):
    """The seed's metrics, a log of each measure with its lease's holder, and one worker death."""

    def __init__(self, log, store):
        super().__init__()
        self.log, self.store, self.victim = str(log), str(store), None
        self.register_metric("logged", self.logged)

    def logged(self, trial):
        db = sqlite3.connect(self.store, timeout=30)
        (owner,) = db.execute("SELECT owner FROM leases WHERE trial = ?", (trial.id,)).fetchone()
        db.close()
        with open(self.log, "a") as f:
            f.write(f"{trial.id} {trial.epoch} {owner} {time.time()}\n")
        crashed = self.log + ".crashed"
        if trial.id == self.victim and trial.epoch == 2 and not os.path.exists(crashed):
            open(crashed, "w").close()
            os._exit(1)  # the worker dies mid-trial, its epoch 2 uncommitted
        return 0.0


def build(store, log):
    exp = perturb_experiment(store, n_train=200, n_test=50)
    exp.metrics = CrashOnce(log, store)
    return exp


def test_ray_with_the_driver_as_only_writer_and_a_worker_death(tmp_path):
    ray = pytest.importorskip("ray")
    serial = build(tmp_path / "serial.db", tmp_path / "serial.log")
    serial.run(2, verbose=False)
    relayed = build(tmp_path / "relayed.db", tmp_path / "relayed.log")
    victim = relayed.metrics.victim = relayed.grid[2].id  # an intervention
    held = relayed.grid[3].id  # leased by another live process for its first second
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        other = subprocess.Popen(["sleep", "1"])
        freed = []
        threading.Thread(  # reaped (its pid then is gone), and when
            target=lambda: freed.append(other.wait() or time.time()), daemon=True
        ).start()
        owner = f"{socket.gethostname()}:{other.pid}"
        db = relayed.store.db  # creates the store
        db.execute("INSERT INTO leases VALUES (?, ?, ?)", (held, owner, time.time()))
        relayed.run(2, executor=RayExecutor(shared_filesystem=False), verbose=False)
    finally:
        ray.shutdown()
    assert (tmp_path / "relayed.log.crashed").exists()
    assert relayed.results()["value"].tolist() == serial.results()["value"].tolist()
    lines = [line.split() for line in (tmp_path / "relayed.log").read_text().splitlines()]
    measured = Counter(f"{t} {e}" for t, e, _, _ in lines)
    # Resubmitted from its last committed epoch (1): epochs 0 and 1 were not redone.
    assert [measured[f"{victim} {e}"] for e in range(3)] == [1, 1, 2]
    # The driver held every trial's lease while its worker trained it, and released them.
    assert {o for _, _, o, _ in lines} == {f"{socket.gethostname()}:{os.getpid()}"}
    assert min(float(at) for t, _, _, at in lines if t == held) > freed[0]  # it waited
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
    # Relayed checkpoints are recorded with the checksum of their bytes, as local ones.
    rows = db.execute("SELECT path, sha256 FROM checkpoints").fetchall()
    assert len(rows) == len(relayed.grid) * 3
    for path, sha in rows:
        data = (relayed.store.path.parent / path).read_bytes()
        assert sha == hashlib.sha256(data).hexdigest()
    assert relayed.status(2) == serial.status(2)


def relayed(state, sha=None, flip=False):
    data = checkpoint_bytes(state)
    sha = sha or hashlib.sha256(data).hexdigest()
    if flip:
        data = data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]
    return data, sha


STATE = {"trial": "a", "epoch": 1, "model": {"w": torch.ones(2)}}


@pytest.mark.parametrize(
    "sent, error",
    [
        (relayed(STATE, flip=True), "does not match its checksum"),
        (relayed({**STATE, "trial": "b"}), "belongs to trial b"),
        (relayed({**STATE, "epoch": 2}), "holds another epoch"),
        (relayed(STATE, sha="0" * 64), "does not match its checksum"),
    ],
)
def test_a_worker_verifies_the_checkpoints_it_was_sent(sent, error):
    store = RelayStore({"a": 1}, {("a", 1): sent}, queue=None)
    with pytest.raises(CheckpointError, match=error):
        store.load_checkpoint("a", 1)


def test_a_worker_relays_bytes_and_checksum_and_reloads_them():
    sent = []
    queue = type("Q", (), {"put": staticmethod(sent.append)})()
    store = RelayStore({"a": 0}, {}, queue)
    saved = store.save_checkpoint("a", 1, STATE)
    store.commit_epoch("a", 1, {("test", "loss"): 0.5}, saved)
    (kind, trial, epoch, metrics, data, sha) = sent[0]
    assert (kind, trial, epoch, sha) == ("commit", "a", 1, saved.sha256)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.epochs(["a"]) == {"a": 1}
    assert torch.equal(store.load_checkpoint("a", 1)["model"]["w"], torch.ones(2))
