"""xencluster.migrate runner: every pre-check, dry run, publish sequence, events, failure paths, retcode.

The dom0 answers are built through the REAL parsers of ``xencluster_xl`` from
the recordings: ``list_domains`` over ``xl/lab-node1-probe-pair`` (its running
PVH ``probe``, 128 MiB, renamed to the model's guest) or
``xl/lab-node1-pvh-crashed``, and ``info`` over the same recording's ``xl
info`` (Xen 4.17.7, 1125 MiB free; used for both nodes). Renamed copies are
SYNTHETIC in their names only. ``xencluster_disk.links`` has no recording:
its entries are written here in the documented shape (SYNTHETIC). The model is
the frozen lab model ``tests/unit/data/two_node_model.sls``.
"""

import copy
import json
import pathlib
from unittest.mock import MagicMock

import pytest
import salt.config
import salt.utils.yaml

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl_mod
from saltext.xencluster.runners import xencluster as runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
XL_REC = ROOT / "tests" / "recordings" / "xl"
RAW = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())["xencluster"]
MODEL = model_mod.validate(copy.deepcopy(RAW))
REPORT, INFO, XL_MIGRATE, LIST = (
    "xencluster_node.report", "xencluster_xl.info", "xencluster_xl.migrate", "xencluster_xl.list_domains",
)  # fmt: skip
NOT_A_DOM0 = ("'xencluster_node' __virtual__ returned False: xencluster_node: not a Xen dom0 "
              "(no control_d in /proc/xen/capabilities)")  # fmt: skip


# --- dom0 answers from the recordings ------------------------------------------------------


def recorded_domains(monkeypatch, recording, renames):
    """list_domains() over ``xl/<recording>``, its domains renamed by ``renames`` ({old: new})."""
    outputs = {tuple(xl_mod.XL_LIST_LONG): (XL_REC / recording / "xl_list_l.out").read_text(),
               tuple(xl_mod.XL_LIST): (XL_REC / recording / "xl_list.out").read_text()}  # fmt: skip
    monkeypatch.setattr(xl_mod, "_run", lambda argv: outputs[tuple(argv)])
    return {renames[name]: dom for name, dom in xl_mod.list_domains().items()}


def running(monkeypatch, *names):
    """The recorded running PVH probe under each of ``names``."""
    probe = recorded_domains(monkeypatch, "lab-node1-probe-pair", {"probe": "probe"})["probe"]
    return {name: dict(probe, domid=probe["domid"] + i) for i, name in enumerate(names)}


def recorded_info(recording="lab-node1-probe-pair", **changes):
    return dict(xl_mod._parse_info((XL_REC / recording / "xl_info.out").read_text()), **changes)


def node_links(model, node):
    """xencluster_disk.links() of a converged ``node``: its own legs on LVs, its partners' on iSCSI LUNs."""
    out = {}
    for i, guest in enumerate(sorted(model["guests"].values(), key=lambda g: g["name"])):
        if node not in guest["nodes"]:
            continue
        for j, leg in enumerate(leg for disk in guest["disks"] for leg in disk["legs"]):
            dev = f"dm-{i}{j}" if leg["node"] == node else f"sd{chr(97 + i * 8 + j)}"
            out[leg["lv"]] = {"path": leg["path"], "target": f"/dev/{dev}", "kind": "lv" if dev[:2] == "dm" else
                              "iscsi", "device": dev}  # fmt: skip
    return out


def answer(domains, links, info):
    """One ``full_return`` answer to the multi-function pre-check publish."""
    report = {"domains": domains, "lvm": {}, "lio": {}, "sessions": [], "links": links, "configs": ["db1", "web1"]}
    return {"ret": {REPORT: report, INFO: info}, "retcode": {REPORT: 0, INFO: 0}, "jid": "20260101000000000000"}


@pytest.fixture
def answers(monkeypatch):
    """Pre-check answers of a converged cluster: web1 on node1, db1 on node2."""
    return {
        "node1": answer(running(monkeypatch, "web1"), node_links(MODEL, "node1"), recorded_info()),
        "node2": answer(running(monkeypatch, "db1"), node_links(MODEL, "node2"), recorded_info()),
    }


def facts_of(answers, model=MODEL):
    return {n: runner.node_facts(n, spec["minion"], answers.get(spec["minion"]))
            for n, spec in model["nodes"].items()}  # fmt: skip


