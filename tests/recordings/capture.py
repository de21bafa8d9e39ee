"""Record the raw output of the exact commands the xencluster modules run.

Run it ON the host whose output you want (a lab dom0, or any machine with the
tools), with a Python that can import salt (the project venv, or the minion's):

    python tests/recordings/capture.py lvm tests/recordings/lvm/<name> [--extra=ARG ...]
    python tests/recordings/capture.py xl  tests/recordings/xl/<name>

It imports the argument lists from ``_modules/`` (so a recording always matches
what the module runs), writes each command's stdout byte for byte to
``<name>.out`` and a ``meta.json`` with the host, the UTC time, the tool version
and every argv exactly as run. ``--extra`` arguments are inserted right after
the command name (e.g. ``--extra=--devices=/dev/loop0`` to keep LVM away from
the host's own disks); they are recorded in meta.json too. See README.md.
"""

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "_modules" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _commands(tool):
    """({name: argv}, argv printing the tool version, which of its lines to keep)."""
    if tool == "lvm":
        mod = _module("xencluster_lvm")
        commands = {"pvs": mod.PVS_ARGV, "vgs": mod.VGS_ARGV, "lvs": mod.LVS_ARGV}
        return commands, ["lvm", "version"], ("LVM version", "Library version")
    mod = _module("xencluster_xl")
    commands = {"xl_list_l": mod.XL_LIST_LONG, "xl_list": mod.XL_LIST, "xl_info": mod.XL_INFO}
    return commands, ["xl", "info"], ("xen_version", "release")


def _run(argv):
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    return subprocess.run(argv, capture_output=True, check=False, env=env, close_fds=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["lvm", "xl"])
    parser.add_argument("outdir", type=pathlib.Path)
    parser.add_argument("--extra", action="append", default=[], help="argument inserted after the command name")
    parser.add_argument("--note", default="", help="free text stored in meta.json")
    args = parser.parse_args()

    commands, version_argv, version_keys = _commands(args.tool)
    version = _run(version_argv).stdout.decode(errors="replace").splitlines()
    args.outdir.mkdir(parents=True, exist_ok=True)
    meta = {
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": [line for line in version if line.strip().startswith(version_keys)],
        "note": args.note,
        "commands": {},
    }
    for name, argv in commands.items():
        argv = [argv[0], *args.extra, *argv[1:]]
        proc = _run(argv)
        if proc.returncode != 0:
            sys.exit(f"{argv} failed (rc {proc.returncode}): {proc.stderr.decode(errors='replace')}")
        (args.outdir / f"{name}.out").write_bytes(proc.stdout)
        meta["commands"][name] = {"argv": argv, "rc": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
    (args.outdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"recorded {', '.join(commands)} into {args.outdir}")


if __name__ == "__main__":
    main()
