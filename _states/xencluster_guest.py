"""
Xen guests of a xencluster: define them, start them where the model says, stop them.

.. code-block:: yaml

    # the highstate entry point of a dom0: every guest it may run is defined,
    # and only the guests pinned to it (``node:`` in pillar) are started
    xencluster-guests:
      xencluster_guest.node_guests:
        - name: {{ grains['id'] }}

    web1:
      xencluster_guest.defined: []     # /etc/xen/xencluster/web1.cfg from the pillar model
    web1-up:
      xencluster_guest.running:
        - name: web1
        - require: [{xencluster_guest: web1}]

    old1:
      xencluster_guest.absent: []      # stopped and its config removed; disks untouched

``defined`` renders ``/etc/xen/xencluster/<guest>.cfg`` (mode 0600) from the
validated pillar model (``xencluster_model.node_view``) with
``xencluster_xl.render_config``. Every disk of the model gives the guest TWO
block devices, its two legs at their stable paths
``/dev/xencluster/<guest>.<disk>.<node>``; the guest mirrors them with md
RAID1. The legs are listed disk by disk, in the model's disk order, and within
a disk the leg of the node whose name sorts first comes first: disk ``i`` is
``xvd<2i>`` and ``xvd<2i+1>`` (``root`` on node1/node2 -> ``xvda`` = the node1
leg, ``xvdb`` = the node2 leg; ``data`` -> ``xvdc``, ``xvdd``). So the file is
the same on both nodes of the pair and a guest sees the same devices wherever
it runs. ``on_crash`` is ``preserve``: a crashed guest stays visible (to
``xencluster.locate`` too) until someone destroys it.

``running`` starts a guest only after asking the master, at that moment,
whether it runs anywhere in the cluster: ``publish.runner`` calls the
``xencluster.locate`` runner on the master, which asks every dom0 of the model
at once (``xencluster_xl.list_domains``). The start is refused when the guest
(or a live migration of it, ``<guest>--incoming``/``--migratedaway``) is seen
on any node, when any dom0 did not answer or could not tell (unknown is
unsafe), and when the runner cannot be reached. This needs, in the master
configuration::

    peer_run:
      'node[0-9]+$':                 # the dom0 minion ids only
        - 'xencluster\\.locate$'

The check and the start are not atomic: two operators starting the same guest
on two nodes within the same second can still both pass. The check closes
everything else (a guest left running, a node that is down or unreachable, a
migration in flight).

``node_guests`` asks once for all the guests it starts: a ``locate`` answer
says where every guest runs, so it judges each guest from the same answer
while that answer is at most ``SHARED_CHECK_FRESH_FOR`` seconds old (30),
then asks again. Only the guests pinned to this node are started here, and
nothing else starts a guest by itself, so the wider window only matters for
a start by hand elsewhere in those seconds; the number of master round trips
of a node's first highstate no longer grows with its guests.

A guest with ``provision`` in the model is installed by ``salt-run
xencluster.provision <guest>``, which tags both legs of its first disk
``xencluster.provisioned`` as its last disk step. Until then there is nothing
to boot: ``node_guests`` leaves such a guest stopped (``result: True``, a
comment saying to provision it) and ``running`` refuses it unless
``provisioning=True`` (the provisioning flow's own start). The tag of this
node's leg is read from ``xencluster_lvm.report`` only for a provision guest
that is not running here, at most once per run.

Each run reads this dom0's domains once (``xl list -l`` and ``xl list``,
cached in ``__context__``, forgotten after any start or stop), so a converged
highstate costs the same number of tool calls with 100 guests as with 1, and
asks the master nothing.
"""

import difflib
import logging
import os
import re
import tempfile
import time

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_guest"

CONFIG_DIR = "/etc/xen/xencluster"
CONFIG_MODE = 0o600
DIR_MODE = 0o700
LOCATE = "xencluster.locate"
CHECK_TIMEOUT = 10  # seconds the runner waits for the dom0s
PUBLISH_MARGIN = 30  # the runner's own overhead (find_job, gather_job_timeout)
SHARED_CHECK_FRESH_FOR = 30  # seconds node_guests judges more guests from one locate answer
_monotonic = time.monotonic  # patched by the unit tests
# While `xl migrate` runs, the copy on the target is <guest>--incoming and, at
# the very end, the source is <guest>--migratedaway: both are the guest.
ALIASES = ("", "--incoming", "--migratedaway")
# Domain states that are not running (xencluster_xl's _STOPPED).
STOPPED = ("shutdown", "crashed", "dying", "gone")
GUEST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")  # the model's NAME