def checks_of(answers, guest="web1", target=None, drained=(), model=MODEL):
    checks, source, target = runner.prechecks(model, guest, target, facts_of(answers, model), list(drained))
    return {c["check"]: c for c in checks}, source, target


def failed(checks):
    return sorted(name for name, c in checks.items() if not c["ok"])


def domains_of(answers, minion):
    return answers[minion]["ret"][REPORT]["domains"]


# --- the pre-checks (pure) --------------------------------------------------------------------


def test_every_check_passes_on_a_converged_cluster(answers):
    checks, source, target = checks_of(answers)
    assert list(checks) == list(runner.CHECKS) and failed(checks) == []
    assert (source, target) == ("node1", "node2")
    assert checks["runs_once"]["message"] == "web1 runs on node1 only (blocked)"
    assert checks["legs_on_target"]["message"].startswith("all 4 legs of web1")
    assert "(2 local LV(s), 2 iSCSI LUN(s))" in checks["legs_on_target"]["message"]
    assert checks["target_memory"]["message"] == "node2 has 1125 MiB free, web1 needs 128 MiB (its running domain)"
    assert checks["migratable"]["message"].startswith("web1 is a PVH guest")
    assert checks["xen_compatible"]["message"] == "node1 runs Xen 4.17.7, node2 Xen 4.17.7"


def test_the_other_way_round_for_db1(answers):
    checks, source, target = checks_of(answers, guest="db1")
    assert failed(checks) == [] and (source, target) == ("node2", "node1")


def test_runs_once_fails_when_the_guest_runs_nowhere(answers):
    domains_of(answers, "node1").clear()
    checks, source, target = checks_of(answers)
    assert source is None and target is None
    assert "web1 runs on no node of its pair (node1, node2)" in checks["runs_once"]["message"]
    assert failed(checks) == sorted(runner.CHECKS[:5] + runner.CHECKS[6:])  # the model still says PVH


def test_runs_once_fails_on_a_double_run(answers, monkeypatch):
    domains_of(answers, "node2").update(running(monkeypatch, "web1"))
    checks, source, _target = checks_of(answers)
    assert source is None and checks["runs_once"]["ok"] is False
    assert checks["runs_once"]["message"].startswith("DOUBLE RUN: web1 runs on node1 and node2")


@pytest.mark.parametrize("name", ["web1--incoming", "web1--migratedaway"])
def test_runs_once_refuses_a_migration_in_flight(answers, monkeypatch, name):
    domains_of(answers, "node2").update(running(monkeypatch, name))
    checks, source, _target = checks_of(answers)
    assert source is None
    assert checks["runs_once"]["message"].startswith(f"a migration of web1 is in flight ({name} on node2)")


def test_runs_once_needs_every_node_of_the_pair(answers):
    del answers["node2"]
    checks, source, _target = checks_of(answers)
    assert source is None
    assert checks["runs_once"]["message"] == ("where web1 runs is not known (seen on node1): "
                                              "node2 (minion node2) did not answer")  # fmt: skip


def test_runs_once_refuses_a_crashed_guest(answers, monkeypatch):
    answers["node1"]["ret"][REPORT]["domains"] = recorded_domains(monkeypatch, "lab-node1-pvh-crashed",
                                                                  {"probe1": "web1"})  # fmt: skip
    checks, _source, _target = checks_of(answers)
    assert checks["runs_once"]["message"].startswith("web1 is crashed on node1, not running")


def test_runs_once_outside_the_pair(monkeypatch, answers):
    raw = copy.deepcopy(RAW)
    raw["nodes"]["node3"] = copy.deepcopy(raw["nodes"]["node2"])
    raw["nodes"]["node3"]["san"][0]["address"] = "192.168.100.3/24"
    model = model_mod.validate(raw)
    domains_of(answers, "node1").clear()
    answers["node3"] = answer(running(monkeypatch, "web1"), {}, recorded_info())
    checks, source, _target = checks_of(answers, target="node3", model=model)
    assert source is None and "web1 runs on node3, outside its pair (node1, node2)" in checks["runs_once"]["message"]
    assert checks["target_in_pair"]["message"].startswith("node3 is not in web1's pair (node1, node2)")


