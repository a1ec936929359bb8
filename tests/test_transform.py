"""Instrumentation preserves the semantics of every program, idle or probed."""

import ast
import asyncio
import builtins
import contextlib
import importlib
import importlib.util
import inspect
import sys
import traceback
import types
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptera import PteraNameError, SelectorError, instrumented_source, probing, tooled, tweaking
from ptera import ptera as ptera_fn
from ptera import tag as tags
from ptera.transform import TransformError

from . import programs
from .programs import HELPERS, PROGRAMS


def outcome(fn):
    try:
        return ("ok", fn())
    except BaseException as exc:  # noqa: BLE001 - the exception is the outcome
        return ("error", type(exc), str(exc))


# What each program does before anything is instrumented.
EXPECTED = {name: outcome(fn) for name, fn in PROGRAMS.items()}
ORIGINAL_CODE = {name: fn.__code__ for name, fn in PROGRAMS.items()}
for fn in [*PROGRAMS.values(), *HELPERS]:
    tooled(fn)

EVERY_POINT = ("$v", "$m:@enter", "$m:@exit", "#value", "#error")


def test_corpus_is_large_enough():
    assert len(PROGRAMS) >= 40


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_idle_instrumented_function_runs_original_code(name):
    fn = PROGRAMS[name]
    assert fn.__code__ is ORIGINAL_CODE[name]
    assert outcome(fn) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_same_results_with_every_point_probed(name):
    fn = PROGRAMS[name]
    seen = []
    with probing(*EVERY_POINT, raw=True) as probe:
        probe.subscribe(seen.append)
        assert fn.__code__ is not ORIGINAL_CODE[name]
        result = outcome(fn)
    assert result == EXPECTED[name]
    assert seen, "the probe saw nothing"
    assert fn.__code__ is ORIGINAL_CODE[name]


@pytest.mark.parametrize(
    "program, expected",
    [
        (programs.p_assign, [("a", 1), ("b", 2)]),
        (programs.p_tuple_unpack, [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]),
        (
            programs.p_star_unpack,
            [("first", 1), ("rest", [2, 3, 4]), ("init", ["a", "b"]), ("last", "c")],
        ),
        (programs.p_augmented, [("x", 1), ("x", 3), ("x", 9), ("s", "a"), ("s", "ab")]),
        (programs.p_annotated, [("x", 3), ("y", [3])]),
        (programs.p_except_as, [("err", "division by zero"), ("kind", "ZeroDivisionError")]),
        (programs.p_nonlocal, [("count", 0)]),
        (programs.p_slice_assign, [("xs", [1, 9, 4])]),  # `xs[1:2] = [9]` is keyed
    ],
)
def test_each_assignment_form_reports_its_names(program, expected):
    with probing(f"{program.__name__} > $v", raw=True).values() as values:
        program()
    got = []
    for entry in values:
        (cap,) = entry.values()
        (name,) = cap.names
        value = cap.value
        if callable(value):
            value = "<fn>"
        elif isinstance(value, BaseException):
            value = str(value)
        got.append((name, value))
    assert got == expected


def test_subscript_assignment_keeps_evaluation_order_when_probed():
    with probing("p_subscript_order > h", "p_subscript_order > h[$k] as item") as probe:
        keys = probe.accum()
        log, h = programs.p_subscript_order()
    assert log == ["v", "h", "k"]
    assert h == {"key": 1, "a": 2}
    assert keys == [{"h": h}, {"item": 2, "k": "a"}]


def test_traceback_points_at_the_users_line():
    line = inspect.getsourcelines(programs.p_raises)[1] + 2
    with probing("p_raises > x"):
        with pytest.raises(ValueError) as info:
            programs.p_raises()
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == (programs.__file__, line)
    assert last.line == 'raise ValueError(f"bad x={x}")'


def test_names_docstrings_and_source_are_preserved():
    fn = programs.p_docstring
    with probing("p_docstring > #value"):
        assert fn() == "A docstring that must survive."
        assert fn.__name__ == "p_docstring"
        assert fn.__qualname__ == "p_docstring"
        assert fn.__code__.co_name == "p_docstring"
        assert "A docstring" in inspect.getsource(fn)


def test_generator_yields_and_receives_are_points():
    with probing("_echo > #receive").values() as got, probing("_echo > #yield").values() as gave:
        programs.p_generator_send()
    assert [d["#receive"] for d in got] == [1, 2, None]
    assert [d["#yield"] for d in gave] == [0, 1, 3]


def test_decorators_above_and_below():
    import functools

    def deco(f):
        @functools.wraps(f)
        def wrapper(*a):
            return f(*a) * 10

        return wrapper

    @deco
    @tooled
    def inner(x):
        y = x + 1
        return y

    @tooled
    @deco
    def outer(x):
        z = x + 2
        return z

    with probing("inner > y").values() as ys, probing("outer > z").values() as zs:
        assert inner(1) == 20
        assert outer(1) == 30
    assert ys == [{"y": 2}] and zs == [{"z": 3}]


