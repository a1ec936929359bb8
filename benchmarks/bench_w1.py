"""W1: engine overhead on a 7-line function called 100,000 times (issue 4).

Runs the workload with this ptera and, side by side, with ptera 1.4.1 in its own
virtual environment (benchmarks/.venv-peer, created on first run when the package
registry is reachable; skipped otherwise). Prints medians as ratios to the plain
function of the same run, and fits the per-call and per-value engine costs.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = HERE / ".venv-peer"
REPEATS = int(os.environ.get("W1_REPEATS", "7"))


def peer_python() -> Path | None:
    python = PEER / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "ptera==1.4.1"],
                check=True,
                timeout=600,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"(ptera 1.4.1 peer unavailable: {exc})")
            return None
    return python


def run(python, cwd) -> dict:
    out = subprocess.run(
        [str(python), str(HERE / "w1_workload.py"), str(REPEATS)],
        check=True,
        capture_output=True,
        text=True,
        cwd=cwd,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def medians(results: dict) -> dict:
    return {name: statistics.median(times) for name, times in results.items()}


def main():
    ours = medians(run(sys.executable, HERE.parent))
    peer_py = peer_python()
    # The peer must not see our checkout on its path: run it from the benchmarks folder.
    peer = medians(run(peer_py, "/")) if peer_py else None
    base, pbase = ours["plain"], peer["plain"] if peer else None
    print(f"W1, median of {REPEATS} interleaved runs, ratios to plain in the same run")
    print(f"{'case':30} {'ptera (ours)':>14} {'ptera 1.4.1':>12}")
    for name in ours:
        if name.startswith("enter"):
            ptxt = f"{peer[name] / 100_000 * 1e6:10.1f}us" if peer else "-"
            print(f"{name:30} {ours[name] / 100_000 * 1e6:12.1f}us {ptxt:>12}")
            continue
        ptxt = f"{peer[name] / pbase:11.2f}x" if peer else "-"
        print(f"{name:30} {ours[name] / base:13.2f}x {ptxt:>12}")
    # Fit: time(b) = plain + enter + 1 * value; time(y) = plain + enter + 4 * value.
    per_value = (ours["probe on y (4 values/call)"] - ours["probe on b (1 value/call)"]) / 3
    per_call = ours["probe on b (1 value/call)"] - base - per_value
    print(f"engine cost per call entered: {per_call / 100_000 * 1e6:.2f}us (includes exit)")
    print(f"cost per value emitted (engine + giving push): {per_value / 100_000 * 1e6:.2f}us")
    print(f"plain call: {base / 100_000 * 1e6:.2f}us")


if __name__ == "__main__":
    main()
