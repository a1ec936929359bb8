"""The seed's weight-perturbation experiment, on digits: does a tiny nudge of the
initial weights change where training ends up?

    python examples/perturb.py out                  # 1 control + 3 x 3 perturbations, 3 epochs
    python examples/perturb.py out --n-epochs 6     # 3 more epochs each, from the checkpoints
    python examples/perturb.py out --processes 2    # trials side by side

Each trial is an overlay on one unchanged `Lenet5`: the store (`out/perturb.db`)
keeps every epoch, so a rerun trains only what is missing. Without a folder the
output goes to a fresh temporary one.
"""

import sys
import tempfile

import torch

from ptera import auto_cli, default, tag, tooled
from ptera.lab.data import digits
from ptera.lab.experiments import Experiment, Metrics, PerturbWeights, Plotter
from ptera.lab.models import Lenet5


class CustomMetrics(Metrics):
    """The seed's metrics: weight norm and distance from the control's weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_metric("w", self.weight_norm)
        self.register_metric("dw_control", self.weight_distance_from_control)

    def weight_norm(self, trial):
        norm = torch.zeros(1)
        for p in trial.model.parameters():
            norm += torch.norm(p)
        return norm

    def weight_distance_from_control(self, trial):
        distance = torch.zeros(1)
        for p1, p2 in zip(trial.model.parameters(), trial.control.model.parameters()):
            distance += torch.norm(p1 - p2) ** 2
        return distance**0.5


@tooled
def main(out: str):
    """Perturb the initial weights of a LeNet on digits; plot every metric."""
    # Epochs each trial trains to
    n_epochs: tag.CliArgument & int = default(3)
    # Worker processes (1: in this process)
    processes: tag.CliArgument & int = default(1)

    exp = Experiment(
        model=Lenet5(image_size=8),
        datasets=digits(),
        interventions=[
            PerturbWeights.make_variations(epsilon=(0.001, 0.01, 0.1), seed_weights=range(3))
        ],
        metrics=CustomMetrics(),
        plotter=Plotter(average_over=("seed_weights",)),
        store=f"{out}/perturb.db",
        lr=0.05,
        hyperparameters={"momentum": 0.9},
        batch_size=16,
    )
    print(f"{len(exp)} trials")  # 1 control + 3 x 3 interventions = 10 trials
    results = exp.run(n_epochs=n_epochs, processes=processes, plot=True)
    last = results[(results.epoch == n_epochs) & (results.split == "test")]
    summary = last.pivot_table(index="condition", columns="metric", values="value")
    print(summary.round(4).to_string())
    distance = results[(results.epoch == n_epochs) & (results.metric == "dw_control")]
    print(distance.groupby("intervention.epsilon")["value"].mean().round(4).to_string())
    for path in sorted(exp.store.path.parent.glob("perturb.plots/*.png")):
        print(path)
    return exp


if __name__ == "__main__":
    args = [a for a in sys.argv[1:]]
    out = args.pop(0) if args and not args[0].startswith("-") else tempfile.mkdtemp("-perturb")
    auto_cli(main, argv=args, args=(out,))
