"""Build the cached Debian bookworm Xen dom0 image that every lab node boots.

    image_key()  hex key over every build input (this file, lab/domu.py, lab/guestimage.py,
                 lab/files/**, constraints.txt, the lab conventions baked into the image,
                 the host's Debian sources and the kernel/Xen versions the host's apt
                 resolves right now)
    current()    IMAGES_DIR/<key> if a complete image for that key exists, else None
    build()      idempotent: reuse the cached image or build it (~10 min cold)

The dom0 rootfs also carries the guests' golden image and boot initramfs
(lab/guestimage.py: /srv/xencluster/images/debian12-guest.tar.zst, guest-initrd.gz).

An image directory holds base.raw (ext4 root fs), xen.bin (multiboot ELF for QEMU
-kernel), vmlinuz + initrd.img (same kernel as the modules in base.raw), the lab ssh
key pair and manifest.json. manifest.json is written last and the directory is built
as <key>.tmp and renamed, so a directory with a manifest is complete.

Facts this relies on are in /work/shared/lab/NOTES.md (pitfall numbers cited below).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from lab import config, domu, guestimage, preflight
from lab.errors import LabError, PreflightError

Log = Callable[[str], None]

SUITE = "bookworm"
DEBIAN_SUITES = (SUITE, f"{SUITE}-updates", f"{SUITE}-security")
DEBIAN_COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")

KERNEL_META = "linux-image-amd64"
XEN_HYPERVISOR = "xen-hypervisor-4.17-amd64"
XEN_UTILS = "xen-utils-4.17"
XEN_GZ_IN_DEB = "boot/xen-4.17-amd64.gz"

# Installed with --no-install-recommends, next to the pinned kernel and Xen packages.
PACKAGES = (
    "initramfs-tools", "xen-utils-common", "lvm2", "targetcli-fb", "python3-rtslib-fb",
    "open-iscsi", "mdadm", "rsync", "openssh-server", "openssh-client", "iproute2",
    "bridge-utils", "kmod", "udev", "systemd-sysv", "dbus", "python3", "python3-venv",
    "busybox-static", "procps", "socat", "e2fsprogs", "psmisc", "netcat-openbsd",
    "ca-certificates",
    "strace",  # benchmarks/highstate_commands.py counts the commands a highstate starts
    "zstd",  # dom0 extracts the guest golden image (tar --zstd)
)
# Slow a TCG boot and do nothing useful in a throwaway lab dom0. Masked, so neither
# udev (mdmonitor) nor first-boot presets (empty machine-id) can start them.
TRIMMED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
    "man-db.timer", "e2scrub_all.timer", "e2scrub_all.service", "e2scrub_reap.service",
    "fstrim.timer", "dpkg-db-backup.timer", "mdmonitor.service", "mdmonitor-oneshot.timer",
    "mdcheck_start.timer", "mdcheck_continue.timer", "lvm2-monitor.service",
    "systemd-timesyncd.service",
)
# xen_blkfront: guests boot this same rootfs (root on xvda) with this initramfs.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic", "xen_blkfront")

# Host tool -> Debian package that ships it.
HOST_TOOLS = {
    "debootstrap": "debootstrap", "mke2fs": "e2fsprogs", "e2fsck": "e2fsprogs",
    "qemu-img": "qemu-utils", "dpkg-deb": "dpkg", "apt-get": "apt", "apt-cache": "apt",
    "apt-config": "apt", "chroot": "coreutils", "mount": "mount", "umount": "mount",
    "tar": "tar", "zstd": "zstd",
}
MIN_FREE_BYTES = 8 * 2**30
APT_LISTS_MAX_AGE_S = 7 * 86400
TAIL_LINES = 30
KEY_LENGTH = 16

SOURCE_FILE = Path(__file__).resolve()
FILES_DIR = SOURCE_FILE.parent / "files"
OVERLAY_DIR = FILES_DIR / "rootfs"
DOMU_SOURCE = Path(domu.__file__).resolve()
GUEST_SOURCE = Path(guestimage.__file__).resolve()
# Lab guest minions reach the host master through these relays (lab-master-relay@.service).
MASTER_RELAYS = ("lab-master-relay@4505.service", "lab-master-relay@4506.service")
DEBS_DIR = config.CACHE_DIR / "debs"
LOGS_DIR = config.LAB_DIR / "logs"
APT_LISTS_DIR = Path("/var/lib/apt/lists")
APT_UPDATE_STAMP = config.CACHE_DIR / "apt-lists.updated"
HOST_SOURCES_LIST = Path("/etc/apt/sources.list")
HOST_SOURCES_DIR = Path("/etc/apt/sources.list.d")
MOUNTINFO = Path("/proc/self/mountinfo")

IMAGE_FILES = ("base.raw", "xen.bin", "vmlinuz", "initrd.img", "id_ed25519", "id_ed25519.pub")
MANIFEST = "manifest.json"

# Inside the chroot during the build only.
CHROOT_WHEELS = "/tmp/lab-wheels"
CHROOT_CONSTRAINTS = "/tmp/lab-constraints.txt"
SALT_VENV = "/opt/salt"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A clean environment: the host's PIP_*, proxies, locale must not leak into the image.
CHROOT_ENV = {
    "PATH": SBIN_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1",
}


class BuildError(LabError):
    """A build step failed: a one-line message naming the command; its output tail is in
    details (printed by the CLI) and attached as a note (shown in tracebacks)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message, details)
        if details:
            self.add_note(f"--- last lines of output ---\n{details}")


# --- sources: which Debian mirror the host's apt uses --------------------------------


