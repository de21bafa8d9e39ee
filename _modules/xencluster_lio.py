"""
LIO iSCSI targets on xencluster dom0s: export guest disk legs to peer dom0s.

Each node exports its LV legs to its peers: one block backstore per LV, an
iSCSI target (IQN) with one TPG (tag 1), a LUN per backstore, one ACL per
allowed initiator with only that LUN mapped, and network portals bound to the
node's SAN addresses (never ``0.0.0.0`` unless explicitly asked for).

* ``exports`` reads the LIO configuration in ONE pass over configfs
  (``/sys/kernel/config/target``) that visits only what it reports: about a
  dozen small files per exported backstore, where ``RTSRoot().dump()`` reads
  every attribute and parameter of every object (~10x more). That read has
  the shape of the part of ``RTSRoot().dump()`` it needs, and a pure function
  (``parse_dump``) parses either.
* ``export`` is idempotent: it compares the wanted export with that one read,
  creates only what is missing and reports each change; a second call changes
  nothing. ``unexport`` removes what ``export`` made.
* ``save``/``restore`` use ``/etc/rtslib-fb-target/saveconfig.json``, the file
  Debian's ``rtslib-fb-targetctl`` restores at boot.

CHAP secrets are written to LIO but never returned or logged: ``exports``
only says whether CHAP credentials are set.

Uses rtslib-fb (Python) rather than ``targetcli`` (about 4 s per start under
emulation). Named ``xencluster_lio`` so it never shadows a Salt module.
"""

import ipaddress
import logging
import os
import re

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

try:
    import rtslib_fb

    HAS_RTSLIB = True
except ImportError:  # pragma: no cover - depends on the host
    rtslib_fb = None
    HAS_RTSLIB = False

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_lio"

SAVE_FILE = "/etc/rtslib-fb-target/saveconfig.json"
TPG_TAG = 1
DEFAULT_PORT = 3260
MAX_LUN = 255
WILDCARDS = ("0.0.0.0", "[::]")

# A strict subset of what rtslib accepts (utils.normalize_wwn, type "iqn":
# r"iqn\.[0-9]{4}-[0-1][0-9]\..*\..*", no space, no "_", lower-cased):
# iqn.YYYY-MM.<reversed domain with at least two labels>[:<unique name>].
_IQN_RE = re.compile(
    r"iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])"
    r"\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
    r"(?::[a-z0-9][a-z0-9.:-]{0,190})?"
)
_RTSLIB_IQN_RE = re.compile(r"iqn\.[0-9]{4}-[0-1][0-9]\..*\..*")
_IQN_MAX = 223  # RFC 3720 3.2.6.1
CONFIGFS_TARGET = "/sys/kernel/config/target"
# rtslib's backstore directories, core/<prefix>_<index>/<name>, by plugin (tcm.so_mapping, bs_params).
_PLUGINS = {"iblock": "block", "fileio": "fileio", "pscsi": "pscsi", "rd_mcp": "ramdisk", "user": "user"}
# Directories of a fabric that are not targets (rtslib's fabric.target_names_excludes).
_NOT_TARGETS = frozenset(("lio_version", "version", "discovery_auth", "cpus_allowed_list"))
# An ACL's CHAP settings as rtslib names them (chap_<key>) and their configfs files.
_CHAP_FILES = {
    "userid": "auth/userid",
    "password": "auth/password",
    "mutual_userid": "auth/userid_mutual",
    "mutual_password": "auth/password_mutual",
}
_INFO_READONLY = re.compile(r".*readonly: ([^: ]+).*")  # rtslib's _parse_info("readonly")
# Backstore names become configfs directory names; LIO forbids "/".
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DEV_RE = re.compile(r"/dev/[A-Za-z0-9_][A-Za-z0-9_./+-]{0,254}")
_PORTAL_RE = re.compile(r"(?P<ip>[0-9.]{7,15}|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?")
_CHAP_USER_RE = re.compile(r"[A-Za-z0-9._:@-]{1,255}")
_CHAP_SECRET_RE = re.compile(r"[A-Za-z0-9!#%+,./:=@^_~-]{12,255}")
_CHAP_KEYS = ("userid", "password", "mutual_userid", "mutual_password")
# A backstore's T10 unit serial (LIO wwn/vpd_unit_serial, VPD page 0x80; rtslib's
# "wwn"). LIO takes any text shorter than 254 bytes, but also uses it in file
# names (pr/aptpl_<serial>) and the initiator's udev in device links, so only:
# a leg id <guest>.<disk>.<node> (see xencluster_disk), or a plain name.
_LEG_PART = r"[a-z0-9][a-z0-9-]{0,30}"
_SERIAL_LEG_RE = re.compile(rf"{_LEG_PART}\.{_LEG_PART}\.{_LEG_PART}")
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def __virtual__():
    if not HAS_RTSLIB:
        return (False, "xencluster_lio: the rtslib_fb Python module (python3-rtslib-fb) is missing")
    return __virtualname__


# --- validation (pure) ---------------------------------------------------------


