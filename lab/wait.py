"""Bounded polling of real readiness, and the console tail shown when it fails."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, TypeVar

from lab.errors import LabError, WaitTimeout

T = TypeVar("T")

# Set on Ctrl-C so waits running in worker threads stop at their next poll.
cancelled = threading.Event()

# A probe returns (ready, detail): detail says what it saw last, for the timeout message.
Probe = Callable[[], "tuple[bool, str]"]


def tail(path: Path, lines: int = 20) -> list[str]:
    """Last lines of a (possibly binary-ish, possibly huge) log file."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return []
    text = data.decode(errors="replace").replace("\r", "")
    return list(deque(text.splitlines(), maxlen=lines))


def console_details(console_log: Path, lines: int = 15) -> str:
    last = tail(console_log, lines)
    if not last:
        return f"(console log {console_log} is empty or missing)"
    return "\n".join([f"--- last {len(last)} lines of {console_log} ---", *last, "---"])


def until(
    probe: Probe,
    *,
    what: str,
    timeout: float,
    interval: float = 2.0,
    details: Callable[[], str] = lambda: "",
    abort: Callable[[], str | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Poll ``probe`` until it reports ready; return the seconds it took.

    ``abort`` returns a reason to stop early (e.g. QEMU exited), so a dead node fails
    at once instead of after the full timeout. On failure the error names ``what``
    was awaited and the probe's last observation; ``details()`` (e.g. the node's
    console tail) goes into the error's details.
    """
    start = clock()
    last = "no answer yet"
    while True:
        if cancelled.is_set():
            raise LabError(f"interrupted while waiting for {what}")
        ready, seen = probe()
        if ready:
            return clock() - start
        last = seen or last
        reason = abort()
        if reason:
            raise LabError(f"{what}: {reason} (last seen: {last})", details())
        elapsed = clock() - start
        if elapsed >= timeout:
            raise WaitTimeout(
                f"gave up after {timeout:.0f} s waiting for {what} (last seen: {last})", details()
            )
        sleep(min(interval, max(0.0, timeout - elapsed)))
