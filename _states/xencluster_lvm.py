"""
Logical volumes of xencluster guest disks: create them, grow them, never shrink them.

.. code-block:: yaml

    web1-disk0-a:
      xencluster_lvm.lv_present:
        - vg: vg0
        - size: 20G

    db1-disk0-a:
      xencluster_lvm.lv_present:
        - vg: vg0
        - size: 100G
        - stripes: 2
        - stripe_size: 64k
        - pvs: [/dev/sdb, /dev/sdc]

Each run reads the host's LVM state once (``xencluster_lvm.report``), computes
a plan with a pure function (which is also the dry run: ``test=True`` shows
exactly what a real run would do, including LVM's rounding to whole extents
and stripes) and then applies it.

Volume groups of the cluster model (pillar ``vgs: {xcvg: {pvs: [...]}}``):

.. code-block:: yaml

    xcvg:
      xencluster_lvm.vg_present:
        - pvs: [/dev/vdb, /dev/vdc]

``vg_present`` only ever uses blank devices: a device carrying any signature
(filesystem, partition table, md, another LVM PV ...) fails the state, and
the operator wipes it. It never removes a PV from a VG.
"""

import os

__virtualname__ = "xencluster_lvm"


def __virtual__():
    if "xencluster_lvm.report" not in __salt__:
        return (False, "xencluster_lvm state: the xencluster_lvm execution module is not available")
    return __virtualname__


