"""Free names (globals, builtins, closure variables a function reads but never
assigns) can be given values by states and overlays, as in the seed API."""

import pytest
from coleo import Option, default, run_cli

import ptera
from ptera import BaseOverlay, Immediate, probing, tag, tooled, tweaking


@ptera.defaults(debug=False)
def bagel(x, y):
    z: int
    if debug:  # noqa: F821 (never assigned: a free name)
        print(x, y, z)
    return x + y + z


def test_defaults_and_new_set_a_free_name(capsys):
    assert bagel.new(z=3)(1, 2) == 6
    assert capsys.readouterr().out == ""
    assert bagel.new(z=3, debug=True)(1, 2) == 6
    assert capsys.readouterr().out == "1 2 3\n"


def test_even_a_builtin_can_be_set(capsys):
    said = []
    bagel.new(z=3, debug=True, print=lambda *a: said.append(a))(1, 2)
    assert said == [(1, 2, 3)] and capsys.readouterr().out == ""


def test_state_attribute_sets_a_free_name_later(capsys):
    b = bagel.new(z=1)
    b(0, 0)
    b.state.debug = True
    b(0, 0)
    assert capsys.readouterr().out == "0 0 1\n"


def test_unknown_names_are_still_refused():
    with pytest.raises(TypeError, match="no settable variable 'nope'.*debug \\(free\\)"):
        bagel.new(nope=1)


SCALE = 2


@tooled
def scaled(n):
    before = SCALE
    _bump()
    return n * before, n * SCALE


def _bump():
    global SCALE
    SCALE += 1


@pytest.fixture
def scale():
    global SCALE
    SCALE = 2
    yield
    SCALE = 2


def test_an_unset_free_name_reads_the_global_live(scale):
    # Nothing sets SCALE: each read sees the global, even after it changed mid-call.
    assert scaled(1) == (2, 3)
    with probing("scaled > before").values():
        assert scaled(1) == (3, 4)


@pytest.mark.parametrize(
    "how",
    [
        lambda: tweaking({"scaled > SCALE": 10}),
        lambda: BaseOverlay(Immediate("scaled > SCALE", intercept=lambda caps: 10)),
    ],
)
def test_an_overlay_replaces_a_free_name_for_the_whole_call(scale, how):
    with how():
        assert scaled(1) == (10, 10)  # the global did change, but this call kept 10
    assert SCALE == 3 and scaled(1) == (3, 4)


def test_a_probe_reports_a_free_name_at_entry(scale):
    with probing("scaled(n) > SCALE").values() as got:
        scaled(5)
    assert got == [{"n": 5, "SCALE": 2}]


def test_wildcards_do_not_capture_free_names(scale):
    with probing("scaled > $v", raw=True).values() as got:
        scaled(1)
    names = {n for d in got for n in d["v"].names}
    assert names == {"n", "before"}  # not SCALE, _bump


def _make_adder():
    k = 5

    @tooled
    def adder(a):
        return a + k

    return adder


def test_a_closure_variable_is_settable():
    adder = _make_adder()
    with tweaking({"adder > k": 100}):
        assert adder(1) == 101
    assert adder(1) == 6
    assert adder.new(k=7)(1) == 8


@tooled
def _late():
    return NOT_YET  # noqa: F821 (defined only by some callers)


def test_an_undefined_global_is_a_name_error_only_when_read():
    with probing("_late > NOT_YET").values() as got:
        with pytest.raises(NameError, match="NOT_YET"):
            _late()
    assert got == []
    with tweaking({"_late > NOT_YET": "here"}):
        assert _late() == "here"


def test_coleo_passes_its_parser_and_options_as_free_names():
    @tooled
    def main():
        x: Option & int = default(1)
        return x, __argparser__.prog, sorted(vars(__options__))  # noqa: F821

    x, prog, options = run_cli(main, argv=["--x", "3"])
    assert (x, "x" in options) == (3, True) and isinstance(prog, str)


@pytest.mark.parametrize(
    "name, annotation",
    [("#enter", tag.enter), ("#exit", tag.exit), ("#receive", tag.enter), ("#yield", tag.exit)],
)
def test_ptera_info_lists_meta_variables(name, annotation):
    info = bagel.__ptera_info__[name]
    assert info["provenance"] == "meta" and info["annotation"] is annotation
    assert bagel.__ptera_info__["debug"]["provenance"] == "external"


def test_idle_code_is_untouched_when_no_state_sets_a_free_name(scale):
    # Same speed as before: nothing about SCALE is in the code that runs idle.
    assert not any(n.startswith("__ptera") for n in scaled.__code__.co_names)
    with probing("scaled > SCALE").values():
        assert {"__ptera__", "free"} <= set(scaled.__code__.co_names)
    assert not any(n.startswith("__ptera") for n in scaled.__code__.co_names)
