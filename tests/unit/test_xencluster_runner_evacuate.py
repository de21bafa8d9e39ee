"""xencluster.evacuate / undrain / drained runners: plan, drained mark first, bounded concurrency, stop/continue.

The dom0 answers are those of the migrate tests (the REAL ``xencluster_xl``
parsers over the recordings, see test_xencluster_runner_migrate.py). Most
tests replace ``_migrate_one`` (what ``migrate`` runs once its arguments and
model are checked) by a fake that records what runs when and how many at
once; the end-to-end ones run the real one against a mocked LocalClient. The
three-guest model adds ``app1``, a SYNTHETIC copy of ``web1``, to the frozen
lab model.
"""

import copy
import threading
import time
from unittest.mock import MagicMock

import pytest
import salt.loader.context
from test_xencluster_runner_migrate import INFO
from test_xencluster_runner_migrate import LIST
from test_xencluster_runner_migrate import RAW
from test_xencluster_runner_migrate import REPORT
from test_xencluster_runner_migrate import XL_MIGRATE
from test_xencluster_runner_migrate import answers  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import bus  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import configure_loader_modules  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import context  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import master  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import ok
from test_xencluster_runner_migrate import running

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.runners import xencluster as runner


def three_guests():
    raw = copy.deepcopy(RAW)
    app1 = copy.deepcopy(raw["guests"]["web1"])
    app1["interfaces"][0]["mac"] = "00:16:3e:00:01:09"
    del app1["node"]
    raw["guests"]["app1"] = app1
    return raw


RAW3 = three_guests()
MODEL3 = model_mod.validate(copy.deepcopy(RAW3))


@pytest.fixture
def three(master, monkeypatch):  # noqa: F811
    """A model of three guests, all running on node1: the listing publish answers so."""
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", copy.deepcopy(RAW3)))
    listing = {"node1": ok(running(monkeypatch, "app1", "db1", "web1")), "node2": ok({})}
    master.drained_at_listing = []

    def cmd(tgt, fun, *args, **kwargs):
        assert fun == LIST, fun
        master.drained_at_listing.append(runner._drained())
        return {m: listing[m] for m in tgt}

    master.cmd.side_effect = cmd
    return master


class Fake:
    """Stands in for ``_migrate_one``: records each call, the drained marks then, and how many run at once."""

    def __init__(self, fail=(), hold=0.05, wait_for=None):
        self.fail, self.hold, self.wait_for = set(fail), hold, wait_for or {}
        self.calls, self.drained_then, self.threads = [], [], set()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def __call__(self, client, model, guest, target, dry_run, timeout, transport, check_timeout):
        with self.lock:
            self.calls.append((guest, target, dry_run, timeout, transport, check_timeout))
            self.drained_then.append(runner._drained())
            self.threads.add(threading.get_ident())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if guest in self.wait_for:
                self.wait_for[guest]()
            time.sleep(self.hold)
        finally:
            with self.lock:
                self.in_flight -= 1
        good = guest not in self.fail
        source = "node1"
        return {"result": good, "retcode": 0 if good else 1, "guest": guest, "source": source, "target": target,
                "checks": [], "ran": True, "where": [target if good else source], "duration_s": 1.5,
                "message": f"{guest} migrated" if good else f"xl migrate failed on node1; {guest} still runs on node1"}


@pytest.fixture
def ran(monkeypatch):
    fake = Fake()
    monkeypatch.setattr(runner, "_migrate_one", fake)
    return fake


def evacuate(**kwargs):
    return runner.evacuate("node1", check_timeout=7, timeout=90, **kwargs)


# --- the plan (pure) ---------------------------------------------------------------------------


def test_the_plan_is_every_model_guest_on_the_node_to_its_partner(monkeypatch):
    domains = running(monkeypatch, "web1", "db1--incoming", "app1", "stray", "web1--migratedaway")
    plan, unknown = runner.evacuation_plan(MODEL3, "node1", domains)
    assert plan == [("app1", "node2"), ("db1", "node2"), ("web1", "node2")]
    assert unknown == ["stray"]
    assert runner.evacuation_plan(MODEL3, "node2", domains)[0][0] == ("app1", "node1")
    assert runner.evacuation_plan(MODEL3, "node1", {}) == ([], [])