@dataclass(frozen=True)
class AptRepo:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""  # a keyring path, or an inline key block (deb822 only)

    def as_dict(self) -> dict:
        return {"types": list(self.types), "uris": list(self.uris), "suites": list(self.suites),
                "components": list(self.components), "signed_by": self.signed_by}

    @classmethod
    def from_dict(cls, data: dict) -> AptRepo:
        return cls(tuple(data["types"]), tuple(data["uris"]), tuple(data["suites"]),
                   tuple(data["components"]), data["signed_by"])


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Fields of each stanza (keys lower-cased); continuation lines joined with newlines."""
    fields: dict[str, str] = {}
    name = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, name = {}, None
        elif line[0] in " \t" and name:
            fields[name] += "\n" + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()


def parse_deb822_sources(text: str) -> list[AptRepo]:
    repos = []
    for fields in _deb822_stanzas(text):
        if fields.get("enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        repos.append(AptRepo(
            types=tuple(fields.get("types", "").split()),
            uris=tuple(fields.get("uris", "").split()),
            suites=tuple(fields.get("suites", "").split()),
            components=tuple(fields.get("components", "").split()),
            signed_by=fields.get("signed-by", "").strip(),
        ))
    return repos


def parse_one_line_sources(text: str) -> list[AptRepo]:
    """`deb [opt=value ...] uri suite component...` lines of sources.list."""
    repos = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        options = {}
        match = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if match:
            kind, opts, rest = match.groups()
            options = dict(opt.split("=", 1) for opt in opts.split() if "=" in opt)
        else:
            kind, _, rest = line.partition(" ")
        words = rest.split()
        if len(words) < 2:
            continue
        repos.append(AptRepo(
            types=(kind,), uris=(words[0],), suites=(words[1],), components=tuple(words[2:]),
            signed_by=options.get("signed-by", ""),
        ))
    return repos


def read_host_sources(sources_list: Path = HOST_SOURCES_LIST,
                      sources_dir: Path = HOST_SOURCES_DIR) -> list[AptRepo]:
    repos: list[AptRepo] = []
    one_line = [sources_list] + sorted(sources_dir.glob("*.list"))
    for path in one_line:
        if path.is_file():
            repos += parse_one_line_sources(path.read_text())
    for path in sorted(sources_dir.glob("*.sources")):
        repos += parse_deb822_sources(path.read_text())
    return repos


def debian_repos(repos: list[AptRepo]) -> list[AptRepo]:
    """The binary bookworm, -updates and -security repos (Debian components only:
    third-party repos that also call their suite "bookworm" use other components)."""
    wanted = []
    for repo in repos:
        suites = tuple(s for s in repo.suites if s in DEBIAN_SUITES)
        components = tuple(c for c in repo.components if c in DEBIAN_COMPONENTS)
        if "deb" in repo.types and suites and "main" in components:
            wanted.append(AptRepo(("deb",), repo.uris, suites, components, repo.signed_by))
    return wanted


def host_debian_repos() -> list[AptRepo]:
    repos = debian_repos(read_host_sources())
    if not any(SUITE in repo.suites for repo in repos):
        raise PreflightError(
            f"the host's apt has no Debian '{SUITE} main' source in {HOST_SOURCES_LIST} or "
            f"{HOST_SOURCES_DIR}/*.sources; the image is built from the host's Debian mirror"
        )
    return repos


def debootstrap_mirror(repos: list[AptRepo]) -> str:
    for repo in repos:
        if SUITE in repo.suites and repo.uris:
            return repo.uris[0]
    raise PreflightError(f"no Debian mirror for '{SUITE}' among the host's apt sources")


def render_deb822(repos: list[AptRepo]) -> str:
    stanzas = []
    for repo in repos:
        lines = [f"Types: {' '.join(repo.types)}", f"URIs: {' '.join(repo.uris)}",
                 f"Suites: {' '.join(repo.suites)}", f"Components: {' '.join(repo.components)}"]
        if repo.signed_by:
            first, *rest = repo.signed_by.split("\n")
            lines.append(f"Signed-By: {first}")
            lines += [f" {line}" if line else " ." for line in rest]
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


# --- apt on the host: resolved versions -----------------------------------------------


def _host_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + ":" + SBIN_PATH
    env["LC_ALL"] = "C.UTF-8"
    return env


def _capture(cmd: list[str]) -> str:
    """Run a quick, read-only host command and return its stdout; fail loudly."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_host_env(), check=False)
    if proc.returncode != 0:
        raise BuildError(
            f"command failed (rc={proc.returncode}): {shlex.join(cmd)}",
            details=_tail(proc.stdout + proc.stderr),
        )
    return proc.stdout


def _apt_lists_hint() -> str:
    return ("the host's apt package lists are missing or broken: run `apt-get update` "
            "(lab.image.build() runs it when the lists are missing or older than "
            f"{APT_LISTS_MAX_AGE_S // 86400} days)")


def kernel_abi_package(depends_output: str) -> str:
    """`apt-cache depends linux-image-amd64` -> 'linux-image-6.1.0-56-amd64' (pitfall 19)."""
    found = re.findall(r"^\s*\|?Depends:\s+(linux-image-\d\S*)\s*$", depends_output, re.M)
    if not found:
        raise BuildError(f"cannot find the kernel ABI package in `apt-cache depends {KERNEL_META}`; "
                         + _apt_lists_hint(), details=depends_output)
    return found[0]


def candidate_version(policy_output: str, package: str) -> str:
    match = re.search(r"^\s*Candidate:\s*(\S+)\s*$", policy_output, re.M)
    if not match or match.group(1) == "(none)":
        raise BuildError(f"apt has no installable candidate for {package}; " + _apt_lists_hint(),
                         details=policy_output)
    return match.group(1)


def _candidate(package: str) -> str:
    try:
        output = _capture(["apt-cache", "policy", package])
    except BuildError as exc:
        raise BuildError(f"{exc}; {_apt_lists_hint()}", details=exc.details) from exc
    return candidate_version(output, package)


def resolve_apt_versions() -> dict[str, str]:
    """Kernel ABI and the kernel/Xen versions the host's apt would install today."""
    try:
        depends = _capture(["apt-cache", "depends", KERNEL_META])
    except BuildError as exc:
        raise BuildError(f"{exc}; {_apt_lists_hint()}", details=exc.details) from exc
    kernel_package = kernel_abi_package(depends)
    return {
        "kernel_abi": kernel_package.removeprefix("linux-image-"),
        "kernel_package": kernel_package,
        "kernel_version": _candidate(kernel_package),
        XEN_HYPERVISOR: _candidate(XEN_HYPERVISOR),
        XEN_UTILS: _candidate(XEN_UTILS),
    }


def apt_lists_state(now: float | None = None) -> str:
    """'missing', 'stale' or 'fresh'. apt stamps list files with the server's date, so
    freshness comes from our own stamp or the lists directory itself."""
    if not any(APT_LISTS_DIR.glob("*_Packages*")):
        return "missing"
    stamps = [path.stat().st_mtime for path in (APT_UPDATE_STAMP, APT_LISTS_DIR) if path.exists()]
    age = (now or time.time()) - max(stamps)
    return "stale" if age > APT_LISTS_MAX_AGE_S else "fresh"