def _ceil_div(a, b):
    return -(-a // b)


def _plan_lv(report, vg, name, size, stripes=None, stripe_size=None, pvs=()):
    """
    Decide what ``lv_present`` must do; pure (no Salt, no I/O).

    ``report`` is ``xencluster_lvm.report()``; sizes are bytes. Returns
    ``{"action": "none"|"create"|"extend"|"error", "comment": str,
    "old_size": int|None, "new_size": int|None}`` where ``new_size`` is the
    size LVM will end up with (rounded up to whole extents, and for striped
    LVs to whole stripes).
    """
    plan = {"action": "error", "old_size": None, "new_size": None}
    vgi = report["vgs"].get(vg)
    if vgi is None:
        return dict(plan, comment=f"volume group {vg} not found")
    extent = vgi["vg_extent_size"]
    lv = report["lvs"].get(f"{vg}/{name}")
    for pv in pvs:
        if report["pvs"].get(pv, {}).get("vg_name") != vg:
            return dict(plan, comment=f"{pv} is not a physical volume of {vg}")
    free = sum(report["pvs"][pv]["pv_free"] for pv in pvs) if pvs else vgi["vg_free"]

    if lv is None:
        per = extent * (stripes or 1)
        new = _ceil_div(size, per) * per
        if new > free:
            return dict(plan, new_size=new, comment=f"{vg} has {free} bytes free, {name} needs {new}")
        return {
            "action": "create",
            "old_size": None,
            "new_size": new,
            "comment": f"{vg}/{name} would be created with {new} bytes",
        }

    old = lv["size"]
    plan["old_size"] = old
    mismatch = [
        seg
        for seg in lv["segments"]
        if (stripes is not None and seg["stripes"] != stripes)
        or (stripe_size is not None and seg["stripe_size"] != stripe_size)
    ]
    if mismatch:
        seg = mismatch[0]
        return dict(
            plan,
            comment=(
                f"{vg}/{name} has a segment with {seg['stripes']} stripe(s) of "
                f"{seg['stripe_size']} bytes, not the {stripes} stripe(s) of {stripe_size} "
                "bytes requested; the layout of an existing LV is not changed"
            ),
        )
    old_extents = _ceil_div(old, extent)
    delta = _ceil_div(size, extent) - old_extents
    if delta <= 0:
        comment = f"{vg}/{name} is present with {old} bytes"
        if size < old:
            comment += f" (more than the {size} requested; LVs are never shrunk by this state)"
        return {"action": "none", "old_size": old, "new_size": old, "comment": comment}
    last_stripes = (lv["segments"][-1]["stripes"] or 1) if lv["segments"] else 1
    delta = _ceil_div(delta, last_stripes) * last_stripes  # lvextend keeps the last layout
    new = (old_extents + delta) * extent
    if new - old > free:
        return dict(plan, new_size=new, comment=f"{vg} has {free} bytes free, growing {name} needs {new - old}")
    return {
        "action": "extend",
        "old_size": old,
        "new_size": new,
        "comment": f"{vg}/{name} would grow from {old} to {new} bytes",
    }


def lv_present(name, vg, size, stripes=None, stripe_size=None, pvs=None):
    """
    Ensure logical volume ``name`` exists in ``vg`` with at least ``size``.

    Creates the LV if missing (``stripes``, ``stripe_size`` and ``pvs`` apply
    to the creation and restrict where new extents go), grows it if smaller,
    and never shrinks it. The layout of an existing LV is not changed: asking
    for other stripes than it has is reported as a failure.

    name
        LV name, e.g. ``web1-disk0-a``.
    vg
        Volume group.
    size
        Exact bytes or a binary unit: ``512M``, ``20G``, ``1T``.
    stripes, stripe_size
        Striping for a new LV (``stripe_size`` needs ``stripes >= 2``).
    pvs
        Physical volumes (list of device paths) to allocate from.

    CLI Example:

    .. code-block:: bash

        salt node1 state.single xencluster_lvm.lv_present web1-disk0-a vg=vg0 size=20G test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        args = __salt__["xencluster_lvm.lv_args"](vg, name, size, stripes, stripe_size, pvs)
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = str(exc)
        return ret
    try:
        report = __salt__["xencluster_lvm.report"]()
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"cannot read LVM state: {exc}"
        return ret

    plan = _plan_lv(
        report,
        args["vg"],
        args["name"],
        args["size"],
        args["stripes"],
        args["stripe_size"],
        args["pvs"],
    )
    ret["comment"] = plan["comment"]
    if plan["action"] == "error":
        return ret
    if plan["action"] == "none":
        ret["result"] = True
        return ret

    lv_id = f"{args['vg']}/{args['name']}"
    if plan["action"] == "create":
        predicted = {lv_id: {"old": None, "new": {"size": plan["new_size"]}}}
    else:
        predicted = {lv_id: {"old": {"size": plan["old_size"]}, "new": {"size": plan["new_size"]}}}
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = predicted
        return ret

    try:
        if plan["action"] == "create":
            lv = __salt__["xencluster_lvm.lv_create"](
                args["vg"],
                args["name"],
                args["size"],
                stripes=args["stripes"],
                stripe_size=args["stripe_size"],
                pvs=args["pvs"] or None,
            )
            ret["changes"] = {lv_id: {"old": None, "new": {"size": lv["size"]}}}
            ret["comment"] = f"{lv_id} created with {lv['size']} bytes"
        else:
            res = __salt__["xencluster_lvm.lv_extend"](
                args["vg"], args["name"], args["size"], pvs=args["pvs"] or None
            )
            ret["changes"] = {
                lv_id: {"old": {"size": res["old_size"]}, "new": {"size": res["new_size"]}}
            }
            ret["comment"] = f"{lv_id} grown from {res['old_size']} to {res['new_size']} bytes"
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"{plan['action']} of {lv_id} failed: {exc}"
        return ret
    ret["result"] = True
    if ret["changes"] != predicted:
        ret["comment"] += f" (the plan predicted {plan['new_size']} bytes)"
    return ret


def _types(found):
    return ", ".join(sig["type"] for sig in found)


def _plan_vg(report, signatures, name, pvs, realpaths=None):
    """
    Decide what ``vg_present`` must do; pure (no Salt, no I/O).

    ``report`` is ``xencluster_lvm.report()``, ``signatures`` is
    ``xencluster_lvm.signatures()`` of the listed devices that are in no VG
    (it need not have the others: PVs of ``name`` are fine, PVs of another
    VG are refused without a probe). ``realpaths`` maps paths (the
    given PVs and the report's PV names) to what they resolve to
    (``os.path.realpath``); a path it lacks stands for itself. PVs are
    compared by their resolved paths: ``/dev/disk/by-id/virtio-x`` given, LVM
    reports ``/dev/vdb``.

    Returns ``{"action": "none"|"create"|"extend"|"error", "comment": str,
    "add": [PVs as given that vgcreate/vgextend gets]}``.
    """
    realpaths = realpaths or {}

    def real(path):
        return realpaths.get(path, path)

    by_real = {real(pv_name): row for pv_name, row in report["pvs"].items()}
    exists = name in report["vgs"]
    add, errors, listed = [], [], set()
    for pv in pvs:
        resolved = real(pv)
        if resolved in listed:
            errors.append(f"{pv} is listed twice (it is {resolved})")
            continue
        listed.add(resolved)
        row = by_real.get(resolved)
        shown = pv if row is None or row["pv_name"] == pv else f"{pv} ({row['pv_name']})"
        if row is not None and row["vg_name"] == name:
            continue
        if row is not None and row["vg_name"]:
            errors.append(f"{shown} is a physical volume of volume group {row['vg_name']}")
            continue
        found = signatures.get(pv)
        if found is None:
            errors.append(f"{pv} was not probed for signatures")
        elif found:
            hint = " (an LVM PV of no VG: pvremove it if it is not needed)" if row is not None else ""
            errors.append(f"{shown} carries {_types(found)}{hint}")
        else:
            add.append(pv)
    unlisted = sorted(
        pv_name
        for pv_name, row in report["pvs"].items()
        if row["vg_name"] == name and real(pv_name) not in listed
    )
    warning = (
        f"; warning: {', '.join(unlisted)} {'is a PV' if len(unlisted) == 1 else 'are PVs'} of {name} "
        "but not listed (this state never removes a PV from a VG)"
        if unlisted
        else ""
    )
    if errors:
        comment = f"volume group {name}: refusing: {'; '.join(errors)}"
        if any("carries" in e for e in errors):
            comment += (
                ". xencluster never wipes a device: if what is on it may go, wipe it "
                "yourself (wipefs --all DEVICE) and run again"
            )
        return {"action": "error", "add": [], "comment": comment + warning}
    if not exists:
        return {
            "action": "create",
            "add": add,
            "comment": f"volume group {name} would be created on {', '.join(add)}" + warning,
        }
    if add:
        return {
            "action": "extend",
            "add": add,
            "comment": f"volume group {name} would be extended with {', '.join(add)}" + warning,
        }
    return {
        "action": "none",
        "add": [],
        "comment": f"volume group {name} is present with {', '.join(pvs)}" + warning,
    }


def _vg_changes(action, name, add):
    """The ``changes`` of a create or an extend: the same shape for test=True and a real run."""
    if action == "create":
        return {"created": {"vg": name, "pvs": list(add)}}
    return {"extended": {"vg": name, "added": list(add)}}


def vg_present(name, pvs):
    """
    Ensure volume group ``name`` exists and has at least the physical volumes ``pvs``.

    Creates the VG on ``pvs`` if missing (``vgcreate``), or adds those of
    ``pvs`` it lacks (``vgextend``). Only blank devices are used: a device
    with any signature (``wipefs --no-act``: filesystem, swap, partition
    table, md superblock, an LVM PV label ...), a PV of another VG or a
    missing device fails the state without changing anything; nothing is
    ever wiped, the operator does that. PVs of the VG that are not listed are
    kept (a warning in the comment): this state never runs ``vgreduce``.

    One read of the host: ``xencluster_lvm.report`` plus, for the listed
    devices that are in no VG only, one ``xencluster_lvm.signatures`` call
    (none when the VG is complete). PV paths may be symlinks (``/dev/disk/by-id/...``): they
    are compared with LVM's names (``/dev/vdb``) by ``os.path.realpath``, and
    given to vgcreate/vgextend as written. The ``vg_create``/``vg_extend``
    that apply the plan check the devices once more right before running.

    ``changes`` is ``{"created": {"vg": name, "pvs": [...]}}`` or
    ``{"extended": {"vg": name, "added": [...]}}``; ``test=True`` reports
    exactly those with result None.

    name
        VG name, e.g. ``xcvg``.
    pvs
        Device paths, e.g. ``[/dev/vdb, /dev/vdc]``.

    CLI Example:

    .. code-block:: bash

        salt node1 state.single xencluster_lvm.vg_present xcvg pvs='["/dev/vdb", "/dev/vdc"]' test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        args = __salt__["xencluster_lvm.vg_args"](name, pvs)
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = str(exc)
        return ret
    vg, pvs = args["vg"], args["pvs"]
    try:
        report = __salt__["xencluster_lvm.report"]()
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"cannot read LVM state: {exc}"
        return ret

    realpaths = {path: os.path.realpath(path) for path in [*pvs, *report["pvs"]]}
    # Probe only devices in no VG: a PV of this VG needs no probe, one of another VG is refused anyway.
    in_a_vg = {realpaths[p] for p, row in report["pvs"].items() if row["vg_name"]}
    new = [pv for pv in pvs if realpaths[pv] not in in_a_vg]
    signatures = {}
    if new:
        try:
            signatures = __salt__["xencluster_lvm.signatures"](new)
        except Exception as exc:  # pylint: disable=broad-except
            ret["comment"] = f"cannot probe {', '.join(new)} for signatures: {exc}"
            return ret

    plan = _plan_vg(report, signatures, vg, pvs, realpaths)
    ret["comment"] = plan["comment"]
    if plan["action"] == "error":
        return ret
    if plan["action"] == "none":
        ret["result"] = True
        return ret

    predicted = _vg_changes(plan["action"], vg, plan["add"])
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = predicted
        return ret

    try:
        if plan["action"] == "create":
            res = __salt__["xencluster_lvm.vg_create"](vg, plan["add"])
            ret["changes"] = _vg_changes("create", vg, res["pvs"])
            ret["comment"] = f"volume group {vg} created on {', '.join(res['pvs'])}"
        else:
            res = __salt__["xencluster_lvm.vg_extend"](vg, plan["add"])
            ret["changes"] = _vg_changes("extend", vg, res["added"]) if res["added"] else {}
            ret["comment"] = f"volume group {vg} extended with {', '.join(res['added'])}"
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"{plan['action']} of volume group {vg} failed: {exc}"
        return ret
    ret["result"] = True
    warning = plan["comment"].partition("; warning: ")[2]
    if warning:
        ret["comment"] += f"; warning: {warning}"
    if ret["changes"] != predicted:
        ret["comment"] += f" (the plan predicted {predicted})"
    return ret
