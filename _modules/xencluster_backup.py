"""
File-level backups of guest disk legs on xencluster dom0s, and their restore.

A guest disk is an md RAID1 (metadata 1.x) over two LVs ("legs") on two dom0s;
the guest's filesystem lives inside the array, i.e. inside each leg at the md
data offset. ``backup_leg`` backs up one leg on the dom0 that owns it:

1. a classic LVM snapshot of the leg (``xencluster_lvm.snapshot_create``),
2. ``mdadm --examine`` of the snapshot: the data offset and the array size
   (``--examine --export`` of mdadm 4.2 prints neither),
3. a loop device on the snapshot at that offset and size, no md assembled,
4. ``blkid --probe``: only ext2, ext3, ext4 and xfs are backed up; anything
   else is refused with the reason,
5. a read-only mount on a private directory, ``rsync`` into
   ``<dest>/.partial-<stamp>`` with ``--link-dest`` to the previous backup
   (unchanged files become hard links: a run moves only changed files),
6. the snapshot's usage (``xencluster_lvm.snapshot_usage``) after the copy: a
   snapshot that overflowed makes the copy worthless and the backup failed,
7. only then ``.partial-<stamp>`` is renamed to ``<stamp>`` and ``latest``
   points at it;

and always, in ``finally``, each attempted even when an earlier one fails:
unmount, remove the mount directory, detach the loop device, remove the
snapshot, remove the partial copy. Every cleanup step is reported.

The snapshot of a running guest is crash-consistent: its journal holds
committed changes not yet written in place. By default (``journal="replay"``)
the loop device on the SNAPSHOT is writable, so the kernel replays the
journal into the snapshot's copy-on-write space when the filesystem is
mounted read-only; the origin (the leg) is never written. ``journal="skip"``
keeps everything read-only (``ro,noload`` for ext*, ``ro,norecovery,nouuid``
for xfs) and misses whatever is only in the journal: measured on ext4 and
xfs, a directory of 20 files created 7 s before the copy was missing
(tests/unit/data/backup/README.md), and files a guest had written and
fsync'd just before were all missing (tests/integration/test_backup_real.py
run with ``journal="skip"``).

Layout of a backup directory ``dest`` (one per guest disk, on the backup
volume, which the caller mounts)::

    <dest>/<stamp>/            complete backups, stamp = UTC YYYYMMDDTHHMMSSZ
    <dest>/<stamp>.json        what was backed up (leg, md, filesystem, rsync stats)
    <dest>/latest -> <stamp>   the newest complete backup
    <dest>/.partial-<stamp>/   a copy in progress (or left by a crash)
    <dest>/.lock               flock: one backup, prune or restore at a time

``prune`` applies a retention (``keep`` newest, ``daily``/``weekly``/
``monthly`` as in the cluster model), ``list_backups`` lists,
``restore_leg`` copies a backup into the filesystem inside one leg (not in
use) and ``invalidate_leg`` zeroes the md superblock of the other leg of
that pair, so that the guest resyncs it in full from the restored one.

Every public function is query, then plan, then apply; ``dry_run=True``
returns the plan and changes nothing. Named ``xencluster_backup`` so it
never shadows a Salt module.
"""

import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time

import salt.utils.path
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_backup"

# tool -> the Debian 12 package that ships it
TOOLS = {
    "lvm": "lvm2", "mdadm": "mdadm", "losetup": "mount", "mount": "mount",
    "umount": "mount", "rsync": "rsync", "blkid": "util-linux",
}  # fmt: skip

# Copies of xencluster_lvm's name rules (Salt syncs single files; a unit test
# keeps them equal). Always fullmatch(): "$" would accept a trailing newline.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LV_RESERVED = (
    "_cdata", "_cmeta", "_corig", "_mimage", "_mlog", "_pmspare", "_rimage",
    "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin",
)  # fmt: skip
# A device path, as xencluster_md's legs: no '..', no spaces, no option look-alike.
_DEV_RE = re.compile(
    r"/dev/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}(?:/[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,254}){0,4}"
)
# A backup directory: absolute, plain characters, no ':' (rsync would read host:path).
_DIR_RE = re.compile(r"/[A-Za-z0-9_.,+=@/-]{1,4000}")
_STAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_LOOP_RE = re.compile(r"/dev/loop[0-9]{1,7}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,12}")
_PERCENT_SIZE_RE = re.compile(r"([1-9][0-9]?|100)%")

PARTIAL = ".partial-"
DELETING = ".deleting-"
LATEST = "latest"
LOCK = ".lock"
SNAPSHOT_TAG = "xc-backup"
SNAPSHOT_SUFFIX = "-xcbk"
MOUNT_BASE = "/run/xencluster-backup"
SYS_BLOCK = "/sys/block"
DETACH_WAIT = 3.0  # seconds a detached loop device may take to go (a udev probe may hold it a moment)
ROOT_FS = "/"
# udev's rule that runs `mdadm --incremental` on every new block device with an md superblock:
# active, it assembles the backup SNAPSHOT in dom0 and holds it open. The formula masks it
# (xencluster.hygiene) with a rule-less file of the same name in /etc/udev/rules.d.
MD_ASSEMBLY_RULES = "64-md-raid-assembly.rules"
UDEV_RULES_ETC = "/etc/udev/rules.d"
UDEV_RULES_LIB = ("/lib/udev/rules.d", "/usr/lib/udev/rules.d")
SECTOR = 512
WARN_PERCENT = 80.0
META_VERSION = 1

# Filesystems this module reads and writes, and the type given to mount: the
# ext4 driver mounts ext2 and ext3 too (mount -t ext2 -o noload is refused).
SUPPORTED = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "xfs": "xfs"}
# what the cluster model allows a disk's filesystem to be (xencluster_model.FILESYSTEMS)
MODEL_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "swap", "none")
_WHY_NOT = {
    "none": "the cluster model says this disk has no filesystem (filesystem: none)",
    "swap": "swap holds no files to back up",
    "btrfs": "btrfs is not supported (only ext2, ext3, ext4 and xfs)",
    "LVM2_member": "the guest runs LVM inside its md array: its LVs would have to be "
                   "activated in dom0, which xencluster never does",
    "linux_raid_member": "the md array holds another md member: nested md is not supported",
    "crypto_LUKS": "the filesystem is encrypted inside the guest (LUKS): dom0 has no key",
    None: "no filesystem found in the md data area (blkid found no signature)",
}  # fmt: skip
_SAFE = "nodev,nosuid,noexec"
MOUNT_OPTIONS = {
    # backup, journal replayed into the snapshot (the loop device is writable)
    ("ext4", "replay"): f"ro,{_SAFE},errors=remount-ro",
    ("xfs", "replay"): f"ro,{_SAFE},nouuid",
    # backup, nothing written anywhere
    ("ext4", "skip"): f"ro,{_SAFE},noload,errors=remount-ro",
    ("xfs", "skip"): f"ro,{_SAFE},norecovery,nouuid",
    # restore: the target filesystem, read-write
    ("ext4", "restore"): f"{_SAFE},errors=remount-ro",
    ("xfs", "restore"): f"{_SAFE},nouuid",
}
JOURNAL_MODES = ("replay", "skip")

