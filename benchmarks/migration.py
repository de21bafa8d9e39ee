#!/usr/bin/env python3
"""Migration overhead and transport: salt-run vs raw xl migrate, stream vs ssh vs a raw socat copy.

    .venv/bin/python benchmarks/migration.py [--guest web1] [--rounds 2] [--settle 5]

The issue's two goals, for one guest (default web1, 128M, home on node1):

* overhead: ``salt-run xencluster.migrate <guest> <target>`` wall time / raw ``xl
  migrate <guest> <target>`` wall time <= 1.25 (per transport: ssh and stream);
* transport: a stream migration moves the guest's memory at >= 0.8 of the rate of a
  raw socat copy of as many bytes over the same SAN link (socat_copy_s / stream_s).

Needs a RUNNING two-node lab converged by the cluster highstate, the lab master up
and the guest running at home (its model node), not drained; else it refuses with
one line (exit 2). Never starts or stops nodes or the master.

Each round: for each method, in order, a round trip home -> partner -> home of the
guest, each hop checked with ``salt-run xencluster.locate`` (the guest on the target
only), then one socat copy home -> partner. Methods:

* ``raw_ssh``: ``xl migrate <guest> <target>`` on the source dom0 over ``python -m
  lab ssh``, timed there with ``date +%s.%N`` around it;
* ``saltrun_ssh``: ``salt-run xencluster.migrate <guest> <target> transport=ssh``,
  timed on this host around ``python -m lab salt-run`` (the runner's duration_s
  and the module's xl_duration_s recorded too);
* ``raw_stream``: through Salt but without the runner: ``xencluster_xl.stream_receive``
  on the target (port 31100, outside the runner's 31000-31099), ``xencluster_xl.migrate
  ... transport=stream`` on the source, whose duration_s (xl migrate alone, on the
  source) is the time; then ``xencluster_xl.stream_stop`` on the target;
* ``saltrun_stream``: as saltrun_ssh with ``transport=stream``.

Bytes: the guest's memory (``xl list -l``, b_info.target_memkb). An ESTIMATE of what
a migration moves: xl also sends the pages the guest dirties during each round, and
some headers. The copy: ``head -c <bytes> /dev/zero`` through socat to a one-shot
socat listener on the target's SAN address (port 31101, accepting the source's SAN
address only) that counts what it got; timed on the sender until the listener closed.

Traffic goes only over the lab's SAN (192.168.100.0/24) and to this host's loopback
(the lab's ssh and salt). On any failure it stops, says where the guest is, and writes
no result. Results go to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
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

NAME = "migration"
METHODS = ("raw_ssh", "saltrun_ssh", "raw_stream", "saltrun_stream")
DEFAULT_GUEST = "web1"
DEFAULT_ROUNDS = 2
MAX_ROUNDS = 20
DEFAULT_SETTLE = 5  # seconds the guest runs on after each hop: no back-to-back migrations
DEFAULT_TIMEOUT = 900  # seconds for one migration (and one copy)
OVERHEAD_GOAL = 1.25  # salt-run / raw xl, at most
COPY_GOAL = 0.8  # socat copy time / stream migration time, at least
MB = 1_000_000  # MB/s in the results are 10^6 bytes per second

SAN_NETWORK = ipaddress.ip_network("192.168.100.0/24")  # lab/config.py SAN_NET: the only network used
# The runner takes 31000-31099 for its listeners; this benchmark stays in 31100-31199.
BENCH_PORTS = range(31100, 31200)
STREAM_PORT = 31100
COPY_PORT = 31101
ACCEPT_TIMEOUT = 60  # seconds a listener waits for its one connection
COPY_FILES = "/var/tmp/xcbench-copy-{port}"  # .pid .count .log on the target

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
_DATE_PAIR_RE = re.compile(r"([0-9]+\.[0-9]{9}) ([0-9]+\.[0-9]{9})")
_COUNT_RE = re.compile(r"count ([0-9]*)")


class BenchError(Exception):
    """A step failed; the message says which and where."""


class NotReady(BenchError):
    """The lab is not in the state the benchmark starts from (exit 2)."""


# --- names and addresses (pure) ------------------------------------------------------


def check_name(value, what: str) -> str:
    """A guest, node or minion name that may go into a shell line: ^[a-z][a-z0-9-]{0,30}$."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {what} name {value!r} (1-31 of a-z 0-9 '-', starting with a letter)")
    return value


def san_ip(value) -> str:
    """An IPv4 address on the lab's SAN, as text; anything else raises (the network rule)."""
    try:
        ip = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ValueError(f"not an IPv4 address: {value!r}") from None
    if ip not in SAN_NETWORK or ip in (SAN_NETWORK.network_address, SAN_NETWORK.broadcast_address):
        raise ValueError(f"{ip} is not a host of the lab SAN {SAN_NETWORK}")
    return str(ip)


