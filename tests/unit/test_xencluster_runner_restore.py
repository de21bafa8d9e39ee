"""xencluster.restore runner: the round, the legs state, block-attach, re-add through the guest minions, the resync.

The frozen lab model (``tests/unit/data/two_node_model.sls``): web1 (pair
node1/node2, disks root and data) and db1 (pair node2/node1, disk root).
The scene is node1 coming back after ``recover``: web1 runs on node2
DEGRADED (its domain has no disk for node1's legs, xvda and xvdc), db1 kept
running on node2 with node1's leg attached (xvda), which md marked faulty.

* node2 is a SYNTHETIC dom0 (``FakeDom0`` of test_xencluster_guest_state.py)
  behind the REAL ``xencluster_xl``: ``list_domains``, ``create_degraded``'s
  dry run over the config the real guest state renders, ``block_attach`` and
  ``block_list`` (``xl block-list`` rows and ``xl list -l <guest>`` disks in
  the formats of the recording ``xl/lab-node1-probe-pair``). node1 answers
  the round with no domain. Stable paths: the migrate tests' SYNTHETIC
  ``node_links``; ``xl info``: the recording.
* The guest minions run the REAL ``xencluster_md`` over the md recordings of
  lab node2 (``tests/recordings/md``: ``lab-node2-degraded``,
  ``-leg1-faulty``, ``-bitmap-recovery``, ``-bitmap-recovery-later``,
  ``-clean``, ``-full-recovery``), SYNTHETIC in their names only: the
  recorded dm-1 (the leg that left and came back) is the guest's returning
  device, dm-0 its partner, and web1's second array is md126.
* The legs state's answers are SYNTHETIC, shaped as ``xencluster_leg``'s
  ``_converge`` returns them, its lines made by the state's own ``describe``.

The mocked LocalClient answers each publish the way a minion does (``full_return``).
"""

import copy
import json
import pathlib
from unittest.mock import MagicMock

import pytest
import salt.config
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError
from test_xencluster_guest_state import FakeDom0
from test_xencluster_runner_migrate import INFO
from test_xencluster_runner_migrate import RAW
from test_xencluster_runner_migrate import REPORT
from test_xencluster_runner_migrate import Bus
from test_xencluster_runner_migrate import node_links
from test_xencluster_runner_migrate import recorded_info
from test_xencluster_runner_recover import define
from test_xencluster_runner_recover import three_nodes

from saltext.xencluster.modules import xencluster_md as md_mod
from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl_mod
from saltext.xencluster.runners import xencluster as runner
from saltext.xencluster.states import xencluster_leg as leg_state

MD_REC = pathlib.Path(__file__).resolve().parents[1] / "recordings" / "md"
DEGRADED, ATTACH, STATE = runner.DEGRADED_FUN, runner.ATTACH_FUN, runner.STATE_SINGLE_FUN
MD_FUNS = (runner.MD_FUN, runner.RE_ADD_FUN, runner.REMOVE_LEG_FUN)
BLKDEV = runner.BLKDEV_FUN
LEGS_KEY = "xencluster_leg_|-xencluster-legs_|-xencluster-legs_|-node_legs"
BLOCK_HEAD = "Vdev  BE  handle state evt-ch ring-ref BE-path                       "
WEB1_CFG_DISKS = {"xvda": "/dev/xencluster/web1.root.node1", "xvdb": "/dev/xencluster/web1.root.node2",
                  "xvdc": "/dev/xencluster/web1.data.node1", "xvdd": "/dev/xencluster/web1.data.node2"}  # fmt: skip


# --- node2: a dom0 whose guests have disks --------------------------------------------------------


class Dom0(FakeDom0):
    """The SYNTHETIC node2: FakeDom0 plus each domain's disks (``xl list -l <guest>``, block-list, block-attach)."""

    def __init__(self):
        super().__init__([])
        self.disks = {}  # domain -> {vdev: target}
        self.attached = []  # (domain, vdev, target) of each xl block-attach
        self.on_attach = []  # callables(domain, vdev) run after an attach (the guest sees the device)

    def add(self, name, state="blocked", dtype="pvh", disks=None):
        super().add(name, state, dtype)
        self.disks[name] = dict(disks or {})

    def _list_long_one(self, name):
        dom = self.domains[name]
        disks = [{"pdev_path": target, "vdev": vdev, "format": "raw", "readwrite": 1}
                 for vdev, target in sorted(self.disks[name].items())]  # fmt: skip
        return json.dumps([{"domid": dom["domid"], "config": {"c_info": {"type": dom["type"], "name": name},
                                                                "disks": disks}}])  # fmt: skip

    def _block_list(self, name):
        dom = self.domains[name]
        rows = [f"{xl_mod.vdev_number(v)} 0   {dom['domid']}      4     8      8        "
                f"/local/domain/0/backend/vbd/{dom['domid']}/{xl_mod.vdev_number(v)}" for v in sorted(self.disks[name])]
        return "\n".join([BLOCK_HEAD, *rows]) + "\n"

    def __call__(self, argv, python_shell=None, **kwargs):
        known = argv[:3] == ["xl", "list", "-l"] and len(argv) == 4 or argv[1:2] in (["block-list"], ["block-attach"])
        if not known or argv[1] in self.fail:
            return super().__call__(argv, python_shell=python_shell, **kwargs)
        assert python_shell is False
        self.calls.append(list(argv))
        name = argv[-1] if argv[1] != "block-attach" else argv[2]
        if name not in self.domains:
            return {"retcode": 1, "stdout": "", "stderr": f"libxl: domain {name} not found\n", "pid": 1}
        if argv[1] == "list":
            return {"retcode": 0, "stdout": self._list_long_one(name), "stderr": "", "pid": 1}
        if argv[1] == "block-list":
            return {"retcode": 0, "stdout": self._block_list(name), "stderr": "", "pid": 1}
        fields = runner._spec_fields(argv[3])
        self.disks[name][fields["vdev"]] = fields["target"]
        self.attached.append((name, fields["vdev"], fields["target"]))
        for hook in self.on_attach:
            hook(name, fields["vdev"])
        return {"retcode": 0, "stdout": "", "stderr": "", "pid": 1}


# --- the guest minions: the real xencluster_md over renamed recordings ------------------------------


