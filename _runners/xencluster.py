"""
Cluster-wide views of a xencluster, run on the salt-master.

``locate`` asks every dom0 at once which guests it runs and raises the worst
alarm xencluster knows: a guest running on two nodes at the same time.

``verify`` (alias ``status``) checks the whole cluster against its model in
one round of parallel calls and lists every finding, worst first, each with a
stable code (like Ganeti's ``gnt-cluster verify``):

==================== ======== ===============================================
code                 severity what
==================== ======== ===============================================
ECLUSTERDOUBLERUN    critical a guest runs on two or more nodes at once
EGUESTOUTSIDEPAIR    critical a guest runs on a node outside its disk pair
EOPINTERRUPTED       error    a runner operation was interrupted (its salt-run is gone)
ENODENOANSWER        error    a dom0 of the model did not answer
ENODEUNAVAILABLE     error    a dom0 cannot report (xencluster_node not loaded)
ENODEREPORT          error    a dom0's report, or one part of it, failed
ELEGLVMISSING        error    an owned leg's LV is missing on its owner
ELEGNOTEXPORTED      error    a leg is not exported (to its partner) over LIO
ELEGWRONGINITIATOR   error    a leg is exported to an initiator outside its pair
ELEGNOTIMPORTED      error    the partner is not logged in to a leg (per portal)
ELEGPATHMISSING      error    a leg's stable path /dev/xencluster/<leg> is missing
ELEGPATHWRONG        error    a leg's stable path points elsewhere
EGUESTRAIDDEGRADED   error    a guest's md RAID1 is degraded
EGUESTRAIDRESYNC     warning  a guest's md RAID1 is resyncing (not degraded)
ELEGSNAPSHOT         warning  a snapshot LV is left on a VG of the model
ELEGSESSIONTIMEOUT   warning  a leg's session fails its I/O after another time than the model's
EGUESTNOTRUNNING     warning  a guest pinned to a node runs nowhere
EGUESTNOTPROVISIONED warning  a guest to provision is not yet (salt-run xencluster.provision)
EGUESTUNKNOWN        warning  a domain runs that the model does not name
EGUESTNOCONFIG       warning  a node of a guest's pair has no xl config for it
EGUESTNOANSWER       warning  a running guest's minion did not answer
EGUESTRAIDUNKNOWN    warning  a guest minion answered without its RAID status
==================== ======== ===============================================

The ``xencluster_guest.running`` state calls ``locate`` from a dom0, live, just
before it starts a guest (``publish.runner``). The master must allow that in
its configuration, for the dom0 minions only (the keys are regular
expressions, ``re.match``-ed against the minion id and the runner name)::

    peer_run:
      'node[0-9]+$':           # the dom0 minion ids only, not '.*'
        - 'xencluster\\.locate$'

Without it the master answers ``{}`` and the state refuses to start anything.

``migrate`` live-migrates one guest to the other node of its pair: pre-checks
in one round of parallel calls (also alone, as ``dry_run=True``), ``xl
migrate`` on the source, a post-check of where the guest runs; progress on the
event bus (``xencluster/migrate/<guest>/<step>``) and in ``salt-run``.
Drained nodes (``_drained``/``_set_drained``, the master's cache bank
``xencluster/drained``) take no guest.

``evacuate`` empties a node for maintenance: it marks it drained, then
migrates each of its guests to its pair partner (``migrate``'s own steps),
a bounded number at once; ``undrain`` clears the mark, ``drained`` lists the
marks.

``monitor`` is ``verify`` for a master schedule: one
``xencluster/alert/<code>`` event per serious finding. ``recover`` starts a
lost node's guests degraded on their pair partners, after ``confirm_dead``.
``restore`` puts a node back in service: its legs exported and imported
again, the returning legs re-added to each guest's md RAID1 (a bitmap
resync), the resync followed until clean, then undrain. ``backup`` and
``restore_backup`` sync a guest's filesystems to its backup target and back.
``provision`` makes a pillar guest real (legs, RAID1, OS, minion key, start,
highstate); the reactor salt/reactor/xencluster_provision.sls maps the event
``xencluster/guest/provision`` to it.

Safety (``_begin``/``_end``): every verb that changes the cluster locks what it
works on in the master cache (bank ``xencluster/locks``: ``guest.<name>``,
``node.<name>``) and keeps a journal record of the operation (bank
``xencluster/ops``, key = op id, a Salt jid) updated at each step. A second
call on a locked guest or node gets ``busy`` (``result`` False, retcode 1, the
holder in ``busy``) and publishes nothing; a dry run takes no lock and writes
nothing, but says busy too. Check-and-set is atomic across the runner
processes of one master (an flock on ``<cachedir>/xencluster-ops.flock``). A
lock or record whose owner process (pid, on this host) is gone is stale: its
operation was interrupted (``salt-run`` killed, master rebooted). ``verify``
reports it as ``EOPINTERRUPTED``; running the verb again takes the lock over,
closes the old record with a note and finishes or cleans up (``migrate``
looks where the guest runs now: ``resume_migrate``). ``ops`` lists the
journal and the locks.

==================== ========================================================
lock                 taken by
==================== ========================================================
guest.<guest>        migrate (also each guest evacuate migrates), recover and
                     restore (each guest while they work on it), backup,
                     restore_backup (the guest and the ``into`` guest), provision
node.<node>          evacuate, recover (the lost node), restore
==================== ========================================================
"""

import base64
import concurrent.futures
import contextlib
import contextvars
import copy
import datetime
import fcntl
import fnmatch
import ipaddress
import logging
import math
import os
import re
import socket
import threading
import time

import salt.cache
import salt.client
import salt.crypt
import salt.loader
import salt.utils.event
import salt.utils.files
import salt.utils.jid
import salt.utils.minions
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltCacheError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster"

_FUN = "xencluster_xl.list_domains"
# What a minion returns when the function is not loaded (salt.loader.lazy.missing_fun_string).
_MISSING = (f"'{_FUN}' is not available", "'xencluster_xl' __virtual__ returned False")


def __virtual__():
    return __virtualname__


def _classify(returns):
    """Sort ``LocalClient.cmd(..., full_return=True)`` returns (pure; tested alone)."""
    guests, no_answer, unavailable, errors = {}, [], {}, {}
    for minion in sorted(returns):
        data = returns[minion]
        if data is False or not isinstance(data, dict) or data.get("out") == "no_return":
            # targeted, no return before the timeout: False, or (Salt 3007/3008 with
            # full_return) {"out": "no_return", "ret": "Minion did not return. [...]"}
            no_answer.append(minion)
            continue
        ret, retcode = data.get("ret"), data.get("retcode", 0)
        if isinstance(ret, str) and ret.startswith(_MISSING):
            unavailable[minion] = ret  # not a dom0, or extension not synced
        elif retcode or not isinstance(ret, dict):
            errors[minion] = ret
        else:
            for guest in ret:
                guests.setdefault(guest, []).append(minion)
    double_runs = sorted(g for g, nodes in guests.items() if len(nodes) > 1)
    return {
        "guests": {g: sorted(nodes) for g, nodes in sorted(guests.items())},
        "double_runs": double_runs,
        "no_answer": no_answer,
        "unavailable": unavailable,
        "errors": errors,
    }


def _minion_ids(expect):
    """``expect`` as a list of minion ids: a list, or a comma-separated string (CLI)."""
    if expect is None:
        return None
    if isinstance(expect, str):
        expect = [m for m in expect.split(",") if m]
    if not isinstance(expect, (list, tuple)) or not all(isinstance(m, str) and m for m in expect):
        raise SaltInvocationError(f"expect must be a list of minion ids: {expect!r:.120}")
    return sorted(set(expect))


def locate(tgt="*", tgt_type="glob", timeout=None, expect=None):
    """
    Where every guest runs: one parallel ``xencluster_xl.list_domains`` on the targeted minions.

    Returns::

        {"guests": {guest: [node, ...]},
         "double_runs": [guest seen on more than one node, ...],
         "no_answer": [targeted minion that did not return, ...],
         "unavailable": {minion: why xencluster_xl is not loaded there (not a dom0...)},
         "errors": {minion: error returned by xencluster_xl.list_domains}}

    ``expect`` (a list of minion ids, or a comma-separated string) names the
    minions that must answer, e.g. every dom0 of the cluster in the pillar
    model: one of them that is not in the returns at all (no accepted key, not
    matched by ``tgt``) is put in ``no_answer`` too, so "every dom0 answered"
    is exactly "``no_answer``, ``unavailable`` and ``errors`` name none of
    ``expect``". The ``xencluster_guest`` states call
    ``locate(tgt=<dom0 ids>, tgt_type="list", expect=<dom0 ids>)``.

    A double run is logged at ERROR: two nodes writing to the same disk pair
    destroy the guest's data. A node in ``no_answer`` or ``errors`` may run
    guests nobody sees: do not start anything while the list is not empty.
    During ``xl migrate`` the copy on the target is named ``<guest>--incoming``
    (and the source ``<guest>--migratedaway`` at the very end), so a live
    migration is not a double run.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.locate
        salt-run xencluster.locate tgt='G@xencluster_role:dom0' tgt_type=compound timeout=20
        salt-run xencluster.locate tgt=node1,node2 tgt_type=list expect=node1,node2
    """
    expect = _minion_ids(expect)
    client = salt.client.LocalClient(__opts__["conf_file"])
    returns = client.cmd(
        tgt,
        _FUN,
        timeout=timeout or __opts__.get("timeout", 5),
        tgt_type=tgt_type,
        full_return=True,
    )
    result = _classify(returns or {})
    if expect is not None:
        missing = [m for m in expect if m not in (returns or {})]
        result["no_answer"] = sorted(set(result["no_answer"]) | set(missing))
    for guest in result["double_runs"]:
        log.error(
            "xencluster: DOUBLE RUN: guest %s is running on %s at the same time",
            guest,
            ", ".join(result["guests"][guest]),
        )
    if result["no_answer"]:
        log.warning("xencluster.locate: no answer from %s", ", ".join(result["no_answer"]))
    for minion, err in result["errors"].items():
        log.warning("xencluster.locate: %s failed: %s", minion, err)
    return result


# --- verify: the whole cluster against its model ------------------------------------------

CRITICAL, ERROR, WARNING = "critical", "error", "warning"
SEVERITIES = (CRITICAL, ERROR, WARNING)
# salt-run's exit status: 2 with a critical finding, 1 with an error, else 0
RETCODES = {CRITICAL: 2, ERROR: 1, WARNING: 0}

ECLUSTERDOUBLERUN = "ECLUSTERDOUBLERUN"
EGUESTOUTSIDEPAIR = "EGUESTOUTSIDEPAIR"
EOPINTERRUPTED = "EOPINTERRUPTED"
ENODENOANSWER = "ENODENOANSWER"
ENODEUNAVAILABLE = "ENODEUNAVAILABLE"
ENODEREPORT = "ENODEREPORT"
ELEGLVMISSING = "ELEGLVMISSING"
ELEGNOTEXPORTED = "ELEGNOTEXPORTED"
ELEGWRONGINITIATOR = "ELEGWRONGINITIATOR"
ELEGNOTIMPORTED = "ELEGNOTIMPORTED"
ELEGPATHMISSING = "ELEGPATHMISSING"
ELEGPATHWRONG = "ELEGPATHWRONG"
EGUESTRAIDDEGRADED = "EGUESTRAIDDEGRADED"
EGUESTRAIDRESYNC = "EGUESTRAIDRESYNC"
ELEGSNAPSHOT = "ELEGSNAPSHOT"
ELEGSESSIONTIMEOUT = "ELEGSESSIONTIMEOUT"
EGUESTNOTRUNNING = "EGUESTNOTRUNNING"
EGUESTNOTPROVISIONED = "EGUESTNOTPROVISIONED"
EGUESTUNKNOWN = "EGUESTUNKNOWN"
EGUESTNOCONFIG = "EGUESTNOCONFIG"
EGUESTNOANSWER = "EGUESTNOANSWER"
EGUESTRAIDUNKNOWN = "EGUESTRAIDUNKNOWN"

# code -> severity, in the order findings of one severity are listed
CODES = {
    ECLUSTERDOUBLERUN: CRITICAL,
    EGUESTOUTSIDEPAIR: CRITICAL,
    EOPINTERRUPTED: ERROR,
    ENODENOANSWER: ERROR,
    ENODEUNAVAILABLE: ERROR,
    ENODEREPORT: ERROR,
    ELEGLVMISSING: ERROR,
    ELEGNOTEXPORTED: ERROR,
    ELEGWRONGINITIATOR: ERROR,
    ELEGNOTIMPORTED: ERROR,
    ELEGPATHMISSING: ERROR,
    ELEGPATHWRONG: ERROR,
    EGUESTRAIDDEGRADED: ERROR,
    EGUESTRAIDRESYNC: WARNING,
    ELEGSNAPSHOT: WARNING,
    ELEGSESSIONTIMEOUT: WARNING,
    EGUESTNOTRUNNING: WARNING,
    EGUESTNOTPROVISIONED: WARNING,
    EGUESTUNKNOWN: WARNING,
    EGUESTNOCONFIG: WARNING,
    EGUESTNOANSWER: WARNING,
    EGUESTRAIDUNKNOWN: WARNING,
}

NODE_FUN = "xencluster_node.report"
MD_FUN = "xencluster_md.status"
MODEL_FUN = "xencluster_model.validate"
PARTS = ("domains", "lvm", "lio", "sessions", "links", "configs")
DEFAULT_VERIFY_TIMEOUT = 30
TPG_TAG = 1
LOGGED_IN = "LOGGED_IN"
MIGRATION_SUFFIXES = ("--incoming", "--migratedaway")  # xl migrate's temporary names


def _finding(code, message, node=None, guest=None, leg=None):
    return {"code": code, "severity": CODES[code], "node": node, "guest": guest, "leg": leg, "message": message}


def _sort_key(finding):
    return (
        SEVERITIES.index(finding["severity"]), list(CODES).index(finding["code"]),
        finding["node"] or "", finding["guest"] or "", finding["leg"] or "", finding["message"],
    )  # fmt: skip


def _unavailable(fun, ret):
    """True when ``ret`` is the loader's answer for a function that is not loaded."""
    mod = fun.split(".")[0]
    return isinstance(ret, str) and ret.startswith((f"'{fun}' is not available", f"'{mod}' __virtual__ returned False"))


def _answer(data, fun):
    """(kind, value) of one ``full_return`` answer: ok, no_answer, unavailable or error."""
    if data is None or data is False or not isinstance(data, dict) or data.get("out") == "no_return":
        return "no_answer", None
    ret, retcode = data.get("ret"), data.get("retcode", 0)
    if _unavailable(fun, ret):
        return "unavailable", ret
    if retcode or not isinstance(ret, dict):
        return "error", ret
    return "ok", ret


def _failed(part):
    """The error text of a report part that failed (``{"error": "<str>"}``), else None."""
    if isinstance(part, dict) and set(part) == {"error"} and isinstance(part["error"], str):
        return part["error"]
    return None


def _short(value, limit=300):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _node_reports(model, reports, out):
    """{node: {part: value or None (unknown)}} of every node of the model; findings for what is missing."""
    known = {}
    for node, spec in sorted(model["nodes"].items()):
        minion = spec["minion"]
        kind, ret = _answer(reports.get(minion), NODE_FUN)
        if kind == "no_answer":
            out.append(_finding(ENODENOANSWER, f"dom0 {node} (minion {minion}) did not answer: the guests it "
                                "runs and its legs are unknown", node=node))  # fmt: skip
        elif kind == "unavailable":
            out.append(_finding(ENODEUNAVAILABLE, f"dom0 {node} (minion {minion}) cannot report: {_short(ret)} "
                                "(not a dom0, or the extension is not synced: saltutil.sync_modules)", node=node))
        elif kind == "error":
            out.append(_finding(ENODEREPORT, f"dom0 {node}: {NODE_FUN} failed: {_short(ret)}", node=node))
        parts = {}
        for part in PARTS:
            value = ret.get(part) if kind == "ok" else None
            error = _failed(value) if kind == "ok" else None
            if kind == "ok" and (error or part not in ret):
                why = error or "missing from the report (an older xencluster_node?)"
                out.append(_finding(ENODEREPORT, f"dom0 {node}: cannot read {part}: {_short(why)}", node=node))
                value = None
            parts[part] = value
        known[node] = parts
    return known


def _base_name(name):
    for suffix in MIGRATION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _located(known):
    """{domain name: [nodes]} over the nodes whose domains are known."""
    guests = {}
    for node, parts in sorted(known.items()):
        for name in parts["domains"] or {}:
            guests.setdefault(name, []).append(node)
    return {name: sorted(nodes) for name, nodes in sorted(guests.items())}


def _check_guests(model, known, located, out):
    guests = model["guests"]
    for name, nodes in located.items():
        base = _base_name(name)
        if len(nodes) > 1:
            out.append(_finding(ECLUSTERDOUBLERUN, f"DOUBLE RUN: guest {name} is running on {', '.join(nodes)} at "
                                "the same time: its disks are written from two nodes", guest=name))  # fmt: skip
        if base not in guests:
            for node in nodes:
                out.append(_finding(EGUESTUNKNOWN, f"domain {name} runs on {node} but the model has no guest {base}",
                                    node=node, guest=name))  # fmt: skip
            continue
        pair = guests[base].get("nodes") or []
        for node in nodes:
            if node not in pair:
                out.append(_finding(EGUESTOUTSIDEPAIR, f"guest {name} runs on {node}, outside its pair "
                                    f"{' and '.join(pair)}: its legs are not exported there", node=node,
                                    guest=base))  # fmt: skip
    all_known = all(parts["domains"] is not None for parts in known.values())
    running = {_base_name(name) for name in located}
    for name, guest in sorted(guests.items()):
        if guest.get("node") and name not in running and all_known:
            if guest.get("provision") and not _provisioned_here(guest, known):
                out.append(_finding(EGUESTNOTPROVISIONED, f"guest {name} is not provisioned yet (its leg on "
                                    f"{guest['node']} has no tag {PROVISIONED_TAG}): salt-run xencluster.provision "
                                    f"{name}", node=guest["node"], guest=name))  # fmt: skip
                continue
            out.append(_finding(EGUESTNOTRUNNING, f"guest {name} is pinned to {guest['node']} but runs nowhere",
                                node=guest["node"], guest=name))  # fmt: skip
        for node in guest.get("nodes") or []:
            configs = known.get(node, {}).get("configs")
            if configs is not None and name not in configs:
                out.append(_finding(EGUESTNOCONFIG, f"{node} has no xl config for guest {name} "
                                    f"(/etc/xen/xencluster/{name}.cfg): it cannot start it there", node=node,
                                    guest=name))  # fmt: skip


def _provisioned_here(guest, known):
    """Whether the first disk's leg on the guest's home node carries the provisioned tag (its LVM report)."""
    lvs = ((known.get(guest["node"]) or {}).get("lvm") or {}).get("lvs") or {}
    leg = next((leg for leg in guest["disks"][0]["legs"] if leg["node"] == guest["node"]), None) if guest["disks"] else None
    lv = lvs.get(f"{leg['vg']}/{leg['lv']}") if leg else None
    return bool(lv) and "xencluster.provisioned" in (lv.get("tags") or [])


def _portals(owner, partner):
    """The owner's SAN portals in a subnet the partner has an address in (as xencluster_model)."""
    out = []
    for entry in owner.get("san") or []:
        network = ipaddress.ip_network(entry["network"])
        if any(ipaddress.ip_address(other["ip"]) in network for other in partner.get("san") or []):
            out.append(entry["portal"])
    return out


def _legs(model):
    """(guest, leg, owner, partner) for every leg of the model."""
    for gname, guest in sorted(model["guests"].items()):
        for disk in guest["disks"]:
            for leg in disk["legs"]:
                partner = next(n for n in disk["nodes"] if n != leg["node"])
                yield gname, leg, leg["node"], partner


def _tpg(lio, target):
    for tpg in (lio["targets"].get(target) or {}).get("tpgs") or []:
        if tpg.get("tag") == TPG_TAG:
            return tpg
    return None


def _export_problem(leg, lio, initiator):
    """Why ``leg`` is not exported to ``initiator`` (a line), or None."""
    backstore = lio["backstores"].get(leg["backstore"])
    if backstore is None:
        return f"no LIO backstore block/{leg['backstore']}"
    if backstore.get("dev") != leg["device"]:
        return f"backstore block/{leg['backstore']} is on {backstore.get('dev')}, not on {leg['device']}"
    tpg = _tpg(lio, leg["target"])
    if tpg is None:
        return f"no target {leg['target']} (TPG {TPG_TAG})"
    if not tpg.get("enable"):
        return f"TPG {TPG_TAG} of {leg['target']} is disabled"
    luns = [x["index"] for x in tpg.get("luns") or [] if x.get("backstore") == leg["backstore"]]
    if not luns:
        return f"{leg['target']} has no LUN on block/{leg['backstore']}"
    acl = (tpg.get("acls") or {}).get(initiator)
    if acl is None or not any(m.get("tpg_lun") in luns for m in acl.get("mapped_luns") or []):
        return f"{leg['target']} does not map its LUN to the partner's initiator {initiator}"
    return None


def _exposure(leg, lio, initiator):
    tpg = _tpg(lio, leg["target"]) or {}
    lines = [f"{leg['target']} is exported to {other}, outside the leg's pair"
             for other in sorted(set(tpg.get("acls") or {}) - {initiator})]  # fmt: skip
    if tpg.get("generate_node_acls"):
        lines.append(f"{leg['target']} has generate_node_acls=1: any initiator may log in")
    return lines


def _check_path(gname, leg, node, links, kind, devices, out):
    """The stable path of ``leg`` on ``node``: there, and a ``kind`` device (one of ``devices`` if known)."""
    link = links.get(leg["lv"])
    lv = leg["lv"]
    if link is None:
        out.append(_finding(ELEGPATHMISSING, f"{leg['path']} is missing on {node}", node=node, guest=gname, leg=lv))
    elif link.get("kind") != kind or (devices and link.get("target") not in devices):
        want = "its LV" if kind == "lv" else "the partner's iSCSI LUN"
        out.append(_finding(ELEGPATHWRONG, f"{leg['path']} on {node} points to {link.get('target')} "
                            f"({link.get('kind')}), not to {want}", node=node, guest=gname, leg=lv))  # fmt: skip


def _check_owner(gname, leg, owner, initiator, parts, out):
    lv, lvm, lio, links = leg["lv"], parts["lvm"], parts["lio"], parts["links"]
    if lvm is not None and f"{leg['vg']}/{lv}" not in lvm["lvs"]:
        out.append(_finding(ELEGLVMISSING, f"LV {leg['vg']}/{lv} is missing on its owner {owner}",
                            node=owner, guest=gname, leg=lv))  # fmt: skip
        return
    if lio is not None:
        problem = _export_problem(leg, lio, initiator)
        if problem:
            out.append(_finding(ELEGNOTEXPORTED, f"{lv} is not exported by {owner}: {problem}",
                                node=owner, guest=gname, leg=lv))  # fmt: skip
        for line in _exposure(leg, lio, initiator):
            out.append(_finding(ELEGWRONGINITIATOR, f"{lv} on {owner}: {line}", node=owner, guest=gname, leg=lv))
    if links is not None:
        _check_path(gname, leg, owner, links, "lv", None, out)


def _check_importer(gname, leg, owner, partner, portals, parts, out, timeout=None):
    """ELEGNOTIMPORTED, ELEGSESSIONTIMEOUT (``timeout``: the model's replacement_timeout) and the path."""
    sessions, lv = parts["sessions"], leg["lv"]
    if sessions is None:
        return
    mine = {s.get("portal"): s for s in sessions if s.get("target") == leg["target"]}
    devices = set()
    for portal in portals:
        session = mine.get(portal)
        if session is None:
            out.append(_finding(ELEGNOTIMPORTED, f"{partner} has no iSCSI session to {leg['target']} on {portal} "
                                f"({owner}'s leg)", node=partner, guest=gname, leg=lv))  # fmt: skip
        elif session.get("state") != LOGGED_IN:
            out.append(_finding(ELEGNOTIMPORTED, f"{partner}'s session to {leg['target']} on {portal} is "
                                f"{session.get('state') or 'in an unknown state'}, not {LOGGED_IN}",
                                node=partner, guest=gname, leg=lv))  # fmt: skip
        else:
            devices.update(d.get("device") for d in session.get("devices") or [] if d.get("lun") == leg["lun"])
            tmo = session.get("recovery_tmo")
            if timeout is not None and isinstance(tmo, int) and tmo != timeout:
                out.append(_finding(ELEGSESSIONTIMEOUT, (
                    f"{partner}'s session to {leg['target']} on {portal} fails its I/O after {tmo} s, the model "
                    f"says {timeout} s (replacement_timeout): state.apply xencluster.storage on {partner}"),
                    node=partner, guest=gname, leg=lv))  # fmt: skip
    usable = any(mine.get(p, {}).get("state") == LOGGED_IN for p in portals)
    if usable and parts["links"] is not None:
        _check_path(gname, leg, partner, parts["links"], "iscsi", devices, out)


def _check_legs(model, known, out):
    nodes = model["nodes"]
    for gname, leg, owner, partner in _legs(model):
        _check_owner(gname, leg, owner, nodes[partner]["initiator"], known[owner], out)
        _check_importer(gname, leg, owner, partner, _portals(nodes[owner], nodes[partner]), known[partner], out,
                        (model.get("cluster") or {}).get("replacement_timeout"))  # fmt: skip


def _check_snapshots(model, known, out):
    legs = {leg["lv"]: gname for gname, leg, _o, _p in _legs(model)}
    for node, parts in sorted(known.items()):
        vgs = set(model["nodes"][node].get("vgs") or {})
        for key, lv in sorted(((parts["lvm"] or {}).get("lvs") or {}).items()):
            if lv.get("origin") and lv.get("vg") in vgs:
                usage = lv.get("snapshot_usage")
                full = f", {usage:.2f}% full" if isinstance(usage, (int, float)) else ""
                out.append(_finding(ELEGSNAPSHOT, f"snapshot {key} of {lv['origin']} is left on {node}{full}",
                                    node=node, guest=legs.get(lv["origin"]),
                                    leg=lv["origin"] if lv["origin"] in legs else None))  # fmt: skip


def _sync_text(sync):
    if not sync:
        return ""
    percent = sync.get("percent")
    return f", {sync.get('action')} {percent}%" if percent is not None else f", {sync.get('action')} pending"


def _check_arrays(guest, arrays, out):
    if not arrays:
        out.append(_finding(EGUESTRAIDUNKNOWN, f"guest {guest} reports no md array: its legs are not mirrored",
                            guest=guest))  # fmt: skip
    for md, st in sorted(arrays.items()):
        state = [w.strip() for w in str(st.get("state") or "").split(",")]
        if "degraded" in state or (st.get("failed_devices") or 0) > 0:
            out.append(_finding(EGUESTRAIDDEGRADED, f"guest {guest}: {md} is degraded ({st.get('active_devices')}/"
                                f"{st.get('raid_devices')} legs active{_sync_text(st.get('sync'))})",
                                guest=guest))  # fmt: skip
        elif st.get("sync"):
            out.append(_finding(EGUESTRAIDRESYNC, f"guest {guest}: {md} is not in sync yet{_sync_text(st['sync'])}",
                                guest=guest))  # fmt: skip


def _check_raid(raid, out):
    for guest, data in sorted((raid or {}).items()):
        kind, ret = _answer(data, MD_FUN)
        if kind == "no_answer":
            out.append(_finding(EGUESTNOANSWER, f"guest minion {guest} did not answer: its RAID is unknown",
                                guest=guest))  # fmt: skip
        elif kind != "ok":
            out.append(_finding(EGUESTRAIDUNKNOWN, f"guest minion {guest} cannot report its RAID: {_short(ret)}",
                                guest=guest))  # fmt: skip
        else:
            _check_arrays(guest, ret, out)


def running_guests(model, located):
    """The model's guests seen on any node (a migrating one too): the guest minions to ask."""
    return sorted({_base_name(name) for name in located} & set(model["guests"]))


def _evaluate(model, reports, raid):
    out = []
    known = _node_reports(model, reports or {}, out)
    located = _located(known)
    _check_guests(model, known, located, out)
    _check_legs(model, known, out)
    _check_snapshots(model, known, out)
    _check_raid(raid, out)
    return sorted(out, key=_sort_key), located


def located_guests(model, reports):
    """``{domain name: [nodes]}`` over the dom0s of the model that told (pure)."""
    return _evaluate(model, reports, None)[1]


def findings(model, reports, raid=None):
    """
    Every finding about the cluster, worst first; pure (tested alone).

    ``model``: the validated model (``xencluster_model.validate``).
    ``reports``: ``{minion id: answer}`` of ``xencluster_node.report`` as
    ``LocalClient.cmd(..., full_return=True)`` gives it; a dom0 of the model
    missing from it did not answer. ``raid``: ``{guest minion: answer}`` of
    ``xencluster_md.status`` (None: not asked); a guest in it that did not
    return did not answer.

    Returns the findings, each ``{"code", "severity", "node", "guest",
    "leg", "message"}`` (None where it does not apply), sorted by severity
    (critical, error, warning), then code (the order of ``CODES``), node,
    guest and leg. What a dom0 could not tell is one ENODE* finding, not a
    finding per leg: the parts it failed to read are not judged.
    """
    return _evaluate(model, reports, raid)[0]


def summarize(found, located, model):
    """The ``summary`` of a verify result: counts by severity and code."""
    by_code = {}
    for f in found:
        by_code[f["code"]] = by_code.get(f["code"], 0) + 1
    return {
        **{severity: sum(1 for f in found if f["severity"] == severity) for severity in SEVERITIES},
        "codes": by_code,
        "nodes": len(model["nodes"]),
        "guests": len(model["guests"]),
        "domains": len(located),
    }


def retcode(found):
    """salt-run's exit status: 2 with a critical finding, 1 with an error one, else 0."""
    return max([RETCODES[f["severity"]] for f in found], default=0)


# --- reading the model on the master --------------------------------------------------------


def _pillar_model(tgt, tgt_type):
    """(minion id, raw ``xencluster`` pillar) of the first matched minion whose pillar has one."""
    matched = _matched(tgt, tgt_type)
    for minion in sorted(matched):
        pillar = __salt__["pillar.show_pillar"](minion)  # the master compiles it: the minion need not be up
        if isinstance(pillar, dict) and pillar.get("xencluster"):
            return minion, pillar["xencluster"]
    raise CommandExecutionError(
        f"no minion matched by {tgt!r} ({tgt_type}, {len(matched)} accepted key(s)) has pillar 'xencluster': "
        "point tgt at a dom0 of the cluster"
    )


def _validate(raw):
    """The model validated by xencluster_model.validate, loaded on the master (no minion involved)."""
    opts = copy.deepcopy(__opts__)
    opts.update(grains={}, pillar={})  # validate(model) reads neither
    functions = salt.loader.minion_mods(opts, whitelist=["xencluster_model"], context={})
    if MODEL_FUN not in functions:
        raise CommandExecutionError(
            f"{MODEL_FUN} is not available on the master: install saltext-xencluster there "
            "(pip) or run `salt-run saltutil.sync_modules` once"
        )
    return functions[MODEL_FUN](raw)


def _matched(tgt, tgt_type):
    """The accepted minion ids ``tgt``/``tgt_type`` matches on this master (no publish)."""
    return salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type).get("minions") or []


def _accepted(minions):
    """The ids among ``minions`` that have an accepted key on this master."""
    return set(_matched(list(minions), "list")) if minions else set()


def _publish(client, minions, fun, timeout):
    if not minions:
        return {}
    return client.cmd(minions, fun, timeout=timeout, tgt_type="list", full_return=True) or {}


def _as_highstate(result):
    """The result shaped for the highstate outputter: one state per finding."""
    states, run = {}, 0
    for f in result["findings"]:
        subject = f["leg"] or f["guest"] or f["node"] or "cluster"
        states[f"xencluster_{f['severity']}_|-{f['code']}_|-{subject}_|-verify"] = {
            "name": subject, "result": None if f["severity"] == WARNING else False,
            "comment": f"{f['code']}: {f['message']}", "changes": {}, "__run_num__": run,
            "__id__": f["code"], "__sls__": "xencluster.verify",
        }  # fmt: skip
        run += 1
    s = result["summary"]
    states["xencluster_summary_|-verify_|-cluster_|-verify"] = {
        "name": "cluster", "result": result["ok"], "changes": {}, "__run_num__": run, "__id__": "verify",
        "comment": f"{s['critical']} critical, {s['error']} error(s), {s['warning']} warning(s); "
                   f"{s['nodes']} node(s), {s['domains']} domain(s) running",
        "__sls__": "xencluster.verify",
    }  # fmt: skip
    return {"data": {"xencluster.verify": states}, "outputter": "highstate", "retcode": result["retcode"]}


def _check_verify_args(timeout, guests, out):
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 600):
        raise SaltInvocationError(f"timeout must be a whole number of seconds from 1 to 600: {timeout!r}")
    if not isinstance(guests, bool):
        raise SaltInvocationError(f"guests must be True or False: {guests!r}")
    if out not in (None, "highstate"):
        raise SaltInvocationError(f"out must be 'highstate' or omitted: {out!r}")


def verify(tgt=None, tgt_type="glob", timeout=None, guests=True, out=None):
    """
    Check the whole cluster against its model in one round of parallel calls.

    1. The model: the pillar ``xencluster`` that the master compiles for the
       first minion (sorted) matched by ``tgt``/``tgt_type`` (default: every
       accepted key) that has one (``pillar.show_pillar``: the minion need not
       be up), validated by ``xencluster_model.validate`` loaded on the
       master (the extension must be installed or synced there:
       ``salt-run saltutil.sync_modules``). A bad model (or bad arguments)
       returns ``{"ok": False, "retcode": 1, "error": <every problem by key
       path>}``; nothing is published.
    2. ONE publish of ``xencluster_node.report`` to every dom0 of the model.
    3. With ``guests`` (default), ONE publish of ``xencluster_md.status`` to
       the minions of the guests seen running (minion id = guest name).

    Returns plain data (``--out=json``/``yaml`` work)::

        {"ok": no critical or error finding,
         "retcode": 0 | 1 (an error finding) | 2 (a critical one),
         "findings": [{"code", "severity", "node", "guest", "leg", "message"}, ...],
         "guests": {domain name: [nodes it runs on]},
         "summary": {"critical": n, "error": n, "warning": n, "codes": {code: n},
                     "nodes": n, "guests": n (in the model), "domains": n (running),
                     "model_from": minion id whose pillar gave the model,
                     "operations": [runner operations running now]}}

    ``salt-run`` exits with ``retcode`` (it reads that key of the return;
    ``__context__["retcode"]`` is set too, which marks the job unsuccessful
    in the job cache and on the event bus). The codes are listed in the
    module docstring and the README. ``out=highstate`` returns the findings
    as states for the highstate outputter (``{"data", "outputter",
    "retcode"}``, as ``state.orchestrate`` does); ``--out=highstate`` alone
    cannot render the plain return.

    Where each guest was seen is kept in the master's cache for later runs
    (``_remember``/``_last_seen``, bank ``xencluster/last_seen``).

    The runner's own operation journal (bank ``xencluster/ops``, no publish)
    is read too: a running operation whose owner process is gone is an
    ``EOPINTERRUPTED`` finding (what to run to finish or clean it up), one
    whose owner runs is listed in ``summary["operations"]`` (``{"op",
    "verb", "title", "step", "pid", "host", "started", "alive"}``; ``None``
    when the journal cannot be read).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.verify
        salt-run xencluster.verify tgt=node1 timeout=60 guests=False --out=json
        salt-run xencluster.verify out=highstate
    """
    try:
        _check_verify_args(timeout, guests, out)
        source, raw = _pillar_model(tgt or "*", tgt_type)
        model = _validate(raw)
    except (SaltInvocationError, CommandExecutionError) as exc:
        # Returned, not raised: salt-run exits 0 on a raised SaltInvocationError (a TypeError).
        __context__["retcode"] = 1
        return {"ok": False, "retcode": 1, "error": str(exc), "findings": [], "guests": {}, "summary": {}}
    timeout = timeout or DEFAULT_VERIFY_TIMEOUT
    client = salt.client.LocalClient(__opts__["conf_file"])
    dom0s = sorted(spec["minion"] for spec in model["nodes"].values())
    reports = _publish(client, dom0s, NODE_FUN, timeout)
    raid = None
    if guests:
        asked = running_guests(model, located_guests(model, reports))
        # Only guests with an accepted key: a publish that matches no minion prints a notice
        # on stdout (breaking --out=json); a guest without a key simply did not answer.
        keyed = _accepted(asked)
        answers = _publish(client, [g for g in asked if g in keyed], MD_FUN, timeout)
        raid = {guest: answers.get(guest) for guest in asked}  # no key, no return: did not answer
    found, located = _evaluate(model, reports, raid)
    interrupted, operations = _op_findings()  # the runner's own journal: no publish
    found = sorted(found + interrupted, key=_sort_key)
    _remember(model, reports)
    result = {
        "ok": not any(f["severity"] in (CRITICAL, ERROR) for f in found),
        "retcode": retcode(found),
        "findings": found,
        "guests": located,
        "summary": dict(summarize(found, located, model), model_from=source, operations=operations),
    }
    for f in found:
        if f["code"] == ECLUSTERDOUBLERUN:
            log.error("xencluster: %s", f["message"])
    if result["retcode"]:
        __context__["retcode"] = result["retcode"]
    return _as_highstate(result) if out == "highstate" else result