MDADM_EXAMINE = ["mdadm", "--examine"]
MDADM_ZERO = ["mdadm", "--zero-superblock"]
BLKID_PROBE = ["blkid", "--probe", "--output", "export"]
LOSETUP_ATTACH = ["losetup", "--find", "--show"]
LOSETUP_DETACH = ["losetup", "--detach"]
# -a: -rlptgoD; -H hard links, -A ACLs, -X xattrs; --numeric-ids: the guest's
# uids are not dom0's; --sparse: sparse files stay sparse on the backup volume.
# --delete only on restore: a backup always starts from an empty directory.
RSYNC = [
    "rsync", "--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--sparse",
    "--stats", "--no-human-readable",
]  # fmt: skip
MKFS = {"ext2": "mkfs.ext2", "ext3": "mkfs.ext3", "ext4": "mkfs.ext4", "xfs": "mkfs.xfs"}

# md 1.x feature bits (Linux md_p.h); only the internal bitmap is expected on a healthy leg
_MD_FEATURES = {
    0x1: "bitmap", 0x2: "recovery in progress (recovery offset)", 0x4: "reshape active",
    0x8: "bad blocks recorded", 0x10: "replacement", 0x20: "reshape backwards", 0x40: "new offset",
    0x80: "recovery from bitmap", 0x100: "clustered", 0x200: "journal", 0x400: "ppl",
    0x800: "multiple ppls", 0x1000: "raid0 layout",
}  # fmt: skip
_RSYNC_STATS = {
    "Number of files": "files",
    "Number of created files": "created",
    "Number of deleted files": "deleted",
    "Number of regular files transferred": "transferred",
    "Total file size": "total_size",
    "Total transferred file size": "transferred_size",
    "Literal data": "literal_data",
    "Matched data": "matched_data",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}


def __virtual__():
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not salt.utils.path.which(tool)]
    if missing:
        return (False, f"xencluster_backup: missing tools: {', '.join(missing)}")
    return __virtualname__


# --- validation (pure) -------------------------------------------------------------------------


def _check_vg(vg):
    if not isinstance(vg, str) or not _NAME_RE.fullmatch(vg):
        raise SaltInvocationError(f"invalid volume group name: {vg!r}")
    return vg


def _check_lv(name, what="logical volume"):
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SaltInvocationError(f"invalid {what} name: {name!r}")
    if name.startswith(("snapshot", "pvmove")) or any(r in name for r in _LV_RESERVED):
        raise SaltInvocationError(f"{what} name is reserved by LVM: {name!r}")
    return name


def _check_dest(dest):
    """An absolute, normalised directory path of plain characters; not '/'."""
    if (
        not isinstance(dest, str)
        or not _DIR_RE.fullmatch(dest)
        or os.path.normpath(dest) != dest
        or dest.startswith("//")
        or dest == "/"
    ):
        raise SaltInvocationError(
            f"invalid backup directory: {dest!r} (an absolute normalised path of "
            "A-Z a-z 0-9 _ . , + = @ / -, no '..', no trailing '/')"
        )
    return dest


def _check_device(path, what):
    if path is None:
        return None
    if not isinstance(path, str) or not _DEV_RE.fullmatch(path) or ".." in path:
        raise SaltInvocationError(f"invalid {what} device path: {path!r}")
    return path


def _check_bool(value, what):
    if not isinstance(value, bool):
        raise SaltInvocationError(f"{what} must be True or False: {value!r}")
    return value


def _check_fstype(fstype):
    if fstype is not None and fstype not in MODEL_FILESYSTEMS:
        raise SaltInvocationError(f"fstype must be one of {', '.join(MODEL_FILESYSTEMS)} or None: {fstype!r}")
    return fstype


def _check_journal(journal):
    if journal not in JOURNAL_MODES:
        raise SaltInvocationError(f"journal must be one of {', '.join(JOURNAL_MODES)}: {journal!r}")
    return journal


def _check_count(value, what):
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100000:
        raise SaltInvocationError(f"{what} must be a whole number from 0 to 100000: {value!r}")
    return value


def _check_stamp(name):
    if not isinstance(name, str) or not (name == LATEST or _STAMP_RE.fullmatch(name)):
        raise SaltInvocationError(f"backup must be 'latest' or a name like 20261124T081500Z: {name!r}")
    return name


def snapshot_name(lv):
    """
    The name of the backup snapshot of leg ``lv``: ``<lv>-xcbk``, shortened
    with a hash of ``lv`` when that would be longer than 64 characters.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.snapshot_name web1.root.node1
    """
    lv = _check_lv(lv)
    name = f"{lv}{SNAPSHOT_SUFFIX}"
    if len(name) > 64:
        digest = hashlib.sha256(lv.encode()).hexdigest()[:8]
        name = f"{lv[: 64 - len(SNAPSHOT_SUFFIX) - 9]}-{digest}{SNAPSHOT_SUFFIX}"
    return name


def _check_snapshot_size(spec):
    """``N%`` of the origin (1-100) -> ("percent", N); a size (bytes, ``2G``...) -> ("bytes", n)."""
    if isinstance(spec, str) and _PERCENT_SIZE_RE.fullmatch(spec):
        return ("percent", int(spec[:-1]))
    if isinstance(spec, str) and spec.endswith("%"):
        raise SaltInvocationError(f"snapshot_size in percent must be 1% to 100%: {spec!r}")
    return ("bytes", _lvm("parse_size", spec))


def _snapshot_bytes(spec, origin_size):
    kind, value = spec
    return max(origin_size * value // 100, 1) if kind == "percent" else value


# --- parsing tool output (pure) ------------------------------------------------------------------


def _sectors(value):
    """'2048 sectors' or '522240 sectors (255.00 MiB 267.39 MB)' -> 2048."""
    m = re.match(r"([0-9]+) sectors\b", value or "")
    return int(m.group(1)) if m else None


def parse_examine(text):
    """
    Parse the text of ``mdadm --examine DEVICE`` (metadata 1.x) into a dict.

    Returns ``{"version", "feature_map" (int), "array_uuid", "name", "level",
    "raid_devices", "data_offset" (bytes), "size" (bytes: what the md device
    holds, from "Used Dev Size", else "Avail Dev Size"), "super_offset"
    (bytes), "recovery_offset", "state", "device_uuid", "events", "role"
    (int, or None for a spare/faulty leg), "role_text", "array_state",
    "checksum_ok"}``. Missing lines give None.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.parse_examine "$(mdadm --examine /dev/xcvg/web1.root.node1)"
    """
    raw = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" : ")
        if sep:
            raw[key.strip()] = value.strip()
    role_text = raw.get("Device Role")
    role = re.fullmatch(r"Active device ([0-9]+)", role_text or "")
    used = _sectors(raw.get("Used Dev Size")) or _sectors(raw.get("Avail Dev Size"))
    sectors = {k: _sectors(raw.get(k)) for k in ("Data Offset", "Super Offset", "Recovery Offset")}
    feature = raw.get("Feature Map")
    return {
        "version": raw.get("Version"),
        "feature_map": int(feature, 16) if feature and re.fullmatch(r"0x[0-9a-fA-F]+", feature) else None,
        "array_uuid": raw.get("Array UUID"),
        "name": raw.get("Name"),
        "level": raw.get("Raid Level"),
        "raid_devices": int(raw["Raid Devices"]) if (raw.get("Raid Devices") or "").isdigit() else None,
        "data_offset": sectors["Data Offset"] * SECTOR if sectors["Data Offset"] is not None else None,
        "size": used * SECTOR if used is not None else None,
        "super_offset": sectors["Super Offset"] * SECTOR if sectors["Super Offset"] is not None else None,
        "recovery_offset": sectors["Recovery Offset"],
        "state": raw.get("State"),
        "device_uuid": raw.get("Device UUID"),
        "events": int(raw["Events"]) if (raw.get("Events") or "").isdigit() else None,
        "role": int(role.group(1)) if role else None,
        "role_text": role_text,
        "array_state": (raw.get("Array State") or "").split(" ")[0] or None,
        "checksum_ok": (raw.get("Checksum") or "").endswith("- correct"),
    }


