"""auto_cli: options found in the code, priorities, config files, environment, errors."""

import ast
import json
import math
import subprocess
import sys
import textwrap
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptera import ABSENT, ConflictError, auto_cli, cat, default, ptera, tag
from ptera.cli import CliError, find_options, split_config
from tests import cli_program
from tests.cli_program import main


def run(argv, environ=None, **kwargs):
    return auto_cli(main, argv=argv, environ=environ or {}, exit_on_error=False, **kwargs)


def test_options_are_found_through_calls_with_docs_and_sites():
    options = find_options(main)
    assert sorted(options) == ["T", "fixed", "forced", "loud", "n", "name", "rate"]
    n = options["n"]
    assert (n.type, n.default, n.doc, n.command("alias")) == (
        int,
        3,
        "Number of iterations",
        ["-n"],
    )
    assert options["T"].sites[0].function == "scale"
    assert options["name"].type is str and options["loud"].type is bool
    assert options["rate"].default is ABSENT
    assert options["fixed"].fixed.default == 7


@pytest.mark.parametrize(
    "argv, environ, config, expected",
    [
        ([], {}, None, (3, "hello world", 0.5)),
        (["-n", "5"], {}, None, (5, "hello world", 0.5)),
        ([], {}, {"n": 9}, (9, "hello world", 0.5)),
        ([], {"PTERA_N": "8"}, {"n": 9}, (8, "hello world", 0.5)),  # env beats config
        (["--n", "4"], {"PTERA_N": "8"}, {"n": 9}, (4, "hello world", 0.5)),  # cli beats env
        (["--loud", "--name", "you"], {}, None, (3, "hello you!", 0.5)),
        (["--no-loud"], {"PTERA_LOUD": "yes"}, None, (3, "hello world", 0.5)),
    ],
)
def test_priority_default_config_env_cli(tmp_path, argv, environ, config, expected):
    extra = []
    if config is not None:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(config))
        extra = ["--config", str(path)]
    result = run(["--rate", "0.5", *extra, *argv], environ)
    assert result[:3] == expected