def status(tgt=None, tgt_type="glob", timeout=None, guests=True, out=None):
    """
    An alias of ``verify``: same arguments, same return, same exit status.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.status
        salt-run xencluster.status guests=False --out=yaml
    """
    return verify(tgt=tgt, tgt_type=tgt_type, timeout=timeout, guests=guests, out=out)


# --- monitor: verify on a schedule, one event per serious finding; where guests were seen ----

ALERT_BASE = "xencluster/alert"
# Not a finding of the cluster: the check itself could not run (bad model, bad argument).
EMONITORFAILED = "EMONITORFAILED"
ALERT_FIELDS = ("code", "severity", "message", "node", "guest", "leg")
LAST_SEEN_BANK = "xencluster/last_seen"
LAST_SEEN_KEY = "guests"


def _seen_by_node(model, reports):
    """``{node: [guest]}`` of the dom0s of the model whose domain list is known from ``reports``."""
    known = _node_reports(model, reports or {}, [])  # its findings are verify's: only the parts are used
    return {
        node: sorted({_base_name(name) for name in parts["domains"] if isinstance(name, str)})
        for node, parts in known.items()
        if isinstance(parts["domains"], dict)
    }


def _merge_last_seen(previous, seen, nodes, now):
    """
    The new last_seen record (pure): the nodes in ``seen`` replace what they told before.

    ``previous`` is the stored record (anything else counts as none), ``seen``
    ``{node: [guest]}`` of the nodes whose domains are known now, ``nodes``
    the nodes of the model. A node of the model that did not tell this time
    keeps its earlier entries: a dead node's guests stay remembered. Entries
    of a node no longer in the model are dropped.
    """
    old = previous.get("guests") if isinstance(previous, dict) else None
    guests = {}
    for guest, where in (old if isinstance(old, dict) else {}).items():
        for node in where if isinstance(where, list) else []:
            if isinstance(node, str) and node in nodes and node not in seen:
                guests.setdefault(guest, set()).add(node)
    for node, names in seen.items():
        for guest in names:
            guests.setdefault(guest, set()).add(node)
    return {"at": int(now), "guests": {g: sorted(n) for g, n in sorted(guests.items())}, "nodes": sorted(seen)}


def _last_seen():
    """
    Where each guest was last seen, from the master's cache; ``{}`` when nothing is stored.

    Bank ``xencluster/last_seen``, key ``guests``: ``{"at": <unix time of the
    last run in which a dom0 told its domains>, "guests": {guest: [node,
    ...]}, "nodes": [the nodes that told in that run]}``. Written by every
    ``verify``/``status``/``monitor`` run (``_remember``); a guest listed on
    a node outside ``nodes`` was seen there by an earlier run, the last one
    in which that node told. Domains are listed by guest name (an ``xl
    migrate`` copy under its guest's name), unknown ones too. A cache that
    cannot be read raises ``SaltCacheError``: "unknown" is not "nothing".
    """
    record = salt.cache.factory(__opts__).fetch(LAST_SEEN_BANK, LAST_SEEN_KEY)
    return record if isinstance(record, dict) and isinstance(record.get("guests"), dict) else {}


def _remember(model, reports):
    """
    Merge where this run saw each guest into the last_seen record; returns the record stored, or None.

    Nothing is written when no dom0 told its domains. Two runs at once: the
    last one to write wins, and each merged everything known before it.
    """
    seen = _seen_by_node(model, reports)
    if not seen:
        return None
    try:
        record = _merge_last_seen(_last_seen(), seen, set(model["nodes"]), time.time())
        salt.cache.factory(__opts__).store(LAST_SEEN_BANK, LAST_SEEN_KEY, record)
    except SaltCacheError as exc:  # a side record: the check it belongs to goes on
        log.warning("xencluster: could not keep where the guests were seen: %s", exc)
        return None
    return record


def _check_min_severity(value):
    if not isinstance(value, str) or value not in SEVERITIES:
        raise SaltInvocationError(f"min_severity must be one of {', '.join(SEVERITIES)}: {value!r:.120}")
    return value


def _serious(found, min_severity):
    """The findings at or above ``min_severity`` (critical is the highest)."""
    limit = SEVERITIES.index(min_severity)
    return [f for f in found if SEVERITIES.index(f["severity"]) <= limit]


def _fire_alert(alert):
    """One event ``xencluster/alert/<code>`` (the codes are constants: a safe tag)."""
    _fire_tag(f"{ALERT_BASE}/{alert['code']}", alert)


def _monitor_failed(message, at):
    """monitor's return when the check could not run; EMONITORFAILED is fired so a blind monitor is heard."""
    alert = {"code": EMONITORFAILED, "severity": ERROR, "message": message, "node": None, "guest": None,
             "leg": None, "at": at}  # fmt: skip
    _fire_alert(alert)
    __context__["retcode"] = 1
    return {"ok": False, "retcode": 1, "error": message, "at": at, "summary": {}, "alerts": [alert]}


def monitor(tgt=None, tgt_type="glob", timeout=None, guests=True, min_severity="error"):
    """
    Run ``verify`` and fire one event ``xencluster/alert/<code>`` per finding at or above ``min_severity``.

    Meant for the master's ``schedule`` (every 60 s, say), with a reactor on
    ``xencluster/alert/*`` (examples: ``salt/xencluster/files/master.d/
    xencluster-monitor.conf`` and ``salt/reactor/xencluster_alert.sls``).
    ``tgt``, ``tgt_type``, ``timeout`` and ``guests`` are ``verify``'s;
    ``min_severity`` is ``critical``, ``error`` (default) or ``warning``.

    Each event's data: ``{"code", "severity", "message", "node", "guest",
    "leg" (None where it does not apply), "at": <unix time of the check>}``.

    No de-duplication: every run fires an event for every serious finding,
    for as long as it lasts. That keeps the monitor stateless (a master
    restart or a lost event hides nothing) and bounds the delay: a condition
    such as a double run is alerted by the next run, within one period. The
    rate is the number of serious findings per period; to quieten it, raise
    ``min_severity`` or the period, or de-duplicate where the alerts end up
    (a finding is identified by ``code``, ``node``, ``guest``, ``leg``).

    When the check cannot run at all (no model, a bad model, a bad argument)
    nothing is published and ``xencluster/alert/EMONITORFAILED`` (severity
    error) is fired whatever ``min_severity`` is: a monitor that cannot look
    must not look like a healthy cluster. The return is then ``{"ok": False,
    "retcode": 1, "error", "at", "summary": {}, "alerts": [that alert]}``.

    Returns ``{"ok", "retcode" (as verify: 0, 1 or 2), "at", "min_severity",
    "summary": {"critical": n, "error": n, "warning": n} (every finding),
    "alerts": [the data of each event fired]}``. Like ``verify``, every run
    keeps where each guest was seen (``_last_seen``).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.monitor
        salt-run xencluster.monitor min_severity=critical timeout=20 guests=False
    """
    try:
        _check_min_severity(min_severity)
    except SaltInvocationError as exc:
        return _monitor_failed(str(exc), int(time.time()))
    result = verify(tgt=tgt, tgt_type=tgt_type, timeout=timeout, guests=guests)
    at = int(time.time())
    if "error" in result:
        return _monitor_failed(result["error"], at)
    alerts = [dict({k: f[k] for k in ALERT_FIELDS}, at=at) for f in _serious(result["findings"], min_severity)]
    for alert in alerts:
        _fire_alert(alert)
    return {
        "ok": result["ok"],
        "retcode": result["retcode"],
        "at": at,
        "min_severity": min_severity,
        "summary": {s: result["summary"][s] for s in SEVERITIES},
        "alerts": alerts,
    }


# --- drained nodes: the master's cache ----------------------------------------------------

DRAINED_BANK = "xencluster/drained"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")  # xencluster_model's NAME: guests and nodes
_NAME_TEXT = "1-31 of a-z 0-9 '-', starting with a letter or digit"


def _check_name(value, what):
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise SaltInvocationError(f"invalid {what} name {value!r}: {_NAME_TEXT} (quote a name made of digits)")
    return value


def _drained():
    """
    The drained nodes, sorted: the keys of bank ``xencluster/drained`` in the master's cache.

    A drained node takes no guest: ``migrate`` refuses it as a target. The
    bank lives in the master's cache (``salt.cache.factory(__opts__)``, by
    default files under ``<cachedir>/xencluster/drained``), so it survives a
    master restart. ``_set_drained`` writes it (``evacuate`` and ``undrain``;
    ``drained`` lists the marks with their time).
    """
    return sorted(salt.cache.factory(__opts__).list(DRAINED_BANK))


def _set_drained(node, flag):
    """
    Mark ``node`` drained (``flag`` True: it takes no guest) or not; idempotent.

    The key is the node name; its value ``{"drained": True, "since": <unix
    time>}``. Returns True when the mark changed.
    """
    _check_name(node, "node")
    if not isinstance(flag, bool):
        raise SaltInvocationError(f"flag must be True or False: {flag!r}")
    cache = salt.cache.factory(__opts__)
    was = cache.contains(DRAINED_BANK, node)
    if flag and not was:
        cache.store(DRAINED_BANK, node, {"drained": True, "since": int(time.time())})
    elif was and not flag:
        cache.flush(DRAINED_BANK, node)
    return was != flag


# --- safety: one lock per guest and per node, the operation journal (the master's cache) ---------
#
# salt-run runs a runner in its own process: a salt-run killed with SIGKILL leaves its locks and its
# journal record behind (its xl migrate may still complete on the minion). Each lock and record
# names its owner (op id, verb, pid, host, start); an owner whose process is gone from this host is
# stale: its operation was interrupted. Check-and-set of the locks is made atomic across the runner
# processes of this master (and the threads of evacuate) by an exclusive flock on a file under the
# master's cachedir; the records themselves live in the master cache (salt.cache.Cache: ``_ops_cache``).

LOCKS_BANK = "xencluster/locks"  # key "guest.<name>" or "node.<name>": the owner
OPS_BANK = "xencluster/ops"  # key: the op id; the journal record
OPS_FLOCK = "xencluster-ops.flock"  # <cachedir>/<this>: the critical section of lock check-and-set
OPS_KEEP = 50  # ended operations kept in the journal (the newest); running ones are always kept
OP_EVENT_BASE = "xencluster/op"
OP_RUNNING, OP_FINISHED, OP_FAILED, OP_INTERRUPTED = "running", "finished", "failed", "interrupted"
OP_STEPS_KEPT = 40  # the last steps kept in a record (restore may have many)
NODE_VERBS = ("evacuate", "recover", "restore")  # their subject is a node; the others' a guest
# The parent operation of the migrations an evacuate runs (its worker threads copy the context).
_OP_PARENT = contextvars.ContextVar("xencluster_op_parent", default=None)


def _ops_cache():
    """The master cache of the locks and the journal: ``salt.cache.Cache``, never the in-process MemCache.

    ``salt.cache.factory`` returns a MemCache when ``memcache_expire_seconds`` is set; its reads
    would not see a lock another runner process has just taken.
    """
    return salt.cache.Cache(__opts__)


def _lock_key(kind, name):
    """``guest.web1``, ``node.node1``: names are model NAMEs (no dot), so the key is unambiguous."""
    return f"{kind}.{name}"


def _proc_stat(pid):
    """``(state, start time in clock ticks after boot)`` of process ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rpartition(")")[2].split()  # the command name may hold spaces and ')'
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner_fields():
    """This process as the owner of a lock or record: pid, its start time (against pid reuse), host."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {"pid": pid, "pid_start": stat[1] if stat else None, "host": socket.gethostname()}


def _alive(owner):
    """
    Whether the owner process of a lock or record still runs: True, False (gone: stale) or None.

    None: it ran on another host (a master cache shared between masters), which cannot be told from
    here; it counts as alive. Gone: no such pid on this host, a zombie, or a pid since reused by a
    process that started at another time (``pid_start``, from /proc).
    """
    if not isinstance(owner, dict):
        return False
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc: the pid exists
        return True
    state, start = stat
    return state not in ("Z", "X") and owner.get("pid_start") in (None, start)


def _when(ts):
    """``2026-11-24 12:00:01 UTC`` of a unix time."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


@contextlib.contextmanager
def _ops_lock():
    """The critical section of the locks and the journal: an exclusive flock on ``<cachedir>/xencluster-ops.flock``.

    flock locks belong to an open file: two runner processes, or two threads each with its own
    open, exclude each other; the kernel drops it when its holder dies (even by SIGKILL).
    """
    os.makedirs(__opts__["cachedir"], exist_ok=True)
    fd = os.open(os.path.join(__opts__["cachedir"], OPS_FLOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _op_records(cache):
    """``{op id: record}`` of the journal (records of another shape are skipped)."""
    out = {}
    for key in cache.list(OPS_BANK):
        record = cache.fetch(OPS_BANK, key)
        if isinstance(record, dict) and record.get("op") == key:
            out[key] = record
    return out


def _prune_ops(cache, records, keep=OPS_KEEP):
    """Drop the ended records but the ``keep`` newest (by end time); running ones stay. The ids dropped."""
    ended = sorted((r for r in records.values() if r.get("status") != OP_RUNNING),
                   key=lambda r: (r.get("ended") or 0, r["op"]), reverse=True)  # fmt: skip
    dropped = [r["op"] for r in ended[keep:]]
    for op_id in dropped:
        cache.flush(OPS_BANK, op_id)
    return dropped


def _new_op_id(taken):
    """A Salt jid (``salt.utils.jid.gen_jid``, ``<UTC time>_<pid>``) not in ``taken``."""
    op_id = salt.utils.jid.gen_jid(dict(__opts__, unique_jid=True))
    while op_id in taken:
        time.sleep(0.000001)
        op_id = salt.utils.jid.gen_jid(dict(__opts__, unique_jid=True))
    return op_id


def _holder(cache, key, lock):
    """What a busy answer says of the holder of ``key``: the lock's owner, titled by its journal record."""
    record = cache.fetch(OPS_BANK, lock.get("op")) if isinstance(lock.get("op"), str) else None
    title = (record or {}).get("title") or lock.get("title") or lock.get("verb")
    kind, _, name = key.partition(".")
    return {"key": key, "kind": kind, "name": name, "op": lock.get("op"), "verb": lock.get("verb"), "title": title,
            "pid": lock.get("pid"), "host": lock.get("host"), "started": lock.get("started"),
            "step": (record or {}).get("step"), "alive": _alive(lock)}  # fmt: skip


def _busy_message(holder):
    text = (f"busy: {holder['name']} is locked by {holder['title']} (op {holder['op']}, pid {holder['pid']} on "
            f"{holder['host']}, since {_when(holder['started'])})")  # fmt: skip
    if holder["alive"] is None:
        text += (f"; it ran on another host: whether it still runs cannot be told here (once it is certainly "
                 f"gone: salt-run cache.flush {LOCKS_BANK} {holder['key']})")  # fmt: skip
    return text


def _held(cache, keys, op_id=None):
    """The first of ``keys`` held by a live operation other than ``op_id``: its holder (with ``message``), or None."""
    for key in keys:
        lock = cache.fetch(LOCKS_BANK, key)
        if not isinstance(lock, dict) or not lock or lock.get("op") == op_id:
            continue
        holder = _holder(cache, key, lock)
        if holder["alive"] is not False:
            holder["message"] = _busy_message(holder)
            return holder
    return None


def _busy(keys):
    """A dry run's look at ``keys`` (no lock taken, nothing written): the live holder, or None."""
    try:
        return _held(_ops_cache(), keys)
    except SaltCacheError as exc:
        log.warning("xencluster: cannot read the locks %s: %s", ", ".join(keys), exc)
        return None


def _store_locks(cache, op, keys, taken_over):
    owner = {k: op[k] for k in ("op", "verb", "title", "pid", "pid_start", "host")}
    for key in keys:
        lock = cache.fetch(LOCKS_BANK, key)
        if isinstance(lock, dict) and lock and lock.get("op") != op["op"]:
            taken_over.append({"key": key, "op": lock.get("op"), "verb": lock.get("verb"), "pid": lock.get("pid"),
                               "host": lock.get("host"), "started": lock.get("started")})  # fmt: skip
            log.warning("xencluster: %s: the lock of %s (op %s, pid %s on %s) is stale: taken over by op %s", key,
                        lock.get("title"), lock.get("op"), lock.get("pid"), lock.get("host"), op["op"])
        cache.store(LOCKS_BANK, key, dict(owner, started=int(time.time())))


def _rerun(verb, args):
    """The command that finishes or cleans up an interrupted operation: the verb run again, same subject."""
    transport = [f"transport={args['transport']}"] if args.get("transport", "ssh") != "ssh" else []
    if verb == "migrate":
        return " ".join(["salt-run xencluster.migrate", args["guest"]] + ([args["target"]] if args.get("target")
                                                                           else []) + transport)  # fmt: skip
    if verb == "evacuate":
        return " ".join([f"salt-run xencluster.evacuate {args['node']}"] + transport)
    if verb == "recover":
        return f"salt-run xencluster.recover {args['node']} confirm_dead={args['node']}"
    if verb == "backup":
        return "salt-run xencluster.backup " + ("all=True" if args.get("guest") is None else args["guest"])
    if verb == "restore_backup":
        extra = "".join(f" {k}={args[k]}" for k in ("backup", "into", "node") if args.get(k))
        return f"salt-run xencluster.restore_backup {args['guest']} {args['disk']}{extra} confirm=True"
    if verb == "provision":
        return f"salt-run xencluster.provision {args['guest']}"
    if verb == "deprovision":
        return f"salt-run xencluster.deprovision {args['guest']} confirm=True"
    return f"salt-run xencluster.{verb} {args['node']}"


def _begin(verb, subject, args, keys, title):
    """
    Start an operation: ``(op, None)``, its locks taken and its journal record written; or ``(None, refusal)``.

    Under the flock: a key held by a live operation refuses (``refusal`` is the holder, with
    ``message``: busy); a stale one is taken over (``op["taken_over"]``). The ended records
    beyond ``OPS_KEEP`` are pruned. ``op`` is the record (bank ``xencluster/ops``, key
    ``op["op"]``): ``{"op", "verb", "subject", "title", "args", "keys", "parent", "node",
    "guest", "rerun", "pid", "pid_start", "host", "started", "updated", "status", "step",
    "steps", "detail", "ended", "message", "note", "taken_over"}``. A cache that cannot be used
    refuses too (``refusal`` without ``op``).
    """
    node_verb = verb in NODE_VERBS
    op = None
    try:
        cache = _ops_cache()
        with _ops_lock():
            holder = _held(cache, keys)
            if holder is not None:
                return None, holder
            records = _op_records(cache)
            _prune_ops(cache, records)
            now = int(time.time())
            op = {"op": _new_op_id(records), "verb": verb, "subject": subject, "title": title, "args": args,
                  "keys": list(keys), "parent": _OP_PARENT.get(), "node": subject if node_verb else None,
                  "guest": None if node_verb or subject == "all" else subject.split("/")[0],
                  "rerun": _rerun(verb, args), **_owner_fields(), "started": now, "updated": now,
                  "status": OP_RUNNING, "step": "started", "steps": [{"step": "started", "at": now}], "detail": {},
                  "ended": None, "message": None, "note": None, "taken_over": []}  # fmt: skip
            cache.store(OPS_BANK, op["op"], op)  # the record first: a lock never exists without its record
            _store_locks(cache, op, keys, op["taken_over"])
            cache.store(OPS_BANK, op["op"], op)
    except (SaltCacheError, OSError) as exc:
        log.error("xencluster.%s: cannot take the lock of %s: %s", verb, subject, exc)
        if op is not None:  # nothing ran: no record must be left to look interrupted later
            _end(op, {"result": False, "message": f"cannot lock {subject}: {exc}"})
        return None, {"message": f"cannot lock {subject} in the master cache: {exc}"}
    return op, None


def _save_op(op):
    """Write ``op``'s record; a failure is only logged (the journal must not stop the operation)."""
    op["updated"] = int(time.time())
    try:
        _ops_cache().store(OPS_BANK, op["op"], op)
    except SaltCacheError as exc:
        log.warning("xencluster: cannot write the journal record of op %s: %s", op["op"], exc)


def _op_step(op, step, **detail):
    """Record that ``op`` reached ``step`` (``detail`` is merged into ``op["detail"]``); no-op without op."""
    if op is None:
        return
    op["step"] = step
    op["steps"] = (op["steps"] + [dict(detail, step=step, at=int(time.time()))])[-OP_STEPS_KEPT:]
    op["detail"].update(detail)
    _save_op(op)


def _release_locks(cache, op_id, keys):
    """Flush those of ``keys`` that ``op_id`` holds (under the flock)."""
    with _ops_lock():
        for key in keys:
            lock = cache.fetch(LOCKS_BANK, key)
            if isinstance(lock, dict) and lock.get("op") == op_id:
                cache.flush(LOCKS_BANK, key)


def _lock(op, keys):
    """Take ``keys`` for ``op`` in mid-run (a guest of recover, restore, backup all=True): a refusal, or None."""
    try:
        cache = _ops_cache()
        with _ops_lock():
            holder = _held(cache, keys, op["op"])
            if holder is not None:
                return holder
            _store_locks(cache, op, keys, op["taken_over"])
    except (SaltCacheError, OSError) as exc:
        log.error("xencluster.%s: cannot lock %s: %s", op["verb"], ", ".join(keys), exc)
        return {"message": f"cannot lock {', '.join(keys)} in the master cache: {exc}"}
    op["keys"] = sorted(set(op["keys"]) | set(keys))
    _save_op(op)
    return None


def _unlock(op, keys):
    """Release ``keys`` taken by ``_lock``; a failure is logged (a stale lock is taken over later)."""
    try:
        _release_locks(_ops_cache(), op["op"], keys)
    except (SaltCacheError, OSError) as exc:
        log.warning("xencluster: cannot release %s of op %s: %s", ", ".join(keys), op["op"], exc)
    op["keys"] = [k for k in op["keys"] if k not in keys]
    _save_op(op)


def _gate(op, keys, dry_run):
    """The lock of a guest in mid-run: a dry run only looks (``_busy``), a real run takes it (``_lock``)."""
    return _busy(keys) if dry_run or op is None else _lock(op, keys)


def _end(op, result):
    """Close ``op``: finished (``result["result"]``) or failed (no result: it raised); then release its locks."""
    if op is None:
        return
    ok = isinstance(result, dict) and result.get("result") is True
    message = result.get("message") if isinstance(result, dict) else "the runner raised an exception (master log)"
    op.update(status=OP_FINISHED if ok else OP_FAILED, ended=int(time.time()), message=message)
    _op_step(op, op["status"])
    try:
        _release_locks(_ops_cache(), op["op"], op["keys"])
    except (SaltCacheError, OSError) as exc:
        log.warning("xencluster: cannot release the locks of op %s: %s", op["op"], exc)


def _interrupted_ops(verb, subject, op=None):
    """The journal's running records of ``verb`` on ``subject`` whose owner is gone, oldest first (read only)."""
    try:
        records = _op_records(_ops_cache())
    except SaltCacheError as exc:
        log.warning("xencluster: cannot read the operation journal: %s", exc)
        return []
    mine = (op or {}).get("op")
    return sorted((r for r in records.values() if r.get("status") == OP_RUNNING and r.get("verb") == verb
                   and r.get("subject") == subject and r["op"] != mine and _alive(r) is False),
                  key=lambda r: r["op"])  # fmt: skip


def _interrupted_text(record):
    """``migrate web1->node2 (op ..., pid 1234 on master1, started ..., last step ... at ...)``."""
    return (f"{record.get('title')} (op {record.get('op')}, pid {record.get('pid')} on {record.get('host')}, "
            f"started {_when(record.get('started'))}, last step {record.get('step')} at "
            f"{_when(record.get('updated'))})")  # fmt: skip


def _earlier(records, dry_run, op):
    """Tell of the interrupted operations a verb found (event, progress; not in a dry run): their summaries."""
    out = []
    for record in records:
        out.append({"op": record["op"], "title": record.get("title"), "step": record.get("step"),
                    "started": record.get("started"), "pid": record.get("pid"), "host": record.get("host")})
        if dry_run:
            continue
        _fire_tag(f"{OP_EVENT_BASE}/{record['op']}/interrupted", dict(out[-1], verb=record.get("verb"),
                  subject=record.get("subject"), by=op["op"]))  # fmt: skip
        _progress(f"found the interrupted {_interrupted_text(record)}: its owner is gone")
    return out


def _close_op(record, status, note, op):
    """Close an interrupted record (``finished`` or ``interrupted``) with ``note``; its leftover locks released."""
    record.update(status=status, note=note, ended=int(time.time()), closed_by=op["op"],
                  message=record.get("message") or note)  # fmt: skip
    record["steps"] = (record.get("steps") or []) + [{"step": f"closed: {status}", "at": record["ended"],
                                                      "by": op["op"]}]  # fmt: skip
    _save_op(record)
    try:
        _release_locks(_ops_cache(), record["op"], record.get("keys") or [])
    except (SaltCacheError, OSError) as exc:
        log.warning("xencluster: cannot release the locks of op %s: %s", record["op"], exc)
    _fire_tag(f"{OP_EVENT_BASE}/{record['op']}/closed", {"op": record["op"], "title": record.get("title"),
                                                         "status": status, "note": note, "by": op["op"]})
    _progress(f"{record.get('title')} (op {record['op']}) closed: {note}")


def _close_earlier(records, note, op):
    """A re-run that takes over the work of earlier interrupted records of its verb closes them with ``note``."""
    for record in records:
        _close_op(record, OP_INTERRUPTED, f"interrupted at {record.get('step')}; {note}", op)


def _op_findings():
    """EOPINTERRUPTED per running record whose owner is gone; the running operations alive (verify's summary)."""
    try:
        records = _op_records(_ops_cache())
    except SaltCacheError as exc:
        log.warning("xencluster.verify: cannot read the operation journal: %s", exc)
        return [], None
    found, live = [], []
    for record in sorted(records.values(), key=lambda r: r["op"]):
        if record.get("status") != OP_RUNNING:
            continue
        alive = _alive(record)
        if alive is False:
            found.append(_finding(EOPINTERRUPTED, f"operation {_interrupted_text(record)} was interrupted: its "
                                  f"owner is gone; re-run `{record.get('rerun')}` to finish or clean up",
                                  node=record.get("node"), guest=record.get("guest")))  # fmt: skip
        else:
            live.append({"op": record["op"], "verb": record.get("verb"), "title": record.get("title"),
                         "step": record.get("step"), "pid": record.get("pid"), "host": record.get("host"),
                         "started": record.get("started"), "alive": alive})  # fmt: skip
    return found, live


def ops(limit=20):
    """
    The operation journal and the locks, from the master cache (read only).

    Returns ``{"running": [records whose owner runs], "interrupted": [running records whose
    owner is gone: what verify reports as EOPINTERRUPTED], "ended": [the ``limit`` newest ended
    records], "locks": {key: owner with "alive"}}``. Each verb that changes the cluster (migrate,
    evacuate, recover, restore, backup, restore_backup; not in a dry run) writes a record
    (bank ``xencluster/ops``) and locks the guests and nodes it works on (bank
    ``xencluster/locks``); the last 50 ended records are kept.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.ops
        salt-run xencluster.ops limit=5 --out=json
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= OPS_KEEP:
        __context__["retcode"] = 1
        return {"result": False, "retcode": 1, "message": f"limit must be a whole number from 0 to {OPS_KEEP}: "
                f"{limit!r}"}  # fmt: skip
    try:
        cache = _ops_cache()
        records = _op_records(cache)
        locks = {key: cache.fetch(LOCKS_BANK, key) for key in sorted(cache.list(LOCKS_BANK))}
    except SaltCacheError as exc:
        __context__["retcode"] = 1
        return {"result": False, "retcode": 1, "message": f"cannot read the operation journal: {exc}"}
    running = [r for r in records.values() if r.get("status") == OP_RUNNING]
    ended = sorted((r for r in records.values() if r.get("status") != OP_RUNNING),
                   key=lambda r: (r.get("ended") or 0, r["op"]), reverse=True)  # fmt: skip
    return {
        "result": True, "retcode": 0,
        "running": sorted((r for r in running if _alive(r) is not False), key=lambda r: r["op"]),
        "interrupted": sorted((r for r in running if _alive(r) is False), key=lambda r: r["op"]),
        "ended": ended[:limit],
        "locks": {key: dict(lock, alive=_alive(lock)) for key, lock in locks.items() if isinstance(lock, dict)},
    }  # fmt: skip


# --- migrate: one guest to the other node of its pair, live ----------------------------------

INFO_FUN = "xencluster_xl.info"
MIGRATE_FUN = "xencluster_xl.migrate"
PRECHECK_FUNS = (NODE_FUN, INFO_FUN)  # ONE publish: the minion runs both, one answer
DEFAULT_MIGRATE_TIMEOUT = 1800
MAX_MIGRATE_TIMEOUT = 86400
TRANSPORTS = ("ssh", "stream")  # what xencluster_xl.migrate implements
STREAM_RECEIVE_FUN = "xencluster_xl.stream_receive"
STREAM_STOP_FUN = "xencluster_xl.stream_stop"
STREAM_PORT_FIRST = 31000  # listeners on the target's SAN address: 31000..31099
STREAM_PORT_COUNT = 100
STREAM_ACCEPT_TIMEOUT = 60  # seconds the listener waits for the source's connection
LIVE_TYPES = ("pvh", "hvm")
STOPPED = ("shutdown", "crashed", "dying", "gone")  # as xencluster_xl: nothing runs
PAUSED = "paused"
EVENT_BASE = "xencluster/migrate"
MIB = 1024**2
CHECKS = ("runs_once", "target_in_pair", "target_not_drained", "legs_on_target", "target_memory",
          "migratable", "xen_compatible")  # fmt: skip


def _check(name, ok, message):
    return {"check": name, "ok": bool(ok), "message": message}


_TRACEBACK = "Traceback (most recent call last):"
# A multi-function publish runs a function the minion has not loaded by calling its name (a str)
# through the direct_call executor (salt.minion._execute_job_function): this is what comes back.
_NAME_CALLED = "TypeError: 'str' object is not callable"


def _raised(value):
    """The last line of the traceback a minion returns for a function that raised, or None."""
    if isinstance(value, str) and value.startswith(_TRACEBACK) and value.strip():
        return value.strip().splitlines()[-1]
    return None


def _not_loaded(value):
    """True for a multi-function answer of a function the minion has not loaded."""
    if _raised(value) != _NAME_CALLED:
        return False
    frames = [line for line in value.splitlines() if line.lstrip().startswith("File ")]
    return bool(frames) and "direct_call.py" in frames[-1]  # raised by the executor, not inside a function


def _why_not(node, minion, fun, kind, value):
    """One line: why ``fun`` told nothing about ``node``."""
    if kind == "no_answer":
        return f"{node} (minion {minion}) did not answer"
    if kind == "unavailable":
        return (f"{node} (minion {minion}) could not report: {_short(value)} (not a dom0, or the extension "
                "is not synced: saltutil.sync_modules)")  # fmt: skip
    return f"{node}: {fun} failed: {_short(_raised(value) or value)}"


def _multi_parts(data, funs):
    """{fun: (kind, value)} of one ``full_return`` answer to a multi-function publish."""
    if data is None or data is False or not isinstance(data, dict) or data.get("out") == "no_return":
        return {fun: ("no_answer", None) for fun in funs}
    ret, codes = data.get("ret"), data.get("retcode", 0)
    if isinstance(ret, list):  # multifunc_ordered: True on the minion
        ret = dict(zip(funs, ret))
        codes = dict(zip(funs, codes)) if isinstance(codes, list) else codes
    if not isinstance(ret, dict):
        return {fun: ("error", ret) for fun in funs}
    out = {}
    for fun in funs:
        value = ret.get(fun)
        code = codes.get(fun, 1) if isinstance(codes, dict) else codes  # no retcode: it raised
        if fun not in ret:
            out[fun] = ("error", "missing from the answer")
        elif _unavailable(fun, value):
            out[fun] = ("unavailable", value)
        elif _not_loaded(value):
            out[fun] = ("unavailable", f"'{fun}' is not loaded there")
        elif code or not isinstance(value, dict):
            out[fun] = ("error", value)
        else:
            out[fun] = ("ok", value)
    return out


def node_facts(node, minion, data):
    """
    What one pre-check answer tells of ``node`` (pure).

    Returns ``{"domains", "links", "info"}`` (None: unknown) and ``"why"``:
    ``{part: the line saying why it is unknown}``.
    """
    parts = _multi_parts(data, PRECHECK_FUNS)
    facts = {"domains": None, "links": None, "info": None, "why": {}}
    kind, report = parts[NODE_FUN]
    for part in ("domains", "links"):
        if kind != "ok":
            facts["why"][part] = _why_not(node, minion, NODE_FUN, kind, report)
        elif _failed(report.get(part)) or not isinstance(report.get(part), dict):
            facts["why"][part] = f"{node}: cannot read {part}: {_short(_failed(report.get(part)) or 'missing')}"
        else:
            facts[part] = report[part]
    kind, info = parts[INFO_FUN]
    if kind == "ok":
        facts["info"] = info
    else:
        facts["why"]["info"] = _why_not(node, minion, INFO_FUN, kind, info)
    return facts


def _sightings(guest, facts):
    """({node: domain} running under the guest's name, {node: [xl migrate's temporary names]})."""
    plain, moving = {}, {}
    for node, fact in sorted(facts.items()):
        for name, dom in (fact["domains"] or {}).items():
            if name == guest:
                plain[node] = dom
            elif _base_name(name) == guest:
                moving.setdefault(node, []).append(name)
    return plain, moving


def _check_runs_once(guest, pair, facts):
    """(the runs_once check, the source node or None)."""
    plain, moving = _sightings(guest, facts)
    unknown = [fact["why"]["domains"] for _node, fact in sorted(facts.items()) if fact["domains"] is None]
    seen = f" (seen on {', '.join(plain)})" if plain else ""
    if moving:
        names = "; ".join(f"{', '.join(sorted(names))} on {node}" for node, names in sorted(moving.items()))
        return _check("runs_once", False, f"a migration of {guest} is in flight ({names}): wait until it "
                      "ends (salt-run xencluster.verify); nothing is started"), None  # fmt: skip
    if unknown:
        return _check("runs_once", False, f"where {guest} runs is not known{seen}: {'; '.join(unknown)}"), None
    if len(plain) > 1:
        return _check("runs_once", False, f"DOUBLE RUN: {guest} runs on {' and '.join(plain)} at the same "
                      "time: nothing is migrated (salt-run xencluster.verify)"), None  # fmt: skip
    if not plain:
        return _check("runs_once", False, f"{guest} runs on no node of its pair ({', '.join(pair)}): "
                      "nothing to migrate"), None  # fmt: skip
    [(node, dom)] = plain.items()
    if node not in pair:
        return _check("runs_once", False, f"{guest} runs on {node}, outside its pair ({', '.join(pair)})"), None
    if dom.get("state") in STOPPED:
        return _check("runs_once", False, f"{guest} is {dom['state']} on {node}, not running: nothing to "
                      "migrate (destroy it, or restart it where it belongs)"), None  # fmt: skip
    return _check("runs_once", True, f"{guest} runs on {node} only ({dom.get('state')})"), node


def _check_target_in_pair(guest, pair, nodes, source, target):
    if target is None:
        return _check("target_in_pair", False, f"no target: the node {guest} runs on is not known, so neither "
                      "is the other node of its pair")  # fmt: skip
    if target not in nodes:
        return _check("target_in_pair", False, f"{target} is not a node of the model ({', '.join(sorted(nodes))})")
    if target not in pair:
        return _check("target_in_pair", False, f"{target} is not in {guest}'s pair ({', '.join(pair)}): its "
                      "legs are exported to the pair only")  # fmt: skip
    if target == source:
        return _check("target_in_pair", False, f"{guest} already runs on {target}")
    return _check("target_in_pair", True, f"{target} is in {guest}'s pair ({', '.join(pair)})")


def _check_not_drained(target, drained):
    if target is None:
        return _check("target_not_drained", False, "no target")
    if target in drained:
        return _check("target_not_drained", False, f"{target} is drained: it takes no guest")
    return _check("target_not_drained", True, f"{target} is not drained")


def _leg_problem(leg, target, entry):
    """Why the stable path of ``leg`` on ``target`` cannot back the guest there, or None."""
    want = "lv" if leg["node"] == target else "iscsi"
    if entry is None:
        return f"{leg['path']} is missing"
    if entry.get("path") != leg["path"]:
        return f"{leg['lv']} is at {entry.get('path')}, not {leg['path']}"
    if entry.get("kind") != want:
        what = "its LV" if want == "lv" else f"{leg['node']}'s iSCSI LUN"
        return f"{leg['path']} points to {entry.get('target')} ({entry.get('kind')}), not to {what}"
    return None


def _check_legs_on_target(guest, spec, target, fact):
    if target is None or fact is None:
        return _check("legs_on_target", False, "no target" if target is None else f"nothing is known of {target}")
    if fact["links"] is None:
        return _check("legs_on_target", False, f"the stable paths on {target} are not known: {fact['why']['links']}")
    legs = [leg for disk in spec["disks"] for leg in disk["legs"]]
    problems = [p for p in (_leg_problem(leg, target, fact["links"].get(leg["lv"])) for leg in legs) if p]
    if problems:
        return _check("legs_on_target", False, f"on {target}: {'; '.join(problems)}")
    local = sum(1 for leg in legs if leg["node"] == target)
    return _check("legs_on_target", True, f"all {len(legs)} legs of {guest} are at their stable paths on {target} "
                  f"({local} local LV(s), {len(legs) - local} iSCSI LUN(s))")  # fmt: skip


def _guest_memory(spec, dom):
    """(MiB the guest needs, where that figure comes from), or (None, None)."""
    memory = (dom or {}).get("memory")
    if isinstance(memory, int) and not isinstance(memory, bool) and memory > 0:
        return math.ceil(memory / MIB), "its running domain"
    if spec.get("memory"):
        return spec["memory"], "the model"
    return None, None


def _check_memory(guest, spec, dom, target, fact):
    if target is None or fact is None:
        return _check("target_memory", False, "no target" if target is None else f"nothing is known of {target}")
    need, origin = _guest_memory(spec, dom)
    free = (fact["info"] or {}).get("free_memory")
    if fact["info"] is None:
        return _check("target_memory", False, f"the free memory of {target} is not known: {fact['why']['info']}")
    if not isinstance(free, int) or isinstance(free, bool):
        return _check("target_memory", False, f"xl info on {target} has no free_memory: {free!r}")
    if need is None:
        return _check("target_memory", False, f"the memory of {guest} is not known")
    text = f"{target} has {free} MiB free, {guest} needs {need} MiB ({origin})"
    return _check("target_memory", free >= need, text)


def _check_migratable(guest, spec, dom):
    if (dom or {}).get("type"):
        gtype, origin = dom["type"], "its running domain"
    else:
        gtype, origin = spec.get("type"), "the model"
    if gtype == "pv":
        return _check("migratable", False, f"{guest} is a PV guest ({origin}): Debian's Xen is built without "
                      "shadow paging, so a PV guest cannot be live-migrated (Failed to enable logdirty: 95); "
                      "use PVH or HVM")  # fmt: skip
    if gtype not in LIVE_TYPES:
        return _check("migratable", False, f"cannot tell the type of {guest} ({gtype!r}, {origin})")
    return _check("migratable", True, f"{guest} is a {gtype.upper()} guest ({origin}): live-migratable")


def _xen(info):
    """((major, minor), "major.minor<extra>") of an ``xl info``, or (None, None)."""
    major, minor = (info or {}).get("xen_major"), (info or {}).get("xen_minor")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (major, minor)):
        return None, None
    return (major, minor), f"{major}.{minor}{info.get('xen_extra') or ''}"


def _check_xen(source, target, facts):
    if source is None or target is None or target not in facts:
        return _check("xen_compatible", False, "source or target not known")
    versions = {}
    for node in (source, target):
        version, text = _xen(facts[node]["info"])
        if version is None:
            why = facts[node]["why"].get("info") or "xl info has no xen_major/xen_minor"
            return _check("xen_compatible", False, f"the Xen version of {node} is not known: {why}")
        versions[node] = (version, text)
    text = f"{source} runs Xen {versions[source][1]}, {target} Xen {versions[target][1]}"
    if versions[source][0] != versions[target][0]:
        return _check("xen_compatible", False, f"{text}: not the same major.minor")
    return _check("xen_compatible", True, text)


def prechecks(model, guest, target, facts, drained):
    """
    The pre-checks of migrating ``guest`` to ``target`` (None: the other node of its pair); pure.

    ``facts``: ``{node: node_facts(...)}`` of the pair's nodes and the target.
    Returns ``(checks, source, target)``: the checks in the order of
    ``CHECKS``, each ``{"check", "ok", "message"}``; the source is the one node
    the guest runs on (None unless ``runs_once`` passed); the target the one
    given, or the other node of the pair when the source is known.
    """
    spec = model["guests"][guest]
    pair = list(spec["nodes"])
    once, source = _check_runs_once(guest, pair, facts)
    if target is None and source is not None:
        target = next(n for n in pair if n != source)
    dom = (facts.get(source) or {}).get("domains", {}).get(guest) if source else None
    fact = facts.get(target) if target is not None else None
    checks = [
        once,
        _check_target_in_pair(guest, pair, model["nodes"], source, target),
        _check_not_drained(target, drained),
        _check_legs_on_target(guest, spec, target, fact),
        _check_memory(guest, spec, dom, target, fact),
        _check_migratable(guest, spec, dom),
        _check_xen(source, target, facts),
    ]
    return checks, source, target


def _seen(states):
    """``web1 (running) on node2; web1--incoming (paused) on node1``."""
    return "; ".join(", ".join(f"{name} ({state})" for name, state in sorted(names.items())) + f" on {node}"
                     for node, names in sorted(states.items()))  # fmt: skip


def _only(states, node, guest, paused_ok):
    """True when ``guest`` is seen on ``node`` alone, under its own name alone, running (or paused if ok)."""
    if list(states) != [node] or list(states[node]) != [guest]:
        return False
    state = states[node][guest]
    return state not in STOPPED and (state != PAUSED or paused_ok)


def whereabouts(guest, source, target, lists, before=None):
    """
    Where ``guest`` runs after ``xl migrate`` (pure): ``(ok, where, message)``.

    ``lists``: ``{node: list_domains() or None (not known)}`` of the source
    and the target. ``ok``: it runs on the target under its own name, not
    stopped, not paused (unless it was ``before``), and is gone from the
    source. ``where``: the nodes it is seen on (under any of xl migrate's
    names too).
    """
    states = {}
    for node, domains in sorted(lists.items()):
        names = {n: (dom or {}).get("state") for n, dom in (domains or {}).items() if _base_name(n) == guest}
        if names:
            states[node] = names
    where = sorted(states)
    plain = [node for node in where if guest in states[node]]
    unknown = sorted(node for node, domains in lists.items() if domains is None)
    if len(plain) > 1:
        first = target if target in plain else plain[0]
        others = ", ".join(n for n in plain if n != first)
        return False, where, f"{guest} runs on {first} but also on {others}: DOUBLE RUN"
    if unknown:
        told = ", ".join(sorted(set(lists) - set(unknown))) or "any node"
        seen = f"seen: {_seen(states)}" if states else f"not seen on {told}"
        silent = ", ".join(unknown)
        return False, where, f"{silent} did not tell its domains: where {guest} runs is not fully known ({seen})"
    if _only(states, target, guest, before == PAUSED):
        return True, where, f"{guest} runs on {target} ({states[target][guest]}) and is gone from {source}"
    if _only(states, source, guest, True):
        return False, where, f"{guest} still runs on {source}"
    if not states:
        return False, where, f"{guest} runs nowhere: neither on {source} nor on {target}"
    return False, where, f"{guest} is {_seen(states)}"


_PROGRESS_LOCK = threading.Lock()  # evacuate's worker threads share the one jid event


def _progress(message):
    """A line for the user: ``salt-run`` prints it at once (``__jid_event__`` progress)."""
    log.info("xencluster: %s", message)
    jid_event = globals().get("__jid_event__")  # injected by the runner client; absent when imported
    if jid_event is None:
        return
    try:
        with _PROGRESS_LOCK:
            jid_event.fire_event({"message": message}, "progress")
    except ReferenceError:  # a weak proxy left over from an earlier run
        pass


def _fire_tag(tag, data):
    """One event ``tag`` on the master's bus, on a connection of its own (a failure is only logged)."""
    try:
        with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
            bus.fire_event(data, tag)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster: could not fire %s: %s", tag, exc)