def check_port(port) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or port not in BENCH_PORTS:
        raise ValueError(f"port must be in {BENCH_PORTS.start}-{BENCH_PORTS.stop - 1}: {port!r}")
    return port


def check_bytes(nbytes) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 < nbytes < 1 << 40:
        raise ValueError(f"byte count must be a positive integer below 1 TiB: {nbytes!r}")
    return nbytes


def _node_san_ips(spec: dict) -> list[ipaddress.IPv4Interface]:
    out = []
    for entry in (spec or {}).get("san") or []:
        try:
            out.append(ipaddress.IPv4Interface(str((entry or {}).get("address"))))
        except ValueError:
            continue
    return out


def _shared_san(source: dict, target: dict) -> tuple[str, str]:
    """(target SAN ip, source SAN ip) in one subnet, both on the lab SAN."""
    for dst in _node_san_ips(target):
        for src in _node_san_ips(source):
            if src.ip in dst.network:
                return san_ip(dst.ip), san_ip(src.ip)
    raise ValueError("no SAN subnet shared by the two nodes")


def _pair_of(guest: dict) -> list[str]:
    pairs = {tuple(sorted(disk.get("nodes") or guest.get("nodes") or [])) for disk in guest.get("disks") or []}
    if len(pairs) != 1 or len(next(iter(pairs))) != 2:
        raise ValueError(f"its disks are not all on one pair of nodes: {sorted(pairs)}")
    return list(next(iter(pairs)))


def plan_from_model(lab_pillar: dict, guest: str) -> dict:
    """Source (the guest's home), target (the other node of its pair), minions and SAN ips, all checked."""
    model = (lab_pillar or {}).get("xencluster") or {}
    check_name(guest, "guest")
    spec = (model.get("guests") or {}).get(guest)
    if not isinstance(spec, dict):
        raise ValueError(f"guest {guest} is not in the lab model")
    source = check_name(spec.get("node"), f"{guest}'s home node")
    pair = _pair_of(spec)
    if source not in pair:
        raise ValueError(f"{guest}'s home {source} is not in its pair {pair}")
    target = check_name(next(n for n in pair if n != source), "node")
    nodes = model.get("nodes") or {}
    if source not in nodes or target not in nodes:
        raise ValueError(f"{source} or {target} is not a node of the lab model")
    target_ip, source_ip = _shared_san(nodes[source], nodes[target])
    return {"guest": guest, "source": source, "target": target, "nodes": {
        source: {"minion": check_name(nodes[source].get("minion", source), "minion"), "ip": source_ip},
        target: {"minion": check_name(nodes[target].get("minion", target), "minion"), "ip": target_ip},
    }}


def hops(plan: dict) -> list[tuple[str, str]]:
    """One round trip: home -> partner -> home."""
    return [(plan["source"], plan["target"]), (plan["target"], plan["source"])]


# --- remote shell lines (pure) -------------------------------------------------------


def raw_ssh_migrate_line(guest: str, target: str) -> str:
    """xl migrate on the source, its own output to stderr; stdout: "<start> <end>" (date +%s.%N)."""
    guest, target = check_name(guest, "guest"), check_name(target, "node")
    return (f"s=$(date +%s.%N); xl migrate {guest} {target} >&2; rc=$?; e=$(date +%s.%N); "
            'echo "$s $e"; exit $rc')


def xl_memory_line(guest: str) -> str:
    return f"xl list -l {check_name(guest, 'guest')}"


def _copy_paths(port: int) -> dict:
    base = COPY_FILES.format(port=check_port(port))
    return {"pid": f"{base}.pid", "count": f"{base}.count", "log": f"{base}.log"}


def copy_listen_line(port: int, bind: str, allow_from: str, lifetime: int) -> str:
    """A one-shot socat listener on the target, detached, counting what it receives; waits until it listens.

    ``timeout`` bounds its life (a sender that dies mid-way); the wrapper shell writes its
    pid and execs timeout, so the pidfile names it. Prints "listening", else exits 1.
    """
    paths, bind, allow_from = _copy_paths(port), san_ip(bind), san_ip(allow_from)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 1 <= lifetime <= 86400:
        raise ValueError(f"lifetime must be 1-86400 s: {lifetime!r}")
    listen = (f"TCP4-LISTEN:{port},bind={bind},reuseaddr,accept-timeout={ACCEPT_TIMEOUT},"
              f"range={allow_from}/32")
    argv = ["timeout", str(lifetime), "socat", "-u", listen, f"SYSTEM:wc -c > {paths['count']}"]
    inner = f"echo $$ > {paths['pid']}; exec {shlex.join(argv)}"
    return (f"rm -f {paths['pid']} {paths['count']} {paths['log']}; "
            f"setsid nohup sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>{paths['log']} & "
            f"i=0; while [ $i -lt 100 ]; do i=$((i+1)); "
            f"ss -ltn | grep -qF ' {bind}:{port} ' && {{ echo listening; exit 0; }}; sleep 0.1; done; "
            f"echo 'socat did not listen on {bind}:{port}:'; cat {paths['log']}; exit 1")


