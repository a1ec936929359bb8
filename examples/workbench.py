"""The WeightsLab session on scikit-learn's digits, with an ordinary nn.Module.

Run with `python examples/workbench.py [checkpoint-folder]`: train one epoch with
evaluation, show the neurons' trigger rates, prune the dead neurons, add neurons
(without changing what the network computes), deny the samples the model already
knows, save a checkpoint, train on, and load it back. The model is the seed's
MNIST model written as a plain module: no special layer classes, no hooks.
"""

import sys
import tempfile

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn, optim
from torch.utils.data import TensorDataset

from ptera.lab import Workbench


class DigitsModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer0 = nn.Conv2d(in_channels=1, out_channels=8, kernel_size=3, padding=1)
        self.layer1 = nn.Conv2d(in_channels=8, out_channels=16, kernel_size=3, padding=1)
        self.layer2 = nn.Conv2d(in_channels=16, out_channels=32, kernel_size=3, padding=1)
        self.out = nn.Linear(in_features=32 * 2 * 2, out_features=10)

    def forward(self, x):
        x = F.relu(self.layer0(x))
        x = F.max_pool2d(F.relu(self.layer1(x)), 2)
        x = F.max_pool2d(F.relu(self.layer2(x)), 2)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=1)


def datasets():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, valid = order[:1400], order[1400:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid])


def main(root):
    torch.manual_seed(0)
    train_dataset, eval_dataset = datasets()
    exp = Workbench(
        model=DigitsModel(),
        optimizer_class=optim.Adam,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        learning_rate=1e-2,
        batch_size=128,
        name="x0",
        root=root,
    )
    # Train one epoch and evaluate from time to time.
    loss, accuracy = exp.train_n_steps_with_eval_full(len(exp.train_loader), eval_every=5)
    print(f"after one epoch: eval loss {loss:.3f}, accuracy {accuracy:.3f}")
    exp.train_n_steps(2 * len(exp.train_loader))
    exp.eval_n_steps(1)
    exp.display_stats()

    # Prune the neurons that never triggered, in every layer that feeds another one.
    for layer in exp.layers[:-1]:
        dead = exp.dead_neurons(layer.index)
        if dead and len(dead) < layer.size:
            exp.prune(layer_index=layer.index, neuron_indices=dead)
            print(f"pruned dead neurons {dead} of {layer.name}")
    before = exp.eval_full()

    # Add neurons: the network computes the same function, the new neurons then learn.
    exp.add_neurons(layer_index=1, neuron_count=4)
    after = exp.eval_full()
    assert abs(after[0] - before[0]) < 1e-5 and after[1] == before[1]
    print(exp)

    # Deny the samples the model has learned, keeping allowed >= 3 x denied.
    samples = exp.train_loader.dataset
    print(samples.get_dataframe().describe().loc[["mean", "min", "max"]])
    denylist_fn = lambda id, age, loss, times, denied, pred, label: loss <= 0.05  # noqa: E731
    denied = samples.deny_samples_and_sample_allowed_with_predicate(
        denylist_fn, allow_to_denied_factor=3
    )
    print(f"denied {denied} of {len(samples)} training samples")

    checkpoint = exp.dump()
    exp.set_per_neuron_learning_rate(layer_index=0, neurons={0, 1}, lr=0.0)
    exp.prune(layer_index=0, neuron_indices={2, 3})
    loss, accuracy = exp.train_n_steps_with_eval_full(len(exp.train_loader))
    print(f"pruned and trained on: eval loss {loss:.3f}, accuracy {accuracy:.3f}")
    exp.load(checkpoint_id=checkpoint)
    print(exp.checkpoints)
    print(exp)
    loss, accuracy = exp.eval_full()
    print(f"checkpoint {checkpoint} loaded: eval loss {loss:.3f}, accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ptera-workbench-"))
