"""Helpers for the integration tier (a plain module: conftest.py is not importable)."""

import json
import os
import pathlib
import subprocess

import salt.utils.path

ROOT = pathlib.Path(__file__).resolve().parents[2]
TREES = ("_modules", "_states", "_runners")
# what the editable install of saltext-xencluster put into site-packages
OUR_DIST = ("saltext_xencluster", "__editable__.saltext_xencluster", "__editable___saltext_xencluster")


def lvm_available():
    return salt.utils.path.which("lvm") is not None


def is_dom0():
    try:
        return "control_d" in pathlib.Path("/proc/xen/capabilities").read_text()
    except OSError:
        return False


def xl_available():
    return salt.utils.path.which("xl") is not None and is_dom0()


def entry_point_names(python, cwd):
    """Names of the salt.loader entry points the given Python sees."""
    out = subprocess.run(
        [python, "-c", "import json, importlib.metadata as m; "
         "print(json.dumps([e.name for e in m.entry_points(group='salt.loader')]))"],
        check=True, capture_output=True, text=True, cwd=cwd,
    ).stdout  # fmt: skip
    return json.loads(out)


def salt_call(python, conf, *args, cwd, env=None):
    """Run ``salt-call --local`` with the given Python; returns (rc, parsed json or None, stderr)."""
    argv = [
        str(python), "-c", "import sys; from salt.scripts import salt_call; sys.argv[0] = 'salt-call'; salt_call()",
        "--local", "-c", str(conf), "--out=json", "--log-level=quiet", *args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning", **(env or {}))
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False)
    try:
        data = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError):
        data = None
    return proc.returncode, data, proc.stderr

# The runner tests' master (conftest.py model_master): the lab model with these minion ids.
MODEL_DOM0 = "xc-rdom0-1"  # node1 of the model: a running minion, extension synced, no Xen
MODEL_GHOST = "xc-rdom0-2"  # node2 of the model: no key on the master, never answers
