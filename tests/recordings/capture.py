"""Record the raw output of the exact commands the xencluster modules run.

Run it ON the host whose output you want (a lab dom0, or any machine with the
tools), with a Python that can import salt (the project venv, or the minion's):

    python tests/recordings/capture.py lvm tests/recordings/lvm/<name> [--extra=ARG ...] [--select=VG[/LV] ...]
    python tests/recordings/capture.py xl  tests/recordings/xl/<name> [--domain=NAME ...]
    python tests/recordings/capture.py lio tests/recordings/lio/<name>
    python tests/recordings/capture.py iscsi tests/recordings/iscsi/<name> [--portal=IP]
    python tests/recordings/capture.py md  tests/recordings/md/<name> --md=/dev/md0 [--leg=/dev/X ...]

It imports the argument lists from ``_modules/`` (so a recording always matches
what the module runs), writes each command's stdout byte for byte to
``<name>.out`` and a ``meta.json`` with the host, the UTC time, the tool version
and every argv exactly as run. ``--extra`` arguments are inserted right after
the command name (e.g. ``--extra=--devices=/dev/loop0`` to keep LVM away from
the host's own disks); they are recorded in meta.json too. See README.md.

``lvm`` records ``PVS_ARGV``, ``VGS_ARGV`` and ``LVS_ARGV`` of
``xencluster_lvm`` (whatever fields it lists today), and with ``--select`` also
``LVS_ARGV`` narrowed to one VG or one VG/LV, the way ``lv_remove``,
``snapshot_*`` and ``lv_tags`` run it, as ``lvs.<VG>[+<LV>].out``; a
selection that fails (a missing VG or LV) is recorded with its rc and stderr
in meta.json, not fatal.

``xl`` records ``xl list -l``, ``xl list`` and ``xl info``; with ``--domain``
also what ``xencluster_xl.block_list`` runs for that guest: ``xl list -l NAME``
and ``xl block-list NAME`` (``xl_list_l.NAME.out``, ``xl_block_list.NAME.out``).

``lio`` records ``rtslib_fb.RTSRoot().dump()`` (the one read
``xencluster_lio.exports`` makes) as ``dump.json``, with every CHAP value
replaced by ``REDACTED``. ``iscsi`` records ``iscsiadm -m session``
(``session.out``; rc 21 "No active sessions" is kept as a valid answer), the
sysfs files ``xencluster_iscsi.sessions`` reads (``sysfs.json``), the node
record of each session as ``login`` and ``set_replacement_timeout`` read it
(``iscsiadm -m node -T T -p P -o show``: ``node.<sid>.out``; iscsiadm masks
CHAP secrets there), and with ``--portal`` a SendTargets discovery
(``discovery.out``).
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


def _commands(tool, domains=()):
    """({name: argv}, argv printing the tool version, which of its lines to keep)."""
    if tool == "lvm":
        # The argv lists are the module's own, so a capture always records the
        # current LVS_FIELDS (origin, data_percent, lv_tags, lv_device_open, ...).
        mod = _module("xencluster_lvm")
        commands = {"pvs": mod.PVS_ARGV, "vgs": mod.VGS_ARGV, "lvs": mod.LVS_ARGV}
        return commands, ["lvm", "version"], ("LVM version", "Library version")
    mod = _module("xencluster_xl")
    commands = {"xl_list_l": mod.XL_LIST_LONG, "xl_list": mod.XL_LIST, "xl_info": mod.XL_INFO}
    for name in domains:
        commands[f"xl_list_l.{name}"] = [*mod.XL_LIST_LONG, name]
        commands[f"xl_block_list.{name}"] = [*mod.XL_BLOCK_LIST, name]
    return commands, ["xl", "info"], ("xen_version", "release")


def _run(argv):
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    return subprocess.run(argv, capture_output=True, check=False, env=env, close_fds=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["lvm", "xl", "md", "lio", "iscsi"])
    parser.add_argument("outdir", type=pathlib.Path)
    parser.add_argument("--extra", action="append", default=[], help="argument inserted after the command name")
    parser.add_argument("--note", default="", help="free text stored in meta.json")
    parser.add_argument("--md", action="append", default=[], help="md: an array to --detail --export")
    parser.add_argument("--leg", action="append", default=[], help="md: a device to --examine --export")
    parser.add_argument("--domain", action="append", default=[], help="xl: also record block_list's commands")
    parser.add_argument("--portal", default=None, help="iscsi: also record a discovery on this portal")
    parser.add_argument(
        "--select", action="append", default=[], help="lvm: also record LVS_ARGV narrowed to VG or VG/LV"
    )
    args = parser.parse_args()
    if args.tool == "md":
        return _capture_md(args)
    if args.tool == "lio":
        return _capture_lio(args)
    if args.tool == "iscsi":
        return _capture_iscsi(args)

    commands, version_argv, version_keys = _commands(args.tool, args.domain)
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
    if args.tool == "lvm":
        _capture_lvm_selections(args, commands["lvs"], meta)
    (args.outdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"recorded {', '.join(meta['commands'])} into {args.outdir}")


def _capture_lvm_selections(args, lvs_argv, meta):
    """lvs.<VG>[+<LV>].out: LVS_ARGV plus one VG or VG/LV; a failure is kept (rc, stderr), not fatal."""
    for select in args.select:
        if not select or select.startswith("-") or select.count("/") > 1 or "+" in select:
            sys.exit(f"--select takes VG or VG/LV, not {select!r}")
        name = "lvs." + select.replace("/", "+")
        argv = [lvs_argv[0], *args.extra, *lvs_argv[1:], select]
        proc = _run(argv)
        (args.outdir / f"{name}.out").write_bytes(proc.stdout)
        meta["commands"][name] = {"argv": argv, "rc": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}


# --- md (xencluster_md): /proc/mdstat plus mdadm --export per array and per leg --


def _capture_md(args):
    """mdstat.out (the file), detail_export.<mdN>.out, examine_export.<leg>.out, detail_scan_export.out.

    A failing command is recorded (rc and stderr in meta.json), not fatal: a
    leg without a superblock makes --examine exit 1, and that is worth keeping.
    """
    mod = _module("xencluster_md")
    args.outdir.mkdir(parents=True, exist_ok=True)
    with open(mod.MDSTAT, "rb") as fh:
        mdstat = fh.read()
    (args.outdir / "mdstat.out").write_bytes(mdstat)
    commands = {"detail_scan_export": [mod.MDADM, "--detail", "--scan", "--export"]}
    for md in args.md:
        commands[f"detail_export.{os.path.basename(md)}"] = [*mod.DETAIL_EXPORT, md]
    for leg in args.leg:
        commands[f"examine_export.{os.path.basename(leg)}"] = [*mod.EXAMINE_EXPORT, leg]
    meta = {
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": [_run([mod.MDADM, "--version"]).stderr.decode(errors="replace").strip()],
        "note": args.note,
        "files": {"mdstat": mod.MDSTAT},
        "realpath": {path: os.path.realpath(path) for path in [*args.md, *args.leg]},
        "commands": {},
    }
    for name, argv in commands.items():
        proc = _run(argv)
        (args.outdir / f"{name}.out").write_bytes(proc.stdout)
        meta["commands"][name] = {"argv": argv, "rc": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
        for line in proc.stdout.decode(errors="replace").splitlines():
            if line.startswith("MD_DEVICE_") and "_DEV=" in line:
                dev = line.split("=", 1)[1]
                meta["realpath"][dev] = os.path.realpath(dev)
    (args.outdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"recorded mdstat, {', '.join(commands)} into {args.outdir}")


def _meta(args, tool_version):
    return {
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "captured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": tool_version,
        "note": args.note,
        "commands": {},
    }


def _redact_chap(obj):
    if isinstance(obj, dict):
        return {k: ("REDACTED" if k.startswith(("chap_", "discovery_")) and "userid" not in k
                    and "enable" not in k and v else _redact_chap(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_chap(v) for v in obj]
    return obj


def _capture_lio(args):
    import rtslib_fb  # pylint: disable=import-outside-toplevel

    version = _run(["dpkg-query", "-W", "-f", "${Version}", "python3-rtslib-fb"]).stdout.decode()
    meta = _meta(args, [f"python3-rtslib-fb {version}".strip()])
    dump = _redact_chap(rtslib_fb.RTSRoot().dump())
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "dump.json").write_text(json.dumps(dump, indent=2, sort_keys=True) + "\n")
    meta["commands"]["dump"] = {"api_call": "rtslib_fb.RTSRoot().dump()", "rc": 0, "stderr": ""}
    (args.outdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"recorded dump into {args.outdir}")


def _capture_iscsi(args):
    mod = _module("xencluster_iscsi")
    version = _run(["iscsiadm", "--version"]).stdout.decode().strip()
    meta = _meta(args, [version])
    args.outdir.mkdir(parents=True, exist_ok=True)
    commands = {"session": (mod.SESSION_ARGV, (0, mod.ISCSI_ERR_NO_OBJS_FOUND))}
    if args.portal:
        argv = [*mod.DISCOVERY_ARGV, mod._check_portal(args.portal)]
        commands["discovery"] = (argv, (0,))
    for name, (argv, ok) in commands.items():
        proc = _run(argv)
        if proc.returncode not in ok:
            sys.exit(f"{argv} failed (rc {proc.returncode}): {proc.stderr.decode(errors='replace')}")
        (args.outdir / f"{name}.out").write_bytes(proc.stdout)
        meta["commands"][name] = {"argv": argv, "rc": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
    listed = (args.outdir / "session.out").read_text()
    for session in mod._parse_sessions(listed) if meta["commands"]["session"]["rc"] == 0 else []:
        argv = [*mod._node(session["target"], session["portal"]), "-o", "show"]
        proc = _run(argv)
        if proc.returncode != 0:
            sys.exit(f"{argv} failed (rc {proc.returncode}): {proc.stderr.decode(errors='replace')}")
        name = f"node.{session['sid']}"
        (args.outdir / f"{name}.out").write_bytes(proc.stdout)
        meta["commands"][name] = {"argv": argv, "rc": 0, "stderr": proc.stderr.decode(errors="replace")}
    sysfs = {}
    base = pathlib.Path(mod.SYSFS_SESSIONS)
    for session in sorted(base.glob("session*")):
        entry = {f: (session / f).read_text().strip() for f in ("targetname", "state", "recovery_tmo")
                 if (session / f).exists()}  # fmt: skip
        entry["block"] = sorted(str(p.relative_to(session)) for p in session.glob("device/target*/*/block/*"))
        sysfs[session.name] = entry
    (args.outdir / "sysfs.json").write_text(json.dumps(sysfs, indent=2, sort_keys=True) + "\n")
    meta["commands"]["sysfs"] = {"read": f"{base}/session*/{{targetname,state,recovery_tmo}}, "
                                         f"{base}/session*/device/target*/*/block/*"}
    (args.outdir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"recorded {', '.join(commands)}, sysfs into {args.outdir}")


if __name__ == "__main__":
    main()
