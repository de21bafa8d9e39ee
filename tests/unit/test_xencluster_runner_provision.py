"""xencluster.provision runner: the allow-list, refusals, where the guest runs, leg tags, the flows, the key.

The model is the frozen lab model (``tests/unit/data/two_node_model.sls``,
web1 on node1/node2, db1 on node2/node1) validated by the real validator, then
web1 given a ``provision`` dict written here in the shape the model normalises
it to (SYNTHETIC; the validator's provision part is not used). The dom0s and
the guest minion are a fake LocalClient (``Cluster``) answering each function
in the documented shape of its module (SYNTHETIC): ``list_domains`` (locate),
``state.single`` (legs, define, start), ``xencluster_lvm.report`` (only the
``lvs`` tags are read), ``xencluster_provision.install``/``plan``,
``xencluster_lvm.lv_tags``, ``test.ping`` and ``state.highstate``. The locks,
the journal and the provisioned record are the real master cache under a tmp
cachedir; the master's pki_dir is a tmp dir.
"""

import copy
import json
import os
import pathlib
from unittest.mock import MagicMock

import pytest
import salt.cache
import salt.config
import salt.crypt
import salt.utils.yaml

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.runners import xencluster as runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
RAW = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())["xencluster"]
PROV = {"source": "image", "image": "/srv/xencluster/images/bookworm.tar.zst", "debootstrap": None,
        "address": "10.99.0.12/24", "gateway": "10.99.0.1", "dns": ["10.99.0.53"], "master": "salt.lab",
        "highstate": True, "final_backup": False}  # fmt: skip
WEB1_LVS = ["web1.root.node1", "web1.root.node2", "web1.data.node1", "web1.data.node2"]
LIST = runner._FUN


def model_with_provision(provision=PROV):
    model = model_mod.validate(copy.deepcopy(RAW))
    for name, spec in model["guests"].items():
        spec["provision"] = copy.deepcopy(provision) if name == "web1" else None
    return model


class Bus:
    """The master event bus: fired events recorded; a listening bus hands out ``pending`` events."""

    def __init__(self):
        self.events, self.subscribed, self.pending = [], [], []

    def __call__(self, opts, sock_dir, listen=True):
        assert sock_dir == opts["sock_dir"]
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def fire_event(self, data, tag):
        json.dumps(data)
        self.events.append((tag, data))

    def subscribe(self, tag):
        self.subscribed.append(tag)

    def get_event(self, wait=5, tag=None, full=False):
        for i, event in enumerate(self.pending):
            if event["tag"] == tag:
                return self.pending.pop(i)
        return None

    def tags(self):
        return [tag for tag, _data in self.events]


class Cluster:
    """LocalClient.cmd for the dom0s node1/node2 and the guest minion web1."""

    def __init__(self):
        self.domains = {"node1": {}, "node2": {}}
        self.silent = set()  # minions that do not answer
        self.list_answers = {}  # minion -> a full_return answer of list_domains instead of its domains
        self.tags = {lv: False for lv in WEB1_LVS}
        self.answers = {}  # fun -> an answer replacing the default
        self.guest_up = False
        self.calls = []

    def __call__(self, tgt, fun, arg=(), timeout=None, tgt_type=None, full_return=False, kwarg=None):
        assert tgt_type == "list" and isinstance(timeout, int), (tgt, fun, tgt_type, timeout)
        self.calls.append((list(tgt), fun, list(arg), dict(kwarg or {})))
        if fun == "test.ping":
            return {m: True for m in tgt if m == "web1" and self.guest_up}
        assert full_return is True, fun
        out = {}
        for minion in tgt:
            if minion in self.silent:
                continue
            if fun in self.answers:
                out[minion] = self.answers[fun]
            elif fun == LIST and minion in self.list_answers:
                out[minion] = self.list_answers[minion]
            else:
                out[minion] = {"ret": self.ret(minion, fun, list(arg), kwarg or {}), "retcode": 0}
        return out

    def ret(self, minion, fun, arg, kwarg):
        if fun == LIST:
            return copy.deepcopy(self.domains[minion])
        if fun == runner.STATE_SINGLE_FUN:
            if arg == [runner.RUNNING_STATE]:
                self.domains["node1"]["web1"] = {"state": "running"}
            return {f"{arg[0]}_|-{kwarg['name']}": {"result": True, "comment": f"{arg[0]} ok", "changes": {}}}
        if fun == runner.LVM_FUN:
            return {"pvs": {}, "vgs": {}, "lvs": {f"xcvg/{lv}": {"tags": [runner.PROVISIONED_TAG] if tagged else []}
                                                 for lv, tagged in self.tags.items() if lv.endswith(minion)}}
        if fun == runner.INSTALL_FUN:
            return {"guest": arg[0], "node": minion, "changed": True, "plan": {},
                    "steps": [{"step": "array root", "changed": True, "detail": "created", "seconds": 1.0}]}
        if fun == runner.PLAN_FUN:
            return {"guest": arg[0], "node": minion, "disks": [], "problems": []}
        if fun == runner.LV_TAGS_FUN:
            self.tags[arg[1]] = True
            return {"changed": True}
        if fun == "state.highstate":
            return {"pkg_|-salt_|-salt_|-installed": {"result": True, "comment": "ok", "changes": {"x": 1}}}
        raise AssertionError(f"unexpected function {fun} on {minion}")

    def funs(self):
        return [fun for _tgt, fun, _a, _k in self.calls]

    def of(self, fun):
        return [(tgt, args, kwarg) for tgt, f, args, kwarg in self.calls if f == fun]


