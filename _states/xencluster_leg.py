"""
Disk legs of xencluster guests: the LV on its owner, exported to the partner
only, imported (logged in) on the partner, and at the same stable path
``/dev/xencluster/<leg id>`` on both nodes.

.. code-block:: yaml

    # every leg of this node, from the cluster model (pillar ``xencluster``)
    xencluster-legs:
      xencluster_leg.node_legs: []

    # one leg by hand, on its owner node1 ...
    web1.root.node1:
      xencluster_leg.present:
        - vg: xcvg
        - size: 10G
        - target: iqn.2025-01.lab.xen:web1.root.node1
        - initiators: [iqn.2025-01.lab.xen:node2]
        - portals: [192.168.100.1:3260]
    # ... and on its partner node2
    web1.root.node1:
      xencluster_leg.present:
        - target: iqn.2025-01.lab.xen:web1.root.node1
        - portals: [192.168.100.1:3260]

How a run works:

1. ``node_legs`` validates the whole model first (``xencluster_model.validate``,
   pillar only); a bad pillar fails with every problem by key path before
   anything on the host is read or changed.
2. The host is read ONCE per state run: ``xencluster_lvm.report``,
   ``xencluster_lio.exports``, ``xencluster_iscsi.sessions`` and
   ``xencluster_disk.links``, whatever the number of legs. The reads are cached
   in ``__context__["xencluster_leg.snapshot"]`` for the other states of the
   same run and dropped after anything was changed.
3. ``plan(snapshot, desired)`` (pure) lists the actions (plain dicts) and the
   problems. ``test=True`` returns exactly those actions as the changes;
   a real run hands them to ``apply`` and returns the same actions plus
   the result of each. A converged run makes the four reads and nothing else.

Both dom0s of a pair converge AT THE SAME TIME in one ``state.highstate``:
node1 exports its legs, then logs in to node2's, which node2's own run may
not have created or exported yet (it may still be installing packages or
rebuilding an initramfs, minutes under emulation), and the other way round.
So a ``login`` that fails because the partner's target is not (yet) there
or does not (yet) let this node in (no portal listening, target not found,
no ACL yet, authentication refused: ``xencluster_iscsi.login`` marks those
``retryable``) is tried again every ``LOGIN_RETRY_INTERVAL`` seconds, with
an INFO log line saying what it waits for, until ``import_wait`` seconds
(default 600; 0: one attempt) after the first login of the run started;
then it fails with the last error. The deadline is ONE for all the logins
of a run: legs of a partner that never answers fail after ``import_wait``,
not after one ``import_wait`` each. Owned legs are applied before any login
(``PHASES``), so two nodes waiting for each other never deadlock. Waiting
is an apply detail: the plan, ``test=True`` and ``changes["actions"]`` are
the same; a login's result ``detail`` has its number of ``attempts``.

Safety: an LV is never shrunk (a pillar size below the LV's is an error), a
session to a target no longer in the model is only reported unless
``prune=True`` (a running guest may use it), and an export to an initiator
outside the leg's pair is reported (``xencluster_lio.export`` adds ACLs but
never removes one). CHAP secrets are read from the pillar only when applying
and never appear in a return (``xencluster_model.redact``).
"""

import ipaddress
import logging
import re
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_leg"

CONTEXT_KEY = "xencluster_leg.snapshot"
DEFAULT_TIMEOUT = 60
VGCREATE_EXTENT = 4 * 1024**2  # vgcreate's default physical extent size
DEFAULT_IMPORT_WAIT = 600  # seconds the logins of one run wait for the partner's exports
MAX_IMPORT_WAIT = 3600
LOGIN_RETRY_INTERVAL = 10  # seconds between two attempts of a login the partner refused

# Patched by the unit tests: waiting must not sleep there.
_sleep = time.sleep
_monotonic = time.monotonic

# One read of the host per part of the snapshot.
READS = {
    "lvm": "xencluster_lvm.report",
    "lio": "xencluster_lio.exports",
    "sessions": "xencluster_iscsi.sessions",
    "links": "xencluster_disk.links",
}
REQUIRED = (
    "xencluster_model.validate",
    "xencluster_model.node_view",
    "xencluster_model.redact",
    *READS.values(),
    "xencluster_lvm.lv_args",
    "xencluster_lvm.lv_create",
    "xencluster_lvm.lv_extend",
    "xencluster_lio.export_args",
    "xencluster_lio.export",
    "xencluster_lio.save",
    "xencluster_iscsi.valid_iqn",
    "xencluster_iscsi.replacement_timeout_arg",
    "xencluster_iscsi.login",
    "xencluster_iscsi.set_replacement_timeout",
    "xencluster_iscsi.logout",
    "xencluster_iscsi.set_chap",
    "xencluster_iscsi.rescan",
    "xencluster_disk.wait_for",
)

# The order actions are applied in: LVs, exports, saving LIO, sessions, links.
PHASES = ("lv_create", "lv_extend", "export", "lio_save", "logout", "login", "session_timeout", "rescan", "wait_for")
TPG_TAG = 1
WILDCARDS = ("0.0.0.0", "[::]")
CHAP_KEYS = ("userid", "password", "mutual_userid", "mutual_password")

_PART = r"[a-z0-9][a-z0-9-]{0,30}"
_LEG_RE = re.compile(rf"({_PART})\.({_PART})\.({_PART})")
_PORTAL_RE = re.compile(r"(?P<ip>[0-9.]{7,15}|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?")


def __virtual__():
    missing = sorted({fun.split(".")[0] for fun in REQUIRED if fun not in __salt__})
    if missing:
        return (False, f"xencluster_leg state: execution module(s) not available: {', '.join(missing)}")
    return __virtualname__


class _Refused(Exception):
    """A request this state refuses before reading the host (bad arguments or pillar)."""


def _check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise _Refused(f"timeout must be a number of seconds from 0 to 600: {timeout!r}")
    return timeout