def test_declared_variable_without_value_names_variable_and_function():
    @tooled
    def bagel(x):
        z: int
        return x + z

    with pytest.raises(PteraNameError) as info:
        bagel(1)
    assert isinstance(info.value, NameError)
    assert "'z'" in str(info.value) and "bagel" in str(info.value)


def test_lambda_cannot_be_instrumented():
    with pytest.raises(TransformError, match="lambda"):
        tooled(lambda x: x)


def test_ptera_info_for_coleo():
    @tooled
    def configured(a: int, b=2):
        # How many things
        n: int = 3
        # Declared only
        m: str
        return a + b + n + len(programs.__name__)

    info = configured.__ptera_info__
    assert info["a"]["provenance"] == "argument" and info["a"]["annotation"] is int
    assert info["n"] == {
        "annotation": int,
        "provenance": "body",
        "doc": "How many things",
        "location": (__file__, configured.__qualname__, info["n"]["location"][2]),
    }
    assert info["m"]["doc"] == "Declared only"
    assert info["programs"]["provenance"] == "external"


@tooled
def _shows_its_locals(x):
    y = x + 1
    h = {}
    h[0] = y
    inner = sorted(locals())
    return inner, sorted(vars()), dir()


@pytest.mark.parametrize(
    "selectors", [(), ("_shows_its_locals > y",), ("_shows_its_locals > h",), ("$v", "#value")]
)
def test_locals_shows_only_the_users_names(selectors):
    # No `__ptera_F__` or temporaries, whether idle or instrumented.
    with probing(*selectors) if selectors else contextlib.nullcontext():
        shown = _shows_its_locals(1)
    assert shown == (["h", "x", "y"], ["h", "inner", "x", "y"], ["h", "inner", "x", "y"])


def _locals_in_place(a):
    b = a + 1
    exec("c = b * 2", globals(), locals())
    d = locals()
    d["extra"] = 5
    return locals().get("c"), locals() is d, "extra" in locals()


@pytest.mark.parametrize("selectors", [(), ("_locals_in_place > b",), ("$v",)])
def test_locals_is_the_frames_own_dict(selectors):
    # As in plain Python 3.11: one dict per frame, so exec's writes and the user's are seen.
    expected = _locals_in_place(1)
    assert expected == (4, True, True)
    with probing(*selectors) if selectors else contextlib.nullcontext():
        assert tooled(_locals_in_place)(1) == expected


@tooled
def _matches(value):
    match value:
        case (a, b) if a < b:
            return a + b
        case {"k": v, **rest}:
            return v, rest
        case [first, *others] as whole:
            return first, others, whole
        case int() | float() as number:
            return number
    return None


@pytest.mark.parametrize(
    "value, expected",
    [
        ((1, 2), [("a", 1), ("b", 2)]),
        ({"k": 3, "z": 4}, [("v", 3), ("rest", {"z": 4})]),
        ([5, 6, 7], [("first", 5), ("others", [6, 7]), ("whole", [5, 6, 7])]),
        (8.5, [("number", 8.5)]),
    ],
)
def test_match_case_captures_are_points(value, expected):
    with probing("_matches > $v", raw=True).values() as seen:
        _matches(value)
    got = [(cap.names[0], cap.value) for entry in seen for cap in entry.values()]
    assert got == [("value", value), *expected]


def test_match_case_captures_can_be_overridden():
    with probing("_matches > a", overridable=True) as probe:
        probe.override(10)
        assert _matches((1, 2)) == 12


class _Big:
    """Stands for a large tensor: something a weakref can watch."""


@tooled
def _stores_then_drops(fail):
    h = {}
    h[0] = _Big()
    ref = weakref.ref(h[0])
    if fail:
        try:
            h[[]] = h[0]  # the value is taken, then storing it fails (unhashable key)
        except TypeError:
            pass
    h[0] = None  # the dict held the only reference the user made
    return ref() is None


@tooled
def _unpacks_then_drops(fail):
    h = {}
    h[0], x = _Big(), 1
    ref = weakref.ref(h[0])
    if fail:
        try:
            h[[]], x = h[0], 2
        except TypeError:
            pass
    for h[1] in [h[0]]:  # noqa: B020 - the loop stores into h, as tested
        pass
    h[0] = h[1] = None
    return x == 1 and ref() is None


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("selector", [None, "{fn} > h", "{fn} > $v", "{fn} > h[$k] as v"])
@pytest.mark.parametrize("fn", [_stores_then_drops, _unpacks_then_drops])
def test_subscript_assignment_does_not_keep_its_value_alive(fn, selector, fail):
    with probing(selector.format(fn=fn.__name__)) if selector else contextlib.nullcontext():
        assert fn(fail)


