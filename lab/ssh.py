"""ssh into a lab node: root, the image's lab key, 127.0.0.1:Node.ssh_port, never prompts."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Sequence

from lab import config
from lab.config import Node
from lab.errors import LabError

SSH_FAILED = 255  # ssh's own exit code when it could not connect or authenticate


# One ssh connection per node, shared by every command for a while: a new one costs a key
# exchange in the node's TCG-emulated sshd (~1.3 s against ~0.15 s over the shared one), and
# the lab tier and the runner's tests make hundreds. The master connection ends with its node
# (QEMU's forward closes) or after CONTROL_PERSIST_S idle; a stale socket is replaced by ssh.
CONTROL_PERSIST_S = 120
UNIX_PATH_MAX = 107  # sun_path, less its NUL


def control_options(node: Node) -> list[str]:
    """Connection-sharing options for node, or none when the socket path would be too long."""
    path = config.RUN_DIR / f"ssh-{node.name}-{node.ssh_port}.mux"
    # ssh appends a random suffix to the path while it sets the socket up
    if len(str(path)) + 20 > UNIX_PATH_MAX or not config.RUN_DIR.is_dir():
        return []
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={path}", "-o", f"ControlPersist={CONTROL_PERSIST_S}"]


def options(key: Path, connect_timeout: int = 5) -> list[str]:
    return [
        "-i", str(key),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        # Notice a node that died mid-command instead of hanging forever.
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
    ]


def remote_command(command: Sequence[str] | str) -> str:
    """An argv is quoted so the node runs exactly it; a str is a shell command line."""
    return command if isinstance(command, str) else shlex.join(command)


def argv(node: Node, key: Path, command: Sequence[str] | str | None = None,
         connect_timeout: int = 5, tty: bool = False) -> list[str]:
    base = ["ssh", *options(key, connect_timeout), *control_options(node), "-p", str(node.ssh_port)]
    if tty:
        base.append("-t")
    base.append("root@127.0.0.1")
    if command is not None and command != []:
        base.append(remote_command(command))
    return base


def run(node: Node, key: Path, command: Sequence[str] | str, *, timeout: float = 60,
        check: bool = True, input: str | None = None, connect_timeout: int = 5
        ) -> subprocess.CompletedProcess:
    """Run a command on the node; capture text output. check=True raises LabError on rc != 0."""
    full = argv(node, key, command, connect_timeout)
    try:
        proc = subprocess.run(
            full,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError("ssh not found: apt-get install openssh-client") from exc
    except subprocess.TimeoutExpired as exc:
        if check:
            raise LabError(f"{node.name}: `{remote_command(command)}` took longer than {timeout:.0f} s") from exc
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return subprocess.CompletedProcess(full, SSH_FAILED, out, f"timed out after {timeout:.0f} s")
    if check and proc.returncode != 0:
        what = "ssh could not connect" if proc.returncode == SSH_FAILED else f"exit {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        raise LabError(f"{node.name}: `{remote_command(command)}` failed ({what}) {last}".rstrip())
    return proc