def copy_send_line(nbytes: int, address: str, port: int, linger: int) -> str:
    """``nbytes`` zeros to the listener, timed on the sender; stdout: "<start> <end>".

    Not ``socat -u``: after its input ends, this socat waits (up to ``linger`` s) for the
    listener to close, i.e. until the last byte was read there, not only queued here.
    """
    nbytes, address, port = check_bytes(nbytes), san_ip(address), check_port(port)
    if isinstance(linger, bool) or not isinstance(linger, int) or not 1 <= linger <= 86400:
        raise ValueError(f"linger must be 1-86400 s: {linger!r}")
    return (f"s=$(date +%s.%N); head -c {nbytes} /dev/zero | "
            f"socat -t {linger} - TCP4:{address}:{port},connect-timeout=10 >/dev/null; rc=$?; "
            'e=$(date +%s.%N); echo "$s $e"; exit $rc')


def copy_collect_line(port: int) -> str:
    """On the target: wait (5 s at most) for the listener to end and its count; stop it if still there.

    No pidfile: no wait. Only the pid from the pidfile is signalled, and only while it is
    still ``timeout``; prints "count <n>" (empty: nothing counted) and removes the files.
    """
    paths = _copy_paths(port)
    return (f"P=$(cat {paths['pid']} 2>/dev/null); i=0; "
            f"while [ -n \"$P\" ] && [ $i -lt 50 ] && {{ [ ! -s {paths['count']} ] || "
            f"kill -0 \"$P\" 2>/dev/null; }}; do i=$((i+1)); sleep 0.1; done; "
            f"if [ -n \"$P\" ] && [ \"$(cat /proc/$P/comm 2>/dev/null)\" = timeout ]; then kill \"$P\"; fi; "
            f"echo \"count $(tr -dc 0-9 < {paths['count']} 2>/dev/null)\"; "
            f"rm -f {paths['pid']} {paths['count']} {paths['log']}")


# --- parsing (pure) ------------------------------------------------------------------


def parse_date_pair(stdout: str) -> float:
    """Seconds between the two ``date +%s.%N`` stamps on the last such line."""
    for line in reversed((stdout or "").splitlines()):
        m = _DATE_PAIR_RE.fullmatch(line.strip())
        if m:
            start, end = float(m[1]), float(m[2])
            if end < start:
                raise ValueError(f"the clock went backwards: {line.strip()!r}")
            return end - start
    raise ValueError(f"no '<start> <end>' date line in {(stdout or '')[-200:]!r}")


def parse_xl_memory(stdout: str, guest: str) -> int:
    """The guest's memory in bytes from ``xl list -l`` JSON (b_info.target_memkb, else max_memkb)."""
    try:
        entries = json.loads(stdout)
    except ValueError:
        raise ValueError(f"xl list -l did not print JSON (output_format sxp?): {(stdout or '')[:80]!r}") from None
    for entry in entries if isinstance(entries, list) else []:
        config = (entry.get("config") or {}) if isinstance(entry, dict) else {}
        if (config.get("c_info") or {}).get("name") != guest:
            continue
        b_info = config.get("b_info") or {}
        for key in ("target_memkb", "max_memkb"):
            kb = b_info.get(key)
            if isinstance(kb, int) and not isinstance(kb, bool) and kb > 0:
                return kb * 1024
        raise ValueError(f"xl list -l has no memory size for {guest}")
    raise ValueError(f"xl list -l does not list {guest}")


def parse_copy_count(stdout: str) -> int | None:
    for line in reversed((stdout or "").splitlines()):
        m = _COUNT_RE.fullmatch(line.strip())
        if m:
            return int(m[1]) if m[1] else None
    return None


def placement_problem(located, guest: str, nodes: list[str], expected: str) -> str | None:
    """Why ``locate``'s answer does not show the guest on ``expected`` only (None: it does)."""
    if not isinstance(located, dict):
        return f"xencluster.locate answered {str(located)[:200]!r}"
    silent = [n for n in nodes if n in (located.get("no_answer") or []) or n in (located.get("errors") or {})]
    if silent:
        return f"{', '.join(silent)} did not tell what runs there"
    guests = located.get("guests") or {}
    moving = sorted(g for g in guests if g.startswith(f"{guest}--"))
    if moving:
        return f"a migration of {guest} is in flight ({', '.join(moving)} on {guests[moving[0]]})"
    where = guests.get(guest) or []
    if where != [expected]:
        return f"{guest} runs on {', '.join(where) or 'no node'}, expected on {expected} only"
    return None