# -- the rewrite as text: instrumented_source ---------------------------------------


@tooled
def _keyed_sum(x, h):
    y = x * 2
    h[x] = y
    for i in range(2):
        y += i
    return y


def reported(source: str) -> set:
    """The names the rewritten code reports: its string constants (``_keyed_sum`` has none)."""
    tree = ast.parse(source)
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


LOOP = {"i", "#loop_i", "#endloop_i"}


@pytest.mark.parametrize(
    "variables, expected",
    [
        (None, {"x", "h", "y", "#enter", "#value"} | LOOP),
        ({"y"}, {"y"}),
        ({"h"}, {"h"}),
        ({"i", "#value"}, {"i", "#value"}),
        ({"#endloop_i"}, {"#endloop_i"}),
        (set(), set()),
    ],
)
def test_instrumented_source_reports_only_what_is_asked(variables, expected):
    assert reported(instrumented_source(_keyed_sum, variables)) == expected


def test_the_idle_variant_is_the_original_code():
    original = ast.parse(inspect.getsource(_keyed_sum)).body[0]
    original.decorator_list = []
    assert instrumented_source(_keyed_sum, set()) == ast.unparse(original)


def test_keyed_assignment_clears_its_temporaries_in_a_finally():
    tree = ast.parse(instrumented_source(_keyed_sum, {"h"}))
    (guard,) = [
        t for t in ast.walk(tree) if isinstance(t, ast.Try) and not t.handlers and t.finalbody
    ]
    bound = {
        t.id
        for s in guard.body
        if isinstance(s, ast.Assign)
        for t in s.targets
        if isinstance(t, ast.Name)
    }
    cleared = {t.id for s in guard.finalbody for t in s.targets}
    assert len(bound) == 3 and cleared == bound
    assert all(isinstance(s.value, ast.Constant) and s.value.value is None for s in guard.finalbody)


def test_instrumented_source_activates_nothing():
    code = _keyed_sum.__code__
    instrumented_source(_keyed_sum)
    assert _keyed_sum.__code__ is code
    assert _keyed_sum(1, {}) == 3


@pytest.mark.parametrize(
    "fn, variables, error, message",
    [
        (_keyed_sum, "y", TypeError, r"a set of names, like \{'y'\}"),
        (_keyed_sum, {"z"}, ValueError, r"no variable 'z' \(it has: h, i, x, y\)"),
        (len, None, TypeError, "needs a Python function"),
    ],
)
def test_instrumented_source_rejects_bad_input(fn, variables, error, message):
    with pytest.raises(error, match=message):
        instrumented_source(fn, variables)


def bound_helpers(source: str) -> set:
    """The helpers the rewritten code binds to locals at entry (``x = __ptera__.x``)."""
    tree = ast.parse(source).body[0]
    return {
        s.value.attr
        for s in tree.body
        if isinstance(s, ast.Assign)
        and isinstance(s.value, ast.Attribute)
        and getattr(s.value.value, "id", None) == "__ptera__"
    }


@pytest.mark.parametrize(
    "variables, bound",
    [
        ({"h"}, set()),  # one report, one keyed report: read in place
        ({"x", "h"}, {"report"}),  # two reports
        ({"i"}, {"report"}),  # one report, in a loop
        (None, {"report"}),
        (set(), set()),
    ],
)
def test_helpers_used_more_than_once_are_bound_at_entry(variables, bound):
    assert bound_helpers(instrumented_source(_keyed_sum, variables)) == bound


# -- what instrumenting leaves in the user's module --------------------------------

FRESH_MODULE = """
def scale(x):
    y = x * 2
    return y
"""


@pytest.mark.parametrize("decorated", [False, True])
def test_instrumenting_adds_one_name_to_the_module(tmp_path, monkeypatch, decorated):
    name = f"_ptera_fresh_module_{decorated}"
    (tmp_path / f"{name}.py").write_text(FRESH_MODULE)
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    before = set(vars(module))
    scale = tooled(module.scale) if decorated else module.scale
    with probing("scale > y", env={"scale": scale}).values() as ys:
        assert scale(3) == 6
    assert ys == [{"y": 6}]
    assert set(vars(module)) - before == {"__ptera__"}


def test_a_copy_with_other_globals_runs_the_variant_too(tmp_path, monkeypatch):
    # A copy made with types.FunctionType shares the code, so it runs the variant:
    # its own globals get the helper as well (else: NameError '__ptera__').
    name = "_ptera_fresh_module_copied"
    (tmp_path / f"{name}.py").write_text(FRESH_MODULE)
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    copied = types.FunctionType(module.scale.__code__, {"__builtins__": builtins}, "copied")
    with probing(f"/{name}/scale > y").values() as ys:
        assert (module.scale(3), copied(4)) == (6, 8)
    assert ys == [{"y": 6}, {"y": 8}]
    assert copied(5) == 10


