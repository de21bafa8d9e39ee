"""
dom0 networking of a xencluster node: bonds, service VLAN bridges and the SAN, from the model.

.. code-block:: yaml

    xencluster-network:
      xencluster_net.managed:
        - force: False        # True: allow changes that touch the management link

The files come from ``xencluster_net.plan`` (systemd-networkd only, all named
``/etc/systemd/network/40-xencluster-*``). A change that touches the management
interface (or anything it depends on) is refused unless ``force=True``;
``test=True`` shows the plan. Files are written atomically (mode 0644), stale
``40-xencluster-*`` files are removed, and ``networkctl reload`` runs only if
something changed. A second run changes nothing.

networkd never changes or deletes an existing netdev on reload: a changed
``.netdev`` (e.g. a bond's mode) takes effect after ``networkctl delete <dev>``
and ``networkctl reload``, or a reboot; the state says so and does neither.
"""

import os
import tempfile

__virtualname__ = "xencluster_net"

RELOAD_ARGV = ["networkctl", "reload"]
NETWORKD = "systemd-networkd"


def __virtual__():
    if "xencluster_net.plan" not in __salt__:
        return (False, "xencluster_net state: the xencluster_net execution module is not available")
    return __virtualname__


def _write_atomic(path, text, mode=0o644):
    """Write ``text`` to a hidden temporary file next to ``path`` (networkd ignores it), then rename."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ours(plan, path):
    """Only ever touch <dir>/<prefix>*.netdev|.network (the plan's own promise, checked again)."""
    name = os.path.basename(path)
    return (
        os.path.dirname(path) == plan["dir"]
        and name.startswith(plan["prefix"])
        and name.endswith((".netdev", ".network"))
        and "/" not in name
    )


def _notes(plan):
    notes = []
    for path, other in sorted(plan.get("shadowed", {}).items()):
        notes.append(f"{path} is shadowed by {other} (networkd applies the first matching .network file)")
    for path in plan.get("netdev_changed", []):
        notes.append(
            f"{path} changed: networkd applies it only to a new device "
            "(networkctl delete <device>, then networkctl reload; or reboot)"
        )
    for path in plan["remove"]:
        if path.endswith(".netdev"):
            notes.append(f"{path} removed: its device stays until networkctl delete <device> or a reboot")
    return notes


def _comment(lines, notes):
    return "\n".join([*lines, *(f"Note: {n}" for n in notes)])


def managed(name, node=None, force=False, reload=True, backend="networkd"):
    """
    Keep this node's bonds, VLANs, bridges and SAN addresses as the xencluster model says.

    name
        A label (e.g. ``xencluster-network``).
    node
        Node name or minion id in the model (default: this minion's id).
    force
        Apply even if a file to write or remove touches the management
        interface (its name, what it depends on, or its addresses). Without it
        such a change is refused (result False) and nothing is written.
    reload
        Run ``networkctl reload`` after a change (default True; it needs
        systemd-networkd running, which is checked first). False only writes.
    backend
        ``networkd``, the only one supported (ifupdown is refused).

    CLI Example:

    .. code-block:: bash

        salt node1 state.single xencluster_net.managed xencluster-network test=True
        salt node1 state.single xencluster_net.managed xencluster-network force=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        plan = __salt__["xencluster_net.plan"](node=node, backend=backend)
    except Exception as exc:  # pylint: disable=broad-except
        ret["comment"] = f"cannot plan the network: {exc}"
        return ret
    notes = _notes(plan)
    write, remove = plan["write"], plan["remove"]
    bad = [p for p in [*write, *remove] if not _ours(plan, p)]
    if bad:
        ret["comment"] = f"refusing to touch files that are not xencluster's: {', '.join(sorted(bad))}"
        return ret
    if not write and not remove:
        ret["result"] = True
        ret["comment"] = _comment([f"{len(plan['unchanged'])} xencluster network file(s) up to date"], notes)
        return ret

    changes = {}
    if write:
        changes["written"] = sorted(write)
    if remove:
        changes["removed"] = list(remove)
    if plan["touches_mgmt"] and not force:
        mgmt = plan["mgmt"]["interface"]
        why = (
            f"the management interface {mgmt} (or an interface or address it depends on: "
            f"{', '.join(plan['mgmt']['names'] + plan['mgmt']['addresses'])})"
            if mgmt
            else "the management link (the model names no mgmt_interface, so every change counts)"
        )
        ret["comment"] = _comment(
            [
                f"Refused: this change touches {why}: {', '.join(plan['touching'])}. "
                "Nothing was written. Check it with test=True, then apply with force=True "
                "from a console that does not depend on that link."
            ],
            notes,
        )
        ret["changes"] = {}
        return ret
    if reload and not __salt__["service.status"](NETWORKD):
        ret["comment"] = _comment(
            [
                f"{NETWORKD} is not running: the files would not take effect and networkctl reload "
                f"would fail. Nothing was written. Enable {NETWORKD} (check first that it does not "
                "take over the management link from ifupdown), or use reload=False to only write the files."
            ],
            notes,
        )
        return ret

    action = " and networkctl reload" if reload else " (no reload)"
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = changes
        ret["comment"] = _comment(
            [f"would write {len(write)} and remove {len(remove)} xencluster network file(s){action}"], notes
        )
        return ret

    done = {}
    try:
        for path in sorted(write):
            _write_atomic(path, write[path])
            done.setdefault("written", []).append(path)
        for path in remove:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            done.setdefault("removed", []).append(path)
        _fsync_dir(plan["dir"])
    except OSError as exc:
        ret["changes"] = done
        ret["comment"] = f"writing the network files failed: {exc}"
        return ret
    ret["changes"] = done
    if reload:
        res = __salt__["cmd.run_all"](RELOAD_ARGV, python_shell=False, ignore_retcode=True)
        if res["retcode"] != 0:
            ret["comment"] = _comment(
                [f"files written, but {' '.join(RELOAD_ARGV)} failed (rc {res['retcode']}): "
                 f"{(res.get('stderr') or '').strip()}"],
                notes,
            )
            return ret
    ret["result"] = True
    ret["comment"] = _comment([f"wrote {len(write)} and removed {len(remove)} xencluster network file(s){action}"], notes)
    return ret
