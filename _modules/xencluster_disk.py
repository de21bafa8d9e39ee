"""
Stable device paths of guest disk legs on xencluster dom0s.

Every guest disk is a pair of LVs ("legs") on two nodes. A leg has a *leg
id* ``<guest>.<disk>.<node>`` (``node`` is the node that owns the LV), and
the same path on every node: ``/dev/xencluster/<leg id>``.

* On its owner the leg is the LV ``<vg>/<leg id>`` (the leg id is the LV
  name), linked by a udev rule matching LVM's ``DM_VG_NAME``/``DM_LV_NAME``.
* On a peer it is the iSCSI LUN that the owner exports with the leg id as its
  T10 unit serial (``xencluster_lio.export ... serial=<leg id>``), linked by a
  udev rule matching the ``ID_SCSI_SERIAL`` that scsi_id reads from VPD page
  0x80.

Both rules are generic (nothing per leg in them), so one static rules file,
``/etc/udev/rules.d/61-xencluster-legs.rules``, keeps the paths right across
reboots, iSCSI re-logins and sdX reordering. ``install_rules`` installs it;
``links``/``resolve`` read ``/dev/xencluster`` and sysfs only; ``wait_for``
waits for a link after an ``lvcreate`` or an iSCSI login.

Named ``xencluster_disk`` so it never shadows a Salt module.
"""

import logging
import os
import re
import tempfile
import time

import salt.utils.path
import salt.utils.platform
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_disk"

# Module-level so that tests can point them into a temporary directory.
DEV_ROOT = "/dev/xencluster"
SYS_ROOT = "/sys"
RULES_FILE = "/etc/udev/rules.d/61-xencluster-legs.rules"
SETTLE_TIMEOUT = 60  # seconds, udevadm settle after the rules changed
MAX_WAIT = 600

RELOAD_ARGV = ["udevadm", "control", "--reload"]
TRIGGER_ARGV = ["udevadm", "trigger", "--action=change", "--subsystem-match=block"]
SETTLE_ARGV = ["udevadm", "settle"]  # + "--timeout=N"

# guest, disk and node names: lower-case letters, digits and '-', not starting
# with '-', at most 31 characters; no '.', which separates them in a leg id.
_PART = r"[a-z0-9][a-z0-9-]{0,30}"
_PART_RE = re.compile(_PART)
_LEG_ID_RE = re.compile(rf"{_PART}\.{_PART}\.{_PART}")
_SESSION_RE = re.compile(r"session[0-9]+")
_BLOCK_RE = re.compile(r"[a-z]+[a-z0-9-]*")

# The file name: 61 sorts after every rule that sets the properties used here,
#   55-dm.rules, 56-lvm.rules (Debian's names for LVM's 10-dm.rules and
#   11-dm-lvm.rules: DM_NAME, DM_VG_NAME, DM_LV_NAME, DM_LV_LAYER and the
#   DM_UDEV_* flags), 60-persistent-storage-dm.rules (13-dm-disk.rules
#   upstream) and 60-persistent-storage.rules (scsi_id: ID_VENDOR,
#   ID_SCSI_SERIAL),
# whether they live in /lib/udev/rules.d or /etc/udev/rules.d (udev sorts the
# files of both directories by name).
UDEV_RULES = """\
# xencluster: stable paths of guest disk legs, /dev/xencluster/<guest>.<disk>.<node>
# Installed by xencluster_disk.install_rules; edits are overwritten.
#
# 61-: runs after 55-dm/56-lvm (LVM's 10-dm/11-dm-lvm: DM_VG_NAME, DM_LV_NAME,
# DM_LV_LAYER, DM_UDEV_* flags), 60-persistent-storage-dm (LVM's 13-dm-disk) and
# 60-persistent-storage (scsi_id: ID_VENDOR, ID_SCSI_SERIAL from VPD page 0x80).
# Nothing in here names a leg, so the file never changes when legs come and go.

ACTION!="add|change", GOTO="xencluster_legs_end"
SUBSYSTEM!="block", GOTO="xencluster_legs_end"
KERNEL=="dm-[0-9]*", GOTO="xencluster_legs_lv"
KERNEL=="sd*", GOTO="xencluster_legs_iscsi"
GOTO="xencluster_legs_end"

# The owner's leg: the top-level LV <vg>/<leg id>, once LVM says it is ready
# (the flags LVM's own rules use to keep other rules off an LV that is not
# resumed yet, suspended, being wiped, or an internal layer).
LABEL="xencluster_legs_lv"
ENV{DM_UDEV_RULES_VSN}!="?*", GOTO="xencluster_legs_end"
ENV{DM_UDEV_DISABLE_OTHER_RULES_FLAG}=="1", GOTO="xencluster_legs_end"
ENV{DM_LV_LAYER}=="?*", GOTO="xencluster_legs_end"
ENV{DM_LV_NAME}=="*[!a-z0-9.-]*", GOTO="xencluster_legs_end"
ENV{DM_VG_NAME}=="?*", ENV{DM_LV_NAME}=="?*.?*.?*", SYMLINK+="xencluster/$env{DM_LV_NAME}"
GOTO="xencluster_legs_end"

# A peer's leg: a LIO LUN whose T10 unit serial (VPD page 0x80) is the leg id.
LABEL="xencluster_legs_iscsi"
ENV{ID_SCSI_SERIAL}=="*[!a-z0-9.-]*", GOTO="xencluster_legs_end"
ENV{DEVTYPE}=="disk", ENV{ID_VENDOR}=="LIO-ORG", ENV{ID_SCSI_SERIAL}=="?*.?*.?*", SYMLINK+="xencluster/$env{ID_SCSI_SERIAL}"

LABEL="xencluster_legs_end"
"""


