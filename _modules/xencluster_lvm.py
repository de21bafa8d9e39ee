"""
LVM on xencluster dom0s: reports in JSON with exact byte sizes; create, grow and
remove LVs, classic snapshots and LV tags.

Every guest disk leg is an LV; this module reads the whole LVM state of a host
with one ``pvs``, one ``vgs`` and one ``lvs`` call, and creates or grows LVs.
It never shrinks an LV unless told twice (``allow_shrink`` and
``fs_already_shrunk``), and never removes an LV that is open, exported over
LIO or the origin of snapshots unless told ``force=True``.

It also creates and extends volume groups (``vg_create``, ``vg_extend``), but
only on devices that carry no signature at all (``signatures``: one
``wipefs --no-act --json`` call): it never wipes anything and never removes
a PV from a VG.

Named ``xencluster_lvm`` so it never shadows Salt's own ``lvm`` module.
"""

import json
import logging
import os
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
# LVM allows tags of [A-Za-z0-9_+.-/=!:&#], up to 1024 characters; we allow less.
_TAG_RE = re.compile(r"[A-Za-z0-9_+.=:][A-Za-z0-9_+.=:-]{0,127}")
# data_percent: "%.2f" (libdm's dm_report_field_percent), "" when LVM has no value.
_PERCENT_RE = re.compile(r"([0-9]{1,3})(?:[.,]([0-9]{1,2}))?")

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
    "seg_count,seg_start,seg_size,segtype,stripes,stripe_size,devices,"
    # Appended (older recordings lack them; the parser treats them as optional):
    "origin,data_percent,lv_tags,lv_device_open,lv_active"
)
PVS_ARGV = ["pvs", *_REPORT, "-o", PVS_FIELDS]
VGS_ARGV = ["vgs", *_REPORT, "-o", VGS_FIELDS]
LVS_ARGV = ["lvs", *_REPORT, "-o", LVS_FIELDS, "-O", "vg_name,lv_name,seg_start"]
# Lists signatures without touching them (--no-act); the devices follow.
WIPEFS_ARGV = ["wipefs", "--no-act", "--json"]

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


def _check_tags(tags, what="tags"):
    """None, one tag or a list of tags -> a list without duplicates, every tag checked."""
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, (list, tuple)):
        raise SaltInvocationError(f"{what} must be a list of tags: {tags!r}")
    out = []
    for tag in tags:
        if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
            raise SaltInvocationError(
                f"invalid LV tag in {what}: {tag!r} (1 to 128 of [A-Za-z0-9_+.=:-], not starting with '-')"
            )
        if tag not in out:
            out.append(tag)
    return out


def _check_force(force, what="force"):
    if not isinstance(force, bool):
        raise SaltInvocationError(f"{what} must be True or False: {force!r}")
    return force


def _check_devices(devices):
    """Checked PV paths without repeats; a device named twice (also via a symlink) is refused."""
    if devices is None or devices == "":
        raise SaltInvocationError("pvs must be a non-empty list of device paths: None")
    devices = _check_pvs(devices)
    out, real = [], {}
    for dev in devices:
        if dev in out:
            continue
        resolved = os.path.realpath(dev)
        if resolved in real:
            raise SaltInvocationError(f"{real[resolved]} and {dev} are the same device ({resolved})")
        real[resolved] = dev
        out.append(dev)
    return out


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


def _flag(value, word):
    """An LVM binary field printed without ``--binary``.

    LVM prints ``word`` (e.g. "open") for yes, "" for no and "unknown" when it
    cannot tell (activation disabled, no device-mapper info); with
    ``--binary`` it would print 1, 0 and -1. A field missing from the report
    (a recording made with an older field list) is None, like "unknown", and
    so is any other value (logged): one odd field must not break the report.
    """
    if value is None or value in ("unknown", "-1"):
        return None
    if value in ("", "0"):
        return False
    if value in (word, "1") or (isinstance(value, str) and value.startswith(f"{word} ")):
        return True  # "active exclusively" and the like count as active
    log.debug("unexpected LVM value %r for the %r flag: taken as unknown", value, word)
    return None


