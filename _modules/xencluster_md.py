"""
md RAID1 in xencluster guests: the guest mirrors its two disk legs itself.

Every guest disk is a pair of LVs on two dom0s; inside the guest the pair is an
md RAID1 with an internal write-intent bitmap, so a leg that comes back after
its node was away resyncs only what changed (``re_add``) instead of the whole
disk (``--add``).

* ``status`` reads ``/proc/mdstat`` once (file read, no command) and runs one
  ``mdadm --detail --export <md>`` per array: 1 + N reads for N arrays. mdadm
  4.2's ``--detail --scan --export`` prints the same KEY=VALUE lines for every
  array with no separator between arrays (see tests/recordings/README.md), so
  it cannot be split reliably and is not used. ``status(md)`` is 1 + 1.
* ``create_mirror``, ``fail_leg``, ``remove_leg``, ``re_add``, ``set_sync_speed``.

Named ``xencluster_md`` so it never shadows Salt's own ``raid`` module
(``mdadm_raid``). Never run it on a dom0 against guest legs: the dom0 must not
assemble guest arrays.
"""

import logging
import os
import re

import salt.utils.path
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_md"

MDADM = "mdadm"
MDSTAT = "/proc/mdstat"
PROC_RAID = "/proc/sys/dev/raid"
SYS_BLOCK = "/sys/block"