def valid_iqn(iqn):
    """
    True if ``iqn`` is an iSCSI qualified name that rtslib-fb accepts and xencluster allows.

    The rule is stricter than rtslib's: ``iqn.YYYY-MM.<naming authority>[:<name>]``
    in lower case, a valid month, a naming authority of at least two DNS labels
    (rtslib refuses ``iqn.2025-01.lab:x`` but accepts ``iqn.2025-01.lab.xen:x``),
    only ``[a-z0-9.:-]`` after it, at most 223 characters. Anything this accepts,
    rtslib accepts too.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_lio.valid_iqn iqn.2025-01.lab.xen:node2
    """
    return (
        isinstance(iqn, str)
        and len(iqn) <= _IQN_MAX
        and _IQN_RE.fullmatch(iqn) is not None
        and _RTSLIB_IQN_RE.match(iqn) is not None
        and " " not in iqn
        and "_" not in iqn
    )


def _check_iqn(iqn, what="IQN"):
    if not valid_iqn(iqn):
        raise SaltInvocationError(f"invalid {what}: {iqn!r}")
    return iqn


def _check_name(name):
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SaltInvocationError(f"invalid backstore name: {name!r}")
    return name


def _check_device(device):
    if not isinstance(device, str) or not _DEV_RE.fullmatch(device) or ".." in device:
        raise SaltInvocationError(f"invalid device path: {device!r}")
    return device


def _check_portal(portal):
    """'ip', 'ip:port' or '[ipv6]:port' -> (ip as LIO writes it, port)."""
    m = _PORTAL_RE.fullmatch(portal) if isinstance(portal, str) else None
    if not m:
        raise SaltInvocationError(f"invalid portal address: {portal!r}")
    ip, port = m.group("ip"), int(m.group("port") or DEFAULT_PORT)
    try:
        if ip.startswith("["):
            ip = f"[{ipaddress.IPv6Address(ip[1:-1]).compressed}]"
        else:
            ip = str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise SaltInvocationError(f"invalid portal address: {portal!r}")
    if not 1 <= port <= 65535:
        raise SaltInvocationError(f"invalid portal port: {portal!r}")
    return ip, port


def _check_serial(serial):
    if serial is None:
        return None
    if not isinstance(serial, str) or not (
        _SERIAL_LEG_RE.fullmatch(serial) or _SERIAL_RE.fullmatch(serial)
    ):
        raise SaltInvocationError(
            f"invalid unit serial: {serial!r} (a leg id <guest>.<disk>.<node>, "
            "or 1 to 64 of [A-Za-z0-9._-] starting with a letter or digit)"
        )
    return serial


def _check_list(values, check, what):
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise SaltInvocationError(f"{what} must be a non-empty list: {values!r}")
    out = []
    for value in values:
        value = check(value)
        if value not in out:
            out.append(value)
    return out


def _check_lun(lun):
    if lun is None:
        return None
    if isinstance(lun, str) and lun.isdigit() and lun.isascii():
        lun = int(lun)
    if isinstance(lun, bool) or not isinstance(lun, int) or not 0 <= lun <= MAX_LUN:
        raise SaltInvocationError(f"lun must be an integer from 0 to {MAX_LUN}: {lun!r}")
    return lun


def _check_chap(chap):
    """None, or {userid, password[, mutual_userid, mutual_password]}. Never echoes a secret."""
    if chap is None:
        return None
    if not isinstance(chap, dict) or set(chap) - set(_CHAP_KEYS):
        raise SaltInvocationError(f"chap must be a dict with keys from {_CHAP_KEYS}")
    if not chap.get("userid") or not chap.get("password"):
        raise SaltInvocationError("chap needs userid and password")
    if bool(chap.get("mutual_userid")) != bool(chap.get("mutual_password")):
        raise SaltInvocationError("mutual CHAP needs both mutual_userid and mutual_password")
    out = {}
    for key in _CHAP_KEYS:
        value = chap.get(key)
        if not value:
            out[key] = ""
            continue
        regex = _CHAP_USER_RE if key.endswith("userid") else _CHAP_SECRET_RE
        if not isinstance(value, str) or not regex.fullmatch(value):
            if key.endswith("userid"):
                raise SaltInvocationError(f"invalid CHAP {key}: {value!r}")
            raise SaltInvocationError(
                f"invalid CHAP {key}: 12 to 255 characters of [A-Za-z0-9!#%+,./:=@^_~-]"
            )
        out[key] = value
    if out["mutual_password"] and out["mutual_password"] == out["password"]:
        raise SaltInvocationError("the mutual CHAP secret must differ from the CHAP secret")
    return out


def export_args(name, device, target_iqn, initiators, portals, lun=None, chap=None, serial=None):
    """
    Validate and normalise the arguments of ``export`` without touching LIO.

    Returns ``{"name", "device", "target", "initiators" (list), "portals"
    (list of "ip:port"), "lun", "chap" (bool), "serial"}`` or raises
    ``SaltInvocationError``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lio.export_args xcl-web1-disk0-a /dev/xcvg/web1-disk0-a iqn.2025-01.lab.xen:node1 '["iqn.2025-01.lab.xen:node2"]' '["192.168.100.1"]'
    """
    spec = _spec(name, device, target_iqn, initiators, portals, lun, chap, serial)
    return {
        "name": spec["name"],
        "device": spec["device"],
        "target": spec["target"],
        "initiators": spec["initiators"],
        "portals": [f"{ip}:{port}" for ip, port in spec["portals"]],
        "lun": spec["lun"],
        "chap": spec["chap"] is not None,
        "serial": spec["serial"],
    }


