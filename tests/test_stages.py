"""ptera.lab.stages: the cached event lists follow the callbacks; quiet stages still cancel."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ptera.lab import (
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelStepException,
    DataLoaders,
    Learner,
)
from ptera.lab.stages import CallbackList


def batches(n=3):
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(4 * n, 2), torch.randn(4 * n, 1))
    return DataLoaders.from_datasets(ds, ds, batch_size=4)


class Log:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def before_batch(self, learn):
        self.log.append((self.name, learn.epoch, learn.training, learn.iter))


# How a callback list can change in the middle of a fit: each is seen from the next stage on.
CHANGES = {
    "add_cb": lambda learn, cb: learn.add_cb(cb),
    "append": lambda learn, cb: learn.cbs.append(cb),
    "insert": lambda learn, cb: learn.cbs.insert(0, cb),
    "extend": lambda learn, cb: learn.cbs.extend([cb]),
    "+=": lambda learn, cb: learn.cbs.__iadd__([cb]),
    "setitem": lambda learn, cb: learn.cbs.__setitem__(slice(0, 0), [cb]),
    "assign": lambda learn, cb: setattr(learn, "cbs", [*learn.cbs, cb]),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_callback_added_mid_fit_fires_from_the_next_batch(change):
    log = []

    class Adder:
        def after_batch(self, learn):
            if learn.iter == 0 and learn.training:
                CHANGES[change](learn, Log("late", log))

    learn = Learner(nn.Linear(2, 1), batches(), cbs=[Adder(), Log("early", log)])
    learn.fit(1, valid=False)
    fired = sorted((name, i) for name, _, _, i in log)
    assert fired == [("early", 0), ("early", 1), ("early", 2), ("late", 1), ("late", 2)]
    assert isinstance(learn.cbs, CallbackList)


@pytest.mark.parametrize(
    "change",
    [
        lambda learn, cb: learn.remove_cb(cb),
        lambda learn, cb: learn.cbs.pop(),
        lambda learn, cb: learn.cbs.clear(),
        lambda learn, cb: learn.cbs.__delitem__(-1),
    ],
)
def test_a_callback_removed_mid_fit_stops_firing(change):
    log = []
    late = Log("late", log)

    class Remover:
        order = -1

        def before_batch(self, learn):
            if learn.iter == 1:
                change(learn, late)

    Learner(nn.Linear(2, 1), batches(), cbs=[Remover(), late]).fit(1, valid=False)
    # Removed in before_batch of batch 1: that stage's list was taken already.
    assert [entry[3] for entry in log] == [0, 1]


class Named:
    def __init__(self, name):
        self.name = name

    def after_batch(self, learn):
        pass

    def __eq__(self, other):
        return isinstance(other, Named) and other.name == self.name


def test_a_callback_list_copies_and_pickles_without_its_cache():
    cbs = CallbackList([Named("a"), Named("b")])
    cbs.events["batch"] = "cached"
    for other in (copy.copy(cbs), copy.deepcopy(cbs), pickle.loads(pickle.dumps(cbs))):
        assert type(other) is CallbackList and other == cbs and other.events == {}
    cbs.sort(key=lambda cb: cb.name)
    assert cbs.events == {}


class Typo:
    def after_bach(self, learn):
        pass


@pytest.mark.parametrize("change", CHANGES)
def test_a_misspelled_callback_is_refused_however_it_is_added(change):
    learn = Learner(nn.Linear(2, 1), batches())
    with pytest.raises(TypeError, match="after_bach, which no stage fires"):
        CHANGES[change](learn, Typo())
    assert list(learn.cbs) == []


@pytest.mark.parametrize(
    "selector, cancel, batches_seen",
    [
        ("one_batch > loss", CancelBatchException, 3),
        ("one_epoch > loss", CancelEpochException, 1),
        ("Linear > #value", CancelBatchException, 3),
    ],
)
def test_a_stage_with_no_callback_still_ends_on_its_cancel(selector, cancel, batches_seen):
    # No callback object listens: the stage runs its body directly, and must still
    # catch the cancel a selector listener raises in it.
    learn = Learner(nn.Linear(2, 1), batches())
    seen = []

    @learn.on(selector)
    def stop(**values):
        seen.append(1)
        raise cancel()

    learn.fit(1, valid=False)
    assert len(seen) == batches_seen


@pytest.mark.parametrize(
    "event, cancel",
    [("before_backward", CancelBackwardException), ("before_step", CancelStepException)],
)
def test_cancelling_backward_or_step_leaves_the_weights(event, cancel):
    class Skip:
        pass

    def skip(learn):
        raise cancel()

    setattr(Skip, event, lambda self, learn: skip(learn))
    model = nn.Linear(2, 1)
    before = [p.clone() for p in model.parameters()]
    Learner(model, batches(), cbs=[Skip()]).fit(1, valid=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
