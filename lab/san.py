"""The SAN segment: one vde_switch per cluster, reached by every node over unix sockets.

A real L2 segment for any number of nodes that never touches a host interface.
"""

from __future__ import annotations

import shutil

from lab import config
from lab.errors import LabError
from lab.procs import Log, live_pid, terminate
from lab.qemu import run_checked
from lab.wait import until

CTL = config.SAN_SWITCH_SOCK / "ctl"  # the socket vde_switch listens on, inside its dir


def markers() -> list[str]:
    return ["vde_switch", str(config.SAN_SWITCH_SOCK)]


def running(log: Log | None = None, cleanup: bool = True) -> int | None:
    return live_pid(config.SAN_SWITCH_PIDFILE, markers(), "SAN switch", log, cleanup)


def argv() -> list[str]:
    return [
        "vde_switch",
        "--sock", str(config.SAN_SWITCH_SOCK),
        "--daemon",
        "--pidfile", str(config.SAN_SWITCH_PIDFILE),
    ]


def ensure(log: Log) -> int:
    """Start the switch unless ours already runs; return its PID."""
    pid = running(log)
    if pid:
        return pid
    # A dead switch leaves its socket dir behind; vde_switch refuses to reuse it.
    shutil.rmtree(config.SAN_SWITCH_SOCK, ignore_errors=True)
    run_checked(argv(), "starting the SAN switch", timeout=30)
    # cleanup=False: while the switch starts, an empty or not-yet-valid pidfile is
    # not stale, and removing it would lose the only record of the new process.
    try:
        until(
            lambda: (bool(running(cleanup=False)) and CTL.exists(), f"{CTL} or its pidfile not there yet"),
            what=f"the SAN switch socket {CTL}",
            timeout=15,
            interval=0.2,
        )
    except LabError:
        stop(log)  # leave nothing half-started
        raise
    pid = running()
    if pid is None:
        raise LabError("the SAN switch exited right after it started")
    log(f"SAN switch: started (pid {pid}, {config.SAN_SWITCH_SOCK})")
    return pid


def stop(log: Log) -> None:
    pid = running(log)
    if pid is None:
        return
    if not terminate(pid, markers()):
        raise LabError(f"the SAN switch (pid {pid}) did not exit after SIGTERM and SIGKILL")
    config.SAN_SWITCH_PIDFILE.unlink(missing_ok=True)
    shutil.rmtree(config.SAN_SWITCH_SOCK, ignore_errors=True)
    log(f"SAN switch: stopped (pid {pid})")