def _check_import_wait(import_wait):
    if (isinstance(import_wait, bool) or not isinstance(import_wait, (int, float))
            or not 0 <= import_wait <= MAX_IMPORT_WAIT):  # fmt: skip
        raise _Refused(f"import_wait must be a number of seconds from 0 (one login attempt) to {MAX_IMPORT_WAIT}: "
                       f"{import_wait!r}")  # fmt: skip
    return import_wait


# --- the desired legs ------------------------------------------------------------------


def _split(leg):
    m = _LEG_RE.fullmatch(leg) if isinstance(leg, str) else None
    if not m:
        raise _Refused(f"invalid leg id {leg!r}: <guest>.<disk>.<node>, each 1-31 of a-z 0-9 '-'")
    return m.groups()


def _portal(portal):
    """'ip', 'ip:port' or '[ipv6]:port' -> 'ip:port' as iscsiadm and LIO print it."""
    m = _PORTAL_RE.fullmatch(portal) if isinstance(portal, str) else None
    try:
        if not m:
            raise ValueError
        ip, port = m.group("ip"), int(m.group("port") or 3260)
        ip = f"[{ipaddress.IPv6Address(ip[1:-1]).compressed}]" if ip.startswith("[") else str(ipaddress.IPv4Address(ip))
        if not 1 <= port <= 65535 or ip in WILDCARDS:
            raise ValueError
    except ValueError:
        raise _Refused(f"invalid portal {portal!r} (ip, ip:port or [ipv6]:port; not a wildcard)")
    return f"{ip}:{port}"


def _portals(portals):
    if isinstance(portals, str):
        portals = [portals]
    if not isinstance(portals, (list, tuple)) or not portals:
        raise _Refused(f"portals must be a non-empty list: {portals!r}")
    out = []
    for portal in portals:
        portal = _portal(portal)
        if portal not in out:
            out.append(portal)
    return out


def _chap_flags(chap):
    """(chap, mutual) booleans of a credentials dict (secrets in clear or redacted)."""
    if not chap:
        return False, False
    return bool(chap.get("password")), bool(chap.get("mutual_password"))


def _check_chap(chap):
    if chap is None:
        return None
    if not isinstance(chap, dict) or set(chap) - set(CHAP_KEYS) or not chap.get("userid") or not chap.get("password"):
        raise _Refused(f"chap must be a mapping with userid and password (and optionally {', '.join(CHAP_KEYS[2:])})")
    if bool(chap.get("mutual_userid")) != bool(chap.get("mutual_password")):
        raise _Refused("mutual CHAP needs both mutual_userid and mutual_password")
    return dict(chap)


def _owned_leg(leg, guest, disk, owner, vg, lv, size, stripes, stripe_size, pvs, target, initiators, portals,
               lun, serial, chap):  # fmt: skip
    chap_on, mutual = _chap_flags(chap)
    return {
        "leg": leg, "guest": guest, "disk": disk, "owner": owner, "vg": vg, "lv": lv,
        "device": f"/dev/{vg}/{lv}", "size": size, "stripes": stripes, "stripe_size": stripe_size,
        "pvs": list(pvs or []), "backstore": leg, "serial": serial, "target": target, "lun": lun,
        "initiators": list(initiators), "portals": list(portals), "chap": chap_on, "mutual_chap": mutual,
    }  # fmt: skip


def _imported_leg(leg, guest, disk, owner, target, portals, lun, chap, replacement_timeout=None):
    return {
        "leg": leg, "guest": guest, "disk": disk, "owner": owner, "target": target,
        "portals": list(portals), "lun": lun, "chap": _chap_flags(chap)[0],
        "replacement_timeout": replacement_timeout,
    }  # fmt: skip


def desired_from_view(view, prune=False):
    """
    The ``desired`` input of ``plan`` from ``xencluster_model.node_view``; pure.

    Every owned leg: its LV (no PV restriction: LVM allocates in the VG) and
    its export to the partner's initiator on this node's portals; every
    imported leg: a session on each of the owner's portals, with the
    cluster's ``replacement_timeout``. ``check_foreign``
    is on: sessions and targets under ``<iqn_base>:`` that the model does not
    name are reported (or, for sessions, logged out with ``prune``).
    """
    owned = [
        _owned_leg(
            leg["lv"], leg["guest"], leg["disk"], leg["node"], leg["vg"], leg["lv"], leg["size"], leg["stripes"],
            leg["stripe_size"], None, leg["target"], [leg["initiator"]], leg["portals"], leg["lun"],
            leg["serial"], leg["chap"],
        )  # fmt: skip
        for leg in view["owned"]
    ]
    imported = [
        _imported_leg(leg["lv"], leg["guest"], leg["disk"], leg["owner"], leg["target"], leg["portals"],
                      leg["lun"], leg["chap"], leg["replacement_timeout"])  # fmt: skip
        for leg in view["imported"]
    ]
    return {
        "node": view["node"], "iqn_base": view["cluster"]["iqn_base"], "owned": owned, "imported": imported,
        "check_foreign": True, "prune": bool(prune), "model_vgs": sorted(view.get("vgs") or {}),
    }  # fmt: skip


# --- the plan (pure) --------------------------------------------------------------------


