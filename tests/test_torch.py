"""PyTorch: Grad, probing nn.Modules we did not write, and the seed's MLP snippets."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from ptera import Recurrence, SelectorError, probing, ptera
from ptera.torch import Grad
from tests.torchmods import Block

# -- the seed's MLP, as written in "Using Ptera with PyTorch" -------------------


@ptera
def layer(inp):
    W: torch.nn.Parameter
    b: torch.nn.Parameter
    actfn: object

    act = inp @ W + b
    return actfn(act)


@ptera
def sequential(inp):
    layers: list

    h = Recurrence()
    h[0] = inp
    for i, layer in enumerate(layers):
        h[i + 1] = layer(h[i])
    return h[len(layers)]


@ptera
def step(inp, target):
    model: object
    lossfn: object

    output = model(inp)
    loss = lossfn(output, target)
    return loss


def make_network(*layer_sizes):
    layers = [
        layer.new(
            W=torch.nn.Parameter((torch.rand(nin, nout) * 2 - 1) / (nin**0.5)),
            b=torch.nn.Parameter((torch.rand(1, nout) * 2 - 1) / (nin**0.5)),
            actfn=torch.relu,
        )
        for nin, nout in zip(layer_sizes[:-1], layer_sizes[1:])
    ]
    layers[-1].state.actfn = torch.nn.LogSoftmax(dim=1)
    network = step.new(lossfn=torch.nn.NLLLoss(), model=sequential.new(layers=layers))
    return network


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = torch.randn(64, 20)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


@pytest.fixture
def count_grads(monkeypatch):
    """The number of tensors of each backward pass Grad makes."""
    from ptera import torch as ptorch

    calls = []
    real = ptorch._gradients

    def counting(target, xs, *args):
        calls.append(len(xs))
        return real(target, xs, *args)

    monkeypatch.setattr(ptorch, "_gradients", counting)
    return calls


def test_seed_training_with_grad_listeners(data, count_grads):
    inputs, targets = data
    model = make_network(20, 32, 4).clone(return_object=True)

    @model.on(Grad("step{!!loss} >> $param:Parameter"))
    def update(param):
        param_value, param_grad = param
        param_value.data.sub_(0.5 * param_grad)

    @model.on(Grad("step{!!loss} >> h[1] as h"))
    def check_h(h):
        h_value, h_grad = h
        assert h_value.shape == h_grad.shape == (64, 32)
        return h_grad.abs().mean()

    losses = [model(inputs, targets).value.item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    results = model(inputs, targets)
    assert len(results.check_h) == 1 and results.check_h[0] > 0
    # Both listeners of one call share ONE backward pass over all 5 tensors.
    assert count_grads[-1] == 5 and len(count_grads) == 31


def test_grad_matches_backward():
    torch.manual_seed(1)
    model = make_network(5, 3, 2)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 1, 0])
    res = model.using(g=Grad("step{!!loss} >> $p:Parameter", retain_graph=True))(x, y)
    grads = res.g.map(lambda p: p[1])
    res.value.backward()
    params = [layer.state[n] for layer in model.state.model.state.layers for n in ("W", "b")]
    assert len(grads) == 4
    for p, g in zip(params, grads):
        assert torch.allclose(p.grad, g)


@pytest.mark.parametrize(
    "selectors",
    [
        ["step{!!loss} >> $p:Parameter"],
        ["step{!!loss} >> layer > W"],
        ["step{!!loss} >> h[1] as h"],
        ["step{!!loss} >> $p:Parameter", "step{!!loss} >> h[2] as h"],
        ["step{!!loss, !output}"],
    ],
)
def test_one_request_fast_path_gives_what_the_grouped_path_gives(selectors, monkeypatch):
    from ptera import torch as ptorch

    def run():
        torch.manual_seed(2)
        model = make_network(5, 4, 3, 2)
        x, y = torch.randn(6, 5), torch.tensor([0, 1, 1, 0, 1, 0])
        named = {f"g{i}": Grad(s) for i, s in enumerate(selectors)}
        res = model.using(**named)(x, y)
        return [
            [(k, v, g) for caps in res[name] for k, c in caps.items() for v, g in c.values]
            for name in named
        ]

    real, taken = ptorch._serve, []

    def spy(requests):
        taken.append(len(requests))
        return real(requests)

    monkeypatch.setattr(ptorch, "_serve", spy)
    fast = run()
    assert taken == [len(selectors)]  # one exit, one batch: served in place when alone
    monkeypatch.setattr(ptorch, "_serve", ptorch._serve_grouped)
    general = run()
    assert len(fast) == len(general) == len(selectors)
    for got, want in zip(fast, general):
        assert len(got) == len(want) > 0
        for (k1, v1, g1), (k2, v2, g2) in zip(got, want):
            assert k1 == k2 and torch.equal(v1, v2) and torch.equal(g1, g2)


def test_a_call_that_raised_leaves_later_calls_their_gradients():
    """The failed call's queued request is dropped with it, not left to swallow the next."""

    @ptera
    def f(x, boom):
        w: torch.nn.Parameter
        loss = (w * x).sum()
        if boom:
            raise RuntimeError("boom")
        return loss

    model = f.new(w=torch.nn.Parameter(torch.ones(2)))
    grads = []
    model.on(Grad("f{!!loss} > $p:Parameter"))(lambda p: grads.append(p[1]))
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.full((2,), 3.0), True)
    assert grads == []
    for _ in range(2):
        model(torch.full((2,), 3.0), False)
    assert len(grads) == 2 and all(torch.equal(g, torch.full((2,), 3.0)) for g in grads)


