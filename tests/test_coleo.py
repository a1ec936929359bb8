"""coleo 0.3.4, unmodified, runs on this ptera through the names it imports (core.md section 10)."""

import json

import coleo
import pytest
from coleo import ArgsExpander, catalogue, run_cli, setvars

import ptera
from tests.coleo_program import Commands, helper, main


def test_coleo_imports_only_our_public_names():
    needed = [
        "ABSENT",
        "BaseOverlay",
        "Immediate",
        "PteraNameError",
        "Tag",
        "TagSet",
        "is_tooled",
        "match_tag",
        "select",
        "tag",
        "tooled",
    ]
    for name in needed:
        assert name in ptera.__all__
    assert coleo.tooled is ptera.tooled and coleo.ABSENT is ptera.ABSENT


@pytest.mark.parametrize(
    "argv, expected",
    [
        ("--x 1", (1000, "you", 1.0, False)),
        ("-n 15 --name bob --x 2.5 --verbose", (15, "bob", 2.5, True)),
        ("--n 3 --x 0", (3, "you", 0.0, False)),
    ],
)
def test_options_types_flags_defaults_aliases(argv, expected):
    assert run_cli(main, argv=argv.split()) == expected


def test_missing_required_option_exits(capsys):
    with pytest.raises(SystemExit):
        run_cli(main, argv=[])
    assert "missing value for required argument: --x" in capsys.readouterr().err


def test_help_shows_comment_docs_and_metavar(capsys):
    with pytest.raises(SystemExit):
        run_cli(main, argv=["--help"])
    out = capsys.readouterr().out
    assert (
        "Number of iterations" in out and "NAME" in out and "Be chatty" in out and "-n NUM" in out
    )


def test_bad_type_exits_with_2():
    with pytest.raises(SystemExit) as info:
        run_cli(main, argv=["--n", "lots", "--x", "1"])
    assert info.value.code == 2


def test_setvars_and_catalogue():
    with setvars(n=3, x=1.0):
        assert main() == (3, "you", 1.0, False)
    names = {v for variables in catalogue([main]).values() for v in variables}
    assert {"n", "name", "x", "verbose"} <= names
    assert helper in catalogue([main])


def test_subcommands_from_classes_and_dicts():
    assert run_cli(Commands, argv=["one", "--a", "5"]) == ("one", 5)
    assert run_cli(Commands, argv=["two"]) == ("two", "x")
    assert run_cli({"go": main, "h": helper}, argv=["h", "--verbose"]) is True


def test_arguments_from_a_config_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"-n": 7, "--x": 2}))
    assert run_cli(main, argv=[f"@{path}"], expand="@") == (7, "you", 2.0, False)
    assert ArgsExpander("@").expand([f"@{path}"]) == ["-n", "7", "--x", "2"]
