"""xencluster.recover runner: confirm_dead, the one check round, each guest's checks, the degraded start, events.

node1 is the lost node of the frozen lab model (``tests/unit/data/two_node_model.sls``):
it never answers. node2 is a SYNTHETIC dom0 (``FakeDom0`` of
test_xencluster_guest_state.py, Xen 4.17's formats) behind the REAL
``xencluster_xl`` module: its domains are what ``list_domains`` parses, the
degraded start runs the real ``create_degraded`` on a config file rendered
by the real state renderer (``xencluster_guest.guest_config`` +
``xencluster_xl.render_config``, as ``xencluster_guest.defined`` writes it),
and ``xl create`` records the config it is given. ``xl info`` is the
recording ``xl/lab-node1-probe-pair`` (1125 MiB free); the stable paths are
the migrate tests' SYNTHETIC ``node_links``. The mocked LocalClient answers
each publish the way a minion does (``full_return``).
"""

import copy
import json
import pathlib
from unittest.mock import MagicMock

import pytest
import salt.cache
import salt.config
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError
from test_xencluster_guest_state import FakeDom0
from test_xencluster_runner_evacuate import RAW3
from test_xencluster_runner_migrate import INFO
from test_xencluster_runner_migrate import LIST
from test_xencluster_runner_migrate import RAW
from test_xencluster_runner_migrate import REPORT
from test_xencluster_runner_migrate import Bus
from test_xencluster_runner_migrate import node_links
from test_xencluster_runner_migrate import recorded_info

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl_mod
from saltext.xencluster.runners import xencluster as runner
from saltext.xencluster.states import xencluster_guest as guest_state

DEGRADED, SCHED = runner.DEGRADED_FUN, runner.SCHED_FUN
WEB1_DEAD = ["/dev/xencluster/web1.root.node1", "/dev/xencluster/web1.data.node1"]


def three_nodes(raw=RAW):
    """``raw`` plus node3, a copy of node2 on the same SAN (no guest of its own)."""
    raw = copy.deepcopy(raw)
    raw["nodes"]["node3"] = copy.deepcopy(raw["nodes"]["node2"])
    raw["nodes"]["node3"]["san"][0]["address"] = "192.168.100.3/24"
    return raw


class Dom0(FakeDom0):
    """The SYNTHETIC node2: also keeps the text of every config ``xl create`` is given."""

    def __init__(self):
        super().__init__([])
        self.created = []

    def _create(self, path):
        self.created.append(pathlib.Path(path).read_text())
        super()._create(path)


class Cluster:
    """LocalClient.cmd of the cluster: node2 (``Dom0``) answers, node1 never; ``others`` answer fixed domains."""

    def __init__(self, raw, dom0, others=None):
        self.raw, self.dom0, self.others = raw, dom0, dict(others or {})  # others: {minion: domains}
        self.model = model_mod.validate(copy.deepcopy(raw))
        self.calls = []
        self.info = recorded_info()
        self.links = {"node2": node_links(self.model, "node2")}
        self.lost_answers = None  # set: node1 answers the round with this
        self.at_list = []  # callables run at each list_domains publish, in order

    def report(self, node, domains):
        links = self.links.get(node, node_links(self.model, node))
        rep = {"domains": domains, "lvm": {}, "lio": {}, "sessions": [], "links": links, "configs": []}
        info = dict(self.info) if isinstance(self.info, dict) else self.info  # a str: xl info failed
        return {"ret": {REPORT: rep, INFO: info}, "retcode": {REPORT: 0, INFO: 0 if isinstance(info, dict) else 1},
                "jid": "1"}  # fmt: skip

    def __call__(self, tgt, fun, *args, **kwargs):
        assert kwargs["tgt_type"] == "list" and kwargs["full_return"] is True
        self.calls.append((list(tgt), fun, copy.deepcopy(args), copy.deepcopy(kwargs)))
        out = {}
        if "node1" in tgt and self.lost_answers is not None:
            out["node1"] = self.lost_answers
        for minion in tgt:
            if minion == "node2":
                out[minion] = self.node2(fun, args, kwargs)
            elif minion in self.others:
                out[minion] = self.other(minion, fun)
        return out

    def node2(self, fun, args, kwargs):
        if fun == [REPORT, INFO]:
            try:
                domains = xl_mod.list_domains()
            except CommandExecutionError as exc:  # xencluster_node.report: a part that fails is its error
                domains = {"error": f"xencluster_xl.list_domains: {exc}"}
            return self.report("node2", domains)
        if fun == LIST:
            if self.at_list:
                self.at_list.pop(0)()
            return {"ret": xl_mod.list_domains(), "retcode": 0}
        call = {DEGRADED: xl_mod.create_degraded, SCHED: xl_mod.sched_credit2}[fun]
        try:  # as a minion answers: an exception becomes "ERROR: ..." with retcode 1
            return {"ret": call(*args[0], **kwargs.get("kwarg", {})), "retcode": 0}
        except (SaltInvocationError, CommandExecutionError) as exc:
            return {"ret": f"ERROR: {exc}", "retcode": 1}

    def other(self, minion, fun):
        if fun == [REPORT, INFO]:
            return self.report(minion, self.others[minion])
        assert fun == LIST, fun
        return {"ret": self.others[minion], "retcode": 0}

    def funs(self):
        return [fun for _tgt, fun, _a, _k in self.calls]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def context():
    return {}


