#!/usr/bin/env python3
"""Backups and resync, measured in the lab: full backup vs raw dd, incremental vs full, bitmap vs full resync.

    .venv/bin/python benchmarks/backup_resync.py [--rounds 2] [--files 1000] [--only backup|resync]

The issue's three goals, each a ratio of medians over --rounds rounds (every sample kept):

1. ``xencluster_backup.backup_leg`` of a running guest's leg, a FULL backup (empty backup
   directory), against a raw read of the same snapshot (``dd iflag=direct`` of the whole
   snapshot device, as many bytes as the snapshot holds): full / dd <= 1.3;
2. an INCREMENTAL backup after 1 % of the files changed, against the full one:
   incremental / full <= 0.15;
3. md RAID1 in the guest, a leg back after maintenance: re-added with the internal
   write-intent bitmap after a few MiB of writes, against a FULL resync of the same array
   (the leg's md superblock zeroed, added as a new device): bitmap / full <= 0.1, at the
   same sync speed limits (set explicitly: min = max = --sync-kbs, recorded).

Goals are reported (met true/false), never asserted. A measurement that is not what it
claims fails the run loudly: a full backup that did not copy every file, an incremental one
that did not transfer exactly the changed files, a backup whose files' SHA-256 differ from
the guest's, a dd that read less than the snapshot, a bitmap resync that rewrote the whole
leg, a full one that did not, legs whose data differs after a resync.

How it runs: it is a pytest module run by itself (``main`` calls ``pytest.main`` on this
file), so it reuses the lab tier's plumbing instead of copying it: tests/lab_cluster's
conftest.py (the ``lab_cluster`` session fixture) and the ``pairs`` and ``guest_minion``
fixtures of tests/lab_cluster/test_guest_pairs.py are registered as plugins, and its
helpers (``call``, ``run``, ``guest_call``, ``guest_run``, ``array_status``...) do the
work. ``pytest benchmarks/backup_resync.py`` alone finds none of them and fails at once.
Salt-factories' plugins are disabled: nothing here starts Salt daemons, and their log
server and event listener would listen on 0.0.0.0.

Needs a RUNNING two-node lab (``python -m lab up``) in the state test_guest_pairs.py needs:
each node's first data disk free (no VG, e.g. fresh dom0s: ``python -m lab down --wipe``,
``python -m lab up``), no guest or VG left by an earlier run. It refuses with one line
(exit 2) when node1 or node2 is not running; it never boots, stops or wipes nodes. The lab
tier's session fixture runs ``python -m lab build`` (a no-op while the cached image matches
the checkout), ``up 2`` (reuses the running nodes), ``master`` (starts it if needed, and
restarts it on the repo's pillar if it runs on another one) and ``saltutil.sync_all``.

What it changes in the lab, and undoes:

* the ``pairs`` fixture: VG ``xcguest`` on each node's first data disk, two disk pairs
  (``probe.disk0.*`` 64M, unused here, and ``mdg.disk0.*`` 128M), LIO exports and iSCSI
  logins crosswise, all removed at the end; xencluster_disk's udev rules (they stay);
* the ``guest_minion`` fixture: guest ``mdg`` (384M, node1) on node1's per-node guest root
  overlay (its minion identity written into it, its key accepted on the master) and the
  mdg legs; shut down at the end;
* in the guest: md RAID1 ``/dev/md0`` over xvdb (node1's leg) and xvdc (node2's, over
  iSCSI) with a 1 MiB bitmap chunk, ext4 on it with --files files in /mnt/data, then (resync
  part) raw writes to /dev/md0 after unmounting it; per-array sync speed limits;
* on node1: md auto-assembly masked while the backups run, as the formula masks it (a
  rule-less /etc/udev/rules.d/64-md-raid-assembly.rules; only if not masked yet, and then
  removed after), the
  backups in /var/tmp/xcbench-backup (root fs; removed after each round), snapshots
  ``mdg.disk0.node1-xcbk`` (the backup's own, and one made here for dd; both removed),
  the page cache dropped before each timed read.

Traffic: this host's loopback (the lab's ssh and Salt) and the lab's private networks
(the guest's legs over the SAN). Results: benchmarks/results/backup_resync-<UTC>.json,
also when one part failed (``complete: false``, ``errors``), and a summary on stdout.
Exit: 0 every part measured and valid, 1 a failure (a part may still be in the JSON),
2 the lab is not running, 130 interrupted with nothing measured.

Time under TCG (estimated, not yet run): about 5 min of fixtures (sync, two pairs, the
guest's boot) and 2 of teardown, about 1.5 min per backup round and 1.5 per resync round:
12 to 15 min with the defaults; ``--rounds 1`` or ``--only`` for less.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
LAB_TIER = REPO / "tests" / "lab_cluster"

NAME = "backup_resync"
GOALS = {"full_backup/dd": 1.3, "incremental/full_backup": 0.15, "bitmap_resync/full_resync": 0.1}

DEFAULT_ROUNDS, MAX_ROUNDS = 2, 10
DEFAULT_FILES, MIN_FILES, MAX_FILES = 1000, 100, 10000  # names f0000..f9999 (split -a 4)
DEFAULT_FILE_KIB = 64
CHANGED_PERCENT = 1
MAX_DATA_MIB = 80  # the mdg legs are 128M (the pairs fixture); ext4 needs room around the files
DEFAULT_WRITE_MIB = 4
DEFAULT_SYNC_KBS = 20000
INITIAL_SYNC_KBS = (50000, 200000)  # the array's first resync is not measured: as fast as it goes

# What the fixtures build (tests/lab_cluster/test_guest_pairs.py, legs.py).
NODE, PARTNER = "node1", "node2"
LEG_LV = "mdg.disk0.node1"
MD, MD_KNAME = "/dev/md0", "md0"
LEGS = ("/dev/xvdb", "/dev/xvdc")  # node1's leg, node2's (over iSCSI)
RETURNING = LEGS[1]
MOUNT = "/mnt/data"  # test_guest_pairs.guest_sums reads f* there
BACKUP_BASE = "/var/tmp/xcbench-backup"
SPACE_MARGIN = 64 * 2**20
DROP_CACHES = "sync; echo 3 > /proc/sys/vm/drop_caches"
KMSG_TAG = "xcbench"


class Invalid(AssertionError):
    """A measurement is not what it claims to be: the run fails, the number is not recorded."""


# --- arguments and the data set (pure) ------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="repetitions of each measurement (%(default)s)")
    p.add_argument("--files", type=int, default=DEFAULT_FILES, help="files in the guest's filesystem (%(default)s)")
    p.add_argument("--file-kib", type=int, default=DEFAULT_FILE_KIB, help="size of each file, KiB (%(default)s)")
    p.add_argument("--write-mib", type=int, default=DEFAULT_WRITE_MIB,
                   help="MiB written to the array while a leg is away (%(default)s)")
    p.add_argument("--sync-kbs", type=int, default=DEFAULT_SYNC_KBS,
                   help="md sync speed limits during both resyncs, min = max, KiB/s (%(default)s)")
    p.add_argument("--only", choices=("backup", "resync"), help="measure one part only")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (%(default)s)")
    args = p.parse_args(argv)
    problem = args_problem(args)
    if problem:
        p.error(problem)
    return args


def args_problem(args: argparse.Namespace) -> str | None:
    if not 1 <= args.rounds <= MAX_ROUNDS:
        return f"--rounds must be 1..{MAX_ROUNDS}"
    if not MIN_FILES <= args.files <= MAX_FILES:
        return f"--files must be {MIN_FILES}..{MAX_FILES}"
    if not 4 <= args.file_kib <= 1024:
        return "--file-kib must be 4..1024"
    if args.files * args.file_kib > MAX_DATA_MIB * 1024:
        return f"--files x --file-kib must stay under {MAX_DATA_MIB} MiB (the guest's legs are 128M)"
    if not 1 <= args.write_mib <= 32:
        return "--write-mib must be 1..32"
    if not 1000 <= args.sync_kbs <= 10**6:
        return "--sync-kbs must be 1000..1000000"
    return None


def file_name(index: int) -> str:
    """The name ``split -d -a 4`` gives the index-th piece."""
    return f"f{index:04d}"


def changed_files(files: int, round_no: int, percent: int = CHANGED_PERCENT) -> list[str]:
    """``percent`` % of the files (at least one), spread evenly, a different set each round."""
    count = max(1, round(files * percent / 100))
    step = files // count
    return [file_name((k * step + round_no) % files) for k in range(count)]


def write_offset_mib(round_no: int) -> int:
    """Where a round's raw writes go in the array: a fresh region each round (MAX_ROUNDS fit in 128M)."""
    return 16 + 8 * (round_no - 1)