def test_equal_functions_of_two_modules_are_two_functions(tmp_path, monkeypatch):
    # Same source at the same line: equal code objects (equality ignores the file),
    # yet a probe on one must not see the other's calls, whichever is probed first.
    names = ["_ptera_twin_a", "_ptera_twin_b"]
    for name in names:
        (tmp_path / f"{name}.py").write_text(FRESH_MODULE)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(tmp_path)
    a, b = (importlib.import_module(name) for name in names)
    assert a.scale.__code__ == b.scale.__code__
    for name in reversed(names):
        with probing(f"/{name}/scale > y").values() as ys:
            a.scale(1), b.scale(100)
        assert ys == ([{"y": 200}] if name == names[1] else [{"y": 2}])


# -- where source comes from: notebook cells yes, strings no ----------------------

NOTEBOOK_CELLS = [
    """
from ptera import probing, tooled

def plain(x):
    y = x + 1
    return y

@tooled
def decorated(x):
    z = x * 3
    return z

class Model:
    def forward(self, x):
        h = x - 1
        return h
""",
    "unrelated = 1 + 1",  # another cell in between, as in a session
    """
with probing("plain > y; decorated > z; Model.forward > h").values() as seen:
    plain(1), decorated(1), Model().forward(1)
""",
]


@pytest.mark.parametrize("kernel_names", [False, True], ids=["ipython", "ipykernel"])
def test_functions_defined_in_notebook_cells_instrument(kernel_names, monkeypatch):
    shell_module = pytest.importorskip("IPython.core.interactiveshell")
    shell = shell_module.InteractiveShell.instance()
    if kernel_names:
        # Jupyter's kernel names cells after a temporary file that is not on disk.
        monkeypatch.setattr(
            shell.compile,
            "get_code_name",
            lambda raw, code, number: f"/tmp/ipykernel_0/{abs(hash(code))}.py",
        )
    for cell in NOTEBOOK_CELLS:
        result = shell.run_cell(cell)
        assert result.error_in_exec is None and result.error_before_exec is None
    assert shell.user_ns["seen"] == [{"y": 2}, {"z": 3}, {"h": 0}]


def test_code_without_source_keeps_a_clear_error():
    namespace = {}
    exec("def from_a_string(x):\n    y = x + 1\n    return y\n", namespace)
    with pytest.raises(SelectorError, match="defined in '<string>'.*`exec` of a string"):
        probing("from_a_string > y", env=namespace)


class Reads:
    scale = 2

    def method(self, x):
        y = x * self.scale
        return y

    @staticmethod
    def static(cfg):
        y = cfg.scale
        return y


@pytest.mark.parametrize(
    "selector, ok",
    [("Reads.method > scale", True), ("Reads.static > scale", False)],
)
def test_self_attributes_are_points_only_in_methods(selector, ok):
    if not ok:
        with pytest.raises(SelectorError, match="has no variable 'scale'"):
            probing(selector)
        return
    with probing(selector).values() as got:
        Reads().method(3)
    assert got == [{"scale": 2}]


@tooled
def _accumulate(x):
    h = {0: x, 1: x}
    h[1] += 10
    h[0] *= 2
    return h


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("_accumulate > h[1] as h", [{"h": 11}]),
        ("_accumulate > h[$k] as v", [{"v": 11, "k": 1}, {"v": 2, "k": 0}]),
        ("_accumulate > h", [{"h": {0: 2, 1: 11}}]),  # items are not values of h
    ],
)
def test_augmented_item_assignments_are_keyed(selector, expected):
    with probing(selector).values() as got:
        assert _accumulate(1) == {0: 2, 1: 11}
    assert got == expected


def test_augmented_item_assignment_of_a_tensor_is_in_place_as_in_python():
    import torch

    @tooled
    def bump(t):
        view = t[1:]
        h = {"w": view}
        h["w"] += 1
        return h

    t = torch.zeros(3)
    with probing("bump > h[$k] as v").values() as got:
        h = bump(t)
    assert t.tolist() == [0.0, 1.0, 1.0] and h["w"] is got[0]["v"]


# -- item targets in every assignment form are keyed reports --------------------------


@tooled
def _unpacked(a, b):
    h = {}
    h[0], h[1] = a, b
    return h


@tooled
def _beside_a_name(pair):
    h = {}
    h["k"], x = pair
    return h, x


@tooled
def _starred(seq):
    h = {}
    h[0], *rest = seq
    first, *h[1] = seq
    return h, rest, first


@tooled
def _nested(a, b):
    h = {}
    (h[0], (h[1], y)) = a, (b, a)
    [h[2], h[3]] = b, a
    return h, y


@tooled
def _chained(v):
    h, g = {}, {}
    h[0] = g[1] = v
    x = h[2] = v + 1
    return h, g, x


@tooled
def _key_after_name(v):
    h = {}
    i, h[i] = 7, v
    return h, i


