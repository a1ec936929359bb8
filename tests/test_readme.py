"""Every Python example of the README runs as written, and so does every example script."""

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
    assert len(readme_blocks()) >= 5


def test_readme_examples_run(tmp_path, capsys):
    # Blocks build on each other, like a session; a real file keeps source available.
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(readme_blocks()))
    runpy.run_path(str(script), run_name="__readme__")
    assert "f(2): y = 6" in capsys.readouterr().out


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_scripts_run(example):
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
