"""Instrumentation preserves the semantics of every program, idle or probed."""

import inspect
import traceback

import pytest

from ptera import PteraNameError, SelectorError, probing, tooled
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
        (programs.p_slice_assign, [("xs", [1, 9, 4]), ("xs", [9])]),
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
    with probing("p_subscript_order > h") as probe:
        keys = probe.accum()
        log, h = programs.p_subscript_order()
    assert log == ["v", "h", "k"]
    assert h == {"key": 1, "a": 2}
    assert keys == [{"h": h}, {"h": 2}]


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
