"""The guest golden image and the guest boot initramfs, both shipped in the dom0 image.

GUEST_ARCHIVE: a small Debian bookworm root (debootstrap minbase + GUEST_PACKAGES,
the dom0's pinned salt venv and its salt-minion unit, systemd-networkd and
salt-minion enabled, nothing host- or build-specific) as a `tar --zstd
--numeric-owner` archive. Provisioning extracts it onto a guest's md RAID1 and
writes the guest's identity (hostname, networkd, fstab, mdadm.conf, minion keys).

GUEST_INITRD: busybox + mdadm + the kernel modules of GUEST_MODULES, with
lab/files/domu/guest-init as /init: assembles /dev/md0 from /dev/xvda and/or
/dev/xvdb and switches to the guest's systemd. Guests boot the dom0's kernel.

Pure helpers here; lab/image.py (Builder.build_guest_image, make_guest_initramfs)
runs them against the trees it builds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FILES_DIR = Path(__file__).resolve().parent / "files"

# Inside the dom0 image.
IMAGES_DIR = "srv/xencluster/images"
GUEST_ARCHIVE = f"{IMAGES_DIR}/debian12-guest.tar.zst"
GUEST_INITRD = f"{IMAGES_DIR}/guest-initrd.gz"
GUEST_INIT = FILES_DIR / "domu" / "guest-init"

# On top of debootstrap --variant=minbase, with --no-install-recommends. dbus: without
# it logind fails at every boot and networkctl/hostnamectl cannot talk to their daemons.
GUEST_PACKAGES = ("systemd-sysv", "udev", "mdadm", "python3", "iproute2", "dbus")

# crc32c_generic first: ext4 (metadata_csum) and libcrc32c (xfs) ask the kernel for
# "crc32c" at mount or load time, which only modprobe could resolve, and the
# initramfs loads modules with insmod. The rest in the order the init needs them.
GUEST_MODULES = ("crc32c_generic", "xen-blkfront", "xen-netfront", "md-mod", "raid1", "ext4", "xfs")

GUEST_ENABLED_UNITS = ("systemd-networkd.service", "salt-minion.service")
# Masked: they slow a TCG boot and do nothing useful in a lab guest. wait-online as
# in dom0: salt-minion retries its master on its own, and boot must not wait 2 min
# for a NIC that provisioning left unconfigured. The mdcheck timers would read both
# legs (one over iSCSI) in full once a month.
GUEST_MASKED_UNITS = (
    "systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "apt-daily.service", "apt-daily-upgrade.service", "e2scrub_all.timer",
    "e2scrub_all.service", "e2scrub_reap.service", "fstrim.timer", "dpkg-db-backup.timer",
    "mdcheck_start.timer", "mdcheck_continue.timer",
)

# Files of the build host or of this build that must not ship (relative to the root;
# globs allowed). machine-id is emptied separately: systemd then makes one per guest.
GUEST_SCRUB = (
    "etc/hostname", "etc/resolv.conf", "var/lib/dbus/machine-id", "etc/salt/pki",
    "etc/salt/minion_id", "var/cache/salt", "var/log/salt", "etc/ssh/ssh_host_*", "usr/sbin/policy-rc.d", "root/.cache",
    "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*",
    "var/cache/debconf/*-old", "var/log/bootstrap.log", "var/log/dpkg.log",
    "var/log/alternatives.log", "var/log/apt/*", "tmp/*",
)

# Written into the guest root (path -> content). The .link file: systemd 252 renames a
# Xen netfront NIC eth0 -> enX0 unless net.ifnames=0 is on the command line; the
# guests' networkd files name eth0 (as the lab's guest minions do), so netfront NICs
# keep their kernel names whatever the command line says.
GUEST_FILES = {
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # A guest minion reaches the master through its dom0's relay (lab-master-relay@): after a
    # migration its connections end at the old node's relay, and its publish channel sends
    # nothing that would find out. TCP keepalive after 15 s idle does, within ~30 s (the
    # default: 300 s + 9 probes of 75 s).
    "etc/salt/minion.d/lab-keepalive.conf": (
        "# Lab: notice a connection to the old dom0's relay is dead soon after a migration.\n"
        "tcp_keepalive: True\ntcp_keepalive_idle: 15\ntcp_keepalive_cnt: 3\ntcp_keepalive_intvl: 5\n"
    ),
    "etc/systemd/network/10-xencluster-netfront.link": (
        "# Xen netfront NICs keep their kernel names (eth0, eth1, ...): lab/guestimage.py\n"
        "[Match]\nDriver=vif\n\n[Link]\nNamePolicy=\n"
    ),
}

# Docs, manuals and translations: nobody reads them in a guest; ~20 MB of the archive.
# The same rules go to dpkg (dpkg.cfg.d) so later installs in the guest skip them too.
NODOC_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")
NODOC_KEEP = ("usr/share/doc/*/copyright", "usr/share/locale/locale.alias")
DPKG_NODOC = "etc/dpkg/dpkg.cfg.d/xencluster-nodoc"


def dpkg_nodoc_config() -> str:
    """dpkg.cfg.d rules that keep NODOC_DIRS out of later installs (copyrights stay)."""
    lines = ["# xencluster guest image: no docs, manuals or translations (lab/guestimage.py)"]
    lines += [f"path-exclude=/{d}/*" for d in NODOC_DIRS]
    lines += [f"path-include=/{keep}" for keep in NODOC_KEEP]
    return "\n".join(lines) + "\n"


def prune_docs(root: Path) -> int:
    """Delete what dpkg_nodoc_config() excludes from files already installed under root
    (debootstrap unpacks before any dpkg.cfg.d exists); returns the bytes freed.
    Directories stay: dpkg expects the directories of its packages."""
    freed = 0
    for top in NODOC_DIRS:
        for path in sorted((root / top).rglob("*")):
            inside = path.relative_to(root)
            if path.is_dir() and not path.is_symlink():
                continue
            if any(inside.match(keep) for keep in NODOC_KEEP):
                continue
            freed += path.lstat().st_size
            path.unlink()
    return freed


def without_array_lines(mdadm_conf: str) -> str:
    """mdadm.conf minus its ARRAY lines and their indented continuation lines: the
    arrays mdadm's postinst saw on the build host are no guest's."""
    kept, in_array = [], False
    for line in mdadm_conf.splitlines():
        if line.startswith("ARRAY"):
            in_array = True
            continue
        if in_array and line[:1] in (" ", "\t") and line.strip():
            continue
        in_array = False
        kept.append(line)
    return "\n".join(kept) + "\n"


def scrub(root: Path) -> list[str]:
    """Remove GUEST_SCRUB under root and empty /etc/machine-id; returns what went."""
    removed = []
    for pattern in GUEST_SCRUB:
        for path in sorted(root.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.relative_to(root).as_posix())
    (root / "etc" / "machine-id").write_text("")
    return removed


def tree_bytes(root: Path) -> int:
    """Bytes of everything under root as stored (symlinks not followed)."""
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            total += os.lstat(os.path.join(directory, name)).st_size
    return total


def archive_command(root: Path, archive: Path) -> list[str]:
    """tar of the whole root, numeric owners (the guest's passwd may differ from the
    host's), sorted by name so the same tree gives the same archive."""
    return ["tar", "--zstd", "--numeric-owner", "--sort=name", "-cpf", str(archive),
            "-C", str(root), "."]