class Guest:
    """A SYNTHETIC guest minion: its arrays are md recordings, renamed; mdadm's answers change them as md would."""

    def __init__(self, name, arrays, devices):
        self.name = name
        self.arrays = arrays  # kernel md name -> {"rec", "names", "then": [recordings after the re-add]}
        self.devices = set(devices)  # what file.is_blkdev sees
        self.calls = []
        self.readd_refused = False
        self.polls = 0

    def text(self, md, command):
        spec = self.arrays[md]
        text = (MD_REC / spec["rec"] / f"{command}.out").read_text()
        for old, new in spec["names"].items():
            text = text.replace(old, new)
        return text

    def mdstat(self):
        blocks = []
        for md in sorted(self.arrays, reverse=True):  # newest first, as the kernel lists them
            lines = self.text(md, "mdstat").splitlines()
            start = next(i for i, line in enumerate(lines) if line.startswith(f"{md} :"))
            end = next(i for i in range(start, len(lines)) if not lines[i].strip())
            blocks.append("\n".join(lines[start:end]))
        head = (MD_REC / "lab-node2-clean" / "mdstat.out").read_text().splitlines()[0]
        return "\n".join([head, *blocks, "", "unused devices: <none>", ""])

    def show(self, md, recording):
        self.arrays[md]["rec"] = recording

    def poll(self):
        """One status publish of the runner: each array in a resync shows its next recording."""
        self.polls += 1
        for spec in self.arrays.values():
            if spec.get("resyncing") and spec["then"]:
                spec["rec"] = spec["then"].pop(0)

    def md_of(self, path):
        return path.rsplit("/", 1)[-1]

    def __call__(self, argv, python_shell=None, **kwargs):
        assert isinstance(argv, list) and python_shell is False, argv
        self.calls.append(list(argv))
        if argv[:3] == md_mod.DETAIL_EXPORT:
            return {"retcode": 0, "stdout": self.text(self.md_of(argv[3]), "detail_export.mdrec"), "stderr": ""}
        assert argv[:2] == ["mdadm", "--manage"], argv
        md, op, device = self.md_of(argv[2]), argv[3], argv[4]
        if op == "--remove":
            self.show(md, "lab-node2-degraded")
            return {"retcode": 0, "stdout": "", "stderr": f"mdadm: hot removed {device} from {argv[2]}\n"}
        if op == "--re-add" and self.readd_refused:
            # mdadm 4.2's stderr on lab node2 (test_xencluster_md_module.py READD_REFUSED)
            stderr = f"mdadm: --re-add for {device} to {argv[2]} is not possible\n"
            return {"retcode": 1, "stdout": "", "stderr": stderr}
        assert op in ("--re-add", "--add"), argv
        self.show(md, "lab-node2-bitmap-recovery" if op == "--re-add" else "lab-node2-full-recovery")
        self.arrays[md]["resyncing"] = True
        return {"retcode": 0, "stdout": "", "stderr": f"mdadm: re-added {device}\n"}


def renames(returning, partner, md="md127"):
    """The recorded names -> the guest's: dm-1 (the leg that left) and dm-0, md127."""
    return {"dm-1": returning, "dm_1": returning, "dm-0": partner, "dm_0": partner, "md127": md}


RESYNC_THEN = ["lab-node2-bitmap-recovery-later", "lab-node2-clean"]


def web1_degraded():
    """web1 started by recover on node2: root md127 and data md126 each on its node2 leg only."""
    return Guest("web1", {
        "md127": {"rec": "lab-node2-degraded", "names": renames("xvda", "xvdb"), "then": list(RESYNC_THEN)},
        "md126": {"rec": "lab-node2-degraded", "names": renames("xvdc", "xvdd", "md126"), "then": list(RESYNC_THEN)},
    }, devices={"/dev/xvdb", "/dev/xvdd"})  # fmt: skip


def db1_faulty():
    """db1 ran on through node1's absence: node1's leg xvda still attached, md marked it faulty."""
    return Guest("db1", {"md127": {"rec": "lab-node2-leg1-faulty", "names": renames("xvda", "xvdb"),
                                   "then": list(RESYNC_THEN)}}, devices={"/dev/xvda", "/dev/xvdb"})  # fmt: skip


# --- the cluster -----------------------------------------------------------------------------------


def legs_answer(node, actions=(), test=False, errors=()):
    """``state.single xencluster_leg.node_legs``'s answer, as ``_converge`` shapes it (SYNTHETIC actions)."""
    lines = [f"{node}: 3 owned and 3 imported leg(s)"]
    if not actions:
        lines.append("converged: nothing to do" if not errors else "nothing to apply; not converged:")
    lines += [f"would {leg_state.describe(a)}" if test else leg_state.describe(a) for a in actions]
    lines += [f"error: {e}" for e in errors]
    result = False if errors else (None if test and actions else True)
    changes = {"actions": list(actions)} if actions else {}
    state = {"name": "xencluster-legs", "result": result, "comment": "\n".join(lines), "changes": changes,
             "__id__": "xencluster-legs", "__run_num__": 0}  # fmt: skip
    return {"ret": {LEGS_KEY: state}, "retcode": 2 if errors else 0, "jid": "1"}


LOGIN_WEB1 = {"op": "login", "leg": "web1.root.node1", "target": "iqn.2025-01.lab.xen:web1.root.node1",
              "portal": "192.168.100.1:3260"}  # fmt: skip