@pytest.fixture
def context():
    return {}


@pytest.fixture
def jid_event():
    return MagicMock()


@pytest.fixture
def opts(tmp_path):
    return dict(salt.config.DEFAULT_MASTER_OPTS, conf_file="/etc/salt/master", sock_dir=str(tmp_path / "sock"),
                cachedir=str(tmp_path / "cache"), pki_dir=str(tmp_path / "pki"))  # fmt: skip


@pytest.fixture
def configure_loader_modules(context, jid_event, opts):
    return {runner: {"__opts__": opts, "__context__": context, "__jid_event__": jid_event}}


@pytest.fixture
def bus(monkeypatch):
    bus = Bus()
    monkeypatch.setattr(runner.salt.utils.event, "get_master_event", bus)
    return bus


@pytest.fixture
def model():
    return model_with_provision()


@pytest.fixture
def cluster(monkeypatch, bus, model, opts):
    cluster = Cluster()
    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=cluster)))
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", {"raw": True}))
    monkeypatch.setattr(runner, "_validate", lambda raw: copy.deepcopy(model))
    monkeypatch.setattr(runner, "_accepted", set)  # every dom0 has an accepted key
    monkeypatch.setattr(runner, "_ping", lambda client, guest, timeout=10: cluster.guest_up)
    # node1's minion key, as the master holds it
    _private, public = salt.crypt.gen_keys(2048)
    os.makedirs(os.path.join(opts["pki_dir"], "minions"))
    pathlib.Path(opts["pki_dir"], "minions", "node1").write_text(public)
    return cluster


def cache(opts):
    return salt.cache.Cache(opts)


# --- the allow-list -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allow, requester, allowed",
    [(["node1", "node2"], "node1", True), (["node1", "node2"], "node3", False), (["node*"], "node7", True),
     (["node?"], "node12", False), (["node*"], "web1", False), ([], "node1", False), (None, "node1", False),
     ("node1", "node1", True), ("node1", "node11", False), ("node*", "node2", True), ([7, "node1"], "node1", True),
     (["NODE1"], "node1", False)],
)  # fmt: skip
def test_allowed_requester(opts, allow, requester, allowed):
    if allow is not None:
        opts[runner.PROVISION_ALLOW_OPT] = allow
    why = runner._allowed_requester(requester)
    assert (why is None) is allowed
    if not allowed:
        assert why.startswith(f"minion {requester} is not allowed to ask for provisioning (master config "
                              f"xencluster_provision_allow: ")  # fmt: skip
        assert why.endswith("empty)") == (not allow)