def test_target_outside_the_pair_and_unknown_target_and_the_source(answers):
    checks, _s, _t = checks_of(answers, target="node9")
    assert failed(checks) == ["legs_on_target", "target_in_pair", "target_memory", "xen_compatible"]
    assert checks["target_in_pair"]["message"] == "node9 is not a node of the model (node1, node2)"
    checks, _s, _t = checks_of(answers, target="node1")
    assert checks["target_in_pair"]["message"] == "web1 already runs on node1"


def test_a_drained_target_is_refused(answers):
    checks, _source, target = checks_of(answers, drained=["node2"])
    assert target == "node2" and failed(checks) == ["target_not_drained"]
    assert checks["target_not_drained"]["message"] == "node2 is drained: it takes no guest"


def test_legs_on_target_missing_and_wrong(answers):
    links = answers["node2"]["ret"][REPORT]["links"]
    del links["web1.data.node1"]
    links["web1.root.node2"] = dict(links["web1.root.node2"], kind="iscsi", target="/dev/sdq")
    checks, _s, _t = checks_of(answers)
    assert failed(checks) == ["legs_on_target"]
    message = checks["legs_on_target"]["message"]
    assert "/dev/xencluster/web1.data.node1 is missing" in message
    assert "/dev/xencluster/web1.root.node2 points to /dev/sdq (iscsi), not to its LV" in message


def test_legs_on_target_a_link_at_another_path(answers):
    links = answers["node2"]["ret"][REPORT]["links"]
    links["web1.root.node1"] = dict(links["web1.root.node1"], path="/dev/other/web1.root.node1")
    checks, _s, _t = checks_of(answers)
    assert "web1.root.node1 is at /dev/other/web1.root.node1, not /dev/xencluster/web1.root.node1" in (
        checks["legs_on_target"]["message"])


def test_legs_on_target_when_the_links_could_not_be_read(answers):
    answers["node2"]["ret"][REPORT]["links"] = {"error": "xencluster_disk.links: cannot list /dev/xencluster"}
    checks, _s, _t = checks_of(answers)
    assert failed(checks) == ["legs_on_target"]
    assert "node2: cannot read links: xencluster_disk.links: cannot list" in checks["legs_on_target"]["message"]


def test_target_memory_too_low(answers):
    answers["node2"]["ret"][INFO]["free_memory"] = 100
    checks, _s, _t = checks_of(answers)
    assert failed(checks) == ["target_memory"]
    assert checks["target_memory"]["message"] == "node2 has 100 MiB free, web1 needs 128 MiB (its running domain)"


def test_target_memory_exactly_enough_and_from_the_model(answers):
    answers["node2"]["ret"][INFO]["free_memory"] = 128
    domains_of(answers, "node1")["web1"]["memory"] = None  # e.g. listed from plain xl list without config
    checks, _s, _t = checks_of(answers)
    assert checks["target_memory"] == {"check": "target_memory", "ok": True,
                                       "message": "node2 has 128 MiB free, web1 needs 128 MiB (the model)"}


def test_a_pv_guest_is_not_migratable(answers):
    domains_of(answers, "node1")["web1"]["type"] = "pv"
    checks, _s, _t = checks_of(answers)
    assert failed(checks) == ["migratable"]
    assert "shadow paging" in checks["migratable"]["message"] and "PV guest" in checks["migratable"]["message"]


def test_hvm_is_migratable_and_an_unknown_type_is_not(answers):
    domains_of(answers, "node1")["web1"]["type"] = "hvm"
    assert checks_of(answers)[0]["migratable"]["ok"] is True
    domains_of(answers, "node1")["web1"]["type"] = None  # unknown: the model's type is used
    assert checks_of(answers)[0]["migratable"]["message"] == "web1 is a PVH guest (the model): live-migratable"


def test_xen_versions_must_match(answers):
    answers["node2"]["ret"][INFO].update(xen_minor=18, xen_extra=".1")
    checks, _s, _t = checks_of(answers)
    assert failed(checks) == ["xen_compatible"]
    assert checks["xen_compatible"]["message"] == "node1 runs Xen 4.17.7, node2 Xen 4.18.1: not the same major.minor"