def test_an_error_of_torch_itself_is_not_taken_for_a_bad_focus():
    """Grad checks its values only when torch refuses them; torch's other errors go on."""

    @ptera
    def h(w):
        loss = (w * w).sum()
        loss.backward()  # frees the graph: Grad's pass then fails inside torch
        return loss

    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        h.using(g=Grad("h{!w, !!loss}"))(torch.ones(2, requires_grad=True))


class _Logged(torch.Tensor):
    """A tensor subclass with its own ``__torch_function__``: grad must dispatch to it."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", func))
        return super().__torch_function__(func, types, args, kwargs or {})


class _Mode(torch.overrides.TorchFunctionMode):
    seen: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", func))
        return func(*args, **(kwargs or {}))


def _scalar(w):
    return (w * w).sum()


@pytest.mark.parametrize(
    "make, engine",
    [
        # (target and inputs, whether the engine entry is called directly)
        (lambda w: (_scalar(w), [w]), True),
        (lambda w: (_scalar(w).double(), [w]), True),
        (lambda w: (_scalar(w), [w, torch.ones(1, requires_grad=True)]), True),  # unused: None
        (lambda w: (w * w, [w]), False),  # not a scalar: torch's own error
        (lambda w: (_scalar(w.as_subclass(_Logged)), [w]), False),  # its __torch_function__
        (lambda w: (_scalar(w), [w.as_subclass(_Logged)]), False),
    ],
)
def test_each_pass_takes_the_engine_entry_only_where_grad_would_check_nothing(
    make, engine, monkeypatch
):
    from ptera import torch as ptorch

    real = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if real is None:
        pytest.skip("this torch has no torch.autograd.graph._engine_run_backward")
    called = []

    def spy(*args, **kwargs):
        called.append(1)
        return real(*args, **kwargs)

    # (grad itself calls the entry by the name it imported: the spy sees Grad's calls)
    monkeypatch.setattr(torch.autograd.graph, "_engine_run_backward", spy)
    _Logged.seen.clear()
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    target, xs = make(w)
    if target.numel() != 1:
        with pytest.raises(RuntimeError, match="scalar outputs"):
            ptorch._gradients(target, xs, False, False)
        assert called == []
        return
    want = torch.autograd.grad(target, xs, retain_graph=True, allow_unused=True)
    got = ptorch._gradients(target, xs, False, False)
    assert bool(called) == engine
    assert len(got) == len(want)
    for g, h in zip(got, want):
        assert (g is None and h is None) or torch.equal(g, h)
    assert ("grad" in _Logged.seen) == (not engine)  # the subclass saw grad itself


def test_a_torch_function_mode_sees_grads_pass():
    from ptera import torch as ptorch

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    _Mode.seen.clear()
    with _Mode():
        (g,) = ptorch._gradients(_scalar(w), [w], False, False)
    assert "grad" in _Mode.seen and torch.equal(g, 2 * w.detach())


def test_the_engine_entry_is_there_on_the_torch_we_test_with():
    """If torch moves its private entry, Grad still works through grad: this says so."""
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    entry = getattr(torch.autograd.graph, "_engine_run_backward", None)
    assert entry is not None or (major, minor) < (2, 5)


def test_a_wrapped_grad_sees_every_pass_grad_makes(monkeypatch):
    """A profiler or a mock that wraps torch.autograd.grad is called, as before."""
    from ptera import torch as ptorch

    calls, real = [], torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = ptorch._gradients(_scalar(w), [w], False, False)
    assert calls == [1] and torch.equal(g, 2 * w.detach())


def test_grad_in_the_same_scope_and_higher_order():
    @ptera
    def f(x):
        y = (x**3).sum()
        return y

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with probing(Grad("f{!x, !!y}", create_graph=True)).values() as vals:
        f(x)
    ((value, grad),) = [v["x"] for v in vals]
    assert value is x and torch.allclose(grad, 3 * x**2)
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert torch.allclose(second, 6 * x)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_grad_result_carries_the_calls_other_captures(grouped):
    @ptera
    def weighted(w, v, k):
        y = (w * v * k).sum()
        return y

    w, v = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    named = {"q": Grad("weighted{k, !w, !!y}")}
    if grouped:  # a second request in the same exit: the grouped pass
        named["r"] = Grad("weighted{!v, !!y}")
    out = weighted.using(**named)(w, v, 3.0)
    assert out.q.map("k", "w") == [(3.0, (w, out.q.map("w")[0][1]))]
    assert torch.equal(out.q.map("w")[0][1], torch.full((2,), 3.0))


def test_unused_tensor_gets_zero_gradient_and_bad_focus_is_named():
    @ptera
    def g(a, b, n):
        y = (a * 2).sum()
        return y

    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    res = g.using(q=Grad("g{!$t, !!y}"))
    with pytest.raises(ValueError, match="variable 'n' .* is a int that does not require grad"):
        res(a, b, 3)
    out = g.using(q=Grad("g{!a, !!y}"), r=Grad("g{!b, !!y}"))(a, b, 3)
    assert torch.equal(out.q.map("a")[0][1], torch.full((2,), 2.0))
    assert torch.equal(out.r.map("b")[0][1], torch.zeros(3))
    with pytest.raises(Exception, match="secondary focus"):
        Grad("g > y")


@ptera
def scored(w, make):
    y = make(w)
    return y


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda w: float((w**2).sum()), "'y' is a float; Grad differentiates a scalar tensor"),
        (lambda w: w * 2, r"'y' has shape \(3,\); Grad differentiates a scalar"),
        (lambda w: (w**2).sum().detach(), "'y' does not require grad"),
    ],
)
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_a_secondary_focus_grad_cannot_differentiate_is_named(make, message, grouped):
    w = torch.ones(3, requires_grad=True)
    grads = {"q": Grad("scored{!w, !!y}")}
    if grouped:  # two requests in one exit take the grouped path
        grads["r"] = Grad("scored{!w, !!y}")
    with pytest.raises(ValueError, match=message):
        scored.using(**grads)(w, make)


def test_seed_regularizer_with_using_inside_a_ptera_function(data):
    @ptera
    def reg_step(inp, target):
        model: object
        lossfn: object

        output = model.using(weights="$param:Parameter")(inp)
        reg = sum(output.weights.map(lambda param: param.abs().mean()))
        loss = lossfn(output.value, target) + reg
        return loss

    net = make_network(20, 8, 4)
    inputs, targets = data
    plain = net(inputs, targets)
    regularized = reg_step.new(**net.state)(inputs, targets)
    weights = [lay.state[n] for lay in net.state.model.state.layers for n in ("W", "b")]
    expected = plain + sum(w.abs().mean() for w in weights)
    assert torch.allclose(regularized, expected)


def test_seed_temperature_tweaks(data):
    @ptera
    def hot_layer(inp):
        W: torch.nn.Parameter
        b: torch.nn.Parameter
        T: float  # Declare the new parameter here
        actfn: object

        act = inp @ W + b
        return actfn(act / T)  # Use it here

    torch.manual_seed(0)
    layers = [
        hot_layer.new(W=torch.randn(20, 8), b=torch.zeros(1, 8), actfn=torch.relu, T=1.0),
        hot_layer.new(W=torch.randn(8, 4), b=torch.zeros(1, 4), actfn=nn.LogSoftmax(dim=1), T=1.0),
    ]
    model = step.new(lossfn=nn.NLLLoss(), model=sequential.new(layers=layers))
    inp, target = data
    base = model(inp, target)
    assert torch.equal(model.tweak({"hot_layer > T": 1.0})(inp, target), base)
    hot = model.tweak({"hot_layer > T": 2.0})(inp, target)
    first = model.tweak({"hot_layer[1] > T": 10.0})(inp, target)
    with probing("hot_layer[$i] > T").values() as temps:
        model.tweak({"hot_layer[1] > T": 10.0})(inp, target)
    assert temps == [{"i": 1, "T": 10.0}, {"i": 2, "T": 1.0}]
    assert not torch.equal(hot, base) and not torch.equal(first, hot)


# -- nn.Modules we did not write ------------------------------------------------


def test_probing_sequential_gives_the_tensors_of_forward_hooks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh())
    x = torch.randn(4, 6)
    hooked = []
    handles = [
        m.register_forward_hook(lambda m, i, o: hooked.append((i[0], o)))
        for m in net
        if isinstance(m, nn.Linear)
    ]
    net(x)
    for h in handles:
        h.remove()
    with probing("Linear(input) > #value as output").values() as probed:
        net(x)
    assert len(probed) == len(hooked) == 2
    for p, (i, o) in zip(probed, hooked):
        assert torch.equal(p["input"], i) and torch.equal(p["output"], o)
    assert nn.Linear.forward.__code__.co_filename.endswith("linear.py")
    assert "__ptera" not in str(nn.Linear.forward.__code__.co_names)


@pytest.mark.parametrize(
    "selector, key",
    [
        ("Block.forward > h", "h"),
        ("Block > out", "out"),
        ("/tests.torchmods/Block.forward > out", "out"),
        ("Block > Linear > input", "input"),
        ("/torch.nn.modules.linear/Linear.forward > input", "input"),
    ],
)
def test_module_selectors(selector, key):
    torch.manual_seed(0)
    block = Block(3)
    x = torch.randn(2, 3)
    expected = {
        "h": block.lin(x),
        "out": torch.tanh(block.lin(x)) + x,
        "input": x,
    }[key]
    with probing(selector).values() as vals:
        out = block(x)
    assert len(vals) == 1 and torch.allclose(vals[0][key], expected)
    assert torch.equal(block(x), out)
    assert "__ptera" not in str(Block.forward.__code__.co_names)


def test_grad_inside_modules():
    torch.manual_seed(0)
    net = nn.Sequential(Block(3), nn.Linear(3, 1))

    @ptera
    def objective(x):
        y = net(x).pow(2).sum()
        return y

    x = torch.randn(5, 3)
    res = objective.using(g=Grad("objective{!!y} >> Block > h"))(x)
    ((h, gh),) = res.g.map("h")
    y = net(x).pow(2).sum()
    assert gh.shape == h.shape == (5, 3) and torch.isfinite(gh).all()
    assert torch.allclose(res.value, y)


# -- the parameters a stock module reads (`self.weight`) --------------------------


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 4),
    )


@ptera
def cnn_loss(model, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    return loss


def test_grad_on_a_stock_cnn_matches_backward():
    torch.manual_seed(0)
    net = small_cnn()
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,))
    with probing(Grad("cnn_loss{!!loss} >> $p:Parameter"), raw=True).values() as got:
        cnn_loss(net, x, y)
    cnn_loss(net, x, y).backward()
    params = dict(net.named_parameters())
    assert [d["p"].names[0] for d in got] == [n.split(".")[-1] for n in params]
    for d, p in zip(got, params.values()):
        value, grad = d["p"].value
        assert value is p and torch.allclose(grad, p.grad)


def test_a_module_used_twice_gets_one_sgd_step_as_with_backward():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.Tanh(), shared)
    x, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    by_hand = [p.detach().clone() for p in net.parameters()]
    cnn_loss(net, x, y).backward()
    by_hand = [b - 0.1 * p.grad for b, p in zip(by_hand, net.parameters())]
    seen = []
    step = cnn_loss.clone()

    @step.on(Grad("cnn_loss{!!loss} >> $p:Parameter"))
    def sgd(p):
        param, grad = p
        seen.append(param)
        with torch.no_grad():
            param -= 0.1 * grad

    step(net, x, y)
    assert len(seen) == 2  # weight and bias once each, though each is read twice
    for p, expected in zip(net.parameters(), by_hand):
        assert torch.equal(p, expected)


def test_grad_skips_a_frozen_layer_as_backward_does():
    torch.manual_seed(0)
    net = small_cnn()
    net[0].requires_grad_(False)  # fine-tuning: the first layer is frozen
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,))
    with probing(Grad("cnn_loss{!!loss} >> $p:Parameter"), raw=True).values() as got:
        cnn_loss(net, x, y)
    cnn_loss(net, x, y).backward()
    trained = [p for p in net.parameters() if p.requires_grad]
    assert [d["p"].value[0] for d in got] == trained
    for d, p in zip(got, trained):
        assert torch.allclose(d["p"].value[1], p.grad)


def test_grad_by_a_named_tensor_without_grad_is_an_error():
    net = small_cnn()
    net[4].requires_grad_(False)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,))
    with pytest.raises(ValueError, match="'weight' .* does not require grad; Grad differentiates"):
        with probing(Grad("cnn_loss{!!loss} >> Linear > !weight")):
            cnn_loss(net, x, y)


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("Linear > weight", ["weight"]),
        ("Linear > $p:Parameter", ["weight", "bias"]),
        ("BatchNorm2d > $p:Parameter", ["weight", "bias"]),  # not the running_mean buffer
        ("BatchNorm2d > running_mean", ["running_mean"]),
        ("Linear{!input, weight}", ["input"]),
    ],
)
def test_attributes_a_forward_reads_are_points(selector, expected):
    net = small_cnn()
    with probing(selector, raw=True).values() as got:
        net(torch.randn(2, 1, 8, 8))
    assert [n for d in got for c in d.values() for n in c.names if n in expected] == expected


class Scale(nn.Module):
    def forward(self, x):
        return x * self.w


def test_an_attribute_whose_class_changes_is_checked_by_its_class_each_time():
    """``$v:Parameter`` on a point is checked on each value's class (answers kept per class)."""
    scale = Scale()
    param, plain = nn.Parameter(torch.ones(2)), torch.ones(2)
    with probing("Scale > $v:Parameter", raw=True).values() as got:
        for w in (param, plain, param, plain):
            scale._parameters.pop("w", None)
            scale.__dict__.pop("w", None)
            scale.w = w  # registered as a parameter, or a plain attribute
            scale(torch.ones(2))
    assert [c.values[0] is param for d in got for c in d.values()] == [True, True]