def _fire(guest, step, data):
    """One event ``xencluster/migrate/<guest>/<step>``."""
    _fire_tag(f"{EVENT_BASE}/{guest}/{step}", data)


def _check_seconds(value, what, high):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise SaltInvocationError(f"{what} must be a whole number of seconds from 1 to {high}: {value!r}")
    return value


def _check_run_args(dry_run, timeout, check_timeout):
    """The arguments migrate and evacuate share."""
    if not isinstance(dry_run, bool):
        raise SaltInvocationError(f"dry_run must be True or False: {dry_run!r}")
    _check_seconds(timeout, "timeout", MAX_MIGRATE_TIMEOUT)
    _check_seconds(check_timeout, "check_timeout", 600)


def _check_transport(transport):
    if transport not in TRANSPORTS:
        raise SaltInvocationError(f"transport must be one of {', '.join(TRANSPORTS)}: {transport!r}")


def _check_migrate_args(guest, target, dry_run, timeout, transport, check_timeout):
    _check_name(guest, "guest")
    if target is not None:
        _check_name(target, "target node")
    _check_run_args(dry_run, timeout, check_timeout)
    _check_transport(transport)


def _load_model(tgt, tgt_type):
    """(minion id whose pillar gave it, the validated model)."""
    model_from, raw = _pillar_model(tgt or "*", tgt_type)
    return model_from, _validate(raw)


def _local_client():
    """A LocalClient of its own (one per thread: evacuate's workers never share one)."""
    return salt.client.LocalClient(__opts__["conf_file"])


def _migrate_model(guest, tgt, tgt_type):
    model_from, model = _load_model(tgt, tgt_type)
    if guest not in model["guests"]:
        known = ", ".join(sorted(model["guests"])) or "none"
        raise SaltInvocationError(f"no guest {guest} in the model (pillar of {model_from}; guests: {known})")
    return model


def _precheck_round(client, model, guest, target, timeout):
    """ONE publish of report + xl info to the guest's pair (and the target): ``{node: node_facts}``."""
    nodes = model["nodes"]
    asked = sorted(set(model["guests"][guest]["nodes"]) | ({target} & set(nodes)))
    minions = [nodes[n]["minion"] for n in asked]
    answers = client.cmd(minions, list(PRECHECK_FUNS), [[] for _ in PRECHECK_FUNS], timeout=timeout,
                         tgt_type="list", full_return=True) or {}  # fmt: skip
    return {n: node_facts(n, nodes[n]["minion"], answers.get(nodes[n]["minion"])) for n in asked}


def _migrate_call(client, minion, guest, host, transport, timeout, extra=None):
    """(kind, value) of ``xencluster_xl.migrate`` on the source; never raises (the guest must be found after)."""
    try:
        answers = client.cmd([minion], MIGRATE_FUN, [guest, host], timeout=timeout, tgt_type="list",
                             full_return=True, kwarg={"transport": transport, **(extra or {})}) or {}  # fmt: skip
    except Exception as exc:  # pylint: disable=broad-except
        return "error", f"{type(exc).__name__}: {exc}"
    kind, ret = _answer(answers.get(minion), MIGRATE_FUN)
    if kind == "ok" and ret.get("migrated") is not True:
        return "error", ret
    return kind, ret


# --- the stream transport: the target's one-shot listener around xl migrate ------------------


def _stream_addresses(model, source, target):
    """(target SAN ip, source SAN ip) in a subnet both have (pure), or None."""
    src, dst = model["nodes"][source], model["nodes"][target]
    for entry in dst.get("san") or []:
        network = ipaddress.ip_network(entry["network"])
        for other in src.get("san") or []:
            if ipaddress.ip_address(other["ip"]) in network:
                return entry["ip"], other["ip"]
    return None