def _spec(name, device, target_iqn, initiators, portals, lun, chap, serial=None):
    return {
        "name": _check_name(name),
        "device": _check_device(device),
        "target": _check_iqn(target_iqn, "target IQN"),
        "initiators": _check_list(initiators, lambda i: _check_iqn(i, "initiator IQN"), "initiators"),
        "portals": _check_list(portals, _check_portal, "portals"),
        "lun": _check_lun(lun),
        "chap": _check_chap(chap),
        "serial": _check_serial(serial),
    }


# --- parsing the dump (pure) -----------------------------------------------------


def _backstore_name(path):
    """'/backstores/block/xcl-a' -> ('block', 'xcl-a')."""
    parts = (path or "").split("/")
    if len(parts) == 4 and parts[1] == "backstores":
        return parts[2], parts[3]
    return None, path


def parse_dump(dump):
    """
    Parse an ``RTSRoot().dump()`` dict into the shape ``exports`` returns.

    Pure: no I/O. CHAP userids and secrets are dropped; only whether they are
    set is kept.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lio.parse_dump '{"storage_objects": [], "targets": []}'
    """
    if not isinstance(dump, dict):
        raise CommandExecutionError(f"unexpected rtslib dump: {type(dump).__name__}")
    backstores = {}
    for so in dump.get("storage_objects", []):
        if so.get("plugin") != "block":
            continue
        backstores[so["name"]] = {
            "plugin": "block",
            "dev": so.get("dev"),
            "wwn": so.get("wwn"),
            "readonly": bool(so.get("readonly", False)),
            "write_back": bool(so.get("write_back", False)),
            "luns": [],
        }
    targets = {}
    for t in dump.get("targets", []):
        tpgs = []
        for tpg in t.get("tpgs", []):
            luns = []
            for lun in tpg.get("luns", []):
                plugin, so_name = _backstore_name(lun.get("storage_object"))
                luns.append({"index": lun["index"], "backstore": so_name, "plugin": plugin})
                if plugin == "block" and so_name in backstores:
                    backstores[so_name]["luns"].append(
                        {"target": t["wwn"], "tpg": tpg.get("tag"), "index": lun["index"]}
                    )
            acls = {}
            for acl in tpg.get("node_acls", []):
                acls[acl["node_wwn"]] = {
                    "mapped_luns": sorted(
                        (
                            {
                                "index": m["index"],
                                "tpg_lun": m["tpg_lun"],
                                "write_protect": bool(m.get("write_protect", False)),
                            }
                            for m in acl.get("mapped_luns", [])
                        ),
                        key=lambda m: m["index"],
                    ),
                    "chap": bool(acl.get("chap_userid") and acl.get("chap_password")),
                    "mutual_chap": bool(
                        acl.get("chap_mutual_userid") and acl.get("chap_mutual_password")
                    ),
                }
            attributes = tpg.get("attributes", {})
            tpgs.append(
                {
                    "tag": tpg.get("tag"),
                    "enable": bool(tpg.get("enable", False)),
                    "authentication": attributes.get("authentication"),
                    "generate_node_acls": attributes.get("generate_node_acls"),
                    "luns": sorted(luns, key=lambda lun: lun["index"]),
                    "portals": [f"{p['ip_address']}:{p['port']}" for p in tpg.get("portals", [])],
                    "acls": acls,
                }
            )
        targets[t["wwn"]] = {"fabric": t.get("fabric"), "tpgs": sorted(tpgs, key=lambda x: x["tag"])}
    return {"backstores": backstores, "targets": targets}


def _secrets(dump):
    """{(target, initiator): {chap_* key: value}} from a raw dump; stays inside this module."""
    out = {}
    for t in dump.get("targets", []):
        for tpg in t.get("tpgs", []):
            if tpg.get("tag") != TPG_TAG:
                continue
            for acl in tpg.get("node_acls", []):
                out[(t["wwn"], acl["node_wwn"])] = {
                    k: acl.get(f"chap_{k}", "") or "" for k in _CHAP_KEYS
                }
    return out


def _tpg(current, target):
    for tpg in current["targets"].get(target, {}).get("tpgs", []):
        if tpg["tag"] == TPG_TAG:
            return tpg
    return None