def test_a_guest_running_outside_its_pair_gets_no_target(monkeypatch):
    raw = copy.deepcopy(RAW)
    raw["nodes"]["node3"] = copy.deepcopy(raw["nodes"]["node2"])
    raw["nodes"]["node3"]["san"][0]["address"] = "192.168.100.3/24"
    plan, unknown = runner.evacuation_plan(model_mod.validate(raw), "node3", running(monkeypatch, "web1"))
    assert (plan, unknown) == ([("web1", None)], [])


# --- a real run with a fake migration ------------------------------------------------------------


def test_drained_first_then_each_guest_to_its_partner(three, ran, bus, context):
    result = evacuate()
    [listing] = three.cmd.call_args_list  # ONE list_domains publish, to the node only
    assert listing.args == (["node1"], LIST) and listing.kwargs == {"timeout": 7, "tgt_type": "list",
                                                                    "full_return": True}  # fmt: skip
    assert ran.calls == [(g, "node2", False, 90, "ssh", 7) for g in ("app1", "db1", "web1")]
    assert three.drained_at_listing == [["node1"]]  # marked before it is even listed
    assert ran.drained_then[0] == ["node1"]
    assert result["result"] is True and result["retcode"] == 0 and context == {}
    assert result["drained"] is True and runner._drained() == ["node1"]
    assert result["moved"] == [{"guest": g, "from": "node1", "to": "node2", "duration_s": 1.5}
                               for g in ("app1", "db1", "web1")]  # fmt: skip
    assert result["failed"] == [] and result["skipped"] == [] and isinstance(result["duration_s"], float)
    assert result["message"].startswith("evacuated node1: 3 guest(s) moved (app1 to node2 in 1.5 s, ")


def test_events_and_progress(three, ran, bus, jid_event):
    result = evacuate()
    assert bus.tags() == ["xencluster/evacuate/node1/started", "xencluster/evacuate/node1/guest/app1",
                          "xencluster/evacuate/node1/guest/db1", "xencluster/evacuate/node1/guest/web1",
                          "xencluster/evacuate/node1/finished"]  # fmt: skip
    started = bus.events[0][1]
    assert started["plan"] == [{"guest": g, "to": "node2"} for g in ("app1", "db1", "web1")]
    assert (started["concurrency"], started["on_failure"], started["unknown"]) == (1, "stop", [])
    assert bus.events[1][1]["result"] is True and bus.events[1][1]["duration_s"] == 1.5
    assert bus.events[-1][1] == result
    lines = [c.args[0]["message"] for c in jid_event.fire_event.call_args_list]
    assert lines[0] == "node1 marked drained: it takes no guest"
    assert lines[1] == "evacuating node1, 1 at a time: app1 -> node2, db1 -> node2, web1 -> node2"
    assert lines[-1] == result["message"]


def test_marking_is_idempotent(three, ran, jid_event):
    assert runner._set_drained("node1", True) is True
    assert evacuate()["drained"] is True and runner._drained() == ["node1"]
    assert jid_event.fire_event.call_args_list[0].args[0]["message"] == "node1 is drained already"


def test_concurrency_1_runs_one_at_a_time(three, ran):
    evacuate(concurrency=1)
    assert ran.max_in_flight == 1 and len(ran.calls) == 3


def test_concurrency_2_runs_two_at_a_time_never_three(three, monkeypatch):
    barrier = threading.Barrier(2)  # app1 and db1 must be in flight together, or it breaks after 5 s
    fake = Fake(wait_for={"app1": lambda: barrier.wait(timeout=5), "db1": lambda: barrier.wait(timeout=5)})
    monkeypatch.setattr(runner, "_migrate_one", fake)
    result = evacuate(concurrency=2)
    assert result["result"] is True and len(result["moved"]) == 3
    assert fake.max_in_flight == 2  # the barrier proves 2, the count that there were never 3