def _stream_address(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_stream_lock = threading.Lock()
_stream_ports = set()  # ports this master process has a listener on (evacuate's workers share it)


def _take_stream_port():
    with _stream_lock:
        for port in range(STREAM_PORT_FIRST, STREAM_PORT_FIRST + STREAM_PORT_COUNT):
            if port not in _stream_ports:
                _stream_ports.add(port)
                return port
    raise CommandExecutionError(f"no free stream port in {STREAM_PORT_FIRST}-"
                                f"{STREAM_PORT_FIRST + STREAM_PORT_COUNT - 1} (too many migrations at once)")


def _give_stream_port(port):
    with _stream_lock:
        _stream_ports.discard(port)


def _stream_start(client, model, source, target, check_timeout):
    """(port, {"stream_address", "stream_from"}, None) or (None, None, problem): the target's listener."""
    pair = _stream_addresses(model, source, target)
    if pair is None:
        return None, None, f"{source} and {target} share no SAN subnet: no stream transport between them"
    target_ip, source_ip = pair
    try:
        port = _take_stream_port()
    except CommandExecutionError as exc:
        return None, None, str(exc)
    minion = model["nodes"][target]["minion"]
    try:
        answers = client.cmd([minion], STREAM_RECEIVE_FUN, [port, target_ip, source_ip],
                             kwarg={"accept_timeout": STREAM_ACCEPT_TIMEOUT}, timeout=check_timeout,
                             tgt_type="list", full_return=True) or {}  # fmt: skip
        kind, ret = _answer(answers.get(minion), STREAM_RECEIVE_FUN)
    except Exception as exc:  # pylint: disable=broad-except
        kind, ret = "error", f"{type(exc).__name__}: {exc}"
    if kind != "ok" or ret.get("started") is not True:
        if kind == "no_answer":  # it may have started after all: leave nothing listening
            _stream_stop(client, model, target, port, check_timeout)
            ret = f"no answer within {check_timeout} s"
        _give_stream_port(port)
        return None, None, f"the stream listener on {target} did not start: {_short(ret)}"
    _progress(f"stream listener on {target} at {_stream_address(target_ip, port)}, accepting {source_ip} only")
    return port, {"stream_address": _stream_address(target_ip, port), "stream_from": source_ip}, None


def _stream_stop(client, model, target, port, check_timeout):
    """``stream_stop`` on the target, never forced: ``(note or None, log tail of the target's side)``."""
    minion = model["nodes"][target]["minion"]
    try:
        answers = client.cmd([minion], STREAM_STOP_FUN, [port], timeout=check_timeout, tgt_type="list",
                             full_return=True) or {}  # fmt: skip
        kind, ret = _answer(answers.get(minion), STREAM_STOP_FUN)
    except Exception as exc:  # pylint: disable=broad-except
        kind, ret = "error", f"{type(exc).__name__}: {exc}"
    if kind != "ok":
        # e.g. "... has accepted its connection: a migration is streaming through it; not stopping it"
        why = f"no answer within {check_timeout} s" if kind == "no_answer" else _short(ret)
        return f"stream_stop {port} on {target}: {why}", ""
    note = f"the stream listener on {target} was still {ret.get('state')}: stopped" if ret.get("stopped") else None
    return note, ret.get("log_tail") or ""


def _call_with_transport(client, model, plan, transport, timeout, check_timeout):
    """
    ``(kind, ret, note)``: ``_migrate_call`` for ssh; for stream the target's listener first and
    ``stream_stop`` after, in every case. ``kind`` ``not_run``: the listener did not start, xl
    migrate was never called (``ret`` says why). ``note``: what to add to the message, or None.
    """
    guest, source, target = plan["guest"], plan["source"], plan["target"]
    minion = model["nodes"][source]["minion"]
    if transport != "stream":
        return (*_migrate_call(client, minion, guest, target, transport, timeout), None)
    port, extra, problem = _stream_start(client, model, source, target, check_timeout)
    if problem:
        return "not_run", problem, None  # xl migrate never called: the guest stays on the source
    op = plan.get("op")
    if op is not None:  # for whoever finds this record interrupted: where the listener is
        op["detail"].update(stream_target=target, stream_port=port, **extra)
        _save_op(op)
    try:
        kind, ret = _migrate_call(client, minion, guest, target, transport, timeout, extra)
    finally:
        note, tail = _stream_stop(client, model, target, port, check_timeout)
        _give_stream_port(port)
    if kind != "ok" and tail:
        # xl migrate-receive's own lines ("migration target: ...") stay on the target with stream
        note = f"{note}; " if note else ""
        note += f"target side: {_short(tail.replace(chr(10), ' | '))}"
    return kind, ret, note


def _stream_ready(client, model, guest, source, target, check_timeout):
    """
    A dry run's ``stream_ready`` check (two publishes, nothing started): ``(check, detail or None)``.

    ``stream_receive ... dry_run=True`` on the target (socat there, the address its own, the port
    free), then ``migrate ... transport=stream dry_run=True`` on the source (the connector there,
    its routing towards the target from its SAN address).
    """
    pair = _stream_addresses(model, source, target)
    if pair is None:
        return _check("stream_ready", False, f"{source} and {target} share no SAN subnet: no stream transport "
                      "between them"), None  # fmt: skip
    target_ip, source_ip = pair
    try:
        port = _take_stream_port()  # only to name a port now free here; given back at once
    except CommandExecutionError as exc:
        return _check("stream_ready", False, str(exc)), None
    _give_stream_port(port)
    extra = {"stream_address": _stream_address(target_ip, port), "stream_from": source_ip}
    asks = ((target, STREAM_RECEIVE_FUN, [port, target_ip, source_ip],
             {"accept_timeout": STREAM_ACCEPT_TIMEOUT, "dry_run": True}),
            (source, MIGRATE_FUN, [guest, target], {"transport": "stream", **extra, "dry_run": True}))  # fmt: skip
    rets, problems = [], []
    for node, fun, args, kwarg in asks:
        minion = model["nodes"][node]["minion"]
        try:
            answers = client.cmd([minion], fun, args, kwarg=kwarg, timeout=check_timeout, tgt_type="list",
                                 full_return=True) or {}  # fmt: skip
            kind, ret = _answer(answers.get(minion), fun)
        except Exception as exc:  # pylint: disable=broad-except
            kind, ret = "error", f"{type(exc).__name__}: {exc}"
        rets.append(ret if kind == "ok" else {})
        if kind != "ok":
            problems.append(_why_not(node, minion, fun, kind, ret))
    if problems:
        return _check("stream_ready", False, "; ".join(problems)), None
    detail = dict(extra, port=port, receive_argv=rets[0].get("argv"), argv=rets[1].get("argv"))
    return _check("stream_ready", True, f"{target} can listen at {extra['stream_address']} for {source_ip}, "
                  f"{source} can stream {guest} to it"), detail  # fmt: skip


def _domain_answers(client, nodes, asked, timeout):
    """ONE publish of list_domains to ``asked``: ``{node: (kind, value)}`` (``_answer``); never raises."""
    minions = [nodes[n]["minion"] for n in asked]
    try:
        answers = client.cmd(minions, _FUN, timeout=timeout, tgt_type="list", full_return=True) or {}
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster: the list_domains publish failed: %s", exc)
        answers = {}
    return {node: _answer(answers.get(nodes[node]["minion"]), _FUN) for node in asked}


def _domain_lists(client, nodes, asked, timeout):
    """ONE publish of list_domains to ``asked``: ``{node: domains or None (not known)}``."""
    return {node: ret if kind == "ok" else None
            for node, (kind, ret) in _domain_answers(client, nodes, asked, timeout).items()}  # fmt: skip


def _call_problem(kind, ret, source, timeout):
    """What went wrong with the migrate call, or None."""
    if kind == "ok":
        return None
    if kind == "not_run":  # the stream listener did not start: ret says why
        return ret
    if kind == "no_answer":
        return f"{source} did not answer {MIGRATE_FUN} within {timeout} s"
    if kind == "unavailable":
        return f"{source} cannot run {MIGRATE_FUN}: {_short(ret)}"
    return f"xl migrate failed on {source}: {_short(ret)}"


def _result(ok, guest, source, target, checks, ran, where, message, **extra):
    if not ok:
        __context__["retcode"] = 1
    return {
        "result": ok, "retcode": 0 if ok else 1, "guest": guest, "source": source, "target": target,
        "checks": checks, "ran": ran, "where": where, "message": message, **extra,
    }  # fmt: skip


def _refusal(guest, checks, facts, dry_run):
    plain, moving = _sightings(guest, facts)
    where = sorted(set(plain) | set(moving))
    failed = [c["check"] for c in checks if not c["ok"]]
    silent = ", ".join(sorted(node for node, fact in facts.items() if fact["domains"] is None))
    runs = f"it runs on {', '.join(where)}" if where else "it is not seen running"
    if silent:
        runs += f" ({silent} did not tell)" if where else f" ({silent} did not tell: where it runs is not known)"
    verb = "would not migrate" if dry_run else "not migrating"
    return where, f"{verb} {guest}: {len(failed)} check(s) failed ({', '.join(failed)}); {runs}"


def _execute(client, model, plan, timeout, check_timeout, transport):
    """
    Fire started, run xl migrate on the source (inside the stream listener's lifetime for stream), look where
    the guest runs: ``(ok, where, message, info)``, ``info`` ``{"ran", "duration_s", "transport"}`` and
    ``"xl_duration_s"`` (the module's wall time of xl migrate alone) when the call answered it.
    """
    guest, source, target = plan["guest"], plan["source"], plan["target"]
    nodes = model["nodes"]
    _fire(guest, "started", {"guest": guest, "source": source, "target": target, "timeout": timeout,
                             "transport": transport})  # fmt: skip
    _progress(f"{guest}: xl migrate from {source} to {target} over {transport} (up to {timeout} s)")
    _op_step(plan.get("op"), "xl_migrate_started", transport=transport)
    started = time.monotonic()
    kind, ret, stream_note = _call_with_transport(client, model, plan, transport, timeout, check_timeout)
    duration = round(time.monotonic() - started, 1)
    info = {"ran": kind != "not_run", "duration_s": duration, "transport": transport}
    if kind == "ok" and isinstance(ret.get("duration_s"), (int, float)) and not isinstance(ret["duration_s"], bool):
        info["xl_duration_s"] = ret["duration_s"]
    problem = _call_problem(kind, ret, source, timeout)
    if stream_note:
        _progress(f"{guest}: {stream_note}")
        if problem:
            problem = f"{problem}; {stream_note}"
    if problem:
        _progress(f"{guest}: {problem}; looking where it runs")
    lists = _domain_lists(client, nodes, (source, target), check_timeout)
    ok, where, seen = whereabouts(guest, source, target, lists, plan["state"])
    _op_step(plan.get("op"), "post_checked", ok=ok, where=where)
    if ok:
        note = f" ({problem}, but the post-check finds it moved)" if problem else ""
        over = "" if transport == TRANSPORTS[0] else f" over {transport}"
        xl_time = f" (xl migrate {info['xl_duration_s']} s)" if "xl_duration_s" in info else ""
        return True, where, f"{guest} migrated from {source} to {target}{over} in {duration} s{xl_time}{note}", info
    return False, where, f"{problem or f'xl migrate returned on {source}'}; {seen}", info


def migrate(guest, target=None, dry_run=False, timeout=DEFAULT_MIGRATE_TIMEOUT, transport="ssh",
            check_timeout=DEFAULT_VERIFY_TIMEOUT, tgt=None, tgt_type="glob"):  # fmt: skip
    """
    Live-migrate ``guest`` to ``target`` (default: the other node of its pair) with ``xl migrate``.

    1. The model, as ``verify`` reads it (``tgt``/``tgt_type`` pick the
       minion whose pillar holds it); the guest must be in it.
    2. Pre-checks, without side effects: ONE publish of
       ``xencluster_node.report`` and ``xencluster_xl.info`` (a multi-function
       call) to the nodes of the guest's pair and the target, waiting up to
       ``check_timeout`` seconds. Each check is ``{"check", "ok", "message"}``:
       ``runs_once`` (exactly one node of the pair runs it, every node told;
       an ``--incoming``/``--migratedaway`` name means a migration in flight),
       ``target_in_pair``, ``target_not_drained`` (``_drained``),
       ``legs_on_target`` (every leg at ``/dev/xencluster/<leg>`` on the
       target: its own LV, the partner's iSCSI LUN), ``target_memory`` (``xl
       info`` free_memory >= the guest's memory), ``migratable`` (PVH or HVM:
       Debian's Xen has no shadow paging for PV), ``xen_compatible`` (same
       Xen major.minor). One failed check: nothing runs.
    3. ``dry_run=True`` stops here: no event, no other publish; with
       ``transport=stream`` and every check passed, one more check,
       ``stream_ready``, from two more publishes that start nothing:
       ``xencluster_xl.stream_receive ... dry_run=True`` on the target (socat
       there, the SAN address its own, the port free) and
       ``xencluster_xl.migrate ... transport=stream dry_run=True`` on the
       source (the connector there, its route to the target from its SAN
       address); their argv in the return's ``stream``.
    4. ``xencluster_xl.migrate <guest> <target node name>`` on the source,
       waiting up to ``timeout`` seconds. ``transport`` ``ssh`` (default):
       the source's root must reach the target by its node name; ``stream``:
       the target's one-shot listener on its SAN address
       (``xencluster_xl.stream_receive``, port 31000-31099, accepting the
       source's SAN address only, ``check_timeout`` s to start), then ``xl
       migrate`` through the connector; ``xencluster_xl.stream_stop`` on the
       target afterwards in every case (never forced: a listener still
       streaming is left alone and said). Unencrypted: see the README,
       'Migration transports'. A listener that does not start: xl migrate is
       never called (``ran`` False). Then ONE ``list_domains`` publish to
       source and target: the guest must run on the target and be gone from
       the source. Nothing is ever retried.

    The guest is locked (``guest.<guest>``) and the operation journaled
    (steps ``prechecked``, ``xl_migrate_started`` with the ``transport``, its
    detail the stream listener's ``stream_target``/``stream_port`` once it
    listens, ``post_checked``) from before the pre-check round to the end. A guest another live operation
    holds: ``busy`` (the holder), nothing published. A migration of the guest
    that was interrupted (its ``salt-run`` gone) is settled from the
    pre-check round (``resume_migrate``): interrupted before ``xl migrate``,
    or the guest still only on its source: closed (cleaned up), and this run
    migrates; the guest only on the recorded target: closed as completed,
    and nothing is migrated unless ``target`` names another node; a
    migration still in flight (``--incoming``/``--migratedaway``): refused,
    the record stays open; a double run: the pre-checks refuse. The return
    then has ``"interrupted": [{"op", "title", "step", "started", "pid",
    "host", "status" (what it is closed with, ``running``: left open),
    "note"}]``.

    Events on the master's bus (not in a dry run):
    ``xencluster/migrate/<guest>/prechecked`` (``result``, ``checks``),
    ``.../started`` (``transport``, ``timeout``), then ``.../finished`` or
    ``.../failed`` (``where``, ``transport``, ``duration_s``,
    ``xl_duration_s``, ``message``). ``salt-run`` prints each step as
    progress.

    Returns ``{"result", "retcode" (0, or 1 on any failure: salt-run's exit
    status), "guest", "source", "target", "checks", "ran" (xl migrate was
    called), "where" (the nodes the guest is seen on now), "message"}``, with
    ``"transport"`` and ``"duration_s"`` (the runner's wall time from the
    listener's start, or the migrate publish, to its answer) after the
    migration step, and ``"xl_duration_s"`` (the wall time of ``xl migrate``
    alone, as the source's module measured it) when the call answered. A bad argument, an unreadable model or a
    guest it does not name is such a return too (no check, nothing
    published), not an exception. A failure says where the guest runs
    (``web1 still runs on node1``; ``web1 runs on node2 but also on node1:
    DOUBLE RUN``).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.migrate web1 dry_run=True
        salt-run xencluster.migrate web1
        salt-run xencluster.migrate web1 node2 timeout=600 --out=json
        salt-run xencluster.migrate web1 transport=stream dry_run=True
    """
    try:
        _check_migrate_args(guest, target, dry_run, timeout, transport, check_timeout)
        model = _migrate_model(guest, tgt, tgt_type)
    except (SaltInvocationError, CommandExecutionError) as exc:
        # Returned, not raised: salt-run shows a raised SaltInvocationError (a TypeError) as
        # "Passed invalid arguments" and exits 0.
        log.error("xencluster.migrate: not migrating: %s", exc)
        return _result(False, guest, None, target, [], False, [], f"not migrating {guest}: {exc}")
    return _migrate_one(_local_client(), model, guest, target, dry_run, timeout, transport, check_timeout)


# The steps of a migrate record after which xl migrate may have moved the guest.
MIGRATE_CHANGED = ("xl_migrate_started", "post_checked")


def _migrate_title(guest, target):
    return f"migrate {guest}->{target}" if target else f"migrate {guest}"


def resume_migrate(guest, target, earlier, facts):
    """
    What a re-run of migrate does with the interrupted migrate records of ``guest`` (pure).

    ``earlier``: the records (``_interrupted_ops``), ``facts``: the pre-check round. Returns
    ``(closes, stop)``: ``closes`` ``[(record, status, note)]`` to close now; ``stop`` None (go
    on with the pre-checks), ``("done", why)`` (the guest runs on the recorded target, the one
    asked: nothing to migrate) or ``("refuse", why)`` (a migration still in flight). A record
    interrupted before ``xl migrate`` changed nothing: cleaned up. After it: the guest only on
    the recorded target, completed (``finished``); only on the source, cleaned up; anywhere
    else (on both: a double run; nowhere; not known) the record stays open and the pre-checks
    refuse.
    """
    plain, moving = _sightings(guest, facts)
    known = all(fact["domains"] is not None for fact in facts.values())
    closes, stop = [], None
    for record in earlier:
        detail, step = record.get("detail") or {}, record.get("step")
        source, dest = detail.get("source"), detail.get("target")
        if step not in MIGRATE_CHANGED:
            closes.append((record, OP_INTERRUPTED, f"interrupted at {step}, before xl migrate: nothing had changed; "
                           "cleaned up"))  # fmt: skip
        elif moving:
            names = "; ".join(f"{', '.join(sorted(names))} on {node}" for node, names in sorted(moving.items()))
            stop = ("refuse", f"a migration of {guest} is still in flight ({names}) from the interrupted "
                    f"{_interrupted_text(record)}: its xl migrate may still run on {source}; wait until it ends "
                    f"(salt-run xencluster.verify), then re-run `{record.get('rerun')}`")  # fmt: skip
        elif not known:
            continue
        elif list(plain) == [dest] and plain[dest].get("state") not in STOPPED:
            closes.append((record, OP_FINISHED, f"completed by re-run: {guest} runs on {dest}"))
            if target in (None, dest) and stop is None:
                stop = ("done", f"{guest} runs on {dest}: the interrupted migration to {dest} (op {record['op']}) "
                        "had completed; nothing to migrate")  # fmt: skip
        elif list(plain) == [source]:
            closes.append((record, OP_INTERRUPTED, f"interrupted, guest still on {source}: cleaned up"))
    return closes, stop


def _resume_entries(earlier, closes):
    """The return's ``interrupted``: each earlier record, with the status it is closed with (running: left open)."""
    closing = {record["op"]: (status, note) for record, status, note in closes}
    return [dict(summary, status=closing.get(summary["op"], (OP_RUNNING, None))[0],
                 note=closing.get(summary["op"], (None, "left open"))[1])
            for summary in _earlier(earlier, True, None)]  # fmt: skip


def _busy_result(guest, target, refusal):
    """migrate's return when the guest's lock is held (``busy``) or cannot be taken: nothing published."""
    log.warning("xencluster.migrate: %s", refusal["message"])
    extra = {"busy": refusal} if "op" in refusal else {}
    return _result(False, guest, None, target, [], False, [], refusal["message"], **extra)


def _migrate_one(client, model, guest, target, dry_run, timeout, transport, check_timeout):
    """
    ``migrate`` after its arguments and model are checked (``evacuate`` calls it per guest), under the guest's lock.

    A real run takes the lock ``guest.<guest>`` and writes its journal record (``_begin``;
    busy: nothing is published), and closes both whatever happens (``_end``). A dry run takes
    no lock and writes nothing, but says busy just the same.
    """
    keys = [_lock_key("guest", guest)]
    settings = (dry_run, timeout, transport, check_timeout)
    if dry_run:
        holder = _busy(keys)
        return _busy_result(guest, target, holder) if holder else _migrate_locked(client, model, None, guest, target,
                                                                                   settings)  # fmt: skip
    args = {"guest": guest, "target": target, **({"transport": transport} if transport != TRANSPORTS[0] else {})}
    op, refusal = _begin("migrate", guest, args, keys, _migrate_title(guest, target))
    if refusal:
        return _busy_result(guest, target, refusal)
    result = None
    try:
        result = _migrate_locked(client, model, op, guest, target, settings)
        return result
    finally:
        _end(op, result)


def _migrate_done(guest, closes, stop, extra):
    """The return of a re-run that finds the interrupted migration completed: nothing migrated."""
    record = next(r for r, status, _n in closes if status == OP_FINISHED)
    detail = record.get("detail") or {}
    return _result(True, guest, detail.get("source"), detail.get("target"), [], False, [detail.get("target")],
                   stop[1], **extra)  # fmt: skip


def _migrate_locked(client, model, op, guest, target, settings):
    """The pre-check round, what to do with interrupted records of the guest, the pre-checks, xl migrate."""
    dry_run, timeout, transport, check_timeout = settings
    facts = _precheck_round(client, model, guest, target, check_timeout)
    earlier = _interrupted_ops("migrate", guest, op)
    closes, stop = resume_migrate(guest, target, earlier, facts)
    extra = {"interrupted": _resume_entries(earlier, closes)} if earlier else {}
    if not dry_run:
        _earlier(earlier, False, op)
        for record, status, note in closes:
            _close_op(record, status, note, op)
            _leftover_listener(record)
    if stop and stop[0] == "done":
        if not dry_run:
            _progress(f"{guest}: {stop[1]}")
        return _migrate_done(guest, closes, stop, extra)
    checks, source, target = prechecks(model, guest, target, facts, _drained())
    passed = all(c["ok"] for c in checks)
    verb = "would not migrate" if dry_run else "not migrating"
    if dry_run:
        if not passed:
            where, message = _refusal(guest, checks, facts, True)
            message = f"{verb} {guest}: {stop[1]}" if stop else message
            return _result(False, guest, source, target, checks, False, where, message, **extra)
        if transport == "stream":
            ready, stream = _stream_ready(client, model, guest, source, target, check_timeout)
            checks.append(ready)
            extra["transport"] = transport
            if not ready["ok"]:
                where, message = _refusal(guest, checks, facts, True)
                return _result(False, guest, source, target, checks, False, where, message, **extra)
            extra["stream"] = stream
        over = "" if transport == TRANSPORTS[0] else f" over {transport}"
        message = f"would migrate {guest} from {source} to {target}{over}"
        return _result(True, guest, source, target, checks, False, [source], message, **extra)
    op["title"] = _migrate_title(guest, target)
    _op_step(op, "prechecked", source=source, target=target, passed=passed)
    _fire(guest, "prechecked", {"guest": guest, "source": source, "target": target, "result": passed,
                                "checks": checks})  # fmt: skip
    if not passed:
        where, message = _refusal(guest, checks, facts, False)
        message = f"{verb} {guest}: {stop[1]}" if stop else message
        _progress(message)
        return _result(False, guest, source, target, checks, False, where, message, **extra)
    _progress(f"{guest}: pre-checks passed ({len(checks)})")
    state = facts[source]["domains"][guest].get("state")
    plan = {"guest": guest, "source": source, "target": target, "state": state, "op": op}
    ok, where, message, info = _execute(client, model, plan, timeout, check_timeout, transport)
    ran = info.pop("ran")
    end = {"guest": guest, "source": source, "target": target, "result": ok, "where": where, **info,
           "message": message}  # fmt: skip
    _fire(guest, "finished" if ok else "failed", end)
    _progress(f"{guest}: {message}")
    if not ok:
        log.error("xencluster.migrate: %s", message)
    return _result(ok, guest, source, target, checks, ran, where, message, **info, **extra)


def _leftover_listener(record):
    """
    A closed interrupted stream migration: where its listener may still wait (a progress line, nothing stopped).

    Not stopped from here: another salt-run may have a listener of its own on that port by now, and
    ``stream_stop`` cannot tell them apart. A listener nobody connects to exits after its accept timeout.
    """
    detail = record.get("detail") or {}
    target, port = detail.get("stream_target"), detail.get("stream_port")
    if target and port:
        _progress(f"op {record['op']} had a stream listener on {target} port {port}: it exits by itself within "
                  f"{STREAM_ACCEPT_TIMEOUT} s of its start when nothing connects (xencluster_xl.stream_stop "
                  f"{port} on {target} stops it now)")  # fmt: skip


# --- evacuate / undrain: a node in and out of maintenance ------------------------------------

EVACUATE_EVENT_BASE = "xencluster/evacuate"
ON_FAILURE = ("stop", "continue")
MAX_CONCURRENCY = 16


def _check_evacuate_args(node, concurrency, on_failure, dry_run, timeout, check_timeout, transport):
    _check_name(node, "node")
    _check_transport(transport)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise SaltInvocationError(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}: {concurrency!r}")
    if on_failure not in ON_FAILURE:
        raise SaltInvocationError(f"on_failure must be one of {', '.join(ON_FAILURE)}: {on_failure!r}")
    _check_run_args(dry_run, timeout, check_timeout)


def _evacuate_model(node, tgt, tgt_type):
    model_from, model = _load_model(tgt, tgt_type)
    if node not in model["nodes"]:
        known = ", ".join(sorted(model["nodes"])) or "none"
        raise SaltInvocationError(f"no node {node} in the model (pillar of {model_from}; nodes: {known})")
    return model


def _node_domains(client, model, node, timeout):
    """``(domains, None)`` from ONE list_domains publish to ``node``, or ``(None, why it told nothing)``."""
    [(kind, ret)] = _domain_answers(client, model["nodes"], [node], timeout).values()
    if kind == "ok":
        return ret, None
    return None, _why_not(node, model["nodes"][node]["minion"], _FUN, kind, ret)


def evacuation_plan(model, node, domains):
    """
    What evacuating ``node`` moves (pure): ``(plan, unknown)``.

    ``domains``: ``list_domains`` of the node. ``plan``: ``[(guest, target)]``
    sorted, one per guest of the model seen there (under its own name or one
    of xl migrate's temporary names, whatever its state): the target is the
    other node of its pair, None when the node is outside the pair (its
    pre-checks say so). ``unknown``: the domains the model does not name
    (nothing can move them).
    """
    plan, unknown = {}, []
    for name in sorted(domains):
        spec = model["guests"].get(_base_name(name))
        if spec is None:
            unknown.append(name)
        elif node in spec["nodes"]:
            plan[spec["name"]] = next(n for n in spec["nodes"] if n != node)
        else:
            plan[spec["name"]] = None
    return sorted(plan.items()), unknown


def _migrate_worker(model, guest, target, timeout, check_timeout, transport):
    """One migration in a worker thread, on a LocalClient of its own; never raises."""
    client = None
    try:
        client = _local_client()
        return _migrate_one(client, model, guest, target, False, timeout, transport, check_timeout)
    except Exception as exc:  # pylint: disable=broad-except
        log.exception("xencluster.evacuate: migrating %s raised", guest)
        return _result(False, guest, None, target, [], False, [], f"not migrating {guest}: {type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            client.destroy()


def _run_bounded(items, concurrency, stop_on_failure, work, done):
    """
    ``work(item)`` for each item, at most ``concurrency`` at once, in threads; the items never started.

    ``done(item, result)`` runs in the calling thread as each one finishes. With
    ``stop_on_failure``, nothing new starts once a result is not ``result``
    (those in flight finish). Each thread runs in a copy of the caller's
    context: Salt's loader dunders (``__opts__``...) are context variables.
    """
    pending, running, stop = list(items), {}, False
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        while running or (pending and not stop):
            while pending and not stop and len(running) < concurrency:
                item = pending.pop(0)
                running[pool.submit(contextvars.copy_context().run, work, item)] = item
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: items.index(running[f])):
                item = running.pop(future)
                result = future.result()
                done(item, result)
                stop = stop or (stop_on_failure and not result["result"])
    return pending


def _fire_evacuate(node, step, data):
    """One event ``xencluster/evacuate/<node>/<step>``."""
    _fire_tag(f"{EVACUATE_EVENT_BASE}/{node}/{step}", data)


def _unknown_failures(node, unknown):
    return [{"guest": name, "where": [node], "message": f"domain {name} runs on {node} but the model has no guest "
             f"{_base_name(name)}: nothing can move it"} for name in unknown]  # fmt: skip


def _mark_drained(node, dry_run):
    """Mark ``node`` drained (not in a dry run); whether it is marked now."""
    if dry_run:
        return node in _drained()
    changed = _set_drained(node, True)
    _progress(f"{node} marked drained: it takes no guest" if changed else f"{node} is drained already")
    return True


def _evacuation(ok, node, drained, started, message, moved=(), failed=(), skipped=(), **extra):
    if not ok:
        __context__["retcode"] = 1
    return {
        "result": ok, "retcode": 0 if ok else 1, "node": node, "drained": drained, "moved": list(moved),
        "failed": list(failed), "skipped": list(skipped), "duration_s": round(time.monotonic() - started, 1),
        "message": message, **extra,
    }  # fmt: skip


def _arrows(plan):
    return ", ".join(f"{guest} -> {target or '?'}" for guest, target in plan) or "none"


def _evacuate_dry(client, model, node, plan, unknown, settings, started):
    """Each guest's migrate dry run, one after the other: nothing marked, nothing run."""
    _concurrency, _on_failure, timeout, check_timeout, transport = settings
    entries, failed = [], _unknown_failures(node, unknown)
    for guest, target in plan:
        res = _migrate_one(client, model, guest, target, True, timeout, transport, check_timeout)
        entries.append({"guest": guest, "from": node, "to": target, "result": res["result"],
                        "checks": res["checks"], "message": res["message"]})  # fmt: skip
        if not res["result"]:
            failed.append({"guest": guest, "where": res["where"], "message": res["message"]})
    marked = node in _drained()
    mark = f"{node} is drained already" if marked else f"would mark {node} drained"
    message = f"{mark} and migrate {len(plan)} guest(s): {_arrows(plan)}"
    if failed:
        message += f"; would fail: {', '.join(f['guest'] for f in failed)}"
    return _evacuation(not failed, node, marked, started, message, failed=failed, plan=entries)


def _summary_message(node, moved, failed, skipped):
    if not failed and not skipped:
        times = ", ".join(f"{m['guest']} to {m['to']} in {m['duration_s']} s" for m in moved)
        return f"evacuated {node}: {len(moved)} guest(s) moved" + (f" ({times})" if times else "")
    text = f"{node} is not empty: {len(moved)} moved, {len(failed)} failed ({', '.join(f['guest'] for f in failed)})"
    if skipped:
        text += f", {len(skipped)} not tried after the failure ({', '.join(skipped)})"
    return f"{text}; {node} stays drained (salt-run xencluster.undrain {node})"


def _evacuate_run(model, node, plan, unknown, settings, started):
    """Migrate every planned guest with bounded concurrency; events and progress as they finish."""
    concurrency, on_failure, timeout, check_timeout, transport = settings
    moved, failed = [], _unknown_failures(node, unknown)
    _fire_evacuate(node, "started", {"node": node, "plan": [{"guest": g, "to": t} for g, t in plan],
                                     "unknown": unknown, "concurrency": concurrency, "on_failure": on_failure,
                                     "transport": transport})  # fmt: skip
    over = "" if transport == TRANSPORTS[0] else f" over {transport}"
    _progress(f"evacuating {node}, {concurrency} at a time{over}: {_arrows(plan)}")

    def work(item):
        return _migrate_worker(model, item[0], item[1], timeout, check_timeout, transport)

    def done(item, res):
        guest, target = item
        if res["result"]:
            moved.append({"guest": guest, "from": node, "to": target, "duration_s": res.get("duration_s"),
                          **({"xl_duration_s": res["xl_duration_s"]} if "xl_duration_s" in res else {})})
        else:
            failed.append({"guest": guest, "where": res["where"], "message": res["message"]})
        _fire_evacuate(node, f"guest/{guest}", {"node": node, "guest": guest, "to": target, "result": res["result"],
                                                "where": res["where"], "duration_s": res.get("duration_s"),
                                                "message": res["message"]})  # fmt: skip
        _progress(f"evacuating {node}: {len(moved) + len(failed) - len(unknown)}/{len(plan)} done: {res['message']}")

    skipped = [guest for guest, _target in _run_bounded(plan, concurrency, on_failure == "stop", work, done)]
    result = _evacuation(not failed and not skipped, node, True, started, _summary_message(node, moved, failed,
                         skipped), moved, failed, skipped)  # fmt: skip
    _fire_evacuate(node, "finished", result)
    _progress(result["message"])
    return result


def evacuate(node, concurrency=1, on_failure="stop", dry_run=False, timeout=DEFAULT_MIGRATE_TIMEOUT,
             check_timeout=DEFAULT_VERIFY_TIMEOUT, tgt=None, tgt_type="glob", transport="ssh"):  # fmt: skip
    """
    Empty ``node`` for maintenance: mark it drained, then live-migrate each guest it runs to its pair partner.

    1. The model, as ``migrate`` reads it; ``node`` must be a node of it.
    2. ``node`` is marked drained FIRST (idempotent; bank
       ``xencluster/drained`` of the master's cache, see ``drained``), so
       that no migration lands on it meanwhile. It stays drained whatever
       happens next, until ``undrain``.
    3. ONE publish of ``xencluster_xl.list_domains`` to the node (waiting up
       to ``check_timeout`` seconds): every guest of the model seen there,
       whatever its state, goes to the other node of its pair. A domain the
       model does not name cannot move: it is listed in ``failed`` (and does
       not stop the others).
    4. Each guest goes through exactly what ``migrate`` does (its pre-checks,
       ``xl migrate``, the post-check, its own events), up to
       ``concurrency`` (1 to 16) at once, each in a thread with its own
       LocalClient. A guest whose partner is drained too, a PV guest, a
       stopped one... fails its pre-checks. ``on_failure="stop"`` starts
       nothing new after the first failure (those in flight finish: the rest
       is ``skipped``); ``"continue"`` tries every guest.

    ``transport`` (``ssh`` or ``stream``) is ``migrate``'s, for every
    guest; parallel stream migrations to one target get distinct ports.

    ``dry_run=True`` marks nothing and migrates nothing: the plan, each
    guest's pre-checks (``migrate``'s dry run, with ``stream_ready`` for
    stream) and whether it would fail.

    The node is locked (``node.<node>``) for the whole run, each guest while
    it migrates (``migrate``'s own lock and journal record, whose parent is
    this operation). A node another live operation holds: ``busy``, nothing
    published or marked. An interrupted evacuation of the node is resumed:
    its record is closed and the guests still on the node are migrated now;
    its interrupted migrations of guests no longer there are closed.

    Events on the master's bus (none in a dry run):
    ``xencluster/evacuate/<node>/started`` (``plan``, ``unknown``,
    ``concurrency``, ``on_failure``, ``transport``), ``.../guest/<guest>`` as each migration
    ends (``result``, ``to``, ``where``, ``duration_s``, ``message``), and
    ``.../finished`` with the return. ``salt-run`` prints progress lines.

    Returns ``{"result", "retcode" (0, or 1 on any failure), "node",
    "drained" (the node is marked now), "moved": [{"guest", "from", "to",
    "duration_s", "xl_duration_s" (when the module told it)}], "failed": [{"guest", "message", "where"}], "skipped":
    [guests not tried after a failure], "duration_s" (the whole run),
    "message"}`` (``moved`` and ``failed`` in the order the migrations
    ended), with ``"plan": [{"guest", "from", "to", "result", "checks",
    "message"}]`` in a dry run. A bad argument, a node the model
    does not name or a node that cannot list its domains is such a return
    (``result`` False), not an exception.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.evacuate node1 dry_run=True
        salt-run xencluster.evacuate node1
        salt-run xencluster.evacuate node1 concurrency=2 on_failure=continue --out=json
        salt-run xencluster.evacuate node1 transport=stream concurrency=2
    """
    started = time.monotonic()
    try:
        _check_evacuate_args(node, concurrency, on_failure, dry_run, timeout, check_timeout, transport)
        model = _evacuate_model(node, tgt, tgt_type)
    except (SaltInvocationError, CommandExecutionError) as exc:
        log.error("xencluster.evacuate: not evacuating: %s", exc)
        return _evacuation(False, node, False, started, f"not evacuating {node}: {exc}")
    settings = (concurrency, on_failure, timeout, check_timeout, transport)
    keys = [_lock_key("node", node)]
    if dry_run:
        holder = _busy(keys)
        if holder:
            return _evacuation(False, node, False, started, holder["message"], busy=holder)
        return _evacuate_node(model, node, None, settings, started)
    args = {"node": node, "concurrency": concurrency, "on_failure": on_failure,
            **({"transport": transport} if transport != TRANSPORTS[0] else {})}  # fmt: skip
    op, refusal = _begin("evacuate", node, args, keys, f"evacuate {node}")
    if refusal:
        log.warning("xencluster.evacuate: %s", refusal["message"])
        return _evacuation(False, node, False, started, refusal["message"],
                           **({"busy": refusal} if "op" in refusal else {}))  # fmt: skip
    result = None
    try:
        result = _evacuate_node(model, node, op, settings, started)
        return result
    finally:
        _end(op, result)


def _evacuate_node(model, node, op, settings, started):
    """``evacuate`` after its arguments and model are checked; under the node's lock (``op``), or a dry run (None)."""
    dry_run = op is None
    check_timeout = settings[3]
    try:
        marked = _mark_drained(node, dry_run)
    except SaltCacheError as exc:
        log.error("xencluster.evacuate: not evacuating: %s", exc)
        return _evacuation(False, node, False, started, f"not evacuating {node}: {exc}")
    _op_step(op, "drained")
    client = _local_client()
    domains, why = _node_domains(client, model, node, check_timeout)
    if domains is None:
        stays = "" if dry_run else f"; {node} stays drained (salt-run xencluster.undrain {node})"
        result = _evacuation(False, node, marked, started, f"cannot evacuate {node}: {why}{stays}")
        if not dry_run:
            _fire_evacuate(node, "finished", result)
        return result
    plan, unknown = evacuation_plan(model, node, domains)
    earlier = _interrupted_ops("evacuate", node, op)
    if dry_run:
        result = _evacuate_dry(client, model, node, plan, unknown, settings, started)
        if earlier:
            result["interrupted"] = _earlier(earlier, True, None)
        return result
    _resume_evacuate(node, plan, earlier, op)
    _op_step(op, "listed", plan=[{"guest": g, "to": t} for g, t in plan], unknown=unknown)
    token = _OP_PARENT.set(op["op"])  # the migrations it runs name it as their parent
    try:
        result = _evacuate_run(model, node, plan, unknown, settings, started)
    finally:
        _OP_PARENT.reset(token)
    if earlier:
        result["interrupted"] = _earlier(earlier, True, None)
    return result


def _interrupted_children(parent):
    """The interrupted migrate records an (interrupted) evacuate ran: their ``parent`` is its op id."""
    try:
        records = _op_records(_ops_cache())
    except SaltCacheError as exc:
        log.warning("xencluster: cannot read the operation journal: %s", exc)
        return []
    return sorted((r for r in records.values() if r.get("parent") == parent and r.get("status") == OP_RUNNING
                   and _alive(r) is False), key=lambda r: r["op"])  # fmt: skip


def _resume_evacuate(node, plan, earlier, op):
    """
    Take over interrupted evacuations of ``node``: the guests still there are simply migrated now.

    Each earlier evacuate record is closed (resumed by this op). Its interrupted migrations of a
    guest still on the node are left to the migrate path (``resume_migrate``: it finds them
    itself); those of a guest no longer there are closed here.
    """
    _earlier(earlier, False, op)
    planned = {guest for guest, _target in plan}
    for record in earlier:
        for child in _interrupted_children(record["op"]):
            if child.get("subject") not in planned:
                _close_op(child, OP_INTERRUPTED, f"interrupted at {child.get('step')}; closed by evacuate {node} "
                          f"(op {op['op']}): {child.get('subject')} is no longer on {node}", op)  # fmt: skip
    _close_earlier(earlier, f"resumed by op {op['op']}: the guests still on {node} are migrated now "
                   f"({_arrows(plan)})", op)  # fmt: skip


def undrain(node):
    """
    Clear the drained mark of ``node``: it takes guests again; idempotent.

    Returns ``{"result", "retcode", "node", "changed" (it was drained),
    "message"}``; a bad node name is such a return with ``result`` False.
    The node need not be in the model (a mark left by a node since removed
    can be cleared).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.undrain node1
    """
    try:
        changed = _set_drained(node, False)
    except (SaltInvocationError, SaltCacheError) as exc:
        __context__["retcode"] = 1
        return {"result": False, "retcode": 1, "node": node, "changed": False, "message": f"not undraining: {exc}"}
    message = f"{node} takes guests again" if changed else f"{node} was not drained"
    return {"result": True, "retcode": 0, "node": node, "changed": changed, "message": message}


def drained():
    """
    The drained nodes: ``{node: {"since": <unix time>, "since_utc": "<ISO 8601>"}}`` ({} when none).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.drained
    """
    cache = salt.cache.factory(__opts__)
    out = {}
    for node in _drained():
        since = (cache.fetch(DRAINED_BANK, node) or {}).get("since")
        when = datetime.datetime.fromtimestamp(since, datetime.timezone.utc) if isinstance(since, int) else None
        out[node] = {"since": since, "since_utc": when.isoformat() if when else None}
    return out


# --- recover: a lost node's guests started on their surviving legs ----------------------------

RECOVER_EVENT_BASE = "xencluster/recover"
DEFAULT_RECOVER_TIMEOUT = 300  # seconds for one xl create on the survivor
MAX_RECOVER_TIMEOUT = 3600
DEGRADED_FUN = "xencluster_xl.create_degraded"
SCHED_FUN = "xencluster_xl.sched_credit2"
GUEST_CONFIG_DIR = "/etc/xen/xencluster"  # where xencluster_guest.defined writes <guest>.cfg
# The master-cache record of where guests were last seen (bank, key); its reader is _last_seen.
RECOVER_CHECKS = ("runs_nowhere", "in_pair", "survivor_not_drained", "surviving_legs", "survivor_config",
                  "survivor_memory")  # fmt: skip
STARTED, WOULD_START, SKIPPED, REFUSED, FAILED = "started", "would_start", "skipped", "refused", "failed"
RUNS = (STARTED, WOULD_START, SKIPPED)  # outcomes after which the guest runs (or would)


def _check_recover_args(node, confirm_dead, flags, timeout, check_timeout):
    """``flags``: ``{"dry_run": ..., "allow_drained": ...}``; raises SaltInvocationError."""
    _check_name(node, "node")
    if confirm_dead is None:
        raise SaltInvocationError(f"refused: recover starts the guests of {node} on one leg of their disks; say "
                                  f"that {node} is dead (powered off, fenced) with confirm_dead={node}")
    _check_name(confirm_dead, "confirm_dead node")
    if confirm_dead != node:
        raise SaltInvocationError(f"refused: confirm_dead={confirm_dead} does not name the lost node {node} "
                                  f"(confirm_dead={node} if {node} is dead)")  # fmt: skip
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise SaltInvocationError(f"{name} must be True or False: {value!r}")
    _check_seconds(timeout, "timeout", MAX_RECOVER_TIMEOUT)
    _check_seconds(check_timeout, "check_timeout", 600)


def _last_seen_on(node):
    """
    What the master's cache last recorded on ``node``: ``{"at", "guests", "error"}``.

    Reads bank ``xencluster/last_seen``, key ``guests`` (``{"at": <unix
    time>, "guests": {guest: [nodes]}, "nodes": [...]}``, kept by
    ``verify``; a node that stopped answering keeps its last entries).
    ``guests``: the sorted names seen on ``node`` (a name that is not a
    model NAME, or a migration name of one, is left out). No record, or one
    of another shape, is ``{"at": None, "guests": [], "error": None}``; a
    cache that cannot be read says so in ``error``.
    """
    try:
        record = _last_seen()
    except SaltCacheError as exc:
        where = f"{LAST_SEEN_BANK}/{LAST_SEEN_KEY}"
        log.warning("xencluster.recover: cannot read %s from the master cache: %s", where, exc)
        return {"at": None, "guests": [], "error": f"the master cache {where} cannot be read: {exc}"}
    if not isinstance(record, dict) or not isinstance(record.get("guests"), dict):
        return {"at": None, "guests": [], "error": None}
    seen = sorted(name for name, nodes in record["guests"].items()
                  if isinstance(name, str) and _NAME.fullmatch(_base_name(name))
                  and isinstance(nodes, (list, tuple)) and node in nodes)  # fmt: skip
    at = record.get("at")
    return {"at": at if isinstance(at, (int, float)) and not isinstance(at, bool) else None, "guests": seen,
            "error": None}  # fmt: skip


def lost_guests(model, node, seen):
    """
    The guests of the lost ``node`` (pure): ``({guest: {"pinned", "last_seen"}}, unknown)``.

    A guest is the node's when the model pins it there (``node:``) or when it
    was last seen there (``seen``: domain names, a migration's temporary name
    counting as its guest). ``unknown``: the names seen there that the model
    does not know (nothing can start them).
    """
    seen_base = {_base_name(name) for name in seen}
    out = {}
    for name, spec in sorted(model["guests"].items()):
        pinned, last = spec.get("node") == node, name in seen_base
        if pinned or last:
            out[name] = {"pinned": pinned, "last_seen": last}
    return out, sorted(seen_base - set(model["guests"]))


def _recover_round(client, model, timeout):
    """ONE publish of report + xl info to every node of the model: ``({node: node_facts}, {node: told})``."""
    nodes = model["nodes"]
    minions = [nodes[n]["minion"] for n in sorted(nodes)]
    try:
        answers = client.cmd(minions, list(PRECHECK_FUNS), [[] for _ in PRECHECK_FUNS], timeout=timeout,
                             tgt_type="list", full_return=True) or {}  # fmt: skip
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster.recover: the check publish failed: %s", exc)
        answers = {}
    facts, told = {}, {}
    for n in sorted(nodes):
        data = answers.get(nodes[n]["minion"])
        facts[n] = node_facts(n, nodes[n]["minion"], data)
        told[n] = any(kind != "no_answer" for kind, _v in _multi_parts(data, PRECHECK_FUNS).values())
    return facts, told


def _double_runs(facts):
    """``{domain: [nodes]}`` of every domain seen under the same name on two or more nodes."""
    where = {}
    for node, fact in sorted(facts.items()):
        for name in fact["domains"] or {}:
            where.setdefault(name, []).append(node)
    return {name: nodes for name, nodes in sorted(where.items()) if len(nodes) > 1}


def _doubles_text(doubles):
    return "; ".join(f"{name} on {' and '.join(nodes)}" for name, nodes in doubles.items())


def _round_refusal(node, facts, told):
    """``(retcode, why)`` when nothing may be started at all after the round, else None."""
    if told[node]:
        answer = facts[node]["why"].get("domains") or "it told its domains"
        return 1, (f"{node} answered ({_short(answer, 160)}): it is not dead. Fence it (power it off) before "
                   "recovering its guests elsewhere")  # fmt: skip
    silent = [facts[n]["why"]["domains"] for n in sorted(facts) if n != node and facts[n]["domains"] is None]
    if silent:
        return 1, f"every other node must tell its domains: {'; '.join(silent)}"
    doubles = _double_runs(facts)
    if doubles:
        return 2, (f"{ECLUSTERDOUBLERUN}: DOUBLE RUN of {_doubles_text(doubles)}: nothing is started "
                   "(salt-run xencluster.verify)")  # fmt: skip
    return None


def _check_runs_nowhere(guest, facts):
    """(the runs_nowhere check, the node it runs on or None)."""
    plain, moving = _sightings(guest, facts)
    told = ", ".join(n for n, fact in sorted(facts.items()) if fact["domains"] is not None)
    if moving:
        names = "; ".join(f"{', '.join(sorted(names))} on {n}" for n, names in sorted(moving.items()))
        return _check("runs_nowhere", False, f"a migration of {guest} is seen ({names}): destroy what is left of "
                      "it by hand first"), None  # fmt: skip
    if not plain:
        return _check("runs_nowhere", True, f"{guest} runs on none of {told}"), None
    n, dom = sorted(plain.items())[0]  # on two nodes: the round already refused everything
    if dom.get("state") in STOPPED:
        return _check("runs_nowhere", False, f"{guest} exists on {n} but is {dom['state']}: destroy it first "
                      f"(salt {n} xencluster_xl.destroy {guest})"), None  # fmt: skip
    return _check("runs_nowhere", False, f"{guest} already runs on {n} ({dom.get('state')})"), n


def _check_in_pair(guest, spec, node):
    """(the in_pair check, the surviving node of the guest's pair or None)."""
    pair = list(spec["nodes"])
    if node not in pair:
        return _check("in_pair", False, f"{guest}'s pair is {' and '.join(pair)}: {node} holds none of its "
                      "legs, so there is nothing to recover"), None  # fmt: skip
    survivor = next(n for n in pair if n != node)
    return _check("in_pair", True, f"{guest}'s pair is {' and '.join(pair)}: it survives on {survivor}"), survivor


def _check_survivor_drained(survivor, drained, allow_drained):
    if survivor not in drained:
        return _check("survivor_not_drained", True, f"{survivor} is not drained")
    if allow_drained:
        return _check("survivor_not_drained", True, f"{survivor} is drained, allowed by allow_drained=True")
    return _check("survivor_not_drained", False, f"{survivor} is drained: it takes no guest (allow_drained=True "
                  "starts it there anyway)")  # fmt: skip


def _check_surviving_legs(guest, spec, survivor, fact):
    """Each disk's leg on the survivor: its own LV at the stable path (from the node report)."""
    if fact["links"] is None:
        return _check("surviving_legs", False, f"the stable paths on {survivor} are not known: {fact['why']['links']}")
    problems, legs = [], []
    for disk in spec["disks"]:
        leg = next(leg for leg in disk["legs"] if leg["node"] == survivor)
        legs.append(leg["lv"])
        problem = _leg_problem(leg, survivor, fact["links"].get(leg["lv"]))
        if problem:
            problems.append(f"disk {disk['name']}: surviving leg {leg['lv']} on {survivor}: {problem}")
    if problems:
        return _check("surviving_legs", False, f"{guest}: {'; '.join(problems)}")
    return _check("surviving_legs", True, f"{survivor} has {guest}'s surviving legs: {', '.join(legs)} (local LVs)")


def _dead_legs(spec, node):
    return [leg for disk in spec["disks"] for leg in disk["legs"] if leg["node"] == node]


def _surviving_legs(spec, survivor):
    return [leg for disk in spec["disks"] for leg in disk["legs"] if leg["node"] == survivor]


def recovery_checks(model, node, guest, facts, drained, allow_drained):
    """
    The checks of starting ``guest`` of the lost ``node`` on its survivor, but its config and memory (pure).

    Returns ``(checks, survivor, runs_on)``: ``runs_nowhere``, ``in_pair``,
    ``survivor_not_drained`` and ``surviving_legs`` (a check that cannot be
    judged without the one before it is left out); the survivor is the other
    node of the guest's pair (None outside it); ``runs_on`` the node the
    guest already runs on (None).
    """
    spec = model["guests"][guest]
    once, runs_on = _check_runs_nowhere(guest, facts)
    pair, survivor = _check_in_pair(guest, spec, node)
    checks = [once, pair]
    if survivor is not None:
        checks.append(_check_survivor_drained(survivor, drained, allow_drained))
        checks.append(_check_surviving_legs(guest, spec, survivor, facts[survivor]))
    return checks, survivor, runs_on


def _config_path(guest):
    return f"{GUEST_CONFIG_DIR}/{guest}.cfg"


def _vdevs(entries):
    """``xvdb=/dev/xencluster/web1.root.node2, ...`` of xl disk specs."""
    out = []
    for entry in entries:
        fields = dict(f.split("=", 1) for f in entry.split(",") if "=" in f)
        out.append(f"{fields.get('vdev', '?')}={fields.get('target', '?')}")
    return ", ".join(out)


def _degraded_call(client, minion, guest, dead, dry_run, timeout):
    """``(kind, value)`` of ``xencluster_xl.create_degraded`` on ``minion``; never raises."""
    try:
        answers = client.cmd([minion], DEGRADED_FUN, [_config_path(guest), [leg["path"] for leg in dead]],
                             timeout=timeout, tgt_type="list", full_return=True,
                             kwarg={"dry_run": dry_run}) or {}  # fmt: skip
    except Exception as exc:  # pylint: disable=broad-except
        return "error", f"{type(exc).__name__}: {exc}"
    return _answer(answers.get(minion), DEGRADED_FUN)


def _config_problem(ret, spec, node, survivor):
    """Why the degraded config ``create_degraded`` returned does not match the model, or None."""
    kept = {entry.rpartition("target=")[2] for entry in ret.get("disk") or []}
    want = {leg["path"] for leg in _surviving_legs(spec, survivor)}
    dropped = {entry.rpartition("target=")[2] for entry in ret.get("without") or []}
    dead = {leg["path"] for leg in _dead_legs(spec, node)}
    if kept == want and dropped == dead:
        return None
    extra, missing = sorted(kept - want), sorted(want - kept)
    return (f"{_config_path(spec['name'])} on {survivor} does not match the model (keeps {extra or 'nothing more'}, "
            f"lacks {missing or 'nothing'}): state.apply xencluster.guests on {survivor} first")  # fmt: skip


def _check_survivor_config(client, model, node, guest, survivor, timeout):
    """The survivor_config check (ONE dry-run publish of create_degraded) and the kept disks."""
    spec, minion = model["guests"][guest], model["nodes"][survivor]["minion"]
    kind, ret = _degraded_call(client, minion, guest, _dead_legs(spec, node), True, timeout)
    if kind != "ok":
        why = _why_not(survivor, minion, DEGRADED_FUN, kind, ret)
        return _check("survivor_config", False, f"no degraded config of {guest} on {survivor}: {why}"), []
    problem = _config_problem(ret, spec, node, survivor)
    if problem:
        return _check("survivor_config", False, problem), []
    dead = ", ".join(leg["lv"] for leg in _dead_legs(spec, node))
    return _check("survivor_config", True, f"{_config_path(guest)} on {survivor} without {dead}: "
                  f"{_vdevs(ret['disk'])}"), list(ret["disk"])  # fmt: skip


def _check_memory_fit(guest, need, survivor, fact, planned):
    """The survivor_memory check; ``planned``: ``{guest: MiB}`` already placed on the survivor."""
    if fact["info"] is None:
        return _check("survivor_memory", False, f"the free memory of {survivor} is not known: {fact['why']['info']}")
    free = fact["info"].get("free_memory")
    if not isinstance(free, int) or isinstance(free, bool):
        return _check("survivor_memory", False, f"xl info on {survivor} has no free_memory: {free!r}")
    used = sum(planned.values())
    before = f", {used} MiB of it for {', '.join(planned)} before it" if planned else ""
    text = f"{survivor} has {free} MiB free{before}; {guest} needs {need} MiB (the model)"
    return _check("survivor_memory", used + need <= free, text)


def _entry(guest, why, node, survivor, spec):
    dead = [leg["lv"] for leg in _dead_legs(spec, node)] if survivor else []
    legs = [leg["lv"] for leg in _surviving_legs(spec, survivor)] if survivor else []
    return {"guest": guest, "outcome": None, "on": None, "survivor": survivor, "without_legs": dead, "legs": legs,
            "pinned": why["pinned"], "last_seen": why["last_seen"], "memory": spec["memory"], "checks": [],
            "disk": [], "message": ""}  # fmt: skip


def _refuse(entry, dry_run):
    failed = [c for c in entry["checks"] if not c["ok"]]
    verb = "would not start" if dry_run else "not starting"
    entry.update(outcome=REFUSED, message=f"{verb} {entry['guest']}: {len(failed)} check(s) failed ("
                 f"{', '.join(c['check'] for c in failed)}): {'; '.join(c['message'] for c in failed)}")


def _judge_guest(client, model, node, guest, why, facts, settings):
    """One guest's entry after every check but memory: outcome None while it may still be started.

    ``settings``: ``(drained nodes, allow_drained, dry_run, check_timeout)``.
    """
    drained, allow_drained, dry_run, check_timeout = settings
    spec = model["guests"][guest]
    checks, survivor, runs_on = recovery_checks(model, node, guest, facts, drained, allow_drained)
    entry = _entry(guest, why, node, survivor, spec)
    entry["checks"] = checks
    if runs_on is not None:
        entry.update(outcome=SKIPPED, on=runs_on, message=f"{guest} already runs on {runs_on}: not started")
    elif not all(c["ok"] for c in checks):
        _refuse(entry, dry_run)
    else:
        check, disk = _check_survivor_config(client, model, node, guest, survivor, check_timeout)
        entry["checks"].append(check)
        entry["disk"] = disk
        if not check["ok"]:
            _refuse(entry, dry_run)
    return entry


def _place(entries, facts, dry_run):
    """The survivor_memory check of each guest still in the running, first fit in name order."""
    planned = {}
    for entry in entries:
        if entry["outcome"] is not None:
            continue
        survivor = entry["survivor"]
        mine = planned.setdefault(survivor, {})
        check = _check_memory_fit(entry["guest"], entry["memory"], survivor, facts[survivor], dict(mine))
        entry["checks"].append(check)
        if not check["ok"]:
            _refuse(entry, dry_run)
            continue
        mine[entry["guest"]] = entry["memory"]
        if dry_run:
            entry.update(outcome=WOULD_START, on=survivor, message=f"would start {entry['guest']} on {survivor} "
                         f"degraded, without legs {', '.join(entry['without_legs'])}")  # fmt: skip


def _refuse_all(entries, why, dry_run):
    verb = "would not start" if dry_run else "not starting"
    for entry in entries:
        entry.update(outcome=REFUSED, message=f"{verb} {entry['guest']}: {why}")


def _fire_recover(node, guest, step, data):
    """One event ``xencluster/recover/<node>/<guest>/<step>``."""
    _fire_tag(f"{RECOVER_EVENT_BASE}/{node}/{guest}/{step}", data)


def _survivor_lists(client, model, node, timeout):
    """ONE list_domains publish to every node but the lost one: ``{node: domains or None}``."""
    others = sorted(n for n in model["nodes"] if n != node)
    return {n: {"domains": domains} for n, domains in _domain_lists(client, model["nodes"], others, timeout).items()}


def _final_check(guest, lists):
    """
    The last look before the start: ``None`` (go), or ``(outcome, retcode, on, why)``.

    ``lists``: ``{node: {"domains": list_domains or None}}`` of every node
    but the lost one. A guest someone started meanwhile is ``skipped``.
    """
    silent = sorted(n for n, fact in lists.items() if fact["domains"] is None)
    if silent:
        return FAILED, 1, None, f"{', '.join(silent)} did not tell its domains just before the start"
    doubles = _double_runs(lists)
    if doubles:
        why = f"{ECLUSTERDOUBLERUN}: DOUBLE RUN of {_doubles_text(doubles)} seen just before the start"
        return FAILED, 2, None, why
    check, runs_on = _check_runs_nowhere(guest, lists)
    if runs_on is not None:
        return SKIPPED, 0, runs_on, f"{check['message']} (seen just before the start): not started"
    if not check["ok"]:
        return FAILED, 1, None, f"{check['message']} (seen just before the start)"
    return None


def _post_check(guest, survivor, lists):
    """``(ok, where, message)``: the guest runs on the survivor, under its own name, and nowhere else."""
    plain, moving = _sightings(guest, lists)
    where = sorted(set(plain) | set(moving))
    silent = sorted(n for n, fact in lists.items() if fact["domains"] is None)
    if len(plain) > 1:
        return False, where, f"{ECLUSTERDOUBLERUN}: DOUBLE RUN: {guest} runs on {' and '.join(sorted(plain))}"
    if list(plain) == [survivor] and not moving and plain[survivor].get("state") not in STOPPED:
        note = f" ({', '.join(silent)} did not tell)" if silent else ""
        return True, where, f"{guest} runs on {survivor} ({plain[survivor].get('state')}){note}"
    if survivor in silent:
        return False, where, f"{survivor} did not tell its domains after the start: where {guest} runs is not known"
    names = "; ".join(f"{', '.join(sorted(found))} on {n}" for n, found in sorted(moving.items()))
    states = "; ".join(f"{dom.get('state')} on {n}" for n, dom in sorted(plain.items()))
    return False, where, f"{guest} is not running on {survivor}: seen {states or names or 'nowhere'}"


def _apply_sched(client, minion, guest, sched, timeout):
    """The model's credit2 weight/cap, as ``xencluster_guest.running`` applies them; a note on failure."""
    if not sched:
        return ""
    try:
        answers = client.cmd([minion], SCHED_FUN, [guest], timeout=timeout, tgt_type="list", full_return=True,
                             kwarg={"weight": sched["weight"], "cap": sched["cap"]}) or {}  # fmt: skip
        kind, ret = _answer(answers.get(minion), SCHED_FUN)
    except Exception as exc:  # pylint: disable=broad-except
        kind, ret = "error", f"{type(exc).__name__}: {exc}"
    return "" if kind == "ok" else f"; but setting its credit2 weight/cap failed: {_short(ret)}"


def _start_one(client, model, node, entry, settings):
    """Final check, create_degraded, sched, post-check of one planned guest: the retcode it calls for."""
    timeout, check_timeout = settings
    guest, survivor = entry["guest"], entry["survivor"]
    minion = model["nodes"][survivor]["minion"]
    _fire_recover(node, guest, "started", {"node": node, "guest": guest, "survivor": survivor,
                                           "without_legs": entry["without_legs"]})  # fmt: skip
    _progress(f"{guest}: last check, then xl create on {survivor} without {', '.join(entry['without_legs'])}")
    stop = _final_check(guest, _survivor_lists(client, model, node, check_timeout))
    if stop:
        outcome, code, on, why = stop
        entry.update(outcome=outcome, on=on, message=f"{guest}: {why}" if on else f"not starting {guest}: {why}")
        return _end_one(node, entry, code)
    kind, ret = _degraded_call(client, minion, guest, _dead_legs(model["guests"][guest], node), False, timeout)
    problem = None if kind == "ok" else _why_not(survivor, minion, DEGRADED_FUN, kind, ret)
    if kind == "ok":
        entry["disk"] = list(ret.get("disk") or entry["disk"])
    sched = "" if problem else _apply_sched(client, minion, guest, model["guests"][guest].get("sched"), check_timeout)
    ok, where, seen = _post_check(guest, survivor, _survivor_lists(client, model, node, check_timeout))
    if ok:
        note = f" ({problem}, but it runs)" if problem else ""
        entry.update(outcome=STARTED, on=survivor, message=f"{guest} started on {survivor} degraded, without legs "
                     f"{', '.join(entry['without_legs'])}: {seen}{note}{sched}")  # fmt: skip
        return _end_one(node, entry, 0)
    entry.update(outcome=FAILED, on=where[0] if len(where) == 1 else None,
                 message=f"{guest} was not started on {survivor}: {problem or 'xl create returned'}; {seen}")
    return _end_one(node, entry, 2 if seen.startswith(ECLUSTERDOUBLERUN) else 1)


def _end_one(node, entry, code):
    """Fire ``finished`` (it runs) or ``failed``, say it; return ``code``."""
    step = "finished" if entry["outcome"] in RUNS else "failed"
    _fire_recover(node, entry["guest"], step, dict(entry))
    _progress(entry["message"])
    if code == 2:
        log.error("xencluster.recover: %s", entry["message"])
    return code


def _start_all(client, model, node, entries, settings):
    """
    Start each planned guest in turn, under its lock; after a double run, nothing more. The worst retcode seen.

    ``settings``: ``(timeout, check_timeout, op)``. A guest another live operation holds is
    refused (busy), the others go on.
    """
    timeout, check_timeout, op = settings
    worst = 0
    for entry in entries:
        if entry["outcome"] is not None:
            continue
        if worst == 2:
            _refuse_all([entry], f"{ECLUSTERDOUBLERUN}: a DOUBLE RUN was seen during the recovery: nothing more "
                        "is started", False)  # fmt: skip
            continue
        guest, keys = entry["guest"], [_lock_key("guest", entry["guest"])]
        refusal = _lock(op, keys)
        if refusal:
            entry.update(outcome=REFUSED, message=f"not starting {guest}: {refusal['message']}")
            _progress(entry["message"])
            continue
        try:
            _op_step(op, f"starting {guest}", guest=guest)
            worst = max(worst, _start_one(client, model, node, entry, (timeout, check_timeout)))
            _op_step(op, f"{entry['outcome']} {guest}")
        finally:
            _unlock(op, keys)
    return worst


def _recover_summary(node, entries, unknown, dry_run, last):
    """One line: what happened to each guest of the lost node."""
    by = {}
    for entry in entries:
        by.setdefault(entry["outcome"], []).append(entry["guest"])
    if not entries:
        text = f"no guest of {node} is known: none is pinned to it, none was last seen on it"
    else:
        parts = [f"{len(by[o])} {o.replace('_', ' ')} ({', '.join(by[o])})" for o in
                 (STARTED, WOULD_START, SKIPPED, REFUSED, FAILED) if o in by]  # fmt: skip
        text = f"{'dry run: ' if dry_run else ''}recovering {node}: {', '.join(parts)}"
    if unknown:
        text += f"; last seen on {node} but not in the model: {', '.join(unknown)}"
    if last and last["error"]:
        text += f"; {last['error']}: a guest only last seen on {node} is missing from this list"
    elif last and last["at"] is None:
        text += (f"; no record of where guests were last seen (salt-run xencluster.verify keeps one): only the "
                 f"guests pinned to {node} are known")  # fmt: skip
    return text


def _recovery(node, dry_run, started, entries=(), unknown=(), last_seen=None, code=None, message=None):
    """The return of ``recover``; ``code``/``message`` given: a refusal before any guest was judged."""
    entries = list(entries)
    if code is None:
        # not knowing every guest of the node (unreadable record) is not "every guest runs"
        code = 0 if all(e["outcome"] in RUNS for e in entries) and not (last_seen or {}).get("error") else 1
    if code:
        __context__["retcode"] = code
    return {
        "result": code == 0, "retcode": code, "node": node, "dry_run": dry_run, "guests": entries,
        "started": [e["guest"] for e in entries if e["outcome"] in (STARTED, WOULD_START)],
        "skipped": [e["guest"] for e in entries if e["outcome"] == SKIPPED],
        "refused": [e["guest"] for e in entries if e["outcome"] in (REFUSED, FAILED)],
        "unknown": list(unknown), "last_seen": last_seen, "duration_s": round(time.monotonic() - started, 1),
        "message": message or _recover_summary(node, entries, unknown, dry_run, last_seen),
    }  # fmt: skip


def _plan_recovery(client, model, node, facts, last, settings):
    """Every guest of the lost node judged (memory last): ``(entries, unknown)``."""
    guests, unknown = lost_guests(model, node, last["guests"])
    entries = [_judge_guest(client, model, node, guest, why, facts, settings) for guest, why in guests.items()]
    _place(entries, facts, settings[2])
    return entries, unknown


def recover(node, confirm_dead=None, dry_run=False, allow_drained=False, timeout=DEFAULT_RECOVER_TIMEOUT,
            check_timeout=DEFAULT_VERIFY_TIMEOUT, tgt=None, tgt_type="glob"):  # fmt: skip
    """
    After ``node`` is lost: start each of its guests on the other node of its pair, on the surviving legs only.

    Nothing starts by itself: ``confirm_dead`` must name ``node`` again (the
    operator's word that it is powered off or fenced). Then:

    1. The model, as ``verify`` reads it; ``node`` must be a node of it.
    2. ONE publish of ``xencluster_node.report`` and ``xencluster_xl.info``
       to every node of the model, waiting up to ``check_timeout`` seconds
       (all of it when the lost node still has a key). Nothing is started
       when ``node`` answers at all (it is not dead: fence it first), when
       another node does not tell its domains, or when any domain runs on two
       nodes (``ECLUSTERDOUBLERUN``, exit status 2).
    3. The guests of ``node``: those the model pins to it (``node:``) and
       those last seen on it (the master cache's ``xencluster/last_seen``
       record, a migration's temporary name counting as its guest). A name
       seen there that the model does not know is listed in ``unknown``
       (nothing can start it; it does not change the exit status).
    4. Per guest, in name order, each check ``{"check", "ok", "message"}``:
       ``runs_nowhere`` (a guest that already runs is ``skipped``; one that
       is crashed or shut down somewhere, or a migration's leftover, is
       refused), ``in_pair`` (the survivor is the other node of its pair),
       ``survivor_not_drained`` (a drained survivor is refused unless
       ``allow_drained=True``: in an emergency the guests may have to go
       there anyway), ``surviving_legs`` (each disk's leg on the survivor is
       its own LV at ``/dev/xencluster/<leg>``: else the guest, disk, leg and
       path are named), ``survivor_config`` (ONE publish of
       ``xencluster_xl.create_degraded`` with ``dry_run=True`` to the
       survivor: ``/etc/xen/xencluster/<guest>.cfg``, the file
       ``xencluster_guest.defined`` rendered from the model, must hold
       exactly the dead and surviving legs), ``survivor_memory`` (``xl
       info`` free memory, first fit in name order: the guests placed before
       count).
    5. ``dry_run=True`` stops here (no event, nothing started) and returns
       the plan. Otherwise ``node`` is marked drained first (as ``evacuate``
       does): when it comes back it takes no guest until it is restored and
       undrained (``salt-run xencluster.undrain``).
    6. Each guest that passed, one at a time: a last ``list_domains`` publish
       to every node but ``node`` (it must be seen nowhere, every one must
       tell), ``xencluster_xl.create_degraded`` on the survivor (that file
       minus the disks of the dead legs; the others keep their ``vdev``, so
       the guest's md RAID1 runs degraded), the model's credit2 weight/cap,
       and a ``list_domains`` post-check. A double run seen on the way
       starts nothing more.

    Events (not in a dry run): ``xencluster/recover/<node>/<guest>/started``,
    then ``.../finished`` (it runs) or ``.../failed``, with the guest's
    entry; ``salt-run`` prints progress lines. A guest refused by its checks
    fires none.

    Returns ``{"result", "retcode", "node", "dry_run", "guests": [{"guest",
    "outcome" (started, would_start, skipped, refused, failed), "on" (where
    it runs, or would), "survivor", "without_legs", "legs", "pinned",
    "last_seen", "memory", "checks", "disk" (the xl disk specs kept),
    "message"}], "started", "skipped", "refused", "unknown", "last_seen"
    ({"at", "guests", "error"}), "drained" (``node`` is marked drained now;
    absent when the run was refused before), "duration_s", "message"}``. ``retcode``
    (salt-run's exit status) is 0 only when every guest of ``node`` runs (or
    would) once done, 2 after a double run, else 1 (also when the
    last_seen record cannot be read: the guests of ``node`` are not all
    known). A bad argument or model is such a return (``result`` False), not
    an exception.

    Restoring redundancy once ``node`` is back (re-adding its legs to each
    guest's md RAID1) is another verb; this one only starts guests.

    The lost node is locked (``node.<node>``) for the whole run, each guest
    while it is started (one another live operation holds is refused, busy);
    a node another operation holds: ``busy``, nothing published. An
    interrupted recovery of the node is closed by the re-run, which simply
    does the work again (a guest that runs already is skipped).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.recover node1 confirm_dead=node1 dry_run=True
        salt-run xencluster.recover node1 confirm_dead=node1
        salt-run xencluster.recover node1 confirm_dead=node1 allow_drained=True --out=json
    """
    started = time.monotonic()
    try:
        _check_recover_args(node, confirm_dead, {"dry_run": dry_run, "allow_drained": allow_drained}, timeout,
                            check_timeout)  # fmt: skip
        model = _evacuate_model(node, tgt, tgt_type)
    except (SaltInvocationError, CommandExecutionError) as exc:
        # Returned, not raised: salt-run exits 0 on a raised SaltInvocationError.
        log.error("xencluster.recover: not recovering: %s", exc)
        return _recovery(node, dry_run is True, started, code=1, message=f"not recovering {node}: {exc}")
    settings = (allow_drained, timeout, check_timeout)
    keys = [_lock_key("node", node)]
    if dry_run:
        holder = _busy(keys)
        if holder:
            return dict(_recovery(node, True, started, code=1, message=holder["message"]), busy=holder)
        return _recover_node(model, node, None, settings, started)
    op, refusal = _begin("recover", node, {"node": node, "allow_drained": allow_drained}, keys, f"recover {node}")
    if refusal:
        log.warning("xencluster.recover: %s", refusal["message"])
        result = _recovery(node, False, started, code=1, message=refusal["message"])
        return dict(result, busy=refusal) if "op" in refusal else result
    result = None
    try:
        result = _recover_node(model, node, op, settings, started)
        return result
    finally:
        _end(op, result)


def _busy_guests(entries, dry_run):
    """A dry run's look at the lock of each guest it would start: a guest a live operation holds would not start."""
    for entry in entries:
        if dry_run and entry["outcome"] == WOULD_START:
            holder = _busy([_lock_key("guest", entry["guest"])])
            if holder:
                entry.update(outcome=REFUSED, on=None,
                             message=f"would not start {entry['guest']}: {holder['message']}")


def _recover_node(model, node, op, settings, started):
    """``recover`` after its arguments and model are checked; under the lost node's lock (``op``), or a dry run."""
    dry_run = op is None
    allow_drained, timeout, check_timeout = settings
    client = _local_client()
    facts, told = _recover_round(client, model, check_timeout)
    last = _last_seen_on(node)
    refusal = _round_refusal(node, facts, told)
    _op_step(op, "round", refused=bool(refusal))
    if refusal:
        guests, unknown = lost_guests(model, node, last["guests"])
        entries = [_entry(g, why, node, _check_in_pair(g, model["guests"][g], node)[1], model["guests"][g])
                   for g, why in guests.items()]  # fmt: skip
        _refuse_all(entries, refusal[1], dry_run)
        message = f"{'would not recover' if dry_run else 'not recovering'} {node}: {refusal[1]}"
        (log.error if refusal[0] == 2 else log.warning)("xencluster.recover: %s", message)
        if not dry_run:
            _progress(message)
        return _recovery(node, dry_run, started, entries, unknown, last, code=refusal[0], message=message)
    earlier = _interrupted_ops("recover", node, op)
    if not dry_run:
        _earlier(earlier, False, op)
        _close_earlier(earlier, f"re-run by op {op['op']}: recover is idempotent (a guest that runs already is "
                       "skipped)", op)  # fmt: skip
    try:
        # Before anything starts: the lost node takes no guest (migrate refuses it) until restored.
        marked = _mark_drained(node, dry_run)
    except SaltCacheError as exc:
        log.error("xencluster.recover: not recovering %s: cannot mark it drained: %s", node, exc)
        return _recovery(node, dry_run, started, code=1, message=f"not recovering {node}: cannot mark it drained: {exc}")
    _op_step(op, "drained")
    entries, unknown = _plan_recovery(client, model, node, facts, last,
                                      (_drained(), allow_drained, dry_run, check_timeout))  # fmt: skip
    _busy_guests(entries, dry_run)
    code = None
    if not dry_run:
        _progress(f"recovering {node}: {sum(e['outcome'] is None for e in entries)} guest(s) to start degraded")
        code = _start_all(client, model, node, entries, (timeout, check_timeout, op)) or None
    result = _recovery(node, dry_run, started, entries, unknown, last, code=code if code == 2 else None)
    result["drained"] = marked
    if earlier:
        result["interrupted"] = _earlier(earlier, True, None)
    if not dry_run:
        _progress(result["message"])
    return result


# --- backup / restore_backup: file-level backups of guest disks ----------------------------------
#
# The dom0 side is xencluster_backup (one leg, on the dom0 that owns it). These verbs pick that
# dom0, make sure its backup volume is mounted, call it disk by disk and apply the retention; for
# a restore they check that the guest runs nowhere and take its pair out of service around
# restore_leg/invalidate_leg. The restore verb is restore_backup, not restore: "restore" is kept
# for bringing a node back after maintenance (re-adding its legs to every guest's md RAID1).

BACKUP_EVENT_BASE = "xencluster/backup"
RESTORE_EVENT_BASE = "xencluster/restore_backup"
LVM_FUN = "xencluster_lvm.report"
MOUNTS_FUN = "mount.active"
BLKID_FUN = "disk.blkid"
MOUNT_FUN = "mount.mount"
MKDIR_FUN = "file.mkdir"
BACKUP_FUN = "xencluster_backup.backup_leg"
PRUNE_FUN = "xencluster_backup.prune"
RESTORE_FUN = "xencluster_backup.restore_leg"
INVALIDATE_FUN = "xencluster_backup.invalidate_leg"
UNEXPORT_FUN = "xencluster_lio.unexport"
LOGOUT_FUN = "xencluster_iscsi.logout"
VOLUME_FUNS = (LVM_FUN, MOUNTS_FUN, BLKID_FUN, _FUN)  # ONE publish to a backup node
BACKUP_ROOT = "/srv/xencluster-backup"  # <root>/<target>: the mount point of target's volume
BACKUP_LV_PREFIX = "xcbackup-"  # target T's volume: LV <its vg>/xcbackup-T on its node
BACKUP_MOUNT_OPTIONS = ("nodev", "nosuid", "noexec")  # it holds the guests' files, owners and modes
VOLUME_FILESYSTEMS = ("ext4", "xfs")  # hard links (rsync --link-dest), ACLs, xattrs
# xencluster_backup.SUPPORTED (Salt syncs single files: a unit test keeps the two equal)
BACKUP_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs")
BACKUP_JOURNALS = ("replay", "skip")
DEFAULT_BACKUP_TIMEOUT = 14400  # seconds for one disk: snapshot, rsync, cleanup
MAX_BACKUP_TIMEOUT = 86400
_SNAPSHOT_SIZE = re.compile(r"(?:[1-9][0-9]?|100)%|[0-9]{1,20}(?:[kKmMgGtTpPeE](?:iB)?)?")
_BACKUP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # xencluster_backup's stamps
LATEST = "latest"
BACKED_UP, WOULD_BACK_UP = "backed_up", "would_back_up"
RESTORED, WOULD_RESTORE = "restored", "would_restore"


def _check_flags(flags):
    """Each of ``flags`` ({name: value}) must be a bool."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise SaltInvocationError(f"{name} must be True or False: {value!r}")


def _check_backup_args(guest, every, dry_run, timeouts, journal, snapshot_size):
    """The arguments of ``backup``; ``timeouts``: ``(timeout, check_timeout)``. Raises SaltInvocationError."""
    _check_flags({"all": every, "dry_run": dry_run})
    if every and guest is not None:
        raise SaltInvocationError(f"name one guest or give all=True, not both (guest {guest!r} and all=True)")
    if not every and guest is None:
        raise SaltInvocationError("name a guest (salt-run xencluster.backup web1) or back up every guest with all=True")
    if guest is not None:
        _check_name(guest, "guest")
    _check_seconds(timeouts[0], "timeout", MAX_BACKUP_TIMEOUT)
    _check_seconds(timeouts[1], "check_timeout", 600)
    if journal not in BACKUP_JOURNALS:
        raise SaltInvocationError(f"journal must be one of {', '.join(BACKUP_JOURNALS)}: {journal!r}")
    if not isinstance(snapshot_size, str) or not _SNAPSHOT_SIZE.fullmatch(snapshot_size):
        raise SaltInvocationError(f"snapshot_size must be 1% to 100% of the leg or a size (2G): {snapshot_size!r}")


def _call(client, minion, fun, args, kwarg, timeout):
    """``(kind, value)`` of ``fun`` on one minion (``_answer``'s kinds; a return of any type); never raises."""
    try:
        answers = client.cmd([minion], fun, list(args), timeout=timeout, tgt_type="list", full_return=True,
                             kwarg=dict(kwarg)) or {}  # fmt: skip
    except Exception as exc:  # pylint: disable=broad-except
        return "error", f"{type(exc).__name__}: {exc}"
    data = answers.get(minion)
    kind, ret = _answer(data, fun)
    if kind == "error" and isinstance(data, dict) and not data.get("retcode", 0):
        return "ok", ret  # mount.mount answers True, file.mkdir True: not a dict, not an error
    return kind, ret


def _volume(model, target):
    """Where backup target ``target`` keeps its backups (pure): node, VG, LV, device paths, mount point."""
    spec = model["backup"]["targets"][target]
    vg, lv = spec["vg"], f"{BACKUP_LV_PREFIX}{target}"
    return {
        "target": target, "node": spec["node"], "vg": vg, "lv": lv, "device": f"/dev/{vg}/{lv}",
        "mapper": f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}",
        "mountpoint": f"{BACKUP_ROOT}/{target}",
    }  # fmt: skip


def _backup_node(guest, spec, volume):
    """``(node, problem)``: the node of the guest's pair that holds the target's volume, or why none does."""
    pair = list(spec["nodes"] or [])
    if volume["node"] in pair:
        return volume["node"], None
    return None, (f"backup target {volume['target']} is on {volume['node']}, which holds no leg of {guest} "
                  f"(pair {' and '.join(pair)}): a leg is backed up on its own node into a directory there "
                  "(xencluster_backup writes locally), so the target must be on a node of the pair: point "
                  f"xencluster.guests.{guest}.backup at a target on {' or '.join(pair)}")  # fmt: skip


def _disk_problem(guest, disk):
    """Why a disk the model backs up cannot be (its filesystem), or None."""
    fs, where = disk["filesystem"], f"xencluster.guests.{guest}.disks.{disk['name']}"
    if fs in BACKUP_FILESYSTEMS:
        return None
    if fs == "none":
        return (f"disk {disk['name']}: the model says it holds no filesystem ({where}.filesystem: none): give "
                f"its filesystem (ext2, ext3, ext4 or xfs) or set {where}.backup: false")  # fmt: skip
    return f"disk {disk['name']}: {fs} is not supported (only ext2, ext3, ext4 and xfs): set {where}.backup: false"


def _dest(volume, guest, disk):
    """The backup directory of one guest disk on the target's volume."""
    return f"{volume['mountpoint']}/{guest}/{disk}"


def _plan_disk(guest, disk, node, volume):
    """One disk of the plan: the leg on ``node`` and its partner's stable path."""
    leg = next(leg for leg in disk["legs"] if leg["node"] == node)
    other = next(leg for leg in disk["legs"] if leg["node"] != node)
    return {"disk": disk["name"], "filesystem": disk["filesystem"], "vg": leg["vg"], "lv": leg["lv"],
            "partner": other["path"], "dest": _dest(volume, guest, disk["name"])}  # fmt: skip


def backup_plan(model, guest):
    """
    What backing up ``guest`` takes, from the validated model alone (pure).

    Returns ``{"guest", "target", "node" (the dom0 that backs it up, None
    when none can), "opted_out" (no target, or no disk to back up),
    "disks": [{"disk", "filesystem", "vg", "lv" (the leg on that node),
    "partner" (the other leg's /dev/xencluster path), "dest"}],
    "skipped_disks": [{"disk", "why"}], "problems": [reason, ...]}``. The
    node is the one of the guest's pair that holds the target's backup
    volume (a target lives on one node, so at most one leg qualifies).
    """
    spec = model["guests"][guest]
    plan = {"guest": guest, "target": spec["backup"], "node": None, "opted_out": False, "disks": [],
            "skipped_disks": [], "problems": []}  # fmt: skip
    if spec["backup"] is None:
        plan["opted_out"] = True
        plan["problems"].append(f"{guest} has no backup target: the model sets xencluster.guests.{guest}.backup: "
                                "false, or neither it nor xencluster.backup.default names one")  # fmt: skip
        return plan
    volume = _volume(model, spec["backup"])
    node, problem = _backup_node(guest, spec, volume)
    plan["node"] = node
    plan["problems"] += [problem] if problem else []
    for disk in spec["disks"]:
        if not disk["backup"]:
            why = "swap is never backed up" if disk["filesystem"] == "swap" else "backup: false in the model"
            plan["skipped_disks"].append({"disk": disk["name"], "why": why})
        elif _disk_problem(guest, disk):
            plan["problems"].append(_disk_problem(guest, disk))
        elif node is not None:
            plan["disks"].append(_plan_disk(guest, disk, node, volume))
    if not plan["problems"] and not plan["disks"]:
        plan["opted_out"] = True
        plan["problems"].append(f"no disk of {guest} is backed up (" + ", ".join(
            f"{d['disk']}: {d['why']}" for d in plan["skipped_disks"]) + ")")  # fmt: skip
    return plan


# --- the backup volume on its node ----------------------------------------------------------------


def _volume_round(client, model, volume, timeout):
    """ONE multi-function publish to the volume's node (if it has a key): ``{fun: (kind, value)}``."""
    minion = model["nodes"][volume["node"]]["minion"]
    if minion not in _accepted([minion]):
        # A publish that matches no minion prints a notice on stdout (breaking --out=json): a node
        # without an accepted key is not asked; it cannot answer anyway.
        return {fun: ("no_answer", None) for fun in VOLUME_FUNS}
    args = [[], [], [volume["device"]], []]  # disk.blkid of the volume's LV
    try:
        answers = client.cmd([minion], list(VOLUME_FUNS), args, timeout=timeout, tgt_type="list",
                             full_return=True) or {}  # fmt: skip
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster.backup: the publish to %s failed: %s", minion, exc)
        answers = {}
    return _multi_parts(answers.get(minion), VOLUME_FUNS)


def _mounted_problem(volume, at):
    """Why what is mounted at the volume's mount point will not do, or None."""
    where = f"{volume['mountpoint']} on {volume['node']}"
    if at.get("device") not in (volume["device"], volume["mapper"]):
        return f"{where} has {at.get('device')} mounted, not the backup volume {volume['device']}"
    missing = [opt for opt in BACKUP_MOUNT_OPTIONS if opt not in (at.get("opts") or [])]
    if missing:
        return (f"the backup volume is mounted at {where} without {','.join(missing)}: it holds the guests' files "
                f"with their owners and modes; remount it (mount -o remount,{','.join(BACKUP_MOUNT_OPTIONS)} "
                f"{volume['mountpoint']})")  # fmt: skip
    if at.get("fstype") not in VOLUME_FILESYSTEMS:
        return (f"the backup volume at {where} is {at.get('fstype')}: backups need ext4 or xfs (hard links, ACLs, "
                "xattrs)")  # fmt: skip
    return None


def _unmounted_problem(volume, mounts, blkid):
    """``(fstype, problem)`` of a volume not mounted at its mount point yet."""
    for path, at in sorted(mounts.items()):
        if at.get("device") in (volume["device"], volume["mapper"]):
            return None, (f"the backup volume {volume['device']} is mounted at {path} on {volume['node']}, not at "
                          f"{volume['mountpoint']}: unmount it there")  # fmt: skip
    fstype = next(iter(blkid.values()), {}).get("TYPE") if len(blkid) == 1 else None
    what = f"the backup volume {volume['device']} on {volume['node']}"
    if fstype is None:
        return None, f"{what} holds no filesystem: make one (mkfs.ext4 {volume['device']})"
    if fstype not in VOLUME_FILESYSTEMS:
        return None, f"{what} holds {fstype}: backups need ext4 or xfs (hard links, ACLs, xattrs)"
    return fstype, None


def _lv_problem(volume, lvm, minion):
    """Why the volume's LV (from ``xencluster_lvm.report``) cannot be used, or None."""
    lv = (lvm.get("lvs") or {}).get(f"{volume['vg']}/{volume['lv']}")
    if lv is None:
        return (f"the backup volume {volume['vg']}/{volume['lv']} of target {volume['target']} is missing on "
                f"{volume['node']}: create it there once (salt {minion} xencluster_lvm.lv_create {volume['vg']} "
                f"{volume['lv']} <size>, then mkfs.ext4 {volume['device']}); backup never creates it")  # fmt: skip
    if lv.get("active") is False:
        return f"the backup volume {volume['vg']}/{volume['lv']} is not active on {volume['node']}"
    return None


def volume_state(volume, parts, minion):
    """
    The backup volume on its node, from one ``_volume_round`` (pure).

    Returns ``volume`` plus ``"state"``: ``"mounted"`` (at its mount
    point, the right LV, nodev,nosuid,noexec, ext4 or xfs), ``"to_mount"``
    (the LV exists, holds ext4 or xfs and is mounted nowhere) or None;
    ``"fstype"``, ``"problem"`` (why it cannot be used, or None) and
    ``"domains"`` (the node's ``list_domains``, None when unknown).
    """
    out = dict(volume, state=None, fstype=None, problem=None, domains=None)
    kind, domains = parts[_FUN]
    out["domains"] = domains if kind == "ok" else None
    for fun in (LVM_FUN, MOUNTS_FUN):
        kind, value = parts[fun]
        if kind != "ok":
            out["problem"] = _why_not(volume["node"], minion, fun, kind, value)
            return out
    out["problem"] = _lv_problem(volume, parts[LVM_FUN][1], minion)
    if out["problem"]:
        return out
    at = parts[MOUNTS_FUN][1].get(volume["mountpoint"])
    if at is not None:
        out["problem"] = _mounted_problem(volume, at)
        out.update(state=None if out["problem"] else "mounted", fstype=at.get("fstype"))
        return out
    kind, blkid = parts[BLKID_FUN]
    if kind not in ("ok", "error") or not isinstance(blkid, dict):
        out["problem"] = _why_not(volume["node"], minion, BLKID_FUN, kind, blkid)
        return out
    # blkid exits 2 when it finds no signature: disk.blkid then returns {} with that retcode
    fstype, out["problem"] = _unmounted_problem(volume, parts[MOUNTS_FUN][1], blkid)
    out.update(state=None if out["problem"] else "to_mount", fstype=fstype)
    return out


def _mount_volume(client, model, vol, timeout):
    """Mount a volume in state ``to_mount`` (``mount.mount``, nodev,nosuid,noexec); the problem or None."""
    minion = model["nodes"][vol["node"]]["minion"]
    kwarg = {"mkmnt": True, "fstype": vol["fstype"], "opts": ",".join(BACKUP_MOUNT_OPTIONS)}
    kind, ret = _call(client, minion, MOUNT_FUN, [vol["mountpoint"], vol["device"]], kwarg, timeout)
    if kind == "ok" and ret is True:
        vol.update(state="mounted", mounted_now=True)
        _progress(f"mounted the backup volume {vol['device']} at {vol['mountpoint']} on {vol['node']}")
        return None
    why = _short(ret) if kind == "ok" else _why_not(vol["node"], minion, MOUNT_FUN, kind, ret)
    return f"mounting {vol['device']} at {vol['mountpoint']} on {vol['node']} failed: {why}"


# --- backup: one guest --------------------------------------------------------------------------


def _guest_entry(plan):
    """A guest's entry in ``backup``'s return, before anything is judged."""
    return {"guest": plan["guest"], "outcome": None, "target": plan["target"], "node": plan["node"],
            "runs_on_backup_node": None, "volume": None, "disks": [], "skipped_disks": plan["skipped_disks"],
            "warnings": [], "message": ""}  # fmt: skip


def _runs_here(guest, domains):
    """Whether ``guest`` (or an xl migrate copy of it) is a domain in ``domains``; None when unknown."""
    if domains is None:
        return None
    return any(_base_name(name) == guest for name in domains)


def _leg_kwargs(disk, settings, dry_run):
    """The keyword arguments of ``backup_leg`` for one disk."""
    return {"fstype": disk["filesystem"], "partner": disk["partner"], "journal": settings["journal"],
            "snapshot_size": settings["snapshot_size"], "dry_run": dry_run}  # fmt: skip


def _cleared_by_run(refused, dest, vol, dry_run):
    """Split a dry run's refusals: ``(remaining, cleared)``; the run creates ``dest`` on a volume it mounts first."""
    if not dry_run:  # the run has mounted the volume and made dest by now: every refusal stands
        return refused, []
    cleared = (f"backup directory {dest} does not exist",)
    if vol["state"] == "to_mount":
        cleared += (f"backup directory {dest} is on the root filesystem",)
    return [r for r in refused if not r.startswith(cleared)], [r for r in refused if r.startswith(cleared)]


def _disk_plan(client, minion, node, disk, vol, settings):
    """One disk's node plan (backup_leg with dry_run=True): its entry and the reasons it would not run."""
    kind, ret = _call(client, minion, BACKUP_FUN, [disk["vg"], disk["lv"], disk["dest"]],
                      _leg_kwargs(disk, settings, True), settings["check_timeout"])  # fmt: skip
    entry = {"disk": disk["disk"], "leg": disk["lv"], "node": node, "dest": disk["dest"]}
    if kind != "ok":
        return entry, [f"disk {disk['disk']}: {_why_not(node, minion, BACKUP_FUN, kind, ret)}"]
    refused, cleared = _cleared_by_run(list(ret.get("refused") or []), disk["dest"], vol, settings["dry_run"])
    entry.update(snapshot=ret.get("snapshot"), link_dest=ret.get("link_dest"), refused=refused,
                 cleared_by_run=cleared)  # fmt: skip
    return entry, [f"disk {disk['disk']}: {r}" for r in refused]


def _make_dests(client, minion, plan, timeout):
    """``file.mkdir`` of each disk's backup directory (mode 0700): the problems."""
    problems = []
    for disk in plan["disks"]:
        kind, ret = _call(client, minion, MKDIR_FUN, [disk["dest"]], {"mode": "0700"}, timeout)
        if kind != "ok" or ret is not True:
            why = _short(ret) if kind == "ok" else _why_not(plan["node"], minion, MKDIR_FUN, kind, ret)
            problems.append(f"disk {disk['disk']}: cannot create {disk['dest']}: {why}")
    return problems


def _rsync_figures(rsync):
    """What moved, from backup_leg's rsync counters."""
    rsync = rsync or {}
    return {"files": rsync.get("files"), "files_transferred": rsync.get("transferred"),
            "bytes_transferred": rsync.get("transferred_size"), "bytes_sent": rsync.get("literal_data")}  # fmt: skip


def _leg_result(entry, kind, ret, why):
    """Fill a disk's entry from backup_leg's answer (a dict, also when it failed: retcode 1)."""
    if isinstance(ret, dict) and "result" in ret and kind in ("ok", "error"):
        backup = ret.get("backup")
        entry.update(result=ret["result"] is True, backup=backup, path=f"{entry['dest']}/{backup}" if backup else None,
                     snapshot=ret.get("snapshot"), overflow=bool((ret.get("snapshot") or {}).get("full")),
                     cleanup=ret.get("cleanup") or [], warnings=list(ret.get("warnings") or []),
                     error=ret.get("error"), **_rsync_figures(ret.get("rsync")))  # fmt: skip
    else:
        entry.update(result=False, backup=None, path=None, snapshot=None, overflow=False, cleanup=[], warnings=[],
                     error=why, **_rsync_figures(None))  # fmt: skip


def _prune(client, minion, node, entry, retention, timeout):
    """``prune`` of one backup directory with the model's retention (the model requires one with a backup section)."""
    counts = {key: value for key, value in retention.items() if value}
    kind, ret = _call(client, minion, PRUNE_FUN, [entry["dest"]], counts, timeout)
    if kind == "ok":
        entry["prune"] = {"retention": counts, "kept": sorted(ret.get("kept") or {}),
                          "deleted": list(ret.get("deleted") or []), "stale": list(ret.get("stale") or [])}
        return
    entry.update(prune=None, result=False,
                 error=f"backed up, but pruning failed: {_why_not(node, minion, PRUNE_FUN, kind, ret)}")  # fmt: skip


def _disk_line(guest, entry):
    """The progress line of one disk's backup."""
    if entry["result"]:
        return (f"{guest}/{entry['disk']}: {entry['backup']} on {entry['node']}, {entry['files_transferred']} of "
                f"{entry['files']} files ({entry['bytes_transferred']} bytes) moved in {entry['duration_s']} s")
    usage = (entry["snapshot"] or {}).get("usage_percent")
    full = f" (snapshot OVERFLOW, {usage}% full)" if entry["overflow"] else ""
    return f"{guest}/{entry['disk']}: FAILED{full}: {entry['error']}"


def _back_up_disk(client, minion, plan, disk, settings):
    """backup_leg on the node, then prune: the disk's entry."""
    entry = {"disk": disk["disk"], "leg": disk["lv"], "node": plan["node"], "dest": disk["dest"], "prune": None}
    started = time.monotonic()
    timeout = settings["timeout"]
    kind, ret = _call(client, minion, BACKUP_FUN, [disk["vg"], disk["lv"], disk["dest"]],
                      _leg_kwargs(disk, settings, False), timeout)  # fmt: skip
    why = (f"{plan['node']} did not answer {BACKUP_FUN} within {timeout} s: whether it finished is not known "
           "(a snapshot left behind shows in salt-run xencluster.verify as ELEGSNAPSHOT)") if kind == "no_answer" \
        else _why_not(plan["node"], minion, BACKUP_FUN, kind, ret)  # fmt: skip
    _leg_result(entry, kind, ret, why)
    if entry["result"]:
        _prune(client, minion, plan["node"], entry, settings["retention"], settings["check_timeout"] + 60)
    entry["duration_s"] = round(time.monotonic() - started, 1)
    _progress(_disk_line(plan["guest"], entry))
    return entry


def _refuse_guest(entry, problems, dry_run):
    """Mark a guest refused, with every reason."""
    verb = "would not back up" if dry_run else "not backing up"
    entry.update(outcome=REFUSED, message=f"{verb} {entry['guest']}: {'; '.join(problems)}")
    return entry


def _prepare(client, model, plan, vol, settings):
    """Before any snapshot: the volume mounted, the directories made (not in a dry run); the problems."""
    if vol["problem"]:
        return [vol["problem"]]
    if settings["dry_run"]:
        return []
    if vol["state"] == "to_mount":
        problem = _mount_volume(client, model, vol, settings["check_timeout"])
        if problem:
            vol["problem"] = problem  # the other guests of this node are refused too, without a new try
            return [problem]
    return _make_dests(client, model["nodes"][plan["node"]]["minion"], plan, settings["check_timeout"])


def _backup_guest(client, model, plan, vol, settings):
    """Refusals, then each disk's node plan, then (not in a dry run) each disk's backup: the guest's entry."""
    entry = _guest_entry(plan)
    if plan["problems"]:
        return _refuse_guest(entry, plan["problems"], settings["dry_run"])
    entry["runs_on_backup_node"] = _runs_here(plan["guest"], vol["domains"])
    if entry["runs_on_backup_node"]:
        entry["warnings"].append(f"{plan['guest']} runs on {plan['node']}, the node that backs it up: the backup "
                                 "I/O lands on its host (the other node of its pair has no backup volume)")
    problems = _prepare(client, model, plan, vol, settings)
    entry["volume"] = {"device": vol["device"], "mountpoint": vol["mountpoint"], "state": vol["state"],
                       "mounted_now": vol.get("mounted_now", False)}  # fmt: skip
    if problems:
        return _refuse_guest(entry, problems, settings["dry_run"])
    minion = model["nodes"][plan["node"]]["minion"]
    planned = [_disk_plan(client, minion, plan["node"], disk, vol, settings) for disk in plan["disks"]]
    refusals = [reason for _entry, reasons in planned for reason in reasons]
    if refusals:
        entry["disks"] = [disk for disk, _reasons in planned]
        return _refuse_guest(entry, refusals, settings["dry_run"])
    if settings["dry_run"]:
        mount = f" after mounting {vol['device']} at {vol['mountpoint']}" if vol["state"] == "to_mount" else ""
        entry.update(outcome=WOULD_BACK_UP, disks=[disk for disk, _reasons in planned],
                     message=f"would back up {len(planned)} disk(s) of {plan['guest']} on {plan['node']}{mount}")
        return entry
    return _run_guest(client, minion, plan, entry, settings)


def _run_guest(client, minion, plan, entry, settings):
    """The backup proper of a guest whose every disk passed its node plan; events and progress."""
    guest = plan["guest"]
    _fire_tag(f"{BACKUP_EVENT_BASE}/{guest}/started", {"guest": guest, "node": plan["node"], "target": plan["target"],
                                                       "disks": [d["disk"] for d in plan["disks"]]})  # fmt: skip
    _progress(f"{guest}: backing up {len(plan['disks'])} disk(s) on {plan['node']} (target {plan['target']})")
    entry["disks"] = [_back_up_disk(client, minion, plan, disk, settings) for disk in plan["disks"]]
    failed = [d["disk"] for d in entry["disks"] if not d["result"]]
    entry["outcome"] = FAILED if failed else BACKED_UP
    entry["message"] = (f"{guest}: {len(failed)} of {len(entry['disks'])} disk(s) failed ({', '.join(failed)})"
                        if failed else f"{guest}: {len(entry['disks'])} disk(s) backed up on {plan['node']}")
    _fire_tag(f"{BACKUP_EVENT_BASE}/{guest}/{'failed' if failed else 'finished'}", entry)
    return entry


# --- backup: the verb --------------------------------------------------------------------------


def _backup_guests(model, guest):
    """The guests to back up, in name order: the one named, or every guest of the model."""
    return [guest] if guest is not None else sorted(model["guests"])


def _volumes(client, model, plans, check_timeout):
    """``{node: volume_state}`` of every backup node of ``plans``: ONE round per node."""
    out = {}
    for plan in plans:
        node = plan["node"]
        if node is None or plan["problems"] or node in out:
            continue
        volume = _volume(model, plan["target"])
        out[node] = volume_state(volume, _volume_round(client, model, volume, check_timeout),
                                 model["nodes"][node]["minion"])  # fmt: skip
    return out


def _backup_summary(entries, dry_run):
    """One line: what happened to each guest."""
    by = {}
    for entry in entries:
        by.setdefault(entry["outcome"], []).append(entry["guest"])
    if not entries or set(by) == {SKIPPED}:
        return "no guest of the model has anything to back up" + (f" (skipped: {', '.join(by[SKIPPED])})"
                                                                  if by else "")  # fmt: skip
    parts = [f"{len(by[o])} {o.replace('_', ' ')} ({', '.join(by[o])})"
             for o in (BACKED_UP, WOULD_BACK_UP, FAILED, REFUSED, SKIPPED) if o in by]  # fmt: skip
    return f"{'dry run: ' if dry_run else ''}backup: {', '.join(parts)}"


def _backup_result(entries, dry_run, started, message=None):
    """``backup``'s return; ``message`` given: refused before any guest was looked at."""
    ok = message is None and all(e["outcome"] in (BACKED_UP, WOULD_BACK_UP, SKIPPED) for e in entries)
    if not ok:
        __context__["retcode"] = 1
    outcome = {o: [e["guest"] for e in entries if e["outcome"] == o]
               for o in (BACKED_UP, FAILED, REFUSED, SKIPPED)}  # fmt: skip
    return {
        "result": ok, "retcode": 0 if ok else 1, "dry_run": dry_run, "guests": entries,
        "backed_up": outcome[BACKED_UP] + [e["guest"] for e in entries if e["outcome"] == WOULD_BACK_UP],
        "failed": outcome[FAILED], "refused": outcome[REFUSED], "skipped": outcome[SKIPPED],
        "duration_s": round(time.monotonic() - started, 1), "message": message or _backup_summary(entries, dry_run),
    }  # fmt: skip


def _backup_gated(client, model, plan, vol, settings):
    """
    One guest's backup under its lock: with ``all=True`` each guest is locked while it is backed up.

    A named guest was locked when the operation began (``settings["locked"]``). A guest another
    live operation holds is refused (busy); a dry run only looks.
    """
    guest, op, dry_run = plan["guest"], settings["op"], settings["dry_run"]
    keys = [_lock_key("guest", guest)]
    if settings["locked"]:
        _op_step(op, f"backing up {guest}", guest=guest)
        return _backup_guest(client, model, plan, vol, settings)
    refusal = _gate(op, keys, dry_run)
    if refusal:
        return _refuse_guest(_guest_entry(plan), [refusal["message"]], dry_run)
    try:
        _op_step(op, f"backing up {guest}", guest=guest)
        return _backup_guest(client, model, plan, vol, settings)
    finally:
        if not dry_run:
            _unlock(op, keys)


def _judge_all(client, model, guests, every, settings):
    """Each guest's entry, one guest at a time (a guest that opted out is skipped under ``all=True``)."""
    plans = [backup_plan(model, guest) for guest in guests]
    volumes = _volumes(client, model, plans, settings["check_timeout"])
    entries = []
    for plan in plans:
        if plan["opted_out"] and every:
            entry = _guest_entry(plan)
            entries.append(dict(entry, outcome=SKIPPED, message=f"{plan['guest']}: {plan['problems'][0]}"))
            continue
        entry = _backup_gated(client, model, plan, volumes.get(plan["node"]), settings)
        if entry["outcome"] == REFUSED and not settings["dry_run"]:
            # a scheduled backup that cannot run must be heard, like one that fails
            _fire_tag(f"{BACKUP_EVENT_BASE}/{plan['guest']}/failed", entry)
            _progress(entry["message"])
        entries.append(entry)
    return entries


def backup(guest=None, all=False, dry_run=False, timeout=DEFAULT_BACKUP_TIMEOUT,  # pylint: disable=redefined-builtin
           check_timeout=DEFAULT_VERIFY_TIMEOUT, journal="replay", snapshot_size="10%", tgt=None,
           tgt_type="glob"):  # fmt: skip
    """
    File-level backup of ``guest`` (or, with ``all=True``, of every guest of the model) into its backup target.

    ``all`` is a flag rather than a guest name such as ``'*'`` or ``all``:
    a guest may be called ``all``, and ``'*'`` would suggest patterns that
    are not supported.

    1. The model, as ``verify`` reads it (``tgt``/``tgt_type`` pick the
       minion whose pillar holds it). Per guest, from the model alone: its
       backup target (``guests.<g>.backup`` or ``backup.default``) and the
       node that backs it up: the node of the guest's pair that holds the
       target (``backup.targets.<t>.node``). A target lives on one node, so
       that is the one leg to read; a target on a third node is refused
       (``xencluster_backup`` snapshots a leg on its owner and writes to a
       local directory: the other node has neither). Disks with ``backup:
       false`` and swap are skipped; a disk the model backs up whose
       filesystem is not ext2, ext3, ext4 or xfs refuses the whole guest,
       with the reason. Under ``all=True`` a guest without a target or
       without a disk to back up is ``skipped``; named, it is refused.
    2. ONE publish per backup node (``xencluster_lvm.report``,
       ``mount.active``, ``disk.blkid`` of the volume, ``list_domains``,
       waiting ``check_timeout`` s). The backup volume of target ``T`` is the
       LV ``<vg>/xcbackup-T`` of the target's VG, mounted at
       ``/srv/xencluster-backup/T`` with ``nodev,nosuid,noexec``; it must
       exist and hold ext4 or xfs (it is never created here: the refusal
       says how). Something else mounted there, the volume mounted
       elsewhere or without those options: refused. A node that does not
       answer refuses its guests. Nothing has changed so far.
    3. Not in a dry run: ``mount.mount`` of the volume if it is not mounted
       (it stays mounted: restores and the next run use it; nothing is
       written to fstab) and ``file.mkdir`` of ``<mount>/<guest>/<disk>``
       (0700).
    4. Per disk, ``xencluster_backup.backup_leg`` with ``dry_run=True``
       (``fstype`` from the model, ``partner`` the other leg's
       ``/dev/xencluster`` path): any refusal refuses the guest before its
       first snapshot.
    5. Not in a dry run, one guest at a time, one disk after the other:
       ``backup_leg`` (up to ``timeout`` s per disk; ``journal`` and
       ``snapshot_size`` passed on), then ``xencluster_backup.prune`` with
       the model's ``backup.retention`` (``daily``/``weekly``/``monthly``).
       A snapshot that overflowed fails its disk, reported with its usage.

    The guest is locked (``guest.<guest>``) for the run; with ``all=True``
    each guest while it is backed up (one another live operation holds is
    refused, busy). A named guest another operation holds: ``busy``,
    nothing published.

    Events (not in a dry run): ``xencluster/backup/<guest>/started``, then
    ``.../finished`` or ``.../failed`` with the guest's entry; a guest
    refused in a real run fires ``.../failed`` too (a scheduled backup that
    cannot run must be heard). ``salt-run`` prints progress lines.

    Returns ``{"result", "retcode" (0 only when every guest asked for, not
    skipped, was backed up, or would be), "dry_run", "guests": [{"guest",
    "outcome" (backed_up, would_back_up, failed, refused, skipped),
    "target", "node", "runs_on_backup_node", "disks": [{"disk", "leg",
    "node", "dest", "result", "backup", "path", "files",
    "files_transferred", "bytes_transferred", "bytes_sent", "snapshot"
    {"name", "size", "usage_percent", "full"}, "overflow", "cleanup",
    "warnings", "error", "prune" {"retention", "kept", "deleted",
    "stale"}, "duration_s"}], "skipped_disks", "warnings", "message"}],
    "backed_up", "failed", "refused", "skipped", "duration_s",
    "message"}``; a dry run's disks carry the node's plan (``snapshot``,
    ``link_dest``, ``refused``, ``cleared_by_run``: what the run itself
    settles by mounting the volume and creating the directory). A bad
    argument, an unreadable model or an unknown guest is such a return,
    not an exception.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.backup web1 dry_run=True
        salt-run xencluster.backup web1
        salt-run xencluster.backup all=True snapshot_size=20% --out=json
    """
    started = time.monotonic()
    every = all
    try:
        _check_backup_args(guest, every, dry_run, (timeout, check_timeout), journal, snapshot_size)
        model = _migrate_model(guest, tgt, tgt_type) if guest is not None else _load_model(tgt, tgt_type)[1]
    except (SaltInvocationError, CommandExecutionError) as exc:
        # Returned, not raised: salt-run exits 0 on a raised SaltInvocationError.
        log.error("xencluster.backup: not backing up: %s", exc)
        return _backup_result([], dry_run is True, started, message=f"not backing up: {exc}")
    settings = {"dry_run": dry_run, "timeout": timeout, "check_timeout": check_timeout, "journal": journal,
                "snapshot_size": snapshot_size, "retention": dict(model["backup"]["retention"]), "op": None,
                "locked": guest is not None and not dry_run}  # fmt: skip
    keys = [_lock_key("guest", guest)] if guest is not None else []
    if dry_run:
        holder = _busy(keys)
        if holder:
            return dict(_backup_result([], True, started, message=holder["message"]), busy=holder)
        return _backup_run(model, guest, every, settings, started)
    subject = guest if guest is not None else "all"
    settings["op"], refusal = _begin("backup", subject, {"guest": guest}, keys, f"backup {subject}")
    if refusal:
        log.warning("xencluster.backup: %s", refusal["message"])
        result = _backup_result([], False, started, message=refusal["message"])
        return dict(result, busy=refusal) if "op" in refusal else result
    result = None
    try:
        result = _backup_run(model, guest, every, settings, started)
        return result
    finally:
        _end(settings["op"], result)


def _backup_run(model, guest, every, settings, started):
    """``backup`` after its arguments and model are checked; a real run under its op (``settings["op"]``)."""
    dry_run, op = settings["dry_run"], settings["op"]
    earlier = _interrupted_ops("backup", guest if guest is not None else "all", op)
    if earlier and not dry_run:
        _earlier(earlier, False, op)
        _close_earlier(earlier, f"re-run by op {op['op']}: a snapshot it left is reported by verify "
                       "(ELEGSNAPSHOT)", op)  # fmt: skip
    entries = _judge_all(_local_client(), model, _backup_guests(model, guest), every, settings)
    result = _backup_result(entries, dry_run, started)
    if earlier:
        result["interrupted"] = _earlier(earlier, True, None)
    if not dry_run:
        _progress(result["message"])
    return result


# --- restore_backup: a backup into one leg of a pair, the other leg invalidated --------------------


def _check_restore_args(guest, disk, backup, into, node, flags, timeouts):
    """``(backup name, (into guest, into disk))`` after checking every argument; raises SaltInvocationError."""
    _check_name(guest, "guest")
    _check_name(disk, "disk")
    backup = LATEST if backup is None else backup
    if not isinstance(backup, str) or not (backup == LATEST or _BACKUP_NAME.fullmatch(backup)):
        raise SaltInvocationError(f"backup must be latest or a backup name like 20261124T081500Z: {backup!r}")
    if into is None:
        into = (guest, disk)
    elif isinstance(into, str) and into.count("/") == 1:
        into = tuple(into.split("/"))
        _check_name(into[0], "into guest")
        _check_name(into[1], "into disk")
    else:
        raise SaltInvocationError(f"into must be <guest>/<disk> (web2/root): {into!r}")
    if node is not None:
        _check_name(node, "node")
    _check_flags(flags)
    _check_seconds(timeouts[0], "timeout", MAX_BACKUP_TIMEOUT)
    _check_seconds(timeouts[1], "check_timeout", 600)
    return backup, into


def _model_disk(model, guest, disk):
    """``(disk spec, None)`` or ``(None, why not)``."""
    spec = model["guests"].get(guest)
    if spec is None:
        return None, f"no guest {guest} in the model (guests: {', '.join(sorted(model['guests'])) or 'none'})"
    found = next((d for d in spec["disks"] if d["name"] == disk), None)
    if found is None:
        return None, f"{guest} has no disk {disk} (disks: {', '.join(d['name'] for d in spec['disks'])})"
    return found, None


def restore_plan(model, guest, disk, into, node=None):
    """
    Where a restore of ``guest``'s backups of ``disk`` into ``into`` (guest, disk) happens (pure).

    The backups are on the volume of ``guest``'s backup target, on the
    target's node; ``restore_leg`` reads them there, so that node writes its
    own leg of ``into``'s pair and the other leg is invalidated. Returns
    ``{"source": {"guest", "disk", "target", "dest"}, "into": {"guest",
    "disk"}, "node", "leg" (written), "other" (invalidated), "volume",
    "problems"}``.
    """
    out = {"source": {"guest": guest, "disk": disk, "target": None, "dest": None},
           "into": {"guest": into[0], "disk": into[1]}, "node": None, "leg": None, "other": None, "volume": None,
           "problems": []}  # fmt: skip
    problems = [p for p in (_model_disk(model, guest, disk)[1], _model_disk(model, *into)[1]) if p]
    target = model["guests"].get(guest, {}).get("backup")
    if not problems and target is None:
        problems.append(f"{guest} has no backup target in the model, so where its backups are is not known "
                        "(xencluster_backup.restore_leg on the node that holds them restores by hand)")  # fmt: skip
    if problems:
        out["problems"] = problems
        return out
    volume = _volume(model, target)
    writer, pair = volume["node"], _model_disk(model, *into)[0]["nodes"]
    out.update(volume=volume, source=dict(out["source"], target=target, dest=_dest(volume, guest, disk)))
    if node is not None and node != writer:
        problems.append(f"the backups of {guest}/{disk} are on {writer} (target {target}) and restore_leg reads them "
                        f"there: only {writer}'s leg can be written, not {node}'s")  # fmt: skip
    elif writer not in pair:
        problems.append(f"{into[0]}/{into[1]} has no leg on {writer}, where the backups of {guest}/{disk} are "
                        f"(its pair: {' and '.join(pair)}): restore_leg writes a leg on the node that holds them")
    else:
        legs = _model_disk(model, *into)[0]["legs"]
        out.update(node=writer, leg=next(leg for leg in legs if leg["node"] == writer),
                   other=next(leg for leg in legs if leg["node"] != writer))  # fmt: skip
    out["problems"] = problems
    return out


def _live_problems(plan, facts):
    """The round's verdict (``_recover_round``): every node tells, the guest runs nowhere, both legs are there."""
    guest = plan["into"]["guest"]
    silent = [fact["why"]["domains"] for _node, fact in sorted(facts.items()) if fact["domains"] is None]
    if silent:
        return [f"every node must tell its domains, so that {guest} is known to run nowhere: {'; '.join(silent)}"]
    check, _on = _check_runs_nowhere(guest, facts)
    problems = [] if check["ok"] else [f"{check['message']}: stop it everywhere first"]
    pair = " and ".join(sorted({plan["leg"]["node"], plan["other"]["node"]}))
    for leg in (plan["leg"], plan["other"]):
        links = facts[leg["node"]]["links"]
        if links is None:
            problems.append(f"the stable paths on {leg['node']} are not known: {facts[leg['node']]['why']['links']}")
            continue
        problem = _leg_problem(leg, leg["node"], links.get(leg["lv"]))
        if problem:
            problems.append(f"leg {leg['lv']} on {leg['node']}: {problem}: the legs of a new pair are made by the "
                            f"leg states (state.apply xencluster.storage on {pair}), and its guest must have made "
                            "its md RAID1 on them once")  # fmt: skip
    return problems


def _open_only(leg, reason):
    """True for a node refusal that only says ``leg`` is open: its LIO export, which the run removes first."""
    return reason.startswith(f"{leg['vg']}/{leg['lv']} is open")


def _no_superblock(leg, reason):
    """True for invalidate_leg's refusal of a leg whose md superblock is gone (an earlier run zeroed it)."""
    return reason == f"{leg['vg']}/{leg['lv']} carries no md superblock"


def _reasons(value, head):
    """The reasons of a raised refusal (``ERROR: <head> refused: a; b``), else the answer as one line."""
    text = value if isinstance(value, str) else repr(value)
    marker = f"{head} refused: "
    return text.split(marker, 1)[1].split("; ") if marker in text else [_short(text)]


def _invalidate_check(client, model, other, array, timeout):
    """``invalidate_leg`` with ``dry_run=True`` on the other leg: ``(refusals, already invalidated)``."""
    minion = model["nodes"][other["node"]]["minion"]
    kind, ret = _call(client, minion, INVALIDATE_FUN, [other["vg"], other["lv"], array], {"dry_run": True}, timeout)
    if kind == "ok":
        return [], False
    if kind != "error" or not isinstance(ret, str):
        return [_why_not(other["node"], minion, INVALIDATE_FUN, kind, ret)], False
    reasons = _reasons(ret, f"invalidate {other['vg']}/{other['lv']}")
    blank = any(_no_superblock(other, r) for r in reasons)  # nothing left to invalidate: a re-run
    return [r if _open_only(other, r) else f"{other['node']}: {r}" for r in reasons
            if not _no_superblock(other, r)], blank  # fmt: skip


def _node_checks(client, model, plan, backup, timeout):
    """
    ``restore_leg`` and ``invalidate_leg`` with ``dry_run=True``: ``{"plan", "problems", "cleared", "blank"}``.

    ``cleared``: refusals that only say a leg is open. Its LIO export keeps
    a leg open; the run takes both legs out of service before it writes,
    and the real calls check again. ``blank``: the other leg carries no md
    superblock any more (an earlier restore zeroed it): nothing to
    invalidate, md cannot take it for in sync.
    """
    leg, other = plan["leg"], plan["other"]
    minion = model["nodes"][leg["node"]]["minion"]
    kind, ret = _call(client, minion, RESTORE_FUN, [leg["vg"], leg["lv"], plan["source"]["dest"]],
                      {"backup": backup, "overwrite": True, "mkfs": True, "dry_run": True}, timeout)  # fmt: skip
    if kind != "ok":
        return {"plan": None, "problems": [_why_not(leg["node"], minion, RESTORE_FUN, kind, ret)], "cleared": [],
                "blank": False}  # fmt: skip
    refused, blank = list(ret.get("refused") or []), False
    array = (ret.get("md") or {}).get("array_uuid")
    if array:
        more, blank = _invalidate_check(client, model, other, array, timeout)
        refused += more
    cleared = [r for r in refused if _open_only(leg, r) or _open_only(other, r)]
    return {"plan": ret, "problems": [r for r in refused if r not in cleared], "cleared": cleared, "blank": blank}


def _release_steps(model, plan):
    """
    The calls that take both legs out of service: ``[(node, fun, args, what)]``.

    Each partner first logs out of the other node's leg (on every portal
    they share), then each owner unexports its own leg: a leg stays open
    while LIO exports it, and ``restore_leg``/``invalidate_leg`` refuse an
    open leg. Both functions are idempotent.
    """
    nodes, steps = model["nodes"], []
    for leg, importer in ((plan["leg"], plan["other"]["node"]), (plan["other"], plan["leg"]["node"])):
        for portal in _portals(nodes[leg["node"]], nodes[importer]):
            steps.append((importer, LOGOUT_FUN, [leg["target"], portal], f"{importer} logs out of {leg['lv']} "
                          f"({portal})"))  # fmt: skip
    for leg in (plan["leg"], plan["other"]):
        steps.append((leg["node"], UNEXPORT_FUN, [leg["backstore"], leg["target"]], f"{leg['node']} unexports "
                      f"{leg['lv']}"))  # fmt: skip
    return steps


def _step(client, model, node, call, what):
    """One call of the restore (``call``: ``(fun, args, kwarg, timeout)``): its step entry and the answer."""
    fun, args, kwarg, timeout = call
    minion = model["nodes"][node]["minion"]
    kind, ret = _call(client, minion, fun, args, kwarg, timeout)
    ok = kind == "ok" and (not isinstance(ret, dict) or ret.get("result", True) is not False)
    if ok:
        message = what
    elif isinstance(ret, dict) and ret.get("error"):
        message = f"{what}: {ret['error']}"
    else:
        message = f"{what}: {_why_not(node, minion, fun, kind, ret)}"
    _progress(message if ok else f"FAILED: {message}")
    return {"step": what, "node": node, "function": fun, "ok": ok, "message": message}, kind, ret


def _restore_next(model, plan, state, invalidated, array):
    """
    What the operator does next (lines), after the legs were taken out of service.

    ``state``: ``"nothing"`` (nothing was written), ``"partial"`` (the
    restore failed, or its answer was lost, after it may have begun to
    write) or ``"restored"``; ``invalidated``: the other leg carries no md
    superblock now.
    """
    guest, leg, other = plan["into"]["guest"], plan["leg"], plan["other"]
    minions = ",".join(model["nodes"][n]["minion"] for n in sorted({leg["node"], other["node"]}))
    lines = [f"export both legs again and log the partners back in: salt -L {minions} state.apply "
             "xencluster.storage (xencluster_leg.node_legs)"]  # fmt: skip
    if state == "nothing":
        return lines + [f"nothing was written: {guest} can start as before once its legs are exported"]
    if not invalidated:
        ominion = model["nodes"][other["node"]]["minion"]
        lines.insert(0, f"DO NOT start {guest}: {other['lv']} on {other['node']} still carries the md superblock of "
                     "the array, so md would take the two legs for in sync; zero it first: salt "
                     f"{ominion} xencluster_backup.invalidate_leg {other['vg']} {other['lv']} {array}")  # fmt: skip
    if state == "partial":
        return lines + [f"{leg['lv']} may hold a partial copy: run the same restore_backup again (confirm=True) "
                        f"before starting {guest}"]  # fmt: skip
    return lines + [
        f"start {guest} (its xl config is unchanged): its md RAID1 comes up degraded on {leg['lv']}, the restored "
        f"leg; {other['lv']} carries no md superblock any more",
        f"inside {guest}, add the device of {other['lv']} back to that array (salt {guest} xencluster_md.re_add "
        "<md> <device> allow_full_resync=True): md copies the restored leg onto it in full",
    ]  # fmt: skip


def _restore_out(guest, disk, into, backup, dry_run):
    """``restore_backup``'s return, before anything is judged."""
    return {"result": False, "retcode": 1, "outcome": None, "dry_run": dry_run, "guest": guest, "disk": disk,
            "into": {"guest": into[0], "disk": into[1]}, "backup": backup, "node": None, "leg": None,
            "other_leg": None, "checks": [], "plan": None, "steps": [], "restore": None, "next": [],
            "message": ""}  # fmt: skip


def _restore_end(out, outcome, message, started):
    """Close ``restore_backup``'s return; fire finished/failed after a run that started."""
    ok = outcome in (RESTORED, WOULD_RESTORE)
    out.update(result=ok, retcode=0 if ok else 1, outcome=outcome, message=message,
               duration_s=round(time.monotonic() - started, 1))  # fmt: skip
    if not ok:
        __context__["retcode"] = 1
        log.error("xencluster.restore_backup: %s", message)
    if out["steps"]:
        _fire_tag(f"{RESTORE_EVENT_BASE}/{out['into']['guest']}/{'finished' if ok else 'failed'}", out)
    if out["checks"] and not out["dry_run"]:  # a refusal before any publish is only the return
        _progress(message)
    return out


def _restore_checks(client, model, out, plan, settings):
    """Every check before a change, recorded in ``out["checks"]``: ``(node checks or None, problems)``."""
    checks = out["checks"]
    facts, _told = _recover_round(client, model, settings["check_timeout"])
    problems = _live_problems(plan, facts)
    checks.append(_check("runs_nowhere", not problems, "; ".join(problems) or
                         f"{plan['into']['guest']} runs nowhere; both legs are at their stable paths"))
    if problems:
        return None, problems
    minion = model["nodes"][plan["node"]]["minion"]
    vol = volume_state(plan["volume"], _volume_round(client, model, plan["volume"], settings["check_timeout"]), minion)
    problem = vol["problem"]
    if not problem and vol["state"] == "to_mount":
        problem = (f"the backup volume {vol['device']} is not mounted on {vol['node']}: a dry run mounts nothing, so "
                   "its backups cannot be listed (a run mounts it first)") if settings["dry_run"] else \
            _mount_volume(client, model, vol, settings["check_timeout"])  # fmt: skip
    checks.append(_check("volume", not problem, problem or f"{vol['device']} is mounted at {vol['mountpoint']}"))
    if problem:
        return None, [problem]
    found = _node_checks(client, model, plan, out["backup"], settings["check_timeout"])
    text = "; ".join(found["problems"]) or f"backup {found['plan']['backup']} into {plan['leg']['lv']}"
    if not found["problems"] and found["cleared"]:
        text += f" (open now, unexported first: {'; '.join(found['cleared'])})"
    if not found["problems"] and found["blank"]:
        text += f"; {plan['other']['lv']} carries no md superblock already: nothing to invalidate"
    checks.append(_check("node_plans", not found["problems"], text))
    return found, found["problems"]


def _release(client, model, out, plan, settings):
    """Log out and unexport (``_release_steps``), stopping at the first failure: whether all went."""
    for node, fun, args, what in _release_steps(model, plan):
        step, _kind, _ret = _step(client, model, node, (fun, args, {}, settings["check_timeout"]), what)
        out["steps"].append(step)
        if not step["ok"]:
            return False
    return True


def _restore_run(client, model, out, plan, found, settings):
    """Take the legs out of service, restore_leg, invalidate_leg: the outcome and its message."""
    guest, leg, other, node_plan = plan["into"]["guest"], plan["leg"], plan["other"], found["plan"]
    array = (node_plan.get("md") or {}).get("array_uuid")
    _fire_tag(f"{RESTORE_EVENT_BASE}/{guest}/started", {"guest": guest, "backup": node_plan["backup"],
                                                        "leg": leg["lv"], "other_leg": other["lv"]})  # fmt: skip
    if not _release(client, model, out, plan, settings):
        out["next"] = _restore_next(model, plan, "nothing", found["blank"], array)
        return FAILED, f"not restoring into {guest}: {out['steps'][-1]['message']}; nothing was written"
    call = (RESTORE_FUN, [leg["vg"], leg["lv"], plan["source"]["dest"]],
            {"backup": node_plan["backup"], "overwrite": True, "mkfs": True}, settings["timeout"])  # fmt: skip
    step, kind, ret = _step(client, model, leg["node"], call, f"{leg['node']} restores {node_plan['backup']} into "
                            f"{leg['lv']}")  # fmt: skip
    out["steps"].append(step)
    out["restore"] = ret if isinstance(ret, dict) else None
    if kind == "error" and isinstance(ret, str):  # refused (raised) before it wrote anything
        out["next"] = _restore_next(model, plan, "nothing", found["blank"], array)
        return FAILED, f"restore into {guest} refused by {leg['node']}: {step['message']}"
    invalidated = found["blank"]
    if not invalidated:  # also after a failed or unanswered restore: the leg may hold a partial copy
        call = (INVALIDATE_FUN, [other["vg"], other["lv"], array], {}, settings["check_timeout"])
        istep, _kind, _ret = _step(client, model, other["node"], call, f"{other['node']} zeroes the md superblock of "
                                   f"{other['lv']}")  # fmt: skip
        out["steps"].append(istep)
        invalidated = istep["ok"]
    out["next"] = _restore_next(model, plan, "restored" if step["ok"] else "partial", invalidated, array)
    if step["ok"] and invalidated:
        return RESTORED, (f"restored {node_plan['backup']} of {out['guest']}/{out['disk']} into {leg['lv']} on "
                          f"{leg['node']}, {other['lv']} invalidated; next: " + "; ".join(out["next"]))
    failed = "; ".join(s["message"] for s in out["steps"] if not s["ok"])
    return FAILED, f"restore into {guest} failed: {failed}; next: " + "; ".join(out["next"])


def restore_backup(guest, disk, backup=None, into=None, node=None, confirm=False, dry_run=False,
                   timeout=DEFAULT_BACKUP_TIMEOUT, check_timeout=DEFAULT_VERIFY_TIMEOUT, tgt=None,
                   tgt_type="glob"):  # fmt: skip
    """
    Restore a file-level backup of ``guest``'s ``disk`` into one leg of a disk pair; invalidate the other leg.

    Named ``restore_backup``, not ``restore``: ``restore`` is kept for
    bringing a node back after maintenance (re-adding its legs).

    ``backup``: a backup name (``20261124T081500Z``) or None/``latest``.
    ``into``: ``<guest>/<disk>`` of the pair to write (default: the same
    guest and disk). The backups live on the volume of ``guest``'s backup
    target, on the target's node, and ``xencluster_backup.restore_leg``
    reads them there: that node writes its own leg of ``into``'s pair
    (``node``, if given, must name it). Destructive: the filesystem in that
    leg is replaced (``rsync --delete``; ``mkfs`` with the backed-up UUID
    and label when the data area holds none), so a real run needs
    ``confirm=True`` and the guest stopped everywhere.

    1. The model; the plan above (``restore_plan``).
    2. The live check, the round ``recover`` makes (ONE publish of
       ``xencluster_node.report`` and ``xencluster_xl.info`` to every node,
       ``check_timeout`` s): every node must tell its domains, ``into``'s
       guest must run nowhere (not running, paused, crashed or migrating),
       and both legs must be at ``/dev/xencluster/<leg>`` on their owners.
       A NEW pair's legs are made by the leg states (``state.apply
       xencluster.storage`` on both nodes), never here, and its guest must
       have made its md RAID1 on them once (``restore_leg`` writes below an
       existing md superblock): a missing leg is refused with that advice.
    3. The backup volume (as ``backup`` checks it; a real run mounts it if
       needed; a dry run cannot list the backups of an unmounted volume).
    4. The node plans: ``restore_leg`` (``overwrite=True, mkfs=True``) and
       ``invalidate_leg`` of the other leg, both with ``dry_run=True``. A
       leg LIO still exports shows as open: that refusal alone is expected
       (step 6 unexports it); any other one refuses.
    5. ``dry_run=True`` stops here and returns the plan (nothing changed).
    6. Each partner logs out of the other node's leg
       (``xencluster_iscsi.logout``), each owner unexports its own
       (``xencluster_lio.unexport``): both legs are out of service.
    7. ``restore_leg`` of the planned backup into the leg (up to
       ``timeout`` s), then ``invalidate_leg`` of the other leg (its md
       superblock zeroed after checking the array UUID), also when the
       restore failed after it began to write: md must never take a leg
       written below it and the untouched one for in sync. A leg whose
       superblock an earlier run zeroed is left as it is, so a failed
       restore can simply be run again.

    The return's ``next`` says what the operator does then: re-export both
    legs (``state.apply xencluster.storage`` on both nodes), start the
    guest (its md RAID1 comes up degraded on the restored leg) and add the
    other leg back in the guest (``xencluster_md.re_add ...
    allow_full_resync=True``: a full resync from the restored leg). Do not
    run a highstate that starts the guest while the restore runs.

    Events (a run that got to step 6): ``xencluster/restore_backup/<guest>/started``,
    then ``.../finished`` or ``.../failed`` with the return.

    ``guest`` and the ``into`` guest are locked from before the live check to
    the end; one another live operation holds: ``busy``, nothing published.

    Returns ``{"result", "retcode", "outcome" (restored, would_restore,
    refused, failed), "dry_run", "guest", "disk", "into": {"guest",
    "disk"}, "backup", "node", "leg", "other_leg", "checks": [{"check",
    "ok", "message"}], "plan" (the node's restore plan), "steps": [{"step",
    "node", "function", "ok", "message"}], "restore" (restore_leg's
    return), "next": [lines], "duration_s", "message"}``.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.restore_backup web1 root dry_run=True
        salt-run xencluster.restore_backup web1 root confirm=True
        salt-run xencluster.restore_backup web1 root backup=20261124T081500Z into=web2/root confirm=True
    """
    started = time.monotonic()
    out = _restore_out(guest, disk, (guest, disk), backup, dry_run is True)
    try:
        out["backup"], into = _check_restore_args(guest, disk, backup, into, node, {"confirm": confirm,
                                                  "dry_run": dry_run}, (timeout, check_timeout))  # fmt: skip
        out["into"] = {"guest": into[0], "disk": into[1]}
        model = _migrate_model(guest, tgt, tgt_type)
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _restore_end(out, REFUSED, f"not restoring: {exc}", started)
    verb = "would not restore" if dry_run else "not restoring"
    if not dry_run and not confirm:
        return _restore_end(out, REFUSED, f"{verb}: restore_backup replaces the filesystem on one leg of "
                            f"{into[0]}/{into[1]} and makes the other leg stale: stop {into[0]} everywhere, then "
                            "confirm=True (dry_run=True shows the plan)", started)  # fmt: skip
    plan = restore_plan(model, guest, disk, into, node)
    out.update(node=plan["node"], leg=(plan["leg"] or {}).get("lv"), other_leg=(plan["other"] or {}).get("lv"))
    if plan["problems"]:
        return _restore_end(out, REFUSED, f"{verb}: {'; '.join(plan['problems'])}", started)
    settings = {"dry_run": dry_run, "timeout": timeout, "check_timeout": check_timeout}
    keys = sorted({_lock_key("guest", guest), _lock_key("guest", into[0])})
    if dry_run:
        holder = _busy(keys)
        if holder:
            return dict(_restore_end(out, REFUSED, holder["message"], started), busy=holder)
        return _restore_backup_run(model, out, plan, settings, started)
    args = {"guest": guest, "disk": disk, "backup": backup, "into": "/".join(into) if into != (guest, disk) else None,
            "node": node}  # fmt: skip
    op, refusal = _begin("restore_backup", "/".join(into), args, keys,
                         f"restore_backup {guest}/{disk} into {'/'.join(into)}")  # fmt: skip
    if refusal:
        log.warning("xencluster.restore_backup: %s", refusal["message"])
        result = _restore_end(out, REFUSED, refusal["message"], started)
        return dict(result, busy=refusal) if "op" in refusal else result
    result = None
    try:
        result = _restore_backup_run(model, out, plan, dict(settings, op=op), started)
        return result
    finally:
        _end(op, result)


def _restore_backup_run(model, out, plan, settings, started):
    """``restore_backup`` after its arguments, model and plan are checked; a real run under its op."""
    dry_run, op = settings["dry_run"], settings.get("op")
    guest, disk = out["guest"], out["disk"]
    verb = "would not restore" if dry_run else "not restoring"
    client = _local_client()
    found, problems = _restore_checks(client, model, out, plan, settings)
    out["plan"] = (found or {}).get("plan")
    _op_step(op, "checked", refused=bool(problems))
    if problems:
        return _restore_end(out, REFUSED, f"{verb}: {'; '.join(problems)}", started)
    if dry_run:
        other = "" if found["blank"] else f" and invalidate {plan['other']['lv']} on {plan['other']['node']}"
        return _restore_end(out, WOULD_RESTORE, f"would restore {out['plan']['backup']} of {guest}/{disk} into "
                            f"{plan['leg']['lv']} on {plan['node']}{other}", started)  # fmt: skip
    earlier = _interrupted_ops("restore_backup", f"{out['into']['guest']}/{out['into']['disk']}", op)
    if earlier:
        _earlier(earlier, False, op)
        _close_earlier(earlier, f"re-run by op {op['op']}: a leg an earlier run already zeroed is left alone", op)
    _op_step(op, "restoring")
    outcome, message = _restore_run(client, model, out, plan, found, settings)
    result = _restore_end(out, outcome, message, started)
    if earlier:
        result["interrupted"] = _earlier(earlier, True, None)
    return result


# --- restore: a node back in service, its legs back in every guest's md RAID1 -------------------
#
# After evacuate (maintenance) or recover (a lost node), each guest with a leg on the node runs on
# its partner with that leg out of its md RAID1: faulty or removed (its iSCSI session was down), or
# absent from the domain altogether (recover's degraded start). restore brings the legs back with
# the leg state, hot-plugs what a degraded start left out, re-adds each returning leg inside the
# guest (a bitmap resync: only what changed moves), follows the resync, and only then undrains.

NODE_RESTORE_EVENT_BASE = "xencluster/restore"
STATE_SINGLE_FUN = "state.single"
LEGS_STATE = "xencluster_leg.node_legs"
LEGS_STATE_NAME = "xencluster-legs"  # not a node name: node_legs then converges the minion it runs on
ATTACH_FUN = "xencluster_xl.block_attach"
RE_ADD_FUN = "xencluster_md.re_add"
REMOVE_LEG_FUN = "xencluster_md.remove_leg"
BLKDEV_FUN = "file.is_blkdev"
DEFAULT_RESTORE_TIMEOUT = 300  # one state run, one block-attach, one re-add
DEFAULT_RESYNC_TIMEOUT = 3600
MAX_RESYNC_TIMEOUT = 7 * 86400
RESYNC_POLL_INTERVAL = 5
DEVICE_POLL_INTERVAL = 1
LEGS_IMPORT_WAIT = 60  # the partners' logins wait this long for the node's exports
IN_SYNC, WOULD_RE_ADD, NOT_RUNNING, SILENT, RESYNCING = "in_sync", "would_re_add", "not_running", "silent", "resyncing"
BACK_OUTCOMES = (IN_SYNC, WOULD_RE_ADD, NOT_RUNNING)  # the guest does not keep the node drained
OUTCOME_TEXT = {IN_SYNC: "in sync", WOULD_RE_ADD: "to re-add", NOT_RUNNING: "not running", RESYNCING: "resyncing",
                SILENT: "silent", REFUSED: "refused", FAILED: "failed"}  # fmt: skip


def _clock():
    """Monotonic seconds: the resync's deadline and durations (tests replace it)."""
    return time.monotonic()


def _pause(seconds):
    """Wait between two polls (tests replace it)."""
    time.sleep(seconds)


def _check_node_restore_args(node, flags, timeouts):
    """``flags``: ``{name: bool}``; ``timeouts``: ``(timeout, check_timeout, resync_timeout)``."""
    _check_name(node, "node")
    _check_flags(flags)
    _check_seconds(timeouts[0], "timeout", MAX_RECOVER_TIMEOUT)
    _check_seconds(timeouts[1], "check_timeout", 600)
    _check_seconds(timeouts[2], "resync_timeout", MAX_RESYNC_TIMEOUT)


def _node_restore_refusal(node, facts, told):
    """``(retcode, why)`` when nothing may be done after a round, else None."""
    if not told[node]:
        return 1, f"{node} did not answer: boot it and let its minion connect first"
    silent = [facts[n]["why"]["domains"] for n in sorted(facts) if facts[n]["domains"] is None]
    if silent:
        return 1, f"every node must tell its domains, so that where each guest runs is known: {'; '.join(silent)}"
    doubles = _double_runs(facts)
    if doubles:
        return 2, (f"{ECLUSTERDOUBLERUN}: DOUBLE RUN of {_doubles_text(doubles)}: nothing is restored "
                   "(salt-run xencluster.verify)")  # fmt: skip
    return None


def returning_guests(model, node, facts):
    """
    Every guest of the model with a leg on ``node``, and where it runs (pure).

    ``facts``: ``{node: node_facts}`` of a round in which every node told
    its domains and none runs a domain twice. Returns ``[{"guest", "on" (the
    node it runs on under its own name, or None), "state" (its xl state
    there), "moving" (xl migrate's temporary names seen, with their node)}]``
    in name order.
    """
    out = []
    for name, spec in sorted(model["guests"].items()):
        if node not in spec["nodes"]:
            continue
        plain, moving = _sightings(name, facts)
        on = min(plain) if plain else None
        out.append({"guest": name, "on": on, "state": plain[on].get("state") if on else None,
                    "moving": [f"{n} on {where}" for where, names in sorted(moving.items()) for n in sorted(names)]})
    return out


def _returning_entry(item):
    """A guest's entry of the return, before it is judged."""
    return {"guest": item["guest"], "outcome": None, "on": item["on"], "state": item["state"],
            "moving": item["moving"], "legs": [], "paths": [], "arrays": {}, "duration_s": None, "message": "",
            "next": []}  # fmt: skip


def _where_problem(entry, spec):
    """``(outcome, message)`` of a guest that cannot be worked on where it is, or None."""
    guest, on = entry["guest"], entry["on"]
    if entry.get("moving"):
        return REFUSED, (f"a migration of {guest} is in flight ({', '.join(entry['moving'])}): run restore again "
                         "once it has ended")  # fmt: skip
    if on is None:
        return NOT_RUNNING, f"{guest} runs nowhere: nothing to re-add (its arrays assemble when it starts)"
    if entry["state"] in STOPPED:
        return NOT_RUNNING, (f"{guest} is {entry['state']} on {on}: nothing to re-add (its arrays assemble when it "
                             "starts)")  # fmt: skip
    if on not in spec["nodes"]:
        return REFUSED, f"{guest} runs on {on}, outside its pair {' and '.join(spec['nodes'])}: its legs are not there"
    return None


def _spec_fields(spec):
    """``{"vdev", "access", "format", "target"}`` of one xl disk spec (``target=`` last, as render_config writes)."""
    head, _sep, target = spec.rpartition("target=")
    fields = dict(f.split("=", 1) for f in head.split(",") if "=" in f)
    return {"vdev": fields.get("vdev"), "access": fields.get("access", "rw"), "format": fields.get("format", "raw"),
            "target": target}  # fmt: skip


def _config_disks(client, minion, host, guest, legs, timeout):
    """
    ``({target: fields}, None)`` of every disk of the guest state's own config on ``host``, or ``(None, why)``.

    ``create_degraded``'s dry run reads ``/etc/xen/xencluster/<guest>.cfg``
    (what ``xencluster_guest.defined`` wrote from the model), refuses a file
    that has no disk for one of ``legs``, and starts nothing: the vdev of a
    returning leg comes from that one file, never from a second rendering.
    """
    kind, ret = _degraded_call(client, minion, guest, legs, True, timeout)
    if kind != "ok":
        return None, f"cannot read the disks of {_config_path(guest)} on {host}: " + \
            _why_not(host, minion, DEGRADED_FUN, kind, ret)  # fmt: skip
    specs = list(ret.get("disk") or []) + list(ret.get("without") or [])
    return {f["target"]: f for f in map(_spec_fields, specs)}, None


def _returning_legs(spec, node, disks):
    """One entry per disk: its leg on ``node`` (the returning one) with its vdev and its partner leg's (pure)."""
    out = []
    for disk in spec["disks"]:
        leg = next(leg for leg in disk["legs"] if leg["node"] == node)
        other = next(leg for leg in disk["legs"] if leg["node"] != node)
        mine, partner = disks.get(leg["path"]) or {}, disks.get(other["path"]) or {}
        out.append({"leg": leg["lv"], "disk": disk["name"], "path": leg["path"], "vdev": mine.get("vdev"),
                    "access": mine.get("access", "rw"), "format": mine.get("format", "raw"),
                    "partner": other["lv"], "partner_vdev": partner.get("vdev"), "attach": None, "members": []})
    return out


def _leg_config_problems(guest, host, legs):
    """A disk of the config missing for a returning leg or its partner (the config names both of each disk)."""
    return [f"{_config_path(guest)} on {host} has no disk for {name}" for leg in legs
            for name, vdev in ((leg["leg"], leg["vdev"]), (leg["partner"], leg["partner_vdev"])) if not vdev]


def _path_problems(host, legs, fact):
    """The model ``legs``' stable paths on ``host``: an iSCSI LUN there (the local LV on the leg's own node)."""
    if fact["links"] is None:
        return [f"the stable paths on {host} are not known: {fact['why']['links']}"]
    problems = []
    for leg in legs:
        problem = _leg_problem(leg, host, fact["links"].get(leg["lv"]))
        if problem:
            problems.append(f"returning leg {leg['lv']} on {host}: {problem}")
    return problems


def _attach_call(client, minion, guest, leg, dry_run, timeout):
    """``(kind, value)`` of ``xencluster_xl.block_attach`` of one returning leg; never raises."""
    kwarg = {"access": leg["access"], "disk_format": leg["format"], "dry_run": dry_run}
    return _call(client, minion, ATTACH_FUN, [guest, leg["path"], leg["vdev"]], kwarg, timeout)


def _attach_plan(client, minion, host, guest, legs, timeout):
    """Each leg's ``attach``: ``kept`` (the domain has it) or ``attach``, from block_attach's dry run; the problems."""
    problems = []
    for leg in legs:
        kind, ret = _attach_call(client, minion, guest, leg, True, timeout)
        if kind != "ok" or not isinstance(ret, dict):
            why = _why_not(host, minion, ATTACH_FUN, kind, ret)
            problems.append(f"{leg['leg']} at {leg['vdev']} of {guest}: {why}")
            continue
        disk = ret.get("disk")
        leg["attach"] = "kept" if disk else "attach"
        if disk and disk.get("state") != "connected":
            problems.append(f"{leg['path']} is attached to {guest} at {leg['vdev']} but its xenbus state is "
                            f"{disk.get('state')}, not connected: xl block-detach {guest} {leg['vdev']} on {host}, "
                            "then run restore again")  # fmt: skip
    return problems


def _array_members(leg, arrays):
    """
    Where a returning leg goes back (pure): one member per array of the guest that holds its partner.

    The guest sees disk ``vdev`` as ``/dev/<vdev>``: an array holding the
    partner's ``xvdb`` (or its partition ``xvdb2``) takes the returning
    ``xvda`` (``xvda2``) back. Each member: ``{"array", "device", "state"
    (of the returning device in that array: active, rebuilding, spare,
    faulty, or None when it is not in it), "bitmap", "action", "method"}``.
    """
    out = []
    for md, st in sorted((arrays or {}).items()):
        by_name = {leg_["kernel_name"]: leg_ for leg_ in st.get("legs") or [] if leg_.get("kernel_name")}
        for kname, member in sorted(by_name.items()):
            match = re.fullmatch(re.escape(leg["partner_vdev"]) + r"([0-9]*)", kname)
            if not match or member.get("state") != "active":
                continue
            mine = by_name.get(leg["vdev"] + match.group(1))
            out.append({"array": md, "device": f"/dev/{leg['vdev']}{match.group(1)}",
                        "state": mine["state"] if mine else None, "bitmap": st.get("bitmap"), "action": None,
                        "method": None})  # fmt: skip
    return out


def _member_action(member, allow_full_resync):
    """Set what re-adding one member takes; a problem line, or None."""
    if member["state"] in ("active", "rebuilding", "spare"):
        return None  # in the array already: the resync (if any) is followed
    member["action"] = "remove, re-add" if member["state"] == "faulty" else "re-add"
    if member["bitmap"] == "none" and not allow_full_resync:
        return (f"{member['array']} has no write-intent bitmap: putting {member['device']} back is a FULL resync of "
                "the leg; run again with allow_full_resync=True to do it")  # fmt: skip
    return None


def _md_plan(guest, legs, arrays, allow_full_resync):
    """Each leg's members and actions from the guest's ``xencluster_md.status``; the problems."""
    problems = []
    for leg in legs:
        leg["members"] = _array_members(leg, arrays)
        if not leg["members"]:
            problems.append(f"no md array of {guest} holds /dev/{leg['partner_vdev']} ({leg['partner']}, the other leg "
                            f"of disk {leg['disk']}) active: nothing to put {leg['leg']} back into")  # fmt: skip
        problems += [p for p in (_member_action(m, allow_full_resync) for m in leg["members"]) if p]
    return problems


def _guest_arrays(client, guest, timeout):
    """``(kind, arrays)`` of ``xencluster_md.status`` on the guest's minion (kind ``no_key``: not published to)."""
    if guest not in _accepted([guest]):
        return "no_key", None
    return _call(client, guest, MD_FUN, [], {}, timeout)


def _silent_guest(entry, node, kind, ret):
    """Mark a guest whose minion cannot tell its arrays; what the operator does then."""
    guest = entry["guest"]
    why = (f"guest minion {guest} has no accepted key" if kind == "no_key" else
           f"guest minion {guest} did not answer" if kind == "no_answer" else
           f"guest minion {guest} cannot tell its arrays: {_short(ret)}")  # fmt: skip
    entry.update(outcome=SILENT if kind in ("no_key", "no_answer") else REFUSED, message=f"{why}: nothing done")
    entry["next"] = [f"once {guest}'s minion answers with xencluster_md.status, run salt-run xencluster.restore "
                     f"{node} again (it does only what is missing)"]  # fmt: skip


def _refuse_guest_restore(entry, node, problems, dry_run):
    verb = "would not restore" if dry_run else "not restoring"
    entry.update(outcome=REFUSED, message=f"{verb} {entry['guest']}'s legs: {'; '.join(problems)}")
    entry["next"] = [f"fix that, then run salt-run xencluster.restore {node} again"]


def _plan_text(entry):
    """``attach xvda, xvdc; re-add /dev/xvda to /dev/md127`` of a planned guest."""
    attach = [leg["vdev"] for leg in entry["legs"] if leg["attach"] == "attach"]
    adds = [f"{m['action']} {m['device']} to {m['array']}" for leg in entry["legs"] for m in leg["members"]
            if m["action"]]  # fmt: skip
    parts = ([f"attach {', '.join(attach)}"] if attach else []) + adds
    return "; ".join(parts) or "nothing: every returning leg is in its array already"


def _judge_returning(client, model, node, entry, fact, settings):
    """Every check of one running guest, no change: its legs planned, or its outcome set (refused, silent)."""
    guest, host = entry["guest"], entry["on"]
    spec, minion = model["guests"][guest], model["nodes"][host]["minion"]
    returning = _dead_legs(spec, node)  # the legs on node: recover's dead legs, coming back now
    disks, why = _config_disks(client, minion, host, guest, returning, settings["check_timeout"])
    if why:
        return _refuse_guest_restore(entry, node, [why], settings["dry_run"])
    entry["legs"] = _returning_legs(spec, node, disks)
    problems = _leg_config_problems(guest, host, entry["legs"]) or _path_problems(host, returning, fact)
    if problems and not (settings["dry_run"] and settings["legs_pending"]):
        return _refuse_guest_restore(entry, node, problems, settings["dry_run"])
    entry["paths"] = problems  # a dry run before the legs state: what that state has to bring
    problems = [] if problems else _attach_plan(client, minion, host, guest, entry["legs"], settings["check_timeout"])
    if problems:
        return _refuse_guest_restore(entry, node, problems, settings["dry_run"])
    kind, arrays = _guest_arrays(client, guest, settings["check_timeout"])
    if kind != "ok" or not isinstance(arrays, dict):
        return _silent_guest(entry, node, kind, arrays)
    problems = _md_plan(guest, entry["legs"], arrays, settings["allow_full_resync"])
    if problems:
        return _refuse_guest_restore(entry, node, problems, settings["dry_run"])
    return None


def _guest_why(guest, fun, kind, ret):
    """One line: why ``fun`` on a guest minion gave nothing usable."""
    if kind == "no_answer":
        return f"guest minion {guest} did not answer {fun}"
    return f"{guest}: {fun} failed: {_short(_raised(ret) or ret)}"


def _attach_missing(client, model, entry, timeout):
    """Hot-plug each returning leg the domain lacks (a degraded start): a problem line, or None."""
    guest, host = entry["guest"], entry["on"]
    minion = model["nodes"][host]["minion"]
    for leg in entry["legs"]:
        if leg["attach"] != "attach":
            continue
        kind, ret = _attach_call(client, minion, guest, leg, False, timeout)
        if kind != "ok" or not isinstance(ret, dict):
            why = _why_not(host, minion, ATTACH_FUN, kind, ret)
            return f"attaching {leg['path']} to {guest} at {leg['vdev']} failed: {why}"
        leg["attach"] = "attached"
        _progress(f"{guest}: {leg['path']} attached at {leg['vdev']} on {host}")
    return None


def _wait_devices(client, guest, devices, timeout):
    """The hot-plugged ``devices`` not seen in the guest within ``timeout`` (blkfront connects after xl returns)."""
    deadline, waiting = _clock() + timeout, list(devices)
    while waiting:
        waiting = [d for d in waiting if _call(client, guest, BLKDEV_FUN, [d], {}, timeout) != ("ok", True)]
        if not waiting or _clock() >= deadline:
            break
        _pause(DEVICE_POLL_INTERVAL)
    return waiting


def _re_add_member(client, guest, member, allow_full_resync, timeout):
    """``mdadm --remove`` (a faulty member) then ``--re-add`` of one member in the guest: a problem, or None."""
    md, device = member["array"], member["device"]
    if member["action"] == "remove, re-add":
        kind, ret = _call(client, guest, REMOVE_LEG_FUN, [md, device], {}, timeout)
        if kind != "ok":
            return f"removing the faulty {device} from {md} failed: {_guest_why(guest, REMOVE_LEG_FUN, kind, ret)}"
    kind, ret = _call(client, guest, RE_ADD_FUN, [md, device], {"allow_full_resync": allow_full_resync}, timeout)
    if kind != "ok" or not isinstance(ret, dict):
        return f"re-adding {device} to {md} failed: {_guest_why(guest, RE_ADD_FUN, kind, ret)}"
    member["method"] = ret.get("method")
    how = "a FULL resync (mdadm --add)" if member["method"] == "add" else "a bitmap resync"
    _progress(f"{guest}: {device} back in {md}: {how}")
    return None


def _tracked_arrays(entry):
    """``entry["arrays"]``: each array a returning leg belongs in, its devices and how they went back."""
    for leg in entry["legs"]:
        for m in leg["members"]:
            rec = entry["arrays"].setdefault(m["array"], {"devices": [], "method": None, "state": None, "now": None,
                                                          "first_sync": None, "last_sync": None, "clean": False,
                                                          "duration_s": None})  # fmt: skip
            rec["devices"].append(m["device"])
            rec["method"] = m["method"] or rec["method"]


def _restore_returning(client, model, node, entry, settings):
    """Attach, wait, re-add for one judged guest: its outcome stays None (resync to follow) or is FAILED."""
    guest, timeout = entry["guest"], settings["timeout"]
    problem = _attach_missing(client, model, entry, timeout)
    if not problem:
        fresh = [m["device"] for leg in entry["legs"] if leg["attach"] == "attached" for m in leg["members"]]
        late = _wait_devices(client, guest, fresh, settings["check_timeout"])
        if late:
            problem = (f"{', '.join(late)} did not show up in {guest} ({BLKDEV_FUN}) within {settings['check_timeout']} "
                       "s of the attach")  # fmt: skip
    members = [m for leg in entry["legs"] for m in leg["members"] if m["action"]]
    for member in [] if problem else members:
        problem = _re_add_member(client, guest, member, settings["allow_full_resync"], timeout)
        if problem:
            break
    _tracked_arrays(entry)
    if problem:
        entry.update(outcome=FAILED, message=f"{guest}: {problem}")
        entry["next"] = [f"fix that, then run salt-run xencluster.restore {node} again (it does only what is missing)"]
        _progress(f"FAILED: {entry['message']}")


# --- restore: following the resync ----------------------------------------------------------------


def _array_clean(st, devices):
    """True when the array has every slot in sync, nothing left to resync, and each of ``devices`` active in it."""
    if not isinstance(st, dict) or st.get("sync") or st.get("failed_devices"):
        return False
    if not st.get("raid_devices") or st.get("active_devices") != st.get("raid_devices"):
        return False
    active = {leg.get("kernel_name") for leg in st.get("legs") or [] if leg.get("state") == "active"}
    return all(device.rsplit("/", 1)[-1] in active for device in devices)


def _resync_text(rec):
    """``clean``, ``recovery 45.0% (117504/261120 KiB at 1245 KiB/s, ~120 s left)`` or the array's state."""
    if rec["clean"]:
        return "clean"
    sync = rec["now"]
    if not sync:
        return rec["state"] or "not seen"
    if sync.get("waiting"):
        return f"{sync['action']} {sync['waiting'].lower()}"
    return (f"{sync['action']} {sync['percent']}% ({sync['done_kib']}/{sync['total_kib']} KiB at {sync['speed_kbs']} "
            f"KiB/s, ~{sync['eta_seconds']} s left)")  # fmt: skip


def _track(entry, arrays, elapsed):
    """Fold one ``xencluster_md.status`` answer into the guest's arrays; True when every one is clean."""
    for md, rec in entry["arrays"].items():
        st = (arrays or {}).get(md) or {}
        sync = st.get("sync")
        rec.update(state=st.get("state"), now=sync)
        if sync:
            rec["first_sync"] = rec["first_sync"] or sync
            rec["last_sync"] = sync
        if not rec["clean"] and _array_clean(st, rec["devices"]):
            rec.update(clean=True, duration_s=round(elapsed, 1))
    return all(rec["clean"] for rec in entry["arrays"].values())


def _resync_event(node, entry, elapsed, answer):
    """One event ``xencluster/restore/<node>/<guest>/resync``; and its progress line."""
    guest = entry["guest"]
    arrays = {md: {"state": rec["state"], "sync": rec["now"], "clean": rec["clean"]}
              for md, rec in sorted(entry["arrays"].items())}  # fmt: skip
    clean = all(rec["clean"] for rec in entry["arrays"].values())
    _fire_tag(f"{NODE_RESTORE_EVENT_BASE}/{node}/{guest}/resync", {"node": node, "guest": guest, "on": entry["on"],
              "elapsed_s": round(elapsed, 1), "clean": clean, "arrays": arrays, "answer": answer})  # fmt: skip
    text = answer or "; ".join(f"{md} {_resync_text(rec)}" for md, rec in sorted(entry["arrays"].items()))
    _progress(f"{guest}: {text} ({round(elapsed, 1)} s)")


def _poll_arrays(client, guests, timeout):
    """ONE ``xencluster_md.status`` publish to ``guests``: ``{guest: (kind, value)}``; never raises."""
    try:
        answers = _publish(client, sorted(guests), MD_FUN, timeout)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster.restore: the resync poll failed: %s", exc)
        answers = {}
    return {guest: _answer(answers.get(guest), MD_FUN) for guest in guests}


def _follow_resync(client, node, entries, since, settings):
    """
    Poll the guests' arrays until every one is clean or ``resync_timeout`` has passed.

    ONE publish of ``xencluster_md.status`` per poll to the guests still
    resyncing, every ``RESYNC_POLL_INTERVAL`` seconds; an event and a
    progress line per guest and poll. A guest clean at last is ``in_sync``
    (with its duration); one still resyncing at the deadline ``resyncing``.
    """
    pending = {e["guest"]: e for e in entries}
    deadline = _clock() + settings["resync_timeout"]
    while pending:
        for guest, (kind, ret) in sorted(_poll_arrays(client, pending, settings["check_timeout"]).items()):
            entry, elapsed = pending[guest], _clock() - since[guest]
            ok = kind == "ok" and isinstance(ret, dict)
            clean = _track(entry, ret if ok else None, elapsed) if ok else False
            _resync_event(node, entry, elapsed, None if ok else _guest_why(guest, MD_FUN, kind, ret))
            if clean:
                entry.update(outcome=IN_SYNC, duration_s=round(elapsed, 1))
                del pending[guest]
        if not pending or _clock() >= deadline:
            break
        _pause(max(0, min(RESYNC_POLL_INTERVAL, deadline - _clock())))
    for entry in pending.values():
        entry.update(outcome=RESYNCING)
        entry["next"] = [f"wait for {entry['guest']}'s resync, then run salt-run xencluster.restore {node} again: it "
                         "re-adds nothing more and undrains once every array is clean"]  # fmt: skip


def _in_sync_message(entry):
    """``web1: /dev/md127 in sync in 12.5 s (bitmap resync), ...``."""
    parts = []
    for md, rec in sorted(entry["arrays"].items()):
        how = {"add": " (FULL resync)", "re-add": " (bitmap resync)"}.get(rec["method"], "")
        first, last = rec["first_sync"], rec["last_sync"]
        seen = f", seen from {first.get('percent')}% to {last.get('percent')}% of {last.get('total_kib')} KiB" \
            if first and last and "percent" in first and "percent" in last else ""  # fmt: skip
        parts.append(f"{md} in sync in {rec['duration_s']} s{how}{seen}")
    return f"{entry['guest']}: " + ("; ".join(parts) or "nothing to resync")


# --- restore: the legs through the leg state, the verdict, the verb -------------------------------


def _partners(model, node):
    """The nodes that share a disk pair with ``node`` (they import its legs)."""
    return sorted({n for spec in model["guests"].values() if node in spec["nodes"] for n in spec["nodes"]} - {node})


def _state_results(ret):
    """The state results of a ``state.single`` answer (``{id: {"result", ...}}``), or None (it did not run)."""
    if isinstance(ret, dict) and ret and all(isinstance(v, dict) and "result" in v for v in ret.values()):
        return list(ret.values())
    return None


def _legs_summary(node, minion, data, keyed):
    """What ``xencluster_leg.node_legs`` did (or, with test=True, would do) on ``node``: its lines and errors."""
    out = {"node": node, "minion": minion, "ok": False, "actions": 0, "lines": [], "errors": []}
    if not keyed:
        out["errors"].append(f"{node} (minion {minion}) has no accepted key")
        return out
    kind, _ret = _answer(data, STATE_SINGLE_FUN)
    ret = data.get("ret") if isinstance(data, dict) else None
    states = _state_results(ret) if kind != "no_answer" else None
    if states is None:  # not run: no answer, a render error, another state run holding the minion...
        why = "; ".join(map(str, ret)) if isinstance(ret, list) and ret else \
            _why_not(node, minion, STATE_SINGLE_FUN, kind, ret)  # fmt: skip
        out["errors"].append(f"{node}: {LEGS_STATE} did not run: {_short(why, 600)}")
        return out
    for state in states:
        lines = str(state.get("comment") or "").splitlines()
        out["lines"] += lines
        errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
        out["errors"] += errors or ([lines[0] if lines else "failed"] if state["result"] is False else [])
        out["actions"] += len((state.get("changes") or {}).get("actions") or [])
    out["ok"] = not out["errors"]
    return out


def _legs_round(client, model, nodes, dry_run, timeout):
    """ONE publish of ``state.single xencluster_leg.node_legs`` to ``nodes`` (those with a key): their summaries."""
    minions = {n: model["nodes"][n]["minion"] for n in nodes}
    keyed = _accepted(minions.values())
    asked = [m for m in minions.values() if m in keyed]
    kwarg = {"name": LEGS_STATE_NAME, "import_wait": min(LEGS_IMPORT_WAIT, timeout), "test": dry_run}
    answers = {}
    try:
        if asked:  # a publish that matches no minion prints a notice on stdout (breaking --out=json)
            answers = client.cmd(asked, STATE_SINGLE_FUN, [LEGS_STATE], timeout=timeout, tgt_type="list",
                                 full_return=True, kwarg=kwarg) or {}  # fmt: skip
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster.restore: the legs state publish failed: %s", exc)
        answers = {}
    return [_legs_summary(n, m, answers.get(m), m in keyed) for n, m in minions.items()]


def _legs_back(client, model, node, dry_run, timeout):
    """The leg state on ``node`` first (its exports), then on its partners (their logins to them): summaries."""
    out = _legs_round(client, model, [node], dry_run, timeout)
    partners = _partners(model, node)
    if partners:
        out += _legs_round(client, model, partners, dry_run, timeout)
    for summary in [] if dry_run else out:  # a dry run's plan is its return: no progress line
        if summary["errors"]:
            _progress(f"FAILED: legs on {summary['node']}: {'; '.join(summary['errors'])}")
        elif summary["actions"]:
            _progress(f"legs on {summary['node']} took {summary['actions']} action(s): "
                      f"{'; '.join(summary['lines'][1:])}")  # fmt: skip
        else:
            _progress(f"legs on {summary['node']}: converged")
    return out


def _undrain_verdict(node, entries, legs, flags):
    """``(undrained now, why the node stays drained or None)``; ``flags``: dry_run and undrain."""
    blockers = [f"the legs state failed on {s['node']}" for s in legs if not s["ok"]]
    blockers += [f"{e['guest']} {OUTCOME_TEXT[e['outcome']]}" for e in entries if e["outcome"] not in BACK_OUTCOMES]
    marked = node in _drained()
    if blockers:
        state = "stays drained" if marked else "is not drained, but it is not restored either"
        return False, f"{node} {state}: {'; '.join(blockers)}"
    if flags["dry_run"]:
        return False, f"would undrain {node}" if marked else f"{node} is not drained"
    if not flags["undrain"]:
        return False, (f"{node} is left drained (undrain=False): salt-run xencluster.undrain {node} when it may take "
                       "guests")  # fmt: skip
    try:
        changed = _set_drained(node, False)
    except SaltCacheError as exc:
        return False, f"{node} stays drained: the mark cannot be cleared: {exc}"
    return changed, f"{node} undrained: it takes guests again" if changed else f"{node} was not drained"


def _restore_settings(dry_run, allow_full_resync, timeouts, op=None):
    timeout, check_timeout, resync_timeout = timeouts
    return {"dry_run": dry_run, "allow_full_resync": allow_full_resync, "timeout": timeout,
            "check_timeout": check_timeout, "resync_timeout": resync_timeout, "legs_pending": False,
            "op": op}  # fmt: skip


def _node_restore_out(node, dry_run):
    """``restore``'s return before anything is known."""
    return {"result": False, "retcode": 1, "node": node, "dry_run": dry_run, "legs": [], "guests": [],
            "in_sync": [], "not_running": [], "unsettled": [], "undrained": False, "drained": None, "next": [],
            "duration_s": 0.0, "message": ""}  # fmt: skip


def _node_restore_end(out, code, message, started, fire):
    """Close ``restore``'s return; ``finished`` fired after a real run that published."""
    for entry in out["guests"]:
        entry.pop("moving", None)
    out.update(result=code == 0, retcode=code, message=message, duration_s=round(time.monotonic() - started, 1),
               in_sync=[e["guest"] for e in out["guests"] if e["outcome"] == IN_SYNC],
               not_running=[e["guest"] for e in out["guests"] if e["outcome"] == NOT_RUNNING],
               unsettled=[e["guest"] for e in out["guests"] if e["outcome"] not in BACK_OUTCOMES])  # fmt: skip
    out["next"] = [line for e in out["guests"] for line in e["next"]] + out["next"]
    if code:
        __context__["retcode"] = code
        (log.error if code == 2 else log.warning)("xencluster.restore: %s", message)
    if fire:
        _fire_tag(f"{NODE_RESTORE_EVENT_BASE}/{out['node']}/finished", out)
        _progress(message)
    return out


def _round_entries(model, node, facts):
    """The guests with a leg on ``node``; those that cannot be worked on where they are get their outcome now."""
    entries = [_returning_entry(item) for item in returning_guests(model, node, facts)]
    for entry in entries:
        verdict = _where_problem(entry, model["guests"][entry["guest"]])
        if verdict:
            entry.update(outcome=verdict[0], message=verdict[1])
    return entries


def _judge_all_returning(client, model, node, entries, facts, settings):
    """
    Judge, then (a real run) attach and re-add, each running guest in name order: ``{guest: re-added at}``.

    Each guest under its lock (``settings["op"]``) while it is judged and its legs attached and
    re-added (not while its resync is followed); one a live operation holds is refused (busy).
    """
    since = {}
    for entry in entries:
        if entry["outcome"] is not None:
            continue
        keys = [_lock_key("guest", entry["guest"])]
        refusal = _gate(settings["op"], keys, settings["dry_run"])
        if refusal:
            _refuse_guest_restore(entry, node, [refusal["message"]], settings["dry_run"])
            if not settings["dry_run"]:
                _progress(entry["message"])
            continue
        try:
            _judge_one_returning(client, model, node, entry, facts, settings, since)
        finally:
            if not settings["dry_run"]:
                _unlock(settings["op"], keys)
    return since


def _judge_one_returning(client, model, node, entry, facts, settings, since):
    _judge_returning(client, model, node, entry, facts[entry["on"]], settings)
    if entry["outcome"] is not None:
        if not settings["dry_run"]:
            _progress(entry["message"])
    elif settings["dry_run"]:
        later = f" once the legs state has brought {'; '.join(entry['paths'])}" if entry["paths"] else ""
        entry.update(outcome=WOULD_RE_ADD, message=f"{entry['guest']} on {entry['on']}: would "
                     f"{_plan_text(entry)}{later}")  # fmt: skip
    else:
        _op_step(settings["op"], f"re-adding {entry['guest']}", guest=entry["guest"])
        _progress(f"{entry['guest']} on {entry['on']}: {_plan_text(entry)}")
        _restore_returning(client, model, node, entry, settings)
        since[entry["guest"]] = _clock()


def _restore_message(node, entries, verdict, dry_run):
    """One line: each guest's outcome, then the drain verdict."""
    by = {}
    for entry in entries:
        by.setdefault(entry["outcome"], []).append(entry["guest"])
    parts = [f"{len(by[o])} {OUTCOME_TEXT[o]} ({', '.join(by[o])})" for o in OUTCOME_TEXT if o in by]
    guests = ", ".join(parts) or f"no guest has a leg on {node}"
    return f"{'dry run: ' if dry_run else ''}restoring {node}: {guests}; {verdict}"


def restore(node, dry_run=False, timeout=DEFAULT_RESTORE_TIMEOUT, check_timeout=DEFAULT_VERIFY_TIMEOUT,
            resync_timeout=DEFAULT_RESYNC_TIMEOUT, undrain=True, allow_full_resync=False, tgt=None,
            tgt_type="glob"):  # fmt: skip
    """
    Bring ``node`` back after maintenance or after it was lost: its legs back in every guest's md RAID1, then undrain.

    1. The model, as ``verify`` reads it; ``node`` must be a node of it.
       ONE publish of ``xencluster_node.report`` and ``xencluster_xl.info``
       to every node (the round ``recover`` makes, ``check_timeout`` s):
       ``node`` must answer, every node must tell its domains, no domain may
       run on two nodes (``ECLUSTERDOUBLERUN``: exit status 2). Nothing has
       changed so far. The guests concerned are the model's guests with a
       leg on ``node``: each one running is worked on where it runs; one
       running nowhere (or shut down, crashed) is ``not_running`` (nothing
       to re-add: its arrays assemble with both legs when it starts); one
       being migrated, or running outside its pair, is refused.
    2. The legs: ``state.single xencluster_leg.node_legs`` on ``node`` (its
       LVs exported again, its imports), then ONE publish of it to its
       partners (their logins to ``node``'s legs), each up to ``timeout``
       s; every action and error is reported per node. Then the round again
       (real run): the returning legs' stable paths where each guest runs (an
       iSCSI LUN; the local LV on ``node`` itself) and where the guests run now.
    3. Per running guest, in name order, its checks (no change): the disks of
       ``/etc/xen/xencluster/<guest>.cfg`` on its node (read by
       ``xencluster_xl.create_degraded``'s dry run: the vdev of each leg comes
       from the file the guest state wrote), the stable paths,
       ``xencluster_xl.block_attach`` with ``dry_run=True`` per returning leg
       (``kept``: the domain has the disk, e.g. a guest that ran on through
       the maintenance; ``attach``: ``recover`` started it without it), and
       ``xencluster_md.status`` through the guest's minion (minion id = guest
       name): each array holding the partner leg's device takes the returning
       one back (faulty: removed first; an array without a write-intent bitmap
       needs a FULL resync, refused unless ``allow_full_resync=True``). A
       guest whose minion does not answer (or has no key) is ``silent``:
       nothing is done to it, the others go on.
    4. Not in a dry run: ``xl block-attach`` of the missing legs at their
       vdev, a wait (``file.is_blkdev`` in the guest, ``check_timeout`` s) for
       the devices to show, then ``xencluster_md.remove_leg`` (a faulty
       member) and ``xencluster_md.re_add`` (``--re-add``: a bitmap resync,
       only the blocks written while the leg was away; ``allow_full_resync``
       passed on, so a refused re-add is never silently a full one).
    5. The resync is followed: ONE ``xencluster_md.status`` publish per poll
       (every 5 s) to the guests still resyncing, until every array they put
       a leg back into is clean (all slots active, nothing to resync) or
       ``resync_timeout`` s have passed (``resyncing``).
    6. ``node`` is undrained (``undrain``) only when the legs state succeeded
       on every node and every guest is ``in_sync`` or ``not_running``;
       otherwise it stays drained and the return says why and what to do
       (``next``). ``undrain=False`` leaves it drained in any case.

    ``dry_run=True``: steps 1 and 3 and the legs state with ``test=True`` (its
    planned actions); nothing is attached, re-added, fired or undrained. A
    returning path the legs state still has to bring is then noted, not
    refused.

    The node is locked (``node.<node>``) for the whole run, each guest while
    it is judged and its legs attached and re-added; a node another live
    operation holds: ``busy``, nothing published; a guest: refused (busy).
    An interrupted restore of the node is closed by the re-run (restore is
    idempotent).

    Events (not in a dry run): ``xencluster/restore/<node>/started``
    (``guests``, ``partners``), ``.../<guest>/resync`` at each poll
    (``arrays``: ``state``, ``sync`` as ``xencluster_md.status`` gives it,
    ``clean``; ``elapsed_s``), ``.../finished`` with the return (also after a
    refused round). ``salt-run`` prints progress lines.

    Returns ``{"result", "retcode", "node", "dry_run", "legs": [{"node",
    "minion", "ok", "actions", "lines", "errors"}], "guests": [{"guest",
    "outcome" (in_sync, would_re_add, not_running, resyncing, silent,
    refused, failed), "on", "state", "legs": [{"leg", "disk", "path", "vdev",
    "partner", "partner_vdev", "attach" (kept, attach, attached), "members":
    [{"array", "device", "state", "bitmap", "action", "method"}]}], "paths",
    "arrays": {md: {"devices", "method", "state", "first_sync", "last_sync",
    "clean", "duration_s"}}, "duration_s", "message", "next"}], "in_sync",
    "not_running", "unsettled", "undrained", "drained", "next", "duration_s",
    "message"}``. ``retcode`` (salt-run's exit status): 0 when every guest is
    in sync (or would be, or does not run) and the node is undrained (or
    left drained by ``undrain=False``, or a dry run); 2 after a double run; 1
    otherwise. md's progress counter (``first_sync``/``last_sync``) is a
    position in the array: in a bitmap resync the clean chunks are skipped,
    not copied. A bad argument or model is such a return, not an exception.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.restore node1 dry_run=True
        salt-run xencluster.restore node1
        salt-run xencluster.restore node1 resync_timeout=7200 undrain=False --out=json
    """
    started = time.monotonic()
    out = _node_restore_out(node, dry_run is True)
    try:
        _check_node_restore_args(node, {"dry_run": dry_run, "undrain": undrain, "allow_full_resync": allow_full_resync},
                                 (timeout, check_timeout, resync_timeout))  # fmt: skip
        model = _evacuate_model(node, tgt, tgt_type)
    except (SaltInvocationError, CommandExecutionError) as exc:
        # Returned, not raised: salt-run exits 0 on a raised SaltInvocationError.
        return _node_restore_end(out, 1, f"not restoring {node}: {exc}", started, False)
    keys = [_lock_key("node", node)]
    if dry_run:
        holder = _busy(keys)
        if holder:
            return dict(_node_restore_end(out, 1, holder["message"], started, False), busy=holder)
        settings = _restore_settings(True, allow_full_resync, (timeout, check_timeout, resync_timeout))
        return _restore_round(model, node, out, settings, (started, undrain))
    op, refusal = _begin("restore", node, {"node": node, "undrain": undrain, "allow_full_resync": allow_full_resync},
                         keys, f"restore {node}")  # fmt: skip
    if refusal:
        log.warning("xencluster.restore: %s", refusal["message"])
        result = _node_restore_end(out, 1, refusal["message"], started, False)
        return dict(result, busy=refusal) if "op" in refusal else result
    result = None
    try:
        settings = _restore_settings(False, allow_full_resync, (timeout, check_timeout, resync_timeout), op)
        result = _restore_round(model, node, out, settings, (started, undrain))
        return result
    finally:
        _end(op, result)


def _restore_round(model, node, out, settings, run):
    """``restore`` after its arguments and model are checked: the round, then the node (``_restore_node``)."""
    dry_run, op = settings["dry_run"], settings["op"]
    client = _local_client()
    facts, told = _recover_round(client, model, settings["check_timeout"])
    refusal = _node_restore_refusal(node, facts, told)
    _op_step(op, "round", refused=bool(refusal))
    if refusal:
        return _node_restore_end(out, refusal[0], f"{'would not restore' if dry_run else 'not restoring'} {node}: "
                                 f"{refusal[1]}", run[0], not dry_run)  # fmt: skip
    earlier = _interrupted_ops("restore", node, op)
    if earlier and not dry_run:
        _earlier(earlier, False, op)
        _close_earlier(earlier, f"re-run by op {op['op']}: restore is idempotent (it attaches and re-adds only what "
                       "is missing)", op)  # fmt: skip
    result = _restore_node(client, model, node, out, facts, settings, run)
    if earlier:
        result["interrupted"] = _earlier(earlier, True, None)
    return result


def _restore_node(client, model, node, out, facts, settings, run):
    """``restore`` after a round that let it go on: legs, guests, resync, verdict."""
    started, undrain = run
    dry_run = settings["dry_run"]
    out["drained"] = node in _drained()
    if not dry_run:
        names = [item["guest"] for item in returning_guests(model, node, facts)]
        _fire_tag(f"{NODE_RESTORE_EVENT_BASE}/{node}/started", {"node": node, "guests": names,
                                                                "partners": _partners(model, node)})  # fmt: skip
        _progress(f"restoring {node}: legs of {', '.join(names) or 'no guest'}; the leg state on {node}, then on "
                  f"{', '.join(_partners(model, node)) or 'no partner'}")  # fmt: skip
    _op_step(settings["op"], "legs")
    out["legs"] = _legs_back(client, model, node, dry_run, settings["timeout"])
    settings["legs_pending"] = any(s["actions"] for s in out["legs"])
    if not dry_run:  # the paths the legs state brought, and where the guests run now
        facts, told = _recover_round(client, model, settings["check_timeout"])
        refusal = _node_restore_refusal(node, facts, told)
        if refusal:
            return _node_restore_end(out, refusal[0], f"not restoring {node} after its legs: {refusal[1]}", started,
                                     True)  # fmt: skip
    out["guests"] = _round_entries(model, node, facts)
    since = _judge_all_returning(client, model, node, out["guests"], facts, settings)
    if since:
        _op_step(settings["op"], "resync", guests=sorted(since))
        _follow_resync(client, node, [e for e in out["guests"] if e["outcome"] is None], since, settings)
    _resync_messages(out["guests"], settings["resync_timeout"])
    return _conclude(node, out, dry_run, undrain, started)


def _resync_messages(entries, resync_timeout):
    """The message of each guest whose resync was followed; the last poll's detail dropped from the return."""
    for entry in entries:
        if entry["outcome"] == IN_SYNC:
            entry["message"] = _in_sync_message(entry)
        elif entry["outcome"] == RESYNCING:
            entry["message"] = f"{entry['guest']}: still resyncing after {resync_timeout} s: " + "; ".join(
                f"{md} {_resync_text(rec)}" for md, rec in sorted(entry["arrays"].items()))  # fmt: skip
        for rec in entry["arrays"].values():
            rec.pop("now", None)


def _conclude(node, out, dry_run, undrain, started):
    """The drain verdict, the retcode and the message: ``restore``'s return (``finished`` after a real run)."""
    undrained, verdict = _undrain_verdict(node, out["guests"], out["legs"], {"dry_run": dry_run, "undrain": undrain})
    out.update(undrained=undrained, drained=node in _drained())
    settled = all(e["outcome"] in BACK_OUTCOMES for e in out["guests"]) and all(s["ok"] for s in out["legs"])
    # undrain=False: the operator keeps the node drained on purpose, which is no failure
    ok = settled and (dry_run or not undrain or not out["drained"])
    if settled and not ok:
        out["next"].append(f"salt-run xencluster.undrain {node}")
    return _node_restore_end(out, 0 if ok else 1, _restore_message(node, out["guests"], verdict, dry_run), started,
                             not dry_run)  # fmt: skip


# --- provision: from a pillar guest to a running, configured guest ---------------------------

PROVISION_EVENT_BASE = "xencluster/provision"
PROVISION_REQUEST_TAG = "xencluster/guest/provision"
PROVISION_ALLOW_OPT = "xencluster_provision_allow"  # master config: minion ids (globs) that may ask
PROVISIONED_BANK = "xencluster/provisioned"  # key: guest -> {"node", "highstate_at", ...}
INSTALL_FUN = "xencluster_provision.install"
PLAN_FUN = "xencluster_provision.plan"
LV_TAGS_FUN = "xencluster_lvm.lv_tags"
PROVISIONED_TAG = "xencluster.provisioned"  # on both legs of every disk once the install finished
DEFINED_STATE = "xencluster_guest.defined"
RUNNING_STATE = "xencluster_guest.running"
DEFAULT_INSTALL_TIMEOUT = 3600  # the OS install on the dom0 (tar or debootstrap)
DEFAULT_MINION_WAIT = 900  # xl create -> the guest minion's start event
DEFAULT_HIGHSTATE_TIMEOUT = 1800
GUEST_KEY_BITS = 2048  # Salt's default minion key size
KEY_DIRS = ("minions_pre", "minions_rejected", "minions_denied")  # where a stray key of the id would sit


def _check_provision_args(guest, dry_run, timeouts, requested_by):
    _check_name(guest, "guest")
    if not isinstance(dry_run, bool):
        raise SaltInvocationError(f"dry_run must be True or False: {dry_run!r}")
    for what, value in timeouts.items():
        _check_seconds(value, what, MAX_BACKUP_TIMEOUT)
    if requested_by is not None and not (isinstance(requested_by, str) and _MINION_ID.fullmatch(requested_by)):
        raise SaltInvocationError(f"requested_by must be a minion id: {requested_by!r}")


_MINION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _allowed_requester(requested_by):
    """None (allowed) or why ``requested_by`` may not ask (master config ``xencluster_provision_allow``)."""
    allow = __opts__.get(PROVISION_ALLOW_OPT) or []
    if isinstance(allow, str):
        allow = [allow]
    if any(isinstance(pattern, str) and fnmatch.fnmatchcase(requested_by, pattern) for pattern in allow):
        return None
    return (f"minion {requested_by} is not allowed to ask for provisioning (master config "
            f"{PROVISION_ALLOW_OPT}: {', '.join(map(str, allow)) or 'empty'})")


def _provision_refusal(guest, requested_by, message, started):
    log.warning("xencluster.provision: request for %s%s refused: %s", guest,
                f" from {requested_by}" if requested_by else "", message)  # fmt: skip
    _fire_tag(f"{PROVISION_EVENT_BASE}/refused", {"guest": guest, "requested_by": requested_by, "message": message})
    __context__["retcode"] = 1
    return {"result": False, "retcode": 1, "guest": guest, "requested_by": requested_by, "changes": {},
            "steps": [], "message": f"refused: {message}", "seconds": round(time.monotonic() - started, 1)}


def provision_plan(model, guest):
    """(home node, spec) of ``guest`` or SaltInvocationError: a guest of the model with ``provision`` (pure)."""
    spec = model["guests"].get(guest)
    if spec is None:
        known = ", ".join(sorted(model["guests"])) or "none"
        raise SaltInvocationError(f"no guest {guest} in the cluster model (guests: {known})")
    if not spec.get("provision"):
        raise SaltInvocationError(f"guest {guest} has no provision settings (pillar "
                                  f"xencluster.guests.{guest}.provision): it is not provisioned by xencluster")
    return spec["node"] or spec["nodes"][0], spec


class _Steps:
    """The provisioning report: each step timed, told as an event, a progress line and a journal step."""

    def __init__(self, guest, op, dry_run):
        self.guest, self.op, self.dry_run, self.done = guest, op, dry_run, []

    def run(self, name, fun, *args):
        started = time.monotonic()
        changed, detail = fun(*args)
        entry = {"step": name, "changed": bool(changed), "detail": detail,
                 "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
        self.done.append(entry)
        if not self.dry_run:
            _fire_tag(f"{PROVISION_EVENT_BASE}/{self.guest}/{name.replace(' ', '_')}", entry)
            _op_step(self.op, name.replace(" ", "_"), **{name.replace(" ", "_"): entry["seconds"]})
            _progress(f"{self.guest}: {name}: {_short(detail, 400)} ({entry['seconds']} s)")
        return detail


class _ProvisionFailed(Exception):
    """A step that could not be done: the message says what and where."""


def _dom0_minions(model):
    return {node: spec["minion"] for node, spec in model["nodes"].items()}


LOCATE_ROUNDS = 3  # a dom0 that did not answer is asked again (a busy one may miss a find_job)


def _where_runs(client, model, guest, timeout):
    """The nodes where ``guest`` is seen now; _ProvisionFailed when any dom0 cannot tell."""
    minions = _dom0_minions(model)
    asked = sorted(minions.values())
    found = {"guests": {}, "no_answer": [], "errors": {}, "unavailable": []}
    for _ in range(LOCATE_ROUNDS):
        answer = locate(tgt=asked, tgt_type="list", timeout=timeout, expect=asked)
        for name, where in answer["guests"].items():
            found["guests"].setdefault(name, []).extend(where)
        found["errors"].update(answer["errors"])
        found["unavailable"] += list(answer.get("unavailable") or {})
        asked = sorted(set(answer["no_answer"]) - set(answer["errors"]) - set(answer.get("unavailable") or []))
        found["no_answer"] = asked
        if not asked:
            break
        log.warning("xencluster.provision: no answer from %s: asking again", ", ".join(asked))
    unknown = sorted(set(found["no_answer"]) | set(found["errors"]) | set(found["unavailable"]))
    if unknown:
        raise _ProvisionFailed(f"cannot tell where {guest} runs: no answer from {', '.join(unknown)}")
    by_minion = {m: n for n, m in minions.items()}
    seen = set()
    for name, where in found["guests"].items():
        if _base_name(name) == guest:
            seen |= {by_minion.get(m, m) for m in where}
    return sorted(seen)


def _leg_tags(client, model, spec, timeout):
    """{leg lv: tagged?} read from each node of the pair (one LVM report each)."""
    out = {}
    for node in spec["nodes"]:
        kind, rep = _call(client, model["nodes"][node]["minion"], LVM_FUN, [], {}, timeout)
        if kind != "ok" or not isinstance(rep, dict):
            raise _ProvisionFailed(f"no LVM report from {node}: {_short(rep)}")
        for disk in spec["disks"]:
            for leg in disk["legs"]:
                if leg["node"] == node:
                    lv = (rep.get("lvs") or {}).get(f"{leg['vg']}/{leg['lv']}")
                    out[leg["lv"]] = bool(lv) and PROVISIONED_TAG in (lv.get("tags") or [])
    return out


def _provisioned_record(guest):
    try:
        return _ops_cache().fetch(PROVISIONED_BANK, guest) or None
    except SaltCacheError as exc:
        log.warning("xencluster.provision: cannot read %s/%s: %s", PROVISIONED_BANK, guest, exc)
        return None


def _remember_provisioned(guest, record):
    try:
        _ops_cache().store(PROVISIONED_BANK, guest, record)
    except SaltCacheError as exc:
        log.warning("xencluster.provision: cannot write %s/%s: %s", PROVISIONED_BANK, guest, exc)


def _pki(*parts):
    return os.path.join(__opts__["pki_dir"], *parts)


def _seal_for(minion, private_pem, public_pem):
    """The guest's key pair sealed to dom0 ``minion``'s own key (only that minion can open it)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    with open(_pki("minions", minion), "rb") as fh:
        dom0_key = serialization.load_pem_public_key(fh.read())
    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return {
        "pub": public_pem,
        "sealed_key": base64.b64encode(dom0_key.encrypt(key, oaep)).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(AESGCM(key).encrypt(nonce, private_pem.encode(), public_pem.encode())).decode(),
    }


def _accept_key(guest, public_pem):
    """Accept ``public_pem`` as minion ``guest``'s key (as ``salt-key -a`` would); drop stray keys of the id."""
    for kind in KEY_DIRS:
        try:
            os.unlink(_pki(kind, guest))
            log.warning("xencluster.provision: removed the %s key of %s (a pre-seeded key replaces it)", kind, guest)
        except FileNotFoundError:
            pass
    path = _pki("minions", guest)
    tmp = f"{path}.xcprov"
    with salt.utils.files.fopen(tmp, "w") as fh:
        fh.write(public_pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True, f"accepted the key of minion {guest} ({path})"


def _legs_step(client, model, spec, node, dry_run, timeout):
    summaries = _legs_back(client, model, node, dry_run, timeout)
    errors = [e for s in summaries for e in s["errors"]]
    if errors:
        raise _ProvisionFailed("legs: " + "; ".join(errors))
    actions = sum(s["actions"] for s in summaries)
    return actions > 0, [f"{s['node']}: {s['actions']} action(s)" for s in summaries]


def _install_step(client, model, guest, node, sealed, timeout):
    minion = model["nodes"][node]["minion"]
    kind, ret = _call(client, minion, INSTALL_FUN, [guest], {"minion_key": sealed}, timeout)
    if kind != "ok" or not isinstance(ret, dict):
        raise _ProvisionFailed(f"install on {node}: {_short(_why_not(node, minion, INSTALL_FUN, kind, ret), 900)}")
    return ret["changed"], [f"{s['step']}: {_short(s['detail'], 200)} ({s['seconds']} s)" for s in ret["steps"]]


def _plan_step(client, model, guest, node, timeout):
    minion = model["nodes"][node]["minion"]
    kind, ret = _call(client, minion, PLAN_FUN, [guest], {}, timeout)
    if kind != "ok" or not isinstance(ret, dict):
        raise _ProvisionFailed(f"plan on {node}: {_short(_why_not(node, minion, PLAN_FUN, kind, ret), 900)}")
    return False, ret


def _tag_step(client, model, spec, timeout):
    tagged = []
    for node in spec["nodes"]:
        minion = model["nodes"][node]["minion"]
        for leg in [leg for disk in spec["disks"] for leg in disk["legs"] if leg["node"] == node]:
            kind, ret = _call(client, minion, LV_TAGS_FUN, [leg["vg"], leg["lv"]], {"add": [PROVISIONED_TAG]}, timeout)
            if kind != "ok":
                raise _ProvisionFailed(f"tagging {leg['vg']}/{leg['lv']} on {node}: {_short(ret)}")
            tagged.append(f"{node}:{leg['vg']}/{leg['lv']}")
    return True, tagged


def _state_step(client, model, node, fun, kwarg, timeout, what):
    minion = model["nodes"][node]["minion"]
    kind, ret = _call(client, minion, STATE_SINGLE_FUN, [fun], kwarg, timeout)
    states = _state_results(ret) if kind in ("ok", "error") else None
    if not states:
        raise _ProvisionFailed(f"{what} on {node}: {_short(_why_not(node, minion, STATE_SINGLE_FUN, kind, ret), 900)}")
    failed = [s.get("comment") for s in states if s.get("result") is False]
    if failed:
        raise _ProvisionFailed(f"{what} on {node}: {_short('; '.join(map(str, failed)), 900)}")
    return any(s.get("changes") for s in states), "; ".join(str(s.get("comment")) for s in states)


def _ping(client, guest, timeout=10):
    try:
        return bool((client.cmd([guest], "test.ping", timeout=timeout, tgt_type="list") or {}).get(guest))
    except Exception:  # pylint: disable=broad-except
        return False


def _await_minion(client, guest, bus, wait):
    """Until the guest minion's start event (or a ping answered, for a guest already up); seconds."""
    started = time.monotonic()
    tag = f"salt/minion/{guest}/start"
    if bus is None and _ping(client, guest):
        return False, "its minion answers"
    deadline = started + wait
    while time.monotonic() < deadline:
        if bus is not None and bus.get_event(wait=5, tag=tag, full=True):
            break
        if bus is None:
            time.sleep(10)
            if _ping(client, guest):
                break
    else:
        raise _ProvisionFailed(f"the minion of {guest} did not start within {wait} s (guest console: "
                               f"/var/log/xen/console/guest-{guest}.log on its node)")
    for _ in range(6):  # the start event comes as the minion connects: it answers a moment later
        if _ping(client, guest, timeout=20):
            return True, f"its minion started and answers ping ({round(time.monotonic() - started)} s)"
    raise _ProvisionFailed(f"the minion of {guest} started but does not answer test.ping")


def _highstate_step(client, guest, timeout):
    try:
        answers = client.cmd([guest], "state.highstate", timeout=timeout, tgt_type="list", full_return=True) or {}
    except Exception as exc:  # pylint: disable=broad-except
        raise _ProvisionFailed(f"highstate of {guest}: {exc}")
    data = answers.get(guest)
    ret = data.get("ret") if isinstance(data, dict) else None
    states = _state_results(ret)
    if states is None:
        raise _ProvisionFailed(f"highstate of {guest} did not run: {_short(ret if ret is not None else 'no answer')}")
    failed = [str(s.get("comment")) for s in states if s.get("result") is False]
    if failed:
        raise _ProvisionFailed(f"highstate of {guest}: {len(failed)} state(s) failed: {_short('; '.join(failed), 900)}")
    changed = [s for s in states if s.get("changes")]
    return bool(changed), f"{len(states)} state(s), {len(changed)} changed"


def _define_on_pair(client, model, guest, node, timeout):
    """The xl config on the home node, then on every other node of the guest's pair.

    Not only where it starts: a guest moves (migrate, evacuate), and ``restore`` and ``recover``
    read the guest's disks from the config on the node it runs on."""
    nodes = [node] + [n for n in model["guests"][guest]["nodes"] if n != node]
    said = {n: _state_step(client, model, n, DEFINED_STATE, {"name": guest}, timeout, "xl config") for n in nodes}
    return any(changed for changed, _ in said.values()), "; ".join(f"{n}: {comment}" for n, (_, comment) in said.items())


def _start_steps(client, model, guest, node, steps, settings):
    """Define the guest on its pair, start it on ``node`` (the running state's single-run check), await its minion."""
    steps.run("define", _define_on_pair, client, model, guest, node, settings["check_timeout"] * 4)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True) as bus:
        bus.subscribe(f"salt/minion/{guest}/start")
        steps.run("start", _state_step, client, model, node, RUNNING_STATE, {"name": guest, "provisioning": True},
                  settings["check_timeout"] * 8, "start")
        steps.run("minion", _await_minion, client, guest, bus, settings["minion_wait"])


def _provision_fresh(client, model, guest, spec, node, steps, settings):
    """Everything up to a running guest whose minion answers, from legs that may not exist yet."""
    steps.run("legs", _legs_step, client, model, spec, node, False, settings["check_timeout"] * 4)
    tags = steps.run("check tags", lambda: (False, _leg_tags(client, model, spec, settings["check_timeout"])))
    if not all(tags.values()):
        private_pem, public_pem = salt.crypt.gen_keys(GUEST_KEY_BITS)
        sealed = _seal_for(model["nodes"][node]["minion"], private_pem, public_pem)
        steps.run("install", _install_step, client, model, guest, node, sealed, settings["install_timeout"])
        steps.run("accept key", _accept_key, guest, public_pem)
        steps.run("tag legs", _tag_step, client, model, spec, settings["check_timeout"])
    _start_steps(client, model, guest, node, steps, settings)


def _provision_dry(client, model, guest, spec, node, steps, settings):
    where = steps.run("locate", lambda: (False, _where_runs(client, model, guest, settings["check_timeout"])))
    if where:
        return f"{guest} runs on {', '.join(where)}: a real run would only check its minion and highstate"
    steps.run("legs", _legs_step, client, model, spec, node, True, settings["check_timeout"] * 4)
    steps.run("plan", _plan_step, client, model, guest, node, settings["check_timeout"] * 2)
    return (f"would provision {guest} on {node}: legs, arrays and filesystems, OS from "
            f"{spec['provision']['image'] or 'debootstrap'}, key, start, minion"
            + (", highstate" if spec["provision"]["highstate"] else ""))


def _provision_live(client, model, guest, spec, node, steps, settings):
    """The real run: each step skipped when already done, so a re-run finishes an interrupted one."""
    where = steps.run("locate", lambda: (False, _where_runs(client, model, guest, settings["check_timeout"])))
    record = _provisioned_record(guest)
    if len(where) > 1:
        raise _ProvisionFailed(f"DOUBLE RUN: {guest} is running on {', '.join(where)}")
    if where:
        tags = steps.run("check tags", lambda: (False, _leg_tags(client, model, spec, settings["check_timeout"])))
        if not all(tags.values()):
            raise _ProvisionFailed(f"{guest} runs on {where[0]} but its legs are not tagged {PROVISIONED_TAG}: it was "
                                   "not started by provisioning; stop it first")
        if record and record.get("highstate_done"):
            return False, f"{guest} is already provisioned and running on {where[0]}: nothing to do"
        steps.run("minion", _await_minion, client, guest, None, settings["minion_wait"])
    else:
        _provision_fresh(client, model, guest, spec, node, steps, settings)
    if spec["provision"]["highstate"]:
        steps.run("highstate", _highstate_step, client, guest, settings["highstate_timeout"])
    _remember_provisioned(guest, {"node": where[0] if where else node, "highstate_done": True,
                                  "at": int(time.time())})  # fmt: skip
    return True, f"{guest} is provisioned and running on {where[0] if where else node}; its minion answers"


def provision(guest, dry_run=False, requested_by=None, install_timeout=DEFAULT_INSTALL_TIMEOUT,
              minion_wait=DEFAULT_MINION_WAIT, highstate_timeout=DEFAULT_HIGHSTATE_TIMEOUT,
              check_timeout=DEFAULT_VERIFY_TIMEOUT, tgt=None, tgt_type="glob"):  # fmt: skip
    """
    Provision ``guest`` from its pillar definition: disks, OS, minion key, start, highstate.

    The guest must be in the cluster model with ``provision`` settings. Steps, each skipped when
    already done (so a re-run after a failure or an interrupted run finishes the job, never
    making a second guest or a second set of LVs):

    1. ``locate``: where the guest runs, asked of every dom0 (one that cannot tell refuses);
    2. ``legs``: the leg state on its home node, then its partners: LVs, exports, logins;
    3. ``install`` on the home node (``xencluster_provision.install``): the RAID1 of each disk
       with an internal bitmap, filesystems, the OS (golden image or debootstrap), hostname,
       network, fstab, mdadm.conf, minion config and key;
    4. ``accept key``: the key pair was made here, on the master, and sealed to the home dom0's
       own minion key; its public half is accepted now (no key is ever auto-accepted);
    5. ``tag legs``: every leg gets the LVM tag ``xencluster.provisioned`` (the highstate
       starts a provisioned guest only once it has it);
    6. ``define``, ``start``: the xl config and ``xl create`` through the same cluster-wide
       single-run check as the ``xencluster_guest.running`` state;
    7. ``minion``: wait for the guest minion's start event; 8. ``highstate`` of the guest.

    Each step is fired as ``xencluster/provision/<guest>/<step>`` and timed in the return.
    ``requested_by`` (set by the reactor, salt/reactor/xencluster_provision.sls) is a minion id
    that must match master config ``xencluster_provision_allow``; a refused request is logged
    and changes nothing. ``dry_run=True`` prints the plan (legs with test=True, the install
    plan of the home node) and changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.provision web2
        salt-run xencluster.provision web2 dry_run=True
        salt-run state.orchestrate xencluster.orchestrate.provision pillar='{"guest": "web2"}'
    """
    started = time.monotonic()
    settings = {"install_timeout": install_timeout, "minion_wait": minion_wait,
                "highstate_timeout": highstate_timeout, "check_timeout": check_timeout}  # fmt: skip
    try:
        _check_provision_args(guest, dry_run, settings, requested_by)
    except SaltInvocationError as exc:  # returned, not raised: salt-run exits 0 on a raised SaltInvocationError
        return _provision_refusal(guest, requested_by, str(exc), started)
    if requested_by is not None:
        why = _allowed_requester(requested_by)
        if why:
            return _provision_refusal(guest, requested_by, why, started)
    try:
        _, model = _load_model(tgt, tgt_type)
        node, spec = provision_plan(model, guest)
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _provision_refusal(guest, requested_by, str(exc), started)
    op = None
    if not dry_run:
        op, refusal = _begin("provision", guest, {"guest": guest}, [_lock_key("guest", guest)], f"provision {guest}")
        if op is None:
            __context__["retcode"] = 1
            return {"result": False, "retcode": 1, "guest": guest, "busy": True, "changes": {}, "steps": [],
                    "message": refusal.get("message") or f"{guest} is busy"}  # fmt: skip
        _close_earlier(_earlier(_interrupted_ops("provision", guest, op), False, op), "re-run: resumed", op)
    steps = _Steps(guest, op, dry_run)
    out = {"result": None if dry_run else True, "guest": guest, "node": node, "requested_by": requested_by,
           "dry_run": dry_run}  # fmt: skip
    try:
        client = _local_client()
        if dry_run:
            out["message"], changed = _provision_dry(client, model, guest, spec, node, steps, settings), False
        else:
            changed, out["message"] = _provision_live(client, model, guest, spec, node, steps, settings)
    except _ProvisionFailed as exc:
        out.update(result=False, message=f"{guest}: {exc}")
        changed = any(s["changed"] for s in steps.done)
    except Exception as exc:  # pylint: disable=broad-except
        log.exception("xencluster.provision %s failed", guest)
        out.update(result=False, message=f"{guest}: {type(exc).__name__}: {exc}")
        changed = any(s["changed"] for s in steps.done)
    finally:
        _end(op, out)
    out.update(steps=steps.done, seconds=round(time.monotonic() - started, 1),
               changes={s["step"]: s["detail"] for s in steps.done if s["changed"]} if changed else {})
    if not dry_run:
        _fire_tag(f"{PROVISION_EVENT_BASE}/{guest}/{'done' if out['result'] else 'failed'}",
                  {k: out[k] for k in ("result", "message", "changes", "steps", "seconds", "node", "requested_by")})
        _progress(out["message"])
    out["retcode"] = 0 if out["result"] is not False else 1
    __context__["retcode"] = out["retcode"]
    return out


# --- deprovision: every trace of a provisioned guest, on both nodes and on the master ----------

ABSENT_STATE = "xencluster_guest.absent"
UNEXPORT_LIO_FUN = "xencluster_lio.unexport"
LIO_SAVE_FUN = "xencluster_lio.save"
LV_REMOVE_FUN = "xencluster_lvm.lv_remove"
DEFAULT_STOP_TIMEOUT = 300  # xl shutdown, then destroy


def _leg_portals(model, owner, partner):
    return _portals(model["nodes"][owner], model["nodes"][partner])


def _deprovision_plan(model, guest, spec):
    """The removal steps as plain data: per node, the imports to drop, then the exports and LVs (pure)."""
    imports, exports = {}, {}
    for disk in spec["disks"]:
        for leg in disk["legs"]:
            partner = next(n for n in disk["nodes"] if n != leg["node"])
            for portal in _leg_portals(model, leg["node"], partner):
                imports.setdefault(partner, []).append({"leg": leg["lv"], "target": leg["target"], "portal": portal})
            exports.setdefault(leg["node"], []).append({"leg": leg["lv"], "vg": leg["vg"], "lv": leg["lv"],
                                                        "backstore": leg["backstore"], "target": leg["target"]})
    return {"guest": guest, "nodes": list(spec["nodes"]), "stop": "xl shutdown, then destroy, wherever it runs",
            "config": [f"{GUEST_CONFIG_DIR}/{guest}.cfg on {n}" for n in spec["nodes"]],
            "logouts": imports, "unexports": exports,
            "key": f"minion key {guest} (accepted, pending, rejected or denied)"}  # fmt: skip


def _must(client, model, node, fun, args, kwarg, timeout, what):
    kind, ret = _call(client, model["nodes"][node]["minion"], fun, args, kwarg, timeout)
    if kind != "ok":
        raise _ProvisionFailed(f"{what} on {node}: {_short(ret, 600)}")
    return ret


def _stop_everywhere(client, model, guest, spec, settings):
    where = _where_runs(client, model, guest, settings["check_timeout"])
    done = []
    for node in where:
        _state_step(client, model, node, ABSENT_STATE, {"name": guest, "timeout": settings["stop_timeout"],
                                                         "force": True}, settings["stop_timeout"] + 60,
                    "stop")  # fmt: skip
        done.append(f"stopped on {node}")
    for node in sorted(set(spec["nodes"]) - set(where)):
        changed, comment = _state_step(client, model, node, ABSENT_STATE, {"name": guest}, settings["check_timeout"] * 4,
                                       "config")  # fmt: skip
        if changed:
            done.append(f"{node}: {comment}")
    return bool(done), done or ["not running, no config left"]


def _drop_imports(client, model, plan_, settings):
    done = []
    for node, entries in sorted(plan_["logouts"].items()):
        for entry in entries:
            ret = _must(client, model, node, LOGOUT_FUN, [entry["target"], entry["portal"]], {"delete": True},
                        settings["check_timeout"], f"logout of {entry['leg']}")  # fmt: skip
            done += [f"{node}: {c}" for c in ret.get("changes") or []]
    return bool(done), done


def _drop_exports(client, model, plan_, settings):
    done = []
    for node, entries in sorted(plan_["unexports"].items()):
        for entry in entries:
            ret = _must(client, model, node, UNEXPORT_LIO_FUN, [entry["backstore"], entry["target"]], {},
                        settings["check_timeout"], f"unexport of {entry['leg']}")  # fmt: skip
            done += [f"{node}: {c}" for c in ret.get("changes") or []]
        _must(client, model, node, LIO_SAVE_FUN, [], {}, settings["check_timeout"], "saving the LIO config")
        for entry in entries:
            ret = _must(client, model, node, LV_REMOVE_FUN, [entry["vg"], entry["lv"]], {}, settings["check_timeout"],
                        f"removal of LV {entry['vg']}/{entry['lv']}")  # fmt: skip
            if ret.get("removed"):
                done.append(f"{node}: removed LV {entry['vg']}/{entry['lv']}")
    return bool(done), done


def _delete_key(guest):
    done = []
    for kind in ("minions", *KEY_DIRS):
        try:
            os.unlink(_pki(kind, guest))
            done.append(f"deleted {kind}/{guest}")
        except FileNotFoundError:
            pass
    try:
        _ops_cache().flush(PROVISIONED_BANK, guest)
    except SaltCacheError as exc:
        log.warning("xencluster.deprovision: cannot forget %s in %s: %s", guest, PROVISIONED_BANK, exc)
    return bool(done), done or [f"no key of {guest}"]


def _final_backup(guest, spec, dry_run):
    if not spec["provision"]["final_backup"]:
        return None
    ret = backup(guest, dry_run=dry_run)
    if ret.get("result") is False:
        raise _ProvisionFailed(f"the final backup failed, nothing was removed: {ret.get('message')}")
    return ret.get("message")


def deprovision(guest, confirm=False, dry_run=False, stop_timeout=DEFAULT_STOP_TIMEOUT,
                check_timeout=DEFAULT_VERIFY_TIMEOUT, tgt=None, tgt_type="glob"):  # fmt: skip
    """
    Remove a provisioned guest: stop it, drop its imports, exports and LVs on both nodes, delete its key.

    Destructive: the guest's disks are gone afterwards, so a real run needs ``confirm=True``
    (``dry_run=True`` prints the plan). With pillar ``provision: {final_backup: true}`` a backup
    (``xencluster.backup``) is taken first, and a failed backup stops before anything is
    removed. Steps: ``stop`` (``xencluster_guest.absent`` wherever it runs, then its config on
    both nodes), ``imports`` (logout and node record deleted on each importer), ``exports``
    (LIO unexport, LIO config saved, ``lvremove`` on each owner), ``key`` (the minion key in
    every state, and the provisioning record). Each step is idempotent: a re-run after a
    failure finishes the job.

    The guest stays in pillar: remove it there too, or the next highstate of its nodes
    creates empty legs for it again (it is not started: it is not provisioned).

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.deprovision web2 dry_run=True
        salt-run xencluster.deprovision web2 confirm=True
    """
    started = time.monotonic()
    settings = {"stop_timeout": stop_timeout, "check_timeout": check_timeout}
    try:
        _check_provision_args(guest, dry_run, settings, None)
        if not isinstance(confirm, bool):
            raise SaltInvocationError(f"confirm must be True or False: {confirm!r}")
        _, model = _load_model(tgt, tgt_type)
        _node, spec = provision_plan(model, guest)
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _provision_refusal(guest, None, str(exc), started)
    plan_ = _deprovision_plan(model, guest, spec)
    if dry_run or not confirm:
        ok = dry_run
        __context__["retcode"] = 0 if ok else 1
        return {"result": None if ok else False, "retcode": 0 if ok else 1, "guest": guest, "plan": plan_,
                "changes": {}, "message": ("the plan; nothing was removed" if ok else
                                           f"deprovision removes {guest}'s disks: pass confirm=True (or dry_run=True)")}
    steps = _Steps(guest, None, False)
    out = {"result": True, "guest": guest, "plan": plan_}
    try:
        steps.run("final backup", lambda: (False, _final_backup(guest, spec, False)))
        op, refusal = _begin("deprovision", guest, {"guest": guest}, [_lock_key("guest", guest)],
                             f"deprovision {guest}")  # fmt: skip
        if op is None:
            raise _ProvisionFailed(refusal.get("message") or f"{guest} is busy")
        steps.op = op
        try:
            client = _local_client()
            steps.run("stop", _stop_everywhere, client, model, guest, spec, settings)
            steps.run("imports", _drop_imports, client, model, plan_, settings)
            steps.run("exports", _drop_exports, client, model, plan_, settings)
            steps.run("key", _delete_key, guest)
            out["message"] = f"{guest} is deprovisioned: its legs, exports, imports and key are gone"
        except _ProvisionFailed as exc:
            out.update(result=False, message=f"{guest}: {exc}")
        finally:
            _end(op, out)
    except _ProvisionFailed as exc:
        out.update(result=False, message=f"{guest}: {exc}")
    out.update(steps=steps.done, seconds=round(time.monotonic() - started, 1),
               changes={s["step"]: s["detail"] for s in steps.done if s["changed"]})
    _fire_tag(f"{PROVISION_EVENT_BASE}/{guest}/deprovision/{'done' if out['result'] else 'failed'}",
              {k: out[k] for k in ("result", "message", "steps", "seconds")})
    _progress(out["message"])
    out["retcode"] = 0 if out["result"] else 1
    __context__["retcode"] = out["retcode"]
    return out