def _plan_export(dump, spec):
    """Actions (dicts with "op") that make the raw ``dump`` contain ``spec``; [] if nothing is missing."""
    current = parse_dump(dump)
    name, device, target = spec["name"], spec["device"], spec["target"]
    actions = []

    so = current["backstores"].get(name)
    if so is not None and so["dev"] != device:
        raise CommandExecutionError(
            f"backstore block/{name} already exists on {so['dev']}, not on {device}"
        )
    for other, info in current["backstores"].items():
        if other != name and info["dev"] == device:
            raise CommandExecutionError(f"{device} is already exported as backstore block/{other}")
    serial = spec.get("serial")
    if so is not None and serial is not None and so["wwn"] != serial:
        # LIO refuses to change the serial of a backstore with a LUN, and the
        # initiators identify the disk by it: never recreate it behind their back.
        raise CommandExecutionError(
            f"backstore block/{name} already exists with unit serial {so['wwn']!r}, not {serial!r}; "
            "changing it would change the disk's identity under its initiators: "
            "unexport it (with nothing using the disk) and export it again"
        )
    for other, info in current["backstores"].items():
        if serial is not None and other != name and info["wwn"] == serial:
            # Two LUNs with one serial: the initiators' stable path would be ambiguous.
            raise CommandExecutionError(f"unit serial {serial!r} is already used by backstore block/{other}")
    if so is None:
        action = {"op": "create_backstore", "name": name, "device": device}
        if serial is not None:
            action["serial"] = serial
        actions.append(action)

    if target not in current["targets"]:
        actions.append({"op": "create_target", "target": target})
    tpg = _tpg(current, target)
    if tpg is None:
        actions.append({"op": "create_tpg", "target": target, "tag": TPG_TAG})
        tpg = {"enable": False, "luns": [], "portals": [], "acls": {}, "authentication": None}

    # The LUN: reuse the one already backed by this backstore.
    existing = [lun["index"] for lun in tpg["luns"] if lun["plugin"] == "block" and lun["backstore"] == name]
    lun = spec["lun"]
    if existing:
        if lun is not None and lun not in existing:
            raise CommandExecutionError(
                f"block/{name} is already LUN {existing[0]} of {target}, not LUN {lun}"
            )
        lun = existing[0] if lun is None else lun
    else:
        used = {x["index"] for x in tpg["luns"]}
        if lun is None:
            lun = min(set(range(MAX_LUN + 1)) - used)
        elif lun in used:
            raise CommandExecutionError(f"LUN {lun} of {target} is already used by another backstore")
        actions.append({"op": "create_lun", "target": target, "lun": lun, "name": name})

    secrets = _secrets(dump)
    chap = spec["chap"]
    for initiator in spec["initiators"]:
        acl = tpg["acls"].get(initiator)
        if acl is None:
            actions.append({"op": "create_acl", "target": target, "initiator": initiator})
            acl = {"mapped_luns": []}
        mapped = [m for m in acl["mapped_luns"] if m["tpg_lun"] == lun]
        if not mapped:
            taken = {m["index"] for m in acl["mapped_luns"]}
            index = lun if lun not in taken else min(set(range(MAX_LUN + 1)) - taken)
            actions.append(
                {"op": "map_lun", "target": target, "initiator": initiator, "lun": lun, "index": index}
            )
        if chap is not None and secrets.get((target, initiator), {}) != chap:
            actions.append({"op": "set_chap", "target": target, "initiator": initiator})
    # LIO's default is authentication=1, which refuses an initiator without
    # CHAP credentials even when its ACL exists (targetcli sets 0 itself).
    auth = 0 if chap is None else 1
    if tpg.get("authentication") != auth:
        actions.append({"op": "set_auth", "target": target, "value": auth})

    wanted = [f"{ip}:{port}" for ip, port in spec["portals"]]
    for (ip, port), key in zip(spec["portals"], wanted):
        if key not in tpg["portals"]:
            actions.append({"op": "create_portal", "target": target, "ip": ip, "port": port})
    for key in tpg["portals"]:
        ip, port = key.rsplit(":", 1)
        if ip in WILDCARDS and key not in wanted:
            actions.append({"op": "delete_portal", "target": target, "ip": ip, "port": int(port)})
    if not tpg["enable"]:
        actions.append({"op": "enable_tpg", "target": target})
    return actions, lun


def _describe(action):
    """One line for a planned action; never contains a secret."""
    op, t = action["op"], action.get("target")
    return {
        "create_backstore": lambda: f"backstore block/{action['name']} created on {action['device']}"
        + (f" with unit serial {action['serial']}" if action.get("serial") else ""),
        "create_target": lambda: f"target {t} created",
        "create_tpg": lambda: f"tpg {action['tag']} of {t} created",
        "create_lun": lambda: f"LUN {action['lun']} of {t} created for block/{action['name']}",
        "create_acl": lambda: f"ACL for {action['initiator']} on {t} created",
        "map_lun": lambda: f"LUN {action['lun']} of {t} mapped to {action['initiator']} as LUN {action['index']}",
        "set_chap": lambda: f"CHAP credentials of {action['initiator']} on {t} set",
        "set_auth": lambda: f"authentication {'required' if action['value'] else 'not required (no CHAP)'} on {t}",
        "create_portal": lambda: f"portal {action['ip']}:{action['port']} of {t} created",
        "delete_portal": lambda: f"portal {action['ip']}:{action['port']} of {t} deleted (not asked for)",
        "enable_tpg": lambda: f"tpg {TPG_TAG} of {t} enabled",
        "delete_lun": lambda: f"LUN {action['lun']} of {t} deleted",
        "delete_acl": lambda: f"ACL for {action['initiator']} on {t} deleted",
        "delete_target": lambda: f"target {t} deleted",
        "delete_backstore": lambda: f"backstore block/{action['name']} deleted",
    }[op]()