class _EqMeta(type):
    def __eq__(cls, other):  # and so no __hash__: the class is unhashable
        return cls is other


class _Odd(metaclass=_EqMeta):
    def __rmul__(self, x):
        return x


def test_a_class_filter_takes_unhashable_classes_and_keeps_no_class_alive():
    import gc
    import weakref

    scale = Scale()
    scale.w = _Odd()
    with probing("Scale > $v:Parameter").values() as got:
        scale(torch.ones(2))
    assert got == []
    classes = []
    with probing("Scale > $v:Parameter").values() as got:
        for _ in range(3):
            cls = type("Made", (nn.Parameter,), {})  # one class per object, as torch.fx does
            scale.w = cls(torch.ones(2))
            scale(torch.ones(2))
            classes.append(weakref.ref(cls))
            del scale.w, cls
    assert len(got) == 3
    got.clear()  # (the values are instances of the classes)
    gc.collect()
    assert all(ref() is None for ref in classes)


def test_tweaking_a_stock_modules_weight():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with probing("Linear > weight", overridable=True) as probe:
        probe.override(lambda d: torch.zeros_like(d["weight"]))
        out = lin(x)
    assert torch.allclose(out, lin.bias.expand(4, 2))
    assert not torch.allclose(lin(x), out)


def test_an_attribute_a_forward_never_reads_is_named_in_the_error():
    with pytest.raises(
        SelectorError, match=r"no variable 'weigth'.*attributes of self it reads: .*weight"
    ):
        probing("Linear > weigth")