@tooled
def _annotated(v):
    h = {}
    h[0]: int = v
    return h


@tooled
def _loop_targets(xs):
    h = {}
    for h["last"] in xs:
        pass
    for i, h[i] in enumerate(xs):  # noqa: B007 - the target uses i
        pass
    return h


@tooled
def _with_target(v):
    h = {}
    with contextlib.nullcontext(v) as h["cm"], contextlib.nullcontext(v + 1) as z:
        pass
    return h, z


async def _letters(text):
    for c in text:
        yield c


@tooled
async def _async_targets(text):
    h = {}
    async for h["last"] in _letters(text):
        pass
    async with contextlib.nullcontext(len(text)) as h["cm"]:
        pass
    return h


def test_async_for_and_with_item_targets_are_keyed():
    with probing("_async_targets > h[$k] as v").values() as got:
        assert asyncio.run(_async_targets("ab")) == {"last": "b", "cm": 2}
    assert got == kv(("last", "a"), ("last", "b"), ("cm", 2))


def kv(*pairs):
    return [{"k": k, "v": v} for k, v in pairs]


@pytest.mark.parametrize(
    "fn, args, selector, expected",
    [
        (_unpacked, (1, 2), "h[1] as h", [{"h": 2}]),
        (_unpacked, (1, 2), "h[$k] as v", kv((0, 1), (1, 2))),
        (_unpacked, (1, 2), "h", [{"h": {0: 1, 1: 2}}]),  # items are not values of h
        (_beside_a_name, ((1, 2),), "h[$k] as v", kv(("k", 1))),
        (_beside_a_name, ((1, 2),), "x", [{"x": 2}]),  # names report as before
        (_starred, ("abc",), "h[$k] as v", kv((0, "a"), (1, ["b", "c"]))),
        (_starred, ("abc",), "rest", [{"rest": ["b", "c"]}]),
        (_nested, (1, 2), "h[$k] as v", kv((0, 1), (1, 2), (2, 2), (3, 1))),
        (_nested, (1, 2), "y", [{"y": 1}]),
        (_chained, (5,), "h[$k] as v", kv((0, 5), (2, 6))),
        (_chained, (5,), "g[1] as g", [{"g": 5}]),
        (_chained, (5,), "x", [{"x": 6}]),
        (_key_after_name, (9,), "h[$k] as v", kv((7, 9))),
        (_annotated, (3,), "h[0] as h", [{"h": 3}]),
        (
            _loop_targets,
            ("ab",),
            "h[$k] as v",
            kv(("last", "a"), ("last", "b"), (0, "a"), (1, "b")),
        ),
        (_with_target, (4,), "h[$k] as v", kv(("cm", 4))),
        (_with_target, (4,), "z", [{"z": 5}]),
    ],
)
def test_item_targets_in_every_assignment_form_are_keyed(fn, args, selector, expected):
    plain = fn(*args)
    with probing(f"{fn.__name__} > {selector}").values() as got:
        assert fn(*args) == plain
    assert got == expected


@pytest.mark.parametrize(
    "fn, args, tweaks, expected",
    [
        (_unpacked, (1, 2), {"h[1] as h": 10}, {0: 1, 1: 10}),
        (_starred, ("abc",), {"h[$k] as h": 0}, ({0: 0, 1: 0}, ["b", "c"], "a")),
        (_chained, (5,), {"h[0] as h": 0}, ({0: 0, 2: 6}, {1: 5}, 6)),  # g[1] keeps 5
        (_chained, (5,), {"x": 0}, ({0: 5, 2: 6}, {1: 5}, 0)),
        # A name is reported after the statement, whatever else is probed: the key
        # was computed from the `i` Python stored.
        (_key_after_name, (9,), {"i": 1}, ({7: 9}, 1)),
        (_key_after_name, (9,), {"i": 1, "h[$k] as h": 0}, ({7: 0}, 1)),
        (_loop_targets, ("ab",), {"h[$k] as h": "z"}, {"last": "z", 0: "z", 1: "z"}),
    ],
)
def test_a_tweaked_item_target_stores_the_new_value(fn, args, tweaks, expected):
    with tweaking({f"{fn.__name__} > {sel}": value for sel, value in tweaks.items()}):
        assert fn(*args) == expected


@pytest.mark.parametrize(
    "selectors",
    [
        ["p_item_targets > h[$k] as v", "p_item_targets > g[$j] as w"],
        ["p_item_targets > h[$k] as v", "p_item_targets > $v"],
    ],
)
def test_item_targets_keep_the_programs_own_steps(selectors):
    # The program logs each key it computes and each item it reads and writes; the
    # log, the key count and the results are those of the plain program.
    with probing(*selectors).values() as got:
        result = programs.p_item_targets()
    assert ("ok", result) == EXPECTED["p_item_targets"]
    log, count = result[:2]
    assert count == 20 and len([e for e in log if e[0] == "key"]) == 20
    assert log[:4] == [("key", 0), ("h", "set", 0, 1), ("key", 1), ("h", "set", 1, 2)]
    stores = [(e[2], e[3]) for e in log if e[:2] == ("h", "set")]
    assert [(d["k"], d["v"]) for d in got if "k" in d] == stores
    if "g[$j] as w" in selectors[1]:
        stores = [(e[2], e[3]) for e in log if e[:2] == ("g", "set")]
        assert [(d["j"], d["w"]) for d in got if "j" in d] == stores


