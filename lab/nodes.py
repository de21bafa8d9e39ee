"""Per-node operations shared by the cluster and the master: pid, key, ssh, ready, stop."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path
from typing import Sequence

from lab import config, procs, qemu, ssh as ssh_mod, wait
from lab.config import Node
from lab.errors import LabError
from lab.procs import Log

# One ssh round trip that proves the node is usable: sshd answers AND xend's
# toolstack works (ssh comes up before xen.service, so ssh alone is not enough).
READY_COMMAND = "xl list >/dev/null"
GRACEFUL_POWEROFF = "timeout 30 xl shutdown -a -w >/dev/null 2>&1; systemctl poweroff --no-block"


def image_module():
    """lab.image (the image builder, another module's job), imported only when needed."""
    try:
        from lab import image
    except ImportError as exc:
        raise LabError(f"the image builder lab/image.py cannot be imported: {exc}") from exc
    return image


def pid(node: Node, log: Log | None = None, cleanup: bool = True) -> int | None:
    return procs.live_pid(node.pidfile, qemu.markers(node), node.name, log, cleanup)


def all_nodes() -> list[Node]:
    return [Node(n) for n in range(1, config.MAX_NODES + 1)]


def running(log: Log | None = None, cleanup: bool = True) -> list[Node]:
    return [node for node in all_nodes() if pid(node, log, cleanup)]


def image_dir_of(node: Node) -> Path | None:
    """The image the node's overlay was built on (it runs that image, not necessarily the current one)."""
    stamp = qemu.read_stamp(node)
    if stamp and Path(stamp.get("dir", "")).is_dir():
        return Path(stamp["dir"])
    return None


def key(node: Node) -> Path:
    img = image_dir_of(node)
    if img is None:
        current = image_module().current()
        if current is None:
            raise LabError(f"{node.name}: no image to take the lab ssh key from; run `python -m lab build` first")
        img = Path(current)
    path = img / "id_ed25519"
    if not path.is_file():
        raise LabError(f"the lab ssh key {path} is missing; rebuild with `python -m lab build --force`")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # ssh refuses a private key others can read
    return path


def ssh(node: Node, command: Sequence[str] | str, *, timeout: float = 60, check: bool = True,
        input: str | None = None, connect_timeout: int = 5) -> subprocess.CompletedProcess:
    return ssh_mod.run(node, key(node), command, timeout=timeout, check=check, input=input,
                       connect_timeout=connect_timeout)


class ReadyProbe:
    """Polls READY_COMMAND over ssh and remembers when ssh itself first answered."""

    def __init__(self, node: Node, started_at: float, clock=time.time):
        self.node = node
        self.started_at = started_at
        self.clock = clock
        self.ssh_after: float | None = None

    def __call__(self) -> tuple[bool, str]:
        proc = ssh(self.node, READY_COMMAND, timeout=20, check=False)
        if proc.returncode == ssh_mod.SSH_FAILED:
            last = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
            return False, f"ssh: {last}"
        if self.ssh_after is None:
            self.ssh_after = self.clock() - self.started_at
        if proc.returncode == 0:
            return True, "xl list ok"
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return False, f"ssh answers, `xl list` exit {proc.returncode} {last}".rstrip()


def wait_ready(node: Node, started_at: float, timeout: float | None = None) -> dict:
    """Wait until the node answers ssh AND `xl list`; times are seconds since started_at."""
    probe = ReadyProbe(node, started_at)
    pid_at_start = pid(node, cleanup=False)
    wait.until(
        probe,
        what=f"{node.name} to be ready (ssh on 127.0.0.1:{node.ssh_port} answering `xl list`)",
        timeout=timeout or config.BOOT_TIMEOUT,
        interval=2.0,
        details=lambda: wait.console_details(node.console_log),
        abort=lambda: None if pid(node, cleanup=False) else f"its QEMU (pid {pid_at_start}) exited",
    )
    ready = time.time() - started_at
    return {"ssh_after_s": round(probe.ssh_after or ready, 1), "boot_to_ready_s": round(ready, 1)}


def stop(node: Node, hard: bool, log: Log) -> dict:
    """Stop the node's QEMU: graceful poweroff (bounded), then monitor quit, then SIGTERM.

    Only our own QEMU is signalled (PID from our pidfile, command line checked).
    """
    qpid = pid(node, log)
    if qpid is None:
        _forget_runtime_files(node)
        return {"stopped": False, "how": "not running"}
    started = time.monotonic()
    how = None
    if not hard:
        how = _graceful(node, qpid, log)
    if how is None:
        if qemu.quit_via_monitor(node) and procs.wait_gone(qpid, 20):
            how = "monitor quit"
    if how is None:
        if not procs.terminate(qpid, qemu.markers(node)):
            raise LabError(f"{node.name}: QEMU pid {qpid} survived SIGTERM and SIGKILL")
        how = "SIGTERM"
    _forget_runtime_files(node)
    return {"stopped": True, "how": how, "seconds": round(time.monotonic() - started, 1), "pid": qpid}


def _graceful(node: Node, qpid: int, log: Log) -> str | None:
    reach = ssh(node, "true", timeout=20, check=False)
    if reach.returncode != 0:
        log(f"{node.name}: ssh does not answer; quitting QEMU through its monitor instead")
        return None
    # The connection may drop while systemd stops sshd; the exit code does not matter.
    ssh(node, GRACEFUL_POWEROFF, timeout=60, check=False)
    if procs.wait_gone(qpid, config.STOP_TIMEOUT, interval=1.0):
        return "graceful poweroff"
    log(f"{node.name}: still running {config.STOP_TIMEOUT} s after poweroff; quitting QEMU through its monitor")
    return None


def _forget_runtime_files(node: Node) -> None:
    for path in (node.pidfile, node.monitor, node.console_socket):
        path.unlink(missing_ok=True)
