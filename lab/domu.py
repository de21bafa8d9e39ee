"""The lab's probe guest: a tiny PVH initramfs (busybox, mdadm, blkfront/netfront/md/raid1).

Built into the dom0 image at PROBE_INITRD. It boots with the dom0's own kernel,
mirrors its two disks with md RAID1 and writes a numbered heartbeat to its
console and its array (lab/files/domu/probe-init), which is what migration tests
watch. Given ``probe.ip=`` (and ``probe.peer=``) on its command line it also
brings up eth0 and pings the peer on every heartbeat (network tests).
Pure helpers here; lab/image.py runs them against the rootfs.
"""

from __future__ import annotations

import gzip
import stat
from pathlib import Path
from typing import Callable, Iterable

PROBE_INITRD = "srv/domu/probe-initrd.gz"  # inside the image
PROBE_INIT = Path(__file__).resolve().parent / "files" / "domu" / "probe-init"
PROBE_MODULES = ("xen-blkfront", "xen-netfront", "md-mod", "raid1")
PROBE_DIRS = ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc", "lib", "lib/modules")

# modinfo(module) -> (path of the .ko inside the rootfs, [dependency names])
ModInfo = Callable[[str], tuple[str, list[str]]]


def module_order(wanted: Iterable[str], modinfo: ModInfo) -> list[str]:
    """.ko paths in insmod order: every dependency before what needs it, each once."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in stack:
            raise ValueError(f"module dependency cycle: {' -> '.join((*stack, name))}")
        if name in seen:
            return
        path, depends = modinfo(name)
        for dep in depends:
            visit(dep, (*stack, name))
        seen.add(name)
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name, ())
    return order


def parse_ldd(output: str) -> list[str]:
    """Absolute library paths from ``ldd`` output (the vdso has none)."""
    libs = []
    for line in output.splitlines():
        for word in line.split():
            if word.startswith("/") and word not in libs:
                libs.append(word)
    return libs


def _newc_header(ino: int, mode: int, size: int, name: bytes, nlink: int = 1) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def newc_archive(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed cpio "newc" archive (what the kernel unpacks as an initramfs).

    ``entries``: (path without leading '/', st_mode, data); a symlink's data is its
    target, a directory's is empty. Owner root, mtime 0: the archive is reproducible.
    """
    out = bytearray()
    for ino, (path, mode, data) in enumerate(entries, start=1):
        name = path.encode()
        nlink = 2 if stat.S_ISDIR(mode) else 1
        header = _newc_header(ino, mode, len(data), name, nlink)
        out += header + name + b"\0"
        out += _pad(len(header) + len(name) + 1)
        out += data + _pad(len(data))
    trailer = _newc_header(0, 0, 0, b"TRAILER!!!") + b"TRAILER!!!\0"
    out += trailer + _pad(len(trailer))
    return bytes(out)


def probe_entries(rootfs: Path, files: dict[str, str], module_paths: list[str],
                  init_text: bytes) -> list[tuple[str, int, bytes]]:
    """Everything the probe initramfs holds, read from the built rootfs.

    ``files`` maps a path in the initramfs (e.g. the interpreter path ldd names) to
    its canonical path in the rootfs (``readlink -f`` inside the chroot): absolute
    symlinks in the rootfs must not be followed on the build host.
    """
    entries = [(d, stat.S_IFDIR | 0o755, b"") for d in PROBE_DIRS]
    dirs = set(PROBE_DIRS)

    def add_file(inside: str, source: str, mode: int) -> None:
        parent = Path(inside).parent
        for part in reversed([parent, *parent.parents]):
            key = part.as_posix()
            if key not in (".", "") and key not in dirs:
                dirs.add(key)
                entries.append((key, stat.S_IFDIR | 0o755, b""))
        if ".." in Path(source).parts:
            raise ValueError(f"not a canonical path: {source}")
        data = rootfs / source.lstrip("/")
        if data.is_symlink() or not data.is_file():
            raise ValueError(f"{source} is not a regular file in the rootfs")
        entries.append((inside, stat.S_IFREG | mode, data.read_bytes()))

    for inside, source in files.items():
        add_file(inside.lstrip("/"), source, 0o755)
    names = []
    for ko in module_paths:
        name = Path(ko).name
        add_file(f"lib/modules/{name}", ko, 0o644)
        names.append(name)
    entries.append(("lib/modules/order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode()))
    entries.append(("init", stat.S_IFREG | 0o755, init_text))
    return entries


def compress(archive: bytes) -> bytes:
    return gzip.compress(archive, compresslevel=9, mtime=0)
