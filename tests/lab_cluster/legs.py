"""Disk pairs for lab tests, made through the xencluster modules as the product would.

A pair is two LVs ``<guest>.<disk>.node1`` and ``<guest>.<disk>.node2`` (VG
``xcguest`` on each node's first data disk), each exported to the other node
with the leg id as its unit serial (one target per leg) and logged in there, so
both legs sit at /dev/xencluster/<leg id> on both nodes. Names follow the
cluster model (xencluster_model): the leg id is the LV name, the LIO backstore
name and the unit serial; the target is ``<iqn base>:<leg id>``.
"""

import json

from labcli import salt

VG = "xcguest"
NODES = ("node1", "node2")
IQN_BASE = "iqn.2025-01.lab.xen"


def pv(node):
    return f"/dev/disk/by-id/virtio-n{node[-1]}data1"


def san(node):
    return f"192.168.100.{node[-1]}"


def peer(node):
    return NODES[1] if node == NODES[0] else NODES[0]


def leg_id(guest, disk, node):
    return f"{guest}.{disk}.{node}"


def stable_path(guest, disk, node):
    return f"/dev/xencluster/{leg_id(guest, disk, node)}"


def target(guest, disk, node):
    return f"{IQN_BASE}:{leg_id(guest, disk, node)}"


def run(node, argv, ok=(0,), timeout=300):
    """cmd.run_all with an argument list (no shell) on one minion."""
    ret = salt(node, "cmd.run_all", json.dumps(argv), "python_shell=False", timeout=timeout)[node]
    assert isinstance(ret, dict) and ret["retcode"] in ok, (node, argv, ret)
    return ret


def call(node, fun, *args, timeout=300):
    """A Salt function that must succeed; its return."""
    ret = salt(node, fun, *args, timeout=timeout)[node]
    assert not (isinstance(ret, str) and ("ERROR" in ret or "Traceback" in ret or "is not available" in ret)), (
        node, fun, args, ret)
    return ret


def make_vgs():
    for node in NODES:
        run(node, ["vgcreate", "--yes", VG, pv(node)])


def make_pair(guest, disk, size):
    """Both legs of one disk, exported crosswise, logged in, linked on both nodes."""
    for owner in NODES:
        leg = leg_id(guest, disk, owner)
        call(owner, "xencluster_lvm.lv_create", VG, leg, size)
        ret = call(owner, "xencluster_lio.export", leg, f"/dev/{VG}/{leg}", target(guest, disk, owner),
                   json.dumps([f"{IQN_BASE}:{peer(owner)}"]), json.dumps([f"{san(owner)}:3260"]),
                   f"serial={leg}")  # fmt: skip
        assert isinstance(ret, dict), ret
    for node in NODES:
        other = peer(node)
        call(node, "xencluster_iscsi.login", target(guest, disk, other), f"{san(other)}:3260")
        for owner in NODES:
            link = call(node, "xencluster_disk.wait_for", guest, disk, owner, "timeout=60", timeout=120)
            assert link["kind"] == ("lv" if owner == node else "iscsi"), (node, owner, link)


def remove_pairs(pairs):
    """Undo make_pair for every (guest, disk) and the VGs; collect problems instead of stopping."""
    problems = []

    def attempt(what, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except AssertionError as exc:
            problems.append(f"{what}: {exc}")

    for guest, disk in pairs:
        for node in NODES:
            other = peer(node)
            attempt(f"logout {node}", call, node, "xencluster_iscsi.logout", target(guest, disk, other),
                    f"{san(other)}:3260", "delete=True")  # fmt: skip
        for owner in NODES:
            leg = leg_id(guest, disk, owner)
            attempt(f"unexport {leg}", call, owner, "xencluster_lio.unexport", leg, target(guest, disk, owner))
    for node in NODES:
        attempt(f"vgremove {node}", run, node, ["vgremove", "--force", "--yes", VG], ok=(0, 5))
        attempt(f"pvremove {node}", run, node, ["pvremove", "--yes", pv(node)], ok=(0, 5))
    return problems