def test_xl_info_failing_on_the_target(answers):
    answers["node2"]["ret"][INFO] = "ERROR: xl info failed (rc 1): cannot connect"
    answers["node2"]["retcode"][INFO] = 1
    checks, _s, _t = checks_of(answers)
    assert failed(checks) == ["target_memory", "xen_compatible"]
    assert "node2: xencluster_xl.info failed: ERROR: xl info failed" in checks["target_memory"]["message"]


# --- node_facts: the shapes of a multi-function answer --------------------------------------------


def test_facts_of_a_minion_that_is_no_dom0():
    data = {"ret": {REPORT: NOT_A_DOM0, INFO: "'xencluster_xl' __virtual__ returned False: no xl"},
            "retcode": {REPORT: 254, INFO: 254}}  # fmt: skip
    facts = runner.node_facts("node1", "m1", data)
    assert facts["domains"] is None and facts["links"] is None and facts["info"] is None
    assert facts["why"]["domains"].startswith("node1 (minion m1) could not report: 'xencluster_node' __virtual__")
    assert "saltutil.sync_modules" in facts["why"]["info"]


def test_facts_of_an_ordered_multifunc_answer(answers):
    data = answers["node1"]
    ordered = {"ret": [data["ret"][REPORT], data["ret"][INFO]], "retcode": [0, 0]}
    assert runner.node_facts("node1", "node1", ordered) == runner.node_facts("node1", "node1", data)


# What a Salt 3008 minion without the function returned for it in a multi-function publish
# (seen in tests/integration/test_runner_migrate.py; paths shortened): it calls the name.
NAME_CALLED = """Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/salt/minion.py", line 3684, in _thread_multi_return
    return_data = minion_instance._execute_job_function(
  File "/usr/lib/python3/dist-packages/salt/minion.py", line 3073, in _execute_job_function
    return_data = self.executors[fname](opts, data, func, args, kwargs)
  File "/usr/lib/python3/dist-packages/salt/loader/lazy.py", line 1505, in _run_as
    ret = _func_or_method(*args, **kwargs)
  File "/usr/lib/python3/dist-packages/salt/executors/direct_call.py", line 10, in execute
    return func(*args, **kwargs)
TypeError: 'str' object is not callable
"""
RAISED_INSIDE = NAME_CALLED.replace("TypeError:", """  File "/var/cache/salt/minion/extmods/modules/xencluster_xl.py", \
line 230, in info
    return _parse_info(_run(XL_INFO))
TypeError:""")


def test_facts_of_a_multifunc_answer_for_functions_that_are_not_loaded():
    data = {"ret": {REPORT: NAME_CALLED, INFO: NAME_CALLED}, "retcode": {}}  # no retcode: they "raised"
    facts = runner.node_facts("node1", "m1", data)
    assert facts["domains"] is None and facts["info"] is None
    assert facts["why"]["domains"] == ("node1 (minion m1) could not report: 'xencluster_node.report' is not loaded "
                                       "there (not a dom0, or the extension is not synced: saltutil.sync_modules)")


def test_facts_when_a_function_raised(answers):
    data = answers["node1"]
    data["ret"][INFO] = RAISED_INSIDE
    del data["retcode"][INFO]  # the minion sets no retcode for a function that raised
    facts = runner.node_facts("node1", "node1", data)
    assert facts["info"] is None and facts["domains"]
    assert facts["why"]["info"] == "node1: xencluster_xl.info failed: TypeError: 'str' object is not callable"


@pytest.mark.parametrize("data", [None, False, {"out": "no_return", "ret": "Minion did not return. [No response]"}])
def test_facts_of_no_answer(data):
    facts = runner.node_facts("node2", "m2", data)
    assert set(facts["why"].values()) == {"node2 (minion m2) did not answer"}


# --- whereabouts after xl migrate (pure) ---------------------------------------------------------


