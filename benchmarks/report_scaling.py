#!/usr/bin/env python3
"""Benchmark how the report functions scale: 1 vs 200 LVs, LIO exports and iSCSI sessions.

    .venv/bin/python benchmarks/report_scaling.py [--objects 200] [--repeat 7] [--jobs 4]
    .venv/bin/python benchmarks/report_scaling.py --cleanup-only

Needs a RUNNING two-node lab (`make lab-up`); it never starts or stops it.
It ships ``_modules/`` and this file to /root/xcbench on node1 and node2 and
runs this file there with the dom0's Salt (/opt/salt/bin/python ... driver),
which loads the xencluster modules through Salt's own loader
(``salt.loader.minion_mods``, real grains, the real ``cmd.run_all`` wrapped
only to count the tools each call starts).

Objects live only on node1's loop device PV (sparse /var/tmp/xcbench.img) in
VG ``xcbench``: LVs b001.., each exported as backstore xcbench-bNNN on its own
target iqn.2025-01.lab.xen:bench.bNNN to node2, which logs in to every target.
With one object, then with all of them, it times (median and min of --repeat
calls after one warm-up) ``xencluster_lvm.report`` and
``xencluster_lio.exports`` on node1 and ``xencluster_iscsi.sessions`` on node2.
Everything it made is removed at the end, also on errors and Ctrl-C; a run
first removes what a crashed run left. Only objects with those names are
touched. Results go to benchmarks/results/ as JSON with the command and date.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import functools
import glob
import io
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # on a node: meaningless (/root), unused there
RESULTS = REPO / "benchmarks" / "results"

MAX_RATIO = 2.0  # the goal: a report with 200 objects takes less than twice as long as with 1
DEFAULT_OBJECTS = 200
DEFAULT_REPEAT = 7
WARMUP = 1

# On the nodes.
REMOTE_DIR = "/root/xcbench"
REMOTE_PY = "/opt/salt/bin/python"
REMOTE_SCRIPT = f"{REMOTE_DIR}/report_scaling.py"
PIDFILE = f"{REMOTE_DIR}/driver.pid"
IMAGE = "/var/tmp/xcbench.img"
VG = "xcbench"
LV_SIZE_MIB = 4
IQN_PREFIX = "iqn.2025-01.lab.xen"  # lab/config.py IQN_PREFIX (not importable on a node)
TARGET_NODE, INITIATOR_NODE = "node1", "node2"
PORT = 3260
RESULT_MARK = "XCBENCH-RESULT "
# A setup step stops (and the run cleans up) before a dom0 (768 MiB) runs out of memory:
# 200 iSCSI sessions and LIO targets cost kernel memory.
MIN_AVAILABLE_MIB = 128

# What is timed where, and how to count the bench objects in each function's answer.
FUNCTIONS = {
    "xencluster_lvm.report": TARGET_NODE,
    "xencluster_lio.exports": TARGET_NODE,
    "xencluster_iscsi.sessions": INITIATOR_NODE,
}

_NAME_RE = re.compile(r"b[0-9]{3}")
_TARGET_RE = re.compile(re.escape(f"{IQN_PREFIX}:bench.") + r"(b[0-9]{3})")
_BACKSTORE_RE = re.compile(r"xcbench-(b[0-9]{3})")
# "tcp: [3] 192.168.100.1:3260,1 iqn.2025-01.lab.xen:bench.b001 (non-flash)"
_SESSION_RE = re.compile(r"\S+: \[(?P<sid>[0-9]+)\] (?P<portal>\S+),-?[0-9]+ (?P<target>\S+)(?: \(.*\))?")
# "192.168.100.1:3260,1 iqn.2025-01.lab.xen:bench.b001"
_RECORD_RE = re.compile(r"(?P<portal>\S+),-?[0-9]+ (?P<target>\S+)")


class BenchError(Exception):
    """A step failed; the message says which and where."""


# --- naming and parsing (pure) ------------------------------------------------------


def object_names(count: int, start: int = 1) -> list[str]:
    """b001.. (three digits); objects ``start``..``count`` inclusive."""
    if not 1 <= start <= count <= 999:
        raise ValueError(f"objects are numbered 1..999, got {start}..{count}")
    return [f"b{i:03d}" for i in range(start, count + 1)]


def target_iqn(name: str) -> str:
    return f"{IQN_PREFIX}:bench.{name}"


def backstore_name(name: str) -> str:
    return f"xcbench-{name}"


def lv_path(name: str) -> str:
    return f"/dev/{VG}/{name}"


def is_bench_target(iqn: str) -> bool:
    return bool(_TARGET_RE.fullmatch(iqn or ""))


def is_bench_backstore(name: str) -> bool:
    return bool(_BACKSTORE_RE.fullmatch(name or ""))


def san_portal(node_number: int = 1) -> str:
    return f"192.168.100.{node_number}:{PORT}"  # lab/config.py SAN_NET


def initiator_iqn(node_name: str = INITIATOR_NODE) -> str:
    return f"{IQN_PREFIX}:{node_name}"


def tool_name(cmd) -> str:
    """The program a cmd.run_all call starts: basename of argv[0] (a str is split like a shell)."""
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])
    return os.path.basename(str(argv[0])) if argv else "?"


def parse_sessions(stdout: str) -> list[dict]:
    """[{sid, portal, target}] from ``iscsiadm -m session``; unknown lines are skipped."""
    out = []
    for line in stdout.splitlines():
        m = _SESSION_RE.fullmatch(line.strip())
        if m:
            out.append({"sid": int(m["sid"]), "portal": m["portal"], "target": m["target"]})
    return out


def parse_records(stdout: str) -> list[dict]:
    """[{portal, target}] from ``iscsiadm -m node``."""
    out = []
    for line in stdout.splitlines():
        m = _RECORD_RE.fullmatch(line.strip())
        if m:
            out.append({"portal": m["portal"], "target": m["target"]})
    return out


def parse_losetup(stdout: str) -> list[str]:
    """Loop devices from ``losetup -j FILE`` ("/dev/loop0: []: (/var/tmp/x.img)")."""
    return [line.split(":", 1)[0] for line in stdout.splitlines() if line.startswith("/dev/loop")]


def count_objects(function: str, value) -> dict:
    """How many bench objects (and objects in all) a report function returned."""
    if function == "xencluster_lvm.report":
        items = [lv.get("vg") == VG for lv in (value or {}).get("lvs", {}).values()]
    elif function == "xencluster_lio.exports":
        items = [is_bench_target(t) for t in (value or {}).get("targets", {})]
    elif function == "xencluster_iscsi.sessions":
        items = [is_bench_target(s.get("target", "")) for s in (value or [])]
    else:
        raise ValueError(f"unknown function {function}")
    return {"bench": sum(items), "total": len(items)}


def mem_available_mib(meminfo: str) -> int | None:
    """MemAvailable from /proc/meminfo text, in MiB."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return None