# -- picking one layer of a stock model -------------------------------------------


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"mlp": nn.Linear(3, 3)}) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer["mlp"](x) + 1
        return x


ALL_TOWER = ["tower.layers.0.mlp", "tower.layers.1.mlp", "tower.layers.2.mlp"]


@pytest.mark.parametrize(
    "selector, env, which",
    [
        ("net.2 > input", None, ["net.2"]),
        ("net.0(!input)", None, ["net.0"]),
        ("tower.layers.1.mlp > input", None, ["tower.layers.1.mlp"]),
        ("lin > input", "net.2", ["net.2"]),
        ("lin.forward > input", "net.0", ["net.0"]),
        ("tower >> Linear > input", None, ALL_TOWER),  # not the Linears of net
    ],
)
def test_one_submodule_by_path_or_by_instance(selector, env, which):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    tower = Tower()
    scope = {"net": net, "tower": tower}
    if env is not None:
        scope["lin"] = net.get_submodule(env.split(".", 1)[1])
    seen = []
    hooks = [
        scope[path.split(".")[0]]
        .get_submodule(path.split(".", 1)[1])
        .register_forward_hook(lambda m, i, o: seen.append(i[0]))
        for path in which
    ]
    with probing(selector, env=scope).values() as got:
        tower(net(torch.randn(2, 4)))
    for hook in hooks:
        hook.remove()
    assert len(got) == len(seen) == len(which)
    assert all(torch.equal(g["input"], s) for g, s in zip(got, seen))