def _percent(value):
    """``data_percent`` ("12.34", "" when none, missing in older recordings) -> float or None."""
    if value is None or value == "":
        return None
    m = _PERCENT_RE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise CommandExecutionError(f"unexpected LVM percentage: {value!r}")
    return float(f"{m.group(1)}.{m.group(2) or '0'}")


def _tag_list(value):
    """``lv_tags``: "a,b" (LVM's default list separator; ',' is not a tag character) -> list."""
    if value is None:
        return []
    if isinstance(value, list):  # a JSON array, should a newer LVM print one
        return [t for t in value if t]
    return [t for t in value.split(",") if t]


def _parse_lvs(stdout):
    """{"vg/lv": lv} from segment-level ``lvs`` JSON; one row per segment is folded into ``segments``.

    Fields added to ``LVS_FIELDS`` after the first recordings (origin,
    data_percent, lv_tags, lv_device_open, lv_active) are optional: without
    them ``origin`` and ``snapshot_usage`` are None, ``tags`` is [] and
    ``open``/``active`` are None (unknown).
    """
    lvs = {}
    for r in _parse_report(stdout, "lv"):
        key = f"{r['vg_name']}/{r['lv_name']}"
        if key not in lvs:
            origin = r.get("origin") or None
            active = _flag(r.get("lv_active"), "active")
            is_open = _flag(r.get("lv_device_open"), "open")
            if is_open is None and active is False:
                is_open = False  # LVM prints "unknown" for an inactive LV: no device, so not open
            lvs[key] = {
                "vg": r["vg_name"],
                "name": r["lv_name"],
                "uuid": r["lv_uuid"],
                "attr": r["lv_attr"],
                "size": r["lv_size"],
                "path": r["lv_path"],
                "extent_size": r["vg_extent_size"],
                "seg_count": r["seg_count"],
                "origin": origin,
                "snapshot_usage": _percent(r.get("data_percent")) if origin else None,
                "tags": _tag_list(r.get("lv_tags")),
                "open": is_open,
                "active": active,
                "segments": [],
            }
        lv = lvs[key]
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
    each LV carries its ``segments`` (type, stripes, stripe_size, devices) and:

    * ``origin``: for a snapshot, the name of the LV it snapshots; else None
    * ``snapshot_usage``: for an active snapshot, how full it is in percent
      (a float; 100.0 means LVM has invalidated it); else None
    * ``tags``: the LV's tags (list)
    * ``open``, ``active``: True/False, or None when LVM cannot tell
      (activation disabled). An inactive LV is never open.

    Every snapshot of the host is in this one report: no call per LV.

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


def _vg_lvs(vg):
    """Every (visible) LV of ``vg`` from one ``lvs`` call; a missing VG is an error (LVM's stderr)."""
    return _parse_lvs(_run([*LVS_ARGV, vg]))


def _is_snapshot(lv):
    """Has an origin; or, in a report without the origin field, lv_attr type 's'/'S' (merging)."""
    return bool(lv["origin"]) or lv["attr"][:1] in ("s", "S")


def _snapshots_of(lvs, vg, name):
    return sorted(lv["name"] for lv in lvs.values() if lv["vg"] == vg and lv["origin"] == name)


def _lio_exports_of(vg, name, lv):
    """Names of the LIO block backstores whose device is this LV; None if the check was skipped.

    ``xencluster_lio.exports`` is called once. A backstore's ``dev`` matches
    when it, or its realpath, is the LV's path, ``/dev/<vg>/<lv>``,
    ``/dev/mapper/<vg>-<lv>`` (with '-' doubled in both names) or the realpath
    of one of those (``/dev/dm-N``).
    """
    if "xencluster_lio.exports" not in __salt__:
        log.debug("xencluster_lio is not loaded: LIO export check of %s/%s skipped", vg, name)
        return None
    mapper = f"/dev/mapper/{vg.replace('-', '--')}-{name.replace('-', '--')}"
    paths = {p for p in (lv.get("path"), f"/dev/{vg}/{name}", mapper) if p}
    paths |= {os.path.realpath(p) for p in paths}
    current = __salt__["xencluster_lio.exports"]()
    found = []
    for bs_name, bs in sorted((current or {}).get("backstores", {}).items()):
        dev = bs.get("dev")
        if dev and (dev in paths or os.path.realpath(dev) in paths):
            found.append(bs_name)
    return found