def test_a_requester_not_allowed_is_refused_before_anything(cluster, bus, opts, context, monkeypatch):
    opts[runner.PROVISION_ALLOW_OPT] = ["node2"]
    monkeypatch.setattr(runner, "_pillar_model", MagicMock(side_effect=AssertionError("model read")))
    res = runner.provision("web1", requested_by="node1")
    assert (res["result"], res["retcode"], context["retcode"]) == (False, 1, 1)
    assert res["message"] == ("refused: minion node1 is not allowed to ask for provisioning (master config "
                              "xencluster_provision_allow: node2)")  # fmt: skip
    assert cluster.calls == [] and res["steps"] == [] and res["changes"] == {}
    assert bus.events == [("xencluster/provision/refused", {"guest": "web1", "requested_by": "node1",
                                                            "message": res["message"][len("refused: "):]})]
    assert cache(opts).list(runner.LOCKS_BANK) == []


def test_an_allowed_requester_is_let_through(cluster, bus, opts):
    opts[runner.PROVISION_ALLOW_OPT] = ["node*"]
    res = runner.provision("web1", dry_run=True, requested_by="node2")
    assert res["result"] is None and res["requested_by"] == "node2" and "xencluster/provision/refused" not in bus.tags()


# --- refusals and arguments ---------------------------------------------------------------------------


def test_a_guest_not_in_the_model(cluster, bus, context):
    res = runner.provision("web9")
    assert res["message"] == "refused: no guest web9 in the cluster model (guests: db1, web1)"
    assert (res["result"], context["retcode"], cluster.calls) == (False, 1, [])
    assert bus.tags() == ["xencluster/provision/refused"]


def test_a_guest_without_provision(cluster, bus, opts):
    res = runner.provision("db1")
    assert res["result"] is False and res["message"].startswith(
        "refused: guest db1 has no provision settings (pillar xencluster.guests.db1.provision)")
    assert cluster.calls == [] and bus.tags() == ["xencluster/provision/refused"]
    assert cache(opts).list(runner.LOCKS_BANK) == [] and cache(opts).list(runner.OPS_BANK) == []


def test_an_unreadable_model_is_a_refusal(cluster, monkeypatch):
    monkeypatch.setattr(runner, "_pillar_model", MagicMock(side_effect=runner.CommandExecutionError("no pillar")))
    res = runner.provision("web1")
    assert res["result"] is False and res["message"] == "refused: no pillar" and cluster.calls == []


def test_provision_plan_pure(model):
    assert runner.provision_plan(model, "web1")[0] == "node1"
    model["guests"]["web1"]["node"] = None
    assert runner.provision_plan(model, "web1")[0] == "node1"  # the first of its nodes
    with pytest.raises(runner.SaltInvocationError, match="no guest web9"):
        runner.provision_plan(model, "web9")


@pytest.mark.parametrize(
    "args, kwargs, says",
    [(("Web1",), {}, "guest"), (("web1; reboot",), {}, "guest"), ((1234,), {}, "guest"), (("",), {}, "guest"),
     (("web1",), {"dry_run": "yes"}, "dry_run"), (("web1",), {"dry_run": 1}, "dry_run"),
     (("web1",), {"install_timeout": 0}, "install_timeout"), (("web1",), {"minion_wait": True}, "minion_wait"),
     (("web1",), {"highstate_timeout": "60"}, "highstate_timeout"),
     (("web1",), {"check_timeout": 86401}, "check_timeout"),
     (("web1",), {"requested_by": "node1; rm"}, "requested_by"), (("web1",), {"requested_by": 5}, "requested_by")],
)  # fmt: skip
def test_bad_arguments_are_returned_refusals_and_publish_nothing(cluster, bus, context, opts, args, kwargs, says):
    res = runner.provision(*args, **kwargs)  # returned, not raised: salt-run exits 0 on a raised error
    assert (res["result"], res["retcode"], context["retcode"]) == (False, 1, 1)
    assert res["message"].startswith("refused: ") and says in res["message"]
    assert cluster.calls == [] and bus.tags() == ["xencluster/provision/refused"]
    assert cache(opts).list(runner.OPS_BANK) == []


def test_check_provision_args_accepts_good_ones():
    runner._check_provision_args("web1", False, {"install_timeout": 3600, "check_timeout": 30}, None)
    runner._check_provision_args("web1", True, {}, "node1.lab-x_y")


def test_rerun_of_provision():
    assert runner._rerun("provision", {"guest": "web2"}) == "salt-run xencluster.provision web2"