# --- the key ---------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pinned_salt_version(constraints_text: str) -> str:
    match = re.search(r"^\s*salt\s*==\s*([^\s;#]+)", constraints_text, re.M | re.I)
    if not match:
        raise PreflightError(f"{config.CONSTRAINTS} pins no salt version (expected a line salt==X)")
    return match.group(1)


def _file_digests() -> dict[str, str]:
    """This builder and its assets; the exec bit matters for files copied into the image."""
    files = [SOURCE_FILE, DOMU_SOURCE, GUEST_SOURCE] + sorted(p for p in FILES_DIR.rglob("*") if p.is_file())
    digests = {}
    for path in files:
        mode = "+x" if os.access(path, os.X_OK) else ""
        digests[path.relative_to(config.REPO).as_posix()] = _sha256(path.read_bytes()) + mode
    return digests


def baked_conventions() -> dict:
    """The lab conventions (lab/config.py) written into the image."""
    every = [config.Node(n) for n in range(1, config.MAX_NODES + 1)]
    return {
        "max_nodes": config.MAX_NODES,
        "mgmt_addr": config.MGMT_ADDR,
        "guest_master_addr": config.GUEST_MASTER_ADDR,
        "iqn_prefix": config.IQN_PREFIX,
        "root_image_size": config.ROOT_IMAGE_SIZE,
        "nodes": {n.name: [n.mac(1), n.mac(2), n.san_addr] for n in every},
    }


def key_inputs() -> dict:
    constraints = config.CONSTRAINTS.read_bytes()
    return {
        "format": 1,
        "files": _file_digests(),
        "constraints.txt": _sha256(constraints),
        "salt": pinned_salt_version(constraints.decode()),
        "conventions": baked_conventions(),
        "sources": [repo.as_dict() for repo in host_debian_repos()],
        "apt": resolve_apt_versions(),
    }


def key_of(inputs: dict) -> str:
    return _sha256(json.dumps(inputs, sort_keys=True).encode())[:KEY_LENGTH]


def image_key() -> str:
    return key_of(key_inputs())


def is_complete(directory: Path, key: str) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("key") == key and all((directory / name).is_file() for name in IMAGE_FILES)


def current() -> Path | None:
    key = image_key()
    directory = config.IMAGES_DIR / key
    return directory if is_complete(directory, key) else None


# --- preflight -------------------------------------------------------------------------


def require_tools() -> None:
    search = os.environ.get("PATH", "") + ":" + SBIN_PATH
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool, path=search) is None]
    if missing:
        packages = sorted({HOST_TOOLS[tool] for tool in missing})
        raise PreflightError(f"missing host tool(s) {', '.join(missing)}: "
                             f"apt-get install {' '.join(packages)} (or `make host-deps`)")


def require_build_prerequisites(need_disk: bool = True) -> None:
    preflight.require_root("build")
    require_tools()
    if need_disk:
        preflight.require_disk(config.LAB_DIR, MIN_FREE_BYTES,
                               "the image build (rootfs, base.raw, package cache)")