def _removal_refusals(vg, name, lv, lvs):
    """Why removing ``lv`` would hurt: [reason, ...] ([] when nothing is in the way)."""
    reasons = []
    if lv["open"]:
        reasons.append("it is open (lv_device_open: a guest, md, LIO or a mount holds it)")
    try:
        exported = _lio_exports_of(vg, name, lv)
    except CommandExecutionError as exc:
        reasons.append(f"its LIO exports could not be checked: {exc}")
    else:
        if exported:
            names = ", ".join(f"block/{b}" for b in exported)
            reasons.append(f"it is exported over LIO as {names} (xencluster_lio.unexport first)")
    snapshots = _snapshots_of(lvs, vg, name)
    if snapshots:
        reasons.append(f"it has snapshots that lvremove would remove with it: {', '.join(snapshots)}")
    elif lv["attr"][:1] in ("o", "O"):
        reasons.append("it is the origin of snapshots (lv_attr), which lvremove would remove with it")
    return reasons


def lv_create(vg, name, size, stripes=None, stripe_size=None, pvs=None, tags=None):
    """
    Create logical volume ``name`` in ``vg``; returns the new LV as ``report`` shows it.

    ``size`` is exact bytes or a binary unit (``10G``); LVM rounds it up to
    whole extents (and whole stripes). ``stripes``/``stripe_size`` make a
    striped LV; ``pvs`` restricts allocation to those physical volumes.
    ``tags`` is a list of LV tags (1 to 128 of ``[A-Za-z0-9_+.=:-]``, not
    starting with ``-``), each given to lvcreate as ``--addtag``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.lv_create vg0 web1-disk0-a 10G
        salt node1 xencluster_lvm.lv_create vg0 db1-disk0-a 20G stripes=2 stripe_size=64k
        salt node1 xencluster_lvm.lv_create vg0 web1-disk0-a 10G tags='["xc-guest=web1", "xc-leg=a"]'
    """
    a = lv_args(vg, name, size, stripes, stripe_size, pvs)
    tags = _check_tags(tags)
    argv = ["lvcreate", "--yes", "--name", a["name"], "--size", _lvm_size_arg(a["size"])]
    if a["stripes"]:
        argv += ["--stripes", str(a["stripes"])]
    if a["stripe_size"]:
        argv += ["--stripesize", f"{a['stripe_size']}b"]
    for tag in tags:
        argv += ["--addtag", tag]
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


def lv_remove(vg, name, force=False):
    """
    Remove logical volume ``vg/name``; idempotent.

    Refuses (``CommandExecutionError`` naming every reason) when the LV

    * is open (``lv_device_open``: used by a guest, md, LIO, a mount ...),
    * is exported over LIO: a block backstore of ``xencluster_lio.exports``
      points at it (by path, ``/dev/mapper`` name or ``/dev/dm-N``); when the
      ``xencluster_lio`` module is not loaded this check is skipped (logged
      at debug level),
    * is the origin of snapshots (``lvremove`` would remove them with it),

    unless ``force=True``, which logs a WARNING with the reasons and goes on.
    ``force`` only lifts these xencluster checks: the command is always
    ``lvremove --yes -- vg/lv`` (``--yes`` answers LVM's prompts; ``-f`` is
    never passed), so LVM's own refusal to remove an LV that is in use still
    applies, and removing an origin with ``force`` removes its snapshots.

    Returns ``{"removed": True, "lv": "vg/name", "snapshots_removed": [...],
    "forced": [reasons overridden]}``, or ``{"removed": False, "reason":
    "absent"}`` when the VG has no such LV. A missing VG is an error.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.lv_remove vg0 web1-disk0-a
        salt node1 xencluster_lvm.lv_remove vg0 web1-disk0-a force=True
    """
    vg, name, force = _check_vg(vg), _check_lv(name), _check_force(force)
    lvs = _vg_lvs(vg)
    lv = lvs.get(f"{vg}/{name}")
    if lv is None:
        return {"removed": False, "reason": "absent"}
    reasons = _removal_refusals(vg, name, lv, lvs)
    if reasons and not force:
        raise CommandExecutionError(
            f"refusing to remove {vg}/{name}: {'; '.join(reasons)}. Pass force=True to override."
        )
    if reasons:
        log.warning("removing %s/%s with force although %s", vg, name, "; ".join(reasons))
    snapshots = _snapshots_of(lvs, vg, name)
    _run(["lvremove", "--yes", "--", f"{vg}/{name}"])
    return {"removed": True, "lv": f"{vg}/{name}", "snapshots_removed": snapshots, "forced": reasons}