@pytest.mark.parametrize(
    "name, text",
    [
        ("c.json", '{"n": 6, "rate": 1.5}'),
        ("c.toml", "n = 6\nrate = 1.5\n"),
    ],
)
def test_config_formats(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert run(["--config", str(path)])[:3] == (6, "hello world", 1.5)


def test_yaml_without_parser_says_so(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n: 2\n")
    try:
        import yaml  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(CliError, match="YAML needs PyYAML"):
            run(["--config", str(path)])
    else:
        assert run(["--config", str(path), "--rate", "1"])[0] == 2


def test_per_context_values_apply_as_tweaks(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('rate = 1.0\nT = 2.0\n["scale[2]"]\nT = 10.0\n')
    assert run(["--config", str(path)])[5] == 20.0  # 1 * 2 (first) * 10 (second)
    path.write_text('rate = 1.0\n"chain > scale[1] > T" = 3.0\n')
    assert run(["--config", str(path)])[5] == 3.0


def test_fixed_values_conflict_naming_option_and_line():
    with pytest.raises(
        ConflictError, match=r"--fixed is fixed in the code at .*cli_program.py:\d+ \(main\)"
    ):
        run(["--rate", "1", "--fixed", "8"])
    with pytest.raises(ConflictError, match="--forced is fixed"):
        run(["--rate", "1", "--forced", "3"])
    assert run(["--rate", "1", "--fixed", "7"])[3] == 7  # the same value is no conflict


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        (["--bogus", "1"], {}, "unrecognized arguments: --bogus 1"),
        (["--n", "many"], {}, "argument --n/-n: expected int, got 'many'"),
        ([], {"PTERA_N": "x"}, "environment variable PTERA_N: --n expects int, got 'x'"),
        ([], {"PTERA_NOPE": "1"}, "environment variable PTERA_NOPE: no such option"),
        (["--config", "/no/such.json"], {}, "config /no/such.json: no such file"),
        (["--config", "c.ini"], {}, "unknown format '.ini'"),
        ([], {}, "missing value for required option --rate"),
    ],
)
def test_bad_input_is_a_clear_error(argv, environ, message):
    with pytest.raises(CliError) as info:
        run(argv, environ)
    assert message in str(info.value)


def test_bad_config_contents(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CliError, match="not valid JSON"):
        run(["--config", str(bad)])
    bad.write_text('{"n": "three"}')
    with pytest.raises(CliError, match="config .*: --n expects int, got 'three'"):
        run(["--config", str(bad)])
    bad.write_text('{"nn": 1}')
    with pytest.raises(CliError, match="unknown option 'nn'"):
        run(["--config", str(bad)])


def test_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as info:
        auto_cli(main, argv=["--n", "x"], environ={})
    assert info.value.code == 2
    assert "error: argument --n/-n: expected int" in capsys.readouterr().err


def test_help_lists_type_default_doc_and_site(capsys):
    with pytest.raises(SystemExit) as info:
        auto_cli(main, argv=["--help"], environ={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in [
        "Compute something configurable.",
        "--n, -n",
        "Number of iterations",
        "required",
        "--loud, --no-loud",
        "7 (fixed)",
        "cli_program.py:",
        "(scale)",
        "PTERA_<NAME>",
    ]:
        assert text in out, text


def test_dump_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(["--n", "5", "--rate", "0.25", "--dump-config"])
    dumped = capsys.readouterr().out
    path = tmp_path / "dumped.toml"
    path.write_text(dumped)
    assert run(["--config", str(path)])[:3] == (5, "hello world", 0.25)
    with pytest.raises(SystemExit):
        run(["--dump-config", "json"])
    assert json.loads(capsys.readouterr().out)["name"] == "world"


SEED = """
from ptera import auto_cli, default, ptera, tag


@ptera
def main():
    # Number of iterations
    n: tag.CliArgument = default(1000)
    for i in range(n):
        pass
    return n


if __name__ == "__main__":
    print(auto_cli(main))
"""


def test_seed_example_in_a_subprocess(tmp_path):
    script = tmp_path / "seed_cli.py"
    script.write_text(textwrap.dedent(SEED))
    proc = subprocess.run(
        [sys.executable, str(script), "--n", "15"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "15"), proc.stderr
    proc = subprocess.run([sys.executable, str(script), "--n", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "expected int" in proc.stderr
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Number of iterations" in proc.stdout


PYTHON_TAGS = [
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:collections.OrderedDict {}",
    "!!python/object/apply:os.mkdir [{marker}]",
    "!!python/object/new:os.mkdir [{marker}]",
]


@pytest.mark.parametrize("ext", ["yaml", "yml"])
@pytest.mark.parametrize("tag_text", PYTHON_TAGS)
@pytest.mark.parametrize(
    "layout",
    [
        "n: {value}\n",  # top level
        'rate: 1.0\n"scale[1]":\n  T: {value}\n',  # per-context table
        'rate: 1.0\n"chain > scale > T": {value}\n',  # selector key
    ],
)
def test_yaml_python_tags_are_refused_never_evaluated(tmp_path, ext, tag_text, layout):
    pytest.importorskip("yaml")
    marker = tmp_path / "created-by-yaml"
    value = tag_text.replace("{marker}", json.dumps(str(marker)))
    path = tmp_path / f"c.{ext}"
    path.write_text(layout.replace("{value}", value))
    with pytest.raises(CliError, match=r"config .*never evaluated") as info:
        run(["--config", str(path)])
    assert "could not determine a constructor for the tag" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ('"scale[2]" = { T = "10" }', 20.0),  # a table: "10" -> 10.0 like a top-level T
        ('"chain > scale[2] > T" = "10"', 20.0),  # a selector key
        ('["chain > scale[2]"]\nT = "10"', 20.0),  # a table named by a selector
        ('[chain."scale[2]"]\nT = "10"', 20.0),  # nested tables: chain > scale[2]
        ('[chain]\n"scale[2]" = { T = 10.0 }', 20.0),
    ],
)
def test_per_context_values_are_converted_like_top_level_ones(tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(f"rate = 1.0\nT = 2.0\n{text}\n")
    value = run(["--config", str(path)])[5]
    assert value == expected and type(value) is float


@pytest.mark.parametrize(
    "text, message",
    [
        ('"scale[2]" = { T = "big" }', "'scale[2] > T': --T expects float, got 'big'"),
        ('"chain > scale > T" = [1]', "'chain > scale > T': --T expects float, got [1]"),
        ('"main > loud" = "maybe"', "'main > loud': --loud expects bool, got 'maybe'"),
    ],
)
def test_per_context_values_of_the_wrong_type_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(f"rate = 1.0\n{text}\n")
    with pytest.raises(CliError) as info:
        run(["--config", str(path)])
    assert f"config {path}: {message}" in str(info.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("main > n", "5", 5),  # main declares the option n: converted
        ("label > n", "5", "5"),  # in label, n is a plain local: left as written
        ("label > n", "other", "other"),  # ...and not checked against main's int
        ("label > n", 7, 7),
    ],
)
def test_per_context_values_are_converted_only_at_the_options_sites(key, value, expected):
    options = find_options(main)
    _, tweaks = split_config({key: value}, options, "c.toml", vars(cli_program))
    assert tweaks == {key: expected} and type(tweaks[key]) is type(expected)


def test_per_context_bool_strings_become_bools(tmp_path):
    path = tmp_path / "c.yaml"
    pytest.importorskip("yaml")
    path.write_text('rate: 1.0\nmain:\n  loud: "false"\n  n: "2"\n')
    assert run(["--config", str(path)])[:2] == (2, "hello world")


@pytest.mark.parametrize(
    "text, caret_line",
    [
        ('"scale > > T" = 2.0', "          ^"),  # malformed
        ('"scale(" = { T = 2.0 }', "         ^"),  # malformed table key
        ('"nosuch > T" = 2.0', "  ^"),  # no such function
    ],
)
def test_bad_selector_in_a_config_is_a_config_error(tmp_path, capsys, text, caret_line):
    path = tmp_path / "c.toml"
    path.write_text(f"rate = 1.0\n{text}\n")
    with pytest.raises(SystemExit) as info:
        auto_cli(main, argv=["--config", str(path)], environ={})
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(f"error: config {path}: ") and "Traceback" not in err
    assert caret_line in err.splitlines()


@pytest.mark.parametrize(
    "entry, kwargs, message",
    [
        (123, {}, "auto_cli needs the program's function, not int"),
        (main, {"argv": "--rate 1"}, "argv is a list of strings .*, not '--rate 1'"),
        (main, {"tag": 123}, r"tag is a Tag \(tag.HyperParameter\) or a tuple of Tags, not 123"),
        (main, {"environ": 3}, r"environ is a mapping \(like os.environ\), not 3"),
        (main, {"argv": ["--rate", 1]}, r"argv holds strings \(like sys.argv\[1:\]\), not 1"),
        (main, {"env_prefix": 3}, r"env_prefix is a string \(like 'PTERA_'\), not 3"),
    ],
)
def test_wrong_argument_types_are_type_errors(entry, kwargs, message):
    with pytest.raises(TypeError, match=message):
        auto_cli(entry, **{"argv": [], "environ": {"PTERA_N": "1"}, **kwargs})


# -- one option declared with different defaults ----------------------------------


def run_dup(argv):
    from tests.cli_dup_program import model

    return auto_cli(model, argv=argv, environ={}, exit_on_error=False)


def test_help_lists_each_declarations_default(capsys):
    with pytest.raises(SystemExit):
        run_dup(["--help"])
    out = capsys.readouterr().out
    assert "0.1 (enc)" in out and "0.2 (dec)" in out
    assert "4 (model)" not in out  # width: same default everywhere, shown once


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], (0.1, 4.2, 2, 4)),  # each function keeps its own lr
        (["--lr", "0.5"], (0.5, 4.5, 2, 4)),
        (["--width", "1", "--depth", "3"], (0.1, 1.2, 3, 1)),
    ],
)
@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_every_dump_reproduces_its_run(tmp_path, capsys, argv, expected, fmt):
    assert run_dup(argv) == expected
    with pytest.raises(SystemExit):
        run_dup([*argv, "--dump-config", fmt])
    path = tmp_path / f"dumped.{fmt}"
    path.write_text(capsys.readouterr().out)
    assert run_dup(["--config", str(path)]) == expected
    # A dump of the dumped run is the same dump.
    with pytest.raises(SystemExit):
        run_dup(["--config", str(path), "--dump-config", fmt])
    assert capsys.readouterr().out == path.read_text()


