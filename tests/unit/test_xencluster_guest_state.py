"""xencluster_guest states: defined, running (the live cluster-wide check), stopped, absent, node_guests.

The execution modules run for real behind the states: ``xencluster_model``
reads a pillar built from pillar/xencluster/lab.sls plus a third node, and
``xencluster_xl`` talks to a SYNTHETIC dom0 (``FakeDom0``: ``xl list -l``,
``xl list``, ``xl create``, ``xl shutdown``, ``xl destroy``, ``xl
sched-credit2``, in the formats of Xen 4.17 that test_xencluster_xl_lifecycle.py
uses). Only ``publish.runner`` (the master) is a fake, answering with what
``xencluster.locate`` returns.

The state runs as minion node1. Model: web1 (pair node1/node2, pinned to
node1), db1 (pair node2/node1, pinned to node2), app1 (pair node2/node3, so
node1 may not run it); the provisioning tests add web2 (``provision``, pinned
to node1, its NIC on the plain bridge xcguests).

``xencluster_lvm.report`` runs for real too: the fake dom0 answers ``pvs`` and
``vgs`` with the recording ``lvm/lab-node1-snapshots`` and ``lvs`` with rows in
that recording's format, renamed to the legs and tagged as a test says
(SYNTHETIC: no host with provisioned legs was recorded).
"""

import copy
import json
import logging
import os
import pathlib
import re
import stat

import pytest
import salt.utils.yaml

from saltext.xencluster.modules import xencluster_lvm as lvm_mod
from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl
from saltext.xencluster.states import xencluster_guest as guest_state

PILLAR = pathlib.Path(__file__).resolve().parent / "data" / "two_node_model.sls"  # frozen lab pillar
NODES = ["node1", "node2", "node3"]
_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
_ROW = "%-40s %5d %5lu %5d     %s  %8.1f"
_FLAGS = {"running": "r-----", "blocked": "-b----", "paused": "--p---", "crashed": "---sc-", "shutdown": "---ss-"}
LVM_REC = pathlib.Path(__file__).resolve().parents[1] / "recordings" / "lvm" / "lab-node1-snapshots"
LV_ROW = next(
    r for r in json.loads((LVM_REC / "lvs.out").read_text())["report"][0]["lv"] if r["lv_name"] == "web1-disk0-a"
)
TAG = "xencluster.provisioned"


def lab_model(extra_guests=0):
    """The lab model, a third node and app1 on node2/node3; ``extra_guests`` more pinned to node1."""
    model = salt.utils.yaml.safe_load(PILLAR.read_text())["xencluster"]
    node3 = copy.deepcopy(model["nodes"]["node2"])
    node3["san"][0]["address"] = "192.168.100.3/24"
    model["nodes"]["node3"] = node3
    model["guests"]["app1"] = {
        "type": "pvh", "node": "node3", "memory": "64M", "kernel": "/vmlinuz",
        "disks": [{"name": "root", "size": "1G", "nodes": ["node2", "node3"], "vg": "xcvg"}],
    }  # fmt: skip
    for i in range(extra_guests):
        model["guests"][f"g{i}"] = {
            "type": "pvh", "node": "node1", "memory": "64M", "kernel": "/vmlinuz",
            "interfaces": [{"vlan": 10, "mac": f"00:16:3e:10:{i // 256:02x}:{i % 256:02x}"}],
            "disks": [{"name": "root", "size": "1G", "nodes": ["node1", "node2"], "vg": "xcvg"}],
        }  # fmt: skip
    return model


class FakeDom0:
    """A SYNTHETIC dom0 behind ``cmd.run_all``: its domains change with create/shutdown/destroy."""

    def __init__(self, events):
        self.domains = {}  # name -> {"domid", "type", "memory" (MiB), "vcpus", "state"}
        self.next_domid = 1
        self.calls = []
        self.events = events
        self.ignores_shutdown = set()
        self.fail = {}  # argv[1] (xl) or argv[0] (LVM) -> stderr
        self.lvs = {}  # LV name in xcvg -> its tags

    def _lvm(self, argv):
        """``pvs``/``vgs`` as recorded, ``lvs`` with one row per LV of ``self.lvs``."""
        if argv[0] in self.fail:
            return {"retcode": 5, "stdout": "", "stderr": self.fail[argv[0]], "pid": 1}
        if argv[0] != "lvs":
            return {"retcode": 0, "stdout": (LVM_REC / f"{argv[0]}.out").read_text(), "stderr": "", "pid": 1}
        rows = [
            dict(LV_ROW, lv_name=name, lv_path=f"/dev/xcvg/{name}", lv_attr="-wi-a-----", origin="",
                 data_percent="", lv_tags=",".join(tags))
            for name, tags in sorted(self.lvs.items())
        ]  # fmt: skip
        return {"retcode": 0, "stdout": json.dumps({"report": [{"lv": rows}]}), "stderr": "", "pid": 1}

    def add(self, name, state="blocked", dtype="pvh"):
        self.domains[name] = {"domid": self.next_domid, "type": dtype, "memory": 128, "vcpus": 1, "state": state}
        self.next_domid += 1

    def _list_long(self):
        return json.dumps([
            {"domid": d["domid"], "config": {
                "c_info": {"type": d["type"], "name": name},
                "b_info": {"max_vcpus": d["vcpus"], "target_memkb": d["memory"] * 1024}}}
            for name, d in self.domains.items()
        ])  # fmt: skip

    def _list(self):
        rows = [_ROW % ("Domain-0", 0, 2048, 2, "r-----", 1.0)]
        rows += [_ROW % (n, d["domid"], d["memory"], d["vcpus"], _FLAGS[d["state"]], 2.0) for n, d in self.domains.items()]
        return "\n".join([_HEADER, *rows]) + "\n"

    def _create(self, path):
        text = pathlib.Path(path).read_text()
        name = re.search(r'^name = "(.*)"$', text, re.M).group(1)
        dtype = re.search(r'^type = "(.*)"$', text, re.M).group(1)
        self.add(name, "running", dtype)

    def __call__(self, argv, python_shell=None, **kwargs):
        assert isinstance(argv, list) and python_shell is False, argv
        self.calls.append(list(argv))
        self.events.append(" ".join(argv[:2]))
        if argv[0] in ("pvs", "vgs", "lvs"):
            assert argv[1:] == getattr(lvm_mod, f"{argv[0].upper()}_ARGV")[1:], argv
            return self._lvm(argv)
        assert argv[0] == "xl", argv
        if argv[1] in self.fail:
            return {"retcode": 1, "stdout": "", "stderr": self.fail[argv[1]]}
        out = ""
        if argv == ["xl", "list", "-l"]:
            out = self._list_long()
        elif argv == ["xl", "list"]:
            out = self._list()
        elif argv[1] == "create":
            self._create(argv[-1])
        elif argv[1] == "shutdown":
            if argv[2] not in self.ignores_shutdown:
                del self.domains[argv[2]]
        elif argv[1] == "destroy":
            del self.domains[argv[2]]
        elif argv[1] == "sched-credit2":
            pass
        else:
            raise AssertionError(f"unexpected command {argv}")
        return {"retcode": 0, "stdout": out, "stderr": "", "pid": 1}

    def tool_calls(self):
        return [" ".join(c) for c in self.calls]

    def lvm_calls(self):
        return [c[0] for c in self.calls if c[0] != "xl"]