def snapshot_create(vg, origin, name, size, tags=None):
    """
    Create a classic (thick, copy-on-write) snapshot ``name`` of ``vg/origin``.

    ``size`` (bytes or a binary unit, e.g. ``1G``) is the room for changed
    blocks: a snapshot whose usage reaches 100% is invalidated by LVM (watch
    ``snapshot_usage``). ``tags`` as for ``lv_create``. Refuses an origin that
    is missing or is itself a snapshot, and a ``name`` already in use. Runs
    ``lvcreate --snapshot --name N --size S [--addtag T ...] -- vg/origin``
    and returns the new LV as ``report`` shows it.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.snapshot_create vg0 web1-disk0-a web1-disk0-a-snap 2G
        salt node1 xencluster_lvm.snapshot_create vg0 web1-disk0-a web1-disk0-a-snap 2G tags='["xc-backup"]'
    """
    vg, origin, name = _check_vg(vg), _check_lv(origin), _check_lv(name)
    size, tags = parse_size(size), _check_tags(tags)
    if origin == name:
        raise SaltInvocationError(f"a snapshot cannot have the name of its origin: {name!r}")
    lvs = _vg_lvs(vg)
    source = lvs.get(f"{vg}/{origin}")
    if source is None:
        raise CommandExecutionError(f"cannot snapshot {vg}/{origin}: no such logical volume")
    if _is_snapshot(source):
        raise CommandExecutionError(
            f"cannot snapshot {vg}/{origin}: it is itself a snapshot"
            + (f" of {source['origin']}" if source["origin"] else "")
        )
    if f"{vg}/{name}" in lvs:
        raise CommandExecutionError(f"cannot create snapshot {vg}/{name}: that LV already exists")
    argv = ["lvcreate", "--snapshot", "--name", name, "--size", _lvm_size_arg(size)]
    for tag in tags:
        argv += ["--addtag", tag]
    _run([*argv, "--", f"{vg}/{origin}"])
    return _lv(vg, name)


def snapshot_remove(vg, name):
    """
    Remove snapshot ``vg/name``; only ever a snapshot, never an origin or leg.

    Refuses an LV that is not a snapshot (no origin: use ``lv_remove``), and a
    snapshot that is open or exported over LIO (``lv_remove ... force=True``
    overrides that). Returns ``{"removed": True, "lv": "vg/name", "origin":
    origin}``, or ``{"removed": False, "reason": "absent"}`` when the VG has
    no such LV (idempotent).

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.snapshot_remove vg0 web1-disk0-a-snap
    """
    vg, name = _check_vg(vg), _check_lv(name)
    lvs = _vg_lvs(vg)
    lv = lvs.get(f"{vg}/{name}")
    if lv is None:
        return {"removed": False, "reason": "absent"}
    if not _is_snapshot(lv):
        raise CommandExecutionError(
            f"refusing to remove {vg}/{name}: it is not a snapshot (it has no origin); "
            "snapshot_remove never removes an origin or a leg, use lv_remove"
        )
    reasons = _removal_refusals(vg, name, lv, lvs)
    if reasons:
        raise CommandExecutionError(
            f"refusing to remove snapshot {vg}/{name}: {'; '.join(reasons)}. "
            "lv_remove with force=True overrides this."
        )
    _run(["lvremove", "--yes", "--", f"{vg}/{name}"])
    return {"removed": True, "lv": f"{vg}/{name}", "origin": lv["origin"]}