# --- rtslib --------------------------------------------------------------------


def _root():
    return rtslib_fb.RTSRoot()


def _dump(secrets=True):
    """
    The one read of the LIO configuration: the part of ``RTSRoot().dump()`` the parser and planners use.

    Reads configfs directly (``_read_configfs``). When LIO is not set up yet
    (configfs not mounted or ``target_core_mod`` not loaded: no
    ``/sys/kernel/config/target``), ``RTSRoot()`` sets it up, as it always
    did here, and its ``dump()`` is then the read (of next to nothing).
    ``secrets=False``: see ``_read_configfs``.
    """
    try:
        if not os.path.isdir(CONFIGFS_TARGET):
            return _root().dump()
        return _read_configfs(CONFIGFS_TARGET, secrets=secrets)
    except (rtslib_fb.RTSLibError, OSError, ValueError) as exc:
        raise CommandExecutionError(f"cannot read the LIO configuration: {exc}")


# --- the lean configfs read ------------------------------------------------------
#
# RTSRoot().dump() reads every attribute, parameter and ALUA setting of every
# storage object, TPG, LUN, portal, ACL and mapped LUN (about 150 files and as
# many stats per exported backstore). parse_dump, _secrets and the planners use
# a few of them; these functions read only those, from the files rtslib reads
# them from and converted as rtslib converts them, in rtslib's order (directory
# order, fabrics in rtslib's order), so the result is that part of dump().


def _cfs_read(path):
    """A configfs file's text as rtslib's ``fread`` returns it (stripped)."""
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def _cfs_int_or_str(path):
    """An attribute as ``CFSNode.dump()`` keeps it: an int when it is one."""
    value = _cfs_read(path)
    try:
        return int(value)
    except ValueError:
        return value


def _cfs_dirs(path):
    """The sub-directories of ``path``, in directory order (one ``scandir``, no ``stat``)."""
    with os.scandir(path) as entries:
        return [e.name for e in entries if e.is_dir(follow_symlinks=False)]


def _cfs_link(path):
    """Where the symlink in LUN or mapped-LUN directory ``path`` points (``readlink``)."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_symlink():
                return os.readlink(entry.path)
    raise ValueError(f"broken LUN in configfs, no link in {path}")  # rtslib: RTSLibBrokenLink


def _index(name):
    """'lun_3' -> 3, 'tpgt_1' -> 1."""
    return int(name.rsplit("_", 1)[1])


def _plugin(hba):
    """'iblock_0' -> 'block': the rtslib plugin of a backstore directory core/<hba>/<name>."""
    prefix = hba.rpartition("_")[0]
    return _PLUGINS.get(prefix, prefix)


def _cfs_enabled(path):
    """An object's ``enable`` file as rtslib reads it: without one it is always enabled."""
    try:
        return bool(int(_cfs_read(os.path.join(path, "enable"))))
    except FileNotFoundError:
        return True


def _read_block(path):
    """dev, wwn, readonly and write_back of a block backstore (``BlockStorageObject.dump()``)."""
    if not _cfs_enabled(path):
        # StorageObject.wwn refuses it: rtslib's dump() fails the same way.
        raise ValueError(f"backstore {os.path.basename(path)} is not configured")
    readonly = _INFO_READONLY.search(" ".join(_cfs_read(os.path.join(path, "info")).split()))
    return {
        "dev": _cfs_read(os.path.join(path, "udev_path")),
        "wwn": _cfs_read(os.path.join(path, "wwn", "vpd_unit_serial")).partition(":")[2].strip(),
        "readonly": bool(int(readonly.group(1))) if readonly else False,
        "write_back": bool(int(_cfs_read(os.path.join(path, "attrib", "emulate_write_cache")))),
    }


def _read_storage_objects(root):
    """[{name, plugin[, dev, wwn, readonly, write_back]}]: the details of block backstores only."""
    out = []
    core = os.path.join(root, "core")
    for hba in _cfs_dirs(core):
        if "_" not in hba:  # core/alua
            continue
        plugin = _plugin(hba)
        for name in _cfs_dirs(os.path.join(core, hba)):
            so = {"name": name, "plugin": plugin}
            if plugin == "block":
                so.update(_read_block(os.path.join(core, hba, name)))
            out.append(so)
    return out


def _read_chap(path, secrets):
    """An ACL's chap_* settings that are set ("NULL" is unset), as ``NodeACL.dump()`` has them.

    With ``secrets=False`` a secret is read only when its user id is set:
    without one CHAP is off whatever the secret, so parse_dump's answer is the
    same, and the ACL costs 2 reads instead of 4.
    """
    out = {}
    for user, secret in (("userid", "password"), ("mutual_userid", "mutual_password")):
        for key in (user, secret):
            value = _cfs_read(os.path.join(path, _CHAP_FILES[key]))
            if value and value != "NULL":
                out[f"chap_{key}"] = value
            elif key == user and not secrets:
                break
    return out