PROVISIONED_TAG = "xencluster.provisioned"  # set on both legs of the first disk by xencluster.provision

_DOMAINS = "xencluster_guest.domains"
_LVM = "xencluster_guest.lvm"
_CLUSTER = "xencluster_guest.cluster"
_LOCATE_KEYS = {"guests": dict, "double_runs": list, "no_answer": list, "unavailable": dict, "errors": dict}


def __virtual__():
    if "xencluster_xl.list_domains" not in __salt__:
        return (False, "xencluster_guest state: the xencluster_xl execution module is not available (not a dom0?)")
    return __virtualname__


def _ret(name):
    return {"name": name, "result": False, "changes": {}, "comment": ""}


def _check_name(name):
    if not isinstance(name, str) or not GUEST_NAME.fullmatch(name):
        raise SaltInvocationError(f"invalid guest name {name!r} (1-31 of a-z 0-9 '-', as in the cluster model)")
    return name


def config_path(name):
    """Where ``defined`` writes the xl.cfg of guest ``name``."""
    return os.path.join(CONFIG_DIR, f"{_check_name(name)}.cfg")


# --- per-run caches -------------------------------------------------------------------


def _domains():
    """This dom0's domains: one ``xencluster_xl.list_domains`` per run (two tool calls)."""
    if _DOMAINS not in __context__:
        __context__[_DOMAINS] = __salt__["xencluster_xl.list_domains"]()
    return __context__[_DOMAINS]


def _forget_domains():
    """After a start or a stop the cached domain list is stale."""
    __context__.pop(_DOMAINS, None)


def _lvm_report():
    """This dom0's LVM report (three tool calls), read at most once per run and only when needed."""
    if _LVM not in __context__:
        if "xencluster_lvm.report" not in __salt__:
            raise CommandExecutionError("the xencluster_lvm execution module is not available")
        __context__[_LVM] = __salt__["xencluster_lvm.report"]()
    return __context__[_LVM]


def _cluster():
    """(node_view of this minion, sorted minion ids of every dom0) from the validated pillar model.

    Pure (no tool call); cached per run: pillar does not change during a run.
    Raises SaltInvocationError with every problem of the model.
    """
    if _CLUSTER not in __context__:
        view = __salt__["xencluster_model.node_view"](__opts__["id"])
        model = __salt__["xencluster_model.validate"]()
        minions = sorted({spec["minion"] for spec in model["nodes"].values()})
        __context__[_CLUSTER] = (view, minions)
    return __context__[_CLUSTER]


def _model_guest(name):
    """(view, minions, guest view) or SaltInvocationError if this node may not run ``name``."""
    view, minions = _cluster()
    guest = view["guests"].get(name)
    if guest is None:
        raise SaltInvocationError(
            f"the cluster model does not let {view['node']} run {name}: it is not a guest whose "
            f"disks are on {view['node']} (xencluster_model.node_view {view['node']})"
        )
    return view, minions, guest


# --- the xl config (pure) -------------------------------------------------------------


def vdev(index):
    """0 -> xvda, 25 -> xvdz, 26 -> xvdaa (Linux's disk naming)."""
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"invalid disk index {index!r}")
    letters, index = "", index + 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return f"xvd{letters}"


def guest_disks(guest):
    """[(vdev, leg path)]: per disk of the model, in order, both legs, lower-named node first."""
    out = []
    for disk in guest["disks"]:
        for leg in sorted(disk["legs"], key=lambda leg: leg["node"]):
            out.append((vdev(len(out)), leg["path"]))
    return out