# --- parsing tool output (pure) --------------------------------------------------------

_DD_RE = re.compile(r"^([0-9]+) bytes\b.*copied, ([0-9]+(?:[.,][0-9]+)?(?:e-?[0-9]+)?) s\b", re.M)
_BITMAP_RE = re.compile(r"Bitmap : ([0-9]+) bits \(chunks\), ([0-9]+) dirty")
_CHUNK_RE = re.compile(r"Chunksize : ([0-9]+) (B|KB|MB|GB)\b")
_CHUNK_UNIT = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}  # mdadm prints binary units
_DMESG_RE = re.compile(r"^\[\s*([0-9]+\.[0-9]+)\]\s?(.*)$")


def parse_dd(stderr: str) -> dict:
    """Bytes and seconds from dd's closing line (``134217728 bytes (...) copied, 2.1 s, 64 MB/s``)."""
    m = _DD_RE.search(stderr or "")
    if not m:
        raise ValueError(f"no dd summary in: {(stderr or '').strip()[-300:]!r}")
    return {"bytes": int(m[1]), "seconds": float(m[2].replace(",", "."))}


def parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` output -> {file name: digest}."""
    sums = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def sums_problems(expected: dict[str, str], got: dict[str, str]) -> list[str]:
    """Files missing from ``got``, extra in it, or with another digest (first few of each)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
    problems = []
    for what, names in (("missing", missing), ("unexpected", extra), ("with another SHA-256", differ)):
        if names:
            problems.append(f"{len(names)} file(s) {what}: {', '.join(names[:5])}")
    return problems


def parse_bitmap(text: str) -> dict:
    """``mdadm --examine-bitmap``: bits (chunks), dirty chunks, chunk size in bytes (None when absent)."""
    bits = _BITMAP_RE.search(text or "")
    chunk = _CHUNK_RE.search(text or "")
    return {
        "bits": int(bits[1]) if bits else None,
        "dirty": int(bits[2]) if bits else None,
        "chunk_bytes": int(chunk[1]) * _CHUNK_UNIT[chunk[2]] if chunk else None,
    }


def parse_written_bytes(stat: str) -> int:
    """Bytes written to a disk so far, from ``/sys/block/<dev>/stat`` (field 7: sectors written)."""
    fields = (stat or "").split()
    if len(fields) < 7 or not fields[6].isdigit():
        raise ValueError(f"not a /sys/block/*/stat line: {stat!r}")
    return int(fields[6]) * 512


def parse_sections(text: str) -> dict[str, str]:
    """Output cut by ``--- name`` lines -> {name: text}."""
    sections, name = {}, None
    for line in (text or "").splitlines():
        if line.startswith("--- "):
            name = line[4:].strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return sections


def parse_kernel_resync(dmesg: str, tag: str, md: str = MD_KNAME) -> dict:
    """The md thread's resync after the ``tag`` line, from the guest's kernel log (timestamps in s).

    md logs ``md: recovery of RAID array md0`` when its sync thread starts and ``md: md0:
    recovery done.`` (or ``interrupted.``) when it ends; ``kernel_s`` is the time between.
    Fields stay None when a line is not there (no timestamps, another kernel's wording).
    """
    start_re = re.compile(rf"md: (recovery|resync) of RAID array {re.escape(md)}$")
    out = {"marker": None, "start": None, "end": None, "action": None, "outcome": None, "kernel_s": None}
    for line in (dmesg or "").splitlines():
        m = _DMESG_RE.match(line.rstrip())
        if not m:
            continue
        ts, msg = float(m[1]), m[2]
        if tag in msg:
            out = {**out, "marker": ts, "start": None, "end": None, "action": None, "outcome": None}
        elif out["marker"] is not None and out["start"] is None and start_re.search(msg):
            out["start"], out["action"] = ts, start_re.search(msg)[1]
        elif out["start"] is not None and out["end"] is None:
            end = re.search(rf"md: {re.escape(md)}: {out['action']} (done|interrupted)\.$", msg)
            if end:
                out["end"], out["outcome"] = ts, end[1]
    if out["start"] is not None and out["end"] is not None:
        out["kernel_s"] = round(out["end"] - out["start"], 6)
    return out


def parse_cmp(text: str) -> dict:
    """The after-resync script's cmp section: ``equal`` only when cmp said nothing and exited 0."""
    lines = (text or "").strip().splitlines()
    rc = re.fullmatch(r"rc=([0-9]+)", lines[-1]) if lines else None
    detail = "\n".join(lines[:-1] if rc else lines).strip()
    return {"equal": bool(rc) and rc[1] == "0" and not detail, "detail": detail or None}


# --- what makes a measurement valid (pure) ---------------------------------------------


def backup_problems(ret, files: int, file_bytes: int, changed: list[str] | None = None,
                    link_dest: str | None = None) -> list[str]:
    """Why a ``backup_leg`` return is not a clean full (``changed`` None) or incremental backup."""
    if not isinstance(ret, dict):
        return [f"backup_leg returned {ret!r:.300}"]
    problems = []
    if ret.get("result") is not True:
        problems.append(f"backup failed: {ret.get('error')}")
    problems += [f"cleanup step {c.get('step')} failed: {c.get('error')}" for c in ret.get("cleanup") or []
                 if not c.get("ok")]
    if (ret.get("snapshot") or {}).get("full") is not False:
        problems.append(f"snapshot overflowed or usage unknown: {ret.get('snapshot')}")
    rsync = ret.get("rsync") or {}
    want = len(changed) if changed is not None else files
    if rsync.get("transferred") != want or rsync.get("transferred_size") != want * file_bytes:
        problems.append(f"rsync moved {rsync.get('transferred')} files / {rsync.get('transferred_size')} bytes, "
                        f"expected {want} / {want * file_bytes}")
    if ret.get("link_dest") != link_dest:
        problems.append(f"link_dest is {ret.get('link_dest')!r}, expected {link_dest!r}")
    return problems


def dd_problems(dd: dict, size: int) -> list[str]:
    if dd["bytes"] != size or size <= 0:
        return [f"dd read {dd['bytes']} bytes of a {size}-byte snapshot"]
    if dd["seconds"] <= 0:
        return [f"dd reported {dd['seconds']} s"]
    return []


def resync_problems(mode: str, sample: dict) -> list[str]:
    """Why a resync sample is not the bitmap (re-add) or full (add) resync it claims to be."""
    problems = []
    want = {"bitmap": "re-add", "full": "add"}[mode]
    if sample["method"] != want:
        problems.append(f"{mode}: xencluster_md.re_add used {sample['method']!r}, expected {want!r}")
    if not sample["legs"]["equal"]:
        problems.append(f"{mode}: the legs' data differ after the resync: {sample['legs']['detail']}")
    if sample["kernel"]["outcome"] not in (None, "done"):
        problems.append(f"{mode}: md says the resync was {sample['kernel']['outcome']}")
    written, size = sample["written_bytes"], sample["array_bytes"]
    if mode == "full" and written < 0.9 * size:
        problems.append(f"full: only {written} bytes written to the returning leg of a {size}-byte array")
    if mode == "bitmap" and not 0 < written < 0.5 * size:
        problems.append(f"bitmap: {written} bytes written to the returning leg of a {size}-byte array "
                        "(a full resync, or none)")
    return problems


# --- results (pure) ----------------------------------------------------------------------


def samples(values: list[float]) -> dict:
    if not values:
        raise ValueError("no samples")
    return {"samples": [round(v, 6) for v in values], "median": round(statistics.median(values), 6)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def goal(key: str, value: float | None) -> dict:
    limit = GOALS[key]
    return {"ratio": value, "goal": f"<= {limit}", "met": None if value is None else value <= limit}


def backup_summary(rounds: list[dict]) -> dict:
    """Medians of the backup rounds; times are the module's own ``seconds`` (on node1)."""

    def pick(part, key):
        return samples([r[part][key] for r in rounds])

    return {
        "dd_s": pick("dd", "seconds"), "full_s": pick("full", "seconds"),
        "incremental_s": pick("incremental", "seconds"), "full_wall_s": pick("full", "wall_s"),
        "incremental_wall_s": pick("incremental", "wall_s"), "rounds": rounds,
    }  # fmt: skip


def time_source(resync_rounds: list[dict]) -> str:
    """The md thread's own time when the kernel log gave it for every sample, else the host's."""
    every = all(s["kernel"]["kernel_s"] is not None for r in resync_rounds for s in (r["bitmap"], r["full"]))
    return "kernel_s" if every else "wall_s"


def resync_summary(rounds: list[dict]) -> dict:
    source = time_source(rounds)
    per_mode = {}
    for mode in ("bitmap", "full"):
        got = [r[mode] for r in rounds]
        per_mode[mode] = {
            "time_s": samples([s["kernel"]["kernel_s"] if source == "kernel_s" else s["wall_s"] for s in got]),
            "wall_s": samples([s["wall_s"] for s in got]),
            "written_bytes": samples([s["written_bytes"] for s in got]),
        }
    return {"time_source": source, **per_mode, "rounds": rounds}


def ratios(backup: dict | None, resync: dict | None) -> dict:
    """The goals' ratios of medians (None for a part not measured), and the resyncs' bytes ratio."""
    out = {**dict.fromkeys(GOALS), "bitmap_resync_bytes/full_resync_bytes": None}
    if backup:
        out["full_backup/dd"] = ratio(backup["full_s"]["median"], backup["dd_s"]["median"])
        out["incremental/full_backup"] = ratio(backup["incremental_s"]["median"], backup["full_s"]["median"])
    if resync:
        bitmap, full = resync["bitmap"], resync["full"]
        out["bitmap_resync/full_resync"] = ratio(bitmap["time_s"]["median"], full["time_s"]["median"])
        out["bitmap_resync_bytes/full_resync_bytes"] = ratio(bitmap["written_bytes"]["median"],
                                                             full["written_bytes"]["median"])
    return out


def assemble(*, command: str, when: dt.datetime, git: dict, host: dict, lab: dict, params: dict,
             backup: dict | None, resync: dict | None, errors: list[dict], phases_s: dict) -> dict:
    r = ratios(backup, resync)
    wanted = {"backup", "resync"} if params.get("only") is None else {params["only"]}
    measured = {k for k, v in (("backup", backup), ("resync", resync)) if v}
    return {
        "benchmark": NAME, "command": command, "date": when.isoformat(timespec="seconds"), "git": git,
        "host": host, "lab": lab, "params": params, "method": METHOD, "backup": backup, "resync": resync,
        "ratios": r, "goals": {k: goal(k, r[k]) for k in GOALS},
        "complete": measured == wanted and not errors, "errors": errors, "phases_s": phases_s,
    }  # fmt: skip


METHOD = {
    "dd_s": "dd if=<snapshot> of=/dev/null bs=1M iflag=direct on node1, dd's own seconds; the snapshot is "
            "made like the backup's (same name and copy-on-write size, from backup_leg's dry run) and "
            "read whole (blockdev --getsize64 bytes); page cache dropped before",
    "full_s": "xencluster_backup.backup_leg into an empty directory, its own 'seconds' (snapshot, examine, "
              "loop, mount, rsync, usage check, cleanup), on node1; page cache dropped before; full_wall_s: "
              "on this host around the salt call",
    "incremental_s": "the same after 1 % of the files were rewritten in the guest (same size, new content); "
                     "rsync must move exactly those",
    "resync time_s": "kernel_s: the guest kernel's timestamps of md's 'recovery of RAID array' and "
                     "'recovery done' lines after a marker written just before; wall_s: on this host from "
                     "xencluster_md.re_add to the first status poll that saw the array clean (1 s polls, "
                     "salt round trips included)",
    "written_bytes": "sectors written to the returning leg (/sys/block/xvdc/stat) from just before the "
                     "re-add to clean: what the resync moved (mdstat shows the whole array as the range "
                     "in both modes, clean bitmap chunks are skipped inside it)",
    "full resync": "fail, remove, mdadm --zero-superblock of the leg, the same writes, re_add "
                   "allow_full_resync=True (md adds it as a new device)",
}


def _verdict(g: dict) -> str:
    return "not measured" if g["met"] is None else ("MET" if g["met"] else "NOT MET")


def format_summary(result: dict) -> str:
    p, b, s, g = result["params"], result["backup"], result["resync"], result["goals"]
    lines = [f"{NAME}: {p['rounds']} round(s), medians"]
    if b:
        dd_bytes = b["rounds"][0]["dd"]["bytes"]
        lines.append(f"raw dd of the snapshot: {dd_bytes / 2**20:.1f} MiB in {b['dd_s']['median']:.2f} s; "
                     f"full backup of {p['files']} x {p['file_kib']} KiB: {b['full_s']['median']:.2f} s "
                     f"(host {b['full_wall_s']['median']:.1f} s); incremental ({p['changed_files']} files): "
                     f"{b['incremental_s']['median']:.2f} s (host {b['incremental_wall_s']['median']:.1f} s)")
    if s:
        lines.append(f"resync at min=max={p['sync_kbs']} KiB/s ({s['time_source']}): bitmap "
                     f"{s['bitmap']['time_s']['median']:.2f} s, {s['bitmap']['written_bytes']['median'] / 2**20:.1f} "
                     f"MiB written; full {s['full']['time_s']['median']:.2f} s, "
                     f"{s['full']['written_bytes']['median'] / 2**20:.1f} MiB written")
    for key, verdict in g.items():
        value = verdict["ratio"]
        lines.append(f"{key} = {'-' if value is None else value} (goal {verdict['goal']}): {_verdict(verdict)}")
    if result["ratios"].get("bitmap_resync_bytes/full_resync_bytes") is not None:
        lines.append(f"bitmap/full resync bytes = {result['ratios']['bitmap_resync_bytes/full_resync_bytes']}")
    if not result["complete"]:
        lines.append("INCOMPLETE: " + "; ".join(f"{e['test']} ({e['when']})" for e in result["errors"])
                     if result["errors"] else "INCOMPLETE")
    return "\n".join(lines)


def result_path(results_dir: Path, when: dt.datetime) -> Path:
    return Path(results_dir) / f"{NAME}-{when:%Y%m%d-%H%M%S}.json"


# --- guest and dom0 command lines (pure) -----------------------------------------------


def write_files_line(files: int, file_bytes: int) -> str:
    """One urandom stream cut into the files (2 processes, not one per file: forks are slow under TCG)."""
    return (f"head -c {files * file_bytes} /dev/urandom | split -b {file_bytes} -a 4 -d - {MOUNT}/f && sync && "
            f"ls {MOUNT} | grep -c '^f[0-9]'")


def rewrite_files_line(names: list[str], file_bytes: int) -> str:
    return f"cd {MOUNT} && for f in {' '.join(names)}; do head -c {file_bytes} /dev/urandom > $f; done && sync"


def dd_line(device: str) -> str:
    """On node1: cold cache, the device's size on stdout, dd's summary on stderr, then udev settled."""
    return (f"{DROP_CACHES}; blockdev --getsize64 {device} && LC_ALL=C dd if={device} of=/dev/null bs=1M "
            "iflag=direct; rc=$?; udevadm settle; exit $rc")


def before_resync_line(tag: str) -> str:
    """In the guest, just before the re-add: the surviving leg's bitmap, the returning leg's counters, a marker."""
    kname = RETURNING.rsplit("/", 1)[1]
    return (f"echo '--- bitmap'; mdadm --examine-bitmap {LEGS[0]}; echo '--- stat'; cat /sys/block/{kname}/stat; "
            f"echo '{KMSG_TAG}: {tag}' > /dev/kmsg")


def _leg_data(leg: str) -> str:
    """bash: the leg's data area (md's per-device offset, the array's size), read with O_DIRECT.

    O_DIRECT: md writes the legs below their page cache, which may still hold what an earlier read saw.
    """
    kname = leg.rsplit("/", 1)[1]
    return (f"<(dd if={leg} bs=1M iflag=direct,skip_bytes,count_bytes "
            f"skip=$(($(cat /sys/block/{MD_KNAME}/md/dev-{kname}/offset)*512)) count=$size status=none)")


def after_resync_line() -> str:
    """bash in the guest, once clean: the returning leg's counters, both legs' data compared, the kernel log.

    cmp, not a hash of each leg: under TCG hashing 2 x 127 MiB per resync costs more than reading it.
    """
    kname = RETURNING.rsplit("/", 1)[1]
    return (f"size=$(($(cat /sys/block/{MD_KNAME}/md/component_size)*1024)); echo '--- stat'; "
            f"cat /sys/block/{kname}/stat; echo '--- size'; echo $size; echo '--- cmp'; "
            f"cmp -n $size {_leg_data(LEGS[0])} {_leg_data(LEGS[1])} 2>&1; echo \"rc=$?\"; echo '--- dmesg'; dmesg")


# --- in the lab (the tests; `tier` is tests/lab_cluster/test_guest_pairs.py) --------------

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]
_STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {msg}", flush=True)


def _recorder(config):
    found = [p for p in config.pluginmanager.get_plugins() if getattr(p, "XCBENCH", None) == NAME]
    return found[0] if found else None


@pytest.fixture(scope="session")
def bench(pytestconfig):
    rec = _recorder(pytestconfig)
    if rec is None:
        pytest.fail("run it as a script: .venv/bin/python benchmarks/backup_resync.py", pytrace=False)
    return rec


@pytest.fixture(scope="session")
def tier():
    import test_guest_pairs  # pylint: disable=import-outside-toplevel  # on sys.path: main() put it there

    return test_guest_pairs


def _clean(status: dict) -> bool:
    return (status["sync"] is None and "degraded" not in status["state"]
            and sorted(leg["state"] for leg in status["legs"]) == ["active", "active"])


def make_array(tier) -> None:
    """The guest's RAID1 over its two legs (idempotent), its first resync done at full speed."""
    tier.guest_call("xencluster_md.create_mirror", MD, ",".join(LEGS), "name=disk0", "bitmap_chunk=1M")
    low, high = INITIAL_SYNC_KBS
    tier.guest_call("xencluster_md.set_sync_speed", f"min_kbs={low}", f"max_kbs={high}", f"md={MD}")
    tier.wait_until("the array's first resync", lambda: (_clean(s := tier.array_status()), s["state"]), 900,
                    interval=5)


def make_filesystem(tier, args) -> None:
    make_array(tier)
    tier.guest_run(["umount", MOUNT], ok=(0, 1, 32))
    tier.guest_run(["mkfs.ext4", "-q", "-F", MD])
    tier.guest_run(["mkdir", "-p", MOUNT])
    tier.guest_run(["mount", MD, MOUNT])
    out = tier.guest_run(["sh", "-c", write_files_line(args.files, args.file_kib * 1024)])["stdout"]
    if out.strip() != str(args.files):
        raise Invalid(f"the guest holds {out.strip()} files, expected {args.files}")


def mask_md_autoassembly(tier) -> bool:
    """Mask dom0's md auto-assembly as the formula does (else udev holds the snapshot); True if we did."""
    rules = tier.call(NODE, "xencluster_backup.md_autoassembly")
    if not rules:
        return False
    if rules == tier.MD_RULE_MASK:
        raise Invalid(f"{NODE} has its own {rules} with rules in it: not overwriting it")
    tier.run(NODE, ["cp", "/dev/null", tier.MD_RULE_MASK])
    tier.run(NODE, ["udevadm", "control", "--reload"])
    return True


def check_space(tier, args) -> None:
    avail = tier.run(NODE, ["sh", "-c", "df -Pk /var/tmp | awk 'NR==2{print $4}'"])["stdout"].strip()
    need = 2 * args.files * args.file_kib * 1024 + SPACE_MARGIN
    if not avail.isdigit() or int(avail) * 1024 < need:
        raise Invalid(f"{NODE}:/var/tmp has {avail} KiB free, the backups need {need // 1024}")


def backup_args(tier, dest: str) -> list[str]:
    partner = tier.stable_path(tier.MDG, "disk0", PARTNER)
    return [tier.VG, LEG_LV, dest, "fstype=ext4", f"partner={partner}", "allow_root_fs=True"]


def measure_dd(tier, dest: str) -> dict:
    """dd of a snapshot made as the backup makes its own (name and size from its dry run)."""
    plan = tier.call(NODE, "xencluster_backup.backup_leg", *backup_args(tier, dest), "dry_run=True")
    if plan.get("refused"):
        raise Invalid(f"backup_leg would refuse: {plan['refused']}")
    snap = plan["snapshot"]
    lv = tier.call(NODE, "xencluster_lvm.snapshot_create", snap["vg"], LEG_LV, snap["name"], str(snap["size"]),
                   'tags=["xcbench"]')
    try:
        ret = tier.run(NODE, ["sh", "-c", dd_line(lv["path"])])
    finally:
        tier.call(NODE, "xencluster_lvm.snapshot_remove", snap["vg"], snap["name"])
    size = int(ret["stdout"].split()[0])
    dd = parse_dd(ret["stderr"])
    problems = dd_problems(dd, size)
    if problems:
        raise Invalid("; ".join(problems))
    return {**dd, "snapshot": snap["name"], "snapshot_cow_bytes": snap["size"],
            "rate_mb_s": round(dd["bytes"] / dd["seconds"] / 1e6, 2)}


def timed_backup(tier, dest: str) -> tuple[dict, float]:
    tier.run(NODE, ["sh", "-c", DROP_CACHES])
    begun = time.perf_counter()
    ret = tier.call(NODE, "xencluster_backup.backup_leg", *backup_args(tier, dest), timeout=900)
    return ret, time.perf_counter() - begun


def check_backup_files(tier, dest: str, stamp: str, expected: dict) -> None:
    got = parse_sums(tier.run(NODE, ["sh", "-c", f"cd {dest}/{stamp} && sha256sum f*"])["stdout"])
    problems = sums_problems(expected, got)
    if problems:
        raise Invalid(f"backup {stamp} differs from the guest's files: {'; '.join(problems)}")


def backup_record(ret: dict, wall: float) -> dict:
    return {"seconds": ret["seconds"], "wall_s": round(wall, 3), "backup": ret["backup"], "rsync": ret["rsync"],
            "snapshot": ret["snapshot"]}


def backup_round(tier, args, round_no: int, before: dict) -> tuple[dict, dict]:
    """dd, full backup, 1 % of the files rewritten, incremental backup; each backup checked file by file.

    ``before``: the guest's {file: sha256} now; returns the round's record and the sums after it.
    """
    dest, file_bytes = f"{BACKUP_BASE}/r{round_no}", args.file_kib * 1024
    tier.run(NODE, ["sh", "-c", f"rm -rf {BACKUP_BASE} && mkdir -p {dest}"])
    dd = measure_dd(tier, dest)
    say(f"round {round_no}: dd {dd['bytes'] / 2**20:.0f} MiB in {dd['seconds']:.2f} s")
    full, full_wall = timed_backup(tier, dest)
    problems = backup_problems(full, args.files, file_bytes)
    if problems:
        raise Invalid(f"full backup, round {round_no}: {'; '.join(problems)}")
    check_backup_files(tier, dest, full["backup"], before)
    say(f"round {round_no}: full backup {full['seconds']:.2f} s (host {full_wall:.1f} s)")
    names = changed_files(args.files, round_no)
    tier.guest_run(["sh", "-c", rewrite_files_line(names, file_bytes)])
    after = tier.guest_sums()
    incr, incr_wall = timed_backup(tier, dest)
    problems = backup_problems(incr, args.files, file_bytes, changed=names, link_dest=full["backup"])
    if problems:
        raise Invalid(f"incremental backup, round {round_no}: {'; '.join(problems)}")
    check_backup_files(tier, dest, incr["backup"], after)
    say(f"round {round_no}: incremental backup {incr['seconds']:.2f} s (host {incr_wall:.1f} s)")
    tier.run(NODE, ["rm", "-rf", BACKUP_BASE])
    record = {"round": round_no, "dd": dd, "full": backup_record(full, full_wall),
              "incremental": {**backup_record(incr, incr_wall), "changed": names}}
    return record, after


def test_backup_full_vs_dd_and_incremental(guest_minion, tier, bench):
    args = bench.args
    make_filesystem(tier, args)
    say(f"guest: ext4 on {MD} with {args.files} files of {args.file_kib} KiB")
    check_space(tier, args)
    masked = mask_md_autoassembly(tier)
    rounds, sums = [], tier.guest_sums()
    try:
        for r in range(1, args.rounds + 1):
            record, sums = backup_round(tier, args, r, sums)
            rounds.append(record)
    finally:
        tier.run(NODE, ["rm", "-rf", BACKUP_BASE])
        if masked:
            tier.run(NODE, ["rm", "-f", tier.MD_RULE_MASK])
            tier.run(NODE, ["udevadm", "control", "--reload"])
    bench.backup = backup_summary(rounds)


def wait_clean(tier, timeout: float) -> tuple[dict, list]:
    """Poll the array every second until clean; also what mdstat showed of the resync meanwhile."""
    seen = []

    def probe():
        s = tier.array_status()
        if s["sync"]:
            seen.append(s["sync"])
        return _clean(s), s

    return tier.wait_until("the resync", probe, timeout, interval=1), seen


def leave_and_write(tier, mode: str, round_no: int, write_mib: int) -> None:
    """The leg goes (maintenance); a full resync needs it blank to md; the array is written meanwhile."""
    tier.guest_call("xencluster_md.fail_leg", MD, RETURNING)
    tier.guest_call("xencluster_md.remove_leg", MD, RETURNING)
    if mode == "full":
        tier.guest_run(["mdadm", "--zero-superblock", RETURNING])
    tier.guest_run(["dd", "if=/dev/urandom", f"of={MD}", "bs=1M", f"seek={write_offset_mib(round_no)}",
                    f"count={write_mib}", "oflag=direct", "conv=fsync", "status=none"])


def resync_timeout(array_bytes: int, kbs: int) -> float:
    return max(180.0, 4 * array_bytes / 1024 / kbs + 60)


def one_resync(tier, args, mode: str, round_no: int, array_bytes: int) -> dict:
    leave_and_write(tier, mode, round_no, args.write_mib)
    speed = tier.guest_call("xencluster_md.set_sync_speed", f"min_kbs={args.sync_kbs}", f"max_kbs={args.sync_kbs}",
                            f"md={MD}")
    tag = f"{mode}-r{round_no}-{time.time_ns()}"
    before = parse_sections(tier.guest_run(["sh", "-c", before_resync_line(tag)])["stdout"])
    begun = time.perf_counter()
    back = tier.guest_call("xencluster_md.re_add", MD, RETURNING,
                           *(["allow_full_resync=True"] if mode == "full" else []))
    _, seen = wait_clean(tier, resync_timeout(array_bytes, args.sync_kbs))
    wall = time.perf_counter() - begun
    after = parse_sections(tier.guest_run(["bash", "-c", after_resync_line()])["stdout"])
    first_sync = (back["status"] or {}).get("sync") or (seen[0] if seen else None)
    sample = {
        "mode": mode, "round": round_no, "method": back["method"], "wall_s": round(wall, 3),
        "kernel": parse_kernel_resync(after.get("dmesg", ""), f"{KMSG_TAG}: {tag}"),
        "written_bytes": parse_written_bytes(after["stat"]) - parse_written_bytes(before["stat"]),
        "array_bytes": int(after["size"].strip()), "bitmap": parse_bitmap(before["bitmap"]),
        "legs": parse_cmp(after["cmp"]), "mdstat_seen": first_sync, "speed_limits": speed,
        "write_mib": args.write_mib, "write_offset_mib": write_offset_mib(round_no),
    }  # fmt: skip
    problems = resync_problems(mode, sample)
    if problems:
        raise Invalid("; ".join(problems))
    if sample["array_bytes"] != array_bytes:
        raise Invalid(f"the array is {sample['array_bytes']} bytes now, {array_bytes} before")
    say(f"round {round_no}: {mode} resync {sample['kernel']['kernel_s']} s (kernel), {wall:.1f} s (host), "
        f"{sample['written_bytes'] / 2**20:.1f} MiB written")
    return sample


def test_resync_bitmap_vs_full(guest_minion, tier, bench):
    args = bench.args
    tier.guest_run(["umount", MOUNT], ok=(0, 1, 32))  # raw writes to the array from here on
    make_array(tier)
    array_bytes = int(tier.guest_run(["cat", f"/sys/block/{MD_KNAME}/md/component_size"])["stdout"]) * 1024
    say(f"guest: {MD} of {array_bytes / 2**20:.1f} MiB, resyncs at min=max={args.sync_kbs} KiB/s")
    rounds = [{mode: one_resync(tier, args, mode, r, array_bytes) for mode in ("bitmap", "full")}
              for r in range(1, args.rounds + 1)]
    bench.resync = resync_summary(rounds)


# --- the script: pytest on this file, the lab tier's plumbing as plugins -----------------

# Salt-factories' plugins: not used here, and their log server and event listener bind 0.0.0.0.
NO_PLUGINS = ("cacheprovider", "salt-factories", "salt-factories-event-listener", "salt-factories-factories",
              "salt-factories-loader-mock", "salt-factories-log-server", "salt-factories-markers",
              "salt-factories-sysinfo")


class Recorder:
    """Passed to pytest as a plugin: holds the arguments, collects the parts and every failure."""

    XCBENCH = NAME

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.backup = None
        self.resync = None
        self.errors = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.errors.append({"test": report.nodeid.rpartition("::")[2], "when": report.when,
                                "error": report.longreprtext[-2000:]})


def load_lab_tier():
    """tests/lab_cluster on sys.path, its conftest.py as a module of its own (all conftests are "conftest")."""
    sys.path[:0] = [str(LAB_TIER), str(REPO)]
    spec = importlib.util.spec_from_file_location("xencluster_lab_tier", LAB_TIER / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import test_guest_pairs  # pylint: disable=import-outside-toplevel  # its fixtures: pairs, guest_minion

    return module, test_guest_pairs


def pytest_argv(args: argparse.Namespace) -> list[str]:
    argv = [str(Path(__file__).resolve()), "-s", "-v"]
    for plugin in NO_PLUGINS:
        argv += ["-p", f"no:{plugin}"]
    if args.only:
        argv += ["-k", f"test_{args.only}"]
    return argv


def params(args: argparse.Namespace) -> dict:
    return {
        "rounds": args.rounds, "files": args.files, "file_kib": args.file_kib,
        "changed_percent": CHANGED_PERCENT, "changed_files": len(changed_files(args.files, 1)),
        "write_mib": args.write_mib, "sync_kbs": args.sync_kbs, "only": args.only, "guest": "mdg",
        "leg": f"xcguest/{LEG_LV}", "node": NODE, "md": MD, "returning_leg": RETURNING, "bitmap_chunk": "1M",
    }  # fmt: skip


def _git() -> dict:
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _host() -> dict:
    return {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release(), "name": socket.gethostname(),
            "python": platform.python_version()}


def _lab_info() -> dict:
    from lab import config, state  # pylint: disable=import-outside-toplevel

    return {"image_key": state.load().get("image_key"), "lab_dir": str(config.LAB_DIR)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    when, started = dt.datetime.now(dt.timezone.utc), time.monotonic()
    lab_tier, guest_pairs = load_lab_tier()
    if not lab_tier._cluster_running():  # pylint: disable=protected-access
        print(f"{NAME}: node1 and node2 are not both running; start the lab first (`python -m lab up`)",
              file=sys.stderr)
        return 2
    rec = Recorder(args)
    code = pytest.main(pytest_argv(args), plugins=[lab_tier, guest_pairs, rec])
    if rec.backup is None and rec.resync is None:
        print(f"{NAME}: nothing measured (pytest exit {int(code)}); no result written", file=sys.stderr)
        return 130 if code == pytest.ExitCode.INTERRUPTED else 1
    result = assemble(command=" ".join([Path(sys.executable).name, *sys.argv]), when=when, git=_git(),
                      host=_host(), lab=_lab_info(), params=params(args), backup=rec.backup, resync=rec.resync,
                      errors=rec.errors, phases_s={"total": round(time.monotonic() - started, 1)})
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = result_path(args.results_dir, when)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(format_summary(result))
    print(f"written to {out}")
    return 0 if code == pytest.ExitCode.OK and result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