@pytest.fixture
def jid_event():
    return MagicMock()


@pytest.fixture
def dom0():
    node2 = Dom0()
    node2.add("db1", "running")  # db1 lives on node2 (its home)
    return node2


@pytest.fixture
def opts(tmp_path):
    return dict(salt.config.DEFAULT_MASTER_OPTS, conf_file="/etc/salt/master", sock_dir=str(tmp_path / "sock"),
                cachedir=str(tmp_path / "cache"))  # fmt: skip


@pytest.fixture
def configure_loader_modules(context, jid_event, opts, dom0):
    return {
        runner: {"__opts__": opts, "__context__": context, "__jid_event__": jid_event},
        xl_mod: {"__salt__": {"cmd.run_all": dom0}},
    }


@pytest.fixture
def bus(monkeypatch):
    bus = Bus()
    monkeypatch.setattr(runner.salt.utils.event, "get_master_event", bus)
    return bus


@pytest.fixture
def cfg_dir(tmp_path, monkeypatch):
    """node2's /etc/xen/xencluster, and /run for the temporary configs."""
    path = tmp_path / "etc-xen-xencluster"
    path.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(runner, "GUEST_CONFIG_DIR", str(path))
    monkeypatch.setattr(xl_mod, "RUN_DIR", str(run))
    return path


def define(cfg_dir, raw, guest, node="node2"):
    """What ``xencluster_guest.defined`` writes for ``guest`` on ``node``: the state's renderer, unchanged."""
    view = model_mod.node_view(node, copy.deepcopy(raw))
    text = xl_mod.render_config(guest_state.guest_config(view["guests"][guest], node))
    (cfg_dir / f"{guest}.cfg").write_text(text)
    return text


def make_cluster(monkeypatch, raw, dom0, cfg_dir, others=None):
    """The model ``raw`` as the master reads it, every guest defined on node2, LocalClient answering."""
    cluster = Cluster(raw, dom0, others)
    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=cluster)))
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node2", copy.deepcopy(raw)))
    monkeypatch.setattr(runner, "_validate", lambda r: model_mod.validate(copy.deepcopy(r)))
    for guest, spec in cluster.model["guests"].items():
        if "node2" in spec["nodes"]:
            define(cfg_dir, raw, guest)
    return cluster


@pytest.fixture
def cluster(monkeypatch, dom0, cfg_dir, bus):
    return make_cluster(monkeypatch, RAW, dom0, cfg_dir)


def seen_last(opts, guests, nodes=("node2",), at=1767225600):
    """Store the last_seen record the verify runner keeps (bank xencluster/last_seen, key guests)."""
    salt.cache.factory(opts).store("xencluster/last_seen", "guests", {"at": at, "guests": guests, "nodes": list(nodes)})


def recover(**kwargs):
    kwargs.setdefault("confirm_dead", "node1")
    kwargs.setdefault("check_timeout", 7)
    return runner.recover("node1", **kwargs)


def by_guest(result):
    return {entry["guest"]: entry for entry in result["guests"]}


def checks(entry):
    return {c["check"]: c for c in entry["checks"]}