def guest_config(guest, node):
    """
    The xl config dict of a guest of ``xencluster_model.node_view(node)["guests"]``. Pure.

    kernel/ramdisk/extra or bootloader, memory (MiB), vcpus, type, one vif per
    interface (MAC, and its bridge on ``node``), two disks per
    model disk (``guest_disks``), ``on_crash = "preserve"``. An interface on
    a plain bridge (``bridge:`` in the model) has that bridge here. The credit2
    weight and cap are not in it: ``running`` applies them with
    ``xencluster_xl.sched_credit2`` right after the start.
    """
    config = {
        "name": guest["name"],
        "type": guest["type"],
        "memory": guest["memory"],
        "vcpus": guest["vcpus"],
        "on_crash": "preserve",
        "disk": [f"format=raw,vdev={dev},access=rw,target={path}" for dev, path in guest_disks(guest)],
    }
    for key in ("kernel", "ramdisk", "extra", "bootloader"):
        if guest.get(key) is not None:
            config[key] = guest[key]
    vifs = []
    for iface in guest.get("interfaces") or []:
        if not iface.get("bridge"):
            raise SaltInvocationError(
                f"{guest['name']}: interface {iface['index']} (VLAN {iface['vlan']}) has no bridge on {node}"
            )
        vifs.append(f"mac={iface['mac']},bridge={iface['bridge']}")
    if vifs:
        config["vif"] = vifs
    return config


# --- the live check -------------------------------------------------------------------


def locate_arg(minions, timeout=CHECK_TIMEOUT):
    """The ``arg`` of ``publish.runner`` for ``xencluster.locate`` on exactly these dom0s."""
    minions = sorted(minions)
    return [{"__kwarg__": True, "tgt": minions, "tgt_type": "list", "timeout": timeout, "expect": minions}]


def _malformed(located):
    """Why ``located`` is not a ``xencluster.locate`` result, or None."""
    if isinstance(located, dict) and not located:
        return (
            "the master answered {} (is peer_run set for this minion and xencluster.locate in the "
            "master config, and the runner synced with saltutil.sync_runners?)"
        )
    if not isinstance(located, dict):
        return f"the master answered {located!r:.200}"
    for key, kind in _LOCATE_KEYS.items():
        if not isinstance(located.get(key), kind):
            return f"the master's answer is not a xencluster.locate result (no {key}): {located!r:.200}"
    return None


def ask_master(minions, timeout=CHECK_TIMEOUT):
    """
    Ask the master, now, where every guest runs on these dom0s.

    Returns ``(located, None)`` with the ``xencluster.locate`` result, or
    ``(None, why)`` when the runner could not be reached or answered something
    else (peer_run missing: ``{}``; timeout or ``--local``: a string).
    """
    try:
        located = __salt__["publish.runner"](LOCATE, arg=locate_arg(minions, timeout), timeout=timeout + PUBLISH_MARGIN)
    except Exception as exc:  # pylint: disable=broad-except
        return None, f"cannot reach {LOCATE} on the master: {exc}"
    problem = _malformed(located)
    if problem:
        return None, f"{LOCATE} could not be asked: {problem}"
    return located, None


def judge(guest, me, minions, located):
    """
    May ``guest`` be started on minion ``me``? Pure; ``located`` is a ``xencluster.locate`` result.

    Returns ``(verdict, reason)``, verdict one of:

    * ``"clear"``: every dom0 in ``minions`` answered and none runs the guest;
    * ``"here"``: it runs on ``me`` and nowhere else (nothing to do);
    * ``"refuse"``: it (or a migration of it) is seen elsewhere, it is a
      double run, or a dom0 could not tell (did not answer, xencluster_xl not
      loaded, error): unknown is unsafe.
    """
    seen = {}
    for alias in (guest + suffix for suffix in ALIASES):
        nodes = located["guests"].get(alias) or []
        if nodes:
            seen[alias] = sorted(nodes)
    where = "; ".join(f"{alias} on {', '.join(nodes)}" for alias, nodes in sorted(seen.items()))
    if guest in located["double_runs"] or any(len(nodes) > 1 for nodes in seen.values()):
        return "refuse", (
            f"DOUBLE RUN: {guest} is seen on more than one node ({where}); its disks may be "
            f"written from two places. Nothing was started: stop all copies but one by hand"
        )
    if seen == {guest: [me]}:
        return "here", f"{guest} is running on {me}"
    if any(alias != guest for alias in seen):
        return "refuse", f"{guest} is being live-migrated ({where}): not starting it on {me}"
    if seen:
        return "refuse", f"{guest} is running on {seen[guest][0]} (seen by {LOCATE} just now): not starting it on {me}"
    unknown = []
    for minion in minions:
        if minion in located["no_answer"]:
            unknown.append(f"{minion} did not answer")
        elif minion in located["unavailable"]:
            unknown.append(f"{minion} cannot tell (xencluster_xl not available: {located['unavailable'][minion]})")
        elif minion in located["errors"]:
            unknown.append(f"{minion} failed ({located['errors'][minion]})")
    if unknown:
        return "refuse", (
            f"cannot tell whether {guest} runs elsewhere, so it is not started on {me}: "
            + "; ".join(unknown)
        )
    return "clear", f"{guest} runs on none of {', '.join(minions)}"