# Always fullmatch(): "$" would accept a trailing newline.
_MD_RE = re.compile(r"/dev/md(?:[0-9]{1,4}|/[A-Za-z0-9][A-Za-z0-9_.-]{0,31})")
_KERNEL_MD_RE = re.compile(r"md[0-9]{1,4}")
# A member device: /dev/ plus up to 5 components, each starting with [A-Za-z0-9_]
# (so no '-' option look-alike, no '.' or '..' component), no spaces, no shell
# metacharacters. ':' is allowed after the first component (/dev/disk/by-path/...).
_LEG_RE = re.compile(
    r"/dev/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}(?:/[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,254}){0,4}"
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_METADATA = ("1.0", "1.1", "1.2")
_BITMAPS = ("internal", "none")
_CHUNK_RE = re.compile(r"([1-9][0-9]{0,6})([KkMmGg])")
_CHUNK_SHIFT = {"K": 0, "M": 10, "G": 20}  # to KiB
_MAX_SPEED_KBS = 10**9

DETAIL_EXPORT = [MDADM, "--detail", "--export"]
EXAMINE_EXPORT = [MDADM, "--examine", "--export"]


def __virtual__():
    if not salt.utils.path.which(MDADM):
        return (False, "xencluster_md: the mdadm binary is not installed")
    return __virtualname__


# --- validation (pure) ---------------------------------------------------------


def _check_md(md):
    if not isinstance(md, str) or not _MD_RE.fullmatch(md):
        raise SaltInvocationError(f"invalid md device: {md!r} (use /dev/mdN or /dev/md/<name>)")
    return md


def _check_leg(leg):
    if not isinstance(leg, str) or not _LEG_RE.fullmatch(leg) or ".." in leg:
        raise SaltInvocationError(f"invalid member device path: {leg!r}")
    if leg.startswith("/dev/md/") or re.fullmatch(r"/dev/md_?d?[0-9]+(?:p[0-9]+)?", leg):
        raise SaltInvocationError(f"a mirror leg must not be an md device: {leg!r}")
    return leg


def _check_legs(legs):
    if isinstance(legs, str):
        legs = legs.split(",")
    if not isinstance(legs, (list, tuple)) or len(legs) != 2:
        raise SaltInvocationError(f"a mirror needs exactly two legs: {legs!r}")
    legs = [_check_leg(leg) for leg in legs]
    if legs[0] == legs[1] or _real(legs[0]) == _real(legs[1]):
        raise SaltInvocationError(f"the two legs are the same device: {legs!r}")
    return legs


def _check_speed(value, what):
    if value is None:
        return None
    if isinstance(value, bool):
        raise SaltInvocationError(f"{what} must be a number of KiB/s: {value!r}")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= _MAX_SPEED_KBS:
        raise SaltInvocationError(f"{what} must be an integer KiB/s from 1 to {_MAX_SPEED_KBS}: {value!r}")
    return value


def _real(path):
    return os.path.realpath(path)


def _kernel_name(path):
    """Kernel name of a block device path (``/dev/md/web1`` -> ``md127``)."""
    return os.path.basename(_real(path))


# --- parsing (pure) ------------------------------------------------------------

_MDSTAT_HEAD = re.compile(r"^(md[0-9]+) : (\S+)(?: \((\S+)\))?(?: (\S+))?((?: \S+\[[0-9]+\](?:\([A-Z]\))*)*)\s*$")
_MEMBER = re.compile(r"(\S+)\[([0-9]+)\]((?:\([A-Z]\))*)")
_COUNTS = re.compile(r"\[([0-9]+)/([0-9]+)\] \[([U_]+)\]")
_BLOCKS = re.compile(r"^\s+([0-9]+) blocks(?: super (\S+))?")
_PROGRESS = re.compile(
    r"(resync|recovery|reshape|check|repair)\s*=\s*([0-9.]+)%\s*\(([0-9]+)/([0-9]+)\)"
    r"\s*finish=([0-9.]+)min\s*speed=([0-9]+)K/sec"
)
_WAITING = re.compile(r"(resync|recovery|reshape|check|repair)\s*=\s*(DELAYED|PENDING|REMOTE)")
_BITMAP = re.compile(
    r"bitmap: ([0-9]+)/([0-9]+) pages \[([0-9]+)KB\], ([0-9]+)KB chunk(?:, file: (\S+))?"
)


def parse_mdstat(text):
    """
    Parse the text of ``/proc/mdstat`` into ``{kernel name: {...}}``.

    Each array: ``state`` (``active``/``inactive``), ``read_only`` (None,
    ``read-only`` or ``auto-read-only``), ``level``, ``members`` (``{kernel
    device name: {"number", "flags"}}``, flags F faulty, S spare, W write-mostly,
    J journal, R replacement), ``blocks`` (KiB), ``raid_disks``,
    ``in_sync`` (``[n/m]``'s m), ``slots`` (the ``[UU]`` string, one character
    per role), ``sync`` (``{"action", "percent", "done_kib", "total_kib",
    "speed_kbs", "eta_seconds"}``, or ``{"action", "waiting": "DELAYED"...}``,
    or None) and ``bitmap`` (None or ``{"pages", "pages_total", "page_kib",
    "chunk_kib", "file"}``).

    CLI Example:

    .. code-block:: bash

        salt guest1 xencluster_md.parse_mdstat "$(cat /proc/mdstat)"
    """
    arrays = {}
    current = None
    for line in text.splitlines():
        head = _MDSTAT_HEAD.match(line)
        if head:
            name, state, ro, level, members = head.groups()
            if level is not None and _MEMBER.fullmatch(level):
                members, level = f" {level}{members}", None  # inactive arrays have no level
            current = arrays[name] = {
                "state": state,
                "read_only": ro,
                "level": level,
                "members": {
                    m.group(1): {"number": int(m.group(2)), "flags": re.findall(r"\(([A-Z])\)", m.group(3))}
                    for m in _MEMBER.finditer(members)
                },
                "blocks": None,
                "metadata": None,
                "raid_disks": None,
                "in_sync": None,
                "slots": None,
                "sync": None,
                "bitmap": None,
            }
            continue
        if current is None:
            continue
        if not line.strip():
            current = None
            continue
        blocks = _BLOCKS.match(line)
        if blocks:
            current["blocks"] = int(blocks.group(1))
            current["metadata"] = blocks.group(2)
        counts = _COUNTS.search(line)
        if counts:
            current["raid_disks"] = int(counts.group(1))
            current["in_sync"] = int(counts.group(2))
            current["slots"] = counts.group(3)
        progress = _PROGRESS.search(line)
        if progress:
            action, pct, done, total, finish, speed = progress.groups()
            current["sync"] = {
                "action": action,
                "percent": float(pct),
                "done_kib": int(done),
                "total_kib": int(total),
                "speed_kbs": int(speed),
                "eta_seconds": round(float(finish) * 60),
            }
        waiting = _WAITING.search(line)
        if waiting:
            current["sync"] = {"action": waiting.group(1), "waiting": waiting.group(2)}
        bitmap = _BITMAP.search(line)
        if bitmap:
            pages, total, page_kib, chunk, path = bitmap.groups()
            current["bitmap"] = {
                "pages": int(pages),
                "pages_total": int(total),
                "page_kib": int(page_kib),
                "chunk_kib": int(chunk),
                "file": path,
            }
    return arrays


def parse_export(text):
    """
    Parse ``mdadm --detail --export`` or ``--examine --export`` output.

    Returns ``{"array": {KEY: value}, "devices": {sysdev: {"ROLE", "DEV"}}}``
    where ``sysdev`` is mdadm's key of a member (``MD_DEVICE_<sysdev>_ROLE``).

    CLI Example:

    .. code-block:: bash

        salt guest1 xencluster_md.parse_export "$(mdadm --detail --export /dev/md0)"
    """
    array, devices = {}, {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        dev = re.fullmatch(r"MD_DEVICE_(.+)_(ROLE|DEV)", key)
        if dev:
            devices.setdefault(dev.group(1), {})[dev.group(2)] = value
        else:
            array[key] = value
    return {"array": array, "devices": devices}


def _array_status(md, mdstat, export):
    """Combine one array's mdstat entry and its ``--detail --export``."""
    a, devices = export["array"], export["devices"]
    raid_disks = int(a["MD_DEVICES"]) if a.get("MD_DEVICES", "").isdigit() else mdstat["raid_disks"]
    slots = mdstat["slots"] or ""
    sync = mdstat["sync"]
    # mdstat names members by kernel name (dm-0, xvdb); mdadm by a /dev path.
    by_kernel = {_kernel_name(d["DEV"]): d for d in devices.values() if "DEV" in d}
    legs, held = [], set()
    for kname, member in sorted(mdstat["members"].items(), key=lambda kv: kv[1]["number"]):
        dev = by_kernel.get(kname, {})
        role = dev.get("ROLE")
        role = int(role) if role is not None and role.isdigit() else role
        if "F" in member["flags"]:
            state = "faulty"
        elif isinstance(role, int) and role < len(slots) and slots[role] == "U":
            state = "active"
        elif sync and sync.get("action") in ("recovery", "reshape") and "S" not in member["flags"]:
            state = "rebuilding"
        else:
            state = "spare"
        if isinstance(role, int) and state != "faulty":
            held.add(role)
        legs.append({"device": dev.get("DEV", f"/dev/{kname}"), "kernel_name": kname, "role": role, "state": state})
    for slot in range(raid_disks or 0):
        if slot not in held and not (slot < len(slots) and slots[slot] == "U"):
            legs.append({"device": None, "kernel_name": None, "role": slot, "state": "missing"})
    failed = sum(1 for leg in legs if leg["state"] == "faulty")
    working = len(mdstat["members"]) - failed
    active = mdstat["in_sync"] if mdstat["in_sync"] is not None else working
    state = [mdstat["state"]]
    if mdstat["read_only"]:
        state.append(mdstat["read_only"])
    if mdstat["in_sync"] is not None and raid_disks and mdstat["in_sync"] < raid_disks:
        state.append("degraded")
    if sync:
        state.append({"recovery": "recovering", "resync": "resyncing", "reshape": "reshaping"}.get(sync["action"], "checking"))
    return {
        "device": md,
        "kernel_name": None,
        "name": a.get("MD_NAME"),
        "uuid": a.get("MD_UUID"),
        "level": a.get("MD_LEVEL", mdstat["level"]),
        "metadata": a.get("MD_METADATA", mdstat["metadata"]),
        "state": ", ".join(state),
        "size_kib": mdstat["blocks"],
        "raid_devices": raid_disks,
        "total_devices": len(mdstat["members"]),
        "active_devices": active,
        "working_devices": working,
        "failed_devices": failed,
        "spare_devices": max(working - active, 0),
        "bitmap": ("file" if mdstat["bitmap"]["file"] else "internal") if mdstat["bitmap"] else "none",
        "bitmap_detail": mdstat["bitmap"],
        "sync": sync,
        "legs": legs,
    }


# --- running mdadm -------------------------------------------------------------


def _run(argv, ok=(0,)):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] not in ok:
        raise CommandExecutionError(
            f"{argv[0]} failed (rc {res['retcode']}): {res['stderr'].strip()}",
            info={"argv": argv, "stderr": res["stderr"], "retcode": res["retcode"]},
        )
    return res


def _read_mdstat():
    try:
        with open(MDSTAT, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {MDSTAT}: {exc} (is the md driver loaded?)")


def _md_path(kname):
    return f"/dev/{kname}"


def _status_of(md):
    """Status of the one array ``md`` (any path naming it, e.g. ``/dev/md/web1``)."""
    return status(md)[_md_path(_kernel_name(md))]


def status(md=None):
    """
    Status of every md array on this host, or of ``md`` only.

    Reads ``/proc/mdstat`` once and runs one ``mdadm --detail --export`` per
    array (1 + N reads). Per array: ``level``, ``state`` (e.g. ``active,
    degraded, recovering``), ``raid_devices``/``active_devices``/
    ``working_devices``/``failed_devices``/``spare_devices`` (mdadm's
    meanings: working = active + spare, a rebuilding leg counts as spare),
    ``uuid``, ``name``, ``bitmap`` (``internal``, ``file`` or ``none``), ``legs``
    (``device``, ``role`` (slot number or ``spare``), ``state``: ``active``,
    ``rebuilding``, ``spare``, ``faulty`` or ``missing`` for an empty slot)
    and ``sync`` (``action``, ``percent``, ``speed_kbs``, ``eta_seconds`` of a
    running resync/recovery, else None). Keys are ``/dev/mdN``.

    CLI Example:

    .. code-block:: bash

        salt guest1 xencluster_md.status
        salt guest1 xencluster_md.status /dev/md0
    """
    want = None
    if md is not None:
        want = _kernel_name(_check_md(md))
    arrays = parse_mdstat(_read_mdstat())
    if want is not None:
        if want not in arrays:
            raise CommandExecutionError(f"{md} is not an assembled md array")
        arrays = {want: arrays[want]}
    ret = {}
    for kname, entry in sorted(arrays.items()):
        path = _md_path(kname)
        if entry["state"] == "inactive":
            export = {"array": {}, "devices": {}}
        else:
            export = parse_export(_run([*DETAIL_EXPORT, path])["stdout"])
        st = _array_status(path, entry, export)
        st["kernel_name"] = kname
        ret[path] = st
    return ret


def examine(leg):
    """
    The md superblock on ``leg`` (``mdadm --examine --export``), or None if it has none.

    CLI Example:

    .. code-block:: bash

        salt guest1 xencluster_md.examine /dev/xvdb
    """
    _check_leg(leg)
    res = _run([*EXAMINE_EXPORT, leg], ok=(0, 1))
    if res["retcode"] != 0:
        if "No md superblock" in res["stderr"]:
            return None
        raise CommandExecutionError(
            f"mdadm --examine {leg} failed (rc {res['retcode']}): {res['stderr'].strip()}",
            info={"stderr": res["stderr"], "retcode": res["retcode"]},
        )
    return parse_export(res["stdout"])["array"]


def _find_leg(st, leg):
    real = _real(leg)
    for entry in st["legs"]:
        if entry["device"] and (entry["device"] == leg or _real(entry["device"]) == real):
            return entry
    return None


def _check_bitmap_chunk(chunk, bitmap):
    """A power-of-two chunk of 4K..1G (``64K``, ``1M``) -> KiB; None keeps mdadm's default."""
    if chunk is None:
        return None
    match = _CHUNK_RE.fullmatch(chunk) if isinstance(chunk, str) else None
    if not match:
        raise SaltInvocationError(f"bitmap_chunk must look like 64K, 1M or 1G: {chunk!r}")
    kib = int(match.group(1)) << _CHUNK_SHIFT[match.group(2).upper()]
    if kib < 4 or kib > 1 << 20 or kib & (kib - 1):
        raise SaltInvocationError(f"bitmap_chunk must be a power of two from 4K to 1G: {chunk!r}")
    if bitmap != "internal":
        raise SaltInvocationError("bitmap_chunk needs bitmap=internal")
    return kib


def create_mirror(md, legs, name=None, metadata="1.2", bitmap="internal", force=False, bitmap_chunk=None):
    """
    Create RAID1 ``md`` over two ``legs`` with an internal write-intent bitmap.

    Idempotent: if ``md`` is already assembled as RAID1 over exactly these two
    legs, nothing is run and ``changed`` is False. Refuses if a leg already
    carries an md superblock (checked with ``mdadm --examine --export``)
    unless ``force=True``, and always refuses if ``md`` is assembled with
    other legs. ``metadata``: 1.0, 1.1 or 1.2; ``bitmap``: internal or none
    (without a bitmap a returning leg needs a full resync). ``bitmap_chunk``
    (``64K``..``1G``) is how much one bitmap bit covers: smaller chunks resync
    less after a short absence; mdadm's default for internal bitmaps is 64M.
    Returns ``{"changed": bool, "status": <status of md>}``.

    CLI Example:

    .. code-block:: bash

        salt web1 xencluster_md.create_mirror /dev/md0 /dev/xvdb,/dev/xvdc name=disk0
        salt web1 xencluster_md.create_mirror /dev/md0 /dev/xvdb,/dev/xvdc bitmap_chunk=1M
    """
    md = _check_md(md)
    chunk_kib = _check_bitmap_chunk(bitmap_chunk, bitmap)
    legs = _check_legs(legs)
    if name is not None and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
        raise SaltInvocationError(f"invalid array name: {name!r}")
    metadata = str(metadata)
    if metadata not in _METADATA:
        raise SaltInvocationError(f"metadata must be one of {', '.join(_METADATA)}: {metadata!r}")
    if bitmap not in _BITMAPS:
        raise SaltInvocationError(f"bitmap must be one of {', '.join(_BITMAPS)}: {bitmap!r}")

    if _kernel_name(md) in parse_mdstat(_read_mdstat()):
        st = _status_of(md)
        mine = [_find_leg(st, leg) for leg in legs]
        if st["level"] == "raid1" and st["raid_devices"] == 2 and all(mine):
            return {"changed": False, "status": st}
        raise CommandExecutionError(
            f"{md} is already assembled as {st['level']} over "
            f"{[leg['device'] for leg in st['legs'] if leg['device']]}, not over {legs}"
        )
    for leg in legs:
        sb = examine(leg)
        if sb is not None and not force:
            raise CommandExecutionError(
                f"{leg} carries the md superblock of another array "
                f"(uuid {sb.get('MD_UUID')}, name {sb.get('MD_NAME')}): pass force=True to overwrite it"
            )
        if sb is not None:
            log.warning("overwriting md superblock %s on %s", sb.get("MD_UUID"), leg)
    argv = [
        MDADM, "--create", md, "--run", "--level=1", "--raid-devices=2",
        f"--metadata={metadata}", f"--bitmap={bitmap}",
    ]  # fmt: skip
    if chunk_kib is not None:
        argv.append(f"--bitmap-chunk={chunk_kib}K")
    if name is not None:
        argv.append(f"--name={name}")
    # No "--" before the legs: mdadm 4.2 --create then counts too few devices
    # ("You haven't given enough devices"); legs are validated /dev/ paths.
    argv += legs
    _run(argv)
    return {"changed": True, "status": _status_of(md)}


def _manage(md, op, leg):
    _check_md(md)
    _check_leg(leg)
    return _run([MDADM, "--manage", md, op, leg])


def fail_leg(md, leg):
    """
    Mark ``leg`` of ``md`` faulty (``mdadm --manage md --fail leg``).

    Returns the array's status afterwards.

    CLI Example:

    .. code-block:: bash

        salt web1 xencluster_md.fail_leg /dev/md0 /dev/xvdc
    """
    _manage(md, "--fail", leg)
    return _status_of(md)


def remove_leg(md, leg):
    """
    Remove a failed (or spare) ``leg`` from ``md`` (``mdadm --manage md --remove leg``).

    The kernel refuses to remove an active leg: ``fail_leg`` it first.
    Returns the array's status afterwards.

    CLI Example:

    .. code-block:: bash

        salt web1 xencluster_md.remove_leg /dev/md0 /dev/xvdc
    """
    _manage(md, "--remove", leg)
    return _status_of(md)


def re_add(md, leg, allow_full_resync=False):
    """
    Put a returning ``leg`` back into ``md`` with ``mdadm --manage md --re-add leg``.

    With the internal bitmap only the blocks written while the leg was away
    are resynced. If ``--re-add`` is refused (no bitmap, or the leg is too far
    behind or was zeroed) this raises with mdadm's message, unless
    ``allow_full_resync=True``: then it falls back to ``--add``, which
    resyncs the WHOLE leg. A leg already active in ``md`` is left alone.
    Returns ``{"changed", "method": "re-add"|"add"|None, "status"}``.

    CLI Example:

    .. code-block:: bash

        salt web1 xencluster_md.re_add /dev/md0 /dev/xvdc
        salt web1 xencluster_md.re_add /dev/md0 /dev/xvdc allow_full_resync=True
    """
    _check_md(md)
    _check_leg(leg)
    before = _status_of(md)
    current = _find_leg(before, leg)
    if current is not None and current["state"] in ("active", "rebuilding"):
        return {"changed": False, "method": None, "status": before}
    try:
        _manage(md, "--re-add", leg)
        method = "re-add"
    except CommandExecutionError as exc:
        stderr = (exc.info or {}).get("stderr", "").strip()
        if allow_full_resync is not True:
            raise CommandExecutionError(
                f"mdadm --re-add of {leg} to {md} refused: {stderr} -- not falling back to "
                f"--add (a FULL resync of {leg}); pass allow_full_resync=True to do that",
                info=exc.info,
            )
        log.warning("re-add of %s to %s refused (%s); adding it with a full resync", leg, md, stderr)
        _manage(md, "--add", leg)
        method = "add"
    return {"changed": True, "method": method, "status": _status_of(md)}


def _write(path, value):
    with open(path, "w", encoding="ascii") as fh:
        fh.write(f"{value}\n")


def set_sync_speed(min_kbs=None, max_kbs=None, md=None):
    """
    Set the resync/recovery speed limits in KiB/s.

    Without ``md``: the system-wide ``/proc/sys/dev/raid/speed_limit_min`` and
    ``speed_limit_max``. With ``md``: that array's
    ``/sys/block/mdN/md/sync_speed_min`` and ``sync_speed_max``. Values are
    integers from 1; ``None`` leaves a limit as it is. Returns ``{"min":
    {"old", "new"}, "max": {...}}`` as strings read back from the kernel
    (per-array values read e.g. ``1000 (system)`` when unset).

    CLI Example:

    .. code-block:: bash

        salt web1 xencluster_md.set_sync_speed max_kbs=20000
        salt web1 xencluster_md.set_sync_speed min_kbs=1000 max_kbs=5000 md=/dev/md0
    """
    min_kbs = _check_speed(min_kbs, "min_kbs")
    max_kbs = _check_speed(max_kbs, "max_kbs")
    if min_kbs is not None and max_kbs is not None and min_kbs > max_kbs:
        raise SaltInvocationError(f"min_kbs {min_kbs} is above max_kbs {max_kbs}")
    if md is None:
        paths = {
            "min": os.path.join(PROC_RAID, "speed_limit_min"),
            "max": os.path.join(PROC_RAID, "speed_limit_max"),
        }
    else:
        kname = _kernel_name(_check_md(md))
        if not _KERNEL_MD_RE.fullmatch(kname):
            raise CommandExecutionError(f"{md} does not resolve to an md device ({kname})")
        base = os.path.join(SYS_BLOCK, kname, "md")
        paths = {"min": os.path.join(base, "sync_speed_min"), "max": os.path.join(base, "sync_speed_max")}
    ret = {}
    try:
        # Raise the max before the min and lower the min before the max, so the
        # kernel never sees min > max in between.
        order = ("max", "min") if max_kbs is not None and max_kbs >= _to_int(_read(paths["max"])) else ("min", "max")
        old = {k: _read(p) for k, p in paths.items()}
        for key in order:
            value = min_kbs if key == "min" else max_kbs
            if value is not None:
                _write(paths[key], value)
        for key, path in paths.items():
            ret[key] = {"old": old[key], "new": _read(path)}
    except OSError as exc:
        raise CommandExecutionError(f"cannot set md sync speed: {exc}")
    return ret


def _read(path):
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


def _to_int(text):
    head = text.split()[0] if text.split() else ""
    return int(head) if head.isdigit() else 0