# --- where it runs, its tags --------------------------------------------------------------------------


def test_where_runs(cluster, model):
    assert runner._where_runs(None, model, "web1", 5) == []
    cluster.domains["node2"]["web1"] = {"state": "running"}
    cluster.domains["node1"]["db1"] = {"state": "running"}
    assert runner._where_runs(None, model, "web1", 5) == ["node2"]
    cluster.domains["node1"]["web1--incoming"] = {"state": "paused"}  # a migration: seen on both
    assert runner._where_runs(None, model, "web1", 5) == ["node1", "node2"]
    assert cluster.of(LIST)[0] == (["node1", "node2"], [], {})


def test_where_runs_fails_when_a_dom0_cannot_tell(cluster, model):
    cluster.silent.add("node2")
    with pytest.raises(runner._ProvisionFailed, match="cannot tell where web1 runs: no answer from node2"):
        runner._where_runs(None, model, "web1", 5)
    cluster.silent.clear()
    cluster.list_answers["node1"] = {"ret": "ERROR: xl list failed", "retcode": 1}
    with pytest.raises(runner._ProvisionFailed, match="no answer from node1"):
        runner._where_runs(None, model, "web1", 5)


def test_where_runs_asks_a_silent_dom0_again_before_giving_up(cluster, model, monkeypatch):
    real_locate, rounds = runner.locate, []

    def locate(**kwargs):  # node2 misses the first round only (a busy dom0 misses a find_job)
        rounds.append(kwargs["tgt"])
        if len(rounds) == 1:
            cluster.silent.add("node2")
        else:
            cluster.silent.discard("node2")
        return real_locate(**kwargs)

    monkeypatch.setattr(runner, "locate", locate)
    cluster.domains["node2"]["web1"] = {"state": "running"}
    assert runner._where_runs(None, model, "web1", 5) == ["node2"]
    assert rounds == [["node1", "node2"], ["node2"]]  # only the silent one is asked again
    rounds.clear()
    cluster.silent.add("node2")
    monkeypatch.setattr(runner, "locate", lambda **kw: (rounds.append(kw["tgt"]), real_locate(**kw))[1])
    with pytest.raises(runner._ProvisionFailed, match="no answer from node2"):
        runner._where_runs(None, model, "web1", 5)
    assert len(rounds) == runner.LOCATE_ROUNDS


def test_where_runs_fails_when_a_dom0_has_no_xencluster_xl(cluster, model):
    cluster.list_answers["node2"] = {"ret": f"'{LIST}' is not available.", "retcode": 254}
    with pytest.raises(runner._ProvisionFailed, match="no answer from node2"):
        runner._where_runs(None, model, "web1", 5)


def test_leg_tags(cluster, model):
    client = runner._local_client()
    assert runner._leg_tags(client, model, model["guests"]["web1"], 5) == {lv: False for lv in WEB1_LVS}
    cluster.tags["web1.data.node2"] = True
    del cluster.tags["web1.root.node1"]  # an LV that is not there
    assert runner._leg_tags(client, model, model["guests"]["web1"], 5) == {
        "web1.root.node1": False, "web1.root.node2": False, "web1.data.node1": False, "web1.data.node2": True}
    assert [tgt for tgt, _a, _k in cluster.of(runner.LVM_FUN)] == [["node1"], ["node2"]] * 2
    cluster.silent.add("node2")
    with pytest.raises(runner._ProvisionFailed, match="no LVM report from node2"):
        runner._leg_tags(client, model, model["guests"]["web1"], 5)


# --- the flows ----------------------------------------------------------------------------------------


def started(bus):
    bus.pending.append({"tag": "salt/minion/web1/start", "data": {}})