def _live_check(guest, me, minions, timeout):
    """(verdict, reason): ask the master now, then ``judge``."""
    return _SharedCheck()(guest, me, minions, timeout)


class _SharedCheck:
    """The live check of the guests of one ``node_guests`` run: one ``locate`` answer while it is fresh.

    Called like ``_live_check``. The answer is reused for at most
    ``SHARED_CHECK_FRESH_FOR`` seconds after it arrived; a failed ask is not
    kept (the next guest asks again).
    """

    def __init__(self):
        self.located, self.arrived = None, None

    def __call__(self, guest, me, minions, timeout):
        if self.located is None or _monotonic() - self.arrived > SHARED_CHECK_FRESH_FOR:
            self.located = None
            located, problem = ask_master(minions, timeout)
            if located is None:
                return "refuse", f"{problem}; not starting {guest} without the cluster-wide check"
            for other in located["double_runs"]:
                if other != guest:
                    log.error("xencluster_guest: DOUBLE RUN of %s reported by %s", other, LOCATE)
            self.located, self.arrived = located, _monotonic()
        return _verdict(guest, me, minions, self.located)


def _verdict(guest, me, minions, located):
    """``judge`` with its log lines and the alarm of other guests' double runs."""
    others = [g for g in located["double_runs"] if g != guest]
    verdict, reason = judge(guest, me, minions, located)
    if verdict == "refuse":
        (log.error if reason.startswith("DOUBLE RUN") else log.warning)("xencluster_guest: %s", reason)
    if others:
        reason += f" (ALARM: DOUBLE RUN of {', '.join(others)} elsewhere in the cluster)"
    return verdict, reason


# --- provisioned yet? ------------------------------------------------------------------


def _not_provisioned(guest, node, report):
    """
    Why ``guest`` (a node_view guest) is not provisioned on ``node`` yet, or None. Pure.

    ``report`` is ``xencluster_lvm.report()`` of ``node``: the leg of the
    guest's first disk on ``node`` must exist and carry ``PROVISIONED_TAG``.
    """
    leg = next(leg for leg in guest["disks"][0]["legs"] if leg["node"] == node)
    lv_name = f"{leg['vg']}/{leg['lv']}"
    lv = report["lvs"].get(lv_name)
    if lv is None:
        return f"LV {lv_name} does not exist"
    if PROVISIONED_TAG not in lv["tags"]:
        return f"LV {lv_name} has no tag {PROVISIONED_TAG}"
    return None


def _provision_gate(name, view, guest, unprovisioned):
    """None to go on with the start, or the ret of a provision guest that is not provisioned yet.

    ``unprovisioned``: ``"refuse"`` (``running``: the state fails), ``"wait"``
    (``node_guests``: not started, not a failure) or ``"start"``
    (``running`` with ``provisioning=True``: no check).
    """
    if unprovisioned == "start" or not guest.get("provision"):
        return None
    try:
        why = _not_provisioned(guest, view["node"], _lvm_report())
    except (SaltInvocationError, CommandExecutionError) as exc:
        return dict(_ret(name), comment=f"cannot tell whether {name} is provisioned, so it is not started: {exc}")
    if why is None:
        return None
    hint = f"run salt-run xencluster.provision {name}"
    if unprovisioned == "wait":
        return dict(_ret(name), result=True, comment=f"not started: not provisioned yet ({why}); {hint}")
    return dict(_ret(name), comment=(
        f"{name} is not provisioned yet ({why}): not starting it; {hint} "
        "(the provisioning flow starts it with provisioning=True)"
    ))  # fmt: skip