# Any shape of targets: generated programs, run plain and probed.

GENERATED = """
from tests.programs import Recording


def prog():
    log = []

    def key(k):
        log.append(("key", k))
        return k

    h, g, box = Recording(log, "h"), Recording(log, "g"), [Recording(log, "box")]
    x0 = x1 = x2 = None
    try:
        {statement}
    except (ValueError, TypeError) as err:  # unpacking too few; a key holding a list
        log.append(repr(err))
    return log, dict(h), dict(g), dict(box[0]), x0, x1, x2
"""

# A leaf target: a name, an item of h or g (keyed), an item of an item (not keyed).
# Keys read the names, so that a key sees the names stored before it.
LEAF = {
    "name": "x{i3}",
    "h": "h[key(({n}, x0))]",
    "g": "g[key(({n}, x1))]",
    "deep": "box[0][key(({n}, x2))]",
}


def target_shapes():
    leaf = st.sampled_from(sorted(LEAF))
    return st.recursive(
        leaf,
        lambda inner: st.tuples(
            st.lists(inner, min_size=1, max_size=3),
            st.sampled_from(["()", "[]"]),  # a tuple or a list target
            st.integers(-1, 2),  # the starred element (a leaf), if any
            st.integers(0, 2),  # how many more values the starred one takes
        ),
        max_leaves=6,
    )


def render(shape, counter: list, short: int, tuples: list) -> tuple[str, str]:
    """The target text of ``shape`` and a value it unpacks; the ``short``-th tuple
    (in reading order) gets one value too few."""
    if isinstance(shape, str):
        counter.append(0)
        n = len(counter)
        return LEAF[shape].format(n=n, i3=n % 3), str(n * 10)
    elts, brackets, star, extra = shape
    star = star if star < len(elts) and isinstance(elts[star], str) else -1
    tuples.append(None)
    mine = len(tuples) - 1
    texts, values = [], []
    for i, elt in enumerate(elts):
        text, value = render(elt, counter, short, tuples)
        if i == star:
            texts.append("*" + text)
            values += [str(len(counter) * 10 + j) for j in range(extra)]
        else:
            texts.append(text)
            values.append(value)
    if mine == short and star < 0:
        values = values[:-1]
    return (
        brackets[0] + ", ".join(texts) + ("," if len(texts) == 1 else "") + brackets[1],
        "(" + ", ".join(values) + ("," if len(values) == 1 else "") + ")",
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder, made = tmp_path_factory.mktemp("generated"), []

    def load(statement: str):
        made.append(statement)
        path = folder / f"_ptera_generated_{len(made)}.py"
        path.write_text(GENERATED.format(statement=statement))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.prog

    return load


@settings(max_examples=60, deadline=None)
@given(
    shape=target_shapes(),
    chained=st.lists(st.sampled_from(sorted(LEAF)), max_size=2),
    short=st.integers(-1, 3),
    at=st.integers(0, 2),
)
def test_any_target_shape_keeps_pythons_steps_and_reports_each_item(
    generated, shape, chained, short, at
):
    counter = []
    target, value = render(shape, counter, short, [])
    others = [render(leaf, counter, -1, [])[0] for leaf in chained]
    targets = others[:at] + [target] + others[at:]
    prog = generated(" = ".join(targets) + " = " + value)
    plain = outcome(prog)
    tooled(prog)
    env = {"prog": prog}
    with (
        probing("prog > h[$k] as v", env=env).values() as hs,
        probing("prog > g[$k] as v", env=env).values() as gs,
        probing("prog > $v", env=env),
    ):
        assert outcome(prog) == plain
    log = plain[1][0]
    for seen, tag in [(hs, "h"), (gs, "g")]:
        stores = [(e[2], e[3]) for e in log if e[:2] == (tag, "set")]
        assert [(d["k"], d["v"]) for d in seen] == stores


# ---------------------------------------------------------------------------
# `obj.attr = v`: a point named "obj.attr" (1.4's `Koala.moo > self.x`)


class Koala:
    @tooled
    def moo(self, x):
        # where the koala is
        self.x = x
        self.y: int = x * 2
        return self.x + self.y


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("Koala.moo > self.x", [{"self.x": 7}]),
        ("Koala.moo > self.y", [{"self.y": 14}]),
        ("Koala.moo(x, !self.y)", [{"x": 7, "self.y": 14}]),
        ("Koala.moo > self.x as where", [{"where": 7}]),
        ("Koala.moo > $v", [{"v": 7}]),  # `$v`: variables, not attributes
        ("Koala.moo > self.x:int", [{"self.x": 7}]),  # a type: the value's class
        ("Koala.moo > self.x:str", []),
    ],
)
def test_an_attribute_a_function_assigns_is_a_point(selector, expected):
    koala = Koala()
    with probing(selector).values() as got:
        koala.moo(7)
    got = [{k: v for k, v in d.items() if not isinstance(v, Koala)} for d in got]
    assert [d for d in got if d] == expected  # (less `self`, which `$v` also gives)


