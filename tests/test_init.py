"""The public API: what `import ptera` gives, and what it does not import."""

import subprocess
import sys

import ptera


def test_public_names_exist_and_are_documented():
    for name in ptera.__all__:
        obj = getattr(ptera, name)
        if callable(obj) and not isinstance(obj, type(ptera.ABSENT)):
            assert obj.__doc__, f"{name} has no docstring"


def test_version_is_in_the_series_coleo_accepts():
    assert ptera.__version__ == "1.4.2"


def test_ptera_is_tooled():
    assert ptera.ptera is ptera.tooled


def test_import_ptera_does_not_import_torch():
    code = "import sys, ptera; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