# --- file handling --------------------------------------------------------------------


def _read(path):
    """(text, mode) of an existing file, or (None, None)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        return text, os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None, None


def _write(path, text):
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".xencluster-", suffix=".cfg", dir=directory)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, CONFIG_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _diff(old, new, path):
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile="/dev/null" if old is None else path,
            tofile=path,
        )
    )


# --- states ---------------------------------------------------------------------------


def defined(name, config=None):
    """
    Ensure ``/etc/xen/xencluster/<name>.cfg`` holds the guest's xl config (mode 0600).

    name
        The guest (a name of the cluster model).
    config
        An xl config dict to render instead of the model's (``name`` is set
        to ``name`` if missing and must equal it). Without it the config
        comes from the validated pillar model (``guest_config``); a guest this
        node may not run (its disks are not on this node) is refused.

    The file is compared with the rendered text; ``changes`` carries the
    unified ``diff`` (and ``mode`` when only the mode was wrong). A running
    guest keeps its config until it is started again. ``test=True`` shows the
    same diff and writes nothing.
    """
    ret = _ret(name)
    try:
        path = config_path(name)
        if config is None:
            view, _minions, guest = _model_guest(name)
            config = guest_config(guest, view["node"])
        elif not isinstance(config, dict):
            raise SaltInvocationError(f"config must be a dict: {config!r:.80}")
        else:
            config = {"name": name, **config}
            if config["name"] != name:
                raise SaltInvocationError(f"config name {config['name']!r} is not {name!r}")
        text = __salt__["xencluster_xl.render_config"](config)
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret["comment"] = str(exc)
        return ret
    old, mode = _read(path)
    changes = {}
    if old != text:
        changes["diff"] = _diff(old, text, path)
    if old is not None and mode != CONFIG_MODE:
        changes["mode"] = {"old": f"{mode:04o}", "new": f"{CONFIG_MODE:04o}"}
    if not changes:
        ret.update(result=True, comment=f"{path} is up to date")
        return ret
    what = "created" if old is None else "updated"
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{path} would be {what}")
        return ret
    try:
        if "diff" in changes:
            _write(path, text)
        else:
            os.chmod(path, CONFIG_MODE)
    except OSError as exc:
        ret["comment"] = f"cannot write {path}: {exc}"
        return ret
    ret.update(result=True, changes=changes, comment=f"{path} {what}; it takes effect at the next start of {name}")
    return ret


def _local(name):
    """(state of ``name`` or an alias here, or None, the alias found)."""
    domains = _domains()
    for alias in (name + suffix for suffix in ALIASES):
        if alias in domains and domains[alias]["state"] != "gone":  # gone: destroyed while read
            return domains[alias]["state"], alias
    return None, None


def _start(name, view, minions, guest, check_timeout, defined_pending=False, unprovisioned="refuse",
           check=_live_check):  # fmt: skip
    """The body of ``running`` once the model is known.

    ``defined_pending``: node_guests test=True; ``unprovisioned``: see
    ``_provision_gate``; ``check``: the live check (node_guests shares one).
    """
    ret = _ret(name)
    me = view["minion"]
    path = config_path(name)
    state, alias = _local(name)
    if alias == name and state not in STOPPED:
        ret.update(result=True, comment=f"{name} is already running on {view['node']} ({state})")
        return ret
    if alias is not None and alias != name:
        ret["comment"] = f"{alias} exists on {view['node']} ({state}): a live migration of {name} is in progress"
        return ret
    if alias == name:
        ret["comment"] = (
            f"{name} exists on {view['node']} but is {state} (on_crash=preserve keeps it for "
            f"inspection): destroy it first (xencluster_xl.destroy {name}), then start it again"
        )
        return ret
    gate = _provision_gate(name, view, guest, unprovisioned)
    if gate is not None:
        return gate
    if not os.path.isfile(path) and not (defined_pending and __opts__["test"]):
        ret["comment"] = f"{path} does not exist: use xencluster_guest.defined {name} first"
        return ret

    verdict, reason = check(name, me, minions, check_timeout)
    if verdict == "here":  # started by someone else since this run read the domains
        _forget_domains()
        ret.update(result=True, comment=f"{name} is already running on {view['node']} ({reason})")
        return ret
    if verdict != "clear":
        ret["comment"] = reason
        return ret

    sched = guest.get("sched")
    predicted = {"state": {"old": "not running", "new": "running"}}
    if sched:
        predicted["sched"] = dict(sched)
    if __opts__["test"]:
        ret.update(result=None, changes=predicted, comment=f"{name} would be started on {view['node']}: {reason}")
        return ret

    try:
        created = __salt__["xencluster_xl.create"](config_file=path)
    except (SaltInvocationError, CommandExecutionError) as exc:
        _forget_domains()
        ret["comment"] = f"starting {name} failed: {exc}"
        return ret
    _forget_domains()
    ret["changes"] = {"state": {"old": "not running", "new": "running"}}
    comment = f"{name} started on {view['node']} (domid {created.get('domid')}, {created.get('state')}); {reason}"
    if sched:
        try:
            __salt__["xencluster_xl.sched_credit2"](name, weight=sched["weight"], cap=sched["cap"])
        except (SaltInvocationError, CommandExecutionError) as exc:
            ret["comment"] = f"{comment}; but setting its credit2 weight/cap failed: {exc}"
            return ret
        ret["changes"]["sched"] = dict(sched)
    ret.update(result=True, comment=comment)
    return ret


def _check_timeout(check_timeout):
    if not isinstance(check_timeout, int) or isinstance(check_timeout, bool) or not 1 <= check_timeout <= 300:
        raise SaltInvocationError(f"check_timeout must be 1 to 300 seconds: {check_timeout!r}")


def running(name, check_timeout=CHECK_TIMEOUT, provisioning=False):
    """
    Ensure guest ``name`` runs on this dom0, after checking live that it runs nowhere else.

    name
        The guest (a name of the cluster model).
    check_timeout
        Seconds (1-300) the master's ``xencluster.locate`` waits for the dom0s.
    provisioning
        Only for the provisioning flow (``salt-run xencluster.provision``): start a
        guest with ``provision`` in the model although its first disk's leg here
        has no ``xencluster.provisioned`` tag yet. Without it such a guest is
        refused (there is no OS on its disks to boot). Guests without
        ``provision`` ignore it.

    Already running here: nothing to do (no question to the master). Otherwise
    the master is asked at that moment (``publish.runner`` ->
    ``xencluster.locate`` on every dom0 of the pillar model, waiting
    ``check_timeout`` seconds for them), and the start is refused when the
    guest is seen on a node, when a dom0 did not answer or could not tell, or
    when the runner cannot be reached (``peer_run`` must allow it). Only then
    ``xl create /etc/xen/xencluster/<name>.cfg`` (written by ``defined``) and
    ``xl sched-credit2`` with the model's weight and cap.

    The model must let this node run the guest (its disks are here). A domain
    of that name that is crashed or shut down here is not replaced: destroy it
    first. ``test=True`` asks the master too (read-only) and predicts.

    CLI Example:

    .. code-block:: bash

        salt node1 state.single xencluster_guest.running web1 check_timeout=20 test=True
    """
    try:
        _check_name(name)
        _check_timeout(check_timeout)
        if not isinstance(provisioning, bool):
            raise SaltInvocationError(f"provisioning must be True or False: {provisioning!r}")
        view, minions, guest = _model_guest(name)
        return _start(name, view, minions, guest, check_timeout, unprovisioned="start" if provisioning else "refuse")
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret = _ret(name)
        ret["comment"] = str(exc)
        return ret


def _stop(name, timeout, force):
    """(ret, stopped: bool). Shared by ``stopped`` and ``absent``."""
    ret = _ret(name)
    dom = _domains().get(name)
    if dom is None or dom["state"] in STOPPED:
        ret.update(result=True, comment=f"{name} is not running here" + (f" ({dom['state']})" if dom else ""))
        return ret, True
    old = dom["state"]
    if __opts__["test"]:
        how = f"shut down (xl shutdown, up to {timeout}s)" + (", then destroyed if still running" if force else "")
        ret.update(result=None, changes={"state": {"old": old, "new": "stopped"}}, comment=f"{name} would be {how}")
        return ret, True
    try:
        __salt__["xencluster_xl.shutdown"](name, timeout=timeout)
        _forget_domains()
        ret.update(result=True, changes={"state": {"old": old, "new": "stopped"}}, comment=f"{name} shut down")
        return ret, True
    except (SaltInvocationError, CommandExecutionError) as exc:
        _forget_domains()
        failure = str(exc)
    dom = _domains().get(name)
    if dom is None or dom["state"] in STOPPED:  # stopped after all (e.g. xl shutdown raced the exit)
        ret.update(result=True, changes={"state": {"old": old, "new": "stopped"}}, comment=f"{name} shut down")
        return ret, True
    if not force:
        ret["comment"] = f"{failure} (force=True destroys it after the timeout)"
        return ret, False
    try:
        __salt__["xencluster_xl.destroy"](name)
    except (SaltInvocationError, CommandExecutionError) as exc:
        _forget_domains()
        ret["comment"] = f"{failure}; and xl destroy failed: {exc}"
        return ret, False
    _forget_domains()
    ret.update(
        result=True,
        changes={"state": {"old": old, "new": "destroyed"}},
        comment=f"{name} did not shut down ({failure}); destroyed (force=True)",
    )
    return ret, True


def _check_stop_args(name, timeout, force):
    _check_name(name)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 <= timeout <= 86400:
        raise SaltInvocationError(f"timeout must be 0 to 86400 seconds: {timeout!r}")
    if not isinstance(force, bool):
        raise SaltInvocationError(f"force must be True or False: {force!r}")


def stopped(name, timeout=120, force=False):
    """
    Ensure guest ``name`` does not run on this dom0.

    ``xl shutdown`` and wait up to ``timeout`` seconds. If it still runs then,
    ``force=True`` destroys it (``xl destroy``); without force the state fails
    and the guest keeps running. A guest that is absent, shut down or crashed
    here counts as stopped (a crashed domain kept by ``on_crash=preserve`` is
    left for inspection; ``absent`` removes it). Needs no pillar: stopping is
    always allowed.
    """
    try:
        _check_stop_args(name, timeout, force)
        return _stop(name, timeout, force)[0]
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret = _ret(name)
        ret["comment"] = str(exc)
        return ret


def _legs_of(name):
    try:
        view, _minions = _cluster()
    except SaltInvocationError:
        return None
    guest = view["guests"].get(name)
    return [leg["lv"] for disk in guest["disks"] for leg in disk["legs"]] if guest else None


def absent(name, timeout=120, force=False, remove_disks=False):
    """
    Ensure guest ``name`` neither runs nor is defined on this dom0. Its disks are never touched.

    As ``stopped`` (same ``timeout`` and ``force``), then a leftover domain
    that is not running (crashed, shut down) is destroyed and
    ``/etc/xen/xencluster/<name>.cfg`` removed. If the guest cannot be
    stopped nothing else is done.

    ``remove_disks=True`` is refused before anything changes: the legs (LVs,
    exports, imports) belong to the leg states, which remove them on their own
    nodes; the comment lists the legs concerned.
    """
    ret = _ret(name)
    try:
        _check_stop_args(name, timeout, force)
        path = config_path(name)
    except SaltInvocationError as exc:
        ret["comment"] = str(exc)
        return ret
    if remove_disks is not False:
        legs = _legs_of(name)
        listed = ", ".join(legs) if legs else "(not in the cluster model of this node)"
        ret["comment"] = (
            f"remove_disks=True is not done by this state: the legs of {name} ({listed}) are removed "
            "by the leg states on their owners (xencluster_lvm). Nothing was changed; use "
            "remove_disks=False to stop and undefine the guest"
        )
        return ret
    try:
        stop, ok = _stop(name, timeout, force)
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret["comment"] = str(exc)
        return ret
    ret["changes"] = dict(stop["changes"])
    comments = [stop["comment"]]
    if not ok:
        ret["comment"] = stop["comment"]
        return ret
    test = __opts__["test"]
    # a domain that is not running (crashed, shut down) may remain, also after a real stop
    dom = None if test and stop["changes"] else _domains().get(name)
    if dom is not None and dom["state"] != "gone":
        if test:
            ret["changes"]["domain"] = {"old": dom["state"], "new": None}
            comments.append(f"the {dom['state']} domain {name} would be destroyed")
        else:
            try:
                __salt__["xencluster_xl.destroy"](name)
            except (SaltInvocationError, CommandExecutionError) as exc:
                _forget_domains()
                ret["comment"] = f"{stop['comment']}; destroying the {dom['state']} domain failed: {exc}"
                return ret
            _forget_domains()
            ret["changes"]["domain"] = {"old": dom["state"], "new": None}
            comments.append(f"the {dom['state']} domain destroyed")
    if os.path.lexists(path):
        ret["changes"]["config"] = {"old": path, "new": None}
        if test:
            comments.append(f"{path} would be removed")
        else:
            try:
                os.unlink(path)
            except OSError as exc:
                ret["comment"] = f"cannot remove {path}: {exc}"
                return ret
            comments.append(f"{path} removed")
    else:
        comments.append(f"{path} is absent")
    comments.append("disks untouched")
    ret["result"] = None if test and ret["changes"] else True
    ret["comment"] = "; ".join(comments)
    return ret


def node_guests(name, check_timeout=CHECK_TIMEOUT):
    """
    The highstate entry point of a dom0: its guests as the pillar model says.

    name
        This dom0's node name or minion id (applying it for another node is refused).

    Every guest the model lets this node run (its disks are here) is
    ``defined``; only the guests pinned to this node (``node:`` in pillar) are
    also ``running``, each after a live cluster-wide check (one ``locate``
    answer serves the guests started within 30 s of it), except a
    guest with ``provision`` whose first disk's leg here has no
    ``xencluster.provisioned`` tag yet: it is left stopped (``result: True``,
    the comment says to run ``salt-run xencluster.provision <guest>``). Nothing
    is ever stopped or moved. A bad model fails the state with the validator's
    message before anything is read or changed.

    A converged run (every config up to date, every pinned guest running
    here) reads the domains once and asks the master nothing, whatever the
    number of guests.

    CLI Example:

    .. code-block:: bash

        salt node1 state.single xencluster_guest.node_guests node1 test=True
    """
    ret = _ret(name)
    try:
        _check_timeout(check_timeout)
        view, minions = _cluster()
        if name not in (view["node"], view["minion"]):
            raise SaltInvocationError(
                f"node_guests {name} applied on minion {__opts__['id']} (node {view['node']}): "
                f"refused, it would start another node's guests here"
            )
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret["comment"] = str(exc)
        return ret
    results, comments = {}, []
    check = _SharedCheck()
    for gname in sorted(view["guests"]):
        guest = view["guests"][gname]
        sub = {"defined": defined(gname)}
        if guest["home"] and sub["defined"]["result"] is not False:
            try:
                sub["running"] = _start(
                    gname, view, minions, guest, check_timeout,
                    defined_pending=sub["defined"]["result"] is None, unprovisioned="wait", check=check,
                )  # fmt: skip
            except (SaltInvocationError, CommandExecutionError) as exc:
                sub["running"] = dict(_ret(gname), comment=str(exc))
        elif guest["home"]:
            sub["running"] = dict(_ret(gname), comment="not started: its config could not be written")
        results[gname] = sub
        changes = {step: r["changes"] for step, r in sub.items() if r["changes"]}
        if changes:
            ret["changes"][gname] = changes
        for step, r in sub.items():
            comments.append(f"{gname} {step}: {r['comment']}")
    outcomes = [r["result"] for sub in results.values() for r in sub.values()]
    if False in outcomes:
        ret["result"] = False
    elif None in outcomes:
        ret["result"] = None
    else:
        ret["result"] = True
    ret["comment"] = "\n".join(comments) if comments else f"the model gives {view['node']} no guests"
    return ret