def test_an_attribute_store_can_be_replaced_and_the_object_gets_the_new_value():
    koala = Koala()
    with tweaking({"Koala.moo > self.x": 100}):
        assert koala.moo(7) == 114
    assert (koala.x, koala.y) == (100, 14)
    with probing("Koala.moo > self.y", overridable=True) as probe:
        probe.override(lambda d: -1)
        assert koala.moo(7) == 6
    assert koala.moo(7) == 21  # and idle again


def test_an_attribute_point_is_listed_and_a_missing_one_named():
    assert "__ptera__" in instrumented_source(Koala.moo, {"self.x"})
    with pytest.raises(SelectorError, match=r"no variable 'other\.z' \(it has: .*self\.x"):
        probing("Koala.moo > other.z")  # (`self.z`: see the next test)


def test_an_attribute_of_a_variable_the_function_never_assigns_warns_and_matches_nothing():
    from ptera import UnmatchedSelectorWarning

    koala = Koala()
    with pytest.warns(UnmatchedSelectorWarning, match=r"no variable 'x\.y' \(it has: .*self\.x"):
        with probing("Koala.moo > x.y").values() as got:
            koala.moo(1)
    assert got == []


class Panda:
    scale = 3

    @tooled
    def step(self, pair):
        self.h, (self.c, _) = pair  # unpacking
        self.a = self.b = pair[0]  # chained
        self.n += 1  # augmented
        for self.i in range(2):
            pass
        self.__secret = self.scale  # mangled: `self._Panda__secret`
        return self.h


@pytest.mark.parametrize(
    "selector, values",
    [
        ("Panda.step > self.h", [1]),
        ("Panda.step > self.c", [2]),
        ("Panda.step > self.a", [1]),
        ("Panda.step > self.b", [1]),
        ("Panda.step > self.n", [1]),
        ("Panda.step > self.i", [0, 1]),
        ("Panda.step > self.__secret", [3]),
        ("Panda.step > self.scale", [3]),  # an attribute it only reads: that point
    ],
)
def test_attribute_stores_in_every_assignment_form(selector, values):
    panda = Panda()
    panda.n = 0
    with probing(selector).values() as got:
        panda.step((1, (2, 9)))
    assert [v for d in got for v in d.values()] == values


def test_an_augmented_attribute_store_stores_the_override():
    panda = Panda()
    panda.n = 5
    with tweaking({"Panda.step > self.n": 100}):
        panda.step((1, (2, 9)))
    assert (panda.n, panda.h, panda.c, panda.b, panda.i) == (100, 1, 2, 1, 1)
    panda.step((1, (2, 9)))
    assert panda.n == 101  # idle, as Python


def test_a_missing_attribute_names_what_is_assigned_and_read():
    from ptera import UnmatchedSelectorWarning

    with pytest.warns(UnmatchedSelectorWarning) as caught:
        probing("Panda.step > self.q")
    text = str(caught[0].message)
    assert "the attributes it assigns: self.h, self.c, self.a, self.b, self.n, self.i" in text
    assert "the attributes of self it reads: scale" in text


# -- what a probed program stores is what it stores unprobed (review findings) ----------


class Cfg:
    def __init__(self, n):
        self.n = n


shared_cfg = Cfg(0)
shared_h: dict = {}


@ptera_fn
def bump():
    shared_cfg.n += 1
    return shared_cfg.n


@ptera_fn
def fill(v):
    shared_h[0] = v
    shared_h[1], x = v, v
    shared_h[2] += v
    return x


@pytest.mark.parametrize("selector", [None, "bump > shared_cfg.n"])
def test_an_augmented_store_goes_to_the_object_the_state_gives(selector):
    mine = Cfg(100)
    obj = bump.new(shared_cfg=mine)
    with probing(selector) if selector else contextlib.nullcontext():
        assert obj() == 101
    assert (shared_cfg.n, mine.n) == (0, 101)


@pytest.mark.parametrize("selector", [None, "fill > shared_h[$k] as w"])
def test_keyed_stores_go_to_the_container_the_state_gives(selector):
    mine = {2: 0}
    obj = fill.new(shared_h=mine)
    with probing(selector) if selector else contextlib.nullcontext():
        obj(1)
    assert shared_h == {} and mine == {0: 1, 1: 1, 2: 1}