class FakePublish:
    """``publish.runner``: the master's ``xencluster.locate``, or a failure."""

    def __init__(self, events):
        self.events = events
        self.calls = []
        self.answer = located()
        self.raises = None

    def __call__(self, fun, arg=None, timeout=5):
        self.calls.append({"fun": fun, "arg": copy.deepcopy(arg), "timeout": timeout})
        self.events.append("publish.runner")
        if self.raises:
            raise self.raises
        return copy.deepcopy(self.answer)


def located(guests=None, double_runs=(), no_answer=(), unavailable=None, errors=None):
    return {
        "guests": guests or {},
        "double_runs": list(double_runs),
        "no_answer": list(no_answer),
        "unavailable": unavailable or {},
        "errors": errors or {},
    }


@pytest.fixture
def events():
    return []


@pytest.fixture
def dom0(events):
    return FakeDom0(events)


@pytest.fixture
def publish(events):
    return FakePublish(events)


@pytest.fixture
def opts():
    return {"test": False, "id": "node1"}


@pytest.fixture
def pillar():
    return {"xencluster": lab_model()}


@pytest.fixture
def context():
    return {}


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    path = tmp_path / "etc-xen-xencluster"
    monkeypatch.setattr(guest_state, "CONFIG_DIR", str(path))
    monkeypatch.setattr(xl, "POLL_INTERVAL", 0.01)
    return path


@pytest.fixture
def configure_loader_modules(dom0, publish, opts, pillar, context, config_dir):
    funcs = {f"xencluster_xl.{f}": getattr(xl, f) for f in
             ("list_domains", "render_config", "create", "shutdown", "destroy", "sched_credit2")}  # fmt: skip
    funcs.update({f"xencluster_model.{f}": getattr(model_mod, f) for f in ("validate", "node_view")})
    funcs["xencluster_lvm.report"] = lvm_mod.report
    funcs["publish.runner"] = publish
    return {
        xl: {"__salt__": {"cmd.run_all": dom0}},
        lvm_mod: {"__salt__": {"cmd.run_all": dom0}},
        model_mod: {"__pillar__": pillar},
        guest_state: {"__salt__": funcs, "__opts__": opts, "__context__": context},
    }


def new_run(context):
    """A new state run: Salt gives each run a fresh __context__."""
    context.clear()


def define(name="web1"):
    ret = guest_state.defined(name)
    assert ret["result"] is True, ret
    return ret


# --- the xl config (pure) ---------------------------------------------------------------


def test_vdev_names():
    assert [guest_state.vdev(i) for i in (0, 1, 25, 26, 27, 51)] == ["xvda", "xvdb", "xvdz", "xvdaa", "xvdab", "xvdaz"]
    assert xl.vdev_number("xvdaa") is not None  # xl knows the extended names


def test_config_from_the_model_has_both_legs_per_disk():
    view = model_mod.node_view("node1", lab_model())
    config = guest_state.guest_config(view["guests"]["web1"], "node1")
    assert config == {
        "name": "web1", "type": "pvh", "memory": 128, "vcpus": 1, "on_crash": "preserve",
        "kernel": "/vmlinuz", "ramdisk": "/srv/domu/probe-initrd.gz", "extra": "console=hvc0",
        "vif": ["mac=00:16:3e:00:01:01,bridge=br-svc10"],
        "disk": [
            "format=raw,vdev=xvda,access=rw,target=/dev/xencluster/web1.root.node1",
            "format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/web1.root.node2",
            "format=raw,vdev=xvdc,access=rw,target=/dev/xencluster/web1.data.node1",
            "format=raw,vdev=xvdd,access=rw,target=/dev/xencluster/web1.data.node2",
        ],
    }  # fmt: skip
    assert "sched" not in config  # applied at start with sched_credit2