def parse_driver_output(stdout: str) -> dict | None:
    """The driver's answer: the JSON after RESULT_MARK on its last such line."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return None


# --- result (pure) -------------------------------------------------------------------


def summarize(samples: list[float]) -> dict:
    if not samples:
        raise ValueError("no samples")
    return {"median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4),
            "samples_s": [round(s, 4) for s in samples]}


def scenario_key(count: int) -> str:
    return f"n{count}"


def function_entry(node: str, small: dict, large: dict, n_small: int, n_large: int) -> dict:
    """One function's numbers for both scenarios; ``small``/``large`` as the driver times them."""
    s, l = summarize(small["samples_s"]), summarize(large["samples_s"])
    ratio = l["median_s"] / s["median_s"] if s["median_s"] > 0 else float("inf")
    return {
        "node": node,
        scenario_key(n_small): {**s, "calls": small["calls"], "calls_total": sum(small["calls"].values()),
                                "calls_stable": small["calls_stable"], "objects": small["objects"]},
        scenario_key(n_large): {**l, "calls": large["calls"], "calls_total": sum(large["calls"].values()),
                                "calls_stable": large["calls_stable"], "objects": large["objects"]},
        "ratio": round(ratio, 2),
        "ratio_ok": ratio < MAX_RATIO,
        "calls_equal": small["calls"] == large["calls"] and small["calls_stable"] and large["calls_stable"],
    }


def verdict(functions: dict, n_small: int, n_large: int) -> dict:
    """Pass when every ratio is < MAX_RATIO, tool calls do not grow, and each run saw its objects."""
    failures = []
    for name, entry in functions.items():
        if not entry["ratio_ok"]:
            failures.append(f"{name}: ratio {entry['ratio']} >= {MAX_RATIO}")
        if not entry["calls_equal"]:
            failures.append(f"{name}: tool calls {entry[scenario_key(n_small)]['calls']} with {n_small}, "
                            f"{entry[scenario_key(n_large)]['calls']} with {n_large}")
        for n in (n_small, n_large):
            seen = entry[scenario_key(n)]["objects"]["bench"]
            if seen != n:
                failures.append(f"{name}: saw {seen} bench objects, expected {n}")
    return {"pass": not failures, "max_ratio": MAX_RATIO, "failures": failures}


