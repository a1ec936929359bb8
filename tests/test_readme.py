"""Every Python example of the README runs as written, and so does every example script."""

import os
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


# Arguments an example runs with here: those of the README's quoted figures.
ARGS = {"perturb.py": ["--n-epochs", "4"]}
OUTPUTS: dict[str, str] = {}  # example -> its output, for the tests of quoted figures


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_scripts_run(example, tmp_path):
    # Examples write their outputs to a new temporary folder when given none: keep
    # those inside pytest's own (pruned) folders rather than /tmp.
    proc = subprocess.run(
        [sys.executable, str(example), *ARGS.get(example.name, [])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    OUTPUTS[example.name] = proc.stdout


def test_readme_quotes_the_perturbation_example_as_it_runs(tmp_path):
    out = OUTPUTS.get("perturb.py")
    if out is None:  # run alone (-k): the parametrized run above did not happen
        test_example_scripts_run(ROOT / "examples" / "perturb.py", tmp_path)
        out = OUTPUTS["perturb.py"]
    table = out[out.index("intervention.epsilon") :]
    distance = {float(e): float(d) for e, d in re.findall(r"^(0\.\d+)\s+([\d.]+)$", table, re.M)}
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(
        r"has grown\s+to ([\d.]+) from the control's weights, close to the ([\d.]+)", readme
    )
    assert quoted, "the README no longer quotes the perturbation figures"
    assert (float(quoted[1]), float(quoted[2])) == (
        round(distance[0.001], 1),
        round(distance[0.01], 1),
    )
