"""The plugin contract (ptera.plugin): the protocol, a third-party plugin, and the
import graph of the code that sits on the core (ptera.torch, ptera.lab, the CLIs).

The import rule: code on top of the core reaches ``ptera``, ``ptera.plugin``,
``ptera.torch`` and ``ptera.cli`` through the names in their ``__all__`` only;
lab modules share their names that do not start with ``_`` among themselves
(``__all__`` there lists what a user of the lab sees, not what its parts share).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import ptera
import ptera.lab
from ptera import probing, using
from ptera.plugin import (
    Capture,
    Plugin,
    caller_env,
    check_selector,
    collecting_rule,
    each_sender,
    emit_each,
    exit_batch,
    is_plugin,
)

# -- the import graph ---------------------------------------------------------------------

# What code on top of the core may import from ptera: these modules' public names.
PUBLIC_CORE = {"ptera", "ptera.plugin", "ptera.torch", "ptera.cli"}


def lab_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(ptera.lab.__path__, "ptera.lab.")]
    return sorted(["ptera.torch", "ptera.lab", *names])


def allowed_module(name: str) -> bool:
    return name in PUBLIC_CORE or name == "ptera.lab" or name.startswith("ptera.lab.")


def is_public(module_name: str, name: str) -> bool:
    if name.startswith("_"):
        return False
    if module_name in PUBLIC_CORE:
        return name in importlib.import_module(module_name).__all__
    return True


def source_of(module_name: str) -> tuple[Path, bool]:
    spec = importlib.util.find_spec(module_name)
    path = Path(spec.origin)
    return path, path.name == "__init__.py"


def absolute(module_name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative ones resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module_name.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def reached(module_name: str) -> list[tuple[int, str, str]]:
    """Each (line, module, name) of ptera that ``module_name`` imports or reads through
    an imported module (``iv._short``); name is '' for a whole module."""
    path, is_package = source_of(module_name)
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str, str]] = []
    aliases: dict[str, str] = {}  # local name -> ptera module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ptera":
                    out.append((node.lineno, alias.name, ""))
                    local = alias.asname or alias.name.split(".")[0]
                    aliases[local] = alias.name if alias.asname else "ptera"
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module_name, is_package, node)
            if source.split(".")[0] != "ptera":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if is_module(full):
                    out.append((node.lineno, full, ""))
                    aliases[alias.asname or alias.name] = full
                else:
                    out.append((node.lineno, source, alias.name))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            base = aliases[node.value.id]
            if is_module(f"{base}.{node.attr}"):
                out.append((node.lineno, f"{base}.{node.attr}", ""))
            else:
                out.append((node.lineno, base, node.attr))
    return out


def private_reaches(module_name: str) -> list[str]:
    bad = []
    for line, module, name in reached(module_name):
        where = f"{module_name}:{line}"
        if not allowed_module(module):
            bad.append(f"{where} imports the engine module {module}")
        elif name and not is_public(module, name):
            bad.append(f"{where} uses {module}.{name}, a private name")
    return bad


@pytest.mark.parametrize("module_name", [*lab_modules(), "ptera.lab.experiments.cli"])
def test_reaches_only_public_names(module_name):
    if not module_name.endswith("__main__"):
        importlib.import_module(module_name)  # every module imports cleanly
    assert private_reaches(module_name) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..match import compile_selector", ["ptera.lab.m:1 imports the engine module"]),
        ("from ptera.overlay import caller_env", ["ptera.lab.m:1 imports the engine module"]),
        ("import ptera.capture", ["ptera.lab.m:1 imports the engine module"]),
        ("from .. import effects", ["ptera.lab.m:1 imports the engine module"]),
        ("import ptera\nptera.effects.Overlay", ["ptera.lab.m:2 imports the engine module"]),
        ("from .experiments import interventions as iv\niv._short", ["iv"]),
        ("from ptera.cli import _program", ["ptera.lab.m:1 uses ptera.cli._program"]),
        ("from ptera import Capture, compat", ["ptera.lab.m:1 imports the engine module"]),
        ("from ptera.plugin import compile_selector", ["ptera.lab.m:1 uses"]),
        ("from .learner import _check", ["ptera.lab.m:1 uses ptera.lab.learner._check"]),
        ("from ..cli import read_config", []),
        ("from .. import probing, select", []),
        ("from ptera.plugin import after_exit", []),
        ("from .learner import Learner", []),
        ("import ptera\nptera.probing", []),
    ],
)
def test_import_check_catches(source, expected, tmp_path, monkeypatch):
    # A fake lab module, checked like the real ones.
    module = tmp_path / "m.py"
    module.write_text(source + "\n")
    monkeypatch.setattr("tests.test_plugin.source_of", lambda name: (module, False))
    found = private_reaches("ptera.lab.m")
    assert len(found) == len(expected)
    for message, start in zip(found, expected):
        assert start in message if start != "iv" else "_short" in message


# -- the protocol ---------------------------------------------------------------------------


class Doubled:
    """A third-party plugin, written on ptera.plugin alone: each value of ``x`` in
    every outermost call, doubled."""

    def __init__(self, selector: str):
        self.selector = check_selector(selector, caller_env())

    def __ptera_rules__(self, emit, env):
        def on_call(captures: dict[str, Capture]) -> None:
            x = captures["x"]
            for name, value in zip(x.names, x.values):
                emit({"x": Capture("x", [name], [value * 2])})

        return [collecting_rule(self.selector, env, on_call)]


@ptera
def double_me(a):
    x = a + 1
    x = x * 10
    return x


@pytest.mark.parametrize(
    "obj, expected",
    [
        (Doubled("double_me > x"), True),
        ("double_me > x", False),
        (ptera.select("double_me > x"), False),
        (None, False),
        (object(), False),
    ],
)
def test_is_plugin_is_isinstance(obj, expected):
    assert is_plugin(obj) is isinstance(obj, Plugin) is expected


def test_third_party_plugin_in_probing():
    with probing(Doubled("double_me > x")) as probe:
        seen = probe["x"].accum()
        double_me(1)
    assert seen == [4, 40]


def test_third_party_plugin_in_using_and_on():
    with using(d=Doubled("double_me > x")) as res:
        double_me(2)
    assert res.d.map("x") == [6, 60]

    traced = double_me.clone(return_object=True)

    @traced.on(Doubled("double_me > x"))
    def negated(x):
        return -x

    assert traced(3).negated == [-8, -80]


def test_plugin_checks_its_selector_early():
    with pytest.raises(ptera.SelectorError):
        Doubled("no_such_function > x")


def test_after_exit_runs_once_the_call_is_done():
    from ptera.plugin import after_exit

    order = []

    class Late:
        def __ptera_rules__(self, emit, env):
            def on_call(captures):
                order.append("rule")
                after_exit(lambda: order.append("after"))

            return [collecting_rule("double_me > x", env, on_call)]

    with probing(Late()):
        double_me(1)
    assert order == ["rule", "after"]


class Batched:
    """Each match's ``x`` joins the exit's batch; ``serve`` records each batch once."""

    def __init__(self, selector: str, served: list):
        self.selector, self.served = selector, served

    def serve(self, requests: list) -> None:
        self.served.append(list(requests))

    def __ptera_rules__(self, emit, env):
        def on_call(captures: dict[str, Capture]) -> None:
            exit_batch(self.serve).append(captures["x"].values)

        return [collecting_rule(self.selector, env, on_call)]


@ptera.ptera
def batched_pair(a, boom):
    x = a + 1
    y = a * 2
    if boom:
        raise ValueError("boom")
    return x + y


def test_an_exit_batch_is_shared_by_the_rules_of_one_exit_and_served_once():
    served = []
    plugin = Batched("batched_pair > x", served)
    twice = Batched("batched_pair(a) > x", served)
    twice.serve = plugin.serve  # an equal function: the same batch
    with probing(plugin), probing(twice):
        batched_pair(1, False)
        assert served == [[[2], [2]]]
        batched_pair(5, False)
    assert served == [[[2], [2]], [[6], [6]]]


def test_an_exit_batch_goes_with_a_call_that_raised():
    served = []
    with probing(Batched("batched_pair > x", served)):
        with pytest.raises(ValueError, match="boom"):
            batched_pair(1, True)
        assert served == []
        batched_pair(3, False)  # a fresh batch, not appended to the dropped one
    assert served == [[[4]]]


def test_third_party_plugin_as_learner_listener():
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.utils.data import TensorDataset

    from ptera.lab import DataLoaders, Learner

    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    learn = Learner(nn.Linear(2, 1), DataLoaders.from_datasets(ds, ds, batch_size=4))

    @learn.on("one_batch > loss")
    def plain(loss):
        return loss.item()

    @learn.on(Doubled("one_batch > loss as x"))
    def doubled(x):
        return x.item()

    learn.fit(1)
    assert len(learn.results.plain) >= 2  # the training batches, at least
    assert learn.results.doubled == pytest.approx([2 * v for v in learn.results.plain])


def test_grad_is_a_plugin():
    pytest.importorskip("torch")
    from ptera.torch import Grad

    grad = Grad("double_me{!!x} > a")
    assert isinstance(grad, Plugin) and is_plugin(grad)


class Each:
    """``Doubled`` delivering through ``emit_each``: one result per value of ``x``."""

    def __init__(self, selector: str):
        self.selector = check_selector(selector, caller_env())

    def __ptera_rules__(self, emit, env):
        def on_call(captures: dict[str, Capture]) -> None:
            x = captures["x"]
            emit_each(emit, "x", x.names, [v * 2 for v in x.values])

        return [collecting_rule(self.selector, env, on_call)]


class EachSender(Each):
    """``Each`` with its sender looked up once, when its rules are built."""

    def __ptera_rules__(self, emit, env):
        send = each_sender(emit)

        def on_call(captures: dict[str, Capture]) -> None:
            x = captures["x"]
            send("x", x.names, [v * 2 for v in x.values])

        return [collecting_rule(self.selector, env, on_call)]


def positional(x):
    return -x


def keyword_only(*, x):
    return -x


def with_default(x, scale=3):
    return x * scale


def side_effect(x):
    return None


def varkw(**captures):
    return captures["x"] + 1


def after_default(unused=0, /, x=0):
    return (unused, x)


@pytest.mark.parametrize(
    "listener, expected",
    [
        (positional, [-4, -40]),
        (keyword_only, [-4, -40]),
        (with_default, [12, 120]),
        (side_effect, []),  # a listener's None is not collected
        (varkw, [5, 41]),
        (after_default, [(0, 4), (0, 40)]),  # `x` is not the first parameter
    ],
)
def test_emit_each_means_one_emit_per_value(listener, expected):
    results = []
    for plugin in (Each("double_me > x"), EachSender("double_me > x"), Doubled("double_me > x")):
        traced = double_me.clone(return_object=True)
        traced.on(plugin)(listener)
        results.append(traced(1)[listener.__name__])
    assert results[0] == results[1] == results[2] == expected


def test_emit_each_reaches_probes_and_collections_as_captures():
    with probing(Each("double_me > x")) as probe:
        seen = probe["x"].accum()
        double_me(1)
    with using(d=Each("double_me > x")) as res:
        double_me(1)
    assert seen == res.d.map("x") == [4, 40]
    assert res.d.map_full("x")[0] == Capture("x", ["x"], [4])


def test_a_listener_that_wants_another_capture_still_says_so():
    traced = double_me.clone(return_object=True)

    @traced.on(Each("double_me > x"))
    def wrong(y):
        return y

    with pytest.raises(TypeError, match="wants y"):
        traced(1)