def _md_problems(md, device_size):
    """Why this leg's md superblock does not allow a file-level copy: [reason, ...]."""
    if md is None:
        return ["no md superblock on the leg (mdadm: No md superblock detected): not a mirrored guest disk"]
    problems = []
    if not (md["version"] or "").startswith("1."):
        problems.append(f"md metadata {md['version']} is not 1.x")
    if md["level"] != "raid1":
        problems.append(f"md level {md['level']} is not raid1")
    if not md["checksum_ok"]:
        problems.append("the md superblock checksum is not correct")
    extra = (md["feature_map"] or 0) & ~0x1
    if md["feature_map"] is None or extra:
        names = [text for bit, text in _MD_FEATURES.items() if extra & bit] or ["unknown"]
        problems.append(f"md features in the way: {', '.join(names)} (Feature Map {md['feature_map']!r})")
    if md["role"] is None:
        problems.append(f"the leg is not an active member of its array (Device Role: {md['role_text']})")
    if not md["data_offset"] or not md["size"]:
        problems.append("mdadm printed no data offset or size")
    elif device_size is not None and md["data_offset"] + md["size"] > device_size:
        problems.append(
            f"md data ({md['data_offset']} + {md['size']} bytes) runs past the end of the device ({device_size})"
        )
    return problems


def _partner_problems(md, partner):
    """Does the partner leg's superblock still count this leg in? [reason, ...]."""
    if partner is None:
        return ["no md superblock on the partner leg"]
    if partner["array_uuid"] != md["array_uuid"]:
        return [f"the partner leg belongs to another array ({partner['array_uuid']}, not {md['array_uuid']})"]
    state, role = partner["array_state"] or "", md["role"]
    if role is None or role >= len(state) or state[role] != "A":
        return [
            f"the partner leg's superblock does not count this leg as active (Array State {state!r}, "
            f"this leg is device {role}): this leg is stale, back up the partner's leg instead"
        ]
    return []


def _unescape(value):
    """blkid -o export escapes with a backslash (``LVM2\\ 001``)."""
    return re.sub(r"\\(.)", r"\1", value)


def parse_blkid(text):
    """
    Parse ``blkid --probe --output export DEVICE`` (``KEY=value`` lines) into a dict.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.parse_blkid "$(blkid --probe --output export /dev/loop0)"
    """
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            out[key] = _unescape(value)
    return out


def parse_rsync_stats(text):
    """
    The counters of ``rsync --stats --no-human-readable`` as integers.

    ``{"files", "created", "deleted", "transferred" (regular files sent),
    "total_size", "transferred_size", "literal_data", "matched_data",
    "bytes_sent", "bytes_received"}``; a counter rsync did not print is absent.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.parse_rsync_stats "$(cat rsync.log)"
    """
    out = {}
    for line in text.splitlines():
        label, sep, value = line.partition(": ")
        m = re.match(r"([0-9]+)\b", value)
        if sep and label in _RSYNC_STATS and m:
            out[_RSYNC_STATS[label]] = int(m.group(1))
    return out


def _fs_problem(found, expected):
    """None when ``found`` (blkid TYPE or None) can be backed up, else the reason."""
    if found in SUPPORTED:
        if expected and expected != found:
            return f"the cluster model says {expected} but the leg holds {found}"
        return None
    return _WHY_NOT.get(found) or f"filesystem {found!r} is not supported (only ext2, ext3, ext4 and xfs)"


# --- running tools -------------------------------------------------------------------------------


def _tail(text, lines=20):
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(argv, ok=(0,)):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] not in ok:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed (rc {res['retcode']}): {_tail(res['stderr'])}",
            info={"argv": argv, "stderr": res["stderr"], "retcode": res["retcode"]},
        )
    return res


def _examine(device):
    """Parsed ``mdadm --examine`` of ``device``; None when it carries no md superblock."""
    res = _run([*MDADM_EXAMINE, device], ok=(0, 1))
    if res["retcode"] == 1:
        if "No md superblock detected" in res["stderr"]:
            return None
        raise CommandExecutionError(
            f"mdadm --examine {device} failed (rc 1): {_tail(res['stderr'])}",
            info={"argv": [*MDADM_EXAMINE, device], "stderr": res["stderr"], "retcode": 1},
        )
    return parse_examine(res["stdout"])


def _attach(device, offset, size, read_only):
    argv = [*LOSETUP_ATTACH, *(["--read-only"] if read_only else [])]
    argv += ["--offset", str(offset), "--sizelimit", str(size), "--", device]
    loop = _run(argv)["stdout"].strip()
    if not _LOOP_RE.fullmatch(loop):
        raise CommandExecutionError(f"losetup printed {loop!r}, not a loop device")
    return loop


def _detach(loop):
    """losetup --detach; a loop device still in use only gets autoclear (rc 0): wait, then say so."""
    _run([*LOSETUP_DETACH, loop])
    bound = os.path.join(SYS_BLOCK, os.path.basename(loop), "loop")
    deadline = time.monotonic() + DETACH_WAIT
    while os.path.exists(bound) and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.exists(bound):
        raise CommandExecutionError(
            f"{loop} is still attached: it is in use, so losetup only set autoclear "
            "(it goes when its last user does)"
        )


def _probe(device):
    """blkid of ``device``: {} when it finds nothing (rc 2)."""
    res = _run([*BLKID_PROBE, "--", device], ok=(0, 2))
    return parse_blkid(res["stdout"]) if res["retcode"] == 0 else {}


def _mount(fstype, options, device, target):
    _run(["mount", "-t", SUPPORTED[fstype], "-o", options, "--", device, target])


def _lvm(fun, *args, **kwargs):
    name = f"xencluster_lvm.{fun}"
    if name not in __salt__:
        raise CommandExecutionError(f"{name} is not available (is xencluster_lvm loaded?)")
    return __salt__[name](*args, **kwargs)


# --- the backup directory ------------------------------------------------------------------------


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp_time(stamp):
    return datetime.datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