class Cluster:
    """LocalClient.cmd of the cluster: node1 (no domain), node2 (``Dom0``), the guest minions."""

    def __init__(self, raw, dom0, guests):
        self.raw, self.dom0 = raw, dom0
        self.model = model_mod.validate(copy.deepcopy(raw))
        self.guests = {g.name: g for g in guests}
        self.keys = set(self.guests) | {spec["minion"] for spec in self.model["nodes"].values()}
        self.silent = set()  # minions that never answer
        self.others = {"node1": {}}  # minion -> fixed domains
        self.links = {n: node_links(self.model, n) for n in self.model["nodes"]}
        self.legs = {}  # minion -> legs_answer kwargs
        self.calls = []

    def __call__(self, tgt, fun, *args, **kwargs):
        assert kwargs["tgt_type"] == "list" and kwargs["full_return"] is True
        assert set(tgt) <= self.keys, f"published to a minion without a key: {tgt}"
        self.calls.append((list(tgt), fun, copy.deepcopy(args), copy.deepcopy(kwargs)))
        return {m: self.answer(m, fun, args, kwargs) for m in tgt if m not in self.silent}

    def answer(self, minion, fun, args, kwargs):
        if fun == [REPORT, INFO]:
            domains = self.others[minion] if minion in self.others else self.dom0_call(xl_mod.list_domains)
            if isinstance(domains, dict) and "ret" in domains:
                domains = domains["ret"] if domains["retcode"] == 0 else {"error": domains["ret"]}
            report = {"domains": domains, "lvm": {}, "lio": {}, "sessions": [], "links": self.links[minion],
                      "configs": []}  # fmt: skip
            return {"ret": {REPORT: report, INFO: recorded_info()}, "retcode": {REPORT: 0, INFO: 0}, "jid": "1"}
        if fun == STATE:
            assert args == (["xencluster_leg.node_legs"],) and kwargs["kwarg"]["name"] == "xencluster-legs"
            return legs_answer(minion, test=kwargs["kwarg"]["test"], **self.legs.get(minion, {}))
        if minion in self.guests:
            return self.guest_call(self.guests[minion], fun, args, kwargs)
        assert minion == "node2", (minion, fun)
        call = {DEGRADED: xl_mod.create_degraded, ATTACH: xl_mod.block_attach}[fun]
        return self.dom0_call(call, *args[0], **kwargs.get("kwarg", {}))

    def dom0_call(self, call, *args, **kwargs):
        try:  # as a minion answers: an exception becomes "ERROR: ..." with retcode 1
            return {"ret": call(*args, **kwargs), "retcode": 0}
        except (SaltInvocationError, CommandExecutionError) as exc:
            return {"ret": f"ERROR: {exc}", "retcode": 1}

    def guest_call(self, guest, fun, args, kwargs):
        if fun == BLKDEV:
            return {"ret": args[0][0] in guest.devices, "retcode": 0}
        self.current = guest
        if fun == runner.MD_FUN:
            guest.poll()
            return self.dom0_call(md_mod.status)
        call = {runner.RE_ADD_FUN: md_mod.re_add, runner.REMOVE_LEG_FUN: md_mod.remove_leg}[fun]
        return self.dom0_call(call, *args[0], **kwargs.get("kwarg", {}))

    def funs(self, *only):
        return [fun for _tgt, fun, _a, _k in self.calls if not only or fun in only]

    def run_all(self, argv, python_shell=None, **kwargs):
        """cmd.run_all of the guest minion being called."""
        return self.current(argv, python_shell=python_shell, **kwargs)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def context():
    return {}


@pytest.fixture
def jid_event():
    return MagicMock()


@pytest.fixture
def dom0():
    node2 = Dom0()
    node2.add("db1", "blocked", disks={"xvda": "/dev/xencluster/db1.root.node1",
                                       "xvdb": "/dev/xencluster/db1.root.node2"})  # fmt: skip
    node2.add("web1", "running", disks={"xvdb": WEB1_CFG_DISKS["xvdb"], "xvdd": WEB1_CFG_DISKS["xvdd"]})
    return node2


@pytest.fixture
def opts(tmp_path):
    return dict(salt.config.DEFAULT_MASTER_OPTS, conf_file="/etc/salt/master", sock_dir=str(tmp_path / "sock"),
                cachedir=str(tmp_path / "cache"))  # fmt: skip


@pytest.fixture
def guests():
    return [web1_degraded(), db1_faulty()]


@pytest.fixture
def runs_on():
    """The cluster of the test (set by the ``cluster`` fixture): cmd.run_all of the guest being called."""
    holder = {}

    def run_all(argv, python_shell=None, **kwargs):
        return holder["cluster"].run_all(argv, python_shell=python_shell, **kwargs)

    run_all.holder = holder
    return run_all


@pytest.fixture
def configure_loader_modules(context, jid_event, opts, dom0, runs_on):
    return {
        runner: {"__opts__": opts, "__context__": context, "__jid_event__": jid_event},
        xl_mod: {"__salt__": {"cmd.run_all": dom0}},
        md_mod: {"__salt__": {"cmd.run_all": runs_on}},
    }


@pytest.fixture
def bus(monkeypatch):
    bus = Bus()
    monkeypatch.setattr(runner.salt.utils.event, "get_master_event", bus)
    return bus


class Clock:
    """The runner's clock: ``_pause`` moves it on, nothing sleeps."""

    def __init__(self):
        self.now, self.pauses = 1000.0, []

    def pause(self, seconds):
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runner, "_clock", lambda: clock.now)
    monkeypatch.setattr(runner, "_pause", clock.pause)
    return clock


@pytest.fixture
def cfg_dir(tmp_path, monkeypatch):
    """node2's /etc/xen/xencluster (the guest state's configs)."""
    path = tmp_path / "etc-xen-xencluster"
    path.mkdir()
    monkeypatch.setattr(runner, "GUEST_CONFIG_DIR", str(path))
    return path


def make_cluster(monkeypatch, raw, dom0, guests, cfg_dir, runs_on):
    """The model ``raw`` as the master reads it, every guest defined on node2, LocalClient answering."""
    cluster = Cluster(raw, dom0, guests)
    runs_on.holder["cluster"] = cluster
    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=cluster)))
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node2", copy.deepcopy(raw)))
    monkeypatch.setattr(runner, "_validate", lambda r: model_mod.validate(copy.deepcopy(r)))
    monkeypatch.setattr(runner, "_accepted", lambda minions: set(minions) & cluster.keys)
    # node2's stable paths are block devices (xencluster_xl.block_attach checks)
    monkeypatch.setattr(xl_mod, "_is_block_device", lambda path: any(
        link["path"] == path for link in cluster.links["node2"].values()))
    monkeypatch.setattr(md_mod, "_read_mdstat", lambda: cluster.current.mdstat())
    monkeypatch.setattr(md_mod, "_real", lambda path: path)
    for guest, spec in cluster.model["guests"].items():
        if "node2" in spec["nodes"]:
            define(cfg_dir, raw, guest)
    return cluster


@pytest.fixture
def cluster(monkeypatch, dom0, guests, cfg_dir, runs_on, bus, clock):
    cluster = make_cluster(monkeypatch, RAW, dom0, guests, cfg_dir, runs_on)
    runner._set_drained("node1", True)  # recover drained it
    return cluster


