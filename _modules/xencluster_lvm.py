"""
LVM on xencluster dom0s: reports in JSON with exact byte sizes, create and grow LVs.

Every guest disk leg is an LV; this module reads the whole LVM state of a host
with one ``pvs``, one ``vgs`` and one ``lvs`` call, and creates or grows LVs.
It never shrinks an LV unless told twice (``allow_shrink`` and
``fs_already_shrunk``).

Named ``xencluster_lvm`` so it never shadows Salt's own ``lvm`` module.
"""

import json
import logging
import re

import salt.utils.path
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_lvm"

# LVM allows more ([a-zA-Z0-9+_.-], not starting with '-'); we allow less.
# Always fullmatch(): "$" would accept a trailing newline.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Substrings LVM reserves for its internal LVs.
_LV_RESERVED = (
    "_cdata", "_cmeta", "_corig", "_mimage", "_mlog", "_pmspare", "_rimage",
    "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin",
)  # fmt: skip
# A PV is a device path; no ':' (LVM reads "PV:PE-range"), no '..', no spaces.
_PV_RE = re.compile(r"/dev/[A-Za-z0-9_][A-Za-z0-9_./+-]{0,254}")
_SIZE_RE = re.compile(r"([0-9]{1,20})([kKmMgGtTpPeE](?:iB)?)?")
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SECTOR = 512
_MAX_STRIPES = 128

_REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix"]
PVS_FIELDS = (
    "pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free,pv_used,"
    "pv_pe_count,pv_pe_alloc_count,pv_uuid"
)
VGS_FIELDS = (
    "vg_name,vg_uuid,vg_attr,vg_size,vg_free,vg_extent_size,"
    "vg_extent_count,vg_free_count,pv_count,lv_count"
)
LVS_FIELDS = (
    "vg_name,lv_name,lv_uuid,lv_attr,lv_size,lv_path,vg_extent_size,"
    "seg_count,seg_start,seg_size,segtype,stripes,stripe_size,devices"
)
PVS_ARGV = ["pvs", *_REPORT, "-o", PVS_FIELDS]
VGS_ARGV = ["vgs", *_REPORT, "-o", VGS_FIELDS]
LVS_ARGV = ["lvs", *_REPORT, "-o", LVS_FIELDS, "-O", "vg_name,lv_name,seg_start"]

_INT_FIELDS = {
    "pv_size", "pv_free", "pv_used", "pv_pe_count", "pv_pe_alloc_count",
    "vg_size", "vg_free", "vg_extent_size", "vg_extent_count", "vg_free_count",
    "pv_count", "lv_count", "lv_size", "seg_count", "seg_start", "seg_size",
    "stripes", "stripe_size",
}  # fmt: skip


def __virtual__():
    if not salt.utils.path.which("lvm"):
        return (False, "xencluster_lvm: the lvm binary (lvm2) is not installed")
    return __virtualname__


# --- validation and parsing (pure) -------------------------------------------


def _check_vg(vg):
    if not isinstance(vg, str) or not _NAME_RE.fullmatch(vg):
        raise SaltInvocationError(f"invalid volume group name: {vg!r}")
    return vg


def _check_lv(name):
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SaltInvocationError(f"invalid logical volume name: {name!r}")
    if name.startswith(("snapshot", "pvmove")) or any(r in name for r in _LV_RESERVED):
        raise SaltInvocationError(f"logical volume name is reserved by LVM: {name!r}")
    return name


def _check_pvs(pvs):
    if pvs is None:
        return []
    if isinstance(pvs, str):
        pvs = [pvs]
    if not isinstance(pvs, (list, tuple)) or not pvs:
        raise SaltInvocationError(f"pvs must be a non-empty list of device paths: {pvs!r}")
    for pv in pvs:
        if not isinstance(pv, str) or not _PV_RE.fullmatch(pv) or ".." in pv:
            raise SaltInvocationError(f"invalid physical volume path: {pv!r}")
    return list(pvs)