def test_where_self_picks_one_module():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with probing("Linear(self) > #value as out") as probe:
        outs = probe.where(self=net[2])["out"].accum()
        net(torch.randn(5, 4))
    assert [tuple(o.shape) for o in outs] == [(5, 2)]


def test_a_key_on_a_function_nothing_keys_is_an_error():
    # In a fresh process: a @tooled function with `h[k] = f(...)` anywhere (this test
    # module has one) could key any call, and then the selector may match.
    code = (
        "import torch\n"
        "from ptera import SelectorError, probing\n"
        "try:\n"
        "    probing('Linear[1] > input')\n"
        "except SelectorError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "'Linear[...]' can never match" in out and "net.2 > input" in out


@pytest.mark.parametrize("scope", ["env", "list in env", "class named"])
def test_modules_below_a_scope_are_those_in_scope(scope):
    torch.manual_seed(0)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,))

    def grads(net):  # `net` is not in the caller's scope of `probing` below
        selector = "cnn_loss{!!loss} >> $p:Parameter"
        env = {"cnn_loss": cnn_loss}
        if scope == "env":
            env["model"] = net
        elif scope == "list in env":
            env["models"] = [net]
        else:
            selector = "cnn_loss{!!loss} >> Linear > $p:Parameter"
        with probing(Grad(selector), env=env).values() as got:
            cnn_loss(net, x, y)
        return got

    got = grads(small_cnn())
    assert len(got) == (2 if scope == "class named" else 6)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("direct", [True, False])