def assemble(*, command: str, when: dt.datetime, git: dict, image_key: str | None, host: dict,
             args: argparse.Namespace, timings: dict, nodes_info: dict, phases_s: dict, setup: str,
             setup_steps: dict | None = None) -> dict:
    """The result file. ``timings`` is {count: {function: driver timing}} for the two counts."""
    n_small, n_large = 1, args.objects
    functions = {name: function_entry(node, timings[n_small][name], timings[n_large][name], n_small, n_large)
                 for name, node in FUNCTIONS.items()}
    return {
        "benchmark": "report_scaling",
        "command": command,
        "date": when.isoformat(timespec="seconds"),
        "git": git,
        "lab": {"image_key": image_key, "nodes": nodes_info},
        "host": host,
        "objects": {"small": n_small, "large": n_large, "lv_size_mib": LV_SIZE_MIB, "setup": setup},
        "repeat": args.repeat,
        "warmup": WARMUP,
        "functions": functions,
        "phases_s": phases_s,
        "setup_steps": setup_steps or {},
        "verdict": verdict(functions, n_small, n_large),
    }


def format_table(result: dict) -> str:
    n1, nl = scenario_key(result["objects"]["small"]), scenario_key(result["objects"]["large"])
    large = result["objects"]["large"]
    head = (f"{'function':<27} {'node':<6} {'n=1 median (min)':>18} {f'n={large} median (min)':>20} "
            f"{'ratio':>6}  {'tool calls (1 / ' + str(large) + ')':<26} ok")
    lines = [head]
    for name, e in result["functions"].items():
        calls = f"{e[n1]['calls_total']} / {e[nl]['calls_total']}"
        ok = "yes" if e["ratio_ok"] and e["calls_equal"] else "NO"
        lines.append(f"{name:<27} {e['node']:<6} {e[n1]['median_s']:>8.3f} s ({e[n1]['min_s']:.3f}) "
                     f"{e[nl]['median_s']:>10.3f} s ({e[nl]['min_s']:.3f}) {e['ratio']:>6.2f}  {calls:<26} {ok}")
    v = result["verdict"]
    lines.append("verdict: " + ("PASS" if v["pass"] else "FAIL: " + "; ".join(v["failures"])))
    return "\n".join(lines)


def result_path(results_dir: Path, when: dt.datetime) -> Path:
    return Path(results_dir) / f"report_scaling-{when:%Y%m%d-%H%M%S}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=DEFAULT_OBJECTS,
                        help=f"objects in the large scenario (2..999, default {DEFAULT_OBJECTS})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed calls per function and scenario, after {WARMUP} warm-up (default {DEFAULT_REPEAT})")
    parser.add_argument("--jobs", type=int, default=4, help="parallel iSCSI logins/logouts on node2 (default 4)")
    parser.add_argument("--export-each", action="store_true",
                        help="export every LV with xencluster_lio.export (rereads all of LIO per call: "
                             "O(n^2), ~50 min for 200 under TCG) instead of only the first")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    parser.add_argument("--cleanup-only", action="store_true",
                        help="only remove what a crashed run left on the nodes, measure nothing")
    args = parser.parse_args(argv)
    if not 2 <= args.objects <= 999:
        parser.error("--objects must be between 2 and 999")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 1 <= args.jobs <= 32:
        parser.error("--jobs must be between 1 and 32")
    return args


