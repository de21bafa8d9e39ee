#!/usr/bin/env python3
"""Count the external commands a converged dom0 highstate runs: 1 guest vs 20 guests (40 legs).

    .venv/bin/python benchmarks/highstate_commands.py [--guests 1,20] [--repeat 3]

The issue's goal: the number of commands a converged ``state.highstate`` runs on
a dom0 must not grow with the number of guests; the wall-time ratio is recorded
too. Measured, not estimated: every salt-minion process on node1 is traced with
``strace -f -e trace=execve`` while the lab master runs one converged highstate
on node1, and each successful ``execve`` is counted (grouped by the executable's
basename and by its first three arguments).

Needs a RUNNING two-node lab (node1, node2) whose dom0s are FRESH (``python -m
lab down --wipe`` then ``python -m lab up``) or were converged only by this
benchmark with at most the smallest guest count asked for. It CHANGES THE LAB
FOR GOOD: VG xcvg on /dev/vdb+/dev/vdc, bonds, VLAN bridges, 2 disk legs per
guest, guests b01..bNN defined, the first --pinned of them (default 1: b01 on
node1) running (96M each). Wipe and boot the lab again after it
if you want the lab model back.

How: it writes its own pillar root (default ``$XENCLUSTER_LAB/bench-pillar``:
top.sls -> xencluster.bench = the lab model's ``cluster`` and ``nodes`` with
guests b01..bNN), restarts the lab master on it (``python -m lab master`` with
XENCLUSTER_LAB_PILLAR_ROOT), and for each guest count: sync_all and
refresh_pillar on both nodes, ``state.highstate`` on node1,node2 until a run
changes nothing and every state succeeds (at most --max-runs), then on node1:
one highstate under strace (commands), --repeat highstates without it (wall
time on the host around the salt call, and the sum of the states' durations).
At the end the master goes back to the repo's pillar (``python -m lab master``
without the variable). Results go to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
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
import time
import traceback
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
LAB_MODEL = REPO / "pillar" / "xencluster" / "lab.sls"

NAME = "highstate_commands"
NODES = ("node1", "node2")
MEASURED = "node1"
DEFAULT_GUESTS = (1, 20)
DEFAULT_REPEAT = 3
# Guests with a home node, started by the highstate. The lab's 2 host cores under TCG cannot
# run 20 probe guests: on 2026-11-24 two highstates took 24 and 16 min and node1 still had
# only 5 of its 10 guests up, its dom0 starved (ssh timed out). The others are defined, with
# both legs each, which is what the command count is about.
DEFAULT_PINNED = 1
DEFAULT_MAX_RUNS = 4
DEFAULT_TIMEOUT = 2400  # salt --timeout: one highstate can take 20+ minutes under TCG
PILLAR_ENV = "XENCLUSTER_LAB_PILLAR_ROOT"  # lab/config.py PILLAR_ROOT
GOAL = "commands must not grow with guests"

# The generated guests (all alike; only name, home node and MAC differ).
GUEST_MEMORY = "96M"
GUEST_DISK_SIZE = "16M"
GUEST_VLAN = 10
GUEST_VG = "xcvg"
MAC_PREFIX = "00:16:3e:bb:00"
MAX_GUESTS = 99  # two digits in names and MACs

# On node1.
STRACE_OUT = "/var/tmp/xcbench-strace.txt"
STRACE_ERR = "/var/tmp/xcbench-strace.err"
STRACE_PID = "/var/tmp/xcbench-strace.pid"
# -s 256: readable arguments; -e signal=none: no SIGCHLD lines. Only execve is traced.
STRACE_OPTIONS = ("-f", "-qq", "-s", "256", "-e", "trace=execve", "-e", "signal=none")
ATTACH_TIMEOUT = 60

_GUEST_RE = re.compile(r"b([0-9]{2})")
_BENCH_LV_RE = re.compile(r"b([0-9]{2})\..+")


class BenchError(Exception):
    """A step failed; the message says which and where."""


# --- the pillar (pure) ---------------------------------------------------------------


def guest_names(count: int) -> list[str]:
    """b01..bNN."""
    if not 1 <= count <= MAX_GUESTS:
        raise ValueError(f"guest count must be 1..{MAX_GUESTS}, got {count}")
    return [f"b{i:02d}" for i in range(1, count + 1)]


def guest_home(index: int) -> str:
    """b01 on node1, b02 on node2, b03 on node1, ..."""
    return NODES[(index - 1) % len(NODES)]


def bench_guests(count: int, pinned: int = DEFAULT_PINNED) -> dict:
    """The generated guests, one 16M disk with a leg on each node, one interface on VLAN 10.

    Only the first ``pinned`` have a home node (``node:``), so only they are started; the
    others are defined, with their legs, and never started by a highstate.
    """
    guests = {}
    for index, name in enumerate(guest_names(count), start=1):
        home = {"node": guest_home(index)} if index <= pinned else {}
        guests[name] = {
            "type": "pvh",
            **home,
            "memory": GUEST_MEMORY,
            "vcpus": 1,
            "kernel": "/vmlinuz",
            "ramdisk": "/srv/domu/probe-initrd.gz",
            "extra": "console=hvc0",
            "interfaces": [{"vlan": GUEST_VLAN, "mac": f"{MAC_PREFIX}:{index:02d}"}],
            "disks": [{"name": "root", "size": GUEST_DISK_SIZE, "nodes": list(NODES), "vg": GUEST_VG,
                       "filesystem": "none"}],
        }
    return guests


def bench_model(lab_pillar: dict, count: int, pinned: int = DEFAULT_PINNED) -> dict:
    """The pillar ``xencluster``: the lab model's cluster and nodes, the generated guests."""
    lab = (lab_pillar or {}).get("xencluster") or {}
    missing = [key for key in ("cluster", "nodes") if key not in lab]
    if missing:
        raise ValueError(f"the lab model has no xencluster.{'/'.join(missing)}")
    return {"cluster": lab["cluster"], "nodes": lab["nodes"], "guests": bench_guests(count, pinned)}