def test_a_fresh_provisioning(cluster, bus, opts, context, jid_event):
    started(bus)
    cluster.guest_up = True
    res = runner.provision("web1")
    assert (res["result"], res["retcode"], context["retcode"]) == (True, 0, 0), res["message"]
    assert res["message"] == "web1 is provisioned and running on node1; its minion answers"
    assert [s["step"] for s in res["steps"]] == ["locate", "legs", "check tags", "install", "accept key", "tag legs",
                                                 "define", "start", "minion", "highstate"]  # fmt: skip
    [(tgt, args, kwarg)] = cluster.of(runner.INSTALL_FUN)
    assert (tgt, args, sorted(kwarg["minion_key"])) == (["node1"], ["web1"], ["ciphertext", "nonce", "pub",
                                                                              "sealed_key"])  # fmt: skip
    sealed = kwarg["minion_key"]
    accepted = pathlib.Path(opts["pki_dir"], "minions", "web1").read_text()
    assert accepted == sealed["pub"] and "PRIVATE" not in json.dumps(res)
    assert sorted(args[1] for _t, args, _k in cluster.of(runner.LV_TAGS_FUN)) == sorted(WEB1_LVS)
    assert all(k == {"add": [runner.PROVISIONED_TAG]} for _t, _a, k in cluster.of(runner.LV_TAGS_FUN))
    assert cache(opts).fetch(runner.PROVISIONED_BANK, "web1")["highstate_done"] is True
    # defined on both nodes of its pair (home first), started on its home node only
    states = [(tgt, args[0]) for tgt, args, _k in cluster.of(runner.STATE_SINGLE_FUN) if args[0] != runner.LEGS_STATE]
    assert states == [(["node1"], runner.DEFINED_STATE), (["node2"], runner.DEFINED_STATE),
                      (["node1"], runner.RUNNING_STATE)], states  # fmt: skip
    assert "xencluster/provision/web1/done" in bus.tags() and bus.subscribed == ["salt/minion/web1/start"]
    assert cache(opts).list(runner.LOCKS_BANK) == []  # released
    [record] = runner._op_records(cache(opts)).values()
    assert (record["verb"], record["status"], record["rerun"]) == ("provision", "finished",
                                                                  "salt-run xencluster.provision web1")


def test_the_live_flow_skips_the_install_when_every_leg_is_tagged(cluster, bus, opts):
    cluster.tags = {lv: True for lv in WEB1_LVS}
    started(bus)
    cluster.guest_up = True
    res = runner.provision("web1")
    assert res["result"] is True, res["message"]
    assert [s["step"] for s in res["steps"]] == ["locate", "legs", "check tags", "define", "start", "minion",
                                                 "highstate"]  # fmt: skip
    assert runner.INSTALL_FUN not in cluster.funs() and runner.LV_TAGS_FUN not in cluster.funs()
    assert not os.path.exists(os.path.join(opts["pki_dir"], "minions", "web1"))


def test_already_provisioned_and_running_is_nothing_to_do(cluster, bus, opts):
    cluster.tags = {lv: True for lv in WEB1_LVS}
    cluster.domains["node2"]["web1"] = {"state": "running"}
    runner._remember_provisioned("web1", {"node": "node2", "highstate_done": True, "at": 1})
    res = runner.provision("web1")
    assert (res["result"], res["retcode"]) == (True, 0)
    assert res["message"] == "web1 is already provisioned and running on node2: nothing to do"
    assert res["changes"] == {} and [s["step"] for s in res["steps"]] == ["locate", "check tags"]
    assert set(cluster.funs()) == {LIST, runner.LVM_FUN}


def test_running_without_the_record_waits_for_its_minion_and_highstates(cluster, bus, opts):
    cluster.tags = {lv: True for lv in WEB1_LVS}
    cluster.domains["node1"]["web1"] = {"state": "running"}
    cluster.guest_up = True
    res = runner.provision("web1")
    assert res["result"] is True and [s["step"] for s in res["steps"]] == ["locate", "check tags", "minion",
                                                                           "highstate"]  # fmt: skip
    assert cache(opts).fetch(runner.PROVISIONED_BANK, "web1")["node"] == "node1"


def test_running_with_untagged_legs_is_refused(cluster, bus):
    cluster.domains["node1"]["web1"] = {"state": "running"}
    res = runner.provision("web1")
    assert res["result"] is False and "runs on node1 but its legs are not tagged xencluster.provisioned" in \
        res["message"]  # fmt: skip
    assert runner.INSTALL_FUN not in cluster.funs() and "xencluster/provision/web1/failed" in bus.tags()


def test_a_double_run_is_refused(cluster, bus):
    cluster.domains["node1"]["web1"] = {"state": "running"}
    cluster.domains["node2"]["web1"] = {"state": "running"}
    res = runner.provision("web1")
    assert res["result"] is False and res["message"] == "web1: DOUBLE RUN: web1 is running on node1, node2"
    assert set(cluster.funs()) == {LIST}