def restore(**kwargs):
    kwargs.setdefault("check_timeout", 7)
    return runner.restore("node1", **kwargs)


def by_guest(result):
    return {entry["guest"]: entry for entry in result["guests"]}


def progress(jid_event):
    return [c.args[0]["message"] for c in jid_event.fire_event.call_args_list]


def result_guest_calls(cluster, guest):
    """What the runner asked a guest minion (its publishes)."""
    return [fun for tgt, fun, _a, _k in cluster.calls if tgt == [guest]]


def guest_calls(guest):
    return [" ".join(argv[1:]) for argv in guest.calls if argv[1] == "--manage"]


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"dry_run": "yes"}, "dry_run must be True or False: 'yes'"),
        ({"undrain": 1}, "undrain must be True or False: 1"),
        ({"allow_full_resync": "True"}, "allow_full_resync must be True or False: 'True'"),
        ({"timeout": 0}, "timeout must be a whole number of seconds from 1 to 3600: 0"),
        ({"check_timeout": 601}, "check_timeout must be a whole number of seconds from 1 to 600: 601"),
        ({"resync_timeout": True}, "resync_timeout must be a whole number of seconds from 1 to 604800: True"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_before_anything_is_published(cluster, bus, context, kwargs, why):
    result = restore(**kwargs)
    assert (result["result"], result["retcode"], result["guests"], context["retcode"]) == (False, 1, [], 1)
    assert result["message"] == f"not restoring node1: {why}"
    assert cluster.calls == [] and bus.events == [] and runner._drained() == ["node1"]
    json.dumps(result)


@pytest.mark.parametrize("node, why", [
    ("node9", "no node node9 in the model (pillar of node2; nodes: node1, node2)"),
    ("../etc", "invalid node name '../etc'"),
    ("Node1", "invalid node name 'Node1'"),
])  # fmt: skip
def test_an_unknown_or_invalid_node(cluster, context, node, why):
    result = runner.restore(node)
    assert result["message"].startswith(f"not restoring {node}: {why}") and result["retcode"] == 1
    assert cluster.calls == [] and context["retcode"] == 1


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_node_must_answer(cluster, bus, context, jid_event, dry_run):
    cluster.silent.add("node1")
    result = restore(dry_run=dry_run)
    [(tgt, fun, args, kwargs)] = cluster.calls  # ONE publish: the round to every node
    assert (tgt, fun, args, kwargs["timeout"]) == (["node1", "node2"], [REPORT, INFO], ([[], []],), 7)
    verb = "would not restore" if dry_run else "not restoring"
    assert result["message"] == f"{verb} node1: node1 did not answer: boot it and let its minion connect first"
    assert (result["result"], result["retcode"], context["retcode"]) == (False, 1, 1)
    assert runner._drained() == ["node1"] and xl_mod.block_list("web1")[0]["vdev"] == "xvdb"
    # a real run that published says it ended; a dry run fires nothing
    assert bus.tags() == ([] if dry_run else ["xencluster/restore/node1/finished"])
    assert progress(jid_event) == ([] if dry_run else [result["message"]])


def test_every_node_must_tell_its_domains(cluster):
    cluster.dom0.fail["list"] = "libxl: error: cannot connect to xenstore"
    result = restore()
    assert result["message"].startswith("not restoring node1: every node must tell its domains, so that where each "
                                        "guest runs is known: node2: cannot read domains: ")  # fmt: skip
    assert cluster.funs() == [[REPORT, INFO]] and result["retcode"] == 1


def test_a_double_run_anywhere_refuses_with_exit_2(monkeypatch, dom0, guests, cfg_dir, runs_on, bus, clock, context,
                                                   caplog):  # fmt: skip
    cluster = make_cluster(monkeypatch, three_nodes(), dom0, guests, cfg_dir, runs_on)
    cluster.others["node3"] = {"db1": {"domid": 9, "type": "pvh", "memory": 128 << 20, "vcpus": 1, "state": "running"}}
    result = restore()
    assert (result["result"], result["retcode"], context["retcode"]) == (False, 2, 2)
    assert result["message"] == ("not restoring node1: ECLUSTERDOUBLERUN: DOUBLE RUN of db1 on node2 and node3: "
                                 "nothing is restored (salt-run xencluster.verify)")  # fmt: skip
    assert cluster.funs() == [[REPORT, INFO]] and dom0.attached == [] and "DOUBLE RUN" in caplog.text


# --- the real run: legs, attach, re-add, resync, undrain ------------------------------------------


def test_the_degraded_start_gets_its_disks_attached_then_re_added(cluster, dom0, guests, context):
    web1, db1 = guests
    result = restore(timeout=90)
    # the legs state on node1 first, then on its partner node2
    states = [c for c in cluster.calls if c[1] == STATE]
    assert [(c[0], c[3]["kwarg"], c[3]["timeout"]) for c in states] == [
        (["node1"], {"name": "xencluster-legs", "import_wait": 60, "test": False}, 90),
        (["node2"], {"name": "xencluster-legs", "import_wait": 60, "test": False}, 90)]  # fmt: skip
    # the vdevs come from node2's config of web1 (the guest state's file), node1's legs only
    assert dom0.attached == [("web1", "xvda", WEB1_CFG_DISKS["xvda"]), ("web1", "xvdc", WEB1_CFG_DISKS["xvdc"])]
    assert ["xl", "block-attach", "web1", f"format=raw,vdev=xvda,access=rw,target={WEB1_CFG_DISKS['xvda']}"] in \
        dom0.calls  # fmt: skip
    # disk by disk in the model's order: root (xvda into md127), then data (xvdc into md126)
    assert guest_calls(web1) == ["--manage /dev/md127 --re-add /dev/xvda", "--manage /dev/md126 --re-add /dev/xvdc"]
    entry = by_guest(result)["web1"]
    assert (entry["outcome"], entry["on"]) == ("in_sync", "node2")
    legs = {leg["leg"]: leg for leg in entry["legs"]}
    assert (legs["web1.root.node1"]["vdev"], legs["web1.root.node1"]["attach"]) == ("xvda", "attached")
    assert legs["web1.root.node1"]["partner_vdev"] == "xvdb"
    assert legs["web1.data.node1"]["members"] == [{"array": "/dev/md126", "device": "/dev/xvdc", "state": None,
                                                   "bitmap": "internal", "action": "re-add", "method": "re-add"}]
    assert set(entry["arrays"]) == {"/dev/md126", "/dev/md127"}
    assert all(rec["clean"] and rec["method"] == "re-add" for rec in entry["arrays"].values())
    assert (result["result"], result["retcode"], result["undrained"], result["drained"]) == (True, 0, True, False)
    assert runner._drained() == [] and context == {}
    assert result["in_sync"] == ["db1", "web1"] and result["unsettled"] == [] and result["next"] == []
    assert result["message"] == "restoring node1: 2 in sync (db1, web1); node1 undrained: it takes guests again"
    json.dumps(result)


def test_the_kept_disk_is_only_re_added(cluster, dom0, guests):
    _web1, db1 = guests
    result = restore()
    entry = by_guest(result)["db1"]
    assert [leg["attach"] for leg in entry["legs"]] == ["kept"]
    assert not [a for a in dom0.attached if a[0] == "db1"]
    # md had marked it faulty: removed first, then re-added (a bitmap resync)
    assert guest_calls(db1) == ["--manage /dev/md127 --remove /dev/xvda", "--manage /dev/md127 --re-add /dev/xvda"]
    [member] = entry["legs"][0]["members"]
    assert (member["state"], member["action"], member["method"]) == ("faulty", "remove, re-add", "re-add")
    assert entry["outcome"] == "in_sync" and entry["arrays"]["/dev/md127"]["clean"] is True


def test_the_resync_is_followed_to_clean_with_events(cluster, guests, bus, jid_event, clock):
    web1, db1 = guests
    result = restore()
    resync = [(tag, data) for tag, data in bus.events if tag.endswith("/resync")]
    # one status publish per poll to the guests still resyncing: recovery, recovery later, clean
    tags = ["xencluster/restore/node1/db1/resync", "xencluster/restore/node1/web1/resync"]
    assert [tag for tag, _d in resync] == tags * 2
    polls = [c for c in cluster.calls if c[1] == runner.MD_FUN and len(c[0]) == 2]
    assert [c[0] for c in polls] == [["db1", "web1"], ["db1", "web1"]]
    first, last = resync[0][1], resync[2][1]
    assert first["arrays"]["/dev/md127"]["sync"]["percent"] == 5.0 and first["clean"] is False
    assert first["arrays"]["/dev/md127"]["state"] == "active, degraded, recovering"
    assert last["clean"] is True and last["arrays"]["/dev/md127"] == {"state": "active", "sync": None, "clean": True}
    assert clock.pauses == [5]  # one poll interval between the two polls
    assert bus.tags()[0] == "xencluster/restore/node1/started" and bus.tags()[-1] == "xencluster/restore/node1/finished"
    assert bus.events[0][1] == {"node": "node1", "guests": ["db1", "web1"], "partners": ["node2"]}
    assert bus.events[-1][1] == result
    entry = by_guest(result)["db1"]
    rec = entry["arrays"]["/dev/md127"]
    assert rec["first_sync"]["percent"] == 5.0 and rec["last_sync"]["percent"] == 5.0
    assert entry["duration_s"] == rec["duration_s"] == 5.0
    assert entry["message"] == ("db1: /dev/md127 in sync in 5.0 s (bitmap resync), seen from 5.0% to 5.0% of 261120 "
                                "KiB")  # fmt: skip
    lines = progress(jid_event)
    assert "db1: /dev/md127 recovery 5.0% (13696/261120 KiB at 1245 KiB/s, ~198 s left) (0.0 s)" in lines
    assert "web1: /dev/xvda back in /dev/md127: a bitmap resync" in lines
    assert "web1: /dev/xencluster/web1.root.node1 attached at xvda on node2" in lines
    assert lines[-1] == result["message"]


def test_a_resync_that_outlasts_the_timeout_keeps_the_node_drained(cluster, guests, clock, context, bus):
    for guest in guests:
        for spec in guest.arrays.values():
            spec["then"] = ["lab-node2-bitmap-recovery-later"] * 100  # it never ends
    result = restore(resync_timeout=12)
    assert [e["outcome"] for e in result["guests"]] == ["resyncing", "resyncing"]
    assert clock.pauses == [5, 5, 2]  # bounded by resync_timeout, not one poll more
    assert (result["result"], result["retcode"], result["undrained"], context["retcode"]) == (False, 1, False, 1)
    assert runner._drained() == ["node1"] and result["unsettled"] == ["db1", "web1"]
    assert by_guest(result)["db1"]["message"] == ("db1: still resyncing after 12 s: /dev/md127 recovery 5.0% "
                                                  "(13696/261120 KiB at 1245 KiB/s, ~198 s left)")  # fmt: skip
    assert result["message"] == ("restoring node1: 2 resyncing (db1, web1); node1 stays drained: db1 resyncing; "
                                 "web1 resyncing")  # fmt: skip
    assert result["next"][0].startswith("wait for db1's resync, then run salt-run xencluster.restore node1 again")


def test_a_silent_guest_minion_is_reported_and_keeps_the_node_drained(cluster, dom0, guests, context):
    web1, db1 = guests
    cluster.silent.add("web1")
    result = restore()
    entry = by_guest(result)["web1"]
    assert entry["outcome"] == "silent" and entry["message"] == "guest minion web1 did not answer: nothing done"
    assert dom0.attached == [] and web1.calls == []  # nothing attached to a guest nobody can re-add in
    assert by_guest(result)["db1"]["outcome"] == "in_sync" and guest_calls(db1)  # the others go on
    assert (result["retcode"], result["undrained"], runner._drained()) == (1, False, ["node1"])
    assert result["message"].endswith("node1 stays drained: web1 silent")
    assert result["next"] == ["once web1's minion answers with xencluster_md.status, run salt-run xencluster.restore "
                              "node1 again (it does only what is missing)"]  # fmt: skip


def test_a_guest_minion_without_a_key_is_not_published_to(cluster, dom0):
    cluster.keys.discard("web1")  # Cluster asserts every publish goes to a minion with a key
    result = restore()
    assert by_guest(result)["web1"]["message"] == "guest minion web1 has no accepted key: nothing done"
    assert result["retcode"] == 1 and dom0.attached == []


def test_undrain_false_leaves_the_node_drained_and_still_exits_0(cluster, context):
    result = restore(undrain=False)
    assert (result["retcode"], result["undrained"], result["drained"], runner._drained()) == (0, False, True, ["node1"])
    assert result["message"].endswith("node1 is left drained (undrain=False): salt-run xencluster.undrain node1 when "
                                      "it may take guests")  # fmt: skip
    assert context == {}


def test_a_drained_mark_that_cannot_be_cleared_fails_the_run(cluster, monkeypatch, context):
    def broken(node, flag):
        raise runner.SaltCacheError("permission denied")

    monkeypatch.setattr(runner, "_set_drained", broken)
    result = restore()
    assert result["in_sync"] == ["db1", "web1"] and (result["retcode"], context["retcode"]) == (1, 1)
    assert result["message"].endswith("; node1 stays drained: the mark cannot be cleared: permission denied")
    assert result["next"] == ["salt-run xencluster.undrain node1"] and result["drained"] is True


def test_a_node_that_was_not_drained_and_is_not_restored(cluster, dom0):
    runner._set_drained("node1", False)
    cluster.silent.add("db1")
    result = restore()
    assert result["message"].endswith("; node1 is not drained, but it is not restored either: db1 silent")
    assert result["retcode"] == 1


def test_a_node_that_was_not_drained(cluster):
    runner._set_drained("node1", False)
    result = restore()
    assert (result["retcode"], result["undrained"], result["drained"]) == (0, False, False)
    assert result["message"].endswith("; node1 was not drained")


def test_a_second_run_finds_everything_in_place(cluster, dom0, guests):
    assert restore()["retcode"] == 0
    attached, calls = list(dom0.attached), [list(g.calls) for g in guests]
    runner._set_drained("node1", True)
    result = restore()
    assert result["in_sync"] == ["db1", "web1"] and result["retcode"] == 0 and runner._drained() == []
    assert dom0.attached == attached  # nothing attached again
    assert [guest_calls(g) for g in guests] == [[" ".join(a[1:]) for a in c if a[1] == "--manage"] for c in calls]
    assert [leg["attach"] for leg in by_guest(result)["web1"]["legs"]] == ["kept", "kept"]


# --- failures inside a guest -----------------------------------------------------------------------


def test_a_refused_re_add_is_never_a_silent_full_resync(cluster, guests, context):
    _web1, db1 = guests
    db1.readd_refused = True
    result = restore()
    entry = by_guest(result)["db1"]
    assert entry["outcome"] == "failed" and "--add" not in " ".join(guest_calls(db1))
    assert entry["message"].startswith("db1: re-adding /dev/xvda to /dev/md127 failed: db1: xencluster_md.re_add "
                                       "failed: ERROR: mdadm --re-add of /dev/xvda to /dev/md127 refused: mdadm: "
                                       "--re-add for /dev/xvda to /dev/md127 is not possible -- not falling back to "
                                       "--add (a FULL resync of /dev/xvda); pass allow_full_resync=True")  # fmt: skip
    assert by_guest(result)["web1"]["outcome"] == "in_sync"
    assert result["retcode"] == 1 and runner._drained() == ["node1"]


def test_allow_full_resync_is_passed_on_and_said(cluster, guests):
    _web1, db1 = guests
    db1.readd_refused = True
    db1.arrays["md127"]["then"] = ["lab-node2-clean"]
    result = restore(allow_full_resync=True)
    assert guest_calls(db1)[-2:] == ["--manage /dev/md127 --re-add /dev/xvda", "--manage /dev/md127 --add /dev/xvda"]
    re_adds = [c for c in cluster.calls if c[1] == runner.RE_ADD_FUN]
    assert all(c[3]["kwarg"] == {"allow_full_resync": True} for c in re_adds)
    entry = by_guest(result)["db1"]
    assert entry["arrays"]["/dev/md127"]["method"] == "add" and "(FULL resync)" in entry["message"]
    assert result["retcode"] == 0


def test_a_device_that_does_not_show_up_in_the_guest_fails_it(cluster, dom0, guests, clock):
    web1, _db1 = guests
    dom0.on_attach.clear()  # the attached disks never appear inside web1
    result = restore(check_timeout=3)
    entry = by_guest(result)["web1"]
    assert entry["outcome"] == "failed"
    assert entry["message"] == ("web1: /dev/xvda, /dev/xvdc did not show up in web1 (file.is_blkdev) within 3 s of the "
                                "attach")  # fmt: skip
    assert guest_calls(web1) == [] and result["retcode"] == 1
    assert clock.pauses[:3] == [1, 1, 1]


@pytest.fixture(autouse=True)
def hotplug(dom0, guests):
    """What the guest sees after xl block-attach: the device shows up (a test may clear the hook)."""
    by_name = {g.name: g for g in guests}
    dom0.on_attach.append(lambda domain, vdev: by_name[domain].devices.add(f"/dev/{vdev}"))


def test_a_device_that_shows_up_late_is_waited_for(cluster, dom0, guests, clock):
    web1, _db1 = guests
    dom0.on_attach.clear()
    seen = {"n": 0}

    def is_there_on_the_second_look(argv):
        seen["n"] += 1
        return seen["n"] > 1

    original = cluster.guest_call

    def guest_call(guest, fun, args, kwargs):
        if fun == BLKDEV and guest is web1:
            return {"ret": is_there_on_the_second_look(args), "retcode": 0}
        return original(guest, fun, args, kwargs)

    cluster.guest_call = guest_call
    result = restore()
    assert by_guest(result)["web1"]["outcome"] == "in_sync" and clock.pauses[0] == 1


# --- checks of a guest before anything changes -------------------------------------------------------


def test_a_returning_path_still_missing_after_the_legs_state_refuses_that_guest(cluster, dom0, guests):
    del cluster.links["node2"]["web1.data.node1"]
    cluster.legs["node2"] = {"errors": ["web1.data.node1: log in to ...: iscsiadm: connection refused"]}
    result = restore()
    entry = by_guest(result)["web1"]
    assert entry["outcome"] == "refused" and dom0.attached == [] and guests[0].calls == []
    assert entry["message"] == ("not restoring web1's legs: returning leg web1.data.node1 on node2: "
                                "/dev/xencluster/web1.data.node1 is missing")  # fmt: skip
    legs = {s["node"]: s for s in result["legs"]}
    assert legs["node1"]["ok"] is True and legs["node2"]["ok"] is False
    assert legs["node2"]["errors"] == ["web1.data.node1: log in to ...: iscsiadm: connection refused"]
    assert result["message"].endswith("node1 stays drained: the legs state failed on node2; web1 refused")
    assert by_guest(result)["db1"]["outcome"] == "in_sync" and result["retcode"] == 1


def test_the_legs_state_changes_are_reported_per_node(cluster, jid_event):
    cluster.legs["node2"] = {"actions": [LOGIN_WEB1]}
    result = restore()
    legs = {s["node"]: s for s in result["legs"]}
    assert legs["node2"] == {"node": "node2", "minion": "node2", "ok": True, "actions": 1, "errors": [],
                             "lines": ["node2: 3 owned and 3 imported leg(s)", "log in to iqn.2025-01.lab.xen:"
                                       "web1.root.node1 on 192.168.100.1:3260 (node.startup automatic)"]}
    assert ("legs on node2 took 1 action(s): log in to iqn.2025-01.lab.xen:web1.root.node1 on 192.168.100.1:3260 "
            "(node.startup automatic)") in progress(jid_event)
    assert "legs on node1: converged" in progress(jid_event) and result["retcode"] == 0


def test_a_legs_state_that_did_not_run_is_an_error(cluster):
    conflict = ['The function "state.apply" is running as PID 4242 and was started at 2026, Nov 24 with jid 1']
    original = cluster.answer

    def answer(minion, fun, args, kwargs):
        if fun == STATE and minion == "node2":
            return {"ret": conflict, "retcode": 1}
        return original(minion, fun, args, kwargs)

    cluster.answer = answer
    result = restore()
    node2 = next(s for s in result["legs"] if s["node"] == "node2")
    assert node2["ok"] is False and node2["errors"] == [f"node2: xencluster_leg.node_legs did not run: {conflict[0]}"]
    assert result["retcode"] == 1 and runner._drained() == ["node1"]


def test_a_vdev_taken_by_another_disk_refuses_the_guest(cluster, dom0):
    dom0.disks["web1"]["xvda"] = "/dev/xencluster/stray"
    result = restore()
    entry = by_guest(result)["web1"]
    assert entry["outcome"] == "refused" and dom0.attached == []
    assert entry["message"] == ("not restoring web1's legs: web1.root.node1 at xvda of web1: node2: "
                                f"{ATTACH} failed: ERROR: xvda of web1 is taken by /dev/xencluster/stray")  # fmt: skip


def test_an_array_that_lost_the_partner_too_is_refused(cluster, guests):
    web1, _db1 = guests
    web1.arrays["md126"]["names"] = renames("xvdc", "xvdz", "md126")  # md126 holds neither of data's legs
    result = restore()
    assert by_guest(result)["web1"]["message"] == (
        "not restoring web1's legs: no md array of web1 holds /dev/xvdd (web1.data.node2, the other leg of disk data) "
        "active: nothing to put web1.data.node1 back into")  # fmt: skip


def test_a_guest_that_does_not_run_is_listed_and_does_not_block(cluster, dom0, guests):
    del dom0.domains["db1"]
    result = restore()
    entry = by_guest(result)["db1"]
    assert (entry["outcome"], entry["message"]) == ("not_running", "db1 runs nowhere: nothing to re-add (its arrays "
                                                                   "assemble when it starts)")  # fmt: skip
    assert result["not_running"] == ["db1"] and result["in_sync"] == ["web1"] and result["retcode"] == 0
    assert guests[1].calls == [] and result["undrained"] is True


def test_a_crashed_guest_is_not_running(cluster, dom0):
    dom0.domains["db1"]["state"] = "crashed"
    entry = by_guest(restore())["db1"]
    assert entry["message"] == "db1 is crashed on node2: nothing to re-add (its arrays assemble when it starts)"


def test_a_guest_being_migrated_is_refused(cluster, dom0):
    dom0.domains["db1--migratedaway"] = dom0.domains.pop("db1")
    dom0.disks["db1--migratedaway"] = dom0.disks.pop("db1")
    result = restore()
    assert by_guest(result)["db1"]["message"] == ("a migration of db1 is in flight (db1--migratedaway on node2): run "
                                                  "restore again once it has ended")  # fmt: skip
    assert result["retcode"] == 1 and result["unsettled"] == ["db1"]


def test_returning_guests_is_pure():
    model = model_mod.validate(copy.deepcopy(RAW))
    facts = {"node1": {"domains": {}}, "node2": {"domains": {"web1": {"state": "running"},
                                                             "db1--incoming": {"state": "paused"}}}}
    assert runner.returning_guests(model, "node1", facts) == [
        {"guest": "db1", "on": None, "state": None, "moving": ["db1--incoming on node2"]},
        {"guest": "web1", "on": "node2", "state": "running", "moving": []}]  # fmt: skip


def test_no_bitmap_means_a_full_resync_refused_unless_allowed():
    # SYNTHETIC, in xencluster_md.status's shape: an array made with bitmap=none (as lab-node2-two-arrays' md126)
    # after one leg left
    arrays = {"/dev/md126": {"bitmap": "none", "legs": [
        {"device": "/dev/xvdb", "kernel_name": "xvdb", "role": 0, "state": "active"},
        {"device": None, "kernel_name": None, "role": 1, "state": "missing"}]}}  # fmt: skip
    legs = [{"leg": "db1.root.node1", "disk": "root", "vdev": "xvda", "partner": "db1.root.node2",
             "partner_vdev": "xvdb", "members": []}]  # fmt: skip
    assert runner._md_plan("db1", legs, arrays, False) == [
        "/dev/md126 has no write-intent bitmap: putting /dev/xvda back is a FULL resync of the leg; run again with "
        "allow_full_resync=True to do it"]  # fmt: skip
    assert runner._md_plan("db1", legs, arrays, True) == [] and legs[0]["members"][0]["action"] == "re-add"


def test_partitions_of_a_leg_go_back_into_their_own_arrays():
    arrays = {f"/dev/md{n}": {"bitmap": "internal", "legs": [
        {"kernel_name": f"xvdb{n}", "state": "active"}, {"kernel_name": f"xvda{n}", "state": state}]}
        for n, state in ((1, "faulty"), (2, "active"))}  # fmt: skip
    members = runner._array_members({"vdev": "xvda", "partner_vdev": "xvdb"}, arrays)
    assert [(m["array"], m["device"], m["state"]) for m in members] == [
        ("/dev/md1", "/dev/xvda1", "faulty"), ("/dev/md2", "/dev/xvda2", "active")]  # fmt: skip
    # a partner that is not active itself holds nothing to resync from
    arrays["/dev/md2"]["legs"][0]["state"] = "faulty"
    assert [m["array"] for m in runner._array_members({"vdev": "xvda", "partner_vdev": "xvdb"}, arrays)] == ["/dev/md1"]
    # xvdbz is another disk, not a partition of xvdb
    assert runner._array_members({"vdev": "xvda", "partner_vdev": "xvdb"},
                                 {"/dev/md9": {"legs": [{"kernel_name": "xvdbz", "state": "active"}]}}) == []


# --- the dry run -----------------------------------------------------------------------------------


def test_the_dry_run_plans_and_changes_nothing(cluster, dom0, guests, bus, jid_event, context):
    cluster.legs["node2"] = {"actions": [LOGIN_WEB1]}
    web1, db1 = guests
    result = restore(dry_run=True)
    states = [c for c in cluster.calls if c[1] == STATE]
    assert [c[3]["kwarg"]["test"] for c in states] == [True, True]
    assert cluster.funs(ATTACH) and all(c[3]["kwarg"]["dry_run"] is True for c in cluster.calls if c[1] == ATTACH)
    assert cluster.funs(runner.RE_ADD_FUN, runner.REMOVE_LEG_FUN, BLKDEV) == []
    assert dom0.attached == [] and guest_calls(web1) == guest_calls(db1) == []
    assert bus.events == [] and jid_event.fire_event.call_count == 0 and runner._drained() == ["node1"]
    assert cluster.funs().count([REPORT, INFO]) == 1  # no second round in a dry run
    entries = by_guest(result)
    assert entries["web1"]["outcome"] == "would_re_add"
    assert entries["web1"]["message"] == ("web1 on node2: would attach xvda, xvdc; re-add /dev/xvda to /dev/md127; "
                                          "re-add /dev/xvdc to /dev/md126")  # fmt: skip
    assert entries["db1"]["message"] == "db1 on node2: would remove, re-add /dev/xvda to /dev/md127"
    node2 = next(s for s in result["legs"] if s["node"] == "node2")
    assert node2["actions"] == 1 and node2["lines"][1].startswith("would log in to iqn.2025-01.lab.xen:web1.root")
    assert (result["result"], result["retcode"], result["dry_run"], result["undrained"]) == (True, 0, True, False)
    assert result["message"] == "dry run: restoring node1: 2 to re-add (db1, web1); would undrain node1"
    assert context == {}
    json.dumps(result)


def test_the_vdev_comes_from_the_guest_states_config_file(cluster, cfg_dir):
    # a config written with root's node1 leg at xvde: the plan follows the file, not a rendering of the model
    path = cfg_dir / "web1.cfg"
    path.write_text(path.read_text().replace(f"vdev=xvda,access=rw,target={WEB1_CFG_DISKS['xvda']}",
                                             f"vdev=xvde,access=rw,target={WEB1_CFG_DISKS['xvda']}"))
    entry = by_guest(restore(dry_run=True))["web1"]
    assert entry["message"] == ("web1 on node2: would attach xvde, xvdc; re-add /dev/xvde to /dev/md127; re-add "
                                "/dev/xvdc to /dev/md126")  # fmt: skip
    attach = [c for c in cluster.calls if c[1] == ATTACH and c[0] == ["node2"]]
    assert [c[2][0][1:] for c in attach if c[2][0][0] == "web1"] == [[WEB1_CFG_DISKS["xvda"], "xvde"],
                                                                     [WEB1_CFG_DISKS["xvdc"], "xvdc"]]


def test_a_config_without_the_returning_leg_refuses_the_guest(cluster, cfg_dir):
    path = cfg_dir / "web1.cfg"
    path.write_text(path.read_text().replace(f'"format=raw,vdev=xvdc,access=rw,target={WEB1_CFG_DISKS["xvdc"]}", ', ""))
    entry = by_guest(restore())["web1"]
    # (the rest of the line, the disks the file has, may be shortened with the tmp path's length)
    assert entry["outcome"] == "refused" and entry["message"].startswith(
        f"not restoring web1's legs: cannot read the disks of {cfg_dir}/web1.cfg on node2: node2: {DEGRADED} failed: "
        f"ERROR: {cfg_dir}/web1.cfg: no disk is backed by {WEB1_CFG_DISKS['xvdc']}")  # fmt: skip
    assert cluster.dom0.attached == [] and result_guest_calls(cluster, "web1") == []


def test_a_dry_run_notes_a_path_the_legs_state_has_to_bring(cluster, dom0):
    cluster.legs["node2"] = {"actions": [LOGIN_WEB1]}
    del cluster.links["node2"]["web1.root.node1"]
    entry = by_guest(restore(dry_run=True))["web1"]
    assert entry["outcome"] == "would_re_add"
    assert entry["paths"] == ["returning leg web1.root.node1 on node2: /dev/xencluster/web1.root.node1 is missing"]
    assert entry["message"].endswith("once the legs state has brought returning leg web1.root.node1 on node2: "
                                     "/dev/xencluster/web1.root.node1 is missing")  # fmt: skip


def test_a_dry_run_refuses_a_missing_path_nothing_will_bring(cluster):
    del cluster.links["node2"]["web1.root.node1"]
    result = restore(dry_run=True)
    assert by_guest(result)["web1"]["message"] == ("would not restore web1's legs: returning leg web1.root.node1 on "
                                                   "node2: /dev/xencluster/web1.root.node1 is missing")  # fmt: skip
    assert result["retcode"] == 1 and result["message"].endswith("node1 stays drained: web1 refused")


def test_every_function_documented():
    assert "CLI Example:" in runner.restore.__doc__
    for name in ("returning_guests", "_judge_returning", "_follow_resync", "_undrain_verdict", "_legs_back"):
        assert getattr(runner, name).__doc__, name
