"""Checks run BEFORE the lab starts anything: each failure is one clear line.

Callers collect what they are about to start, run these checks, and only then
create files or processes, so a failed check leaves nothing half-started.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Iterable

from lab.errors import PreflightError

# Host tool -> the Debian package that ships it.
TOOL_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "vde_switch": "vde2",
    "socat": "socat",
    "ssh": "openssh-client",
}

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def require_tools(tools: Iterable[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES.get(tool, tool) for tool in missing})
        raise PreflightError(
            f"missing host tool(s) {', '.join(missing)}: "
            f"apt-get install {' '.join(packages)} (or `make host-deps`)"
        )


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise PreflightError(f"`python -m lab {action}` needs root (run it with sudo or as root)")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind host:port now (same SO_REUSEADDR as QEMU and salt)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free_ports(ports: Iterable[tuple[int, str]]) -> None:
    """ports: (port, what it is for). Only ports we are about to bind belong here."""
    taken = [f"127.0.0.1:{port} ({purpose})" for port, purpose in ports if not port_free(port)]
    if taken:
        raise PreflightError(
            f"port already in use by another program: {', '.join(taken)}; "
            "stop that program or move the lab's ports (XENCLUSTER_LAB_SSH_BASE, "
            "XENCLUSTER_LAB_PUBLISH_PORT, XENCLUSTER_LAB_RET_PORT)"
        )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def require_disk(path: Path, needed_bytes: int, purpose: str) -> None:
    if needed_bytes <= 0:
        return
    free = shutil.disk_usage(_existing_ancestor(path)).free
    if free < needed_bytes:
        raise PreflightError(
            f"not enough disk under {path}: {gib(free)} free, {gib(needed_bytes)} needed for {purpose}"
        )


def require_short_socket_paths(paths: Iterable[Path]) -> None:
    for path in paths:
        size = len(os.fsencode(str(path)))
        if size > MAX_SOCKET_PATH:
            raise PreflightError(
                f"socket path too long for AF_UNIX ({size} > {MAX_SOCKET_PATH} bytes): {path}; "
                "point XENCLUSTER_LAB at a shorter directory"
            )


def require_qemu_safe_paths(paths: Iterable[Path]) -> None:
    """QEMU splits option values at commas (e.g. -initrd "kernel args,initrd")."""
    for path in paths:
        if "," in str(path):
            raise PreflightError(f"path contains a comma, which QEMU options cannot carry: {path}")


def require_files(paths: Iterable[Path], hint: str) -> None:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise PreflightError(f"missing {', '.join(missing)}; {hint}")


def gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def parse_size(text: str) -> int:
    """'4G', '512M', '1024' (bytes) -> bytes; the same suffixes qemu-img takes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
