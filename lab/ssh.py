"""ssh into a lab node: root, the image's lab key, 127.0.0.1:Node.ssh_port, never prompts."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Sequence

from lab.config import Node
from lab.errors import LabError

SSH_FAILED = 255  # ssh's own exit code when it could not connect or authenticate


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
    base = ["ssh", *options(key, connect_timeout), "-p", str(node.ssh_port)]
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