# --- mounts ----------------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below path, deepest first."""
    root = os.path.realpath(path)
    found = []
    with open(MOUNTINFO) as mountinfo:
        for line in mountinfo:
            point = _unescape_mountinfo(line.split()[4])
            if point == root or point.startswith(root + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(path: Path) -> None:
    """Lazily unmount everything below path; raise if anything is still mounted, because
    removing a tree with /dev or the package cache bound into it would delete those."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, env=_host_env(), check=False)
    left = mounts_under(path)
    if left:
        raise BuildError(f"cannot unmount {', '.join(map(str, left))}; unmount them by hand")


def remove_tree(path: Path) -> None:
    if path.exists():
        unmount_all_under(path)
        shutil.rmtree(path)


# --- the build -------------------------------------------------------------------------


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Builder:
    """One build of IMAGES_DIR/<key>: runs steps, logs commands and their durations."""

    def __init__(self, key: str, inputs: dict, log: Log):
        self.key = key
        self.inputs = inputs
        self.log = log
        self.final = config.IMAGES_DIR / key
        self.tmp = config.IMAGES_DIR / f"{key}.tmp"
        self.rootfs = self.tmp / "rootfs"
        self.guestroot = self.tmp / "guestroot"
        self.guest_log = LOGS_DIR / f"build-{key}-guest-debootstrap.log"
        self._guest_debootstrap: subprocess.Popen | None = None
        self._guest_started = 0.0
        self.logfile = LOGS_DIR / f"build-{key}.log"
        # The sources the key was computed from, not a second read of the host's files.
        self.repos = [AptRepo.from_dict(repo) for repo in inputs["sources"]]
        self.durations: dict[str, float] = {}
        self.resolved: dict = {}
        self._log_handle = None

    # -- plumbing

    def note(self, message: str) -> None:
        self.log(f"image: {message}")
        self._write(f"# {time.strftime('%H:%M:%S')} {message}\n")

    def _write(self, text: str) -> None:
        if self._log_handle:
            self._log_handle.write(text)
            self._log_handle.flush()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.note(f"{name} ...")
        started = time.monotonic()
        yield
        self.durations[name] = round(time.monotonic() - started, 1)
        self.note(f"{name} done in {self.durations[name]} s")

    def run(self, cmd: list[str], env: dict | None = None, capture: bool = False) -> str:
        """Run cmd, streaming its output to the build log; on failure raise with its tail."""
        self._write(f"$ {shlex.join(cmd)}\n")
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        captured: list[str] = []
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env or _host_env(),
                                text=True, errors="replace")
        try:
            for line in proc.stdout:
                self._write(line)
                tail.append(line.rstrip("\n"))
                if capture:
                    captured.append(line)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: do not leave the child running
                proc.terminate()
                proc.wait()
        if returncode != 0:
            raise BuildError(f"command failed (rc={returncode}): {shlex.join(cmd)} "
                             f"(full log: {self.logfile})", details="\n".join(tail))
        return "".join(captured)

    def for_root(self, rootfs: Path) -> Builder:
        """This build (same log, inputs, step times and results) working on another tree:
        the guest golden image is built with the same chroot/write helpers."""
        other = copy.copy(self)
        other.rootfs = rootfs
        return other

    def chroot(self, *cmd: str, env: dict | None = None, capture: bool = False) -> str:
        return self.run(["chroot", str(self.rootfs), *cmd], env={**CHROOT_ENV, **(env or {})},
                        capture=capture)

    def path(self, inside: str) -> Path:
        return self.rootfs / inside.lstrip("/")

    def writable(self, inside: str) -> Path:
        """A rootfs path to (re)write. An existing symlink is dropped first: an absolute
        one would resolve on the build host, not in the rootfs."""
        target = self.path(inside)
        if target.is_symlink():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.writable(inside)
        target.write_text(text)
        target.chmod(mode)

    # -- the whole build

    def build(self) -> Path:
        LOGS_DIR.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._log_handle = open(self.logfile, "w")
        try:
            self.note(f"building {self.final} (log {self.logfile})")
            self._build_steps()
            total = round(time.monotonic() - started, 1)
            self._write_manifest(total)
            self._publish()
            self.note(f"built {self.final} in {total} s")
        except BaseException as exc:
            self.note(f"build FAILED after {time.monotonic() - started:.0f} s: {exc!r}; "
                      f"the partial tree {self.tmp} is removed by the next build")
            raise
        finally:
            self._log_handle.close()
            self._log_handle = None
        return self.final

    def _build_steps(self) -> None:
        with self.step("prepare"):
            self.remove_leftovers()
            self.rootfs.mkdir(parents=True)
            (DEBS_DIR / "partial").mkdir(parents=True, exist_ok=True)
        with self.step("wheelhouse"):
            wheels = self.ensure_wheelhouse()
        with self.step("debootstrap"):
            self.debootstrap()
        with self.background_guest_debootstrap():
            try:
                with self.chroot_mounts(wheels):
                    with self.step("packages"):
                        self.install_packages()
                    with self.step("configure"):
                        self.configure()
                    with self.step("salt"):
                        self.install_salt()
                    with self.step("initramfs"):
                        self.make_initramfs()
                    with self.step("probe guest initramfs"):
                        self.make_probe_initramfs()
                    with self.step("guest initramfs"):
                        self.make_guest_initramfs()
                    with self.step("verify"):
                        self.verify_rootfs()
            finally:
                unmount_all_under(self.rootfs)
            with self.step("guest image"):
                self.build_guest_image()
        with self.step("finalize rootfs"):
            self.finalize_rootfs()
        with self.step("mke2fs"):
            self.make_filesystem()
        with self.step("boot files"):
            self.copy_boot_files()
        with self.step("cleanup"):
            remove_tree(self.guestroot)
            remove_tree(self.rootfs)

    # -- steps

    def remove_leftovers(self) -> None:
        """Trees of interrupted builds and of interrupted publishes; safe because we
        hold the build lock, so no other build owns them."""
        for leftover in [*config.IMAGES_DIR.glob("*.tmp"), *config.IMAGES_DIR.glob("*.old-*")]:
            self.note(f"removing leftover {leftover}")
            remove_tree(leftover)

    def ensure_wheelhouse(self) -> Path:
        """Salt and its dependencies as wheels, built once per constraints.txt on the host
        (salt 3008 compiles timelib; the image gets no compiler, pitfall 13)."""
        constraints = config.CONSTRAINTS.read_bytes()
        wheels = config.WHEELS_DIR / _sha256(constraints)[:KEY_LENGTH]
        if any(wheels.glob("salt-*.whl")):
            self.note(f"wheelhouse cached: {wheels}")
            return wheels
        partial = wheels.with_name(wheels.name + ".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
                  "-c", str(config.CONSTRAINTS), f"salt=={self.inputs['salt']}", "-w", str(partial)])
        shutil.rmtree(wheels, ignore_errors=True)
        partial.rename(wheels)
        return wheels

    def debootstrap_command(self) -> list[str]:
        repos = self.repos
        cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={DEBS_DIR}"]
        keyring = next((r.signed_by for r in repos if SUITE in r.suites), "")
        if keyring.startswith("/") and "\n" not in keyring:
            cmd.append(f"--keyring={keyring}")
        return cmd + [SUITE, str(self.rootfs), debootstrap_mirror(repos)]

    def debootstrap(self) -> None:
        self.run(self.debootstrap_command())

    @contextlib.contextmanager
    def chroot_mounts(self, wheels: Path | None = None) -> Iterator[None]:
        """proc/sys/dev/devpts, the shared .deb cache and the wheelhouse (if given);
        always unmounted (lazily) on the way out, whatever happened, Ctrl-C included."""
        plan = [
            (["-t", "proc", "proc"], "proc"),
            (["-t", "sysfs", "sysfs"], "sys"),
            (["--bind", "/dev"], "dev"),
            (["-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5", "devpts"], "dev/pts"),
            (["--bind", str(DEBS_DIR)], "var/cache/apt/archives"),
        ]
        if wheels:
            plan.append((["--bind", "-o", "ro", str(wheels)], CHROOT_WHEELS))
        try:
            for args, inside in plan:
                target = self.path(inside)
                target.mkdir(parents=True, exist_ok=True)
                self.run(["mount", *args, str(target)])
                if "--bind" in args:  # nothing mounted below it may propagate to the host
                    self.run(["mount", "--make-rslave", str(target)])
            yield
        finally:
            unmount_all_under(self.rootfs)

    def apt_options(self) -> list[str]:
        """The host's own apt leniency (e.g. Check-Valid-Until for a snapshot mirror), so
        the chroot's apt sees the mirror the way the host's apt does; no sandbox user
        because the shared .deb cache belongs to the host; no fsync per file, because a
        crashed build is thrown away anyway."""
        dump = _capture(["apt-config", "dump"])
        options = ["-o", "APT::Sandbox::User=root", "-o", "Dpkg::Use-Pty=0",
                   "-o", "Acquire::Languages=none", "-o", "Dpkg::Options::=--force-unsafe-io"]
        for name in ("Acquire::Check-Valid-Until", "Acquire::Check-Date"):
            match = re.search(rf'^{re.escape(name)} "([^"]*)";$', dump, re.M)
            if match:
                options += ["-o", f"{name}={match.group(1)}"]
        return options

    def stage_apt(self) -> None:
        """The host's Debian sources (and their keyrings) for the chroot's apt, and a
        policy-rc.d so that no daemon starts inside the chroot."""
        repos = self.repos
        self.path("etc/apt/sources.list").unlink(missing_ok=True)
        self.write("etc/apt/sources.list.d/debian.sources", render_deb822(repos))
        for repo in repos:  # a Signed-By keyring the chroot does not have yet
            keyring = repo.signed_by
            if keyring.startswith("/") and "\n" not in keyring and not self.path(keyring).exists():
                self.path(keyring).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(keyring, self.path(keyring))
        # Removed before the image is made.
        self.write("usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)

    def install_packages(self) -> None:
        self.stage_apt()
        # Staged before the kernel arrives, so any initrd made during install is small.
        self.copy_overlay_file("etc/initramfs-tools/conf.d/lab.conf")
        versions = self.inputs["apt"]
        apt = ["apt-get", *self.apt_options()]
        self.chroot(*apt, "update")
        self.chroot(*apt, "-y", "dist-upgrade")
        pinned = [f"{versions['kernel_package']}={versions['kernel_version']}",
                  f"{XEN_UTILS}={versions[XEN_UTILS]}", f"{XEN_HYPERVISOR}={versions[XEN_HYPERVISOR]}"]
        # INITRD=No: the kernel hook skips its initrd; we make the one we need once, later.
        self.chroot(*apt, "-y", "--no-install-recommends", "install", *pinned, *PACKAGES,
                    env={"INITRD": "No"})

    def copy_overlay_file(self, relative: str) -> None:
        source = OVERLAY_DIR / relative
        target = self.writable(relative)
        shutil.copy2(source, target)
        os.chown(target, 0, 0)

    def configure(self) -> None:
        for source in sorted(p for p in OVERLAY_DIR.rglob("*") if p.is_file()):
            self.copy_overlay_file(source.relative_to(OVERLAY_DIR).as_posix())
        self.configure_identity()
        self.configure_network()
        self.configure_ssh()
        self.configure_xen()
        self.configure_salt_minion_files()
        self.configure_units()

    def configure_identity(self) -> None:
        # Per-node identity comes from systemd.hostname=nodeN (pitfall 5); debootstrap
        # copied the build host's hostname and resolv.conf, which must not ship.
        for leftover in ("etc/hostname", "etc/resolv.conf", "var/lib/dbus/machine-id",
                         "etc/iscsi/initiatorname.iscsi"):
            self.path(leftover).unlink(missing_ok=True)
        self.write("etc/machine-id", "")  # empty: systemd makes a fresh one on each node
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        hosts += [f"{config.Node(n).san_addr} {config.Node(n).name}"
                  for n in range(1, config.MAX_NODES + 1)]
        self.write("etc/hosts", "\n".join(hosts) + "\n")
        self.write("usr/local/sbin/lab-identity", (
            "#!/bin/sh\n"
            "# iSCSI initiator name of this node, from the hostname set by systemd.hostname=\n"
            f'echo "InitiatorName={config.IQN_PREFIX}:$(hostname)" > /etc/iscsi/initiatorname.iscsi\n'
        ), 0o755)
        self.strip_mdadm_arrays()

    def strip_mdadm_arrays(self) -> None:
        """The build host's arrays must not end up in the image's mdadm.conf."""
        mdadm_conf = self.path("etc/mdadm/mdadm.conf")
        if mdadm_conf.exists():
            self.write("etc/mdadm/mdadm.conf", guestimage.without_array_lines(mdadm_conf.read_text()))

    def configure_network(self) -> None:
        """systemd-networkd, static, matched on the QEMU MACs: one image for every node.
        Type=ether keeps a bond/bridge/VLAN that inherits a NIC's MAC from matching too.
        The service links (nics 3 and 4, eth2 and eth3) match nothing here on purpose:
        the product's formula bonds them and puts the VLAN bridges on top."""
        every = [config.Node(n) for n in range(1, config.MAX_NODES + 1)]
        no_autoconf = "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        self.write("etc/systemd/network/10-lab-mgmt.network", (
            "# management NIC: QEMU slirp (restrict=on); ssh and the salt master are forwarded\n"
            f"[Match]\nType=ether\nMACAddress={' '.join(n.mac(1) for n in every)}\n\n"
            f"[Network]\nAddress={config.MGMT_ADDR}/24\nGateway=10.0.2.2\n{no_autoconf}"
        ))
        for node in every:
            self.write(f"etc/systemd/network/20-lab-san-{node.name}.network", (
                f"# SAN NIC of {node.name}: the lab's private SAN segment\n"
                f"[Match]\nType=ether\nMACAddress={node.mac(2)}\n\n"
                f"[Network]\nAddress={node.san_addr}/24\n{no_autoconf}"
            ))

    def configure_ssh(self) -> None:
        ssh_dir = self.path("root/.ssh")
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        ssh_dir.chmod(0o700)
        for name in ("id_ed25519", "id_ed25519.pub"):
            (ssh_dir / name).unlink(missing_ok=True)
        self.chroot("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@xencluster-lab",
                    "-f", "/root/.ssh/id_ed25519")
        shutil.copyfile(ssh_dir / "id_ed25519.pub", ssh_dir / "authorized_keys")
        for name in ("id_ed25519", "authorized_keys", "config"):
            (ssh_dir / name).chmod(0o600)

    def configure_xen(self) -> None:
        # xenconsoled does not create its log dir (pitfall 10).
        self.path("var/log/xen/console").mkdir(parents=True, exist_ok=True)
        default = self.path("etc/default/xen")
        lines = default.read_text().splitlines() if default.exists() else []
        lines = [line for line in lines if not line.startswith("XENCONSOLED_ARGS=")]
        lines.append('XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console --timestamp=guest"')
        self.write("etc/default/xen", "\n".join(lines) + "\n")

    def configure_salt_minion_files(self) -> None:
        # No id: it defaults to the hostname (nodeN). Minion keys are made on first start.
        self.write("etc/salt/minion.d/lab.conf", (
            "# Lab dom0 minion; the host master is reached through slirp guestfwd.\n"
            f"master: {config.GUEST_MASTER_ADDR}\n"
            "acceptance_wait_time: 5\n"
            "acceptance_wait_time_max: 10\n"
            "random_reauth_delay: 0\n"
        ))

    def configure_units(self) -> None:
        self.chroot("systemctl", "enable", "systemd-networkd.service", "lab-identity.service",
                    "salt-minion.service", *MASTER_RELAYS)
        # xendomains: nothing may start guests automatically (pitfall 12).
        present = [u for u in ("xendomains.service", *TRIMMED_UNITS) if self._unit_installed(u)]
        if present:
            self.chroot("systemctl", "disable", *present)
        self.chroot("systemctl", "mask", "systemd-networkd-wait-online.service",
                    "xendomains.service", *TRIMMED_UNITS)

    def _unit_installed(self, unit: str) -> bool:
        name = unit.rsplit(".", 1)[0]
        dirs = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
        native = any(self.path(f"{d}/{unit}").is_file() for d in dirs)
        sysv = unit.endswith(".service") and self.path(f"etc/init.d/{name}").is_file()
        return native or sysv

    def install_salt(self) -> None:
        """Pinned salt in its own venv that still sees Debian's rtslib_fb; installed
        offline from the host-built wheelhouse, so the image needs no compiler."""
        chroot_python = self.chroot("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])",
                                    capture=True).strip()
        host_python = "%d.%d" % sys.version_info[:2]
        if chroot_python != host_python:
            raise BuildError(f"the wheelhouse is built by the host's Python {host_python} but the "
                             f"image has Python {chroot_python}; run the build from a Python "
                             f"{chroot_python} venv")
        shutil.copyfile(config.CONSTRAINTS, self.path(CHROOT_CONSTRAINTS))
        salt = self.inputs["salt"]
        self.chroot("python3", "-m", "venv", "--system-site-packages", SALT_VENV)
        self.chroot(f"{SALT_VENV}/bin/python", "-m", "pip", "install", "--no-index",
                    "--find-links", CHROOT_WHEELS, "-c", CHROOT_CONSTRAINTS, f"salt=={salt}")
        for tool in ("salt-call", "salt-minion"):
            link = self.path(f"usr/local/bin/{tool}")
            link.unlink(missing_ok=True)
            link.symlink_to(f"{SALT_VENV}/bin/{tool}")
        found = self.chroot(f"{SALT_VENV}/bin/python", "-c",
                            "import rtslib_fb, salt.version; print(salt.version.__version__)",
                            capture=True).strip()
        if found != salt:
            raise BuildError(f"the image's venv has salt {found}, constraints.txt pins {salt}")
        self.resolved["salt"] = found
        self.resolved["python"] = self.chroot("python3", "-c", "import platform; print(platform.python_version())",
                                              capture=True).strip()

    def make_initramfs(self) -> None:
        """MODULES=list + virtio/ext4 (conf.d/lab.conf), for exactly the resolved kernel."""
        modules = self.path("etc/initramfs-tools/modules")
        listed = modules.read_text().splitlines() if modules.exists() else []
        listed += [m for m in INITRAMFS_MODULES if m not in listed]
        self.write("etc/initramfs-tools/modules", "\n".join(listed) + "\n")
        abi = self.inputs["apt"]["kernel_abi"]
        mode = "-u" if self.path(f"boot/initrd.img-{abi}").exists() else "-c"
        self.chroot("update-initramfs", mode, "-k", abi)
        contents = self.chroot("lsinitramfs", f"/boot/initrd.img-{abi}", capture=True)
        for module in ("virtio_blk", "virtio_pci", "virtio_net", "xen-blkfront"):
            if f"/{module}.ko" not in contents:
                raise BuildError(f"the initramfs lacks {module}.ko; see {self.logfile}")

    def make_probe_initramfs(self) -> None:
        """The probe guest's busybox+mdadm initramfs (lab/domu.py), from this rootfs."""
        self.make_busybox_initramfs("probe guest", domu.PROBE_MODULES, domu.PROBE_INIT, domu.PROBE_INITRD)

    def make_guest_initramfs(self) -> None:
        """The guests' boot initramfs (lab/guestimage.py): md0 from xvda/xvdb, switch_root."""
        size = self.make_busybox_initramfs("guest boot", guestimage.GUEST_MODULES,
                                           guestimage.GUEST_INIT, guestimage.GUEST_INITRD)
        self.resolved["guest_initrd"] = {"path": f"/{guestimage.GUEST_INITRD}", "bytes": size}

    def make_busybox_initramfs(self, label: str, wanted: tuple[str, ...], init: Path, target: str) -> int:
        """busybox + mdadm (+ its libraries) + the modules ``wanted`` with their
        dependencies + ``init`` as /init, from this rootfs, gzipped to ``target``
        inside it; returns its size."""
        abi = self.inputs["apt"]["kernel_abi"]

        def canonical(path: str) -> str:
            return self.chroot("readlink", "-f", path, capture=True).strip()

        def modinfo(name: str) -> tuple[str, list[str]]:
            ko = self.chroot("modinfo", "-k", abi, "-F", "filename", name, capture=True).strip()
            deps = self.chroot("modinfo", "-k", abi, "-F", "depends", name, capture=True).strip()
            return canonical(ko), [d for d in deps.split(",") if d]

        files = {"/bin/busybox": canonical("/bin/busybox"), "/sbin/mdadm": canonical("/sbin/mdadm")}
        for lib in domu.parse_ldd(self.chroot("ldd", "/sbin/mdadm", capture=True)):
            files[lib] = canonical(lib)
        modules = domu.module_order(wanted, modinfo)
        entries = domu.probe_entries(self.rootfs, files, modules, init.read_bytes())
        data = domu.compress(domu.newc_archive(entries))
        self.writable(target).write_bytes(data)
        self.note(f"{label} initramfs /{target}: {len(entries)} entries, {len(data)} bytes, "
                  f"modules {', '.join(Path(m).name for m in modules)}")
        return len(data)

    # -- the guest golden image (lab/guestimage.py)

    @contextlib.contextmanager
    def background_guest_debootstrap(self) -> Iterator[None]:
        """The guest's own minbase debootstrap, started in the background: it needs only
        the .deb cache the dom0's debootstrap has just filled, and it runs while the dom0
        installs its packages (two mostly single-threaded dpkg runs on the host's cores).
        Its output goes to a side log until build_guest_image waits for it; it is stopped
        if the build fails first."""
        self.guestroot.mkdir(parents=True)
        cmd = self.for_root(self.guestroot).debootstrap_command()
        self._write(f"$ {shlex.join(cmd)} > {self.guest_log} (in the background)\n")
        with open(self.guest_log, "w") as side_log:
            self._guest_debootstrap = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=side_log,
                                                       stderr=subprocess.STDOUT, env=_host_env())
        self._guest_started = time.monotonic()
        try:
            yield
        finally:
            proc = self._guest_debootstrap
            if proc.poll() is None:
                proc.terminate()
                proc.wait()

    def wait_guest_debootstrap(self) -> None:
        """Wait for the background debootstrap; its output moves into the build log."""
        proc = self._guest_debootstrap
        returncode = proc.wait()
        took = round(time.monotonic() - self._guest_started, 1)
        output = self.guest_log.read_text(errors="replace")
        self._write(output)
        self.guest_log.unlink()
        self.durations["guest debootstrap (background)"] = took
        if returncode != 0:
            raise BuildError(f"command failed (rc={returncode}): {shlex.join(proc.args)} "
                             f"(full log: {self.logfile})", details=_tail(output))
        self.note(f"guest debootstrap took {took} s in the background")

    def build_guest_image(self) -> None:
        """The guest's packages from the dom0 build's apt lists and .deb cache (nothing
        new to download), the dom0's salt venv, checked, scrubbed and archived into this
        rootfs."""
        guest = self.for_root(self.guestroot)
        with self.step("guest debootstrap (wait)"):
            self.wait_guest_debootstrap()
        try:
            with guest.chroot_mounts():
                with self.step("guest packages"):
                    self.install_guest_packages(guest)
                with self.step("guest configure"):
                    self.configure_guest(guest)
                with self.step("guest verify"):
                    self.verify_guest(guest)
        finally:
            unmount_all_under(guest.rootfs)
        with self.step("guest archive"):
            self.archive_guest(guest)

    def install_guest_packages(self, guest: Builder) -> None:
        guest.stage_apt()
        # The dom0's lists of the same sources, fetched by this build: no second update.
        lists = guest.path("var/lib/apt/lists")
        for source in self.path("var/lib/apt/lists").iterdir():
            if source.is_file() and "_" in source.name:
                shutil.copy2(source, lists / source.name)
        guest.write(guestimage.DPKG_NODOC, guestimage.dpkg_nodoc_config())
        apt = ["apt-get", *self.apt_options()]
        guest.chroot(*apt, "-y", "dist-upgrade")
        guest.chroot(*apt, "-y", "--no-install-recommends", "install", *guestimage.GUEST_PACKAGES)

    def configure_guest(self, guest: Builder) -> None:
        """The dom0's salt venv and minion unit, units enabled and masked, docs pruned."""
        shutil.copytree(self.path(SALT_VENV), guest.path(SALT_VENV), symlinks=True)
        unit = "etc/systemd/system/salt-minion.service"
        shutil.copy2(self.path(unit), guest.writable(unit))
        for tool in ("salt-call", "salt-minion"):
            guest.writable(f"usr/local/bin/{tool}").symlink_to(f"{SALT_VENV}/bin/{tool}")
        for inside, text in guestimage.GUEST_FILES.items():
            guest.write(inside, text)
        guest.strip_mdadm_arrays()
        guest.chroot("systemctl", "enable", *guestimage.GUEST_ENABLED_UNITS)
        masked = [u for u in guestimage.GUEST_MASKED_UNITS if guest._unit_installed(u)]
        if masked:
            guest.chroot("systemctl", "mask", *masked)
        freed = guestimage.prune_docs(guest.rootfs)
        self.note(f"guest: pruned {freed // 2**20} MiB of docs, manuals and translations")

    def verify_guest(self, guest: Builder) -> None:
        """The guest's salt runs (its venv on the guest's own Python), mdadm is there,
        the units are enabled; records the guest's package list."""
        salt = self.inputs["salt"]
        version = guest.chroot(f"{SALT_VENV}/bin/salt-call", "--version", capture=True).strip()
        if version.split()[:2] != ["salt-call", salt]:
            raise BuildError(f"the guest's salt-call says {version!r}, expected salt {salt}")
        # What salt-minion imports to talk to its master: zmq, cryptography, the ssl module.
        guest.chroot(f"{SALT_VENV}/bin/python", "-c", "import salt.minion, salt.crypt, salt.transport.zeromq, ssl")
        mdadm = guest.chroot("mdadm", "--version", capture=True).strip()
        enabled = guest.chroot("systemctl", "is-enabled", *guestimage.GUEST_ENABLED_UNITS, capture=True).split()
        if enabled != ["enabled"] * len(guestimage.GUEST_ENABLED_UNITS):
            raise BuildError(f"guest units {guestimage.GUEST_ENABLED_UNITS} are {enabled}, not enabled")
        packages = guest.installed_packages()
        self.resolved["guest_image"] = {"salt": version, "mdadm": mdadm, "package_count": len(packages),
                                        "packages": packages}

    def archive_guest(self, guest: Builder) -> None:
        """Scrubbed, then `tar --zstd` into this rootfs; size and time go to the manifest."""
        if mounts_under(guest.rootfs):
            raise BuildError(f"something is still mounted under {guest.rootfs}")
        removed = guestimage.scrub(guest.rootfs)
        self._write(f"# guest: scrubbed {' '.join(removed)}\n")
        tree_bytes = guestimage.tree_bytes(guest.rootfs)
        archive = self.writable(guestimage.GUEST_ARCHIVE)
        archive.unlink(missing_ok=True)
        self.run(guestimage.archive_command(guest.rootfs, archive))
        archive.chmod(0o644)
        size = archive.stat().st_size
        self.resolved["guest_image"].update(path=f"/{guestimage.GUEST_ARCHIVE}", bytes=size,
                                            tree_bytes=tree_bytes)
        self.note(f"guest image /{guestimage.GUEST_ARCHIVE}: {size / 2**20:.1f} MiB "
                  f"({tree_bytes / 2**20:.0f} MiB unpacked, "
                  f"{self.resolved['guest_image']['package_count']} packages)")

    def installed_packages(self) -> dict[str, str]:
        """Package -> version of everything dpkg has installed in this tree."""
        listing = self.chroot("dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n",
                              capture=True)
        installed = {}
        for line in listing.splitlines():
            status, package, version = line.split("\t")
            if status.startswith("ii"):
                installed[package] = version
        return installed

    def verify_rootfs(self) -> None:
        """The image holds what the key promises, and nothing per-node."""
        installed = self.installed_packages()
        versions = self.inputs["apt"]
        expected = {versions["kernel_package"]: versions["kernel_version"],
                    XEN_UTILS: versions[XEN_UTILS], XEN_HYPERVISOR: versions[XEN_HYPERVISOR]}
        for package, version in expected.items():
            if installed.get(package) != version:
                raise BuildError(f"{package} {installed.get(package)} is installed in the image, "
                                 f"expected {version} (resolved on the host)")
        abi = versions["kernel_abi"]
        for inside in (f"boot/vmlinuz-{abi}", f"boot/initrd.img-{abi}", f"lib/modules/{abi}/modules.dep"):
            if not self.path(inside).exists():
                raise BuildError(f"the rootfs lacks /{inside}")
        self.resolved.update(kernel_abi=abi, kernel=versions["kernel_version"],
                             xen_hypervisor=versions[XEN_HYPERVISOR], xen_utils=versions[XEN_UTILS],
                             xen_utils_common=installed.get("xen-utils-common", ""),
                             package_count=len(installed), packages=installed)

    def finalize_rootfs(self) -> None:
        if mounts_under(self.rootfs):
            raise BuildError(f"something is still mounted under {self.rootfs}")
        self.path("usr/sbin/policy-rc.d").unlink()
        for leftover in (CHROOT_CONSTRAINTS, "etc/salt/minion_id", "etc/salt/pki",
                         "var/cache/salt", "root/.cache", "var/cache/apt/pkgcache.bin",
                         "var/cache/apt/srcpkgcache.bin"):
            path = self.path(leftover)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.path(CHROOT_WHEELS).rmdir()

    def make_filesystem(self) -> None:
        base = self.tmp / "base.raw"
        base.unlink(missing_ok=True)
        # mke2fs -d fills the fs from the tree: no loop mount, no device-mapper.
        self.run(["mke2fs", "-q", "-t", "ext4", "-L", "dom0root", "-E", "root_owner=0:0",
                  "-d", str(self.rootfs), str(base), config.ROOT_IMAGE_SIZE])
        self.run(["e2fsck", "-fn", str(base)])

    def copy_boot_files(self) -> None:
        abi = self.inputs["apt"]["kernel_abi"]
        shutil.copyfile(self.path(f"boot/vmlinuz-{abi}"), self.tmp / "vmlinuz")
        shutil.copyfile(self.path(f"boot/initrd.img-{abi}"), self.tmp / "initrd.img")
        self.extract_xen()
        for name, mode in (("id_ed25519", 0o600), ("id_ed25519.pub", 0o644)):
            shutil.copyfile(self.path(f"root/.ssh/{name}"), self.tmp / name)
            (self.tmp / name).chmod(mode)

    def extract_xen(self) -> None:
        """QEMU -kernel loads a multiboot ELF, not the gzip Debian ships (pitfall 4)."""
        version = self.inputs["apt"][XEN_HYPERVISOR].replace(":", "%3a")
        deb = DEBS_DIR / f"{XEN_HYPERVISOR}_{version}_amd64.deb"
        if not deb.is_file():
            raise BuildError(f"{deb} is not in the package cache")
        unpacked = self.tmp / "xen-deb"
        remove_tree(unpacked)
        self.run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        xen = gzip.decompress((unpacked / XEN_GZ_IN_DEB).read_bytes())
        if xen[:4] != b"\x7fELF":
            raise BuildError(f"{XEN_GZ_IN_DEB} from {deb.name} is not an ELF image")
        (self.tmp / "xen.bin").write_bytes(xen)
        shutil.rmtree(unpacked)

    def _write_manifest(self, total: float) -> None:
        sizes = {}
        for name in IMAGE_FILES:
            st = (self.tmp / name).stat()
            sizes[name] = {"bytes": st.st_size, "allocated": st.st_blocks * 512}
        manifest = {
            "key": self.key,
            "inputs": self.inputs,
            "resolved": self.resolved,
            "steps_s": self.durations,
            "total_s": total,
            "sizes": sizes,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "log": str(self.logfile),
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def _publish(self) -> None:
        """Rename into place; a forced rebuild moves the old image aside first (running
        QEMUs keep their open base.raw)."""
        old = None
        if self.final.exists():
            old = self.final.with_name(f"{self.key}.old-{os.getpid()}")
            self.final.rename(old)
        self.tmp.rename(self.final)
        if old:
            remove_tree(old)


# --- entry points ----------------------------------------------------------------------


def ensure_fresh_apt_lists(log: Log) -> None:
    state = apt_lists_state()
    if state == "fresh":
        return
    log(f"image: host apt package lists are {state}: apt-get update")
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True,
                          env=_host_env(), check=False)
    (LOGS_DIR / "apt-update.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BuildError(f"apt-get update failed (rc={proc.returncode}); the image needs the "
                         "host's Debian mirror", details=_tail(proc.stdout + proc.stderr))
    APT_UPDATE_STAMP.parent.mkdir(parents=True, exist_ok=True)
    APT_UPDATE_STAMP.touch()


@contextlib.contextmanager
def _build_lock(log: Log) -> Iterator[None]:
    config.IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with open(config.IMAGES_DIR / ".build.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("image: another build is running; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(force: bool = False, log: Log = print) -> Path:
    """Return IMAGES_DIR/<key>, building it first unless a complete one exists."""
    require_build_prerequisites(need_disk=False)
    ensure_fresh_apt_lists(log)
    inputs = key_inputs()
    key = key_of(inputs)
    final = config.IMAGES_DIR / key
    if not force and is_complete(final, key):
        log(f"image: {key} is current (cached in {final})")
        return final
    require_build_prerequisites(need_disk=True)
    with _build_lock(log):
        if not force and is_complete(final, key):  # a concurrent build made it meanwhile
            log(f"image: {key} was built by a concurrent build")
            return final
        return Builder(key, inputs, log).build()
