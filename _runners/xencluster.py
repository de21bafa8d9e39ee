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
EGUESTNOTRUNNING     warning  a guest pinned to a node runs nowhere
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
"""

import copy
import ipaddress
import logging

import salt.client
import salt.loader
import salt.utils.minions
from salt.exceptions import CommandExecutionError
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
EGUESTNOTRUNNING = "EGUESTNOTRUNNING"
EGUESTUNKNOWN = "EGUESTUNKNOWN"
EGUESTNOCONFIG = "EGUESTNOCONFIG"
EGUESTNOANSWER = "EGUESTNOANSWER"
EGUESTRAIDUNKNOWN = "EGUESTRAIDUNKNOWN"

# code -> severity, in the order findings of one severity are listed
CODES = {
    ECLUSTERDOUBLERUN: CRITICAL,
    EGUESTOUTSIDEPAIR: CRITICAL,
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
    EGUESTNOTRUNNING: WARNING,
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
            out.append(_finding(EGUESTNOTRUNNING, f"guest {name} is pinned to {guest['node']} but runs nowhere",
                                node=guest["node"], guest=name))  # fmt: skip
        for node in guest.get("nodes") or []:
            configs = known.get(node, {}).get("configs")
            if configs is not None and name not in configs:
                out.append(_finding(EGUESTNOCONFIG, f"{node} has no xl config for guest {name} "
                                    f"(/etc/xen/xencluster/{name}.cfg): it cannot start it there", node=node,
                                    guest=name))  # fmt: skip


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


def _check_importer(gname, leg, owner, partner, portals, parts, out):
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
    usable = any(mine.get(p, {}).get("state") == LOGGED_IN for p in portals)
    if usable and parts["links"] is not None:
        _check_path(gname, leg, partner, parts["links"], "iscsi", devices, out)


def _check_legs(model, known, out):
    nodes = model["nodes"]
    for gname, leg, owner, partner in _legs(model):
        _check_owner(gname, leg, owner, nodes[partner]["initiator"], known[owner], out)
        _check_importer(gname, leg, owner, partner, _portals(nodes[owner], nodes[partner]), known[partner], out)


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
    matched = salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type).get("minions") or []
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
       ``salt-run saltutil.sync_modules``). A bad model raises with every
       problem by key path; nothing is published.
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
                     "model_from": minion id whose pillar gave the model}}

    ``salt-run`` exits with ``retcode`` (it reads that key of the return;
    ``__context__["retcode"]`` is set too, which marks the job unsuccessful
    in the job cache and on the event bus). The codes are listed in the
    module docstring and the README. ``out=highstate`` returns the findings
    as states for the highstate outputter (``{"data", "outputter",
    "retcode"}``, as ``state.orchestrate`` does); ``--out=highstate`` alone
    cannot render the plain return.

    CLI Example:

    .. code-block:: bash

        salt-run xencluster.verify
        salt-run xencluster.verify tgt=node1 timeout=60 guests=False --out=json
        salt-run xencluster.verify out=highstate
    """
    _check_verify_args(timeout, guests, out)
    timeout = timeout or DEFAULT_VERIFY_TIMEOUT
    source, raw = _pillar_model(tgt or "*", tgt_type)
    model = _validate(raw)
    client = salt.client.LocalClient(__opts__["conf_file"])
    dom0s = sorted(spec["minion"] for spec in model["nodes"].values())
    reports = _publish(client, dom0s, NODE_FUN, timeout)
    raid = None
    if guests:
        asked = running_guests(model, located_guests(model, reports))
        answers = _publish(client, asked, MD_FUN, timeout)
        raid = {guest: answers.get(guest) for guest in asked}  # no key, no return: did not answer
    found, located = _evaluate(model, reports, raid)
    result = {
        "ok": not any(f["severity"] in (CRITICAL, ERROR) for f in found),
        "retcode": retcode(found),
        "findings": found,
        "guests": located,
        "summary": dict(summarize(found, located, model), model_from=source),
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