def test_sgd_through_grad_is_bit_identical_to_autograd_by_hand(flat, direct, monkeypatch):
    """Flat collector or ``Match``, direct delivery or one ``Capture`` per parameter:
    the parameters after ten steps equal those of ``torch.autograd.grad`` by hand."""
    from ptera import capture

    real_flat = capture._is_flat
    monkeypatch.setattr(capture, "_is_flat", lambda *a: flat and real_flat(*a))

    def trained(by_grad: bool) -> list:
        torch.manual_seed(3)
        network = make_network(6, 5, 3)
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        params = [lay.state[n] for lay in network.state.model.state.layers for n in ("W", "b")]
        model = network.clone(return_object=True)

        def update(param):
            value, grad = param
            value.data.sub_(0.1 * grad)

        listener = update if direct else (lambda **caps: update(caps["param"]))
        model.on(Grad("step{!!loss} >> $param:Parameter"))(listener)
        for _ in range(10):
            if by_grad:
                assert model(x, y).value is not None
            else:
                loss = network(x, y)
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.data.sub_(0.1 * g)
        return [p.detach().clone() for p in params]

    rule = Grad("step{!!loss} >> $param:Parameter").__ptera_rules__(lambda c: None, globals())
    assert rule[0].flat is flat
    assert all(torch.equal(a, b) for a, b in zip(trained(True), trained(False)))