# --- on a node: the driver (runs with /opt/salt/bin/python, no lab package) -----------


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], ok=(0,), timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode not in ok:
        raise BenchError(f"{shlex.join(argv)} failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc


def _available() -> int | None:
    return mem_available_mib(Path("/proc/meminfo").read_text())


def _check_memory() -> None:
    avail = _available()
    if avail is not None and avail < MIN_AVAILABLE_MIB:
        raise BenchError(f"only {avail} MiB of memory available on {socket.gethostname()} "
                         f"(floor {MIN_AVAILABLE_MIB} MiB): stopping before it runs out")


def _driver_pid_running() -> int | None:
    """A live bench driver from the pidfile (command line checked), other than this process."""
    try:
        pid = int(Path(PIDFILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or REMOTE_SCRIPT.encode() not in cmdline or b"driver" not in cmdline:
        return None
    return pid


def _claim(stop_other: bool) -> None:
    """Own the pidfile. A cleanup first stops a driver a killed run left behind (ssh gone, work going on)."""
    other = _driver_pid_running()
    if other and not stop_other:
        raise BenchError(f"another bench driver (pid {other}) is running: run --cleanup-only")
    if other:
        _log(f"stopping the bench driver a previous run left (pid {other})")
        try:
            os.kill(other, signal.SIGTERM)
            for _ in range(100):
                if _driver_pid_running() != other:
                    break
                time.sleep(0.1)
            else:
                os.kill(other, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone meanwhile
    Path(PIDFILE).write_text(f"{os.getpid()}\n")


def load_modules():
    """Salt's real loader: minion opts from a config file, real grains, utils, minion_mods."""
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.loader  # pylint: disable=import-outside-toplevel

    empty = Path(REMOTE_DIR, "empty")
    empty.mkdir(exist_ok=True)
    conf = Path(REMOTE_DIR, "minion")
    conf.write_text(json.dumps({
        "root_dir": f"{REMOTE_DIR}/root",
        "file_client": "local",
        "module_dirs": [f"{REMOTE_DIR}/_modules"],
        # Not the minion's cache: modules a master synced there must not be loaded instead.
        "extension_modules": f"{REMOTE_DIR}/root/extmods",
        "file_roots": {"base": [str(empty)]},
        "pillar_roots": {"base": [str(empty)]},
    }))
    os.environ.pop("SALT_MINION_CONFIG", None)
    opts = salt.config.minion_config(str(conf), minion_id=f"xcbench-{socket.gethostname()}")
    opts["grains"] = salt.loader.grains(opts)
    utils = salt.loader.utils(opts)
    return salt.loader.minion_mods(opts, utils=utils)


def _function(mods, name):
    try:
        func = mods[name]
    except KeyError:
        raise BenchError(f"{name} is not loaded: {mods.missing_fun_string(name)}") from None
    path = func.func.__globals__.get("__file__", "")
    if not path.startswith(f"{REMOTE_DIR}/_modules/"):
        raise BenchError(f"{name} was loaded from {path}, not from the shipped {REMOTE_DIR}/_modules")
    return func


def install_counter(mods) -> tuple[collections.Counter, str]:
    """Wrap the real cmd.run_all (salt.modules.cmdmod) so each call counts its argv[0].

    Writes to the outer loader reach the inner one the modules see as __salt__
    (salt.loader.minion_mods' write-through), so the modules call the wrapper.
    """
    raw = mods["cmd.run_all"].func
    where = raw.__globals__.get("__file__", "")
    if raw.__name__ != "run_all" or not where.endswith(os.path.join("salt", "modules", "cmdmod.py")):
        raise BenchError(f"cmd.run_all is not Salt's own: {raw.__module__}.{raw.__name__} from {where}")
    counts = collections.Counter()

    @functools.wraps(raw)  # keeps __module__: the loader runs it in cmdmod's context
    def counting_run_all(cmd, *args, **kwargs):
        counts[tool_name(cmd)] += 1
        return raw(cmd, *args, **kwargs)

    mods["cmd.run_all"] = counting_run_all
    return counts, f"{raw.__module__}.{raw.__name__} from {where}"


def time_functions(mods, names: list[str], repeat: int) -> tuple[dict, str]:
    counts, run_all = install_counter(mods)
    out = {}
    for name in names:
        func = _function(mods, name)
        counts.clear()
        started = time.perf_counter()
        func()  # warm-up
        warmup_s = time.perf_counter() - started
        samples, calls = [], []
        value = None
        for _ in range(repeat):
            counts.clear()
            started = time.perf_counter()
            value = func()
            samples.append(time.perf_counter() - started)
            calls.append(dict(counts))
        out[name] = {"samples_s": samples, "warmup_s": round(warmup_s, 4), "calls": calls[0],
                     "calls_stable": all(c == calls[0] for c in calls), "objects": count_objects(name, value)}
        _log(f"{name}: median {statistics.median(samples):.3f} s, calls {calls[0]}")
    return out, run_all


def _lvs_in_vg() -> set[str]:
    proc = _run(["lvs", "--noheadings", "-o", "lv_name", VG], ok=(0, 5))
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} if proc.returncode == 0 else set()


def setup_lvm(names: list[str], total: int) -> dict:
    """VG xcbench on a loop device over a sparse file sized for ``total`` LVs; LVs ``names``."""
    if _run(["vgs", VG], ok=(0, 5)).returncode != 0:
        if Path(IMAGE).exists() or parse_losetup(_run(["losetup", "-j", IMAGE]).stdout):
            raise BenchError(f"{IMAGE} or its loop device exists without VG {VG}: run --cleanup-only")
        with open(IMAGE, "wb") as fh:
            fh.truncate((total + 8) * LV_SIZE_MIB * 1024 * 1024)  # sparse; + room for metadata
        loop = _run(["losetup", "--find", "--show", IMAGE]).stdout.strip()
        _run(["pvcreate", "--yes", loop])
        _run(["vgcreate", "--yes", "--physicalextentsize", f"{LV_SIZE_MIB}m", VG, loop])
        _log(f"VG {VG} on {loop} ({IMAGE})")
    have = _lvs_in_vg()
    made = 0
    for name in names:
        if name not in have:
            _check_memory()
            _run(["lvcreate", "--yes", "--name", name, "--size", f"{LV_SIZE_MIB}m", "--", VG])
            made += 1
    missing = [n for n in names if not os.path.exists(lv_path(n))]
    if missing:
        raise BenchError(f"LV devices missing after lvcreate: {missing[:5]}")
    return {"lvs_created": made}


def export_each(mods, names: list[str], initiator: str, portal: str) -> int:
    export = _function(mods, "xencluster_lio.export")
    changed = 0
    for name in names:
        ret = export(backstore_name(name), lv_path(name), target_iqn(name), [initiator], [portal])
        changed += bool(ret["changed"])
    return changed


def export_bulk(mods, names: list[str], initiator: str, portal: str) -> int:
    """What export() does for each name, from ONE read of LIO instead of one per name.

    export() = _spec, _plan_export(_dump(), spec), _apply(actions, spec). Its
    _dump() reads every LIO object (~0.15 s per export under TCG), so 200
    export() calls would take O(n^2) time. The bench objects do not depend on
    each other, so planning each against one read gives the same actions.
    Afterwards every name is planned again against a fresh read: export()
    would change nothing, i.e. the objects are exactly what it makes.
    """
    g = _function(mods, "xencluster_lio.export").func.__globals__
    try:
        spec_of, plan, apply_, read = g["_spec"], g["_plan_export"], g["_apply"], g["_dump"]
    except KeyError as exc:
        _log(f"xencluster_lio has no {exc}: exporting with export() one by one")
        return export_each(mods, names, initiator, portal)

    def spec(name):
        return spec_of(backstore_name(name), lv_path(name), target_iqn(name), [initiator], [portal], None, None)

    current = read()
    changed = 0
    for name in names:
        s = spec(name)
        actions, _ = plan(current, s)
        if actions:
            _check_memory()
            apply_(actions, s)
            changed += 1
    after = read()
    left = {name: plan(after, spec(name))[0] for name in names}
    left = {name: [a["op"] for a in actions] for name, actions in left.items() if actions}
    if left:
        raise BenchError(f"export() would still change these exports: {dict(list(left.items())[:5])}")
    return changed


def _sysfs_devices(sid: int) -> list[str]:
    return glob.glob(f"/sys/class/iscsi_session/session{sid}/device/target*/*/block/*")


def _bench_sessions(portal: str | None = None) -> list[dict]:
    proc = _run(["iscsiadm", "-m", "session"], ok=(0, 21))
    return [s for s in parse_sessions(proc.stdout)
            if is_bench_target(s["target"]) and (portal is None or s["portal"] == portal)]


def _parallel(func, items, jobs: int) -> list[str]:
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for item, fut in [(item, pool.submit(func, item)) for item in items]:
            try:
                fut.result()
            except (BenchError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{item}: {exc}")
    return errors


def login(names: list[str], portal: str, initiator: str, jobs: int) -> dict:
    """Log in to each bench target (records with the default node.startup=manual), wait for its disk."""
    mine = Path("/etc/iscsi/initiatorname.iscsi").read_text()
    if f"InitiatorName={initiator}" not in mine.split():
        raise BenchError(f"this node's initiator name is not {initiator}: {mine.strip()}")
    up = {s["target"] for s in _bench_sessions(portal)}
    todo = [n for n in names if target_iqn(n) not in up]

    def one(name):
        _check_memory()
        node = ["iscsiadm", "-m", "node", "-T", target_iqn(name), "-p", portal]
        _run([*node, "-o", "new"])
        _run([*node, "--login"], ok=(0, 15), timeout=120)

    errors = _parallel(one, todo, jobs)
    if errors:
        raise BenchError(f"{len(errors)} logins failed: {errors[:3]}")
    _run(["udevadm", "settle", "--timeout=180"], ok=(0, 1), timeout=200)
    wanted = {target_iqn(n) for n in names}
    deadline = time.monotonic() + 120
    while True:
        sessions = [s for s in _bench_sessions(portal) if s["target"] in wanted]
        no_disk = [s["target"] for s in sessions if not _sysfs_devices(s["sid"])]
        if len(sessions) == len(wanted) and not no_disk:
            return {"logged_in": len(todo)}
        if time.monotonic() > deadline:
            raise BenchError(f"{len(sessions)} of {len(wanted)} sessions up, without a disk: {no_disk[:5]}")
        time.sleep(1)


def cleanup_initiator(jobs: int) -> dict:
    """Log out of every bench session and delete every bench node record (nothing else)."""
    sessions = _bench_sessions()

    def logout(session):
        _run(["iscsiadm", "-m", "node", "-T", session["target"], "-p", session["portal"], "--logout"],
             ok=(0, 21), timeout=120)

    errors = _parallel(logout, sessions, jobs)
    records = [r for r in parse_records(_run(["iscsiadm", "-m", "node"], ok=(0, 21)).stdout)
               if is_bench_target(r["target"])]
    for rec in records:
        _run(["iscsiadm", "-m", "node", "-T", rec["target"], "-p", rec["portal"], "-o", "delete"], ok=(0, 21))
    left = [s["target"] for s in _bench_sessions()]
    left += [r["target"] for r in parse_records(_run(["iscsiadm", "-m", "node"], ok=(0, 21)).stdout)
             if is_bench_target(r["target"])]
    if errors or left:
        raise BenchError(f"bench sessions or records left: {left[:5]} {errors[:3]}")
    return {"logged_out": len(sessions), "records_deleted": len(records)}


def cleanup_target() -> dict:
    """Delete the bench targets and backstores (by name), VG xcbench, its loop device and file."""
    import rtslib_fb  # pylint: disable=import-outside-toplevel

    root = rtslib_fb.RTSRoot()
    targets = [t for t in root.targets if is_bench_target(t.wwn)]
    for target in targets:
        target.delete()  # with its TPG, LUNs, ACLs and portal
    skipped, backstores = [], 0
    for so in list(rtslib_fb.RTSRoot().storage_objects):
        if so.plugin == "block" and is_bench_backstore(so.name):
            if not str(so.udev_path).startswith((f"/dev/{VG}/", f"/dev/mapper/{VG}-")):
                skipped.append(f"{so.name} on {so.udev_path}")
                continue
            so.delete()
            backstores += 1
    vg_removed = _run(["vgs", VG], ok=(0, 5)).returncode == 0
    if vg_removed:
        _run(["vgremove", "--yes", "--force", VG])
    loops = parse_losetup(_run(["losetup", "-j", IMAGE]).stdout)
    for loop in loops:
        _run(["pvremove", "--yes", loop], ok=(0, 5))
        _run(["losetup", "-d", loop])
    Path(IMAGE).unlink(missing_ok=True)
    if skipped:
        raise BenchError(f"backstores with a bench name on another device, left alone: {skipped}")
    return {"targets_deleted": len(targets), "backstores_deleted": backstores, "vg_removed": vg_removed,
            "loops_detached": len(loops)}


def driver_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="report_scaling.py driver")
    parser.add_argument("action", choices=["time", "setup-target", "setup-initiator",
                                           "cleanup-target", "cleanup-initiator"])
    parser.add_argument("--functions", default="")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--last", type=int, default=1)
    parser.add_argument("--total", type=int, default=DEFAULT_OBJECTS)
    parser.add_argument("--export", choices=["each", "bulk"], default="each")
    parser.add_argument("--initiator", default=initiator_iqn())
    parser.add_argument("--portal", default=san_portal())
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    _claim(stop_other=args.action.startswith("cleanup"))
    try:
        names = object_names(args.last, args.first)
        if args.action == "time":
            load_started = time.perf_counter()
            mods = load_modules()
            import salt.version  # pylint: disable=import-outside-toplevel

            info = {"loader_s": round(time.perf_counter() - load_started, 2), "salt": salt.version.__version__,
                    "python": platform.python_version(), "kernel": platform.release()}
            timed, info["cmd_run_all"] = time_functions(mods, args.functions.split(","), args.repeat)
            result = {"info": info, "functions": timed}
        elif args.action == "setup-target":
            before = _available()
            result = setup_lvm(names, args.total)
            mods = load_modules()
            exporter = export_each if args.export == "each" else export_bulk
            result["exports_changed"] = exporter(mods, names, args.initiator, args.portal)
            result["mem_available_mib"] = {"before": before, "after": _available()}
        elif args.action == "setup-initiator":
            before = _available()
            result = login(names, args.portal, args.initiator, args.jobs)
            result["mem_available_mib"] = {"before": before, "after": _available()}
        elif args.action == "cleanup-initiator":
            result = cleanup_initiator(args.jobs)
        else:
            result = cleanup_target()
    except BenchError as exc:
        print(f"driver {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        if _driver_pid_running() is None:
            Path(PIDFILE).unlink(missing_ok=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(RESULT_MARK + json.dumps(result, sort_keys=True), flush=True)
    return 0


# --- on the host ---------------------------------------------------------------------


def _lab():
    """The lab package (host only: the nodes run this file without it)."""
    sys.path.insert(0, str(REPO))
    from lab import config, errors, nodes, ssh, state  # pylint: disable=import-outside-toplevel

    return config, errors, nodes, ssh, state


class Lab:
    """node1/node2 of the running lab, reached over ssh as the lab does it."""

    def __init__(self):
        self.config, self.errors, self.nodes, self.ssh, self.state = _lab()
        self.node = {name: self.config.node_by_name(name) for name in (TARGET_NODE, INITIATOR_NODE)}

    def check(self) -> None:
        """Both nodes run and answer ssh; else BenchError. Never starts anything."""
        for name, node in self.node.items():
            if not self.nodes.pid(node, cleanup=False):
                raise BenchError(f"{name} is not running. Start the lab first (`make lab-up`); "
                                 "this benchmark never starts or stops it")
            try:
                proc = self.nodes.ssh(node, "xl list >/dev/null", timeout=30, check=False)
            except self.errors.LabError as exc:  # no image, no key
                raise BenchError(f"{name}: {exc}") from exc
            if proc.returncode != 0:
                raise BenchError(f"{name} does not answer ssh on 127.0.0.1:{node.ssh_port} "
                                 f"({(proc.stderr.strip().splitlines() or ['no answer'])[-1]}); "
                                 "wait until `python -m lab status` shows it ready")

    def ship(self, name: str) -> None:
        """_modules/*.py and this file to REMOTE_DIR (tar over ssh)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted((REPO / "_modules").glob("*.py")):
                tar.add(path, arcname=f"_modules/{path.name}")
            tar.add(Path(__file__).resolve(), arcname="report_scaling.py")
        node = self.node[name]
        remote = (f"mkdir -p {REMOTE_DIR} && cd {REMOTE_DIR} && rm -rf _modules report_scaling.py "
                  "&& tar -xzof -")
        argv = self.ssh.argv(node, self.nodes.key(node), remote)
        proc = subprocess.run(argv, input=buf.getvalue(), capture_output=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise BenchError(f"{name}: shipping to {REMOTE_DIR} failed: {proc.stderr.decode(errors='replace')}")

    def driver(self, name: str, action: str, *args: str, timeout: float) -> dict:
        argv = [REMOTE_PY, REMOTE_SCRIPT, "driver", action, *args]
        proc = self.nodes.ssh(self.node[name], argv, timeout=timeout, check=False)
        result = parse_driver_output(proc.stdout)
        if proc.returncode != 0 or result is None:
            tail = "\n  ".join(proc.stderr.strip().splitlines()[-8:])
            raise BenchError(f"{name}: driver {action} failed (exit {proc.returncode}):\n  {tail}")
        return result

    def remove_remote_dir(self, name: str) -> None:
        self.nodes.ssh(self.node[name], ["rm", "-rf", REMOTE_DIR], timeout=60, check=True)


def _say(started: float, msg: str) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {msg}", flush=True)


def cleanup(lab: Lab, jobs: int, started: float) -> list[str]:
    """Remove everything the benchmark makes; errors are collected, every step is tried."""
    errors = []
    steps = [(INITIATOR_NODE, "cleanup-initiator", ["--jobs", str(jobs)]), (TARGET_NODE, "cleanup-target", [])]
    for name, action, extra in steps:  # sessions first: then the targets go without a live initiator
        try:
            done = lab.driver(name, action, *extra, timeout=1800)
            _say(started, f"{name}: {action}: {done}")
        except Exception as exc:  # noqa: BLE001 - keep cleaning the other node
            errors.append(str(exc))
    for name in (TARGET_NODE, INITIATOR_NODE):
        if not any(e.startswith(name) for e in errors):
            try:
                lab.remove_remote_dir(name)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{name}: removing {REMOTE_DIR}: {exc}")
    return errors


def measure(lab: Lab, args: argparse.Namespace, started: float, phases: dict, steps: dict) -> tuple[dict, dict]:
    """1 object, time, the rest, time. Returns (timings, node infos); fills phases and steps."""
    portal, initiator = san_portal(lab.node[TARGET_NODE].number), lab.node[INITIATOR_NODE].initiator_iqn
    common = ["--total", str(args.objects), "--portal", portal, "--initiator", initiator]
    timings, infos = {}, {}
    for count, first, export in ((1, 1, "each"), (args.objects, 2, "each" if args.export_each else "bulk")):
        span = ["--first", str(first), "--last", str(count)]
        per_object = 60 if export == "each" else 15
        t = time.monotonic()
        done = lab.driver(TARGET_NODE, "setup-target", *span, *common, "--export", export,
                          timeout=300 + per_object * count)
        steps[f"{TARGET_NODE} LVs and exports b{first:03d}..b{count:03d}"] = done
        _say(started, f"{TARGET_NODE}: LVs and exports b{first:03d}..b{count:03d} ({export}): {done}")
        done = lab.driver(INITIATOR_NODE, "setup-initiator", *span, *common, "--jobs", str(args.jobs),
                          timeout=300 + 20 * count)
        steps[f"{INITIATOR_NODE} logins b{first:03d}..b{count:03d}"] = done
        _say(started, f"{INITIATOR_NODE}: logged in to b{first:03d}..b{count:03d}: {done}")
        phases[f"setup_to_{count}"] = round(time.monotonic() - t, 1)
        timings[count] = {}
        t = time.monotonic()
        for name in (TARGET_NODE, INITIATOR_NODE):
            funcs = [f for f, node in FUNCTIONS.items() if node == name]
            out = lab.driver(name, "time", "--functions", ",".join(funcs), "--repeat", str(args.repeat),
                             timeout=600 + 120 * (args.repeat + WARMUP) * len(funcs))
            timings[count].update(out["functions"])
            infos[name] = out["info"]
            for func in funcs:
                _say(started, f"{name}: {func} with {count}: median "
                              f"{statistics.median(out['functions'][func]['samples_s']):.3f} s")
        phases[f"time_{count}"] = round(time.monotonic() - t, 1)
    return timings, infos


def _git() -> dict:
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _host() -> dict:
    return {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(), "name": socket.gethostname()}


def _raise_interrupt(signum, frame):  # SIGTERM: run the cleanup like Ctrl-C does
    raise KeyboardInterrupt


def setup_description(objects: int, export_each: bool) -> str:
    rest = f"b002..b{objects:03d}"
    how = (f"{rest} too" if export_each else
           f"{rest} with its own planner and applier from one LIO read, then checked: "
           "export() would change none of them")
    return f"b001 exported with xencluster_lio.export; {how}"


def prepare(lab: Lab, args: argparse.Namespace, started: float, phases: dict) -> None:
    """Ship the code, remove what a crashed run left, ship again (the cleanup removes REMOTE_DIR)."""
    for name in lab.node:
        lab.ship(name)
    _say(started, f"shipped _modules and this script to {REMOTE_DIR} on {', '.join(lab.node)}")
    if args.cleanup_only:
        return
    t = time.monotonic()
    errors = cleanup(lab, args.jobs, started)
    phases["cleanup_before"] = round(time.monotonic() - t, 1)
    if errors:
        raise BenchError("could not clean up before starting: " + "; ".join(errors))
    for name in lab.node:
        lab.ship(name)


def final_cleanup(lab: Lab, args: argparse.Namespace, started: float, phases: dict) -> list[str]:
    """The cleanup at the end; SIGINT/SIGTERM are ignored meanwhile (by the ssh children too)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _say(started, "cleaning up (Ctrl-C is ignored until this is done; every step is time-bounded)")
        t = time.monotonic()
        errors = cleanup(lab, args.jobs, started)
        phases["cleanup"] = round(time.monotonic() - t, 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if errors:
        print("report_scaling: CLEANUP FAILED, bench objects may be left on the nodes "
              "(rerun with --cleanup-only):\n  " + "\n  ".join(errors), file=sys.stderr)
    return errors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["driver"]:
        return driver_main(argv[1:])
    args = parse_args(argv)
    when = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    lab = Lab()
    try:
        lab.check()
    except BenchError as exc:
        print(f"report_scaling: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    phases, steps, failure = {}, {}, None
    try:
        prepare(lab, args, started, phases)
        if not args.cleanup_only:
            timings, infos = measure(lab, args, started, phases, steps)
    except KeyboardInterrupt:
        failure = "interrupted"
    except BenchError as exc:
        failure = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or a lab error: still clean up, then say what it was
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        errors = final_cleanup(lab, args, started, phases)
    if failure:
        print(f"report_scaling: {failure}", file=sys.stderr)
        return 130 if failure == "interrupted" else 1
    if args.cleanup_only:
        return 1 if errors else 0
    phases["total"] = round(time.monotonic() - started, 1)
    result = assemble(command=" ".join([Path(sys.executable).name, *sys.argv]), when=when, git=_git(),
                      image_key=lab.state.load().get("image_key"), host=_host(), args=args,
                      timings=timings, nodes_info=infos, phases_s=phases,
                      setup=setup_description(args.objects, args.export_each), setup_steps=steps)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = result_path(args.results_dir, when)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(format_table(result))
    print(f"written to {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