def __virtual__():
    if not salt.utils.platform.is_linux():
        return (False, "xencluster_disk: Linux only (udev)")
    if not salt.utils.path.which("udevadm"):
        return (False, "xencluster_disk: udevadm (udev) is not installed")
    return __virtualname__


# --- names (pure) --------------------------------------------------------------


def _check_part(value, what):
    if not isinstance(value, str):
        raise SaltInvocationError(
            f"invalid {what} name: {value!r} is not a string (quote numbers on the command line)"
        )
    if not _PART_RE.fullmatch(value):
        raise SaltInvocationError(
            f"invalid {what} name: {value!r} (1 to 31 of a-z, 0-9 and '-', not starting with '-')"
        )
    return value


def leg_id(guest, disk, node):
    """
    The leg id ``<guest>.<disk>.<node>`` of the leg of disk ``disk`` of guest ``guest`` owned by ``node``.

    Each part is 1 to 31 of ``a-z``, ``0-9`` and ``-``, not starting with
    ``-``; anything else raises ``SaltInvocationError`` naming the part. The
    leg id is also the name of the leg's LV on ``node``.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_disk.leg_id web1 disk0 node1
    """
    return ".".join(
        (_check_part(guest, "guest"), _check_part(disk, "disk"), _check_part(node, "node"))
    )


def leg_path(guest, disk, node):
    """
    The stable path of a leg, the same on every node: ``/dev/xencluster/<guest>.<disk>.<node>``.

    On ``node`` it is a link to the leg's LV, on the node's peers a link to
    the iSCSI LUN that ``node`` exports (see ``install_rules``). Pure: it does
    not check that the link exists (``resolve`` does).

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_disk.leg_path web1 disk0 node1
    """
    return f"{DEV_ROOT}/{leg_id(guest, disk, node)}"


# --- udev rules ----------------------------------------------------------------


def udev_rules():
    """
    The text of the udev rules file that makes the stable paths (a constant).

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_disk.udev_rules
    """
    return UDEV_RULES


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}")


def _write_atomic(path, text, mode=0o644):
    """Write ``text`` to a temporary file next to ``path`` (not *.rules: udev ignores it), then rename."""
    directory = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CommandExecutionError(f"cannot write {path}: {exc}")
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _udevadm(argv, ok=(0,)):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] not in ok:
        stderr = (res.get("stderr") or "").strip()
        raise CommandExecutionError(
            f"{' '.join(argv)} failed (rc {res['retcode']}): {stderr}",
            info={"stderr": stderr, "retcode": res["retcode"]},
        )
    return res


def install_rules(test=False):
    """
    Install the udev rules of the stable paths in ``/etc/udev/rules.d/61-xencluster-legs.rules``; idempotent.

    Writes the file (mode 0644, a temporary file renamed over it) only when
    its content differs from ``udev_rules()``, and only then runs ``udevadm
    control --reload``, ``udevadm trigger --action=change
    --subsystem-match=block`` (so existing LVs and LUNs get their links) and
    ``udevadm settle`` (bounded). Returns ``{"changed", "path"}``; a second
    call changes nothing and runs nothing. ``test=True`` only says whether it
    would change.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_disk.install_rules
    """
    changed = _read_text(RULES_FILE) != UDEV_RULES
    ret = {"changed": changed, "path": RULES_FILE}
    if test or not changed:
        return ret
    _write_atomic(RULES_FILE, UDEV_RULES)
    log.info("xencluster_disk: %s written", RULES_FILE)
    _udevadm(RELOAD_ARGV)
    _udevadm(TRIGGER_ARGV)
    _udevadm([*SETTLE_ARGV, f"--timeout={SETTLE_TIMEOUT}"])
    return ret


# --- links (sysfs only) ----------------------------------------------------------