def drained_problem(drained, nodes: list[str]) -> str | None:
    if not isinstance(drained, dict):
        return f"xencluster.drained answered {str(drained)[:200]!r}"
    marked = [n for n in nodes if n in drained]
    return f"{', '.join(marked)} drained (salt-run xencluster.undrain <node>)" if marked else None


# --- result (pure) -------------------------------------------------------------------


def samples(values: list[float]) -> dict:
    if not values:
        raise ValueError("no samples")
    return {"samples_s": [round(v, 3) for v in values], "median_s": round(statistics.median(values), 3)}


def _rate(nbytes: int, seconds: float | None) -> float | None:
    return round(nbytes / seconds / MB, 2) if seconds else None


def method_summary(hop_records: list[dict], nbytes: int) -> dict:
    """One method's hops: the timed seconds ``s`` (and, for salt-run, runner_s and xl_s)."""
    out = {**samples([h["s"] for h in hop_records]), "hops": hop_records}
    out["mb_per_s"] = _rate(nbytes, out["median_s"])
    for key in ("runner_s", "xl_s"):
        values = [h[key] for h in hop_records if isinstance(h.get(key), (int, float))]
        if values:
            out[key] = samples(values)
    if "xl_s" in out:
        out["xl_mb_per_s"] = _rate(nbytes, out["xl_s"]["median_s"])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(methods: dict, copy: dict) -> dict:
    med = {name: methods[name]["median_s"] for name in methods}
    return {
        "overhead_ssh": _ratio(med.get("saltrun_ssh"), med.get("raw_ssh")),
        "overhead_stream": _ratio(med.get("saltrun_stream"), med.get("raw_stream")),
        "stream_speedup_raw": _ratio(med.get("raw_ssh"), med.get("raw_stream")),
        "stream_speedup_saltrun": _ratio(med.get("saltrun_ssh"), med.get("saltrun_stream")),
        "copy_over_stream": _ratio(copy.get("median_s"), med.get("raw_stream")),
        # the same with the runner's stream migrations, xl migrate alone (the module's duration_s)
        "copy_over_stream_saltrun_xl": _ratio(copy.get("median_s"),
                                              (methods.get("saltrun_stream", {}).get("xl_s") or {}).get("median_s")),
    }


def goals(r: dict) -> list[dict]:
    def one(name, what, op, limit):
        value = r.get(name)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        return {"name": name, "what": what, "value": value, "goal": f"{op} {limit}", "met": met}

    return [
        one("overhead_ssh", "salt-run migrate transport=ssh / raw xl migrate (ssh)", "<=", OVERHEAD_GOAL),
        one("overhead_stream", "salt-run migrate transport=stream / raw xl migrate over stream", "<=",
            OVERHEAD_GOAL),
        one("copy_over_stream", "raw socat copy time / raw stream migration time (throughput ratio)", ">=",
            COPY_GOAL),
    ]


METHOD_TEXT = {
    "raw_ssh": "xl migrate <guest> <target> on the source dom0 (python -m lab ssh), timed there: date +%s.%N "
               "before and after",
    "saltrun_ssh": "salt-run xencluster.migrate <guest> <target> transport=ssh, timed on the host around "
                   "python -m lab salt-run (runner_s: its duration_s, xl_s: its xl_duration_s)",
    "raw_stream": f"salt <target> xencluster_xl.stream_receive {STREAM_PORT} <target SAN ip> <source SAN ip>, "
                  "salt <source> xencluster_xl.migrate <guest> <target> transport=stream "
                  f"stream_address=<target SAN ip>:{STREAM_PORT}: its duration_s (xl migrate alone, timed by the "
                  "module on the source), then xencluster_xl.stream_stop on the target",
    "saltrun_stream": "as saltrun_ssh with transport=stream",
    "copy": f"head -c <bytes> /dev/zero | socat -t <s> - TCP4:<target SAN ip>:{COPY_PORT} on the source into "
            f"socat -u TCP4-LISTEN:{COPY_PORT},bind=<target SAN ip>,range=<source SAN ip>/32 SYSTEM:'wc -c' on "
            "the target, timed on the sender until the listener closed; the count must be <bytes>",
}


