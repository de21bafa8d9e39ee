"""
Cluster-wide views of a xencluster, run on the salt-master.

``locate`` asks every dom0 at once which guests it runs and raises the worst
alarm xencluster knows: a guest running on two nodes at the same time.
"""

import logging

import salt.client

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
        if data is False or not isinstance(data, dict):
            no_answer.append(minion)  # targeted, no return before the timeout
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


def locate(tgt="*", tgt_type="glob", timeout=None):
    """
    Where every guest runs: one parallel ``xencluster_xl.list_domains`` on the targeted minions.

    Returns::

        {"guests": {guest: [node, ...]},
         "double_runs": [guest seen on more than one node, ...],
         "no_answer": [targeted minion that did not return, ...],
         "unavailable": {minion: why xencluster_xl is not loaded there (not a dom0...)},
         "errors": {minion: error returned by xencluster_xl.list_domains}}

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
    """
    client = salt.client.LocalClient(__opts__["conf_file"])
    returns = client.cmd(
        tgt,
        _FUN,
        timeout=timeout or __opts__.get("timeout", 5),
        tgt_type=tgt_type,
        full_return=True,
    )
    result = _classify(returns or {})
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
