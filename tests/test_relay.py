"""ptera.lab.experiments.relay: Ray without a shared filesystem, the driver as the only writer."""

import os
from collections import Counter

import pytest

from ptera.lab.experiments import RayExecutor

from .experiment_program import DistanceMetrics, perturb_experiment


class CrashOnce(DistanceMetrics):
    """The seed's metrics, a log of each measure, and one worker death (``victim``, epoch 2)."""

    def __init__(self, log):
        super().__init__()
        self.log, self.victim = str(log), None
        self.register_metric("logged", self.logged)

    def logged(self, trial):
        with open(self.log, "a") as f:
            f.write(f"{trial.id} {trial.epoch}\n")
        crashed = self.log + ".crashed"
        if trial.id == self.victim and trial.epoch == 2 and not os.path.exists(crashed):
            open(crashed, "w").close()
            os._exit(1)  # the worker dies mid-trial, its epoch 2 uncommitted
        return 0.0


def build(store, log):
    exp = perturb_experiment(store)
    exp.metrics = CrashOnce(log)
    return exp


def test_ray_with_the_driver_as_only_writer_and_a_worker_death(tmp_path):
    ray = pytest.importorskip("ray")
    serial = build(tmp_path / "serial.db", tmp_path / "serial.log")
    serial.run(2, verbose=False)
    relayed = build(tmp_path / "relayed.db", tmp_path / "relayed.log")
    victim = relayed.metrics.victim = relayed.grid[2].id  # an intervention
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        relayed.run(2, executor=RayExecutor(shared_filesystem=False), verbose=False)
    finally:
        ray.shutdown()
    assert (tmp_path / "relayed.log.crashed").exists()
    assert relayed.results()["value"].tolist() == serial.results()["value"].tolist()
    measured = Counter((tmp_path / "relayed.log").read_text().split("\n"))
    # Resubmitted from its last committed epoch (1): epochs 0 and 1 were not redone.
    assert [measured[f"{victim} {e}"] for e in range(3)] == [1, 1, 2]
    assert relayed.status(2) == serial.status(2)