def assemble(*, command: str, when: dt.datetime, git: dict, host: dict, lab: dict, args: argparse.Namespace,
             plan: dict, nbytes: int, hop_records: dict, copy_s: list[float], phases_s: dict) -> dict:
    methods = {name: method_summary(hop_records[name], nbytes) for name in METHODS if hop_records.get(name)}
    copy = {**samples(copy_s), "bytes": nbytes, "mb_per_s": _rate(nbytes, statistics.median(copy_s))}
    r = ratios(methods, copy)
    return {
        "benchmark": NAME, "command": command, "date": when.isoformat(timespec="seconds"), "git": git,
        "host": host, "lab": lab, "guest": plan["guest"], "source": plan["source"], "target": plan["target"],
        "nodes": plan["nodes"], "rounds": args.rounds, "settle_s": args.settle,
        "ports": {"stream": STREAM_PORT, "copy": COPY_PORT},
        "bytes": {"value": nbytes, "how": "xl list -l <guest> on the source: b_info.target_memkb * 1024",
                  "note": "an estimate of what one migration moves: xl also resends the pages the guest "
                          "dirties during each round, and headers"},
        "method": METHOD_TEXT, "methods": methods, "copy": copy, "ratios": r, "goals": goals(r),
        "phases_s": phases_s,
    }


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(result: dict) -> str:
    mib = result["bytes"]["value"] / 2**20
    lines = [f"{result['guest']} {result['source']} <-> {result['target']}, {mib:.0f} MiB per migration "
             f"(estimate), {result['rounds']} round(s)",
             f"{'method':<15} {'hops':>4} {'median s':>9} {'MB/s':>7} {'xl median s':>12}"]
    for name, m in result["methods"].items():
        xl = (m.get("xl_s") or {}).get("median_s")
        lines.append(f"{name:<15} {len(m['samples_s']):>4} {m['median_s']:>9.2f} {_fmt(m['mb_per_s']):>7} "
                     f"{_fmt(xl):>12}")
    c = result["copy"]
    lines.append(f"{'socat copy':<15} {len(c['samples_s']):>4} {c['median_s']:>9.2f} {_fmt(c['mb_per_s']):>7}")
    for key, value in result["ratios"].items():
        lines.append(f"ratio {key}: {_fmt(value, '.3f')}")
    for g in result["goals"]:
        verdict = "not measured" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        lines.append(f"goal {g['name']} {g['goal']}: {_fmt(g['value'], '.3f')} {verdict}")
    return "\n".join(lines)