class Swap:
    def __init__(self, n):
        self.n = n

    @tooled
    def take(self, other):
        self.n += (self := other).n  # `self` is read once, before the value
        return self


@pytest.mark.parametrize("selector", [None, "Swap.take > self.n"])
def test_an_augmented_store_reads_its_object_once_before_the_value(selector):
    a, b = Swap(0), Swap(10)
    with probing(selector) if selector else contextlib.nullcontext():
        a.take(b)
    assert (a.n, b.n) == (10, 10)


class Private:
    def __init__(self):
        self.__s = 7

    @tooled
    def m(self):
        __local = self.__s * 2
        self.__n = __local
        self._Private__z = 1
        return __local


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("Private.m > self.__s", [7]),  # a private read, as the source spells it
        ("Private.m > __s", [7]),
        ("Private.m > __local", [14]),  # a private local
        ("Private.m > self.__n", [14]),
        ("Private.m > self._Private__z", [1]),  # spelled mangled in the source
    ],
)
def test_private_names_are_points_as_the_source_spells_them(selector, expected):
    with probing(selector).values() as got:
        Private().m()
    assert [v for d in got for v in d.values()] == expected


class Outer:
    def make(self):
        @tooled
        def inner(o, v):
            o.__n = v  # mangled with `Outer`, probed or not
            y = v
            return y

        return inner


def test_a_function_nested_in_a_method_is_mangled_with_its_class_when_probed():
    inner = Outer().make()
    for selector in (None, "inner > y"):
        o = types.SimpleNamespace()
        with probing(selector) if selector else contextlib.nullcontext():
            inner(o, 2)
        assert vars(o) == {"_Outer__n": 2}


class Maker:
    @tooled
    def make(self, v):
        def setter(w):
            self.y = w  # the nested function's, not make's
            return self.y

        return setter


def test_attributes_a_nested_function_uses_are_not_the_methods():
    with pytest.raises(SelectorError, match="has no variable 'y'"):
        probing("Maker.make > y")


class Annotated:
    @tooled
    def m(self, v):
        self.x: tags.Thing = v
        self.f: float = v
        self.u = v
        return v


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("Annotated.m > self.x:Thing", [1]),  # an annotated store: its annotation
        ("Annotated.m > self.f:float", [1]),
        ("Annotated.m > self.u:int", [1]),  # none: each value's class
        ("Annotated.m > self.u:str", []),
    ],
)
def test_a_filter_on_an_attribute_store_reads_its_annotation_or_its_values(selector, expected):
    with probing(selector).values() as got:
        Annotated().m(1)
    assert [v for d in got for v in d.values()] == expected


@pytest.mark.parametrize(
    "selector, why",
    [
        ("Annotated.m > self.f:int", "is annotated float"),
        ("Annotated.m > self.u:tags.Thing", "has no annotation, and a tag filter reads"),
        ("Annotated.m > self.u:@Thing", "has no annotation, and a tag filter reads"),
    ],
)
def test_a_filter_an_attribute_store_never_passes_is_an_error(selector, why):
    with pytest.raises(SelectorError, match=why):
        probing(selector)


def _kwargs(**kw):
    return sorted(kw)


class Mangled:
    """Private names in every binding form: the probed method must do what it does."""

    @tooled
    def caught(self):
        try:
            raise ValueError("v")
        except ValueError as __e:
            return repr(__e)

    @tooled
    def nested_def(self):
        def __helper():
            return 5

        return __helper()

    @tooled
    def patterns(self, v):
        match v:
            case [__a, *__rest]:
                return (__a, __rest)
            case {"k": __b, **__kw}:
                return (__b, __kw)

    @tooled
    def imports(self):
        import os.path as __p
        from os import sep as __s

        return (__p.__name__, __s)

    @tooled
    def nonlocals(self):
        __c = 1

        def inc():
            nonlocal __c
            __c += 1

        inc()
        return __c

    @tooled
    def keywords(self):
        return _kwargs(__k=1)  # a keyword in a call is not mangled

    @tooled
    def nested_class(self):
        class Inner:
            __v = 3  # mangled with Inner

        return sorted(n for n in vars(Inner) if n.endswith("__v"))


@pytest.mark.parametrize(
    "method, args",
    [
        ("caught", ()),
        ("nested_def", ()),
        ("patterns", ([1, 2, 3],)),
        ("patterns", ({"k": 1, "z": 2},)),
        ("imports", ()),
        ("nonlocals", ()),
        ("keywords", ()),
        ("nested_class", ()),
    ],
)
def test_private_names_behave_as_unprobed(method, args):
    plain = getattr(Mangled(), method)(*args)
    with probing(f"Mangled.{method} > self"):
        assert getattr(Mangled(), method)(*args) == plain