# -- defaults that are expressions ---------------------------------------------------

BASE_EPOCHS = 3


class Settings:
    width = 8


def relu(x):
    return max(x, 0)


def tanh_ish(x):
    return x / 2


def make_size():
    return 4


@ptera
def exprs():
    # number of epochs
    epochs: tag.HyperParameter = default(BASE_EPOCHS)
    # learning rate
    lr: tag.HyperParameter = default(1e-3 * 2)
    scale: tag.HyperParameter = default(math.pi)
    width: tag.HyperParameter = default(Settings.width - 1)
    label: tag.HyperParameter = default("run-" + "a")
    sizes: tag.HyperParameter = default((BASE_EPOCHS, 2))
    # activation function
    actfn: tag.HyperParameter = default(relu)
    size: tag.HyperParameter = default(make_size())  # a call: not evaluated ahead
    return epochs, lr, scale, width, label, sizes, actfn(-1.0), size


def run_exprs(argv, environ=None, **kwargs):
    return auto_cli(exprs, argv=argv, environ=environ or {}, exit_on_error=False, **kwargs)


@pytest.mark.parametrize(
    "name, typ, default",
    [
        ("epochs", int, 3),
        ("lr", float, 0.002),
        ("scale", float, math.pi),
        ("width", int, 7),
        ("label", str, "run-a"),
        ("sizes", tuple, (3, 2)),
        ("actfn", types.FunctionType, relu),
        ("size", None, "make_size()"),
    ],
)
def test_an_expression_default_is_evaluated_for_its_type(name, typ, default):
    option = find_options(exprs)[name]
    assert (option.type, option.default) == (typ, default)


