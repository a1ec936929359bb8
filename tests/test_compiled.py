"""Overlays on models under ``torch.compile``: the block's changes apply, and only there."""

import pytest
import torch
from torch import nn

from ptera import probing, ptera, tooled
from ptera.torch import Grad


@tooled
def objective(model, x):
    out = model(x)
    loss = out.pow(2).sum()
    return loss


class Counting:
    """A Dynamo backend that runs the graph as traced and counts compiles and runs."""

    def __init__(self):
        self.compiles = self.runs = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)

        return run


def probe(cnet, net, x):
    with probing("Linear > #value as out").values() as got:
        cnet(x)
    return len(got) == 2 and torch.allclose(got[1]["out"], net(x))


def tweak(cnet, net, x):
    out = objective.tweak({"ReLU > #value": torch.zeros(3, 8)}).clone(return_object=True)
    expected = net[2].bias.pow(2).sum() * 3
    return torch.allclose(out(cnet, x).value, expected)


def rewrite(cnet, net, x):
    out = objective.rewrite({"ReLU(input) > #value": lambda input: input})(cnet, x)
    return torch.allclose(out, net[2](net[0](x)).pow(2).sum())


def grad(cnet, net, x):
    with probing(Grad("objective{!!loss} >> $p:Parameter")).values() as got:
        objective(cnet, x)
    net.zero_grad()
    objective(net, x).backward()
    grads = [g["p"][1] for g in got]
    return len(grads) == 4 and all(
        torch.allclose(g, p.grad) for g, p in zip(grads, net.parameters())
    )


@pytest.mark.parametrize("first_call", ["before", "inside"])
@pytest.mark.parametrize("overlay", [probe, tweak, rewrite, grad])
def test_overlays_on_a_compiled_model(overlay, first_call):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    backend = Counting()
    cnet = torch.compile(net, backend=backend)
    x = torch.randn(3, 4)
    if first_call == "before":
        assert torch.allclose(cnet(x), net(x)) and backend.compiles == 1
    assert overlay(cnet, net, x)
    runs = backend.runs
    # After the block: the compiled graph runs again, with the original code.
    assert torch.allclose(cnet(x), net(x))
    assert backend.runs == runs + 1 and backend.compiles == 1


class FakeDynamo:
    """Stands for torch._dynamo and its eval_frame: records stance changes and resets."""

    def __init__(self):
        self.stance, self.resets = "default", 0

    class DynamoStance:
        def __init__(self, stance):
            self.stance = stance

    def _set_stance(self, new):
        prior, self.stance = self.stance, new.stance if hasattr(new, "stance") else new
        return prior

    def reset(self):
        self.resets += 1


def installed(fake: FakeDynamo, monkeypatch) -> FakeDynamo:
    """``fake`` as torch._dynamo and its eval_frame, with a fresh stance count."""
    import sys

    from ptera import compiled

    monkeypatch.setattr(compiled, "_s", compiled._Stance())
    monkeypatch.setitem(sys.modules, "torch._dynamo.eval_frame", fake)
    monkeypatch.setitem(sys.modules, "torch._dynamo", fake)
    return fake


@pytest.mark.parametrize("loaded_at_start", [True, False])
def test_the_stance_follows_the_overlays(monkeypatch, loaded_at_start):
    import sys

    from ptera import compiled

    fake = FakeDynamo()
    monkeypatch.setattr(compiled, "_s", compiled._Stance())
    monkeypatch.setattr(compiled, "nothing_compiled", lambda: False)  # something was
    if loaded_at_start:
        monkeypatch.setitem(sys.modules, "torch._dynamo.eval_frame", fake)
    else:
        monkeypatch.delitem(sys.modules, "torch._dynamo.eval_frame", raising=False)
    compiled.overlay_started()
    # Dynamo imported inside the block (torch.compile first called there): what it
    # compiles from then on is eager, and its caches go when the block ends.
    monkeypatch.setitem(sys.modules, "torch._dynamo.eval_frame", fake)
    monkeypatch.setitem(sys.modules, "torch._dynamo", fake)
    compiled.overlay_started()
    assert fake.stance == "force_eager"
    compiled.overlay_ended()
    assert fake.stance == "force_eager"  # one overlay is still active
    compiled.overlay_ended()
    assert fake.stance == "default"
    assert fake.resets == (0 if loaded_at_start else 1)


def test_with_nothing_compiled_the_stance_is_left_alone(monkeypatch):
    # torch.optim loads Dynamo without compiling anything: no stance to set (it costs
    # ~4 us an object call), but what gets compiled inside the block is dropped after.

    from ptera import compiled

    fake = installed(FakeDynamo(), monkeypatch)
    compiled_now = [False]
    monkeypatch.setattr(compiled, "nothing_compiled", lambda: not compiled_now[0])
    compiled.overlay_started()
    compiled.overlay_ended()
    assert (fake.stance, fake.resets) == ("default", 0)
    compiled.overlay_started()
    compiled_now[0] = True  # torch.compile first called inside the block
    compiled.overlay_ended()
    assert (fake.stance, fake.resets) == ("default", 1)


@ptera
def doubled(x):
    y = x * 2
    return y


def test_an_object_call_that_compiles_first_drops_what_it_compiled(monkeypatch):
    # With nothing compiled, an object call is not counted (no lock); if torch.compile
    # is first used during the call, what it compiled goes when the call ends.

    from ptera import compiled, overlay

    fake = installed(FakeDynamo(), monkeypatch)
    compiled_now = [False]
    monkeypatch.setattr(overlay, "nothing_compiled", lambda: not compiled_now[0])
    monkeypatch.setattr(compiled, "nothing_compiled", lambda: not compiled_now[0])
    counted = []
    obj = doubled.clone()

    @obj.on("doubled > y")
    def compile_now(y):
        counted.append(compiled._s.active)
        compiled_now[0] = True

    assert obj(1) == 2 and counted == [0]
    assert (fake.stance, fake.resets, compiled._s.active) == ("default", 1, 0)
    obj(1)  # something is compiled now: the call is counted, eager while it runs
    assert counted == [0, 1] and fake.resets == 1
    assert (fake.stance, compiled._s.active) == ("default", 0)


def test_compiled_during_an_uncounted_call_waits_for_the_counted_ones(monkeypatch):

    from ptera import compiled

    fake = installed(FakeDynamo(), monkeypatch)
    monkeypatch.setattr(compiled, "nothing_compiled", lambda: False)
    compiled.overlay_started()  # a counted overlay (its stance set)
    compiled.compiled_meanwhile()  # an uncounted call saw something compiled
    assert (fake.stance, fake.resets) == ("force_eager", 0)
    compiled.overlay_ended()
    assert (fake.stance, fake.resets) == ("default", 1)
