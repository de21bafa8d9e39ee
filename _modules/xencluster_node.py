"""
One read of a xencluster dom0 for the master's ``xencluster.verify`` runner.

``report`` returns, in ONE answer, everything the runner compares with the
cluster model: the domains (``xencluster_xl.list_domains``), the LVM state
(``xencluster_lvm.report``), the LIO exports (``xencluster_lio.exports``), the
iSCSI sessions (``xencluster_iscsi.sessions``), the stable leg paths
(``xencluster_disk.links``) and the xl configs ``xencluster_guest.defined``
wrote (a listing of ``/etc/xen/xencluster``). So the runner makes one publish
per round, whatever the number of dom0s, and one failing tool never hides the
others: a part that fails is ``{"error": "..."}`` and the rest is still there.

Only loads on a dom0 (``/proc/xen/capabilities`` contains ``control_d``, the
check of ``xencluster_xl.is_dom0``). The tools need not all be there: a
missing one (e.g. no rtslib-fb) is that part's error, not a missing report.
"""

import logging
import os
import re

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_node"

CAPABILITIES = "/proc/xen/capabilities"
CONFIG_DIR = "/etc/xen/xencluster"  # where xencluster_guest.defined writes <guest>.cfg
# part of the report -> the execution module function that reads it (one call each)
PARTS = {
    "domains": "xencluster_xl.list_domains",
    "lvm": "xencluster_lvm.report",
    "lio": "xencluster_lio.exports",
    "sessions": "xencluster_iscsi.sessions",
    "links": "xencluster_disk.links",
}
_CONFIG_NAME = re.compile(r"([a-z0-9][a-z0-9-]{0,30})\.cfg")  # the model's guest NAME + .cfg


def _is_dom0():
    """The same check as ``xencluster_xl.is_dom0`` (that module may not load: no ``xl``)."""
    try:
        with open(CAPABILITIES, encoding="ascii", errors="replace") as fh:
            return "control_d" in fh.read()
    except OSError:
        return False


def __virtual__():
    if not _is_dom0():
        return (False, f"xencluster_node: not a Xen dom0 (no control_d in {CAPABILITIES})")
    return __virtualname__


def _error(fun, exc):
    text = str(exc).strip() or type(exc).__name__
    return {"error": f"{fun}: {text}"}


def _read(fun):
    """One call of ``fun``; any failure becomes ``{"error": "<fun>: <why>"}``."""
    if fun not in __salt__:  # pylint: disable=undefined-variable
        mod = fun.split(".")[0]
        return {"error": f"{fun} is not available (is {mod} loaded? see salt-call sys.list_modules)"}
    try:
        return __salt__[fun]()  # pylint: disable=undefined-variable
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("xencluster_node.report: %s failed: %s", fun, exc)
        return _error(fun, exc)


def configs():
    """
    The guests that have an xl config in ``/etc/xen/xencluster``: sorted names.

    Only files named like a model guest (``<name>.cfg``) count. A missing
    directory is no config at all (``[]``), not an error.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_node.configs
    """
    try:
        names = os.listdir(CONFIG_DIR)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _CONFIG_NAME.fullmatch(name)
        if m and os.path.isfile(os.path.join(CONFIG_DIR, name)):
            out.append(m.group(1))
    return sorted(out)


def report():
    """
    Everything ``salt-run xencluster.verify`` needs from this dom0, in one answer.

    Returns ``{"domains": xencluster_xl.list_domains(), "lvm":
    xencluster_lvm.report(), "lio": xencluster_lio.exports(), "sessions":
    xencluster_iscsi.sessions(), "links": xencluster_disk.links(), "configs":
    [guests with /etc/xen/xencluster/<guest>.cfg]}``. Each function is called
    exactly once. A part that fails (tool missing, command failing, module not
    loaded) is ``{"error": "<function>: <why>"}`` instead, and the other
    parts are still read: one broken tool never hides the rest of the node.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_node.report
        salt -L node1,node2 xencluster_node.report --out=json
    """
    out = {part: _read(fun) for part, fun in PARTS.items()}
    try:
        out["configs"] = configs()
    except Exception as exc:  # pylint: disable=broad-except
        out["configs"] = _error("configs", exc)
    return out