DEFAULTS = (3, 0.002, math.pi, 7, "run-a", (3, 2), 0, 4)


@pytest.mark.parametrize(
    "argv, environ, changed",
    [
        ([], {}, {}),
        (["--epochs", "5"], {}, {0: 5}),
        ([], {"PTERA_EPOCHS": "5"}, {0: 5}),
        (["--lr", "0.5", "--scale", "2"], {}, {1: 0.5, 2: 2.0}),
        (["--width", "2", "--label", "b"], {}, {3: 2, 4: "b"}),
        (["--sizes", "(1, 2, 3)"], {}, {5: (1, 2, 3)}),
        (["--sizes", "[4]"], {}, {5: (4,)}),  # a list, like a config's, becomes a tuple
        (["--actfn", ":tanh_ish"], {}, {6: -0.5}),
        (["--actfn", ":math.fabs"], {}, {6: 1.0}),
        ([], {"PTERA_ACTFN": ":tanh_ish"}, {6: -0.5}),
        (["--epochs", ":BASE_EPOCHS", "--width", ":Settings.width"], {}, {0: 3, 3: 8}),
        (["--size", ":BASE_EPOCHS"], {}, {7: 3}),  # a named object needs no known type
    ],
)
def test_expression_defaults_take_values_of_their_type(argv, environ, changed):
    expected = tuple(changed.get(i, v) for i, v in enumerate(DEFAULTS))
    result = run_exprs(argv, environ)
    assert result == expected
    assert [type(v) for v in result] == [type(v) for v in expected]


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        (["--epochs", "x"], {}, "argument --epochs: expected int, got 'x'"),
        (["--sizes", "(1, 2"], {}, "argument --sizes: expects a tuple written as in Python"),
        (["--sizes", "{1: 2}"], {}, "argument --sizes: expected tuple, got {1: 2} (dict)"),
        (["--actfn", "tanh_ish"], {}, "takes an object named as `:name` or `:module.attr`"),
        (["--actfn", ":nope"], {}, "no name 'nope' in the module where the option is declared"),
        (["--actfn", ":math.nope"], {}, "math has no attribute 'nope'"),
        (["--actfn", ":math.__loader__"], {}, "':math.__loader__' is not a name"),
        (["--actfn", ":relu(1)"], {}, "is looked up, never evaluated"),
        (["--actfn", ":math:cos(0)"], {}, "':math:cos(0)' is not a name"),
        (["--epochs", ":relu"], {}, "argument --epochs: expects int, but :relu is <function relu"),
        (["--size", "5"], {}, "its default `make_size()` (at "),
        ([], {"PTERA_SIZE": "5"}, "environment variable PTERA_SIZE: --size cannot be set"),
        ([], {"PTERA_ACTFN": "x"}, "environment variable PTERA_ACTFN: --actfn takes an object"),
    ],
)
def test_bad_values_for_expression_defaults_are_clear_errors(argv, environ, message):
    with pytest.raises(CliError) as info:
        run_exprs(argv, environ)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text, changed",
    [
        ("epochs = 5", {0: 5}),
        ('epochs = "5"', {0: 5}),
        ("lr = 1", {1: 1.0}),
        ("sizes = [1, 2]", {5: (1, 2)}),  # TOML has no tuples: a list becomes one
        ('actfn = ":tanh_ish"', {6: -0.5}),
    ],
)
def test_config_values_for_expression_defaults(tmp_path, text, changed):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    expected = tuple(changed.get(i, v) for i, v in enumerate(DEFAULTS))
    assert run_exprs(["--config", str(path)]) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--epochs", "5", "--lr", "0.5"],
        ["--actfn", ":tanh_ish", "--sizes", "(1,)"],
        ["--actfn", ":math.fabs", "--label", "z"],
    ],
)
@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_dumps_of_expression_defaults_reproduce_the_run(tmp_path, capsys, argv, fmt):
    expected = run_exprs(argv)
    with pytest.raises(SystemExit):
        run_exprs([*argv, "--dump-config", fmt])
    dumped = capsys.readouterr().out
    assert "size" not in dumped.replace("sizes", "")  # unknown until the run: left out
    path = tmp_path / f"dumped.{fmt}"
    path.write_text(dumped)
    assert run_exprs(["--config", str(path)]) == expected