def snapshot_usage(vg, name):
    """
    How full snapshot ``vg/name`` is, from one ``lvs`` call for that LV.

    Returns ``{"origin", "size" (bytes), "usage_percent" (float, None when
    the snapshot is inactive: LVM reports usage only for active snapshots),
    "full" (bool), "comment"}``. A snapshot that reached 100% has been
    invalidated by LVM: its contents are lost, and ``comment`` says so.
    Refuses an LV that is not a snapshot. ``report`` gives the usage of every
    snapshot in one call.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.snapshot_usage vg0 web1-disk0-a-snap
    """
    vg, name = _check_vg(vg), _check_lv(name)
    lv = _lv(vg, name)
    if not _is_snapshot(lv):
        raise CommandExecutionError(f"{vg}/{name} is not a snapshot (it has no origin)")
    usage = lv["snapshot_usage"]
    full = (usage is not None and usage >= 100.0) or lv["attr"][4:5] == "I"
    if full:
        comment = (
            f"snapshot {vg}/{name} is full: LVM has invalidated it and its contents are lost; "
            "remove it (snapshot_remove) and create a larger one"
        )
    elif usage is None:
        comment = f"snapshot {vg}/{name} is not active: LVM reports no usage"
    else:
        comment = None
    return {
        "origin": lv["origin"],
        "size": lv["size"],
        "usage_percent": usage,
        "full": full,
        "comment": comment,
    }


def lv_tags(vg, name, add=None, remove=None):
    """
    Add and remove tags of logical volume ``vg/name``; idempotent.

    ``add`` and ``remove`` are lists of tags (1 to 128 of
    ``[A-Za-z0-9_+.=:-]``, not starting with ``-``; stricter than LVM). The
    plan is computed from the LV's current tags: only tags missing are added
    and only tags present are removed, in at most one ``lvchange``; nothing
    runs when nothing has to change. A tag in both lists is refused. Returns
    ``{"old": [...], "new": [...]}`` as LVM reports them.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.lv_tags vg0 web1-disk0-a add='["xc-guest=web1"]' remove='["xc-spare"]'
    """
    vg, name = _check_vg(vg), _check_lv(name)
    add, remove = _check_tags(add, "add"), _check_tags(remove, "remove")
    both = [t for t in add if t in remove]
    if both:
        raise SaltInvocationError(f"tags both to add and to remove: {both}")
    old = _lv(vg, name)["tags"]
    to_add = [t for t in add if t not in old]
    to_remove = [t for t in remove if t in old]
    if not to_add and not to_remove:
        return {"old": list(old), "new": list(old)}
    argv = ["lvchange"]
    for tag in to_add:
        argv += ["--addtag", tag]
    for tag in to_remove:
        argv += ["--deltag", tag]
    _run([*argv, "--", f"{vg}/{name}"])
    return {"old": list(old), "new": _lv(vg, name)["tags"]}


# --- volume groups ----------------------------------------------------------------


def _hex_offset(value):
    """wipefs prints offsets as hex strings ("0x438"); -> int, None when absent."""
    if value is None:
        return None
    try:
        return int(value, 16) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise CommandExecutionError(f"unexpected wipefs offset: {value!r}")