def _check_stripes(stripes, stripe_size):
    if stripes is not None:
        if isinstance(stripes, bool) or not isinstance(stripes, int):
            raise SaltInvocationError(f"stripes must be an integer: {stripes!r}")
        if not 1 <= stripes <= _MAX_STRIPES:
            raise SaltInvocationError(f"stripes must be between 1 and {_MAX_STRIPES}")
    if stripe_size is None:
        return stripes, None
    if not stripes or stripes < 2:
        raise SaltInvocationError("stripe_size needs stripes >= 2")
    stripe_size = parse_size(stripe_size)
    if stripe_size < 4096 or stripe_size & (stripe_size - 1):
        raise SaltInvocationError("stripe_size must be a power of two of at least 4k")
    return stripes, stripe_size


def parse_size(size):
    """
    Parse a size into an exact number of bytes.

    Accepts an integer number of bytes, a string of digits (bytes) or a number
    with a binary unit: ``k``, ``M``, ``G``, ``T``, ``P``, ``E`` (either case,
    optionally followed by ``iB``), e.g. ``64k``, ``512M``, ``10G``, ``1TiB``.
    Everything else (decimals, signs, spaces, ``GB``, zero) is refused.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_lvm.parse_size 10G
    """
    if isinstance(size, bool):
        raise SaltInvocationError(f"invalid size: {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str) and _SIZE_RE.fullmatch(size):
        digits, unit = _SIZE_RE.fullmatch(size).groups()
        value = int(digits) * 1024 ** _POWERS[unit[0].lower()] if unit else int(digits)
    else:
        raise SaltInvocationError(f"invalid size: {size!r} (use bytes or e.g. 512M, 10G)")
    if value <= 0:
        raise SaltInvocationError(f"size must be positive: {size!r}")
    return value


def lv_args(vg, name, size, stripes=None, stripe_size=None, pvs=None):
    """
    Validate and normalise the arguments of an LV request without running anything.

    Returns ``{"vg", "name", "size" (bytes), "stripes", "stripe_size" (bytes),
    "pvs" (list)}`` or raises ``SaltInvocationError``. The ``xencluster_lvm``
    state uses it so that a dry run refuses exactly what a real run refuses.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.lv_args vg0 web1-disk0-a 10G stripes=2 stripe_size=64k
    """
    stripes, stripe_size = _check_stripes(stripes, stripe_size)
    return {
        "vg": _check_vg(vg),
        "name": _check_lv(name),
        "size": parse_size(size),
        "stripes": stripes,
        "stripe_size": stripe_size,
        "pvs": _check_pvs(pvs),
    }


def _lvm_size_arg(size_bytes):
    """LVM takes byte sizes only in multiples of 512; round up (it rounds to extents anyway)."""
    return f"{-(-size_bytes // _SECTOR) * _SECTOR}b"


def _row(raw):
    row = {}
    for key, value in raw.items():
        if key in _INT_FIELDS:
            row[key] = int(value) if value != "" else None
        else:
            row[key] = value
    return row


def _parse_report(stdout, kind):
    """Rows of one ``--reportformat json`` report (``kind``: pv, vg or lv)."""
    try:
        data = json.loads(stdout)
        rows = []
        for section in data["report"]:
            rows.extend(section.get(kind, []))
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandExecutionError(f"unexpected LVM {kind} report: {exc}: {stdout[:200]!r}")
    return [_row(r) for r in rows]


def _parse_pvs(stdout):
    """{pv_name: row} from ``pvs`` JSON."""
    return {r["pv_name"]: r for r in _parse_report(stdout, "pv")}


def _parse_vgs(stdout):
    """{vg_name: row} from ``vgs`` JSON."""
    return {r["vg_name"]: r for r in _parse_report(stdout, "vg")}


def _parse_lvs(stdout):
    """{"vg/lv": lv} from segment-level ``lvs`` JSON; one row per segment is folded into ``segments``."""
    lvs = {}
    for r in _parse_report(stdout, "lv"):
        key = f"{r['vg_name']}/{r['lv_name']}"
        lv = lvs.setdefault(
            key,
            {
                "vg": r["vg_name"],
                "name": r["lv_name"],
                "uuid": r["lv_uuid"],
                "attr": r["lv_attr"],
                "size": r["lv_size"],
                "path": r["lv_path"],
                "extent_size": r["vg_extent_size"],
                "seg_count": r["seg_count"],
                "segments": [],
            },
        )
        lv["segments"].append(
            {
                "start": r["seg_start"],
                "size": r["seg_size"],
                "type": r["segtype"],
                "stripes": r["stripes"],
                "stripe_size": r["stripe_size"],
                "devices": [d for d in r["devices"].split(",") if d],
            }
        )
    return lvs


# --- running LVM ---------------------------------------------------------------


def _run(argv):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        raise CommandExecutionError(
            f"{argv[0]} failed (rc {res['retcode']}): {res['stderr'].strip()}",
            info={"argv": argv, "stderr": res["stderr"], "retcode": res["retcode"]},
        )
    return res["stdout"]


def report():
    """
    The LVM state of this host: one ``pvs``, one ``vgs`` and one ``lvs`` call.

    Sizes are exact integers in bytes. Returns
    ``{"pvs": {pv_name: {...}}, "vgs": {vg_name: {...}}, "lvs": {"vg/lv": {...}}}``;
    each LV carries its ``segments`` (type, stripes, stripe_size, devices).

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_lvm.report
    """
    return {
        "pvs": _parse_pvs(_run(PVS_ARGV)),
        "vgs": _parse_vgs(_run(VGS_ARGV)),
        "lvs": _parse_lvs(_run(LVS_ARGV)),
    }


def _lv(vg, name):
    lvs = _parse_lvs(_run([*LVS_ARGV, f"{vg}/{name}"]))
    try:
        return lvs[f"{vg}/{name}"]
    except KeyError:
        raise CommandExecutionError(f"logical volume {vg}/{name} not found")


def lv_create(vg, name, size, stripes=None, stripe_size=None, pvs=None):
    """
    Create logical volume ``name`` in ``vg``; returns the new LV as ``report`` shows it.

    ``size`` is exact bytes or a binary unit (``10G``); LVM rounds it up to
    whole extents (and whole stripes). ``stripes``/``stripe_size`` make a
    striped LV; ``pvs`` restricts allocation to those physical volumes.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.lv_create vg0 web1-disk0-a 10G
        salt node1 xencluster_lvm.lv_create vg0 db1-disk0-a 20G stripes=2 stripe_size=64k
    """
    a = lv_args(vg, name, size, stripes, stripe_size, pvs)
    argv = ["lvcreate", "--yes", "--name", a["name"], "--size", _lvm_size_arg(a["size"])]
    if a["stripes"]:
        argv += ["--stripes", str(a["stripes"])]
    if a["stripe_size"]:
        argv += ["--stripesize", f"{a['stripe_size']}b"]
    argv += ["--", a["vg"], *a["pvs"]]
    _run(argv)
    return _lv(a["vg"], a["name"])


def lv_extend(vg, name, size, pvs=None, allow_shrink=False, fs_already_shrunk=False):
    """
    Grow logical volume ``vg/name`` to ``size`` (the new total size).

    Returns ``{"old_size": bytes, "new_size": bytes}`` (equal when nothing
    had to change). A smaller size is refused unless both ``allow_shrink=True``
    and ``fs_already_shrunk=True`` are given: shrinking an LV under a
    filesystem or md member that still uses the space destroys data.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.lv_extend vg0 web1-disk0-a 20G
    """
    a = lv_args(vg, name, size, pvs=pvs)
    vg, name, size, pvs = a["vg"], a["name"], a["size"], a["pvs"]
    current = _lv(vg, name)
    extent = current["extent_size"]
    wanted = -(-size // extent) * extent
    if wanted == current["size"]:
        return {"old_size": current["size"], "new_size": current["size"]}
    if wanted > current["size"]:
        argv = ["lvextend", "--size", _lvm_size_arg(size), "--", f"{vg}/{name}", *pvs]
    else:
        if not (allow_shrink is True and fs_already_shrunk is True):
            raise CommandExecutionError(
                f"refusing to shrink {vg}/{name} from {current['size']} to {wanted} bytes: "
                "pass allow_shrink=True and fs_already_shrunk=True once the data "
                "on it has been shrunk"
            )
        log.warning("shrinking %s/%s from %s to %s bytes", vg, name, current["size"], wanted)
        argv = ["lvreduce", "--yes", "--size", _lvm_size_arg(size), "--", f"{vg}/{name}"]
    _run(argv)
    return {"old_size": current["size"], "new_size": _lv(vg, name)["size"]}