def _read_meta(dest, stamp):
    try:
        with open(os.path.join(dest, f"{stamp}.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _scan(dest):
    """{"complete": [stamp, newest first], "partials": [...], "deleting": [...], "latest": stamp|None}."""
    complete, partials, deleting = [], [], []
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        if _STAMP_RE.fullmatch(name):
            complete.append(name)
        elif name.startswith(PARTIAL) and _STAMP_RE.fullmatch(name[len(PARTIAL):]):
            partials.append(name)
        elif name.startswith(DELETING) and _STAMP_RE.fullmatch(name[len(DELETING):]):
            deleting.append(name)
    link = os.path.join(dest, LATEST)
    latest = os.readlink(link) if os.path.islink(link) else None
    return {
        "complete": sorted(complete, reverse=True),
        "partials": sorted(partials),
        "deleting": sorted(deleting),
        "latest": latest if latest in complete else None,
    }


def _dest_facts(dest):
    """What the plan needs to know about ``dest`` (no change)."""
    if not os.path.isdir(dest) or os.path.islink(dest):
        return {"exists": False}
    return {
        "exists": True,
        "realpath_ok": os.path.realpath(dest) == dest,
        "on_root_fs": os.stat(dest).st_dev == os.stat(ROOT_FS).st_dev,
        "lock": _lock_state(dest),
        **_scan(dest),
    }


def _dest_problems(dest, facts, allow_root_fs):
    if not facts["exists"]:
        return [f"backup directory {dest} does not exist (or is a symlink): mount the backup volume and create it"]
    problems = []
    if not facts["realpath_ok"]:
        problems.append(f"backup directory {dest} is reached through a symlink: give its real path")
    if facts["on_root_fs"] and not allow_root_fs:
        problems.append(
            f"backup directory {dest} is on the root filesystem: is the backup volume mounted? "
            "(allow_root_fs=True to insist)"
        )
    if facts["lock"]:
        problems.append(facts["lock"])
    return problems


class _Lock:
    """An exclusive flock on ``<dest>/.lock``, never waited for."""

    def __init__(self, dest):
        self.path = os.path.join(dest, LOCK)
        self.fd = None

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CommandExecutionError(f"cannot open {self.path}: {exc}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CommandExecutionError(f"another backup, prune or restore holds {self.path}")
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def _lock_state(dest):
    """None when ``<dest>/.lock`` is free (or absent: a dry run never creates it), else why not."""
    path = os.path.join(dest, LOCK)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) or not os.path.isfile(path):
        return f"{path} is not a regular file"
    try:
        with _Lock(dest):
            return None
    except CommandExecutionError as exc:
        return str(exc)


def _write_json(path, data):
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _set_latest(dest, stamp):
    tmp = os.path.join(dest, f".{LATEST}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(stamp, tmp)
    os.replace(tmp, os.path.join(dest, LATEST))


def _remove_tree(dest, name):
    """Rename ``name`` out of the listing first, then delete it: a half-deleted tree never looks complete."""
    path = os.path.join(dest, name)
    if _STAMP_RE.fullmatch(name):
        gone = os.path.join(dest, f"{DELETING}{name}")
        os.rename(path, gone)
        path = gone
    shutil.rmtree(path)
    meta = os.path.join(dest, f"{name}.json")
    if _STAMP_RE.fullmatch(name) and os.path.lexists(meta):
        os.unlink(meta)


def _attempt(step, action):
    """Run one cleanup action; never raises: {"step", "ok", "error"?}."""
    try:
        action()
    except Exception as exc:  # pylint: disable=broad-except
        log.error("xencluster_backup: cleanup step %s failed: %s", step, exc)
        return {"step": step, "ok": False, "error": str(exc)}
    return {"step": step, "ok": True}


# --- backup: query, plan, apply ------------------------------------------------------------------


def _leg_facts(vg, lv, snap=None):
    """The leg, its VG and any LV named ``snap``, from one ``xencluster_lvm.report``."""
    report = _lvm("report")
    return {
        "lv": report["lvs"].get(f"{vg}/{lv}"),
        "snapshot": report["lvs"].get(f"{vg}/{snap}") if snap else None,
        "vg": report["vgs"].get(vg),
    }


def _examinable(leg):
    """An LV worth an ``mdadm --examine``: present, not inactive, not a snapshot."""
    return bool(leg) and leg["active"] is not False and not (leg["origin"] or leg["attr"][:1] in ("s", "S"))


def _examine_leg(leg):
    """mdadm --examine of a leg; None when it is not examinable (refused for that anyway)."""
    return _examine(leg["path"]) if _examinable(leg) else None


def _leg_problems(vg, lv, facts, want_snapshot_bytes=None, snap=None):
    leg = facts["lv"]
    if leg is None:
        return [f"logical volume {vg}/{lv} not found on this node"]
    problems = []
    if leg["origin"] or leg["attr"][:1] in ("s", "S"):
        problems.append(f"{vg}/{lv} is itself a snapshot, not a leg")
    if leg["active"] is False:
        problems.append(f"{vg}/{lv} is not active on this node")
    if snap is not None and facts["snapshot"] is not None:
        problems.append(
            f"an LV named {vg}/{snap} already exists (left by an earlier backup?): "
            f"check it and remove it with xencluster_lvm.snapshot_remove {vg} {snap}"
        )
    if want_snapshot_bytes is not None and facts["vg"] is not None:
        extent = facts["vg"]["vg_extent_size"] or 1
        need = -(-want_snapshot_bytes // extent) * extent
        if need > (facts["vg"]["vg_free"] or 0):
            problems.append(
                f"volume group {vg} has {facts['vg']['vg_free']} bytes free, the snapshot needs {need}"
            )
    return problems


def _backup_args(vg, lv, dest, snapshot_size, fstype, partner, journal, snapshot, allow_root_fs, dry_run):
    vg, lv = _check_vg(vg), _check_lv(lv)
    return {
        "vg": vg,
        "lv": lv,
        "dest": _check_dest(dest),
        "snapshot_size": _check_snapshot_size(snapshot_size),
        "fstype": _check_fstype(fstype),
        "partner": _check_device(partner, "partner"),
        "journal": _check_journal(journal),
        "snapshot": _check_lv(snapshot, "snapshot") if snapshot is not None else snapshot_name(lv),
        "allow_root_fs": _check_bool(allow_root_fs, "allow_root_fs"),
        "dry_run": _check_bool(dry_run, "dry_run"),
    }


def _has_rules(path):
    with open(path, encoding="utf-8", errors="replace") as rules:
        return any(line.strip() and not line.lstrip().startswith("#") for line in rules)


def md_autoassembly():
    """
    The udev rules file that makes this host assemble md arrays by itself, or None when none does.

    A file of the same name in ``/etc/udev/rules.d`` overrides the packaged one: without rules (only
    comments) or a link to ``/dev/null``, it masks it; with rules of its own it is the active one.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.md_autoassembly
    """
    override = os.path.join(UDEV_RULES_ETC, MD_ASSEMBLY_RULES)
    if os.path.islink(override) and os.path.realpath(override) == os.devnull:
        return None
    if os.path.isfile(override):
        return override if _has_rules(override) else None
    for directory in UDEV_RULES_LIB:
        packaged = os.path.join(directory, MD_ASSEMBLY_RULES)
        if os.path.isfile(packaged):
            return packaged
    return None


def _autoassembly_problems(rules):
    if rules is None:
        return []
    return [f"md auto-assembly is active on this host ({rules}): udev would assemble the snapshot's md "
            f"superblock and hold the snapshot open; mask it first (the xencluster formula's "
            f"xencluster.hygiene does: a rule-less {UDEV_RULES_ETC}/{MD_ASSEMBLY_RULES})"]  # fmt: skip


def _query_backup(args):
    facts = {"leg": _leg_facts(args["vg"], args["lv"], args["snapshot"]), "dest": _dest_facts(args["dest"])}
    facts["md_autoassembly"] = md_autoassembly()
    leg = facts["leg"]["lv"]
    facts["md"] = _examine_leg(leg)
    facts["partner"] = _examine(args["partner"]) if args["partner"] and facts["md"] else None
    return facts


def _plan_backup(args, facts):
    """Pure: what a backup would do, and every reason it must not."""
    vg, lv, snap = args["vg"], args["lv"], args["snapshot"]
    leg = facts["leg"]["lv"]
    size = _snapshot_bytes(args["snapshot_size"], leg["size"]) if leg else None
    refused = _leg_problems(vg, lv, facts["leg"], size, snap)
    if args["fstype"] is not None and args["fstype"] not in SUPPORTED:
        refused.append(_fs_problem(args["fstype"], None))
    if _examinable(leg):
        refused += _md_problems(facts["md"], leg["size"])
    if args["partner"] and facts["md"] and facts["md"]["role"] is not None:
        refused += _partner_problems(facts["md"], facts["partner"])
    refused += _dest_problems(args["dest"], facts["dest"], args["allow_root_fs"])
    refused += _autoassembly_problems(facts.get("md_autoassembly"))
    stamp = _now().strftime(_STAMP_FORMAT)
    complete = facts["dest"].get("complete") or []
    previous = facts["dest"].get("latest") or (complete[0] if complete else None)
    if stamp in complete:
        refused.append(f"a backup named {stamp} already exists in {args['dest']}")
    md = facts["md"] or {}
    return {
        "action": "backup",
        "leg": f"{vg}/{lv}",
        "origin_size": leg["size"] if leg else None,
        "snapshot": {"vg": vg, "name": snap, "size": size, "tags": [SNAPSHOT_TAG],
                     "vg_free": (facts["leg"]["vg"] or {}).get("vg_free")},
        "md": facts["md"],
        "partner": {"path": args["partner"], "md": facts["partner"]} if args["partner"] else None,
        "loop": {"offset": md.get("data_offset"), "size": md.get("size"),
                 "read_only": args["journal"] == "skip"},
        "fstype": args["fstype"],
        "journal": args["journal"],
        "dest": args["dest"],
        "backup": stamp,
        "partial": f"{PARTIAL}{stamp}",
        "link_dest": previous,
        "stale_partials": facts["dest"].get("partials", []) + facts["dest"].get("deleting", []),
        "refused": refused,
    }  # fmt: skip


class _Backup:
    """The resources one backup run holds, each released by ``cleanup``."""

    def __init__(self, plan):
        self.plan = plan
        self.snapshot = None  # the LV dict returned by snapshot_create
        self.loop = None
        self.mountpoint = None
        self.mounted = False
        self.partial = None
        self.kept = False

    def cleanup(self):
        vg, snap = self.plan["snapshot"]["vg"], self.plan["snapshot"]["name"]
        steps = []
        if self.mounted:
            steps.append(_attempt("umount", lambda: _run(["umount", "--", self.mountpoint])))
        if self.mountpoint:
            steps.append(_attempt("rmdir mount point", lambda: os.rmdir(self.mountpoint)))
        if self.loop:
            steps.append(_attempt("losetup --detach", lambda: _detach(self.loop)))
        if self.snapshot is not None:
            steps.append(_attempt("snapshot_remove", lambda: _remove_snapshot(vg, snap)))
        if self.partial and not self.kept and os.path.lexists(self.partial):
            steps.append(_attempt("remove partial copy", lambda: shutil.rmtree(self.partial)))
        return steps


def _remove_snapshot(vg, snap):
    res = _lvm("snapshot_remove", vg, snap)
    if not res.get("removed") and res.get("reason") != "absent":
        raise CommandExecutionError(f"snapshot {vg}/{snap} was not removed: {res}")


def _usage_problem(usage, vg, snap):
    if usage["full"]:
        return (
            f"snapshot {vg}/{snap} filled up during the backup ({usage['usage_percent']}%): LVM invalidated "
            "it, so the copy is incomplete and was not kept; give the snapshot more room (snapshot_size)"
        )
    if usage["usage_percent"] is None:
        return f"the usage of snapshot {vg}/{snap} could not be read (not active?): the copy cannot be trusted"
    return None


def _remove_stale(job, result):
    """Copies left by a crashed backup or prune; we hold the lock, so nobody writes there."""
    for name in job.plan["stale_partials"]:
        _remove_tree(job.plan["dest"], name)
        result["removed_stale"].append(name)


def _snapshot(job, result):
    """Create the snapshot, check its md superblock, attach a loop device at the md data area."""
    plan = job.plan
    vg, snap = plan["snapshot"]["vg"], plan["snapshot"]["name"]
    origin = plan["leg"].split("/", 1)[1]
    job.snapshot = _lvm("snapshot_create", vg, origin, snap, plan["snapshot"]["size"], tags=[SNAPSHOT_TAG])
    device = _check_device(job.snapshot.get("path"), "snapshot")
    md = _examine(device)
    # a classic snapshot's lv_size is its copy-on-write room: the device is as large as the origin
    problems = _md_problems(md, plan["origin_size"])
    if problems:
        raise CommandExecutionError(f"snapshot {vg}/{snap}: " + "; ".join(problems))
    result["md"] = md
    job.loop = _attach(device, md["data_offset"], md["size"], plan["journal"] == "skip")


def _identify(job, result):
    """blkid of the data area: the filesystem type, or a refusal with the reason."""
    found = _probe(job.loop)
    result["filesystem"] = {k.lower(): found.get(k) for k in ("TYPE", "UUID", "LABEL")}
    why = _fs_problem(found.get("TYPE"), job.plan["fstype"])
    if why:
        raise CommandExecutionError(f"backup of {job.plan['leg']} refused: {why}")
    return found["TYPE"]


def _mount_private(job, fstype, mode, prefix):
    """Mount the loop device on a fresh 0700 directory under MOUNT_BASE."""
    os.makedirs(MOUNT_BASE, mode=0o700, exist_ok=True)
    job.mountpoint = tempfile.mkdtemp(prefix=prefix, dir=MOUNT_BASE)
    _mount(fstype, MOUNT_OPTIONS[(SUPPORTED[fstype], mode)], job.loop, job.mountpoint)
    job.mounted = True


def _copy(job, result):
    """rsync the mounted snapshot into .partial-<stamp>, unchanged files hard-linked to the previous backup."""
    plan, dest = job.plan, job.plan["dest"]
    job.partial = os.path.join(dest, plan["partial"])
    os.mkdir(job.partial, 0o700)
    argv = [*RSYNC]
    if plan["link_dest"]:
        argv.append(f"--link-dest={os.path.join(dest, plan['link_dest'])}")
    copied = _run([*argv, f"{job.mountpoint}/", f"{job.partial}/"])
    result["rsync"] = parse_rsync_stats(copied["stdout"])


def _run_backup(job, result):
    """The apply steps; raises on the first failure (the caller cleans up)."""
    _remove_stale(job, result)
    _snapshot(job, result)
    fstype = _identify(job, result)
    _mount_private(job, fstype, job.plan["journal"], "xcbk-")
    _copy(job, result)


def _check_usage(job, result):
    """After the copy, before the snapshot goes: did it overflow? Returns the problem or None."""
    vg, snap = job.plan["snapshot"]["vg"], job.plan["snapshot"]["name"]
    try:
        usage = _lvm("snapshot_usage", vg, snap)
    except Exception as exc:  # pylint: disable=broad-except
        return f"the usage of snapshot {vg}/{snap} could not be read: {exc}"
    result["snapshot"]["usage_percent"] = usage["usage_percent"]
    result["snapshot"]["full"] = usage["full"]
    if usage["usage_percent"] is not None and WARN_PERCENT <= usage["usage_percent"] < 100.0:
        result["warnings"].append(
            f"snapshot {vg}/{snap} was {usage['usage_percent']}% full: give it more room next time"
        )
    return _usage_problem(usage, vg, snap)


def _promote(job, result):
    plan, dest = job.plan, job.plan["dest"]
    meta = {
        "version": META_VERSION,
        "backup": plan["backup"],
        "created": _stamp_time(plan["backup"]).isoformat(),
        "finished": _now().isoformat(timespec="seconds"),
        "leg": plan["leg"],
        "snapshot": result["snapshot"],
        "md": {k: result["md"][k] for k in ("array_uuid", "name", "events", "data_offset", "size", "role")},
        "filesystem": result["filesystem"],
        "journal": plan["journal"],
        "link_dest": plan["link_dest"],
        "rsync": result["rsync"],
    }
    os.rename(job.partial, os.path.join(dest, plan["backup"]))
    job.kept = True
    _write_json(os.path.join(dest, f"{plan['backup']}.json"), meta)
    _set_latest(dest, plan["backup"])


def _apply_backup(plan):
    started = time.monotonic()
    result = {
        "result": False, "backup": None, "error": None, "warnings": [], "removed_stale": [],
        "leg": plan["leg"], "dest": plan["dest"], "link_dest": plan["link_dest"], "journal": plan["journal"],
        "snapshot": {"name": plan["snapshot"]["name"], "size": plan["snapshot"]["size"],
                     "usage_percent": None, "full": None},
        "md": None, "filesystem": None, "rsync": None, "cleanup": [],
    }  # fmt: skip
    if plan["journal"] == "skip":
        result["warnings"].append("journal=skip: changes still only in the journal are not in this backup")
    with _Lock(plan["dest"]):
        job = _Backup(plan)
        try:
            _run_backup(job, result)
            result["error"] = _check_usage(job, result)
            if result["error"] is None:
                _promote(job, result)
                result["backup"] = plan["backup"]
        except Exception as exc:  # pylint: disable=broad-except
            result["error"] = str(exc)
            if job.snapshot is not None and result["snapshot"]["full"] is None:
                problem = _check_usage(job, result)  # an overflow explains many read errors
                if problem and result["snapshot"]["full"]:
                    result["error"] = f"{problem}; the failure it caused: {exc}"
        finally:
            result["cleanup"] = job.cleanup()
    return _finish(result, started)


def _finish(result, started):
    left = [c for c in result["cleanup"] if not c["ok"]]
    if left:
        what = "; ".join(f"{c['step']}: {c['error']}" for c in left)
        result["error"] = f"{result['error'] + '; ' if result['error'] else ''}cleanup incomplete: {what}"
    result["result"] = result["error"] is None
    result["seconds"] = round(time.monotonic() - started, 3)
    if not result["result"]:
        __context__["retcode"] = 1
    return result


def backup_leg(
    vg,
    lv,
    dest,
    snapshot_size="10%",
    fstype=None,
    partner=None,
    journal="replay",
    snapshot=None,
    allow_root_fs=False,
    dry_run=False,
):
    """
    Back up the filesystem inside disk leg ``vg/lv`` into ``dest/<stamp>``.

    ``dest``: the backup directory of this guest disk (an absolute path on
    the backup volume, which the caller mounts; refused on the root
    filesystem unless ``allow_root_fs=True``). ``snapshot_size``: room for
    blocks the guest changes during the backup, ``N%`` of the leg or a size
    (``2G``); default ``10%``. ``fstype``: what the cluster model says
    (``ext2|ext3|ext4|xfs|btrfs|swap|none``): anything but the first four is
    refused before any change, and a leg that holds another type than said is
    refused. ``partner``: the path of the other leg of the pair on this node
    (``/dev/xencluster/<leg id>``); when given, its md superblock must still
    count this leg as active, so a stale leg is never backed up. ``journal``:
    ``replay`` (default: journal replayed into the snapshot, origin never
    written) or ``skip`` (everything read-only; may miss recent changes).
    ``snapshot``: the snapshot's LV name (default ``snapshot_name(lv)``).

    Steps (see the module docstring): snapshot, ``mdadm --examine`` of the
    snapshot, loop device at the md data offset, ``blkid``, read-only mount,
    ``rsync`` into ``.partial-<stamp>`` with ``--link-dest`` to the previous
    backup, snapshot usage check, rename to ``<stamp>``, ``latest``. Cleanup
    (unmount, rmdir, detach, snapshot removal, partial copy removal) always
    runs, each step even when an earlier one failed.

    ``dry_run=True`` returns the plan (``refused`` lists every reason it
    would not run) and changes nothing. A refused plan raises
    ``CommandExecutionError`` with the reasons, before any change. Otherwise
    returns ``{"result", "backup" (the stamp, None on failure), "error",
    "warnings", "snapshot" {"name", "size", "usage_percent", "full"}, "md",
    "filesystem" {"type", "uuid", "label"}, "rsync" (counters),
    "link_dest", "cleanup" [{"step", "ok", "error"?}], "removed_stale",
    "seconds"}``; on failure ``result`` is False, ``error`` says why (with
    the tool's stderr) and the job's return code is 1.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.backup_leg xcvg web1.root.node1 /srv/xcbackup/web1/root fstype=ext4 dry_run=True
        salt node1 xencluster_backup.backup_leg xcvg web1.root.node1 /srv/xcbackup/web1/root \\
            fstype=ext4 partner=/dev/xencluster/web1.root.node2 snapshot_size=2G
    """
    args = _backup_args(vg, lv, dest, snapshot_size, fstype, partner, journal, snapshot, allow_root_fs, dry_run)
    plan = _plan_backup(args, _query_backup(args))
    if args["dry_run"]:
        return {**plan, "dry_run": True}
    if plan["refused"]:
        raise CommandExecutionError(f"backup of {plan['leg']} refused: " + "; ".join(plan["refused"]))
    return _apply_backup(plan)


# --- list and prune ------------------------------------------------------------------------------


def list_backups(dest):
    """
    The backups in ``dest``, newest first.

    Returns ``{"dest", "latest", "backups": [{"name", "time" (ISO 8601 UTC),
    "latest" (bool), "meta" (the backup's .json, None if missing)}],
    "partials" (copies in progress or left by a crash), "deleting"}``.

    CLI Example:

    .. code-block:: bash

        salt node3 xencluster_backup.list_backups /srv/xcbackup/web1/root
    """
    dest = _check_dest(dest)
    if not os.path.isdir(dest):
        raise CommandExecutionError(f"backup directory {dest} does not exist")
    found = _scan(dest)
    newest = found["latest"] or (found["complete"][0] if found["complete"] else None)
    backups = [
        {"name": s, "time": _stamp_time(s).isoformat(), "latest": s == newest, "meta": _read_meta(dest, s)}
        for s in found["complete"]
    ]
    return {"dest": dest, "latest": newest, "backups": backups, "partials": found["partials"],
            "deleting": found["deleting"]}  # fmt: skip


def _newest_per(stamps, count, period):
    """The newest stamp of each of the ``count`` most recent periods that have one."""
    kept, seen = [], set()
    for stamp in stamps:  # newest first
        key = period(_stamp_time(stamp))
        if key not in seen:
            if len(seen) == count:
                break
            seen.add(key)
            kept.append(stamp)
    return kept


def retention_plan(stamps, keep=0, daily=0, weekly=0, monthly=0, latest=None):
    """
    Which of ``stamps`` (backup names) a retention keeps: pure, no I/O.

    Kept: the ``keep`` newest; the newest backup of each of the ``daily``
    most recent days that have one (UTC), likewise ``weekly`` (ISO weeks) and
    ``monthly``; and always the newest backup and ``latest``. Returns
    ``{"keep": {stamp: [reasons]}, "delete": [stamps]}``, newest first.

    CLI Example:

    .. code-block:: bash

        salt node3 xencluster_backup.retention_plan '["20261124T010000Z", "20261123T010000Z"]' daily=1
    """
    if not isinstance(stamps, (list, tuple)):
        raise SaltInvocationError(f"stamps must be a list of backup names: {stamps!r:.120}")
    stamps = sorted({_check_stamp(s) for s in stamps if s != LATEST}, reverse=True)
    keep, daily = _check_count(keep, "keep"), _check_count(daily, "daily")
    weekly, monthly = _check_count(weekly, "weekly"), _check_count(monthly, "monthly")
    if not (keep or daily or weekly or monthly):
        raise SaltInvocationError("a retention needs keep, daily, weekly or monthly of at least 1")
    reasons = {}

    def mark(kept, why):
        for stamp in kept:
            reasons.setdefault(stamp, []).append(why)

    mark(stamps[:keep], "keep")
    mark(_newest_per(stamps, daily, lambda t: t.date()), "daily")
    mark(_newest_per(stamps, weekly, lambda t: t.isocalendar()[:2]), "weekly")
    mark(_newest_per(stamps, monthly, lambda t: (t.year, t.month)), "monthly")
    mark(stamps[:1], "newest")
    mark([latest] if latest in stamps else [], "latest")
    return {"keep": {s: reasons[s] for s in stamps if s in reasons},
            "delete": [s for s in stamps if s not in reasons]}  # fmt: skip


def prune(dest, keep=None, daily=None, weekly=None, monthly=None, dry_run=False):
    """
    Apply a retention to the backups in ``dest``; ``dry_run=True`` only tells.

    ``keep``: the N newest; ``daily``/``weekly``/``monthly``: the newest
    backup of each of the N most recent days/ISO weeks/months that have one
    (the cluster model's ``backup.retention``); at least one of them >= 1.
    The newest backup and the target of ``latest`` are never deleted. Copies
    left half-done by a crashed backup (``.partial-*``) or prune
    (``.deleting-*``) are deleted too. A backup is first renamed out of the
    listing, then deleted, so a prune that stops halfway never leaves a
    half-deleted tree that looks complete. Takes ``<dest>/.lock``: refused
    while a backup or restore runs there.

    Returns ``{"dest", "kept": {stamp: [reasons]}, "deleted": [...],
    "stale": [...], "dry_run"}``.

    CLI Example:

    .. code-block:: bash

        salt node3 xencluster_backup.prune /srv/xcbackup/web1/root daily=7 weekly=4 monthly=6 dry_run=True
        salt node3 xencluster_backup.prune /srv/xcbackup/web1/root keep=3
    """
    dest, dry_run = _check_dest(dest), _check_bool(dry_run, "dry_run")
    if not os.path.isdir(dest):
        raise CommandExecutionError(f"backup directory {dest} does not exist")
    found = _scan(dest)
    plan = retention_plan(found["complete"], keep, daily, weekly, monthly, found["latest"])
    stale = found["partials"] + found["deleting"]
    out = {"dest": dest, "kept": plan["keep"], "deleted": plan["delete"], "stale": stale, "dry_run": dry_run}
    if dry_run:
        return out
    with _Lock(dest):
        done = []
        for name in [*stale, *plan["delete"]]:
            try:
                _remove_tree(dest, name)
            except OSError as exc:
                raise CommandExecutionError(
                    f"prune of {dest} stopped at {name}: {exc}; deleted before it: {done or 'nothing'}"
                )
            done.append(name)
    return out


# --- restore -------------------------------------------------------------------------------------


def _restore_args(vg, lv, dest, backup, overwrite, mkfs, fstype, dry_run):
    fstype = _check_fstype(fstype)
    if fstype is not None and fstype not in SUPPORTED:
        raise SaltInvocationError(f"restore into {fstype} is not supported (only ext2, ext3, ext4 and xfs)")
    return {
        "vg": _check_vg(vg), "lv": _check_lv(lv), "dest": _check_dest(dest), "backup": _check_stamp(backup),
        "overwrite": _check_bool(overwrite, "overwrite"), "mkfs": _check_bool(mkfs, "mkfs"),
        "fstype": fstype, "dry_run": _check_bool(dry_run, "dry_run"),
    }  # fmt: skip


def _query_restore(args):
    facts = {"leg": _leg_facts(args["vg"], args["lv"]), "dest": _dest_facts(args["dest"])}
    facts["md"] = _examine_leg(facts["leg"]["lv"])
    return facts


def _chosen_backup(args, dest_facts):
    if not dest_facts["exists"]:
        return None
    if args["backup"] == LATEST:
        complete = dest_facts["complete"]
        return dest_facts["latest"] or (complete[0] if complete else None)
    return args["backup"] if args["backup"] in dest_facts["complete"] else None


def _plan_restore(args, facts):
    vg, lv = args["vg"], args["lv"]
    leg = facts["leg"]["lv"]
    refused = _leg_problems(vg, lv, facts["leg"])
    if leg and leg["open"] is not False:
        refused.append(
            f"{vg}/{lv} is {'open' if leg['open'] else 'maybe open (LVM cannot tell)'}: a guest, "
            "an md array, a mount or an LIO export uses it; stop the guest and unexport the leg first"
        )
    if _examinable(leg):
        refused += _md_problems(facts["md"], leg["size"])
    refused += _dest_problems(args["dest"], facts["dest"], True)
    stamp = _chosen_backup(args, facts["dest"])
    meta = _read_meta(args["dest"], stamp) if stamp else None
    if stamp is None:
        refused.append(f"no backup {args['backup']} in {args['dest']}")
    source_fs = ((meta or {}).get("filesystem") or {}).get("type")
    md = facts["md"] or {}
    return {
        "action": "restore",
        "leg": f"{vg}/{lv}",
        "dest": args["dest"],
        "backup": stamp,
        "meta": meta,
        "md": facts["md"],
        "loop": {"offset": md.get("data_offset"), "size": md.get("size"), "read_only": False},
        "fstype": args["fstype"] or source_fs,
        "overwrite": args["overwrite"],
        "mkfs": args["mkfs"],
        "refused": refused,
        "after": "the other leg of this disk pair is now stale: zero its md superblock "
                 "(xencluster_backup.invalidate_leg on its node) before the guest starts, then let the "
                 "guest add it back with a full resync",
    }  # fmt: skip


def _mkfs_argv(fstype, device, meta_fs):
    """mkfs of ``fstype`` keeping the backed-up filesystem's UUID and label when they are plain."""
    argv = [MKFS[fstype], "-q"]
    uuid, label = (meta_fs or {}).get("uuid"), (meta_fs or {}).get("label")
    if isinstance(uuid, str) and _UUID_RE.fullmatch(uuid):
        argv += ["-m", f"uuid={uuid}"] if fstype == "xfs" else ["-U", uuid]
    if isinstance(label, str) and _LABEL_RE.fullmatch(label):
        argv += ["-L", label]
    return [*argv, "--", device] if fstype != "xfs" else [*argv, device]


def _prepare_target(job, found, result):
    """mkfs a blank data area (mkfs=True), or take an existing filesystem (overwrite=True)."""
    plan = job.plan
    found_type = found.get("TYPE")
    if found_type is None:
        if not plan["mkfs"]:
            raise CommandExecutionError(f"{plan['leg']} holds no filesystem: pass mkfs=True to create one")
        if plan["fstype"] not in SUPPORTED:
            raise CommandExecutionError(f"cannot mkfs {plan['fstype']!r}: give fstype=ext2|ext3|ext4|xfs")
        _run(_mkfs_argv(plan["fstype"], job.loop, (plan["meta"] or {}).get("filesystem")))
        result["mkfs"] = plan["fstype"]
        return plan["fstype"]
    if found_type not in SUPPORTED:
        raise CommandExecutionError(f"restore into {plan['leg']} refused: {_fs_problem(found_type, None)}")
    if plan["fstype"] and plan["fstype"] != found_type:
        raise CommandExecutionError(
            f"{plan['leg']} holds {found_type}, the backup is {plan['fstype']}: refusing to mix them"
        )
    if not plan["overwrite"]:
        raise CommandExecutionError(
            f"{plan['leg']} already holds a {found_type} filesystem: pass overwrite=True to replace its content"
        )
    return found_type


class _Restore(_Backup):
    """A restore holds a loop device and a mount, never a snapshot or a partial copy."""

    def __init__(self, plan, device):
        super().__init__({**plan, "snapshot": {"vg": None, "name": None}})
        self.device = device


def _run_restore(job, result):
    plan = job.plan
    device = _check_device(job.device, "leg")
    job.loop = _attach(device, plan["md"]["data_offset"], plan["md"]["size"], False)
    fstype = _prepare_target(job, _probe(job.loop), result)
    _mount_private(job, fstype, "restore", "xcrs-")
    source = os.path.join(plan["dest"], plan["backup"])
    copied = _run([*RSYNC, "--delete", f"{source}/", f"{job.mountpoint}/"])
    result["rsync"] = parse_rsync_stats(copied["stdout"])


def restore_leg(vg, lv, dest, backup="latest", overwrite=False, mkfs=False, fstype=None, dry_run=False):
    """
    Restore backup ``backup`` of ``dest`` into the filesystem inside disk leg ``vg/lv``.

    The leg must carry an md 1.x RAID1 superblock (the mirror exists: a new
    disk pair is first mirrored by its guest), must not be open (no guest, md
    array, mount or LIO export: stop the guest and unexport the leg first)
    and is written below md, through a loop device at the md data offset.
    When the data area holds no filesystem, ``mkfs=True`` creates one
    (``fstype``, default the backed-up type, with the backed-up UUID and
    label, so the guest's fstab still matches); when it holds one,
    ``overwrite=True`` is needed and its content is replaced (``rsync
    --delete``); a filesystem of another type is refused.

    Afterwards the OTHER leg of the pair is stale: md would take the two
    legs for in sync. Before the guest starts, run ``invalidate_leg`` on the
    other leg's node, and let the guest add it back (full resync). The
    return's ``after`` says so.

    ``dry_run=True`` returns the plan. Returns ``{"result", "leg",
    "backup", "mkfs", "rsync", "error", "cleanup", "after", "seconds"}``;
    on failure ``result`` is False and the job's return code is 1.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_backup.restore_leg xcvg web1.root.node1 /srv/xcbackup/web1/root overwrite=True dry_run=True
        salt node1 xencluster_backup.restore_leg xcvg web2.root.node1 /srv/xcbackup/web1/root backup=20261124T010000Z mkfs=True
    """
    args = _restore_args(vg, lv, dest, backup, overwrite, mkfs, fstype, dry_run)
    facts = _query_restore(args)
    plan = _plan_restore(args, facts)
    if args["dry_run"]:
        return {**plan, "dry_run": True}
    if plan["refused"]:
        raise CommandExecutionError(f"restore into {plan['leg']} refused: " + "; ".join(plan["refused"]))
    started = time.monotonic()
    result = {"result": False, "leg": plan["leg"], "backup": plan["backup"], "mkfs": None, "rsync": None,
              "error": None, "warnings": [], "cleanup": [], "after": plan["after"]}  # fmt: skip
    with _Lock(plan["dest"]):
        job = _Restore(plan, facts["leg"]["lv"]["path"])
        try:
            _run_restore(job, result)
        except Exception as exc:  # pylint: disable=broad-except
            result["error"] = str(exc)
        finally:
            result["cleanup"] = job.cleanup()
    return _finish(result, started)


# --- invalidate the stale leg after a restore ----------------------------------------------------


def invalidate_leg(vg, lv, array_uuid, dry_run=False):
    """
    Zero the md superblock of disk leg ``vg/lv`` (``mdadm --zero-superblock``).

    For the other leg of a pair after ``restore_leg`` wrote one leg: without
    its superblock md no longer takes it for in sync, so the guest starts on
    the restored leg alone and adds this one back with a full resync. Only
    the md superblock is zeroed; the data stays until the resync overwrites
    it. Refused unless the leg carries a superblock of array ``array_uuid``
    (as ``mdadm --examine`` prints it, e.g. ``6a26659a:350b5f59:385754c0:6857aa6a``),
    and while the leg is open (guest, md, mount or LIO export).

    Returns ``{"leg", "array_uuid", "zeroed" (bool), "dry_run"}``.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_backup.invalidate_leg xcvg web1.root.node2 6a26659a:350b5f59:385754c0:6857aa6a dry_run=True
    """
    vg, lv, dry_run = _check_vg(vg), _check_lv(lv), _check_bool(dry_run, "dry_run")
    if not isinstance(array_uuid, str) or not re.fullmatch(r"[0-9a-f]{8}(?::[0-9a-f]{8}){3}", array_uuid):
        raise SaltInvocationError(f"invalid md array UUID: {array_uuid!r}")
    facts = _leg_facts(vg, lv)
    refused = _leg_problems(vg, lv, facts)
    leg = facts["lv"]
    md = _examine_leg(leg)
    if leg and leg["open"] is not False:
        refused.append(f"{vg}/{lv} is open or LVM cannot tell: stop the guest and unexport the leg first")
    if _examinable(leg) and md is None:
        refused.append(f"{vg}/{lv} carries no md superblock")
    elif md and md["array_uuid"] != array_uuid:
        refused.append(f"{vg}/{lv} belongs to array {md['array_uuid']}, not {array_uuid}")
    if refused:
        raise CommandExecutionError(f"invalidate {vg}/{lv} refused: " + "; ".join(refused))
    if not dry_run:
        _run([*MDADM_ZERO, leg["path"]])
    return {"leg": f"{vg}/{lv}", "array_uuid": array_uuid, "zeroed": not dry_run, "dry_run": dry_run}