def _read_acl(fabric, path, secrets):
    """node_wwn, mapped_luns [{index, tpg_lun, write_protect}] and the CHAP settings of an ACL."""
    mapped = []
    for name in _cfs_dirs(path):
        if not name.startswith("lun_"):
            continue
        link = _cfs_link(os.path.join(path, name))  # -> .../tpgt_<tag>/lun/lun_<tpg lun>
        write_protect = _cfs_read(os.path.join(path, name, "write_protect"))
        mapped.append({"index": _index(name), "tpg_lun": _index(link.rstrip("/")),
                       "write_protect": bool(int(write_protect))})  # fmt: skip
    acl = {
        "node_wwn": fabric.to_normalized_wwn(fabric.from_fabric_wwn(os.path.basename(path)))[0],
        "mapped_luns": mapped,
    }
    if fabric.has_feature("auth"):
        acl.update(_read_chap(path, secrets))
    return acl


def _read_tpg(fabric, path, secrets):
    """tag, enable, the authentication and generate_node_acls attributes, luns, portals, node_acls."""
    attributes = {}
    for attribute in ("authentication", "generate_node_acls"):
        try:
            attributes[attribute] = _cfs_int_or_str(os.path.join(path, "attrib", attribute))
        except FileNotFoundError:
            pass
    luns = []
    for name in _cfs_dirs(os.path.join(path, "lun")):
        link = _cfs_link(os.path.join(path, "lun", name))  # -> .../core/<prefix>_<index>/<backstore>
        hba, so_name = link.rstrip("/").split("/")[-2:]
        luns.append({"index": _index(name), "storage_object": f"/backstores/{_plugin(hba)}/{so_name}"})
    portals = []
    if fabric.has_feature("nps"):
        for name in _cfs_dirs(os.path.join(path, "np")):
            ip, port = name.rsplit(":", 1)
            portals.append({"ip_address": ip, "port": int(port)})
    acls = []
    if fabric.has_feature("acls"):
        acls = [_read_acl(fabric, os.path.join(path, "acls", name), secrets)
                for name in _cfs_dirs(os.path.join(path, "acls"))]  # fmt: skip
    return {"tag": _index(os.path.basename(path)), "enable": _cfs_enabled(path), "attributes": attributes,
            "luns": luns, "portals": portals, "node_acls": acls}  # fmt: skip


def _read_configfs(root=CONFIGFS_TARGET, secrets=True):
    """
    {"storage_objects", "targets"} as ``RTSRoot().dump()`` has them, with only what parse_dump and _secrets use.

    Per backstore: name and plugin; for a block one also dev, wwn, readonly
    and write_back. Per target of every fabric rtslib knows: wwn, fabric and
    its TPGs; per TPG: tag, enable, the ``authentication`` and
    ``generate_node_acls`` attributes, the LUNs (index and backstore), the
    portals (ip and port) and the ACLs; per ACL: node_wwn, the mapped LUNs
    (index, tpg_lun, write_protect) and the CHAP settings that are set.
    ``secrets=False`` reads no CHAP secret whose user id is unset (enough
    to know whether CHAP is on; ``export`` with CHAP compares the secrets).
    Raises ``OSError``, ``ValueError`` or rtslib's error as ``dump()`` would.
    """
    present = set(_cfs_dirs(root))
    targets = []
    for fabric in rtslib_fb.FabricModule.all():
        fabric_dir = os.path.basename(fabric.path)
        if fabric_dir not in present:
            continue
        for name in _cfs_dirs(os.path.join(root, fabric_dir)):
            if name in _NOT_TARGETS:
                continue
            path = os.path.join(root, fabric_dir, name)
            tpgs = [_read_tpg(fabric, os.path.join(path, tpg), secrets)
                    for tpg in _cfs_dirs(path) if tpg.startswith("tpgt")]  # fmt: skip
            wwn = fabric.to_normalized_wwn(fabric.from_fabric_wwn(name))[0]
            targets.append({"wwn": wwn, "fabric": fabric.name, "tpgs": tpgs})
    return {"storage_objects": _read_storage_objects(root), "targets": targets}