def test_whereabouts(monkeypatch):
    on = {n: running(monkeypatch, *names) for n, names in (("a", ["web1"]), ("b", []), ("in", ["web1--incoming"]))}
    w = runner.whereabouts
    assert w("web1", "node1", "node2", {"node1": on["b"], "node2": on["a"]}) == (
        True, ["node2"], "web1 runs on node2 (blocked) and is gone from node1")  # fmt: skip
    assert w("web1", "node1", "node2", {"node1": on["a"], "node2": on["b"]}) == (
        False, ["node1"], "web1 still runs on node1")  # fmt: skip
    assert w("web1", "node1", "node2", {"node1": on["a"], "node2": on["a"]}) == (
        False, ["node1", "node2"], "web1 runs on node2 but also on node1: DOUBLE RUN")  # fmt: skip
    assert w("web1", "node1", "node2", {"node1": on["b"], "node2": on["b"]})[2] == (
        "web1 runs nowhere: neither on node1 nor on node2")
    assert w("web1", "node1", "node2", {"node1": on["a"], "node2": None}) == (
        False, ["node1"], "node2 did not tell its domains: where web1 runs is not fully known "
        "(seen: web1 (blocked) on node1)")  # fmt: skip
    assert w("web1", "node1", "node2", {"node1": on["a"], "node2": on["in"]})[2] == (
        "web1 is web1 (blocked) on node1; web1--incoming (blocked) on node2")


def test_whereabouts_a_paused_or_crashed_guest_on_the_target(monkeypatch):
    paused = running(monkeypatch, "web1")
    paused["web1"]["state"] = "paused"
    lists = {"node1": {}, "node2": paused}
    assert runner.whereabouts("web1", "node1", "node2", lists)[0] is False
    assert runner.whereabouts("web1", "node1", "node2", lists, before="paused")[0] is True
    paused["web1"]["state"] = "crashed"
    assert runner.whereabouts("web1", "node1", "node2", lists, before="paused")[2] == "web1 is web1 (crashed) on node2"


# --- the runner --------------------------------------------------------------------------------


class Bus:
    """Stands in for the master event bus: records (tag, data)."""

    def __init__(self):
        self.events = []

    def __call__(self, opts, sock_dir, listen=True):
        assert listen is False and sock_dir == opts["sock_dir"]
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def fire_event(self, data, tag):
        json.dumps(data)  # plain data on the bus
        self.events.append((tag, data))

    def tags(self):
        return [tag for tag, _data in self.events]


@pytest.fixture
def context():
    return {}


@pytest.fixture
def jid_event():
    return MagicMock()


@pytest.fixture
def configure_loader_modules(context, jid_event, tmp_path):
    opts = dict(salt.config.DEFAULT_MASTER_OPTS, conf_file="/etc/salt/master", sock_dir=str(tmp_path / "sock"),
                cachedir=str(tmp_path / "cache"))  # fmt: skip
    return {runner: {"__opts__": opts, "__context__": context, "__jid_event__": jid_event}}


@pytest.fixture
def bus(monkeypatch):
    bus = Bus()
    monkeypatch.setattr(runner.salt.utils.event, "get_master_event", bus)
    return bus


@pytest.fixture
def master(monkeypatch, bus):
    client = MagicMock()
    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=client))
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", copy.deepcopy(RAW)))
    monkeypatch.setattr(runner, "_validate", lambda raw: model_mod.validate(copy.deepcopy(raw)))
    return client


def cluster(pre, migrate_answer=None, post=None):
    """LocalClient.cmd answering the pre-check, migrate and list_domains publishes."""

    def cmd(tgt, fun, *args, **kwargs):
        assert kwargs["tgt_type"] == "list" and kwargs["full_return"] is True
        if fun == [REPORT, INFO]:
            return {m: a for m, a in pre.items() if m in tgt}
        if fun == XL_MIGRATE:
            return migrate_answer or {}
        assert fun == LIST, fun
        return {m: {"ret": d, "retcode": 0} for m, d in (post or {}).items() if m in tgt}

    return cmd


def ok(ret):
    return {"ret": ret, "retcode": 0, "jid": "20260101000000000001"}


def funs(master):
    return [c.args[1] for c in master.cmd.call_args_list]


def test_dry_run_publishes_the_prechecks_once_and_nothing_else(master, answers, bus, jid_event, context):
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1", dry_run=True)
    [call] = master.cmd.call_args_list
    assert call.args == (["node1", "node2"], [REPORT, INFO], [[], []])
    assert call.kwargs == {"timeout": 30, "tgt_type": "list", "full_return": True}
    assert result["result"] is True and result["retcode"] == 0 and result["ran"] is False
    assert result["message"] == "would migrate web1 from node1 to node2"
    assert (result["source"], result["target"], result["where"]) == ("node1", "node2", ["node1"])
    assert [c["check"] for c in result["checks"]] == list(runner.CHECKS)
    assert bus.events == [] and jid_event.fire_event.call_count == 0 and context == {}
    json.dumps(result)