def test_a_dom0_that_does_not_answer_stops_the_run(cluster, bus, opts):
    cluster.silent.add("node2")
    res = runner.provision("web1")
    assert res["result"] is False and res["message"] == "web1: cannot tell where web1 runs: no answer from node2"
    assert set(cluster.funs()) == {LIST} and res["retcode"] == 1
    assert runner._op_records(cache(opts)).popitem()[1]["status"] == "failed"


def test_a_failed_install_is_said_and_nothing_is_accepted(cluster, bus, opts):
    cluster.answers[runner.INSTALL_FUN] = {"ret": "ERROR: web1 cannot be provisioned on node1: disk root: ...",
                                           "retcode": 1}  # fmt: skip
    res = runner.provision("web1")
    assert res["result"] is False and res["message"].startswith("web1: install on node1: ")
    assert "cannot be provisioned on node1" in res["message"]
    assert not os.path.exists(os.path.join(opts["pki_dir"], "minions", "web1"))
    assert runner.LV_TAGS_FUN not in cluster.funs() and runner.STATE_SINGLE_FUN in cluster.funs()
    assert cache(opts).fetch(runner.PROVISIONED_BANK, "web1") in (None, {})


def test_the_dry_run_changes_nothing(cluster, bus, opts):
    res = runner.provision("web1", dry_run=True)
    assert res["result"] is None and res["retcode"] == 0
    assert res["message"] == ("would provision web1 on node1: legs, arrays and filesystems, OS from "
                              "/srv/xencluster/images/bookworm.tar.zst, key, start, minion, highstate")  # fmt: skip
    assert set(cluster.funs()) == {LIST, runner.STATE_SINGLE_FUN, runner.PLAN_FUN}
    assert all(k["test"] is True for _t, _a, k in cluster.of(runner.STATE_SINGLE_FUN))
    assert bus.events == [] and cache(opts).list(runner.OPS_BANK) == []


def test_busy_when_the_guest_lock_is_held(cluster, bus, opts, context):
    holder, refusal = runner._begin("migrate", "web1", {"guest": "web1", "target": "node2"},
                                    [runner._lock_key("guest", "web1")], "migrate web1->node2")  # fmt: skip
    assert refusal is None
    res = runner.provision("web1")
    assert (res["result"], res["retcode"], res["busy"], context["retcode"]) == (False, 1, True, 1)
    assert res["message"].startswith("busy: web1 is locked by migrate web1->node2 (op ")
    assert cluster.calls == [] and bus.events == []
    assert cache(opts).fetch(runner.LOCKS_BANK, "guest.web1")["op"] == holder["op"]  # still the holder's


# --- the key --------------------------------------------------------------------------------------------


def test_accept_key_writes_it_and_drops_stray_keys(opts):
    pki = pathlib.Path(opts["pki_dir"])
    for kind in ("minions", *runner.KEY_DIRS):
        (pki / kind).mkdir(parents=True)
    for kind in runner.KEY_DIRS:
        (pki / kind / "web1").write_text(f"old {kind}")
    (pki / "minions_pre" / "web2").write_text("another minion")
    (pki / "minions" / "web1").write_text("an older accepted key")
    changed, detail = runner._accept_key("web1", "-----BEGIN PUBLIC KEY-----\nX\n-----END PUBLIC KEY-----\n")
    assert changed is True and detail == f"accepted the key of minion web1 ({pki / 'minions' / 'web1'})"
    assert (pki / "minions" / "web1").read_text() == "-----BEGIN PUBLIC KEY-----\nX\n-----END PUBLIC KEY-----\n"
    assert ((pki / "minions" / "web1").stat().st_mode & 0o777) == 0o644
    assert all(not (pki / kind / "web1").exists() for kind in runner.KEY_DIRS)
    assert (pki / "minions_pre" / "web2").read_text() == "another minion"
    assert sorted(os.listdir(pki / "minions")) == ["web1"]  # no temporary file left
    runner._accept_key("web1", "again")  # no stray key to remove: fine
    assert (pki / "minions" / "web1").read_text() == "again"