def _parse_wipefs(stdout, devices):
    """{device: [signature, ...]} from ``wipefs --no-act --json`` of ``devices`` (in that order).

    wipefs names each device by the basename of the path it was given
    (``/dev/disk/by-id/virtio-x`` -> ``virtio-x``, ``/dev/loop0`` -> ``loop0``),
    so rows are matched on the path or its basename; ``signatures`` refuses two
    paths with the same basename. util-linux 2.38 prints
    ``{"signatures": []}`` when no device has a signature; an empty stdout
    (older or newer wipefs) means the same. A device without a signature maps to [].
    """
    result = {dev: [] for dev in devices}
    if not stdout.strip():
        return result
    names = {}
    for dev in devices:
        names[dev] = dev
        names[os.path.basename(dev)] = dev
    try:
        rows = json.loads(stdout)["signatures"]
        if not isinstance(rows, list):
            raise TypeError("'signatures' is not a list")
        for row in rows:
            dev = names.get(row["device"])
            if dev is None:
                raise CommandExecutionError(
                    f"wipefs reported a device that was not asked for: {row['device']!r}"
                )
            sig = {
                "type": row["type"],
                "offset": _hex_offset(row.get("offset")),
                "uuid": row.get("uuid"),
                "label": row.get("label"),
            }
            if "usage" in row:  # only with -O ...,USAGE; kept should a wipefs print it
                sig["usage"] = row["usage"]
            result[dev].append(sig)
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandExecutionError(f"unexpected wipefs output: {exc}: {stdout[:200]!r}")
    return result


def signatures(devices):
    """
    Every signature (filesystem, swap, partition table, RAID, LVM PV ...) on ``devices``.

    One ``wipefs --no-act --json DEV...`` call; ``--no-act`` makes wipefs only
    look, it wipes nothing. Returns ``{device: [{"type", "offset" (bytes,
    int), "uuid", "label"}, ...]}`` keyed by the paths as given (``[]``: no
    signature). ``type`` is what libblkid calls it: ``ext4``, ``xfs``,
    ``swap``, ``LVM2_member``, ``linux_raid_member``, ``dos``, ``gpt``,
    ``PMBR``... A device that does not exist makes wipefs fail: a
    ``CommandExecutionError`` with wipefs's stderr.

    wipefs names devices by the basename of the path it is given, so two paths
    with the same basename (``/dev/disk/by-id/x`` and ``/dev/disk/by-path/x``)
    cannot be told apart in one call and are refused, as is one device named
    twice (by two paths resolving to it).

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.signatures '["/dev/vdb", "/dev/vdc"]'
    """
    devices = _check_devices(devices)
    seen = {}
    for dev in devices:
        base = os.path.basename(dev)
        if base in seen:
            raise SaltInvocationError(
                f"{seen[base]} and {dev} have the same basename, which is all wipefs prints: "
                "name one of them by another path"
            )
        seen[base] = dev
    return _parse_wipefs(_run([*WIPEFS_ARGV, *devices]), devices)


def _signed(sigs):
    """[(device, "type, type"), ...] of the devices carrying a signature."""
    return [(dev, ", ".join(s["type"] for s in found)) for dev, found in sigs.items() if found]


def _refuse_signed(sigs, vg):
    signed = _signed(sigs)
    if signed:
        what = "; ".join(f"{dev} carries {types}" for dev, types in signed)
        raise CommandExecutionError(
            f"refusing to put {', '.join(d for d, _ in signed)} into volume group {vg}: {what}. "
            "xencluster never wipes a device: if what is on it may go, wipe it yourself "
            "(wipefs --all DEVICE) and run again"
        )


def _pv_index(rep):
    """{realpath of each PV of the report: its row}: PV paths given as symlinks match LVM's names."""
    return {os.path.realpath(name): row for name, row in rep["pvs"].items()}


def _refuse_foreign(pvs, index, vg):
    """PVs (as given) that belong to another VG than ``vg`` are refused."""
    foreign = []
    for pv in pvs:
        row = index.get(os.path.realpath(pv))
        if row and row["vg_name"] and row["vg_name"] != vg:
            name = pv if row["pv_name"] == pv else f"{pv} ({row['pv_name']})"
            foreign.append((pv, f"{name} is a physical volume of volume group {row['vg_name']}"))
    if foreign:
        raise CommandExecutionError(
            f"refusing to put {', '.join(p for p, _ in foreign)} into volume group {vg}: "
            + "; ".join(why for _, why in foreign)
        )