def test_each_migration_has_its_own_client_in_its_own_thread(three, ran, monkeypatch):
    made = []

    def factory(conf_file):
        client = MagicMock(name=f"client{len(made)}")
        client.cmd.side_effect = three.cmd.side_effect
        made.append((client, threading.get_ident()))
        return client

    monkeypatch.setattr(runner.salt.client, "LocalClient", factory)
    evacuate(concurrency=2)
    main = threading.get_ident()
    assert len(made) == 4 and made[0][1] == main  # the listing, then one per migration
    workers = made[1:]
    assert all(ident != main for _c, ident in workers) and all(c.destroy.called for c, _i in workers)
    assert ran.threads == {ident for _c, ident in workers}


def test_the_workers_run_in_the_callers_context(three, ran, monkeypatch):
    # Salt's loader dunders (__opts__, __context__...) resolve through this context variable:
    # a thread that does not copy the caller's context would see none.
    seen = []
    inner = runner._migrate_one
    monkeypatch.setattr(runner, "_migrate_one",
                        lambda *a: seen.append(salt.loader.context.loader_ctxvar.get(None)) or inner(*a))
    token = salt.loader.context.loader_ctxvar.set("the-runner-loader")
    try:
        evacuate(concurrency=2)
    finally:
        salt.loader.context.loader_ctxvar.reset(token)
    assert seen == ["the-runner-loader"] * 3


def test_stop_on_the_first_failure(three, monkeypatch, bus, context):
    fake = Fake(fail=["app1"])
    monkeypatch.setattr(runner, "_migrate_one", fake)
    result = evacuate()
    assert [c[0] for c in fake.calls] == ["app1"]
    assert result["result"] is False and result["retcode"] == 1 and context["retcode"] == 1
    assert result["moved"] == [] and result["skipped"] == ["db1", "web1"]
    assert result["failed"] == [{"guest": "app1", "where": ["node1"],
                                 "message": "xl migrate failed on node1; app1 still runs on node1"}]  # fmt: skip
    assert result["message"] == ("node1 is not empty: 0 moved, 1 failed (app1), 2 not tried after the failure "
                                 "(db1, web1); node1 stays drained (salt-run xencluster.undrain node1)")
    assert runner._drained() == ["node1"] and bus.tags()[-1] == "xencluster/evacuate/node1/finished"


def test_stop_lets_the_migrations_in_flight_finish(three, monkeypatch, bus):
    def after_app1_is_reported():  # db1 is still in flight when app1's failure is handled
        deadline = time.monotonic() + 5
        while "xencluster/evacuate/node1/guest/app1" not in bus.tags() and time.monotonic() < deadline:
            time.sleep(0.01)

    fake = Fake(fail=["app1"], hold=0, wait_for={"db1": after_app1_is_reported})
    monkeypatch.setattr(runner, "_migrate_one", fake)
    result = evacuate(concurrency=2)
    assert sorted(c[0] for c in fake.calls) == ["app1", "db1"]
    assert [m["guest"] for m in result["moved"]] == ["db1"] and result["skipped"] == ["web1"]
    assert [f["guest"] for f in result["failed"]] == ["app1"] and result["result"] is False


def test_continue_tries_every_guest(three, monkeypatch):
    fake = Fake(fail=["app1", "web1"])
    monkeypatch.setattr(runner, "_migrate_one", fake)
    result = evacuate(on_failure="continue")
    assert [c[0] for c in fake.calls] == ["app1", "db1", "web1"]
    assert [m["guest"] for m in result["moved"]] == ["db1"] and result["skipped"] == []
    assert [f["guest"] for f in result["failed"]] == ["app1", "web1"] and result["retcode"] == 1
    assert result["message"].startswith("node1 is not empty: 1 moved, 2 failed (app1, web1); node1 stays drained")


def test_a_migration_that_raises_is_a_failure(three, monkeypatch):
    def boom(*args):
        raise RuntimeError("the master went away")

    monkeypatch.setattr(runner, "_migrate_one", boom)
    result = evacuate(on_failure="continue")
    assert [f["message"] for f in result["failed"]] == [f"not migrating {g}: RuntimeError: the master went away"
                                                        for g in ("app1", "db1", "web1")]  # fmt: skip