def _read_sys(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _kind(device):
    """'lv', 'iscsi' or 'unknown' for kernel block device ``device``, from sysfs."""
    if not _BLOCK_RE.fullmatch(device):
        return "unknown"
    block = os.path.join(SYS_ROOT, "block", device)
    if not os.path.isdir(block):
        return "unknown"
    if device.startswith("dm-"):
        name = _read_sys(os.path.join(block, "dm", "name"))
        uuid = _read_sys(os.path.join(block, "dm", "uuid")) or ""
        return "lv" if name and uuid.startswith("LVM-") else "unknown"
    if device.startswith("sd"):
        # /sys/block/sdX/device -> .../hostN/sessionM/targetN:0:0/N:0:0:L
        parts = os.path.realpath(os.path.join(block, "device")).split(os.sep)
        return "iscsi" if any(_SESSION_RE.fullmatch(p) for p in parts) else "unknown"
    return "unknown"


def _entry(name):
    """The listing entry of /dev/xencluster/<name>, or None if there is no such link."""
    path = os.path.join(DEV_ROOT, name)
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    device = os.path.basename(target)
    # udev links point into /dev itself ("../sdb"); anything else is not ours.
    in_dev = os.path.dirname(target) == os.path.realpath(os.path.dirname(DEV_ROOT))
    return {
        "path": path,
        "target": target,
        "kind": _kind(device) if in_dev else "unknown",
        "device": device,
    }


def links():
    """
    Every stable path on this node: one listing of ``/dev/xencluster`` plus sysfs reads.

    Returns ``{leg id: {"path", "target" (the resolved device node), "kind",
    "device" (kernel name)}}``. ``kind`` is ``lv`` for an LVM LV (``dm-N``
    with ``/sys/block/dm-N/dm/uuid`` ``LVM-…``), ``iscsi`` for a SCSI disk
    under an iSCSI session (``/sys/block/sdX/device`` resolves into
    ``…/sessionN/…``), otherwise ``unknown``. No link is an empty dict. No
    command runs.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_disk.links
    """
    try:
        names = sorted(os.listdir(DEV_ROOT))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CommandExecutionError(f"cannot list {DEV_ROOT}: {exc}")
    out = {}
    for name in names:
        entry = _entry(name)
        if entry is not None:
            out[name] = entry
    return out


def resolve(guest, disk, node):
    """
    Where the stable path of a leg points on this node: its ``links`` entry.

    Returns ``{"path", "target", "kind", "device"}`` (``kind`` ``lv`` on the
    leg's owner, ``iscsi`` on a peer that is logged in to it). Raises
    ``CommandExecutionError`` when this node has no such link.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_disk.resolve web1 disk0 node1
    """
    leg = leg_id(guest, disk, node)
    entry = _entry(leg)
    if entry is None:
        raise CommandExecutionError(
            f"leg {leg} has no stable path on this node ({DEV_ROOT}/{leg}); "
            "is the LV present / the LUN logged in?"
        )
    return entry


def _check_timeout(timeout):
    if isinstance(timeout, str):
        try:
            timeout = float(timeout)
        except ValueError:
            raise SaltInvocationError(f"timeout must be a number of seconds: {timeout!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_WAIT:
        raise SaltInvocationError(f"timeout must be a number of seconds from 0 to {MAX_WAIT}: {timeout!r}")
    return float(timeout)


def wait_for(guest, disk, node, timeout=30):
    """
    Wait until the stable path of a leg exists on this node; for use right after ``lvcreate`` or an iSCSI login.

    Runs ``udevadm settle`` once (bounded by ``timeout``), then polls the link
    (no command) until it appears or ``timeout`` seconds have passed. Returns
    the ``resolve`` entry; raises ``CommandExecutionError`` on timeout.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_disk.wait_for web1 disk0 node1 timeout=60
    """
    leg = leg_id(guest, disk, node)
    timeout = _check_timeout(timeout)
    deadline = time.monotonic() + timeout
    # A settle that times out is not fatal: the link may still come; the poll decides.
    settled = _udevadm([*SETTLE_ARGV, f"--timeout={max(1, int(timeout))}"], ok=(0, 1))
    settle_note = ""
    if settled["retcode"] != 0:
        settle_note = f" (udevadm settle: {(settled.get('stderr') or '').strip()})"
        log.warning("xencluster_disk: udevadm settle failed%s", settle_note)
    while True:
        entry = _entry(leg)
        if entry is not None:
            return entry
        if time.monotonic() >= deadline:
            raise CommandExecutionError(
                f"leg {leg} has no stable path on this node after {timeout:g} s ({DEV_ROOT}/{leg}); "
                f"is the LV present / the LUN logged in?{settle_note}"
            )
        time.sleep(0.2)