def test_config_is_the_same_on_both_nodes_whatever_the_pair_order():
    # db1's pair is written [node2, node1]: the node1 leg still comes first
    model = lab_model()
    on1 = guest_state.guest_config(model_mod.node_view("node1", model)["guests"]["db1"], "node1")
    on2 = guest_state.guest_config(model_mod.node_view("node2", model)["guests"]["db1"], "node2")
    assert on1 == on2
    assert on1["disk"] == [
        "format=raw,vdev=xvda,access=rw,target=/dev/xencluster/db1.root.node1",
        "format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/db1.root.node2",
    ]


def test_bootloader_guest_has_no_kernel():
    model = lab_model()
    g = model["guests"]["web1"]
    for key in ("kernel", "ramdisk", "extra"):
        del g[key]
    g["type"], g["bootloader"] = "pv", "pygrub"
    config = guest_state.guest_config(model_mod.node_view("node1", model)["guests"]["web1"], "node1")
    assert config["bootloader"] == "pygrub" and config["type"] == "pv"
    assert not {"kernel", "ramdisk", "extra"} & set(config)


# --- defined -------------------------------------------------------------------------------


def test_defined_writes_0600_then_is_idempotent(config_dir, dom0, publish):
    ret = guest_state.defined("web1")
    path = config_dir / "web1.cfg"
    assert ret["result"] is True and ret["changes"]["diff"].startswith("--- /dev/null\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith('name = "web1"\n')
    assert 'on_crash = "preserve"\n' in text
    assert 'disk = [ "format=raw,vdev=xvda,access=rw,target=/dev/xencluster/web1.root.node1", ' in text
    again = guest_state.defined("web1")
    assert again == {"name": "web1", "result": True, "changes": {}, "comment": f"{path} is up to date"}
    assert dom0.calls == [] and publish.calls == []  # defined reads no tool and asks nobody


def test_defined_test_mode_shows_the_diff_and_writes_nothing(config_dir, opts, pillar, context):
    define()
    path = config_dir / "web1.cfg"
    before = path.read_text()
    pillar["xencluster"]["guests"]["web1"]["memory"] = "256M"
    new_run(context)  # the model is read once per run
    opts["test"] = True
    ret = guest_state.defined("web1")
    assert ret["result"] is None
    assert "-memory = 128\n+memory = 256\n" in ret["changes"]["diff"]
    assert path.read_text() == before
    opts["test"] = False
    new_run(context)
    applied = guest_state.defined("web1")
    assert applied["changes"] == ret["changes"]  # the prediction was exact
    assert "memory = 256\n" in path.read_text()


def test_defined_fixes_a_wrong_mode(config_dir):
    define()
    path = config_dir / "web1.cfg"
    path.chmod(0o644)
    ret = guest_state.defined("web1")
    assert ret["changes"] == {"mode": {"old": "0644", "new": "0600"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_defined_with_an_explicit_config(config_dir):
    ret = guest_state.defined("web9", config={"type": "pvh", "memory": 64, "kernel": "/vmlinuz"})
    assert ret["result"] is True
    assert (config_dir / "web9.cfg").read_text().startswith('name = "web9"\n')
    bad = guest_state.defined("web9", config={"name": "other", "memory": 64})
    assert bad["result"] is False and "'other' is not 'web9'" in bad["comment"]


def test_defined_refuses_a_guest_this_node_may_not_run(config_dir):
    ret = guest_state.defined("app1")  # disks on node2 and node3
    assert ret["result"] is False and "does not let node1 run app1" in ret["comment"]
    assert not config_dir.exists()


@pytest.mark.parametrize("name", ["../etc/passwd", "Domain-0", "web1.cfg", "", None, "a/b"])
def test_bad_names_are_refused(name, config_dir, dom0):
    for state in (guest_state.defined, guest_state.running, guest_state.stopped, guest_state.absent):
        ret = state(name)
        assert ret["result"] is False and "invalid guest name" in ret["comment"], (state, ret)
    assert dom0.calls == [] and not config_dir.exists()


# --- running: the live check ----------------------------------------------------------------


def test_running_refuses_when_the_guest_runs_on_node2(dom0, publish, events):
    """The issue's scenario: web1 already runs on node2; running on node1 refuses and starts nothing."""
    define()
    publish.answer = located({"web1": ["node2"], "db1": ["node2"]})
    ret = guest_state.running("web1")
    assert ret["result"] is False and ret["changes"] == {}
    assert "web1 is running on node2" in ret["comment"] and "not starting it on node1" in ret["comment"]
    assert not any(c.startswith("xl create") for c in dom0.tool_calls())
    assert "web1" not in dom0.domains
    assert len(publish.calls) == 1


def test_the_question_goes_to_every_dom0_of_the_model(publish):
    define()
    guest_state.running("web1", check_timeout=7)
    assert publish.calls == [{
        "fun": "xencluster.locate",
        "arg": [{"__kwarg__": True, "tgt": NODES, "tgt_type": "list", "timeout": 7, "expect": NODES}],
        "timeout": 7 + guest_state.PUBLISH_MARGIN,
    }]  # fmt: skip


@pytest.mark.parametrize(
    "answer, why",
    [
        (located(no_answer=["node3"]), "node3 did not answer"),
        (located(unavailable={"node2": "'xencluster_xl' __virtual__ returned False"}), "node2 cannot tell"),
        (located(errors={"node2": "ERROR: xl list -l failed"}), "node2 failed"),
    ],
)
def test_running_refuses_when_a_dom0_cannot_tell(answer, why, dom0, publish):
    define()
    publish.answer = answer
    ret = guest_state.running("web1")
    assert ret["result"] is False and why in ret["comment"]
    assert "cannot tell whether web1 runs elsewhere" in ret["comment"]
    assert "web1" not in dom0.domains


@pytest.mark.parametrize(
    "answer, raises, why",
    [
        ({}, None, "the master answered {} (is peer_run set"),
        ("'xencluster.locate' runner publish timed out", None, "timed out"),
        ("No access to master. If using salt-call with --local, please remove.", None, "No access to master"),
        ({"xencluster.locate": "docs of the runner"}, None, "not a xencluster.locate result"),
        (None, OSError("connection refused"), "cannot reach xencluster.locate on the master: connection refused"),
    ],
)
def test_running_refuses_when_the_master_cannot_be_asked(answer, raises, why, dom0, publish):
    define()
    publish.answer, publish.raises = answer, raises
    ret = guest_state.running("web1")
    assert ret["result"] is False and why in ret["comment"], ret
    assert "not starting web1 without the cluster-wide check" in ret["comment"]
    assert "web1" not in dom0.domains


def test_running_refuses_a_double_run_loudly(dom0, publish, caplog):
    define()
    publish.answer = located({"web1": ["node2", "node3"]}, double_runs=["web1"])
    with caplog.at_level(logging.ERROR, logger=guest_state.__name__):
        ret = guest_state.running("web1")
    assert ret["result"] is False and ret["comment"].startswith("DOUBLE RUN: web1")
    assert any("DOUBLE RUN" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "web1" not in dom0.domains


def test_a_double_run_of_another_guest_is_shown_but_does_not_block(dom0, publish):
    define()
    publish.answer = located({"db1": ["node1", "node2"]}, double_runs=["db1"])
    ret = guest_state.running("web1")
    assert ret["result"] is True and "ALARM: DOUBLE RUN of db1" in ret["comment"]


def test_running_refuses_during_a_migration(dom0, publish):
    define()
    publish.answer = located({"web1--incoming": ["node2"]})
    ret = guest_state.running("web1")
    assert ret["result"] is False and "being live-migrated" in ret["comment"]


def test_running_starts_only_after_the_check(dom0, publish, events):
    define()
    ret = guest_state.running("web1")
    assert ret["result"] is True, ret
    assert ret["changes"] == {"state": {"old": "not running", "new": "running"}, "sched": {"weight": 256, "cap": 0}}
    assert dom0.domains["web1"]["state"] == "running"
    assert events.index("publish.runner") < events.index("xl create")
    assert events.count("publish.runner") == 1 and events.count("xl create") == 1
    assert dom0.calls[-1] == ["xl", "sched-credit2", "-d", "web1", "-w", "256", "-c", "0"]
    create = next(c for c in dom0.calls if c[1] == "create")
    assert create[-1] == str(pathlib.Path(guest_state.CONFIG_DIR) / "web1.cfg")


def test_running_test_mode_checks_live_but_creates_nothing(dom0, publish, opts, context):
    define()
    opts["test"] = True
    predicted = guest_state.running("web1")
    assert predicted["result"] is None and len(publish.calls) == 1
    assert not any(c[1] in ("create", "sched-credit2") for c in dom0.calls)
    publish.answer = located({"web1": ["node2"]})
    refused = guest_state.running("web1")
    assert refused["result"] is False and "running on node2" in refused["comment"]
    opts["test"] = False
    publish.answer = located()
    new_run(context)
    assert guest_state.running("web1")["changes"] == predicted["changes"]


def test_running_here_is_a_no_op_without_asking(dom0, publish):
    define()
    dom0.add("web1", "blocked")
    ret = guest_state.running("web1")
    assert ret["result"] is True and ret["changes"] == {} and "already running on node1" in ret["comment"]
    assert publish.calls == []


def test_running_does_not_replace_a_crashed_domain(dom0, publish):
    define()
    dom0.add("web1", "crashed")
    ret = guest_state.running("web1")
    assert ret["result"] is False and "crashed" in ret["comment"] and "destroy it first" in ret["comment"]
    assert publish.calls == [] and not any(c[1] == "create" for c in dom0.calls)


def test_running_here_with_an_incoming_migration_refuses(dom0, publish):
    define()
    dom0.add("web1--incoming", "paused")
    ret = guest_state.running("web1")
    assert ret["result"] is False and "live migration" in ret["comment"]


def test_running_needs_the_config(dom0, publish):
    ret = guest_state.running("web1")
    assert ret["result"] is False and "xencluster_guest.defined web1 first" in ret["comment"]
    assert publish.calls == []


def test_running_a_guest_of_other_nodes_is_refused(dom0, publish):
    ret = guest_state.running("app1")
    assert ret["result"] is False and "does not let node1 run app1" in ret["comment"]
    assert publish.calls == [] and dom0.calls == []


def test_running_reports_a_failed_create(dom0, publish):
    define()
    dom0.fail["create"] = "libxl: error: cannot open /dev/xencluster/web1.root.node2"
    ret = guest_state.running("web1")
    assert ret["result"] is False and ret["changes"] == {}
    assert "starting web1 failed" in ret["comment"] and "cannot open" in ret["comment"]


def test_a_guest_seen_here_by_the_check_is_fine(dom0, publish):
    define()
    publish.answer = located({"web1": ["node1"]})  # started here since the run read the domains
    ret = guest_state.running("web1")
    assert ret["result"] is True and ret["changes"] == {}
    assert not any(c[1] == "create" for c in dom0.calls)


# --- judge: pure -----------------------------------------------------------------------------


def test_judge_verdicts():
    judge = guest_state.judge
    assert judge("web1", "node1", NODES, located())[0] == "clear"
    assert judge("web1", "node1", NODES, located({"web10": ["node2"], "xweb1": ["node3"]}))[0] == "clear"
    assert judge("web1", "node1", NODES, located({"web1": ["node1"]}))[0] == "here"
    assert judge("web1", "node1", NODES, located({"web1": ["node2"]}))[0] == "refuse"
    assert judge("web1", "node1", NODES, located({"web1--migratedaway": ["node2"]}))[0] == "refuse"
    verdict, reason = judge("web1", "node1", NODES, located({"web1": ["node1", "node2"]}))
    assert verdict == "refuse" and reason.startswith("DOUBLE RUN")
    # a migration away from node1 is not a double run, but not "here" either
    verdict, reason = judge("web1", "node1", NODES, located({"web1": ["node1"], "web1--incoming": ["node2"]}))
    assert verdict == "refuse" and "live-migrated" in reason
    # the calling dom0 is one of those that must answer
    assert judge("web1", "node1", NODES, located(no_answer=["node1"]))[0] == "refuse"
    # minions outside the cluster do not matter
    assert judge("web1", "node1", NODES, located(no_answer=["mgmt1"]))[0] == "clear"


# --- one read per run, whatever the number of guests --------------------------------------


def _converged_highstate_cost(n, pillar, dom0, publish, context):
    pillar["xencluster"] = lab_model(extra_guests=n - 1)  # web1 + g0..g(n-2), all pinned to node1
    first = guest_state.node_guests("node1")  # defines and starts them
    assert first["result"] is True, first["comment"]
    assert sum(1 for c in dom0.calls if c[1] == "create") == n
    new_run(context)
    dom0.calls.clear()
    publish.calls.clear()
    again = guest_state.node_guests("node1")
    assert again["result"] is True and again["changes"] == {}, again
    return list(dom0.tool_calls()), len(publish.calls)


def test_a_converged_run_costs_the_same_for_1_and_100_guests(pillar, dom0, publish, context):
    one = _converged_highstate_cost(1, pillar, dom0, publish, context)
    dom0.domains.clear()
    new_run(context)
    hundred = _converged_highstate_cost(100, pillar, dom0, publish, context)
    assert one == hundred == (["xl list -l", "xl list"], 0)


def test_separate_running_states_share_one_read(pillar, dom0, publish, context):
    pillar["xencluster"] = lab_model(extra_guests=99)
    for i in range(99):
        dom0.add(f"g{i}")
        assert guest_state.defined(f"g{i}")["result"] is True
    for i in range(99):
        assert guest_state.running(f"g{i}")["result"] is True
    assert dom0.tool_calls() == ["xl list -l", "xl list"] and publish.calls == []


def test_the_read_is_forgotten_after_a_start(dom0, publish, context):
    define()
    define("db1")
    assert guest_state.running("web1")["changes"]
    # the next state of the same run sees web1 without asking the master again
    assert guest_state.running("web1")["changes"] == {}
    assert len(publish.calls) == 1
    assert guest_state.running("db1")["changes"]
    assert len(publish.calls) == 2


# --- node_guests: the highstate entry point ---------------------------------------------


def test_node_guests_defines_all_but_starts_only_pinned_guests(config_dir, dom0, publish):
    ret = guest_state.node_guests("node1")
    assert ret["result"] is True, ret["comment"]
    assert sorted(p.name for p in config_dir.iterdir()) == ["db1.cfg", "web1.cfg"]  # not app1
    assert sorted(ret["changes"]) == ["db1", "web1"]
    assert sorted(ret["changes"]["web1"]) == ["defined", "running"]
    assert sorted(ret["changes"]["db1"]) == ["defined"]  # db1 is pinned to node2
    assert list(dom0.domains) == ["web1"]
    assert len(publish.calls) == 1


def test_node_guests_refuses_the_start_when_the_check_fails(dom0, publish):
    publish.answer = located({"web1": ["node2"]})
    ret = guest_state.node_guests("node1")
    assert ret["result"] is False and "web1 running: web1 is running on node2" in ret["comment"]
    assert dom0.domains == {}


def test_node_guests_test_mode_on_a_fresh_node(config_dir, dom0, publish, opts):
    opts["test"] = True
    ret = guest_state.node_guests("node1")
    assert ret["result"] is None, ret["comment"]
    assert ret["changes"]["web1"]["running"] == {
        "state": {"old": "not running", "new": "running"}, "sched": {"weight": 256, "cap": 0}}  # fmt: skip
    assert len(publish.calls) == 1 and not config_dir.exists()
    assert not any(c[1] in ("create", "sched-credit2") for c in dom0.calls)


def test_node_guests_for_another_node_is_refused(dom0, publish, config_dir):
    ret = guest_state.node_guests("node2")
    assert ret["result"] is False and "would start another node's guests here" in ret["comment"]
    assert dom0.calls == [] and publish.calls == [] and not config_dir.exists()


def test_node_guests_accepts_the_minion_id(pillar, dom0, publish, opts):
    pillar["xencluster"]["nodes"]["node1"]["minion"] = "dom0-a.example.org"
    opts["id"] = "dom0-a.example.org"
    ret = guest_state.node_guests("dom0-a.example.org")
    assert ret["result"] is True, ret["comment"]
    assert publish.calls[0]["arg"][0]["tgt"] == ["dom0-a.example.org", "node2", "node3"]


def test_bad_pillar_fails_before_anything_is_read(pillar, dom0, publish, config_dir):
    pillar["xencluster"]["guests"]["web1"]["disks"][0]["nodes"] = ["node1", "node1"]
    pillar["xencluster"]["guests"]["web1"]["memmory"] = "1G"
    for state in (guest_state.node_guests, guest_state.running, guest_state.defined):
        ret = state("node1" if state is guest_state.node_guests else "web1")
        assert ret["result"] is False, ret
        assert "xencluster.guests.web1.disks.root.nodes: both legs on node1" in ret["comment"]
        assert "xencluster.guests.web1.memmory: unknown key (did you mean 'memory'?" in ret["comment"]
    assert dom0.calls == [] and publish.calls == [] and not config_dir.exists()


def test_missing_pillar(pillar, dom0):
    pillar.clear()
    ret = guest_state.node_guests("node1")
    assert ret["result"] is False and "missing from the pillar" in ret["comment"]
    assert dom0.calls == []


# --- stopped and absent -------------------------------------------------------------------------


def test_stopped(dom0):
    dom0.add("web1", "running")
    ret = guest_state.stopped("web1", timeout=5)
    assert ret["result"] is True and ret["changes"] == {"state": {"old": "running", "new": "stopped"}}
    assert "web1" not in dom0.domains
    again = guest_state.stopped("web1")
    assert again["result"] is True and again["changes"] == {}


def test_stopped_test_mode(dom0, opts):
    dom0.add("web1", "blocked")
    opts["test"] = True
    ret = guest_state.stopped("web1", force=True)
    assert ret["result"] is None and ret["changes"] == {"state": {"old": "blocked", "new": "stopped"}}
    assert "then destroyed if still running" in ret["comment"]
    assert [c[1] for c in dom0.calls] == ["list", "list"]


def test_stopped_without_force_fails_after_the_timeout(dom0):
    dom0.add("web1", "running")
    dom0.ignores_shutdown.add("web1")
    ret = guest_state.stopped("web1", timeout=0)
    assert ret["result"] is False and ret["changes"] == {}
    assert "still running" in ret["comment"] and "force=True" in ret["comment"]
    assert "web1" in dom0.domains and not any(c[1] == "destroy" for c in dom0.calls)


def test_stopped_with_force_destroys_after_the_timeout(dom0):
    dom0.add("web1", "running")
    dom0.ignores_shutdown.add("web1")
    ret = guest_state.stopped("web1", timeout=0, force=True)
    assert ret["result"] is True and ret["changes"] == {"state": {"old": "running", "new": "destroyed"}}
    assert "web1" not in dom0.domains
    order = [c[1] for c in dom0.calls if c[1] in ("shutdown", "destroy")]
    assert order == ["shutdown", "destroy"]


def test_stopped_leaves_a_crashed_domain(dom0):
    dom0.add("web1", "crashed")
    ret = guest_state.stopped("web1")
    assert ret["result"] is True and ret["changes"] == {} and "crashed" in ret["comment"]
    assert "web1" in dom0.domains


def test_stopped_needs_no_pillar(pillar, dom0):
    pillar.clear()
    dom0.add("web1", "running")
    assert guest_state.stopped("web1")["result"] is True


def test_absent_stops_and_undefines(dom0, config_dir):
    define()
    dom0.add("web1", "running")
    ret = guest_state.absent("web1")
    assert ret["result"] is True, ret
    path = str(config_dir / "web1.cfg")
    assert ret["changes"] == {"state": {"old": "running", "new": "stopped"}, "config": {"old": path, "new": None}}
    assert "disks untouched" in ret["comment"]
    assert not os.path.exists(path) and "web1" not in dom0.domains
    again = guest_state.absent("web1")
    assert again["result"] is True and again["changes"] == {}


def test_absent_test_mode_predicts_exactly(dom0, config_dir, opts, context):
    define()
    dom0.add("web1", "crashed")
    opts["test"] = True
    predicted = guest_state.absent("web1")
    assert predicted["result"] is None and (config_dir / "web1.cfg").exists() and "web1" in dom0.domains
    opts["test"] = False
    new_run(context)
    applied = guest_state.absent("web1")
    assert applied["result"] is True and applied["changes"] == predicted["changes"]
    assert applied["changes"]["domain"] == {"old": "crashed", "new": None}
    assert "web1" not in dom0.domains


def test_absent_keeps_the_config_when_the_guest_cannot_be_stopped(dom0, config_dir):
    define()
    dom0.add("web1", "running")
    dom0.ignores_shutdown.add("web1")
    ret = guest_state.absent("web1", timeout=0)
    assert ret["result"] is False and (config_dir / "web1.cfg").exists()


def test_absent_never_removes_disks(dom0, config_dir):
    define()
    dom0.add("web1", "running")
    ret = guest_state.absent("web1", remove_disks=True)
    assert ret["result"] is False and ret["changes"] == {}
    for leg in ("web1.root.node1", "web1.root.node2", "web1.data.node1", "web1.data.node2"):
        assert leg in ret["comment"]
    assert dom0.calls == [] and (config_dir / "web1.cfg").exists()  # nothing was read or changed


def test_virtual_needs_xencluster_xl():
    assert guest_state.__virtual__() == "xencluster_guest"
    saved = guest_state.__salt__
    try:
        guest_state.__salt__ = {}
        assert guest_state.__virtual__()[0] is False
    finally:
        guest_state.__salt__ = saved


# --- interfaces on a plain bridge -----------------------------------------------------------------


def test_config_of_an_interface_on_a_plain_bridge():
    model = lab_model()
    model["guests"]["web1"]["interfaces"].append({"bridge": "xcguests", "mac": "00:16:3e:00:01:02"})
    for node in ("node1", "node2"):
        config = guest_state.guest_config(model_mod.node_view(node, model)["guests"]["web1"], node)
        assert config["vif"] == ["mac=00:16:3e:00:01:01,bridge=br-svc10", "mac=00:16:3e:00:01:02,bridge=xcguests"]


def test_defined_writes_the_plain_bridge(config_dir, pillar):
    pillar["xencluster"]["guests"]["web1"]["interfaces"] = [{"bridge": "xcguests", "mac": "00:16:3e:00:01:01"}]
    define()
    assert 'vif = [ "mac=00:16:3e:00:01:01,bridge=xcguests" ]\n' in (config_dir / "web1.cfg").read_text()


# --- guests with provision: started only once provisioned ----------------------------------------

NOT_TAGGED = "LV xcvg/web2.root.node1 has no tag xencluster.provisioned"


def add_provisioned_guest(pillar, name="web2", index=3, node="node1"):
    """A guest with ``provision`` on node1/node2, pinned to ``node``, its NIC on the plain bridge xcguests."""
    pillar["xencluster"]["guests"][name] = {
        "type": "pvh", "node": node, "memory": "64M", "kernel": "/vmlinuz", "ramdisk": "/srv/domu/probe-initrd.gz",
        "interfaces": [{"bridge": "xcguests", "mac": f"00:16:3e:00:{index:02x}:01"}],
        "disks": [
            {"name": "root", "size": "1G", "nodes": ["node1", "node2"], "vg": "xcvg", "filesystem": "ext4"},
            {"name": "data", "size": "1G", "nodes": ["node1", "node2"], "vg": "xcvg"},
        ],
        "provision": {"image": "/srv/xencluster/images/debian12-guest.tar.zst", "address": f"10.99.0.{index}/24",
                      "master": "10.99.0.1"},
    }  # fmt: skip


def legs(dom0, guest="web2", tagged=False):
    """Both disks' node1 legs of ``guest`` in node1's LVM, the root leg tagged if ``tagged``."""
    dom0.lvs[f"{guest}.root.node1"] = [f"xc-guest={guest}"] + ([TAG] if tagged else [])
    dom0.lvs[f"{guest}.data.node1"] = [TAG]  # only the first disk counts


def test_not_provisioned_is_read_from_the_root_leg_on_this_node(pillar):
    add_provisioned_guest(pillar)
    guest = model_mod.node_view("node1", pillar["xencluster"])["guests"]["web2"]
    not_provisioned = guest_state._not_provisioned  # pylint: disable=protected-access

    def report(lvs):
        return {"pvs": {}, "vgs": {}, "lvs": {f"xcvg/{name}": {"tags": tags} for name, tags in lvs.items()}}

    assert not_provisioned(guest, "node1", report({})) == "LV xcvg/web2.root.node1 does not exist"
    assert not_provisioned(guest, "node1", report({"web2.root.node1": ["x"], "web2.data.node1": [TAG]})) == NOT_TAGGED
    assert not_provisioned(guest, "node1", report({"web2.root.node1": [TAG]})) is None
    on_node2 = not_provisioned(guest, "node2", report({"web2.root.node1": [TAG]}))
    assert on_node2 == "LV xcvg/web2.root.node2 does not exist"


def test_node_guests_leaves_an_unprovisioned_guest_stopped(config_dir, pillar, dom0, publish):
    add_provisioned_guest(pillar)
    legs(dom0)
    ret = guest_state.node_guests("node1")
    assert ret["result"] is True, ret["comment"]
    assert (f"web2 running: not started: not provisioned yet ({NOT_TAGGED}); run salt-run xencluster.provision web2"
            in ret["comment"].split("\n"))  # fmt: skip
    assert sorted(ret["changes"]["web2"]) == ["defined"]  # defined, not started
    assert (config_dir / "web2.cfg").exists()
    assert list(dom0.domains) == ["web1"] and len(publish.calls) == 1  # only web1 was checked and started
    assert dom0.lvm_calls() == ["pvs", "vgs", "lvs"]


def test_node_guests_says_when_the_root_leg_is_missing(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    ret = guest_state.node_guests("node1")
    assert ret["result"] is True
    assert "web2 running: not started: not provisioned yet (LV xcvg/web2.root.node1 does not exist)" in ret["comment"]
    assert "web2" not in dom0.domains


def test_node_guests_test_mode_predicts_the_same(config_dir, pillar, dom0, publish, opts, context):
    add_provisioned_guest(pillar)
    legs(dom0)
    opts["test"] = True
    predicted = guest_state.node_guests("node1")
    assert predicted["result"] is None  # web1 would be defined and started
    assert f"web2 running: not started: not provisioned yet ({NOT_TAGGED})" in predicted["comment"]
    assert sorted(predicted["changes"]["web2"]) == ["defined"]
    assert not config_dir.exists() and dom0.domains == {}
    opts["test"] = False
    new_run(context)
    applied = guest_state.node_guests("node1")
    steps = {g: sorted(c) for g, c in predicted["changes"].items()}
    assert {g: sorted(c) for g, c in applied["changes"].items()} == steps
    assert applied["changes"]["web1"]["running"] == predicted["changes"]["web1"]["running"]


def test_node_guests_starts_a_provisioned_guest(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    legs(dom0, tagged=True)
    ret = guest_state.node_guests("node1")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["web2"]["running"]["state"] == {"old": "not running", "new": "running"}
    assert sorted(dom0.domains) == ["web1", "web2"] and len(publish.calls) == 1  # one locate for both starts


@pytest.mark.parametrize("step, asks", [(29, 1), (31, 2)])
def test_node_guests_asks_again_once_the_answer_is_30_s_old(pillar, dom0, publish, monkeypatch, step, asks):
    add_provisioned_guest(pillar)
    legs(dom0, tagged=True)
    ticks = iter(range(0, 10000, step))  # each reading of the clock is `step` seconds later
    monkeypatch.setattr(guest_state, "_monotonic", lambda: next(ticks))
    ret = guest_state.node_guests("node1")
    assert ret["result"] is True, ret["comment"]
    assert sorted(dom0.domains) == ["web1", "web2"] and len(publish.calls) == asks


def test_node_guests_keeps_no_failed_ask_and_judges_each_guest_from_the_shared_answer(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    legs(dom0, tagged=True)
    publish.raises = OSError("connection refused")
    ret = guest_state.node_guests("node1")
    assert ret["result"] is False and dom0.domains == {}
    assert len(publish.calls) == 2  # a failed ask is asked again for the next guest
    assert ret["comment"].count("cannot reach xencluster.locate on the master: connection refused") == 2
    publish.raises, publish.calls = None, []
    publish.answer = located({"web2": ["node2"]})
    ret = guest_state.node_guests("node1")
    assert ret["result"] is False and len(publish.calls) == 1
    assert sorted(dom0.domains) == ["web1"]  # web1 clear, web2 refused, from the same answer
    assert "web2 running: web2 is running on node2" in ret["comment"]


def test_the_lvm_report_is_read_once_per_run_and_never_when_converged(pillar, dom0, publish, context):
    add_provisioned_guest(pillar)
    add_provisioned_guest(pillar, "web3", index=4)
    legs(dom0)
    legs(dom0, "web3")
    assert guest_state.node_guests("node1")["result"] is True
    assert dom0.lvm_calls() == ["pvs", "vgs", "lvs"]  # one report for web2 and web3
    # provisioned and started since: a converged run reads the domains and nothing else
    dom0.add("web2", "blocked")
    dom0.add("web3", "blocked")
    new_run(context)
    dom0.calls.clear()
    publish.calls.clear()
    again = guest_state.node_guests("node1")
    assert again["result"] is True and again["changes"] == {}, again
    assert dom0.tool_calls() == ["xl list -l", "xl list"] and publish.calls == []


def test_an_unprovisioned_guest_pinned_elsewhere_costs_nothing(pillar, dom0, publish):
    add_provisioned_guest(pillar, node="node2")
    ret = guest_state.node_guests("node1")
    assert ret["result"] is True and sorted(ret["changes"]["web2"]) == ["defined"]
    assert dom0.lvm_calls() == []


def test_node_guests_fails_when_lvm_cannot_tell(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    dom0.fail["lvs"] = "  Volume group xcvg not found"
    ret = guest_state.node_guests("node1")
    assert ret["result"] is False
    line = next(line for line in ret["comment"].split("\n") if line.startswith("web2 running: "))
    assert "cannot tell whether web2 is provisioned, so it is not started" in line and "lvs failed (rc 5)" in line
    assert "web2" not in dom0.domains and "web1" in dom0.domains


def test_running_refuses_an_unprovisioned_guest(pillar, dom0, publish, opts, context):
    add_provisioned_guest(pillar)
    legs(dom0)
    define("web2")
    for test in (False, True):
        opts["test"] = test
        new_run(context)
        ret = guest_state.running("web2")
        assert ret == {"name": "web2", "result": False, "changes": {}, "comment": (
            f"web2 is not provisioned yet ({NOT_TAGGED}): not starting it; run salt-run xencluster.provision "
            "web2 (the provisioning flow starts it with provisioning=True)")}  # fmt: skip
    assert publish.calls == [] and "web2" not in dom0.domains


def test_running_with_provisioning_starts_it_without_reading_lvm(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    define("web2")
    ret = guest_state.running("web2", provisioning=True)
    assert ret["result"] is True and ret["changes"]["state"] == {"old": "not running", "new": "running"}, ret
    assert dom0.domains["web2"]["state"] == "running" and dom0.lvm_calls() == []
    assert len(publish.calls) == 1  # the live check still runs


def test_running_a_provisioned_guest_needs_no_argument(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    legs(dom0, tagged=True)
    define("web2")
    assert guest_state.running("web2")["changes"]["state"]["new"] == "running"


def test_running_here_reads_no_tags(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    define("web2")
    dom0.add("web2", "blocked")
    ret = guest_state.running("web2")
    assert ret["result"] is True and "already running" in ret["comment"] and dom0.lvm_calls() == []


def test_provisioning_is_ignored_for_a_guest_without_provision_and_must_be_a_bool(dom0, publish):
    define()
    assert guest_state.running("web1", provisioning=True)["result"] is True
    assert dom0.lvm_calls() == []
    bad = guest_state.running("web1", provisioning="yes")
    assert bad["result"] is False and "provisioning must be True or False: 'yes'" in bad["comment"]


def test_without_xencluster_lvm_an_unprovisioned_guest_is_not_started(pillar, dom0, publish):
    add_provisioned_guest(pillar)
    define("web2")
    report = guest_state.__salt__.pop("xencluster_lvm.report")
    try:
        ret = guest_state.running("web2")
    finally:
        guest_state.__salt__["xencluster_lvm.report"] = report
    assert ret["result"] is False
    assert ret["comment"] == ("cannot tell whether web2 is provisioned, so it is not started: "
                              "the xencluster_lvm execution module is not available")