def result_path(results_dir: Path, when: dt.datetime) -> Path:
    return Path(results_dir) / f"{NAME}-{when:%Y%m%d-%H%M%S}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest", default=DEFAULT_GUEST,
                        help="the guest, from the lab model; it must run at home (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="round trips per method, and socat copies (default %(default)s)")
    parser.add_argument("--settle", type=int, default=DEFAULT_SETTLE,
                        help="seconds the guest runs after each hop before the next (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help="seconds for one migration or copy (default %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        check_name(args.guest, "guest")
    except ValueError as exc:
        parser.error(f"--guest: {exc}")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be between 1 and {MAX_ROUNDS}")
    if not 0 <= args.settle <= 600:
        parser.error("--settle must be between 0 and 600")
    if not 60 <= args.timeout <= 7200:
        parser.error("--timeout must be between 60 and 7200")
    return args


# --- on the host ---------------------------------------------------------------------


def _lab_modules():
    if str(REPO) not in sys.path:  # called for every salt-run's output (json_documents): once is enough
        sys.path.insert(0, str(REPO))
    from lab import config, master, nodes, state  # pylint: disable=import-outside-toplevel

    return config, master, nodes, state


def json_documents(text: str) -> list:
    """Every JSON document salt-run printed (lab.master.json_documents)."""
    return _lab_modules()[1].json_documents(text)


def _say(started: float, msg: str) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {msg}", flush=True)


def _tail(text: str, lines: int = 8) -> str:
    return "\n  ".join((text or "").strip().splitlines()[-lines:])


class Lab:
    """The lab through its CLI (`python -m lab ...`), as an operator drives it."""

    def lab(self, *argv: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run([sys.executable, "-m", "lab", *argv], cwd=REPO, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`python -m lab {' '.join(argv[:3])} ...` took longer than {timeout:.0f} s") from exc
        if check and proc.returncode != 0:
            raise BenchError(f"`python -m lab {' '.join(argv)}` failed (exit {proc.returncode}):\n  "
                             f"{_tail(proc.stderr or proc.stdout)}")
        return proc

    def ssh(self, node: str, line: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab("ssh", node, line, timeout=timeout, check=check)

    def salt(self, minion: str, *argv: str, timeout: float) -> tuple[object, float]:
        """One minion's return of a salt call through the lab master, and the seconds around it."""
        begun = time.perf_counter()
        proc = self.lab("salt", minion, *argv, "--out=json", f"--timeout={int(timeout)}",
                        timeout=timeout + 120, check=False)
        seconds = time.perf_counter() - begun
        try:
            docs = json_documents(proc.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"salt {minion} {' '.join(argv)}: no JSON (exit {proc.returncode}):\n  "
                             f"{_tail(proc.stdout)}\n  {_tail(proc.stderr)}") from None
        merged = {k: v for doc in docs if isinstance(doc, dict) for k, v in doc.items()}
        return merged.get(minion), seconds

    def salt_run(self, *argv: str, timeout: float) -> tuple[int, object, float]:
        """(exit status, the return: the last JSON document, seconds on the host around the call)."""
        begun = time.perf_counter()
        proc = self.lab("salt-run", *argv, "--out=json", f"--timeout={int(timeout)}", timeout=timeout + 120,
                        check=False)
        seconds = time.perf_counter() - begun
        try:
            docs = json_documents(proc.stdout)
        except json.JSONDecodeError:
            docs = []
        if not docs:
            raise BenchError(f"salt-run {' '.join(argv)}: no JSON (exit {proc.returncode}):\n  "
                             f"{_tail(proc.stdout)}\n  {_tail(proc.stderr)}")
        return proc.returncode, docs[-1], seconds


def check_processes(lab: Lab, plan: dict) -> None:
    """Both nodes run and answer ssh, the master runs; else NotReady. Never starts anything."""
    config, master, nodes, _ = _lab_modules()
    for name in (plan["source"], plan["target"]):
        try:
            node = config.node_by_name(name)
        except ValueError as exc:
            raise NotReady(f"{name}: {exc}") from None
        if not nodes.pid(node, cleanup=False):
            raise NotReady(f"{name} is not running; start the lab and converge it first "
                           "(`python -m lab up`, `python -m lab master`, the cluster highstate)")
        if lab.ssh(name, "xl list >/dev/null", timeout=60, check=False).returncode != 0:
            raise NotReady(f"{name} does not answer ssh and xl list; wait until `python -m lab status` "
                           "shows it ready")
    if not master.running(cleanup=False):
        raise NotReady("the lab master is not running (`python -m lab master`)")


def _minions(plan: dict) -> list[str]:
    return [plan["nodes"][n]["minion"] for n in (plan["source"], plan["target"])]


def locate(lab: Lab, plan: dict):
    minions = ",".join(_minions(plan))
    _, located, _ = lab.salt_run("xencluster.locate", f"tgt={minions}", "tgt_type=list", f"expect={minions}",
                                 timeout=120)
    return located


def check_placement(lab: Lab, plan: dict, expected: str, error=BenchError) -> None:
    # locate names minions, not nodes
    problem = placement_problem(locate(lab, plan), plan["guest"], _minions(plan),
                                plan["nodes"][expected]["minion"])
    if problem:
        raise error(problem)


def check_ready(lab: Lab, plan: dict) -> None:
    """The lab runs, the master answers, neither node is drained, the guest runs at home only."""
    check_processes(lab, plan)
    try:
        code, drained, _ = lab.salt_run("xencluster.drained", timeout=60)
        problem = drained_problem(drained, [plan["source"], plan["target"]]) if code == 0 else \
            f"salt-run xencluster.drained exited {code}"
        if problem:
            raise NotReady(problem)
        check_placement(lab, plan, plan["source"], NotReady)
    except NotReady:
        raise
    except BenchError as exc:
        raise NotReady(str(exc).splitlines()[0]) from exc


def guest_bytes(lab: Lab, plan: dict) -> int:
    out = lab.ssh(plan["source"], xl_memory_line(plan["guest"]), timeout=60).stdout
    try:
        return parse_xl_memory(out, plan["guest"])
    except ValueError as exc:
        raise BenchError(f"{plan['source']}: {exc}") from None


def hop_raw_ssh(lab: Lab, plan: dict, src: str, dst: str, timeout: int) -> dict:
    begun = time.perf_counter()
    proc = lab.ssh(src, raw_ssh_migrate_line(plan["guest"], dst), timeout=timeout, check=False)
    host_s = time.perf_counter() - begun
    if proc.returncode != 0:
        raise BenchError(f"xl migrate {plan['guest']} {dst} on {src} failed (exit {proc.returncode}):\n  "
                         f"{_tail(proc.stderr)}")
    try:
        return {"s": parse_date_pair(proc.stdout), "host_s": round(host_s, 3)}
    except ValueError as exc:
        raise BenchError(f"{src}: {exc}") from None


def _saltrun_hop(lab: Lab, plan: dict, dst: str, transport: str, timeout: int) -> dict:
    code, ret, seconds = lab.salt_run("xencluster.migrate", plan["guest"], dst, f"transport={transport}",
                                      timeout=timeout)
    if code != 0 or not isinstance(ret, dict) or ret.get("result") is not True or ret.get("where") != [dst]:
        msg = ret.get("message") if isinstance(ret, dict) else ret
        raise BenchError(f"salt-run xencluster.migrate {plan['guest']} {dst} transport={transport} "
                         f"(exit {code}): {str(msg)[:500]}")
    return {"s": seconds, "runner_s": ret.get("duration_s"), "xl_s": ret.get("xl_duration_s")}


def hop_saltrun_ssh(lab: Lab, plan: dict, src: str, dst: str, timeout: int) -> dict:
    return _saltrun_hop(lab, plan, dst, "ssh", timeout)


def hop_saltrun_stream(lab: Lab, plan: dict, src: str, dst: str, timeout: int) -> dict:
    return _saltrun_hop(lab, plan, dst, "stream", timeout)


def stream_stop(lab: Lab, minion: str) -> object:
    ret, _ = lab.salt(minion, "xencluster_xl.stream_stop", str(STREAM_PORT), timeout=60)
    return ret


def hop_raw_stream(lab: Lab, plan: dict, src: str, dst: str, timeout: int) -> dict:
    s_node, d_node = plan["nodes"][src], plan["nodes"][dst]
    ret, _ = lab.salt(d_node["minion"], "xencluster_xl.stream_receive", str(STREAM_PORT), d_node["ip"],
                      s_node["ip"], f"accept_timeout={ACCEPT_TIMEOUT}", timeout=60)
    if not isinstance(ret, dict) or ret.get("started") is not True:
        raise BenchError(f"xencluster_xl.stream_receive on {dst}: {str(ret)[:500]}")
    try:
        ret, host_s = lab.salt(s_node["minion"], "xencluster_xl.migrate", plan["guest"], dst, "transport=stream",
                               f"stream_address={d_node['ip']}:{STREAM_PORT}", f"stream_from={s_node['ip']}",
                               timeout=timeout)
    finally:
        stopped = stream_stop(lab, d_node["minion"])
    if not isinstance(ret, dict) or ret.get("migrated") is not True or not isinstance(ret.get("duration_s"),
                                                                                        (int, float)):
        raise BenchError(f"xencluster_xl.migrate {plan['guest']} {dst} transport=stream on {src}: {str(ret)[:500]}"
                         f"; stream_stop on {dst}: {str(stopped)[:300]}")
    return {"s": float(ret["duration_s"]), "host_s": round(host_s, 3)}


HOP_FUNCS = {"raw_ssh": hop_raw_ssh, "saltrun_ssh": hop_saltrun_ssh, "raw_stream": hop_raw_stream,
             "saltrun_stream": hop_saltrun_stream}


def copy_once(lab: Lab, plan: dict, nbytes: int, timeout: int) -> float:
    """One socat copy of ``nbytes`` from the source to the target's SAN address; its seconds on the sender."""
    src, dst = plan["nodes"][plan["source"]], plan["nodes"][plan["target"]]
    out = lab.ssh(plan["target"], copy_listen_line(COPY_PORT, dst["ip"], src["ip"], timeout + ACCEPT_TIMEOUT),
                  timeout=60, check=False)
    if out.returncode != 0 or "listening" not in out.stdout:
        raise BenchError(f"the copy listener on {plan['target']}:\n  {_tail(out.stdout + out.stderr)}")
    try:
        sent = lab.ssh(plan["source"], copy_send_line(nbytes, dst["ip"], COPY_PORT, timeout), timeout=timeout + 60,
                       check=False)
    finally:
        got = parse_copy_count(lab.ssh(plan["target"], copy_collect_line(COPY_PORT), timeout=60, check=False).stdout)
    if sent.returncode != 0 or got != nbytes:
        raise BenchError(f"socat copy {plan['source']} -> {dst['ip']}:{COPY_PORT}: exit {sent.returncode}, "
                         f"{got} of {nbytes} bytes arrived:\n  {_tail(sent.stderr)}")
    try:
        return parse_date_pair(sent.stdout)
    except ValueError as exc:
        raise BenchError(f"{plan['source']}: {exc}") from None


def clean_leftovers(lab: Lab, plan: dict) -> None:
    """What a killed run may have left: this benchmark's listeners only (never forced)."""
    for node in (plan["source"], plan["target"]):
        ret = stream_stop(lab, plan["nodes"][node]["minion"])
        if not isinstance(ret, dict):
            raise BenchError(f"xencluster_xl.stream_stop {STREAM_PORT} on {node}: {str(ret)[:300]}")
    lab.ssh(plan["target"], copy_collect_line(COPY_PORT), timeout=60, check=False)


def measure(lab: Lab, args: argparse.Namespace, plan: dict, nbytes: int, started: float, phases: dict
            ) -> tuple[dict, list[float]]:
    records, copies = {name: [] for name in METHODS}, []
    for rnd in range(1, args.rounds + 1):
        t = time.monotonic()
        for method in METHODS:
            for src, dst in hops(plan):
                rec = HOP_FUNCS[method](lab, plan, src, dst, args.timeout)
                check_placement(lab, plan, dst)
                records[method].append({"round": rnd, "from": src, "to": dst, **rec})
                _say(started, f"round {rnd}/{args.rounds} {method} {src} -> {dst}: {rec['s']:.2f} s"
                              + (f" (xl {rec['xl_s']} s)" if rec.get("xl_s") is not None else ""))
                time.sleep(args.settle)
        copies.append(copy_once(lab, plan, nbytes, args.timeout))
        _say(started, f"round {rnd}/{args.rounds} socat copy {plan['source']} -> {plan['target']}: "
                      f"{copies[-1]:.2f} s ({nbytes / copies[-1] / MB:.1f} MB/s)")
        phases[f"round_{rnd}"] = round(time.monotonic() - t, 1)
    return records, copies


def where_now(lab: Lab, plan: dict) -> str:
    """Where the guest is, for the failure message (best effort)."""
    try:
        located = locate(lab, plan)
        where = (located.get("guests") or {}).get(plan["guest"]) if isinstance(located, dict) else None
        return f"{plan['guest']} is left where it is: on {', '.join(where) if where else 'no node seen'}"
    except Exception as exc:  # noqa: BLE001 - only a message
        return f"could not tell where {plan['guest']} is ({exc}); see `salt-run xencluster.locate`"


def _git() -> dict:
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _host() -> dict:
    return {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(), "name": socket.gethostname(),
            "python": platform.python_version()}


def lab_info() -> dict:
    config, _, _, state = _lab_modules()
    return {"image_key": state.load().get("image_key"), "lab_dir": str(config.LAB_DIR)}


def _raise_interrupt(signum, frame):  # SIGTERM: stop like Ctrl-C, cleaning up
    raise KeyboardInterrupt


def prepare(lab: Lab, args: argparse.Namespace) -> dict:
    """The plan from the lab model, and the lab checked; NotReady otherwise."""
    try:
        plan = plan_from_model(yaml.safe_load(LAB_MODEL.read_text()), args.guest)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise NotReady(f"{LAB_MODEL.relative_to(REPO)}: {exc}") from None
    check_ready(lab, plan)
    return plan


def run(lab: Lab, args: argparse.Namespace, plan: dict, started: float, phases: dict):
    clean_leftovers(lab, plan)
    nbytes = guest_bytes(lab, plan)
    _say(started, f"{plan['guest']} on {plan['source']}: {nbytes / 2**20:.0f} MiB of memory; "
                  f"{args.rounds} round(s) of {', '.join(METHODS)}, then a socat copy")
    records, copies = measure(lab, args, plan, nbytes, started, phases)
    return nbytes, records, copies


def measure_safely(lab: Lab, args: argparse.Namespace, plan: dict, started: float, phases: dict):
    """``run``, and on any failure the cleanup: ``(result of run or None, failure or None)``."""
    failure = None
    try:
        return run(lab, args, plan, started, phases), None
    except KeyboardInterrupt:
        failure = "interrupted"
    except BenchError as exc:
        failure = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or a lab error: still say where the guest is
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup is short and bounded
    try:
        clean_leftovers(lab, plan)
    except BenchError as exc:
        print(f"{NAME}: cleanup: {exc}", file=sys.stderr)
    print(f"{NAME}: {failure}\n{NAME}: {where_now(lab, plan)}; no result written", file=sys.stderr)
    return None, failure


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    when, started, lab = dt.datetime.now(dt.timezone.utc), time.monotonic(), Lab()
    try:
        plan = prepare(lab, args)
    except BenchError as exc:
        print(f"{NAME}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_interrupt)
    phases = {}
    try:
        measured, failure = measure_safely(lab, args, plan, started, phases)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        return 130 if failure == "interrupted" else 1
    nbytes, records, copies = measured
    phases["total"] = round(time.monotonic() - started, 1)
    result = assemble(command=" ".join([Path(sys.executable).name, *sys.argv]), when=when, git=_git(),
                      host=_host(), lab=lab_info(), args=args, plan=plan, nbytes=nbytes, hop_records=records,
                      copy_s=copies, phases_s=phases)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = result_path(args.results_dir, when)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(format_summary(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
