"""Experiments with per-trial Learner callbacks, importable by worker processes.

Run as a script, it trains ``experiment(store)`` for the epochs given on the
command line (the resume test kills it mid-run).
"""

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ptera.lab import Callback, DataLoaders, Learner
from ptera.lab.data import digits
from ptera.lab.experiments import ChangeOptimizer, Experiment
from ptera.lab.experiments.config import derive_seed
from ptera.lab.experiments.trial import EVAL_BATCH, make_loader


def small_digits(n_train=200, n_test=60):
    train, test = digits(images=False)
    return (
        TensorDataset(*(t[:n_train] for t in train.tensors)),
        TensorDataset(*(t[:n_test] for t in test.tensors)),
    )


class Net(nn.Module):
    def __init__(self, hidden=16, delay=0.0):
        super().__init__()
        self.fc1, self.fc2, self.delay = nn.Linear(64, hidden), nn.Linear(hidden, 10), delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)  # so that a test can kill the run mid-epoch
        return self.fc2(torch.relu(self.fc1(x)))


class BatchStats(Callback):
    """Per epoch: the training batches, their mean loss (x ``scale``), and the first
    layer's weight norm after the evaluation pass."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def before_epoch(self, learn):
        if learn.training:
            self.batches, self.total = 0, 0.0

    def after_batch(self, learn):
        if learn.training:
            self.batches += 1
            self.total += float(learn.loss.detach())

    def after_epoch(self, learn):
        if not learn.training:
            self.norm = float(learn.model.fc1.weight.norm())

    def epoch_metrics(self):
        return {
            ("train", "batches"): self.batches,
            ("train", "mean_batch_loss"): self.total / self.batches * self.scale,
            "fc1_norm": self.norm,
        }


class Session(Callback):
    """The process that trained an epoch: shows whether a number was recomputed."""

    def after_fit(self, learn):
        pass  # a callback needs a stage method

    def epoch_metrics(self):
        return {"pid": os.getpid()}


def stats_and_session():
    return [BatchStats(), Session()]


def experiment(store, factory=stats_and_session, delay=0.0, lrs=(0.1,), **kwargs):
    return Experiment(
        Net(delay=delay),
        datasets=small_digits(),
        variations=[[ChangeOptimizer(lr=lr) for lr in lrs]],
        store=store,
        batch_size=50,
        callbacks=factory,
        **kwargs,
    )


class Reshuffle(Callback):
    """Draws epoch ``e``'s batch order as a trial does (``seed_shuffle``, ``e``)."""

    order = -100

    def __init__(self, generator, seed):
        self.generator, self.seed = generator, seed

    def before_epoch(self, learn):
        if learn.training:
            self.generator.manual_seed(derive_seed("shuffle", self.seed, learn.epoch + 1))


def replay(exp, plan, callbacks, n_epochs, model=None):
    """A one-off Learner training ``plan``'s trial again: its initial weights (its
    epoch 0 checkpoint), optimizer, batch order, one thread; returns the Learner."""
    s = plan.settings
    model = model if model is not None else type(exp.model)()
    model.load_state_dict(exp.store.load_checkpoint(plan.id, 0)["model"])
    generator = torch.Generator()
    dls = DataLoaders(
        make_loader(exp.train_set, s["batch_size"], generator),
        make_loader(exp.test_set, EVAL_BATCH),
    )
    hyper = {k.removeprefix("hyper."): v for k, v in s.items() if k.startswith("hyper.")}
    lr = hyper.pop("lr")

    def opt_func(params, lr):
        return s["optimizer"](params, lr=lr, **hyper)

    cbs = [Reshuffle(generator, s["seed_shuffle"]), *callbacks]
    learn = Learner(model, dls, exp.loss_fn, lr=lr, opt_func=opt_func, cbs=cbs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a trial runs
    try:
        learn.fit(n_epochs)
    finally:
        torch.set_num_threads(threads)
    return learn


if __name__ == "__main__":
    # The factory's identity is its import path: the tests' module, not __main__.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.callbacks_program import experiment as imported

    imported(sys.argv[1], delay=0.01).run(int(sys.argv[2]), verbose=False)