def _apply(actions, spec):
    """Carry out planned actions with rtslib, in order."""
    r = rtslib_fb
    cache = {}

    def tpg(target):
        if target not in cache:
            t = r.Target(r.FabricModule("iscsi"), target, mode="lookup")
            cache[target] = r.TPG(t, TPG_TAG, mode="lookup")
        return cache[target]

    for action in actions:
        op = action["op"]
        try:
            if op == "create_backstore":
                # The serial is set at creation, before any LUN exists (LIO
                # refuses to change it once the backstore is exported).
                extra = {"wwn": action["serial"]} if action.get("serial") else {}
                r.BlockStorageObject(action["name"], dev=action["device"], **extra)
            elif op == "create_target":
                r.Target(r.FabricModule("iscsi"), action["target"], mode="create")
            elif op == "create_tpg":
                t = r.Target(r.FabricModule("iscsi"), action["target"], mode="lookup")
                cache[action["target"]] = r.TPG(t, TPG_TAG, mode="create")
            elif op == "create_lun":
                so = r.BlockStorageObject(action["name"])
                r.LUN(tpg(action["target"]), action["lun"], storage_object=so)
            elif op == "create_acl":
                r.NodeACL(tpg(action["target"]), action["initiator"], mode="create")
            elif op == "map_lun":
                acl = r.NodeACL(tpg(action["target"]), action["initiator"], mode="lookup")
                r.MappedLUN(acl, action["index"], tpg_lun=action["lun"])
            elif op == "set_chap":
                acl = r.NodeACL(tpg(action["target"]), action["initiator"], mode="lookup")
                for key in _CHAP_KEYS:
                    setattr(acl, f"chap_{key}", spec["chap"][key])
            elif op == "set_auth":
                tpg(action["target"]).set_attribute("authentication", str(action["value"]))
            elif op == "create_portal":
                r.NetworkPortal(tpg(action["target"]), action["ip"], action["port"], mode="create")
            elif op == "delete_portal":
                r.NetworkPortal(tpg(action["target"]), action["ip"], action["port"], mode="lookup").delete()
            elif op == "enable_tpg":
                tpg(action["target"]).enable = True
            elif op == "delete_lun":
                r.LUN(tpg(action["target"]), action["lun"]).delete()
            elif op == "delete_acl":
                r.NodeACL(tpg(action["target"]), action["initiator"], mode="lookup").delete()
            elif op == "delete_target":
                r.Target(r.FabricModule("iscsi"), action["target"], mode="lookup").delete()
                cache.pop(action["target"], None)
            elif op == "delete_backstore":
                r.BlockStorageObject(action["name"]).delete()
            else:  # pragma: no cover
                raise CommandExecutionError(f"unknown action {op}")
        except (r.RTSLibError, OSError) as exc:
            raise CommandExecutionError(f"rtslib: {_describe(action)} failed: {exc}")
        log.info("xencluster_lio: %s", _describe(action))


# --- public --------------------------------------------------------------------


def exports():
    """
    The whole LIO configuration of this host, from ONE read of configfs (no tool, no full dump).

    Returns ``{"backstores": {name: {plugin, dev, wwn, readonly, write_back,
    luns: [{target, tpg, index}]}}, "targets": {iqn: {fabric, tpgs: [{tag,
    enable, authentication, generate_node_acls, luns: [{index, backstore,
    plugin}], portals: ["ip:port"], acls: {initiator: {mapped_luns: [{index,
    tpg_lun, write_protect}], chap, mutual_chap}}}]}}}``. Only block
    backstores are listed. CHAP secrets are never returned.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_lio.exports
    """
    return parse_dump(_dump(secrets=False))


def export(name, device, target_iqn, initiators, portals, lun=None, chap=None, test=False, serial=None):
    """
    Export block device ``device`` as backstore ``name`` on target ``target_iqn``; idempotent.

    Creates what is missing, in this order: the block backstore, the target,
    its TPG 1, a LUN (``lun``, or the lowest free index; an existing LUN of this
    backstore is reused), an ACL per initiator in ``initiators`` with only this
    LUN mapped, the portals in ``portals`` (``ip`` or ``ip:port``, default port
    3260), and enables the TPG. A wildcard portal (``0.0.0.0``) is removed
    unless it is in ``portals``. ``chap`` (optional) is ``{"userid",
    "password"}`` plus ``"mutual_userid"``/``"mutual_password"`` for mutual
    CHAP; it is set on each listed ACL and the TPG then requires
    authentication. Without ``chap`` the TPG's ``authentication`` attribute
    is set to 0 (LIO defaults to 1, which refuses initiators without CHAP
    even when their ACL exists); CHAP is per target, so exports sharing a
    target must agree on it.

    ``serial`` (optional) is the backstore's T10 unit serial (VPD page 0x80,
    rtslib's ``wwn``), set when the backstore is created; without it rtslib
    makes up a UUID. Give a guest disk leg its leg id (see
    ``xencluster_disk.leg_id``): the initiators' udev then links the LUN as
    ``/dev/xencluster/<leg id>``. An existing backstore with another serial
    is refused, never recreated (that would change the disk under a running
    guest). LIO derives the LUN's NAA identifier (VPD page 0x83, udev's
    ``ID_WWN``, ``/dev/disk/by-id/wwn-*``) from the hex digits of the serial
    only, so two leg ids can share one: nothing may identify these LUNs by
    it (no multipathd on them).

    Returns ``{"changed", "changes" (one line per change), "target",
    "backstore", "lun"}``, plus ``"serial"`` when ``serial`` is given; a
    second identical call returns ``changed: False``.
    ``test=True`` only reports what would change. Does not save: call
    ``save`` to keep the configuration across reboots.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lio.export xcl-web1-disk0-a /dev/xcvg/web1-disk0-a iqn.2025-01.lab.xen:node1 '["iqn.2025-01.lab.xen:node2"]' '["192.168.100.1"]'
        salt node1 xencluster_lio.export xcl-web1.disk0.node1 /dev/xcvg/web1.disk0.node1 iqn.2025-01.lab.xen:node1 '["iqn.2025-01.lab.xen:node2"]' '["192.168.100.1"]' serial=web1.disk0.node1
    """
    spec = _spec(name, device, target_iqn, initiators, portals, lun, chap, serial)
    # CHAP secrets are compared only when CHAP is asked for.
    actions, index = _plan_export(_dump(secrets=spec["chap"] is not None), spec)
    if actions and not test:
        if any(a["op"] == "create_backstore" for a in actions) and not os.path.exists(device):
            raise CommandExecutionError(f"device {device} does not exist")
        _apply(actions, spec)
    ret = {
        "changed": bool(actions),
        "changes": [_describe(a) for a in actions],
        "target": spec["target"],
        "backstore": spec["name"],
        "lun": index,
    }
    if spec["serial"] is not None:
        ret["serial"] = spec["serial"]
    return ret