def progress(jid_event):
    return [c.args[0]["message"] for c in jid_event.fire_event.call_args_list]


# --- confirm_dead and the other arguments --------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"confirm_dead": None}, "refused: recover starts the guests of node1 on one leg of their disks; say that "
                                 "node1 is dead (powered off, fenced) with confirm_dead=node1"),
        ({"confirm_dead": "node2"}, "refused: confirm_dead=node2 does not name the lost node node1"),
        ({"confirm_dead": "Node1"}, "invalid confirm_dead node name 'Node1'"),
        ({"confirm_dead": 1}, "invalid confirm_dead node name 1"),
        ({"confirm_dead": "node1 "}, "invalid confirm_dead node name 'node1 '"),
        ({"dry_run": "yes"}, "dry_run must be True or False: 'yes'"),
        ({"allow_drained": 1}, "allow_drained must be True or False: 1"),
        ({"timeout": 0}, "timeout must be a whole number of seconds from 1 to 3600: 0"),
        ({"check_timeout": 601}, "check_timeout must be"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_before_anything_is_published(cluster, bus, context, kwargs, why):
    result = recover(**kwargs)
    assert (result["result"], result["retcode"], result["guests"]) == (False, 1, []) and context["retcode"] == 1
    assert result["message"].startswith("not recovering node1: ") and why in result["message"]
    assert cluster.calls == [] and bus.events == [] and xl_mod.list_domains().keys() == {"db1"}
    json.dumps(result)


def test_an_unknown_or_invalid_node(cluster, context):
    result = runner.recover("node9", confirm_dead="node9")
    assert result["message"] == ("not recovering node9: no node node9 in the model (pillar of node2; nodes: "
                                 "node1, node2)")  # fmt: skip
    result = runner.recover("../etc", confirm_dead="../etc")
    assert result["message"].startswith("not recovering ../etc: invalid node name '../etc'")
    assert cluster.calls == [] and context["retcode"] == 1


# --- the round: one publish, the lost node silent, every other node telling --------------------


def test_the_lost_node_answers_so_nothing_starts(cluster, bus, context, jid_event):
    cluster.lost_answers = cluster.report("node1", {})
    result = recover()
    [(tgt, fun, args, kwargs)] = cluster.calls  # ONE publish, to every node of the model
    assert (tgt, fun, args) == (["node1", "node2"], [REPORT, INFO], ([[], []],))
    assert kwargs == {"timeout": 7, "tgt_type": "list", "full_return": True}
    assert (result["result"], result["retcode"], result["started"]) == (False, 1, []) and context["retcode"] == 1
    assert result["message"] == ("not recovering node1: node1 answered (it told its domains): it is not dead. Fence "
                                 "it (power it off) before recovering its guests elsewhere")  # fmt: skip
    [web1] = result["guests"]
    assert (web1["guest"], web1["outcome"], web1["pinned"], web1["survivor"]) == ("web1", "refused", True, "node2")
    assert web1["without_legs"] == ["web1.root.node1", "web1.data.node1"] and web1["on"] is None
    assert web1["message"] == "not starting web1: " + result["message"][len("not recovering node1: "):]
    assert dom0_creates(cluster) == [] and bus.events == []
    assert progress(jid_event) == [result["message"]]


def dom0_creates(cluster):
    return [c for c in cluster.dom0.calls if c[1] == "create"]


def test_an_answer_that_cannot_report_is_an_answer_too(cluster):
    cluster.lost_answers = {"ret": {REPORT: "'xencluster_node.report' is not available.", INFO: "x"},
                            "retcode": {REPORT: 254, INFO: 254}}  # fmt: skip
    result = recover(dry_run=True)
    assert result["message"].startswith("would not recover node1: node1 answered (node1 (minion node1) could not "
                                        "report: ")  # fmt: skip
    assert "it is not dead" in result["message"] and result["retcode"] == 1


def test_another_node_that_does_not_answer_stops_everything(monkeypatch, dom0, cfg_dir, bus, context):
    cluster = make_cluster(monkeypatch, three_nodes(), dom0, cfg_dir)  # node3 has a key but never answers
    result = recover()
    assert cluster.funs() == [[REPORT, INFO]] and cluster.calls[0][0] == ["node1", "node2", "node3"]
    assert result["message"] == ("not recovering node1: every other node must tell its domains: node3 (minion "
                                 "node3) did not answer")  # fmt: skip
    assert result["refused"] == ["web1"] and result["retcode"] == 1 and dom0_creates(cluster) == []


def test_a_node_that_cannot_list_its_domains_counts_as_silent(cluster):
    cluster.dom0.fail["list"] = "libxl: error: cannot connect to xenstore"
    result = recover(dry_run=True)
    assert result["message"].startswith("would not recover node1: every other node must tell its domains: node2: "
                                        "cannot read domains: ")  # fmt: skip


# --- each guest's checks -------------------------------------------------------------------------


def test_a_guest_already_running_on_the_survivor_is_skipped(cluster, bus, context):
    cluster.dom0.add("web1", "blocked")
    result = recover()
    web1 = by_guest(result)["web1"]
    assert (web1["outcome"], web1["on"], web1["message"]) == ("skipped", "node2", "web1 already runs on node2: "
                                                                                  "not started")  # fmt: skip
    assert checks(web1)["runs_nowhere"]["message"] == "web1 already runs on node2 (blocked)"
    assert result["skipped"] == ["web1"] and result["result"] is True and result["retcode"] == 0 and context == {}
    assert cluster.funs() == [[REPORT, INFO]] and dom0_creates(cluster) == [] and bus.events == []


def test_a_guest_running_on_a_third_node_is_skipped_too(monkeypatch, dom0, cfg_dir, bus):
    running = {"web1": {"domid": 7, "type": "pvh", "memory": 128 << 20, "vcpus": 1, "state": "running"}}
    make_cluster(monkeypatch, three_nodes(), dom0, cfg_dir, others={"node3": running})
    result = recover()
    assert by_guest(result)["web1"]["message"] == "web1 already runs on node3: not started"
    assert result["retcode"] == 0


def test_a_crashed_copy_or_a_migration_leftover_is_refused(cluster):
    cluster.dom0.add("web1", "crashed")
    web1 = by_guest(recover(dry_run=True))["web1"]
    assert web1["outcome"] == "refused" and checks(web1)["runs_nowhere"]["message"] == (
        "web1 exists on node2 but is crashed: destroy it first (salt node2 xencluster_xl.destroy web1)")
    del cluster.dom0.domains["web1"]
    cluster.dom0.add("web1--incoming", "paused")  # node1 died while migrating web1 to node2
    web1 = by_guest(recover(dry_run=True))["web1"]
    assert checks(web1)["runs_nowhere"]["message"] == ("a migration of web1 is seen (web1--incoming on node2): "
                                                       "destroy what is left of it by hand first")  # fmt: skip


def test_a_double_run_refuses_everything_with_the_alarm(monkeypatch, dom0, cfg_dir, bus, context, caplog):
    running = {"db1": {"domid": 9, "type": "pvh", "memory": 128 << 20, "vcpus": 1, "state": "running"}}
    cluster = make_cluster(monkeypatch, three_nodes(), dom0, cfg_dir, others={"node3": running})
    result = recover()
    assert (result["result"], result["retcode"], context["retcode"]) == (False, 2, 2)
    assert result["message"] == ("not recovering node1: ECLUSTERDOUBLERUN: DOUBLE RUN of db1 on node2 and node3: "
                                 "nothing is started (salt-run xencluster.verify)")  # fmt: skip
    assert by_guest(result)["web1"]["outcome"] == "refused" and cluster.funs() == [[REPORT, INFO]]
    assert dom0_creates(cluster) == [] and "DOUBLE RUN" in caplog.text


def test_a_missing_or_wrong_surviving_leg_refuses_that_guest_and_names_it(cluster, context):
    links = cluster.links["node2"]
    del links["web1.data.node2"]
    links["web1.root.node2"] = dict(links["web1.root.node2"], kind="iscsi", target="/dev/sdq")
    result = recover()
    web1 = by_guest(result)["web1"]
    assert web1["outcome"] == "refused" and result["retcode"] == 1 and context["retcode"] == 1
    assert checks(web1)["surviving_legs"]["message"] == (
        "web1: disk root: surviving leg web1.root.node2 on node2: /dev/xencluster/web1.root.node2 points to "
        "/dev/sdq (iscsi), not to its LV; disk data: surviving leg web1.data.node2 on node2: "
        "/dev/xencluster/web1.data.node2 is missing")  # fmt: skip
    assert web1["message"].startswith("not starting web1: 1 check(s) failed (surviving_legs): web1: disk root")
    assert DEGRADED not in cluster.funs() and dom0_creates(cluster) == []


def test_the_dead_legs_may_be_missing_on_the_survivor(cluster):
    # node1's legs, imported over iSCSI, are what died: their paths on node2 do not count
    for lv in ("web1.root.node1", "web1.data.node1"):
        del cluster.links["node2"][lv]
    assert by_guest(recover(dry_run=True))["web1"]["outcome"] == "would_start"


def test_a_drained_survivor_is_refused_unless_allowed(cluster):
    runner._set_drained("node2", True)
    web1 = by_guest(recover(dry_run=True))["web1"]
    assert checks(web1)["survivor_not_drained"] == {
        "check": "survivor_not_drained", "ok": False,
        "message": "node2 is drained: it takes no guest (allow_drained=True starts it there anyway)"}  # fmt: skip
    web1 = by_guest(recover(dry_run=True, allow_drained=True))["web1"]
    assert web1["outcome"] == "would_start"
    assert checks(web1)["survivor_not_drained"]["message"] == "node2 is drained, allowed by allow_drained=True"


def test_the_survivor_must_hold_the_guest_config(cluster, cfg_dir):
    (cfg_dir / "web1.cfg").unlink()
    web1 = by_guest(recover(dry_run=True))["web1"]
    assert web1["outcome"] == "refused"
    assert checks(web1)["survivor_config"]["message"] == (
        f"no degraded config of web1 on node2: node2: {DEGRADED} failed: ERROR: config_file does not exist: "
        f"{cfg_dir}/web1.cfg")  # fmt: skip


def test_a_config_that_does_not_match_the_model_is_refused(cluster, cfg_dir):
    text = (cfg_dir / "web1.cfg").read_text().replace(', "format=raw,vdev=xvdd,access=rw,target=/dev/xencluster/'
                                                      'web1.data.node2"', "")  # fmt: skip
    (cfg_dir / "web1.cfg").write_text(text)
    web1 = by_guest(recover(dry_run=True))["web1"]
    assert checks(web1)["survivor_config"]["message"] == (
        f"{cfg_dir}/web1.cfg on node2 does not match the model (keeps nothing more, lacks "
        "['/dev/xencluster/web1.data.node2']): state.apply xencluster.guests on node2 first")  # fmt: skip


def test_memory_first_fit_in_name_order(monkeypatch, dom0, cfg_dir, bus, opts):
    cluster = make_cluster(monkeypatch, RAW3, dom0, cfg_dir)  # app1: a copy of web1 (128 MiB), pinned nowhere
    seen_last(opts, {"app1": ["node1"], "db1": ["node2"], "web1": ["node1"]}, nodes=["node1", "node2"])
    cluster.info["free_memory"] = 200
    result = recover(dry_run=True)
    app1, web1 = by_guest(result)["app1"], by_guest(result)["web1"]
    assert (app1["outcome"], app1["pinned"], app1["last_seen"]) == ("would_start", False, True)
    assert checks(app1)["survivor_memory"] == {"check": "survivor_memory", "ok": True,
                                               "message": "node2 has 200 MiB free; app1 needs 128 MiB (the model)"}
    assert web1["outcome"] == "refused" and checks(web1)["survivor_memory"] == {
        "check": "survivor_memory", "ok": False,
        "message": "node2 has 200 MiB free, 128 MiB of it for app1 before it; web1 needs 128 MiB (the model)"}
    assert (result["started"], result["refused"], result["retcode"]) == (["app1"], ["web1"], 1)
    cluster.info["free_memory"] = 256  # exactly enough for both
    assert recover(dry_run=True)["started"] == ["app1", "web1"]


def test_a_refused_guest_takes_no_memory(monkeypatch, dom0, cfg_dir, bus, opts):
    cluster = make_cluster(monkeypatch, RAW3, dom0, cfg_dir)
    seen_last(opts, {"app1": ["node1"]}, nodes=["node2"])
    cluster.info["free_memory"] = 200
    del cluster.links["node2"]["app1.root.node2"]
    result = recover(dry_run=True)
    assert result["refused"] == ["app1"] and result["started"] == ["web1"]
    assert "survivor_memory" not in checks(by_guest(result)["app1"])


def test_memory_unknown_is_refused(cluster):
    cluster.info = "ERROR: xl info failed (rc 1)"
    result = recover(dry_run=True)
    assert checks(by_guest(result)["web1"])["survivor_memory"]["message"].startswith(
        "the free memory of node2 is not known: node2: xencluster_xl.info failed")


# --- which guests: pinned, last seen ---------------------------------------------------------------


def test_guests_last_seen_on_the_node_are_recovered_too(monkeypatch, dom0, cfg_dir, bus, opts):
    cluster = make_cluster(monkeypatch, RAW3, dom0, cfg_dir)
    seen_last(opts, {"app1": ["node1"], "stray": ["node1"], "db1": ["node2"], "web1": ["node1"]}, at=1767225600)
    result = recover(dry_run=True)
    assert [(e["guest"], e["pinned"], e["last_seen"]) for e in result["guests"]] == [
        ("app1", False, True), ("web1", True, True)]  # fmt: skip
    assert result["unknown"] == ["stray"]
    assert result["last_seen"] == {"at": 1767225600, "guests": ["app1", "stray", "web1"], "error": None}
    assert result["retcode"] == 0  # a name the model does not know starts nothing and fails nothing
    assert result["message"] == ("dry run: recovering node1: 2 would start (app1, web1); last seen on node1 but not "
                                 "in the model: stray")  # fmt: skip
    assert cluster.funs() == [[REPORT, INFO], DEGRADED, DEGRADED]


def test_without_a_record_only_the_pinned_guests_are_known(cluster):
    result = recover(dry_run=True)
    assert [e["guest"] for e in result["guests"]] == ["web1"]
    assert result["last_seen"] == {"at": None, "guests": [], "error": None}
    assert result["message"].endswith("; no record of where guests were last seen (salt-run xencluster.verify keeps "
                                      "one): only the guests pinned to node1 are known")  # fmt: skip


def test_an_unreadable_record_is_said_and_fails_the_run(cluster, monkeypatch, context):
    class Broken:
        """A master cache that lists no drained node and cannot be read."""

        def list(self, bank):
            return []

        def fetch(self, bank, key):
            raise runner.SaltCacheError("permission denied")

    monkeypatch.setattr(runner.salt.cache, "factory", lambda opts: Broken())
    result = recover(dry_run=True)
    assert by_guest(result)["web1"]["outcome"] == "would_start"
    assert result["last_seen"]["error"] == ("the master cache xencluster/last_seen/guests cannot be read: "
                                            "permission denied")  # fmt: skip
    assert result["retcode"] == 1 and context["retcode"] == 1
    assert "a guest only last seen on node1 is missing from this list" in result["message"]


def test_the_last_seen_helper_tolerates_absence_and_bad_shapes(opts):
    assert runner._last_seen_on("node1") == {"at": None, "guests": [], "error": None}
    salt.cache.factory(opts).store("xencluster/last_seen", "guests", ["not", "a", "record"])
    assert runner._last_seen_on("node1")["guests"] == []
    seen_last(opts, {"web1--incoming": ["node1"], "Bad Name": ["node1"], "db1": "node1", "x": ["node2"]}, at=True)
    assert runner._last_seen_on("node1") == {"at": None, "guests": ["web1--incoming"], "error": None}


def test_lost_guests_is_pure():
    model = model_mod.validate(copy.deepcopy(RAW3))
    assert runner.lost_guests(model, "node1", ["web1--migratedaway", "ghost"]) == (
        {"web1": {"pinned": True, "last_seen": True}}, ["ghost"])  # fmt: skip
    assert runner.lost_guests(model, "node2", []) == ({"db1": {"pinned": True, "last_seen": False}}, [])


# --- the dry run -----------------------------------------------------------------------------------


def test_the_dry_run_checks_everything_and_starts_nothing(cluster, bus, jid_event, context, cfg_dir):
    result = recover(dry_run=True)
    assert cluster.funs() == [[REPORT, INFO], DEGRADED]
    _tgt, _fun, args, kwargs = cluster.calls[1]
    assert args == ([f"{cfg_dir}/web1.cfg", WEB1_DEAD],) and kwargs["kwarg"] == {"dry_run": True}
    assert kwargs["timeout"] == 7
    web1 = by_guest(result)["web1"]
    assert [c["check"] for c in web1["checks"]] == list(runner.RECOVER_CHECKS)
    assert all(c["ok"] for c in web1["checks"])
    assert (web1["outcome"], web1["on"], web1["survivor"]) == ("would_start", "node2", "node2")
    assert web1["without_legs"] == ["web1.root.node1", "web1.data.node1"]
    assert web1["legs"] == ["web1.root.node2", "web1.data.node2"]
    assert web1["message"] == "would start web1 on node2 degraded, without legs web1.root.node1, web1.data.node1"
    assert checks(web1)["survivor_config"]["message"] == (
        f"{cfg_dir}/web1.cfg on node2 without web1.root.node1, web1.data.node1: "
        "xvdb=/dev/xencluster/web1.root.node2, xvdd=/dev/xencluster/web1.data.node2")  # fmt: skip
    assert (result["result"], result["retcode"], result["dry_run"]) == (True, 0, True) and context == {}
    assert dom0_creates(cluster) == [] and bus.events == [] and jid_event.fire_event.call_count == 0
    assert set(xl_mod.list_domains()) == {"db1"}
    json.dumps(result)


# --- the start -------------------------------------------------------------------------------------


def test_the_degraded_start_omits_exactly_the_dead_legs_and_keeps_the_vdevs(cluster, cfg_dir, context):
    defined = (cfg_dir / "web1.cfg").read_text()
    result = recover(timeout=90)
    [created] = cluster.dom0.created
    # the state's own file, with only the disk line changed: node2's legs, at their own vdevs
    assert created == defined.replace(
        'disk = [ "format=raw,vdev=xvda,access=rw,target=/dev/xencluster/web1.root.node1", '
        '"format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/web1.root.node2", '
        '"format=raw,vdev=xvdc,access=rw,target=/dev/xencluster/web1.data.node1", '
        '"format=raw,vdev=xvdd,access=rw,target=/dev/xencluster/web1.data.node2" ]',
        'disk = [ "format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/web1.root.node2", '
        '"format=raw,vdev=xvdd,access=rw,target=/dev/xencluster/web1.data.node2" ]')  # fmt: skip
    assert created != defined and (cfg_dir / "web1.cfg").read_text() == defined  # the state's file is left alone
    assert cluster.funs() == [[REPORT, INFO], DEGRADED, LIST, DEGRADED, SCHED, LIST]
    starts = [(c[2], c[3]) for c in cluster.calls if c[1] == DEGRADED]
    assert [s[0] for s in starts] == [([f"{cfg_dir}/web1.cfg", WEB1_DEAD],)] * 2
    assert [(s[1]["kwarg"], s[1]["timeout"]) for s in starts] == [({"dry_run": True}, 7), ({"dry_run": False}, 90)]
    assert [c[0] for c in cluster.calls if c[1] == LIST] == [["node2"], ["node2"]]  # every node but the lost one
    web1 = by_guest(result)["web1"]
    assert (web1["outcome"], web1["on"]) == ("started", "node2")
    assert web1["disk"] == ["format=raw,vdev=xvdb,access=rw,target=/dev/xencluster/web1.root.node2",
                            "format=raw,vdev=xvdd,access=rw,target=/dev/xencluster/web1.data.node2"]
    assert web1["message"] == ("web1 started on node2 degraded, without legs web1.root.node1, web1.data.node1: "
                               "web1 runs on node2 (running)")  # fmt: skip
    assert (result["result"], result["retcode"], result["started"]) == (True, 0, ["web1"]) and context == {}
    assert xl_mod.list_domains()["web1"]["state"] == "running"
    assert ["xl", "sched-credit2", "-d", "web1", "-w", "256", "-c", "0"] in cluster.dom0.calls


def test_events_and_progress_of_a_start(cluster, bus, jid_event):
    result = recover()
    assert bus.tags() == ["xencluster/recover/node1/web1/started", "xencluster/recover/node1/web1/finished"]
    assert bus.events[0][1] == {"node": "node1", "guest": "web1", "survivor": "node2",
                                "without_legs": ["web1.root.node1", "web1.data.node1"]}  # fmt: skip
    assert bus.events[1][1] == by_guest(result)["web1"]
    assert progress(jid_event) == [
        "node1 marked drained: it takes no guest",
        "recovering node1: 1 guest(s) to start degraded",
        "web1: last check, then xl create on node2 without web1.root.node1, web1.data.node1",
        by_guest(result)["web1"]["message"],
        "recovering node1: 1 started (web1); no record of where guests were last seen (salt-run xencluster.verify "
        "keeps one): only the guests pinned to node1 are known",
    ]  # fmt: skip


def test_the_lost_node_is_marked_drained_before_a_start_and_not_in_a_dry_run(cluster):
    assert recover(dry_run=True)["drained"] is False and runner._drained() == []
    result = recover()
    assert result["drained"] is True and runner._drained() == ["node1"], result
    assert by_guest(result)["web1"]["outcome"] == "started"


def test_a_failed_create_fires_failed(cluster, bus, context):
    cluster.dom0.fail["create"] = "libxl: error: failed to find disk /dev/xencluster/web1.root.node2"
    result = recover()
    web1 = by_guest(result)["web1"]
    assert web1["outcome"] == "failed" and web1["on"] is None
    assert web1["message"].startswith(f"web1 was not started on node2: node2: {DEGRADED} failed: ERROR: xl create ")
    assert "failed (rc 1): libxl: error: failed to find disk /dev/xencluster/web1.root.node2" in web1["message"]
    assert web1["message"].endswith("; web1 is not running on node2: seen nowhere")
    assert cluster.funs() == [[REPORT, INFO], DEGRADED, LIST, DEGRADED, LIST]  # no sched without a guest
    assert bus.tags() == ["xencluster/recover/node1/web1/started", "xencluster/recover/node1/web1/failed"]
    assert (result["result"], result["retcode"], result["refused"]) == (False, 1, ["web1"]) and context["retcode"] == 1


def test_the_last_check_finds_the_guest_started_meanwhile(cluster, bus):
    cluster.at_list.append(lambda: cluster.dom0.add("web1", "running"))  # someone ran xencluster_guest.running
    result = recover()
    web1 = by_guest(result)["web1"]
    assert (web1["outcome"], web1["on"]) == ("skipped", "node2")
    assert web1["message"] == "web1: web1 already runs on node2 (running) (seen just before the start): not started"
    assert dom0_creates(cluster) == [] and result["retcode"] == 0
    assert bus.tags()[-1] == "xencluster/recover/node1/web1/finished"


def test_a_double_run_seen_at_the_last_check_stops_the_rest(monkeypatch, dom0, cfg_dir, bus, opts, context):
    running = {}
    cluster = make_cluster(monkeypatch, three_nodes(RAW3), dom0, cfg_dir, others={"node3": running})
    seen_last(opts, {"app1": ["node1"]})
    # between the round and the first start, db1 shows up on node3 as well
    cluster.at_list.append(lambda: running.update(db1={"domid": 4, "type": "pvh", "memory": 1, "vcpus": 1,
                                                       "state": "running"}))  # fmt: skip
    result = recover()
    app1, web1 = by_guest(result)["app1"], by_guest(result)["web1"]
    assert app1["outcome"] == "failed" and app1["message"] == (
        "not starting app1: ECLUSTERDOUBLERUN: DOUBLE RUN of db1 on node2 and node3 seen just before the start")
    assert web1["outcome"] == "refused" and "a DOUBLE RUN was seen during the recovery" in web1["message"]
    assert (result["retcode"], context["retcode"]) == (2, 2) and dom0_creates(cluster) == []
    assert bus.tags() == ["xencluster/recover/node1/app1/started", "xencluster/recover/node1/app1/failed"]


def test_a_node_silent_at_the_last_check_fails_that_guest(monkeypatch, dom0, cfg_dir, bus):
    cluster = make_cluster(monkeypatch, three_nodes(), dom0, cfg_dir, others={"node3": {}})
    cluster.at_list.append(lambda: cluster.others.pop("node3"))
    web1 = by_guest(recover())["web1"]
    assert web1["outcome"] == "failed"
    assert web1["message"] == "not starting web1: node3 did not tell its domains just before the start"
    assert dom0_creates(cluster) == []