def pillar_files(model: dict) -> dict[str, str]:
    """File name (relative to the pillar root) -> text."""
    header = "# Generated by benchmarks/highstate_commands.py; rewritten on every run.\n"
    top = {"base": {"node[1-9]": ["xencluster.bench"]}}
    return {
        "top.sls": header + yaml.safe_dump(top, default_flow_style=False, sort_keys=True),
        "xencluster/bench.sls": header + yaml.safe_dump({"xencluster": model}, default_flow_style=False,
                                                        sort_keys=True),
    }


def legs_on(node: str, guests: dict) -> dict:
    """Disk legs a node holds: its own (owned) and its partners' (imported), one each per disk on its pair."""
    owned = imported = 0
    for guest in guests.values():
        for disk in guest.get("disks", []):
            pair = disk.get("nodes") or guest.get("nodes") or []
            if node in pair:
                owned += 1
                imported += len(pair) - 1
    return {"owned": owned, "imported": imported, "total": owned + imported}


def parse_guest_counts(text: str) -> list[int]:
    """"1,20" -> [1, 20]: ascending, distinct, each 1..99."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"not a list of numbers: {text!r}") from None
    if not counts:
        raise ValueError("no guest count given")
    if any(not 1 <= c <= MAX_GUESTS for c in counts):
        raise ValueError(f"guest counts must be 1..{MAX_GUESTS}: {counts}")
    if counts != sorted(set(counts)):
        # Nothing is ever removed: after 20 guests, a "1 guest" dom0 would still hold 20.
        raise ValueError(f"guest counts must be distinct and ascending (guests are never removed): {counts}")
    return counts


def leftovers(domains: list[str], lvs: list[str], count: int) -> dict:
    """What node1 holds beyond the first ``count`` bench guests.

    ``bench``: bench domains or LVs of guests past ``count`` (a larger earlier run: the
    measurement would be wrong); ``foreign``: anything not from this benchmark (e.g. the
    lab model's web1 legs), reported but tolerated.
    """
    expected = set(guest_names(count))
    bench, foreign = [], []
    for name in domains:
        if name == "Domain-0":
            continue
        if _GUEST_RE.fullmatch(name):
            if name not in expected:
                bench.append(f"domain {name}")
        else:
            foreign.append(f"domain {name}")
    for name in lvs:
        m = _BENCH_LV_RE.fullmatch(name)
        if m:
            if f"b{m[1]}" not in expected:
                bench.append(f"LV {GUEST_VG}/{name}")
        else:
            foreign.append(f"LV {GUEST_VG}/{name}")
    return {"bench": sorted(bench), "foreign": sorted(foreign)}


# --- strace output (pure) ------------------------------------------------------------

# "1234  execve(...) = 0", "[pid  1234] execve(...)", or "execve(...)" (one process, no -f).
_PREFIX = r"^(?:(?P<pid>[0-9]+)\s+|\[pid\s+(?P<bpid>[0-9]+)\]\s+)?"
_EXEC_DONE_RE = re.compile(_PREFIX + r"execve\((?P<args>.*)\)\s+=\s+(?P<ret>-?[0-9]+|\?)(?:\s.*)?$")
_EXEC_UNFINISHED_RE = re.compile(_PREFIX + r"execve\((?P<args>.*?)\s*<unfinished \.\.\.>$")
_EXEC_RESUMED_RE = re.compile(_PREFIX + r"<\.\.\. execve resumed>.*?\)?\s*=\s+(?P<ret>-?[0-9]+|\?)(?:\s.*)?$")
_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a", "b": "\b", "\\": "\\", '"': '"'}


def _unescape(text: str) -> str:
    def one(m: re.Match) -> str:
        s = m.group(1)
        if s[0] == "x":
            return chr(int(s[1:], 16))
        if s[0] in "01234567":
            return chr(int(s, 8))
        return _ESCAPES.get(s, s)

    return re.sub(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", one, text)


def parse_execve_args(args: str) -> tuple[str, list[str]]:
    """(path, argv) from the text between ``execve(`` and its closing parenthesis.

    Strings keep strace's escapes decoded; a truncated string (``"abc"...``) keeps
    what strace printed; an abbreviated array (``["a", ...]``) keeps its printed part.
    """
    args = args.strip()
    m = _STRING_RE.match(args)
    if not m:
        return "", []
    path = _unescape(m.group(1))
    rest = args[m.end():].lstrip(", ")
    argv: list[str] = []
    if rest.startswith("["):
        pos = 1
        while pos < len(rest):
            while pos < len(rest) and rest[pos] in " ,":
                pos += 1
            if pos >= len(rest) or rest[pos] == "]" or rest.startswith("...", pos):
                break
            s = _STRING_RE.match(rest, pos)
            if not s:
                break
            argv.append(_unescape(s.group(1)))
            pos = s.end()
    return path, argv


def parse_strace(text: str) -> dict:
    """The successful execve calls in ``strace -f -e trace=execve`` output.

    Returns ``{"execs": [{"pid", "path", "argv"}], "failed": n, "unmatched": n}``:
    a call counts only when it returned 0 (``= 0``); a failed one (``= -1 ENOENT``,
    e.g. a PATH search) goes to ``failed``. An ``<unfinished ...>`` call is
    completed by its ``<... execve resumed> = N`` line of the same pid (or, if
    that pid has none pending, the only pending call: a thread's exec is resumed
    under the thread group leader); a resumed line that matches nothing goes to
    ``unmatched``. Other lines (signals, exits, other syscalls) are skipped.
    """
    execs, failed, unmatched = [], 0, 0
    pending: dict[str, list] = collections.OrderedDict()

    def finish(pid: str, path: str, argv: list[str], ret: str) -> None:
        nonlocal failed
        if ret == "0":
            execs.append({"pid": int(pid) if pid else None, "path": path, "argv": argv})
        else:
            failed += 1

    for line in (text or "").splitlines():
        line = line.rstrip()
        if "execve" not in line:
            continue
        m = _EXEC_UNFINISHED_RE.match(line)
        if m:
            pid = m["pid"] or m["bpid"] or ""
            pending[pid] = list(parse_execve_args(m["args"]))
            continue
        m = _EXEC_RESUMED_RE.match(line)
        if m:
            pid = m["pid"] or m["bpid"] or ""
            if pid in pending:
                path, argv = pending.pop(pid)
            elif len(pending) == 1:
                pid, (path, argv) = pending.popitem()
            else:
                unmatched += 1
                continue
            finish(pid, path, argv, m["ret"])
            continue
        m = _EXEC_DONE_RE.match(line)
        if m:
            path, argv = parse_execve_args(m["args"])
            finish(m["pid"] or m["bpid"] or "", path, argv, m["ret"])
    return {"execs": execs, "failed": failed, "unmatched": unmatched + len(pending)}


def command_prefix(exec_: dict, words: int = 3) -> str:
    """argv[0..2] with argv[0] as a basename (``xl list -l``); the path's basename without argv."""
    argv = list(exec_.get("argv") or [])
    if not argv:
        return os.path.basename(exec_.get("path", "")) or "?"
    argv[0] = os.path.basename(argv[0]) or argv[0]
    return shlex.join(argv[:words])


def summarize_commands(parsed: dict) -> dict:
    """Counts of a parse_strace result: total, by executable basename, by argv prefix."""
    execs = parsed["execs"]
    by_binary = collections.Counter(os.path.basename(e["path"]) or "?" for e in execs)
    prefixes = collections.Counter(command_prefix(e) for e in execs)
    return {
        "total": len(execs),
        "by_binary": dict(sorted(by_binary.items())),
        "prefixes": [{"prefix": p, "count": c} for p, c in sorted(prefixes.items())],
        "failed_execve": parsed["failed"],
        "unmatched": parsed["unmatched"],
        "argv": [e["argv"] or [e["path"]] for e in execs],
    }


def parse_pids(text: str) -> list[int]:
    """Pids from pgrep output (one per line)."""
    return sorted({int(word) for word in (text or "").split() if word.isdigit()})


# --- highstate returns (pure) --------------------------------------------------------


def highstate_summary(ret) -> dict:
    """One minion's highstate return: states, changed and failed ones, durations.

    ``errors`` holds render errors or a non-answer (the return is not a dict of states).
    """
    if not isinstance(ret, dict):
        lines = ret if isinstance(ret, list) else [str(ret)]
        return {"states": 0, "changed": [], "failed": [], "errors": [str(line) for line in lines],
                "duration_ms": 0.0}
    changed, failed, duration = [], [], 0.0
    for state_id, state in sorted(ret.items(), key=lambda kv: (kv[1] or {}).get("__run_num__", 0)
                                  if isinstance(kv[1], dict) else 0):
        if not isinstance(state, dict):
            failed.append({"state": state_id, "comment": str(state)})
            continue
        name = state.get("__id__") or state_id
        if state.get("changes"):
            changed.append({"state": name, "changes": state["changes"]})
        if state.get("result") is not True:
            failed.append({"state": name, "result": state.get("result"), "comment": state.get("comment", "")})
        try:
            duration += float(state.get("duration") or 0)
        except (TypeError, ValueError):
            pass
    return {"states": len(ret), "changed": changed, "failed": failed, "errors": [],
            "duration_ms": round(duration, 3)}


def converged(returns: dict, minions) -> tuple[bool, list[str]]:
    """True when every minion answered with states that all succeeded and changed nothing.

    The second item says, one line each, why not (missing minion, render errors,
    failing states with their comments, changed states).
    """
    problems = []
    for minion in minions:
        if minion not in (returns or {}):
            problems.append(f"{minion}: no answer")
            continue
        s = highstate_summary(returns[minion])
        problems += [f"{minion}: {line}" for line in s["errors"]]
        problems += [f"{minion}: FAILED {f['state']}: {_one_line(f.get('comment'))}" for f in s["failed"]]
        problems += [f"{minion}: changed {c['state']}: {_one_line(c['changes'])}" for c in s["changed"]]
    return not problems, problems


def _one_line(value, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- result (pure) -------------------------------------------------------------------


def samples(values: list[float]) -> dict:
    if not values:
        raise ValueError("no samples")
    return {"samples": [round(v, 3) for v in values], "median": round(statistics.median(values), 3)}


def scenario_key(count: int) -> str:
    return f"n{count}"


def scenario(count: int, commands: dict, strace_highstate_s: float, wall_s: list[float],
             durations_ms: list[float], states: int, converge: dict, node_objects: dict,
             pinned: int = DEFAULT_PINNED) -> dict:
    """One guest count's numbers."""
    guests = bench_guests(count, pinned)
    return {
        "guests": count,
        "guests_pinned": sum(1 for g in guests.values() if "node" in g),
        "guests_home_on_node1": sum(1 for g in guests.values() if g.get("node") == MEASURED),
        "legs_on_node1": legs_on(MEASURED, guests),
        "states": states,
        "commands": commands,
        "strace_highstate_s": round(strace_highstate_s, 3),
        "wall_s": samples(wall_s),
        "states_duration_sum_s": samples([ms / 1000.0 for ms in durations_ms]),
        "converge": converge,
        "node1_objects": node_objects,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(scenarios: dict, counts: list[int]) -> dict:
    """largest / smallest guest count: commands, median wall time, median sum of state durations."""
    if len(counts) < 2:
        return {}
    small, large = scenarios[scenario_key(counts[0])], scenarios[scenario_key(counts[-1])]
    lo, hi = counts[0], counts[-1]
    return {
        f"commands_{hi}/commands_{lo}": _ratio(large["commands"]["total"], small["commands"]["total"]),
        f"wall_{hi}/wall_{lo}": _ratio(large["wall_s"]["median"], small["wall_s"]["median"]),
        f"states_duration_{hi}/states_duration_{lo}": _ratio(large["states_duration_sum_s"]["median"],
                                                           small["states_duration_sum_s"]["median"]),
    }


def goal(scenarios: dict, counts: list[int]) -> dict:
    """Met when every guest count ran the same commands per binary as the smallest one."""
    if len(counts) < 2:
        return {"goal": GOAL, "met": None, "differs": {}, "note": "one guest count: nothing to compare"}
    by_n = {n: scenarios[scenario_key(n)]["commands"]["by_binary"] for n in counts}
    binaries = sorted(set().union(*by_n.values()))
    differs = {}
    for binary in binaries:
        per_n = {str(n): by_n[n].get(binary, 0) for n in counts}
        if len(set(per_n.values())) > 1:
            differs[binary] = per_n
    return {"goal": GOAL, "met": not differs, "differs": differs}


def assemble(*, command: str, when: dt.datetime, git: dict, host: dict, lab: dict, args: argparse.Namespace,
             counts: list[int], scenarios: dict, phases_s: dict) -> dict:
    return {
        "benchmark": NAME,
        "command": command,
        "date": when.isoformat(timespec="seconds"),
        "git": git,
        "host": host,
        "lab": lab,
        "node": MEASURED,
        "guest_counts": counts,
        "repeat": args.repeat,
        "guest": {"memory": GUEST_MEMORY, "disk": GUEST_DISK_SIZE, "vlan": GUEST_VLAN, "vg": GUEST_VG,
                  "legs": "one disk per guest, a leg on node1 and on node2",
                  "pinned": f"the first {args.pinned} guest(s) have a home node and run; the others are "
                            "defined with their legs and never started"},
        "method": {
            "commands": f"strace {' '.join(STRACE_OPTIONS)} -p <every salt-minion pid on {MEASURED}> "
                        f"during one converged state.highstate of {MEASURED}; successful execve calls",
            "wall_s": "time on the host around `python -m lab salt node1 state.highstate` (no strace)",
            "states_duration_sum_s": "sum of the states' duration fields of the same runs",
        },
        "scenarios": scenarios,
        "ratios": ratios(scenarios, counts),
        "verdict": goal(scenarios, counts),
        "phases_s": phases_s,
    }


def format_summary(result: dict) -> str:
    counts = result["guest_counts"]
    lines = [f"{'guests':>6} {'legs node1':>10} {'commands':>9} {'wall median s':>14} {'states sum s':>13}"]
    for n in counts:
        s = result["scenarios"][scenario_key(n)]
        lines.append(f"{n:>6} {s['legs_on_node1']['total']:>10} {s['commands']['total']:>9} "
                     f"{s['wall_s']['median']:>14.1f} {s['states_duration_sum_s']['median']:>13.1f}")
    binaries = sorted(set().union(*(result["scenarios"][scenario_key(n)]["commands"]["by_binary"]
                                    for n in counts)))
    if binaries:
        lines.append("commands by binary: " + ", ".join(
            f"{b} " + "/".join(str(result["scenarios"][scenario_key(n)]["commands"]["by_binary"].get(b, 0))
                               for n in counts) for b in binaries) + f" (guests {'/'.join(map(str, counts))})")
    for key, value in result["ratios"].items():
        lines.append(f"ratio {key}: {value}")
    v = result["verdict"]
    if v["met"] is None:
        lines.append(f"goal ({v['goal']}): not compared ({v['note']})")
    elif v["met"]:
        lines.append(f"goal ({v['goal']}): MET")
    else:
        lines.append(f"goal ({v['goal']}): NOT MET; differs: " + "; ".join(
            f"{b} {per_n}" for b, per_n in v["differs"].items()))
    return "\n".join(lines)


def result_path(results_dir: Path, when: dt.datetime) -> Path:
    return Path(results_dir) / f"{NAME}-{when:%Y%m%d-%H%M%S}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", default=",".join(map(str, DEFAULT_GUESTS)),
                        help="guest counts, ascending (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed highstates per guest count, without strace (default {DEFAULT_REPEAT})")
    parser.add_argument("--pinned", type=int, default=DEFAULT_PINNED,
                        help="guests with a home node, started by the highstate (default %(default)s); "
                             "the others are defined with their legs but never started")
    parser.add_argument("--max-runs", type=int, default=DEFAULT_MAX_RUNS,
                        help=f"highstates on both nodes to converge (default {DEFAULT_MAX_RUNS})")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help=f"salt --timeout of one highstate, seconds (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--pillar-dir", type=Path, default=None,
                        help="the generated pillar root (default $XENCLUSTER_LAB/bench-pillar)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.counts = parse_guest_counts(args.guests)
    except ValueError as exc:
        parser.error(f"--guests: {exc}")
    if not 0 <= args.pinned <= MAX_GUESTS:
        parser.error(f"--pinned must be between 0 and {MAX_GUESTS}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 1 <= args.max_runs <= 20:
        parser.error("--max-runs must be between 1 and 20")
    if args.timeout < 60:
        parser.error("--timeout must be at least 60")
    return args


# --- remote shell lines (pure) -------------------------------------------------------


def strace_start_line(pids: list[int]) -> str:
    """Start strace on ``pids`` detached from the ssh session; wait until it traces them all.

    The wrapper shell writes its pid and execs strace, so the pidfile names strace itself.
    Prints "attached" once every still-living pid has strace as its tracer, else exits 1.
    """
    if not pids:
        raise ValueError("no pid to trace")
    attach = " ".join(f"-p {int(p)}" for p in pids)
    inner = f"echo $$ > {STRACE_PID}; exec strace {' '.join(STRACE_OPTIONS)} -o {STRACE_OUT} {attach}"
    plist = " ".join(str(int(p)) for p in pids)
    polls = ATTACH_TIMEOUT * 10
    return (
        f"rm -f {STRACE_OUT} {STRACE_ERR} {STRACE_PID}; "
        f"setsid nohup sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>{STRACE_ERR} & "
        f"i=0; while [ $i -lt {polls} ]; do i=$((i+1)); sleep 0.1; "
        f"S=$(cat {STRACE_PID} 2>/dev/null); [ -n \"$S\" ] && [ -e {STRACE_OUT} ] || continue; "
        f"kill -0 $S 2>/dev/null || {{ echo 'strace exited:'; cat {STRACE_ERR}; exit 1; }}; "
        f"ok=1; for p in {plist}; do [ -e /proc/$p ] || continue; "
        f"t=$(awk '/^TracerPid:/{{print $2}}' /proc/$p/status 2>/dev/null); "
        f"[ \"$t\" = \"$S\" ] || ok=0; done; "
        f"[ $ok = 1 ] && {{ sleep 1; echo attached $S; exit 0; }}; done; "
        f"echo 'strace did not attach in {ATTACH_TIMEOUT} s:'; cat {STRACE_ERR}; exit 1"
    )


def strace_stop_line(cat: bool) -> str:
    """Stop the benchmark's strace (SIGINT: it detaches and flushes) if it runs; then print its output."""
    stop = (
        f"S=$(cat {STRACE_PID} 2>/dev/null); "
        f"if [ -n \"$S\" ] && [ \"$(cat /proc/$S/comm 2>/dev/null)\" = strace ]; then kill -INT $S; "
        f"i=0; while kill -0 $S 2>/dev/null && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done; "
        f"kill -0 $S 2>/dev/null && kill -KILL $S; fi; rm -f {STRACE_PID}"
    )
    if cat:
        return f"{stop}; cat {STRACE_OUT}"
    return f"{stop}; rm -f {STRACE_OUT} {STRACE_ERR}"


# Bench LVs are named like the lab's (<guest>.<disk>.<node>); the list is read with LC_ALL=C.
NODE_OBJECTS_LINE = ("echo '--- domains'; xl list | awk 'NR>1{print $1}'; echo '--- lvs'; "
                     f"LC_ALL=C lvs --noheadings -o lv_name {GUEST_VG} 2>/dev/null | awk '{{print $1}}'")


def parse_node_objects(text: str) -> tuple[list[str], list[str]]:
    """(domains, LVs) from NODE_OBJECTS_LINE's output."""
    section, out = None, {"domains": [], "lvs": []}
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("--- "):
            section = line[4:]
        elif line and section in out:
            out[section].append(line)
    return out["domains"], out["lvs"]


# --- on the host ---------------------------------------------------------------------


def _lab_modules():
    sys.path.insert(0, str(REPO))
    from lab import config, nodes, state  # pylint: disable=import-outside-toplevel

    return config, nodes, state


def _lab_master():
    sys.path.insert(0, str(REPO))
    from lab import master  # pylint: disable=import-outside-toplevel

    return master


def _say(started: float, msg: str) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {msg}", flush=True)


def _tail(text: str, lines: int = 8) -> str:
    return "\n  ".join((text or "").strip().splitlines()[-lines:])


class Lab:
    """The lab through its CLI (`python -m lab ...`), as an operator drives it."""

    def lab(self, *argv: str, timeout: float, env: dict | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run([sys.executable, "-m", "lab", *argv], cwd=REPO, env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`python -m lab {' '.join(argv[:3])} ...` took longer than {timeout:.0f} s") from exc
        if check and proc.returncode != 0:
            raise BenchError(f"`python -m lab {' '.join(argv)}` failed (exit {proc.returncode}):\n  "
                             f"{_tail(proc.stderr or proc.stdout)}")
        return proc

    def ssh(self, node: str, line: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab("ssh", node, line, timeout=timeout, check=check)

    def salt(self, target: list[str] | str, *argv: str, timeout: float) -> tuple[dict, float]:
        """salt through the lab master: (JSON return, seconds on the host around the call)."""
        tgt = ["-L", ",".join(target)] if isinstance(target, list) else [target]
        begun = time.perf_counter()
        proc = self.lab("salt", *tgt, *argv, "--out=json", f"--timeout={int(timeout)}",
                        timeout=timeout + 120, check=False)
        seconds = time.perf_counter() - begun
        try:
            data = _lab_master().minion_returns(proc.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"salt {' '.join(tgt)} {' '.join(argv)}: no JSON (exit {proc.returncode}):\n  "
                             f"{_tail(proc.stdout)}\n  {_tail(proc.stderr)}") from None
        return (data if isinstance(data, dict) else {}), seconds

    def master(self, pillar_root: Path | None) -> None:
        """`python -m lab master` on ``pillar_root`` (None: the repo's pillar); restarts it if that changed."""
        env = {k: v for k, v in os.environ.items() if k != PILLAR_ENV}
        if pillar_root is not None:
            env[PILLAR_ENV] = str(pillar_root)
        self.lab("master", timeout=1200, env=env)


def check_lab() -> None:
    """node1 and node2 run and answer ssh; else BenchError. Never starts anything."""
    config, nodes, _ = _lab_modules()
    for name in NODES:
        node = config.node_by_name(name)
        if not nodes.pid(node, cleanup=False):
            raise BenchError(f"{name} is not running; start the lab first (`python -m lab up`, on fresh "
                             "dom0s: `python -m lab down --wipe` before)")
        try:
            proc = nodes.ssh(node, "xl list >/dev/null", timeout=60, check=False)
        except Exception as exc:  # noqa: BLE001 - lab errors (no key, no image)
            raise BenchError(f"{name}: {exc}") from exc
        if proc.returncode != 0:
            raise BenchError(f"{name} does not answer ssh on 127.0.0.1:{node.ssh_port}; "
                             "wait until `python -m lab status` shows it ready")


def write_pillar(root: Path, model: dict) -> None:
    for rel, text in pillar_files(model).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def refresh(lab: Lab, count: int, started: float) -> None:
    """sync_all and refresh_pillar on both nodes; both must then see exactly the bench guests."""
    ret, _ = lab.salt(list(NODES), "saltutil.sync_all", timeout=600)
    missing = [n for n in NODES if not isinstance(ret.get(n), dict)]
    if missing:
        raise BenchError(f"saltutil.sync_all: no answer from {', '.join(missing)}: {ret}")
    ret, _ = lab.salt(list(NODES), "saltutil.refresh_pillar", "wait=True", "timeout=300", timeout=600)
    if any(ret.get(n) is not True for n in NODES):
        raise BenchError(f"saltutil.refresh_pillar: {ret}")
    ret, _ = lab.salt(list(NODES), "pillar.get", "xencluster:guests", timeout=300)
    want = set(guest_names(count))
    for node in NODES:
        seen = set((ret.get(node) or {}).keys()) if isinstance(ret.get(node), dict) else set()
        if seen != want:
            raise BenchError(f"{node}'s pillar has guests {sorted(seen)}, expected b01..b{count:02d}: "
                             "is the master on the bench pillar?")
    _say(started, f"pillar with {count} guest(s) synced on {', '.join(NODES)}")


def converge(lab: Lab, max_runs: int, timeout: int, started: float) -> dict:
    """state.highstate on both nodes until one run changes nothing and every state succeeds."""
    seconds, problems = [], []
    for run in range(1, max_runs + 1):
        ret, took = lab.salt(list(NODES), "state.highstate", timeout=timeout)
        seconds.append(round(took, 1))
        ok, problems = converged(ret, NODES)
        _say(started, f"highstate {run} on {', '.join(NODES)}: {took:.0f} s, "
                      f"{'converged' if ok else f'{len(problems)} change(s) or failure(s)'}")
        if ok:
            return {"runs": run, "seconds": seconds}
    raise BenchError(f"not converged after {max_runs} highstates; last run:\n  " + "\n  ".join(problems))


def check_node_objects(lab: Lab, count: int, started: float) -> dict:
    out = lab.ssh(MEASURED, NODE_OBJECTS_LINE, timeout=120).stdout
    domains, lvs = parse_node_objects(out)
    left = leftovers(domains, lvs, count)
    if left["bench"]:
        raise BenchError(f"{MEASURED} holds bench objects beyond b{count:02d} (a larger earlier run): "
                         f"{', '.join(left['bench'][:10])}; wipe the lab (`python -m lab down --wipe`, "
                         "`python -m lab up`) and run again")
    if left["foreign"]:
        _say(started, f"note: {MEASURED} also holds objects not from this benchmark (the lab was not "
                      f"fresh): {', '.join(left['foreign'][:10])}")
    bench_domains = sorted(d for d in domains if _GUEST_RE.fullmatch(d))
    return {"bench_domains": bench_domains, "bench_lvs": sorted(l for l in lvs if _BENCH_LV_RE.fullmatch(l)),
            "foreign": left["foreign"]}


def node_highstate(lab: Lab, timeout: int, what: str) -> tuple[dict, float]:
    """One highstate of node1; it must change nothing and succeed (converged)."""
    ret, took = lab.salt(MEASURED, "state.highstate", timeout=timeout)
    ok, problems = converged(ret, [MEASURED])
    if not ok:
        raise BenchError(f"{what}: the highstate of {MEASURED} was not converged:\n  " + "\n  ".join(problems))
    return highstate_summary(ret[MEASURED]), took


def count_commands(lab: Lab, timeout: int, started: float) -> tuple[dict, float, int]:
    """(commands summary, seconds of the traced highstate, states) from one highstate under strace."""
    pids = parse_pids(lab.ssh(MEASURED, "pgrep -f '[s]alt-minion'", timeout=60).stdout)
    if not pids:
        raise BenchError(f"no salt-minion process on {MEASURED}")
    try:
        proc = lab.ssh(MEASURED, strace_start_line(pids), timeout=ATTACH_TIMEOUT + 60, check=False)
        if proc.returncode != 0 or "attached" not in proc.stdout:
            raise BenchError(f"strace on {MEASURED} (salt-minion pids {pids}):\n  {_tail(proc.stdout + proc.stderr)}")
        _say(started, f"strace attached to salt-minion pids {pids} on {MEASURED}; highstate under strace")
        summary, took = node_highstate(lab, timeout, "under strace")
        text = lab.ssh(MEASURED, strace_stop_line(cat=True), timeout=300).stdout
    finally:
        lab.ssh(MEASURED, strace_stop_line(cat=False), timeout=120, check=False)
    commands = summarize_commands(parse_strace(text))
    _say(started, f"{commands['total']} commands in {took:.0f} s: {commands['by_binary']}")
    return commands, took, summary["states"]


def measure(lab: Lab, args: argparse.Namespace, pillar_root: Path, lab_model: dict, started: float,
            phases: dict) -> dict:
    scenarios = {}
    for i, count in enumerate(args.counts):
        t = time.monotonic()
        if i == 0:  # fail early on a dom0 an earlier, larger run left guests on
            check_node_objects(lab, count, started)
        write_pillar(pillar_root, bench_model(lab_model, count, args.pinned))
        if i == 0:
            lab.master(pillar_root)
            _say(started, f"lab master on pillar root {pillar_root}")
        refresh(lab, count, started)
        conv = converge(lab, args.max_runs, args.timeout, started)
        phases[f"converge_{count}"] = round(time.monotonic() - t, 1)
        objects = check_node_objects(lab, count, started)
        t = time.monotonic()
        commands, traced_s, states = count_commands(lab, args.timeout, started)
        walls, durations = [], []
        for r in range(1, args.repeat + 1):
            summary, took = node_highstate(lab, args.timeout, f"timed run {r}")
            walls.append(took)
            durations.append(summary["duration_ms"])
            _say(started, f"{count} guest(s): highstate {r}/{args.repeat} of {MEASURED}: {took:.1f} s "
                          f"(states {summary['duration_ms'] / 1000:.1f} s)")
        phases[f"measure_{count}"] = round(time.monotonic() - t, 1)
        scenarios[scenario_key(count)] = scenario(count, commands, traced_s, walls, durations, states, conv,
                                                  objects, args.pinned)
    return scenarios


def _git() -> dict:
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _host() -> dict:
    return {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(), "name": socket.gethostname(),
            "python": platform.python_version()}


def _raise_interrupt(signum, frame):  # SIGTERM: restore the master like Ctrl-C does
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    when = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    try:
        check_lab()
    except BenchError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    config, _, state = _lab_modules()
    pillar_root = (args.pillar_dir or config.LAB_DIR / "bench-pillar").resolve()
    lab_model = yaml.safe_load(LAB_MODEL.read_text())
    lab = Lab()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    phases, failure, scenarios = {}, None, {}
    try:
        scenarios = measure(lab, args, pillar_root, lab_model, started, phases)
    except KeyboardInterrupt:
        failure = "interrupted"
    except BenchError as exc:
        failure = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or a lab error: still restore the master
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        restored = True
        try:
            _say(started, "putting the lab master back on the repo's pillar")
            lab.master(None)
        except BenchError as exc:
            restored = False
            print(f"{NAME}: could not put the master back on the repo's pillar "
                  f"(run `python -m lab master` without {PILLAR_ENV}): {exc}", file=sys.stderr)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if failure:
        print(f"{NAME}: {failure}", file=sys.stderr)
        return 130 if failure == "interrupted" else 1
    phases["total"] = round(time.monotonic() - started, 1)
    result = assemble(command=" ".join([Path(sys.executable).name, *sys.argv]), when=when, git=_git(),
                      host=_host(), lab={"image_key": state.load().get("image_key"),
                                         "lab_dir": str(config.LAB_DIR), "pillar_root": str(pillar_root)},
                      args=args, counts=args.counts, scenarios=scenarios, phases_s=phases)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = result_path(args.results_dir, when)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(format_summary(result))
    print(f"written to {out}")
    return 0 if restored else 1


if __name__ == "__main__":
    sys.exit(main())
