"""Drive the lab CLI (python -m lab) from tests, as an operator would."""

import json
import subprocess
import sys
from pathlib import Path

from lab.errors import LabError
from lab.master import json_documents, local_call, minion_returns

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
    """A salt command through the lab master: {minion: return}.

    Published from this process (lab.master.local_call: the CLI's parsing without its start-up,
    which cost ~0.8 s of each of the tier's hundreds of calls); the salt CLI for what that does
    not take (compound calls, options other than -L)."""
    try:
        returns = local_call(target, argv, timeout)
    except LabError as exc:
        raise AssertionError(str(exc)) from exc
    if returns is not None:
        return returns
    proc = lab(
        "salt", target, *argv, "--out=json", f"--timeout={timeout}",
        timeout=timeout + 60, check=False,
    )
    try:
        return minion_returns(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"salt {target} {' '.join(argv)}: no JSON (rc={proc.returncode})\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        ) from exc


def salt_run(*argv, timeout=300):
    proc = lab("salt-run", *argv, "--out=json", f"--timeout={timeout}", timeout=timeout + 60)
    return json.loads(proc.stdout)




def salt_run_docs(*argv, timeout=300):
    """(salt-run's exit status, every JSON document it printed): for runners that report progress."""
    proc = lab("salt-run", *argv, "--out=json", f"--timeout={timeout}", timeout=timeout + 120, check=False)
    try:
        return proc.returncode, json_documents(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"salt-run {' '.join(argv)}: not JSON (rc={proc.returncode})\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}") from exc


# Whether this session booted the cluster itself from wiped disks (not one found running).
SESSION = {"started_fresh": False}


def untouched_cluster(request):
    """True when the cluster is as the session booted it: started fresh by this session, and
    ``request``'s module holds the session's first test (nothing else has used it yet)."""
    items = request.session.items
    return SESSION["started_fresh"] and bool(items) and items[0].module is request.module
