"""
Cluster-wide views of a xencluster, run on the salt-master.

``locate`` asks every dom0 at once which guests it runs and raises the worst
alarm xencluster knows: a guest running on two nodes at the same time.

The ``xencluster_guest.running`` state calls ``locate`` from a dom0, live, just
before it starts a guest (``publish.runner``). The master must allow that in
its configuration, for the dom0 minions only (the keys are regular
expressions, ``re.match``-ed against the minion id and the runner name)::

    peer_run:
      'node[0-9]+$':           # the dom0 minion ids only, not '.*'
        - 'xencluster\\.locate$'

Without it the master answers ``{}`` and the state refuses to start anything.
"""

import logging

import salt.client
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