def test_dry_run_with_a_failing_check_exits_1(master, answers, context):
    answers["node2"]["ret"][INFO]["free_memory"] = 64
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1", "node2", dry_run=True)
    assert master.cmd.call_count == 1
    assert result["result"] is False and result["retcode"] == 1 and context["retcode"] == 1
    assert result["message"] == "would not migrate web1: 1 check(s) failed (target_memory); it runs on node1"


def test_dry_run_when_a_node_did_not_answer(master, answers):
    del answers["node2"]
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1", dry_run=True)
    assert result["where"] == ["node1"] and result["source"] is None
    assert result["message"].endswith("; it runs on node1 (node2 did not tell)")


def test_a_real_run_publishes_prechecks_migrate_postcheck(master, answers, bus, jid_event, monkeypatch, context):
    moved = {"node1": running(monkeypatch), "node2": running(monkeypatch, "db1", "web1")}
    migrated = {"node1": ok({"argv": ["xl", "migrate", "web1", "node2"], "migrated": True})}
    master.cmd.side_effect = cluster(answers, migrated, moved)
    result = runner.migrate("web1")
    calls = [(c.args, c.kwargs) for c in master.cmd.call_args_list]
    assert calls == [
        ((["node1", "node2"], [REPORT, INFO], [[], []]), {"timeout": 30, "tgt_type": "list", "full_return": True}),
        ((["node1"], XL_MIGRATE, ["web1", "node2"]),
         {"timeout": 1800, "tgt_type": "list", "full_return": True, "kwarg": {"transport": "ssh"}}),
        ((["node1", "node2"], LIST), {"timeout": 30, "tgt_type": "list", "full_return": True}),
    ]  # fmt: skip
    assert result["result"] is True and result["retcode"] == 0 and result["ran"] is True and context == {}
    assert result["where"] == ["node2"] and isinstance(result["duration_s"], float)
    assert result["message"].startswith("web1 migrated from node1 to node2 in ")
    assert bus.tags() == ["xencluster/migrate/web1/prechecked", "xencluster/migrate/web1/started",
                          "xencluster/migrate/web1/finished"]  # fmt: skip
    assert bus.events[0][1]["result"] is True and len(bus.events[0][1]["checks"]) == len(runner.CHECKS)
    assert bus.events[2][1]["where"] == ["node2"] and bus.events[2][1]["result"] is True
    progress = [c.args for c in jid_event.fire_event.call_args_list]
    assert all(suffix == "progress" and set(data) == {"message"} for data, suffix in progress)
    assert [data["message"] for data, _s in progress][-1] == f"web1: {result['message']}"
    json.dumps(result)


def test_options_reach_the_publishes(master, answers, monkeypatch):
    moved = {"node1": {}, "node2": running(monkeypatch, "web1")}
    master.cmd.side_effect = cluster(answers, {"node1": ok({"migrated": True})}, moved)
    runner.migrate("web1", target="node2", timeout=600, check_timeout=10)
    assert [c.kwargs["timeout"] for c in master.cmd.call_args_list] == [10, 600, 10]


def test_migrate_error_says_the_guest_still_runs_on_the_source(master, answers, bus, monkeypatch, context):
    error = {"node1": {"ret": "ERROR: xl migrate web1 node2 failed (rc 1): migration sender: ssh: connect to host "
                       "node2 port 22: Connection refused", "retcode": 1}}  # fmt: skip
    still = {"node1": running(monkeypatch, "web1"), "node2": running(monkeypatch, "db1")}
    master.cmd.side_effect = cluster(answers, error, still)
    result = runner.migrate("web1")
    assert funs(master) == [[REPORT, INFO], XL_MIGRATE, LIST]  # looked again, never retried
    assert result["result"] is False and result["retcode"] == 1 and context["retcode"] == 1
    assert result["message"].startswith("xl migrate failed on node1: ERROR: xl migrate web1 node2 failed")
    assert result["message"].endswith("; web1 still runs on node1") and result["where"] == ["node1"]
    assert bus.tags()[-1] == "xencluster/migrate/web1/failed" and bus.events[-1][1]["where"] == ["node1"]