def test_help_shows_expression_defaults_with_their_types(capsys):
    with pytest.raises(SystemExit):
        run_exprs(["--help"])
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│ --" in line}
    for flag, parts in {
        "--epochs": ["int", " 3 "],
        "--lr": ["float", "0.002"],
        "--actfn": ["object (:name)", " relu "],
        "--size": ["unknown", "make_size()"],
    }.items():
        for part in parts:
            assert part in rows[flag], (flag, part)


def test_eval_env_is_searched_first_for_names():
    assert run_exprs(["--actfn", ":act"], eval_env={"act": abs})[6] == 1.0
    assert run_exprs(["--actfn", ":relu"], eval_env={"relu": abs})[6] == 1.0
    with pytest.raises(CliError, match="no name 'gone' in eval_env or the module"):
        run_exprs(["--actfn", ":gone"], eval_env={})


# -- older ptera's spellings ----------------------------------------------------------


@ptera
def lager(x, y):
    z: cat.Argument
    return x + y + z


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: auto_cli(lager, ("a", "b"), category=cat.Argument, argv=["--z=c"]), "abc"),
        (lambda: auto_cli(lager, category=cat.Argument, args=("a", "b"), argv=["--z=c"]), "abc"),
        (lambda: auto_cli(lager, cat.Argument, ["--z=c"], args=("a", "b")), "abc"),
        (
            lambda: auto_cli(lager, (), category=cat.Argument, argv=["--z=c"], args=("a", "b")),
            "abc",
        ),
    ],
)
def test_seed_era_calls(call, expected):
    assert call() == expected


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((("a", "b"),), {}, r"not \('a', 'b'\); to call the entry with arguments, write args="),
        ((("a", "b"),), {"category": cat.Argument, "args": ("c",)}, "give them once, as args="),
        ((cat.Argument,), {"category": cat.Argument}, "got both tag .* and category"),
        ((), {"eval_env": 3}, r"eval_env is a mapping of names \(like globals\(\)\), not 3"),
        ((), {"args": "ab"}, "args is a tuple of the entry's arguments, not 'ab'"),
        ((), {"evalenv": {}}, "unexpected arguments: evalenv"),
    ],
)
def test_seed_era_mistakes_are_type_errors(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        auto_cli(lager, *args, argv=["--z=c"], **kwargs)


# -- an option the body assigns again --------------------------------------------------


@ptera
def doubled():
    x: tag.HyperParameter = default(3)
    x = x * 2
    return x


@ptera
def grown():
    x: tag.HyperParameter = default(3)
    for _ in range(2):
        x += 1
    return x


@ptera
def branches(flag=False):
    if flag:
        x: tag.HyperParameter = default(3)
    else:
        x = default(4)
    squares = [x * x for x in range(2)]  # a scope of its own
    return x, squares


@ptera
def unpacked():
    x: tag.HyperParameter = default(3)
    x, y = x + 1, 0
    return x + y


@pytest.mark.parametrize(
    "entry, argv, expected",
    [
        (doubled, [], 6),
        (doubled, ["--x", "5"], "doubled assigns x again at line "),
        (grown, [], 5),
        (grown, ["--x", "5"], "grown assigns x again at line "),
        (unpacked, ["--x", "5"], "unpacked assigns x again at line "),
        (branches, [], (4, [0, 1])),
        (branches, ["--x", "5"], (5, [0, 1])),  # every default(...) declares it
    ],
)
def test_an_option_assigned_again_cannot_be_set(entry, argv, expected):
    # The given value would replace `x = x * 2` too (10 expected, 5 given): refused.
    if isinstance(expected, str):
        with pytest.raises(CliError, match="the value given would replace those assignments"):
            auto_cli(entry, argv=argv, environ={}, exit_on_error=False)
        with pytest.raises(CliError, match=expected):
            auto_cli(entry, argv=argv, environ={}, exit_on_error=False)
    else:
        assert auto_cli(entry, argv=argv, environ={}, exit_on_error=False) == expected


def _arithmetic():
    leaves = st.one_of(
        st.integers(-50, 50).map(str),
        st.floats(-10, 10, allow_nan=False).map(repr),
        st.sampled_from(["BASE_EPOCHS", "Settings.width", "math.pi"]),
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            )
            | inner.map(lambda e: f"-{e}")
        ),
        max_leaves=6,
    )


@settings(max_examples=150, deadline=None)
@given(_arithmetic())
def test_an_arithmetic_default_is_what_python_computes(text):
    from ptera.cli import _Expr, _static_value

    try:
        expected = eval(text, globals())
    except ZeroDivisionError:
        expected = None
    value = _static_value(ast.parse(text, mode="eval").body, exprs)
    if expected is None:
        assert isinstance(value, _Expr) and value == ast.unparse(ast.parse(text, mode="eval"))
    else:
        assert type(value) is type(expected) and (value == expected or value != value)


@pytest.mark.parametrize(
    "text",
    [
        "make_size()",  # a call is never made
        "relu.__globals__",  # no dunders
        "Settings().width",
        "nothing_here + 1",
        "2 ** 1000",  # a huge power is not computed ahead
        "'a' * 3",
    ],
)
def test_defaults_that_are_not_evaluated_ahead(text):
    from ptera.cli import _Expr, _static_value

    value = _static_value(ast.parse(text, mode="eval").body, exprs)
    assert isinstance(value, _Expr) and value == text
