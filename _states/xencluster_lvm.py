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
"""

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
