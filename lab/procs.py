"""Processes the lab started: pidfiles, /proc checks and signals.

The lab never stops a process by name. It reads a PID from one of its own pidfiles
and checks /proc/PID/cmdline for markers only our process has (e.g. that pidfile's
path on QEMU's command line) before it signals anything.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterable

Log = Callable[[str], None]


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _state(pid: int) -> str | None:
    """One-letter process state from /proc/PID/stat, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[-1].split()[0]  # comm (field 2) may contain spaces


def alive(pid: int) -> bool:
    """Running (a zombie has exited; only its parent has not reaped it yet)."""
    return _state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> list[str] | None:
    """argv of a live process, or None if it is gone.

    Right after exec the kernel may briefly show an empty cmdline, so an empty one
    of a live process is re-read a few times before it counts as "no argv" ([]).
    """
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        if raw:
            return raw.rstrip(b"\0").decode(errors="replace").split("\0")
        if not alive(pid):
            return None
        time.sleep(0.01)
    return []


def is_ours(pid: int, markers: Iterable[str]) -> bool:
    """True if PID is alive and its command line contains every marker.

    Markers are matched against the joined command line because setproctitle (salt)
    rewrites argv into one string.
    """
    argv = cmdline(pid)
    if not argv or not alive(pid):
        return False
    joined = " ".join(argv)
    return all(marker in joined for marker in markers)


def live_pid(pidfile: Path, markers: Iterable[str], what: str, log: Log | None = None,
             cleanup: bool = True) -> int | None:
    """PID from our pidfile if that process is ours and running; else clean up a stale file.

    A stale pidfile (dead PID, or a PID reused by another program) is removed and
    reported; the process behind a reused PID is never touched. cleanup=False only
    looks (for `status`, which must not change anything).
    """
    pid = read_pid(pidfile)
    if pid is None:
        if pidfile.exists() and cleanup:
            _remove_stale(pidfile, f"{what}: removed unreadable pidfile {pidfile}", log)
        return None
    markers = list(markers)
    if is_ours(pid, markers):
        return pid
    if alive(pid):
        reason = f"pid {pid} now belongs to another program ({_short_cmd(pid)}); left it alone"
    else:
        reason = f"pid {pid} is not running"
    if cleanup:
        _remove_stale(pidfile, f"{what}: removed stale pidfile {pidfile.name} ({reason})", log)
    return None


def _remove_stale(pidfile: Path, message: str, log: Log | None) -> None:
    pidfile.unlink(missing_ok=True)
    if log:
        log(message)


def _short_cmd(pid: int) -> str:
    argv = cmdline(pid) or ["?"]
    text = " ".join(argv)
    return text if len(text) <= 60 else text[:57] + "..."


def children(pid: int) -> list[int]:
    """Direct and indirect children of PID (from /proc/*/stat), to finish a daemon's workers."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the ppid; field 2 (comm) may contain spaces, so split after ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        parent_of[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parent_of.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def wait_gone(pid: int, timeout: float, interval: float = 0.5) -> bool:
    """Poll until PID has exited (or is a zombie); True if it did within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(pid: int, markers: Iterable[str], timeout: float = 15.0) -> bool:
    """SIGTERM our PID (after re-checking it is ours), then SIGKILL if it ignores that.

    Returns True if the process is gone. Never signals a process that is not ours.
    """
    markers = list(markers)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_ours(pid, markers):
            return not alive(pid)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_gone(pid, timeout):
            return True
    return not alive(pid)