def test_a_double_run_after_migrate_is_said(master, answers, bus, monkeypatch, caplog):
    both = {"node1": running(monkeypatch, "web1"), "node2": running(monkeypatch, "db1", "web1")}
    master.cmd.side_effect = cluster(answers, {"node1": ok({"migrated": True})}, both)
    result = runner.migrate("web1")
    assert result["result"] is False and result["where"] == ["node1", "node2"]
    assert result["message"] == "xl migrate returned on node1; web1 runs on node2 but also on node1: DOUBLE RUN"
    assert bus.tags()[-1] == "xencluster/migrate/web1/failed"
    assert "DOUBLE RUN" in caplog.text


def test_no_answer_from_migrate_but_the_guest_moved(master, answers, monkeypatch):
    moved = {"node1": {}, "node2": running(monkeypatch, "web1")}
    master.cmd.side_effect = cluster(answers, {}, moved)
    result = runner.migrate("web1", timeout=60)
    assert result["result"] is True and result["retcode"] == 0
    assert "node1 did not answer xencluster_xl.migrate within 60 s, but the post-check finds it moved" in (
        result["message"])


def test_a_publish_that_raises_still_looks_where_the_guest_runs(master, answers, monkeypatch):
    still = {"node1": running(monkeypatch, "web1"), "node2": {}}
    post = cluster(answers, None, still)

    def cmd(tgt, fun, *args, **kwargs):
        if fun == XL_MIGRATE:
            raise runner.salt.exceptions.SaltClientError("master not reachable")
        return post(tgt, fun, *args, **kwargs)

    master.cmd.side_effect = cmd
    result = runner.migrate("web1")
    assert funs(master) == [[REPORT, INFO], XL_MIGRATE, LIST]
    assert result["message"] == ("xl migrate failed on node1: SaltClientError: master not reachable; "
                                 "web1 still runs on node1")  # fmt: skip


def test_a_drained_target_is_refused_before_anything_runs(master, answers, bus, jid_event, context):
    assert runner._set_drained("node2", True) is True
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1")
    assert funs(master) == [[REPORT, INFO]]
    assert result["result"] is False and result["ran"] is False and context["retcode"] == 1
    assert result["message"] == "not migrating web1: 1 check(s) failed (target_not_drained); it runs on node1"
    assert bus.tags() == ["xencluster/migrate/web1/prechecked"] and bus.events[0][1]["result"] is False
    assert jid_event.fire_event.call_args.args == ({"message": result["message"]}, "progress")


def test_drained_marks_in_the_master_cache():
    assert runner._drained() == []
    assert runner._set_drained("node2", True) is True
    assert runner._set_drained("node2", True) is False  # idempotent
    assert runner._set_drained("node1", True) is True
    assert runner._drained() == ["node1", "node2"]
    assert runner._set_drained("node2", False) is True
    assert runner._set_drained("node2", False) is False
    assert runner._drained() == ["node1"]
    with pytest.raises(runner.SaltInvocationError):
        runner._set_drained("../etc", True)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("Web1",), {}), (("web1; rm -rf /",), {}), ((1234,), {}), (("web1", "node 2"), {}),
        (("web1",), {"dry_run": "yes"}), (("web1",), {"timeout": 0}), (("web1",), {"timeout": True}),
        (("web1",), {"transport": "tcp"}), (("web1",), {"check_timeout": 601}), (("web9",), {}),
    ],
)  # fmt: skip
def test_bad_arguments_publish_nothing_and_exit_1(master, bus, context, args, kwargs):
    result = runner.migrate(*args, **kwargs)  # returned, not raised: salt-run exits 0 on a raised TypeError
    assert (result["result"], result["retcode"], result["ran"], result["checks"]) == (False, 1, False, [])
    assert result["message"].startswith(f"not migrating {args[0]}: ") and context["retcode"] == 1
    master.cmd.assert_not_called()
    assert bus.events == []


def test_an_unknown_guest_and_a_bad_model_are_said(master, monkeypatch):
    assert runner.migrate("web9")["message"] == ("not migrating web9: no guest web9 in the model (pillar of "
                                                 "node1; guests: db1, web1)")  # fmt: skip
    raw = copy.deepcopy(RAW)
    raw["guests"]["web1"]["disks"][0]["nodes"] = ["node1", "node1"]
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", raw))
    assert "xencluster.guests.web1.disks" in runner.migrate("web1", dry_run=True)["message"]
    master.cmd.assert_not_called()
