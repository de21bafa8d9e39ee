"""Drive the lab CLI (python -m lab) from tests, as an operator would."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODES = ["node1", "node2"]


def lab(*argv, timeout=1800, check=True):
    """Run ``python -m lab ARGV`` and return the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", "lab", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python -m lab {' '.join(argv)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def salt(target, *argv, timeout=300):
    """Run a salt command through the lab master and return its JSON result."""
    proc = lab(
        "salt", target, *argv, "--out=json", "--static", f"--timeout={timeout}",
        timeout=timeout + 60, check=False,
    )
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"salt {target} {' '.join(argv)}: no JSON (rc={proc.returncode})\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        ) from exc


def salt_run(*argv, timeout=300):
    proc = lab("salt-run", *argv, "--out=json", f"--timeout={timeout}", timeout=timeout + 60)
    return json.loads(proc.stdout)


