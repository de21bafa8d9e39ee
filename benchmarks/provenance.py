"""What produced a benchmark result: the commit (and whether the tree was dirty) and the host."""

import os
import platform
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git() -> dict:
    def run(*argv):
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain"))}


def host() -> dict:
    return {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(), "name": socket.gethostname(),
            "python": platform.python_version()}