def _ceil(a, b):
    return -(-a // b)


def _plan_lv(leg, lvm, free, out, pending_vgs=()):
    """LV create/extend for an owned leg; False when the LV will not exist (nothing may follow).

    ``pending_vgs``: VGs that do not exist yet but will when the plan is applied (a dry run of
    a highstate that creates them first); planned with vgcreate's default extent size.
    """
    vg, lv, size, name = leg["vg"], leg["lv"], leg["size"], leg["leg"]
    vgi = lvm["vgs"].get(vg)
    if vgi is None and vg in pending_vgs:
        # test=True on a bare node: xencluster_lvm.vg_present creates the VG earlier in the same
        # run, with vgcreate's default extent; its free space is unknown until then.
        out["warnings"].append(f"{name}: volume group {vg} does not exist yet; planned as the model's "
                               f"VG, created earlier in this run with {VGCREATE_EXTENT // 1024**2} MiB extents")
        vgi = {"vg_extent_size": VGCREATE_EXTENT, "vg_free": None}
    if vgi is None:
        out["errors"].append(f"{name}: volume group {vg} not found on this node")
        return False
    extent = vgi["vg_extent_size"]
    for pv in leg["pvs"]:
        if lvm["pvs"].get(pv, {}).get("vg_name") != vg:
            out["errors"].append(f"{name}: {pv} is not a physical volume of {vg}")
            return False
    pool = (vg, tuple(sorted(leg["pvs"])))
    if pool not in free:  # free bytes left for this plan, per VG and per PV set
        free[pool] = sum(lvm["pvs"][pv]["pv_free"] for pv in leg["pvs"]) if leg["pvs"] else vgi["vg_free"]
    current = lvm["lvs"].get(f"{vg}/{lv}")

    if current is None:
        per = extent * (leg["stripes"] or 1)
        new = _ceil(size, per) * per
        if free[pool] is not None and new > free[pool]:
            out["errors"].append(f"{name}: {vg} has {free[pool]} bytes free, a new LV {lv} needs {new}")
            return False
        if free[pool] is not None:
            free[pool] -= new
        out["actions"].append({
            "op": "lv_create", "leg": name, "vg": vg, "lv": lv, "size": size, "stripes": leg["stripes"],
            "stripe_size": leg["stripe_size"], "pvs": leg["pvs"], "new_size": new,
        })  # fmt: skip
        return True

    if current.get("origin"):
        out["errors"].append(f"{name}: {vg}/{lv} is a snapshot of {current['origin']}, not a leg")
        return False
    old = current["size"]
    segments = current["segments"] or []
    odd = [s for s in segments if s["stripes"] != (leg["stripes"] or 1)
           or (leg["stripe_size"] is not None and s["stripe_size"] != leg["stripe_size"])]  # fmt: skip
    if odd:
        out["warnings"].append(
            f"{name}: {vg}/{lv} has a segment of {odd[0]['stripes']} stripe(s) of {odd[0]['stripe_size']} bytes, "
            f"the model asks for {leg['stripes']} of {leg['stripe_size']}; the layout of an existing LV is not changed"
        )
    last_stripes = (segments[-1]["stripes"] or 1) if segments else 1
    per = extent * last_stripes
    if size <= old:
        if _ceil(size, per) * per < old:
            out["errors"].append(
                f"{name}: refusing to shrink {vg}/{lv} from {old} to {size} bytes: legs only grow "
                "(fix the size in the pillar; shrinking needs xencluster_lvm.lv_extend by hand)"
            )
        return True
    old_extents = _ceil(old, extent)
    delta = _ceil(_ceil(size, extent) - old_extents, last_stripes) * last_stripes  # lvextend keeps the layout
    new = (old_extents + delta) * extent
    if new - old > free[pool]:
        out["errors"].append(f"{name}: {vg} has {free[pool]} bytes free, growing {lv} to {new} needs {new - old}")
        return True
    free[pool] -= new - old
    out["actions"].append({
        "op": "lv_extend", "leg": name, "vg": vg, "lv": lv, "size": size, "pvs": leg["pvs"],
        "old_size": old, "new_size": new,
    })  # fmt: skip
    return True


def _tpg(lio, target):
    for tpg in lio["targets"].get(target, {}).get("tpgs", []):
        if tpg["tag"] == TPG_TAG:
            return tpg
    return None


def _plan_export(leg, lio, out):
    """What ``xencluster_lio.export`` would do for this leg, from the one ``exports`` read.

    ``blocking``: conflicts ``export`` itself refuses (no export action then);
    ``exposure``: the leg is reachable from outside its pair, which ``export``
    cannot undo (it adds ACLs, never removes one): reported, export still runs.
    """
    name, device, target, serial, lun = leg["leg"], leg["device"], leg["target"], leg["serial"], leg["lun"]
    backstore = leg["backstore"]
    bs = lio["backstores"].get(backstore)
    blocking, exposure = [], []
    if bs is not None and bs["dev"] != device:
        blocking.append(f"backstore block/{backstore} is on {bs['dev']}, not on {device}")
    if bs is not None and bs["wwn"] != serial:
        blocking.append(f"backstore block/{backstore} has unit serial {bs['wwn']!r}, not {serial!r} "
                        "(never changed under its initiators: unexport it while nothing uses it)")  # fmt: skip
    for other, info in sorted(lio["backstores"].items()):
        if other != backstore and info["dev"] == device:
            blocking.append(f"{device} is also exported as backstore block/{other}")
        if other != backstore and info["wwn"] == serial:
            blocking.append(f"unit serial {serial} is also used by backstore block/{other}")
    elsewhere = sorted({x["target"] for x in (bs or {}).get("luns", []) if x["target"] != target})
    if elsewhere:
        exposure.append(f"block/{backstore} is also exported by {', '.join(elsewhere)}")

    steps = []
    if bs is None:
        steps.append("create_backstore")
    if target not in lio["targets"]:
        steps.append("create_target")
    tpg = _tpg(lio, target)
    if tpg is None:
        steps.append("create_tpg")
        tpg = {"enable": False, "luns": [], "portals": [], "acls": {}, "authentication": None}
    mine = [x["index"] for x in tpg["luns"] if x["plugin"] == "block" and x["backstore"] == backstore]
    if mine and lun not in mine:
        blocking.append(f"block/{backstore} is LUN {mine[0]} of {target}, not LUN {lun}")
    elif not mine:
        if lun in {x["index"] for x in tpg["luns"]}:
            blocking.append(f"LUN {lun} of {target} is used by another backstore")
        steps.append("create_lun")
    for initiator in leg["initiators"]:
        acl = tpg["acls"].get(initiator)
        if acl is None:
            steps.append(f"create_acl {initiator}")
        if acl is None or not any(m["tpg_lun"] == lun for m in acl["mapped_luns"]):
            steps.append(f"map_lun {initiator}")
        if leg["chap"] and (acl is None or not acl["chap"] or (leg["mutual_chap"] and not acl["mutual_chap"])):
            steps.append(f"set_chap {initiator}")
    auth = 1 if leg["chap"] else 0
    if tpg["authentication"] != auth:
        steps.append(f"set_auth {auth}")
    for portal in leg["portals"]:
        if portal not in tpg["portals"]:
            steps.append(f"create_portal {portal}")
    for portal in tpg["portals"]:
        if portal in leg["portals"]:
            continue
        if portal.rsplit(":", 1)[0] in WILDCARDS:
            steps.append(f"delete_portal {portal}")
        else:
            out["warnings"].append(f"{name}: {target} also listens on {portal}, not a portal of the model "
                                   "(left as is: xencluster_lio.export removes only wildcard portals)")  # fmt: skip
    if not tpg["enable"]:
        steps.append("enable_tpg")
    foreign = sorted(set(tpg["acls"]) - set(leg["initiators"]))
    if foreign:
        exposure.append(f"{target} is exported to {', '.join(foreign)}, outside the leg's pair")
    if tpg.get("generate_node_acls"):
        exposure.append(f"{target} has generate_node_acls=1: any initiator may log in")
    out["errors"].extend(f"{name}: {e}" for e in blocking)
    out["errors"].extend(
        f"{name}: {e}: not changed (xencluster_lio.export never removes access; fix it with targetcli "
        "once nothing uses it)"
        for e in exposure
    )
    if steps and not blocking:
        out["actions"].append({
            "op": "export", "leg": name, "backstore": backstore, "device": device, "target": target,
            "initiators": leg["initiators"], "portals": leg["portals"], "lun": lun, "serial": serial,
            "chap": leg["chap"], "steps": steps,
        })  # fmt: skip


def _link_error(leg, link):
    return (f"{leg['leg']}: its stable path points to {link['target']} ({link['kind']}), "
            f"not to {'its LV' if leg.get('vg') else 'an iSCSI LUN'}")  # fmt: skip


def _plan_link(leg, kind, links, out):
    """A wait for the stable path when it is missing; an error when it points elsewhere."""
    link = links.get(leg["leg"])
    if link is None:
        out["actions"].append({
            "op": "wait_for", "leg": leg["leg"], "guest": leg["guest"], "disk": leg["disk"],
            "owner": leg["owner"], "path": f"/dev/xencluster/{leg['leg']}", "kind": kind,
        })  # fmt: skip
    elif link["kind"] != kind:
        out["errors"].append(_link_error(leg, link))


def _plan_imported(leg, sessions, links, out, rescan):
    mine = {s["portal"]: s for s in sessions if s["target"] == leg["target"]}
    usable = False
    for portal in leg["portals"]:
        session = mine.get(portal)
        if session is None:
            out["actions"].append({
                "op": "login", "leg": leg["leg"], "target": leg["target"], "portal": portal,
                "startup": "automatic", "chap": leg["chap"], "replacement_timeout": leg.get("replacement_timeout"),
            })  # fmt: skip
            usable = True
        elif session.get("state") != "LOGGED_IN":
            out["errors"].append(f"{leg['leg']}: the session to {leg['target']} on {portal} is "
                                 f"{session.get('state') or 'in an unknown state'} (left to the kernel's "
                                 f"recovery; is {leg['owner']} or the SAN down?)")  # fmt: skip
        else:
            usable = True
            wanted = leg.get("replacement_timeout")
            if wanted is not None and session.get("recovery_tmo") != wanted:
                out["actions"].append({
                    "op": "session_timeout", "leg": leg["leg"], "target": leg["target"], "portal": portal,
                    "sid": session.get("sid"), "old": session.get("recovery_tmo"), "new": wanted,
                })  # fmt: skip
            if leg["leg"] not in links and not any(d["lun"] == leg["lun"] for d in session.get("devices") or []):
                rescan.append(leg["leg"])  # logged in before the LUN was mapped to us
    if usable:
        _plan_link(leg, "iscsi", links, out)


def _plan_foreign(desired, snapshot, out):
    base = f"{desired['iqn_base']}:" if desired.get("iqn_base") else None
    if base is None:
        return
    if "sessions" in snapshot:
        wanted = {(leg["target"], p) for leg in desired["imported"] for p in leg["portals"]}
        for s in snapshot["sessions"]:
            if not s["target"].startswith(base) or (s["target"], s["portal"]) in wanted:
                continue
            if desired.get("prune"):
                out["actions"].append({"op": "logout", "target": s["target"], "portal": s["portal"], "delete": True})
            else:
                out["warnings"].append(f"session to {s['target']} on {s['portal']} is not in the model: left "
                                       "logged in (a running guest may use it; prune=True logs it out)")  # fmt: skip
    if "lio" in snapshot:
        owned = {leg["target"] for leg in desired["owned"]}
        for target in sorted(snapshot["lio"]["targets"]):
            if target.startswith(base) and target not in owned:
                out["warnings"].append(f"target {target} is exported but not in the model: left as is")


def plan(snapshot, desired):
    """
    Everything this state must do to make the host ``snapshot`` match ``desired``; pure.

    ``snapshot``: ``{"lvm": xencluster_lvm.report(), "lio":
    xencluster_lio.exports(), "sessions": xencluster_iscsi.sessions(),
    "links": xencluster_disk.links()}`` (only the parts the legs need).
    ``desired``: ``{"node", "iqn_base", "owned": [...], "imported": [...],
    "check_foreign", "prune"}`` (``desired_from_view`` or ``present``).

    Returns ``{"actions": [...], "errors": [...], "warnings": [...]}``:
    actions are plain dicts with ``op`` (``lv_create``, ``lv_extend``,
    ``export``, ``lio_save``, ``logout``, ``login``, ``session_timeout``,
    ``rescan``, ``wait_for``) in the order ``apply`` runs them, and never hold a secret;
    errors (the state fails) and warnings (reported only) are lines starting
    with the leg id. Nothing is ever planned that shrinks or removes data.
    """
    out = {"actions": [], "errors": [], "warnings": []}
    free, rescan = {}, []
    for leg in desired["owned"]:
        exists = _plan_lv(leg, snapshot["lvm"], free, out, desired.get("pending_vgs") or ())
        if not exists:
            continue
        _plan_export(leg, snapshot["lio"], out)
        _plan_link(leg, "lv", snapshot["links"], out)
    for leg in desired["imported"]:
        _plan_imported(leg, snapshot["sessions"], snapshot["links"], out, rescan)
    if any(a["op"] == "export" for a in out["actions"]):
        out["actions"].append({"op": "lio_save"})
    if rescan:
        out["actions"].append({"op": "rescan", "legs": rescan})
    if desired.get("check_foreign"):
        _plan_foreign(desired, snapshot, out)
    out["actions"].sort(key=lambda a: PHASES.index(a["op"]))  # stable: legs keep their order
    return out


def describe(action):
    """One line for an action; never a secret."""
    op = action["op"]
    if op == "lv_create":
        return f"create LV {action['vg']}/{action['lv']} of {action['new_size']} bytes"
    if op == "lv_extend":
        return f"grow LV {action['vg']}/{action['lv']} from {action['old_size']} to {action['new_size']} bytes"
    if op == "export":
        return (f"export {action['device']} as LUN {action['lun']} of {action['target']} to "
                f"{', '.join(action['initiators'])} on {', '.join(action['portals'])} ({', '.join(action['steps'])})")
    if op == "lio_save":
        return "save the LIO configuration (restored at boot)"
    if op == "logout":
        return f"log out of {action['target']} on {action['portal']} and delete its node record (prune)"
    if op == "login":
        timeout = action.get("replacement_timeout")
        return (f"log in to {action['target']} on {action['portal']} (node.startup automatic"
                + (f", replacement_timeout {timeout} s)" if timeout is not None else ")"))
    if op == "session_timeout":
        return (f"set replacement_timeout of the session to {action['target']} on {action['portal']} "
                f"from {action['old']} to {action['new']} s (node record and live session)")
    if op == "rescan":
        return f"rescan the iSCSI sessions (no LUN yet for {', '.join(action['legs'])})"
    if op == "wait_for":
        return f"wait for {action['path']} ({action['kind']})"
    return op  # pragma: no cover


# --- applying ---------------------------------------------------------------------------


class _Deadline:
    """The one ``import_wait`` deadline of an apply run, set when its first login starts."""

    def __init__(self, seconds):
        self.seconds, self.at = seconds, None

    def start(self):
        if self.at is None:
            self.at = _monotonic() + self.seconds

    def left(self):
        return self.at - _monotonic()


def _retryable(exc):
    """A login failure a later attempt may cure, as ``xencluster_iscsi.login`` marks it.

    Only a ``CommandExecutionError`` whose ``info`` says ``retryable`` (the
    partner's portal, target or ACL is not there yet, or it refused us):
    bad arguments (``SaltInvocationError``), a missing iscsid, a broken node
    record or any other error fail at once.
    """
    return isinstance(exc, CommandExecutionError) and isinstance(exc.info, dict) and exc.info.get("retryable") is True


def _login(action, deadline):
    """``xencluster_iscsi.login``, tried again until ``deadline`` while the partner refuses; (result, attempts)."""
    target, portal = action["target"], action["portal"]
    owner = action["leg"].rsplit(".", 1)[-1]  # a leg id ends with its owner node
    deadline.start()
    attempt = 0
    while True:
        attempt += 1
        try:
            login = __salt__["xencluster_iscsi.login"]
            return login(target, portal, replacement_timeout=action.get("replacement_timeout")), attempt
        except Exception as exc:  # pylint: disable=broad-except
            if not _retryable(exc):
                raise
            reason = exc.error or str(exc)
            left = deadline.left()
            if left <= 0:
                if attempt == 1 and deadline.seconds == 0:
                    raise
                raise RuntimeError(
                    f"{owner} did not let this node log in to {target} on {portal} within import_wait="
                    f"{deadline.seconds:g} s (one deadline for every login of this run; {attempt} attempt(s) "
                    f"for this one); last error: {reason}"
                ) from exc
            log.info("xencluster_leg: waiting for %s to export %s on %s (attempt %d, %d s left): %s",
                     owner, target, portal, attempt, round(left), reason)  # fmt: skip
            _sleep(min(LOGIN_RETRY_INTERVAL, left))


def _run(action, credentials, timeout, deadline=None):
    """Carry out one action through the execution modules; its (secret-free) result.

    ``deadline`` (``_Deadline``): until when a refused login is tried again
    (default: one attempt).
    """
    op, chap = action["op"], (credentials or {}).get(action.get("leg"))
    if op == "lv_create":
        lv = __salt__["xencluster_lvm.lv_create"](
            action["vg"], action["lv"], action["size"], stripes=action["stripes"],
            stripe_size=action["stripe_size"], pvs=action["pvs"] or None,
        )  # fmt: skip
        return {"size": lv["size"]}
    if op == "lv_extend":
        res = __salt__["xencluster_lvm.lv_extend"](action["vg"], action["lv"], action["size"],
                                                   pvs=action["pvs"] or None)  # fmt: skip
        return {"old_size": res["old_size"], "new_size": res["new_size"]}
    if op == "export":
        res = __salt__["xencluster_lio.export"](
            action["backstore"], action["device"], action["target"], action["initiators"], action["portals"],
            lun=action["lun"], chap={k: v for k, v in chap.items() if k in CHAP_KEYS} if chap else None,
            serial=action["serial"],
        )  # fmt: skip
        return {"changes": res["changes"]}
    if op == "lio_save":
        return __salt__["xencluster_lio.save"]()
    if op == "logout":
        res = __salt__["xencluster_iscsi.logout"](action["target"], action["portal"], delete=True)
        return {"changes": res["changes"]}
    if op == "login":
        changes = []
        if chap:
            __salt__["xencluster_iscsi.set_chap"](
                action["target"], action["portal"], chap["userid"], chap["password"],
                chap.get("mutual_userid") or None, chap.get("mutual_password") or None,
            )  # fmt: skip
            changes.append("CHAP credentials set on the node record")
        res, attempts = _login(action, deadline or _Deadline(0))
        if res.get("session") is None:
            raise RuntimeError(f"no session to {action['target']} on {action['portal']} after the login")
        return {"changes": changes + list(res["changes"]), "sid": res["session"].get("sid"), "attempts": attempts}
    if op == "session_timeout":
        res = __salt__["xencluster_iscsi.set_replacement_timeout"](action["target"], action["portal"], action["new"])
        return {"changes": res["changes"]}
    if op == "rescan":
        __salt__["xencluster_iscsi.rescan"]()
        return {"rescanned": True}
    if op == "wait_for":
        entry = __salt__["xencluster_disk.wait_for"](action["guest"], action["disk"], action["owner"], timeout=timeout)
        if entry["kind"] != action["kind"]:
            raise RuntimeError(f"{action['path']} points to {entry['target']} ({entry['kind']}), not {action['kind']}")
        return {"target": entry["target"], "kind": entry["kind"]}
    raise RuntimeError(f"unknown action {op}")  # pragma: no cover


def _scrub(text, credentials):
    for chap in (credentials or {}).values():
        for key in ("password", "mutual_password"):
            if chap and chap.get(key):
                text = text.replace(chap[key], "********")
    return text


def apply(actions, credentials=None, timeout=DEFAULT_TIMEOUT, import_wait=DEFAULT_IMPORT_WAIT):
    """
    Carry out planned ``actions`` in order; returns one result per action.

    ``credentials`` maps a leg id to its CHAP credentials in clear (read from
    the pillar by the caller); they reach ``xencluster_lio.export`` and
    ``xencluster_iscsi.set_chap`` only and never a result. After a failed
    action the later actions of the same leg are skipped (an export needs its
    LV, a link its LV or session); other legs go on. Each result is
    ``{"op", "leg"|"target", "result": bool, "detail"|"comment"}``.

    A ``login`` the partner refuses because its target is not (yet) there or
    does not (yet) let us in is tried again every ``LOGIN_RETRY_INTERVAL``
    seconds (logged at INFO) until ``import_wait`` seconds after the first
    login of this call started: ONE deadline for all logins, so the legs of a
    partner that never answers fail after ``import_wait`` in all (each later
    one after a single attempt). ``import_wait=0``: one attempt. A login's
    ``detail`` has its ``attempts``.
    """
    results, failed = [], set()
    deadline = _Deadline(import_wait)
    for action in actions:
        key = action.get("leg") or action.get("target") or action["op"]
        head = {"op": action["op"], **({"leg": action["leg"]} if "leg" in action else {}),
                **({"target": action["target"]} if "leg" not in action and "target" in action else {})}  # fmt: skip
        if action.get("leg") is not None and action["leg"] in failed:
            results.append({**head, "result": False, "comment": "skipped: an earlier step of this leg failed"})
            continue
        try:
            detail = _run(action, credentials, timeout, deadline)
        except Exception as exc:  # pylint: disable=broad-except
            if action.get("leg") is not None:
                failed.add(action["leg"])
            message = _scrub(f"{describe(action)}: {exc}", credentials)
            log.error("xencluster_leg: %s failed: %s", key, message)
            results.append({**head, "result": False, "comment": message})
            continue
        results.append({**head, "result": True, "detail": detail})
    return results


# --- reading the host ----------------------------------------------------------------------


def _snapshot(parts):
    """The parts of the host snapshot, each read at most once per state run (``__context__``)."""
    cache = __context__.setdefault(CONTEXT_KEY, {})
    for part in parts:
        if part not in cache:
            cache[part] = __salt__[READS[part]]()
    return {part: cache[part] for part in parts}


def _forget():
    __context__.pop(CONTEXT_KEY, None)


# --- the states ----------------------------------------------------------------------------


def _ret(name):
    return {"name": name, "result": False, "changes": {}, "comment": ""}


def _this_minion():
    return __grains__.get("id") or __opts__.get("id")


def _pillar_chap(node):
    """The CHAP credentials (in clear) the model gives ``node``: its own, else the cluster's."""
    raw = __pillar__.get("xencluster") or {}
    nodes = raw.get("nodes") or {}
    if isinstance(nodes, list):
        nodes = {spec.get("name"): spec for spec in nodes if isinstance(spec, dict)}
    chap = (nodes.get(node) or {}).get("chap") or (raw.get("cluster") or {}).get("chap")
    return dict(chap) if chap else None


def _credentials(desired, partner_of):
    """{leg id: credentials} for the legs that need CHAP; read only when applying."""
    out = {}
    for leg in desired["owned"]:
        if leg["chap"]:
            out[leg["leg"]] = _pillar_chap(partner_of[leg["leg"]])
    for leg in desired["imported"]:
        if leg["chap"]:
            out[leg["leg"]] = _pillar_chap(desired["node"])
    return out


def _converge(ret, desired, parts, credentials, timeout, summary, import_wait=DEFAULT_IMPORT_WAIT):
    """Read (once per run), plan, and in a real run apply; fills ``ret``."""
    try:
        snapshot = _snapshot(parts)
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"cannot read the host: {exc}"
        return ret
    if __opts__["test"] and desired.get("model_vgs"):
        # a dry run predicts the whole highstate: the model's VGs exist by the time this applies
        desired = dict(desired, pending_vgs=sorted(desired["model_vgs"]))
    result = plan(snapshot, desired)
    actions, errors, warnings = result["actions"], result["errors"], result["warnings"]
    lines = [summary]
    if not actions:
        lines.append("converged: nothing to do" if not errors else "nothing to apply; not converged:")
        ret["result"] = not errors
    elif __opts__["test"]:
        lines += [f"would {describe(a)}" for a in actions]
        ret["changes"] = {"actions": actions}
        ret["result"] = None if not errors else False
    else:
        cred = credentials() if any(a["op"] in ("export", "login") for a in actions) else {}
        try:
            results = apply(actions, cred, timeout, import_wait)
        finally:
            _forget()  # something may have changed, even on a failure
        for action, res in zip(actions, results):
            if res["result"]:
                lines.append(describe(action))
                lines.extend(_mismatch(action, res["detail"]))
            else:
                errors.append(res["comment"])
        ret["changes"] = {"actions": actions, "results": results}
        ret["result"] = not errors
        lines, errors = [_scrub(x, cred) for x in lines], [_scrub(x, cred) for x in errors]
    lines += [f"error: {e}" for e in errors] + [f"warning: {w}" for w in warnings]
    ret["comment"] = "\n".join(lines)
    if ret["changes"]:
        ret["changes"] = __salt__["xencluster_model.redact"](ret["changes"])
    return ret


def _mismatch(action, detail):
    if action["op"] == "lv_create" and detail.get("size") != action["new_size"]:
        return [f"  (LVM made {detail.get('size')} bytes, the plan predicted {action['new_size']})"]
    if action["op"] == "lv_extend" and detail.get("new_size") != action["new_size"]:
        return [f"  (LVM made {detail.get('new_size')} bytes, the plan predicted {action['new_size']})"]
    if action["op"] == "export" and len(detail.get("changes", [])) != len(action["steps"]):
        return [f"  (LIO made {len(detail.get('changes', []))} change(s), the plan predicted {len(action['steps'])})"]
    return []


def _view(node, fallback):
    """(node view, node name) from the validated model; raises _Refused with the model's message.

    ``node`` (a node name or minion id) names the node; when it is None, or
    not in the model and ``fallback`` is set, this minion's id does. The node
    must be this minion: legs are converged where they live.
    """
    try:
        model = __salt__["xencluster_model.validate"]()
    except Exception as exc:  # pylint: disable=broad-except
        raise _Refused(str(exc))
    nodes, me = model["nodes"], _this_minion()

    def find(wanted):
        for nname, spec in nodes.items():
            if wanted is not None and wanted in (nname, spec.get("minion")):
                return nname
        return None

    name = find(node)
    if name is None and (node is None or fallback):
        name = find(me)
    if name is None:
        tried = [repr(x) for x in dict.fromkeys([node] + ([me] if node is None or fallback else [])) if x is not None]
        raise _Refused(f"xencluster.nodes: no node or minion id {' or '.join(tried) or 'given'} in the model")
    if me is not None and nodes[name].get("minion") != me:
        raise _Refused(f"{name} is minion {nodes[name].get('minion')!r}, not this minion {me!r}: "
                       "legs are converged on the node that owns or imports them")  # fmt: skip
    try:
        return __salt__["xencluster_model.node_view"](name), name
    except Exception as exc:  # pylint: disable=broad-except
        raise _Refused(str(exc))


def node_legs(name, node=None, prune=False, timeout=DEFAULT_TIMEOUT, import_wait=DEFAULT_IMPORT_WAIT):
    """
    Converge every disk leg of this node from the cluster model (pillar ``xencluster``).

    name
        The node: a node name or minion id of the model. Anything else (e.g.
        a plain state id) means this minion (``grains["id"]``).
    node
        The node, when ``name`` is used for something else.
    prune
        Log out of (and forget) iSCSI sessions to targets under ``<iqn_base>:``
        that the model no longer names. Off by default: a running guest may
        still use such a disk, so it is only reported.
    timeout
        Seconds to wait for each new stable path (``xencluster_disk.wait_for``).
    import_wait
        Seconds (default 600, at most 3600) the logins to the partners' legs
        wait for their targets: both dom0s of a pair converge concurrently in
        one highstate, so a partner may not have created or exported its legs
        yet. A login refused for that (no portal listening, target not found,
        no ACL yet, authentication refused) is tried again, logged at INFO,
        until this many seconds after the first login of the run started (one
        deadline for all of them), then fails with the last error. ``0``: one
        attempt, no waiting. ``test=True`` and the planned actions do not
        depend on it.

    Owned legs: the LV present (created, or grown, never shrunk) and exported
    to the partner's initiator only, on this node's SAN portals; imported
    legs: logged in on the owner's portals with ``node.startup=automatic``;
    every leg of the node's pairs at ``/dev/xencluster/<leg id>``. The model
    is validated first: a bad pillar fails with its key paths before the
    host is read. The host is read once (LVM report, LIO exports, iSCSI
    sessions, stable links) whatever the number of legs.

    .. code-block:: yaml

        xencluster-legs:
          xencluster_leg.node_legs: []
    """
    ret = _ret(name)
    try:
        _check_timeout(timeout)
        _check_import_wait(import_wait)
        view, node_name = _view(node if node is not None else name, fallback=node is None)
    except _Refused as exc:
        ret["comment"] = str(exc)
        return ret
    desired = desired_from_view(view, prune=prune)
    partner_of = {leg["lv"]: leg["partner"] for leg in view["owned"]}
    summary = f"{node_name}: {len(desired['owned'])} owned and {len(desired['imported'])} imported leg(s)"
    return _converge(
        ret, desired, ("lvm", "lio", "sessions", "links"), lambda: _credentials(desired, partner_of), timeout, summary,
        import_wait,
    )  # fmt: skip


def present(name, vg=None, size=None, stripes=None, stripe_size=None, pvs=None, owner=None, partner=None,
            target=None, initiators=None, portals=None, serial=None, lun=0, chap=None, node=None,
            replacement_timeout=None, from_pillar=False, timeout=DEFAULT_TIMEOUT,
            import_wait=DEFAULT_IMPORT_WAIT):  # fmt: skip
    """
    Converge one disk leg ``name`` (``<guest>.<disk>.<owner>``) on this node.

    On the owner (``node`` is ``owner``): the LV ``vg/<leg id>`` of at least
    ``size`` (created with ``stripes``/``stripe_size`` on ``pvs``, grown,
    never shrunk), exported as LUN ``lun`` of ``target`` with unit serial
    ``serial`` (the leg id) to ``initiators`` only, on ``portals`` (this
    node's SAN addresses), with ``chap`` credentials if given. On the partner:
    logged in to ``target`` on each of ``portals`` (the owner's), with
    ``node.startup=automatic`` (and ``chap``). On both: the stable path
    ``/dev/xencluster/<leg id>``.

    name
        The leg id; its last part is the owner.
    owner, partner
        The two nodes of the pair (``owner`` defaults to the leg id's node).
    node
        This node's name in the cluster (default: ``grains["id"]``).
    replacement_timeout
        On the partner: seconds (1-3600) the leg's I/O waits for a lost
        session before it fails, set on the node record and the live session
        (default: left as it is; ``from_pillar`` takes the cluster's).
    from_pillar
        Take every other argument from the cluster model (validated first).
    timeout
        Seconds to wait for the stable path (``xencluster_disk.wait_for``).
    import_wait
        On the partner: seconds (default 600, at most 3600) the login waits
        for the owner to export the leg. Both dom0s of a pair converge
        concurrently in one highstate, so the owner may not have created or
        exported it yet; a login refused for that (no portal listening,
        target not found, no ACL yet, authentication refused) is tried again,
        logged at INFO, until the deadline, then fails with the last error.
        ``0``: one attempt. ``test=True`` and the planned actions do not
        depend on it.

    .. code-block:: yaml

        web1.root.node1:
          xencluster_leg.present:
            - from_pillar: true
    """
    ret = _ret(name)
    try:
        _check_timeout(timeout)
        _check_import_wait(import_wait)
        guest, disk, leg_node = _split(name)
        if from_pillar:
            view, here = _view(node, fallback=False)
            desired = desired_from_view(view)
            desired["owned"] = [leg for leg in desired["owned"] if leg["leg"] == name]
            desired["imported"] = [leg for leg in desired["imported"] if leg["leg"] == name]
            desired["check_foreign"] = False
            if not desired["owned"] and not desired["imported"]:
                raise _Refused(f"{name} is not a leg of {here} in the cluster model")
            partner_of = {leg["lv"]: leg["partner"] for leg in view["owned"]}
            credentials = lambda: _credentials(desired, partner_of)  # noqa: E731
        else:
            args = {"vg": vg, "size": size, "stripes": stripes, "stripe_size": stripe_size, "pvs": pvs,
                    "owner": owner, "partner": partner, "target": target, "initiators": initiators,
                    "portals": portals, "serial": serial, "lun": lun, "chap": chap, "node": node,
                    "replacement_timeout": replacement_timeout}  # fmt: skip
            desired = _manual(name, guest, disk, leg_node, args)
            here = desired["node"]
            secrets = _check_chap(chap)
            credentials = lambda: {name: secrets} if secrets else {}  # noqa: E731
    except _Refused as exc:
        ret["comment"] = str(exc)
        return ret
    except Exception as exc:  # pylint: disable=broad-except  # SaltInvocationError of the *_args checks
        ret["comment"] = str(exc)
        return ret
    parts = ("lvm", "lio", "links") if desired["owned"] else ("sessions", "links")
    role = "owner" if desired["owned"] else "partner"
    return _converge(ret, desired, parts, credentials, timeout, f"{here}: leg {name} ({role})", import_wait)


def _manual(name, guest, disk, leg_node, args):
    """``desired`` for ``present`` with explicit arguments; refuses bad ones before any read."""
    owner = args["owner"] if args["owner"] is not None else leg_node
    if owner != leg_node:
        raise _Refused(f"owner {owner!r} is not the node of leg id {name} ({leg_node})")
    here = args["node"] if args["node"] is not None else _this_minion()
    partner = args["partner"]
    if partner is not None and partner == owner:
        raise _Refused(f"partner {partner!r} is the owner: a leg's pair is two nodes")
    serial = args["serial"] if args["serial"] is not None else name
    if serial != name:
        raise _Refused(f"serial must be the leg id {name} (the partner links the LUN by it), not {serial!r}")
    if isinstance(args["lun"], bool) or not isinstance(args["lun"], int) or not 0 <= args["lun"] <= 255:
        raise _Refused(f"lun must be an integer from 0 to 255: {args['lun']!r}")
    chap = _check_chap(args["chap"])
    desired = {"node": here, "iqn_base": None, "owned": [], "imported": [], "check_foreign": False, "prune": False}
    if here == owner:
        missing = [k for k in ("vg", "size", "target", "initiators", "portals") if args[k] is None]
        if missing:
            raise _Refused(f"on its owner {owner}, leg {name} needs {', '.join(missing)}")
        lv = __salt__["xencluster_lvm.lv_args"](args["vg"], name, args["size"], args["stripes"],
                                                args["stripe_size"], args["pvs"])  # fmt: skip
        ex = __salt__["xencluster_lio.export_args"](name, f"/dev/{lv['vg']}/{name}", args["target"],
                                                    args["initiators"], _portals(args["portals"]), args["lun"],
                                                    chap, serial)  # fmt: skip
        desired["owned"].append(_owned_leg(
            name, guest, disk, owner, lv["vg"], name, lv["size"], lv["stripes"] or 1, lv["stripe_size"], lv["pvs"],
            ex["target"], ex["initiators"], _portals(ex["portals"]), args["lun"], serial, chap,
        ))  # fmt: skip
    elif partner is None or here == partner:
        missing = [k for k in ("target", "portals") if args[k] is None]
        if missing:
            raise _Refused(f"on the partner {here}, leg {name} needs {', '.join(missing)}")
        timeout = args["replacement_timeout"]
        if timeout is not None:
            __salt__["xencluster_iscsi.replacement_timeout_arg"](timeout)  # SaltInvocationError: refused
        if not __salt__["xencluster_iscsi.valid_iqn"](args["target"]):
            raise _Refused(f"invalid target IQN {args['target']!r}")
        desired["imported"].append(_imported_leg(
            name, guest, disk, owner, args["target"], _portals(args["portals"]), args["lun"], chap, timeout,
        ))  # fmt: skip
    else:
        raise _Refused(f"this node {here!r} is neither the owner {owner!r} nor the partner {partner!r} of {name}")
    return desired