def _plan_unexport(dump, name, target):
    """Actions that remove what ``export(name, …, target, …)`` made; [] if nothing is left."""
    current = parse_dump(dump)
    actions = []
    tpg = _tpg(current, target)
    if tpg is not None:
        mine = [x["index"] for x in tpg["luns"] if x["plugin"] == "block" and x["backstore"] == name]
        others = [x for x in tpg["luns"] if x["index"] not in mine]
        other_tpgs = [x for x in current["targets"][target]["tpgs"] if x["tag"] != TPG_TAG]
        if not others and not other_tpgs:
            actions.append({"op": "delete_target", "target": target})
        else:
            for index in mine:
                actions.append({"op": "delete_lun", "target": target, "lun": index})
            for initiator, acl in tpg["acls"].items():
                left = [m for m in acl["mapped_luns"] if m["tpg_lun"] not in mine]
                if acl["mapped_luns"] and not left:
                    actions.append({"op": "delete_acl", "target": target, "initiator": initiator})
    so = current["backstores"].get(name)
    if so is not None:
        elsewhere = [x for x in so["luns"] if x["target"] != target or x["tpg"] != TPG_TAG]
        if elsewhere:
            raise CommandExecutionError(
                f"block/{name} is also exported by {elsewhere[0]['target']}; unexport it there first"
            )
        actions.append({"op": "delete_backstore", "name": name})
    return actions


def unexport(name, target_iqn, test=False):
    """
    Remove what ``export`` made for backstore ``name`` on ``target_iqn``; idempotent.

    Deletes the target when this backstore was its only LUN (with its ACLs and
    portals); otherwise only this LUN, and the ACLs left with no mapped LUN.
    Then deletes the backstore (the device itself is untouched). Returns
    ``{"changed", "changes"}``. Refuses if another target still exports the
    backstore. Does not save: call ``save``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lio.unexport xcl-web1-disk0-a iqn.2025-01.lab.xen:node1
    """
    name = _check_name(name)
    target = _check_iqn(target_iqn, "target IQN")
    actions = _plan_unexport(_dump(secrets=False), name, target)
    if actions and not test:
        _apply(actions, None)
    return {"changed": bool(actions), "changes": [_describe(a) for a in actions]}


def save(path=SAVE_FILE):
    """
    Save the running LIO configuration to ``path`` (mode 0600).

    The default is ``/etc/rtslib-fb-target/saveconfig.json``, the file Debian's
    ``rtslib-fb-targetctl`` service restores at boot. The file holds CHAP
    secrets; they are not returned.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_lio.save
    """
    path = _check_save_path(path)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _root().save_to_file(path)
    except (rtslib_fb.RTSLibError, OSError, RuntimeError) as exc:
        raise CommandExecutionError(f"rtslib: cannot save the LIO configuration to {path}: {exc}")
    return {"saved": path}


def restore(path=SAVE_FILE, clear_existing=True):
    """
    Restore the LIO configuration saved in ``path``, as ``rtslib-fb-targetctl`` does at boot.

    With ``clear_existing=True`` (the default, as at boot) the running
    configuration is cleared first: every export disappears for a moment and
    sessions reconnect. Returns ``{"restored": path, "errors": [...]}`` with
    rtslib's non-fatal errors.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_lio.restore
    """
    path = _check_save_path(path)
    if not os.path.isfile(path):
        raise CommandExecutionError(f"no saved LIO configuration at {path}")
    try:
        errors = _root().restore_from_file(path, clear_existing=bool(clear_existing))
    except (rtslib_fb.RTSLibError, OSError, ValueError) as exc:
        raise CommandExecutionError(f"rtslib: cannot restore {path}: {exc}")
    return {"restored": path, "errors": list(errors or [])}


def _check_save_path(path):
    if not isinstance(path, str) or not re.fullmatch(r"/[A-Za-z0-9_./-]{1,254}\.json", path) or ".." in path:
        raise SaltInvocationError(f"invalid save file path: {path!r}")
    return path