def vg_args(vg, pvs):
    """
    Validate and normalise the arguments of a VG request without running anything.

    Returns ``{"vg", "pvs" (list, repeats dropped)}`` or raises
    ``SaltInvocationError``: a bad VG name, a PV path that is not a plain
    ``/dev/...`` path, or one device named twice (two paths resolving to it).
    The ``xencluster_lvm.vg_present`` state uses it so that a dry run refuses
    exactly what a real run refuses.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.vg_args xcvg '["/dev/vdb", "/dev/vdc"]'
    """
    return {"vg": _check_vg(vg), "pvs": _check_devices(pvs)}


def vg_create(vg, pvs, test=False):
    """
    Create volume group ``vg`` on the devices ``pvs``; only on blank devices.

    Refuses (``CommandExecutionError``, nothing run but the reads) when

    * ``vg`` already exists (``report``),
    * a device is a PV of another VG,
    * a device carries any signature (``signatures``: a filesystem, swap, a
      partition table, an md superblock, an LVM PV label even of no VG ...);
      the message names the device and the signature types. This module never
      wipes a device: the operator does, knowing what is on it,
    * a device does not exist (wipefs's stderr).

    Then runs ``vgcreate VG PV...`` (no ``--yes``, no ``--force``: vgcreate
    initialises the PVs itself and would ask before overwriting anything).
    Paths may be symlinks (``/dev/disk/by-id/...``); they are compared with
    LVM's names by ``os.path.realpath`` and passed to vgcreate as given.

    Returns ``{"vg", "pvs", "changes": {"created": {"vg", "pvs"}}, "test"}``;
    with ``test=True`` the same, after the reads, without running vgcreate.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.vg_create xcvg '["/dev/vdb", "/dev/vdc"]'
        salt node1 xencluster_lvm.vg_create xcvg '["/dev/vdb"]' test=True
    """
    a = vg_args(vg, pvs)
    vg, pvs, test = a["vg"], a["pvs"], _check_force(test, "test")
    rep = report()
    if vg in rep["vgs"]:
        members = sorted(n for n, row in rep["pvs"].items() if row["vg_name"] == vg)
        raise CommandExecutionError(
            f"volume group {vg} already exists (on {', '.join(members) or 'no PV'}): use vg_extend"
        )
    _refuse_foreign(pvs, _pv_index(rep), vg)
    _refuse_signed(signatures(pvs), vg)
    if not test:
        _run(["vgcreate", vg, *pvs])
    return {"vg": vg, "pvs": pvs, "changes": {"created": {"vg": vg, "pvs": list(pvs)}}, "test": test}


def vg_extend(vg, pvs, test=False):
    """
    Add to volume group ``vg`` those of the devices ``pvs`` that are not in it yet.

    Devices already in ``vg`` are skipped (by ``os.path.realpath``, so a
    symlink matches LVM's name); when all are, nothing runs but ``report``.
    The others are refused as ``vg_create`` refuses them (a PV of another VG,
    any signature, a missing device), then added with one
    ``vgextend VG PV...``. PVs of ``vg`` that are not listed stay: this never
    removes a PV from a VG. A missing VG is an error.

    Returns ``{"vg", "pvs", "added": [...], "changes": {"extended": {"vg",
    "added"}} or {}, "test"}``; with ``test=True`` the same without running
    vgextend.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lvm.vg_extend xcvg '["/dev/vdb", "/dev/vdc", "/dev/vdd"]'
    """
    a = vg_args(vg, pvs)
    vg, pvs, test = a["vg"], a["pvs"], _check_force(test, "test")
    rep = report()
    if vg not in rep["vgs"]:
        raise CommandExecutionError(f"volume group {vg} not found: use vg_create")
    index = _pv_index(rep)
    _refuse_foreign(pvs, index, vg)
    add = [pv for pv in pvs if index.get(os.path.realpath(pv), {}).get("vg_name") != vg]
    changes = {}
    if add:
        _refuse_signed(signatures(add), vg)
        if not test:
            _run(["vgextend", vg, *add])
        changes = {"extended": {"vg": vg, "added": list(add)}}
    return {"vg": vg, "pvs": pvs, "added": add, "changes": changes, "test": test}