def test_a_domain_the_model_does_not_name_fails_but_stops_nothing(master, ran, monkeypatch):  # noqa: F811
    listing = {"node1": ok(running(monkeypatch, "stray", "web1"))}
    master.cmd.side_effect = lambda tgt, fun, *a, **kw: listing
    result = evacuate()
    assert [c[0] for c in ran.calls] == ["web1"] and [m["guest"] for m in result["moved"]] == ["web1"]
    assert result["failed"] == [{"guest": "stray", "where": ["node1"], "message": "domain stray runs on node1 but "
                                 "the model has no guest stray: nothing can move it"}]  # fmt: skip
    assert result["result"] is False and result["skipped"] == []


def test_an_empty_node(master, ran, monkeypatch):  # noqa: F811
    master.cmd.side_effect = lambda tgt, fun, *a, **kw: {"node1": ok({})}
    result = evacuate()
    assert result["result"] is True and ran.calls == [] and result["message"] == "evacuated node1: 0 guest(s) moved"
    assert runner._drained() == ["node1"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_node_that_cannot_list_its_domains(master, ran, bus, dry_run):  # noqa: F811
    master.cmd.side_effect = lambda tgt, fun, *a, **kw: {"node1": {"ret": f"'{LIST}' is not available.",
                                                                   "retcode": 254}}  # fmt: skip
    result = evacuate(dry_run=dry_run)
    assert result["result"] is False and result["retcode"] == 1 and ran.calls == []
    assert result["message"].startswith(f"cannot evacuate node1: node1 (minion node1) could not report: '{LIST}' "
                                        "is not available")  # fmt: skip
    if dry_run:
        assert result["drained"] is False and runner._drained() == [] and bus.events == []
    else:
        assert result["message"].endswith("; node1 stays drained (salt-run xencluster.undrain node1)")
        assert result["drained"] is True and runner._drained() == ["node1"]
        assert bus.tags() == ["xencluster/evacuate/node1/finished"]


# --- end to end through the real migrate steps (mocked LocalClient) ----------------------------------


def cluster_in_time(answers, monkeypatch, migrated=True):  # noqa: F811
    """LocalClient.cmd of the two-guest cluster: list_domains answers change once xl migrate ran."""
    before = {m: a["ret"][REPORT]["domains"] for m, a in answers.items()}
    after = {"node1": {}, "node2": running(monkeypatch, "db1", "web1")} if migrated else before
    state = {"lists": before}

    def cmd(tgt, fun, *args, **kwargs):
        if fun == [REPORT, INFO]:
            return {m: a for m, a in answers.items() if m in tgt}
        if fun == XL_MIGRATE:
            state["lists"] = after
            return {"node1": ok({"migrated": True})}
        return {m: ok(d) for m, d in state["lists"].items() if m in tgt}

    return cmd


def test_end_to_end_web1_moves_off_node1(master, answers, bus, monkeypatch, context):  # noqa: F811
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node1")
    assert [c.args[1] for c in master.cmd.call_args_list] == [LIST, [REPORT, INFO], XL_MIGRATE, LIST]
    assert result["result"] is True and context == {}
    [moved] = result["moved"]
    assert moved["guest"] == "web1" and (moved["from"], moved["to"]) == ("node1", "node2")
    assert isinstance(moved["duration_s"], float)
    assert bus.tags() == ["xencluster/evacuate/node1/started", "xencluster/migrate/web1/prechecked",
                          "xencluster/migrate/web1/started", "xencluster/migrate/web1/finished",
                          "xencluster/evacuate/node1/guest/web1", "xencluster/evacuate/node1/finished"]


def test_end_to_end_a_drained_partner_fails_the_prechecks(master, answers, bus, monkeypatch):  # noqa: F811
    runner._set_drained("node1", True)
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node2")  # db1 runs there; its partner node1 is drained
    assert XL_MIGRATE not in [c.args[1] for c in master.cmd.call_args_list]
    [failed] = result["failed"]
    assert failed["guest"] == "db1" and failed["where"] == ["node2"]
    assert failed["message"] == "not migrating db1: 1 check(s) failed (target_not_drained); it runs on node2"
    assert result["moved"] == [] and result["result"] is False and runner._drained() == ["node1", "node2"]


def test_dry_run_marks_nothing_and_migrates_nothing(master, answers, bus, monkeypatch, jid_event):  # noqa: F811
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node1", dry_run=True)
    assert [c.args[1] for c in master.cmd.call_args_list] == [LIST, [REPORT, INFO]]
    assert runner._drained() == [] and bus.events == [] and jid_event.fire_event.call_count == 0
    assert result["result"] is True and result["drained"] is False and result["moved"] == []
    [entry] = result["plan"]
    assert (entry["guest"], entry["from"], entry["to"], entry["result"]) == ("web1", "node1", "node2", True)
    assert [c["check"] for c in entry["checks"]] == list(runner.CHECKS)
    assert result["message"] == "would mark node1 drained and migrate 1 guest(s): web1 -> node2"


def test_dry_run_says_what_would_fail(master, answers, monkeypatch, context):  # noqa: F811
    runner._set_drained("node2", True)
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node1", dry_run=True)
    assert result["result"] is False and result["retcode"] == 1 and context["retcode"] == 1
    assert result["plan"][0]["result"] is False and result["failed"][0]["guest"] == "web1"
    assert result["message"] == ("would mark node1 drained and migrate 1 guest(s): web1 -> node2; "
                                 "would fail: web1")  # fmt: skip
    assert runner._drained() == ["node2"]


# --- bad arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, why",
    [
        (("Node1",), {}, "invalid node name 'Node1'"),
        (("node9",), {}, "no node node9 in the model (pillar of node1; nodes: node1, node2)"),
        (("node1",), {"concurrency": 0}, "concurrency must be a whole number from 1 to 16: 0"),
        (("node1",), {"concurrency": 17}, "concurrency must be"),
        (("node1",), {"concurrency": True}, "concurrency must be"),
        (("node1",), {"concurrency": "2"}, "concurrency must be"),
        (("node1",), {"on_failure": "abort"}, "on_failure must be one of stop, continue: 'abort'"),
        (("node1",), {"dry_run": "yes"}, "dry_run must be True or False"),
        (("node1",), {"timeout": 0}, "timeout must be"),
        (("node1",), {"check_timeout": 601}, "check_timeout must be"),
    ],
)  # fmt: skip
def test_bad_arguments_are_returned_with_retcode_1(master, ran, bus, context, args, kwargs, why):  # noqa: F811
    result = runner.evacuate(*args, **kwargs)
    assert (result["result"], result["retcode"], result["drained"]) == (False, 1, False) and context["retcode"] == 1
    assert result["message"].startswith(f"not evacuating {args[0]}: ") and why in result["message"]
    assert (result["moved"], result["failed"], result["skipped"]) == ([], [], [])
    master.cmd.assert_not_called()
    assert ran.calls == [] and bus.events == [] and runner._drained() == []


# --- undrain and drained ----------------------------------------------------------------------------


def test_undrain_is_idempotent_and_drained_lists_the_marks(context):
    before = int(time.time())
    runner._set_drained("node1", True)
    marks = runner.drained()
    assert list(marks) == ["node1"] and before <= marks["node1"]["since"] <= time.time()
    assert marks["node1"]["since_utc"].endswith("+00:00")
    assert runner.undrain("node1") == {"result": True, "retcode": 0, "node": "node1", "changed": True,
                                       "message": "node1 takes guests again"}  # fmt: skip
    assert runner.undrain("node1") == {"result": True, "retcode": 0, "node": "node1", "changed": False,
                                       "message": "node1 was not drained"}  # fmt: skip
    assert runner.drained() == {} and context == {}


def test_undrain_a_bad_name(context):
    result = runner.undrain("../etc")
    assert (result["result"], result["retcode"], result["changed"]) == (False, 1, False) and context["retcode"] == 1
    assert result["message"].startswith("not undraining: invalid node name '../etc'")
