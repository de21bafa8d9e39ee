"""xencluster.migrate and evacuate over the ``stream`` transport: the target's listener around ``xl migrate``.

The pre-check answers are those of the migrate tests (the REAL ``xencluster_xl``
parsers over the recordings, see test_xencluster_runner_migrate.py); the model
is the frozen lab model (node1 192.168.100.1, node2 192.168.100.2, one SAN
subnet). The answers of ``xencluster_xl.stream_receive``, ``stream_stop`` and
``migrate`` are SYNTHETIC, in the shapes ``_modules/xencluster_xl.py``
returns (its own tests prove those: test_xencluster_xl_stream*.py); the error
texts are the module's own messages.
"""

import contextvars
import copy
import threading

import pytest
from test_xencluster_runner_migrate import INFO
from test_xencluster_runner_migrate import LIST
from test_xencluster_runner_migrate import RAW
from test_xencluster_runner_migrate import REPORT
from test_xencluster_runner_migrate import XL_MIGRATE
from test_xencluster_runner_migrate import answers  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import bus  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import cluster
from test_xencluster_runner_migrate import configure_loader_modules  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import context  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import master  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import ok
from test_xencluster_runner_migrate import running
from test_xencluster_runner_ops import interrupted_record
from test_xencluster_runner_ops import progress
from test_xencluster_runner_ops import records

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.runners import xencluster as runner

RECEIVE, STOP = "xencluster_xl.stream_receive", "xencluster_xl.stream_stop"
MODEL = model_mod.validate(copy.deepcopy(RAW))
LAB_KWARG = {"transport": "stream", "stream_address": "192.168.100.2:31000", "stream_from": "192.168.100.1"}
RECEIVE_ARGV = ["socat", "-d", "-d", "TCP4-LISTEN:31000,bind=192.168.100.2,reuseaddr,accept-timeout=60,"
                "range=192.168.100.1/32", "EXEC:xl migrate-receive"]  # fmt: skip
MIGRATE_ARGV = ["xl", "migrate", "-s", "/usr/libexec/xencluster/xl-stream-connect", "web1", "192.168.100.2:31000"]
TAIL = ("2026/01/01 00:00:01 socat[812] N accepting connection from AF=2 192.168.100.1:40212\n"
        "migration target: Ready to receive domain.\n"
        "migration target (incoming domain): Failed to restore: xc_domain_restore failed")  # fmt: skip
STREAMING = ("ERROR: the stream listener on port 31000 (pid 812) has accepted its connection: a migration is "
             "streaming through it; not stopping it (force=True would, and that migration would fail)")  # fmt: skip


def model_with(**addresses):
    """The lab model, the SAN paths of nodes replaced: node=[address, ...]."""
    raw = copy.deepcopy(RAW)
    for node, addrs in addresses.items():
        raw["nodes"][node]["san"] = [{"interface": f"eth{i + 3}", "address": a} for i, a in enumerate(addrs)]
    return model_mod.validate(raw)


def received(port=31000, **changes):
    return ok(dict({"port": port, "bind": "192.168.100.2", "allow_from": "192.168.100.1", "accept_timeout": 60,
                    "argv": RECEIVE_ARGV, "log": f"/var/log/xen/xencluster-stream-{port}.log", "pid": 812,
                    "started": True}, **changes))  # fmt: skip


def stopped(state="exited", tail="", port=31000):
    return ok({"port": port, "pid": 812, "stopped": state in ("listening", "streaming"), "state": state,
               "log": f"/var/log/xen/xencluster-stream-{port}.log", "log_tail": tail})  # fmt: skip


def migrated(duration=23.041):
    return ok({"argv": MIGRATE_ARGV, "checks": {}, "migrated": True, "transport": "stream",
               "stream_address": "192.168.100.2:31000", "source_address": "192.168.100.1",
               "receive_argv": RECEIVE_ARGV, "duration_s": duration})  # fmt: skip


def stream_cluster(pre, migrate_answer=None, post=None, receive=None, stop=None):
    """``cluster`` of the migrate tests, with the target's stream_receive and stream_stop answers (node2)."""
    inner = cluster(pre, migrate_answer, post)
    receive = received() if receive is None else receive
    stop = stopped() if stop is None else stop

    def cmd(tgt, fun, *args, **kwargs):
        if fun == RECEIVE:
            assert tgt == ["node2"]
            return {"node2": receive} if receive else {}
        if fun == STOP:
            assert tgt == ["node2"]
            return {"node2": stop} if stop else {}
        return inner(tgt, fun, *args, **kwargs)

    return cmd


def calls(master):  # noqa: F811
    return [(c.args, c.kwargs) for c in master.cmd.call_args_list]


def funs(master):  # noqa: F811
    return [c.args[1] for c in master.cmd.call_args_list]


@pytest.fixture
def moved(monkeypatch):
    return {"node1": running(monkeypatch), "node2": running(monkeypatch, "db1", "web1")}


@pytest.fixture
def still(monkeypatch):
    return {"node1": running(monkeypatch, "web1"), "node2": running(monkeypatch, "db1")}


@pytest.fixture(autouse=True)
def no_ports_left_taken():
    """Every test leaves the port pool empty, as a master process must after each migration."""
    assert runner._stream_ports == set()
    yield
    assert runner._stream_ports == set()


# --- addresses and ports (pure) ---------------------------------------------------------------


def test_stream_addresses_of_the_lab_pair():
    assert runner._stream_addresses(MODEL, "node1", "node2") == ("192.168.100.2", "192.168.100.1")
    assert runner._stream_addresses(MODEL, "node2", "node1") == ("192.168.100.1", "192.168.100.2")


def test_stream_addresses_ipv6_and_the_address_text():
    model = model_with(node1=["fd00:100::1/64"], node2=["fd00:100::2/64"])
    assert runner._stream_addresses(model, "node1", "node2") == ("fd00:100::2", "fd00:100::1")
    assert runner._stream_address("fd00:100::2", 31000) == "[fd00:100::2]:31000"
    assert runner._stream_address("192.168.100.2", 31099) == "192.168.100.2:31099"


def test_stream_addresses_pick_the_subnet_the_source_shares():
    # node2 has two SAN paths; node1 shares only the second one with it (and has one node2 lacks)
    model = model_with(node1=["10.8.0.1/24", "192.168.100.1/24"], node2=["10.9.0.2/24", "192.168.100.2/24"])
    assert runner._stream_addresses(model, "node1", "node2") == ("192.168.100.2", "192.168.100.1")
    model = model_with(node1=["10.9.0.1/24", "192.168.100.1/24"], node2=["10.9.0.2/24", "192.168.100.2/24"])
    assert runner._stream_addresses(model, "node1", "node2") == ("10.9.0.2", "10.9.0.1")  # the target's first


def test_stream_addresses_without_a_shared_subnet():
    # (the model refuses a guest pair without one: only a node outside the pair can lack it)
    raw = copy.deepcopy(RAW)
    raw["nodes"]["node3"] = copy.deepcopy(raw["nodes"]["node2"])
    raw["nodes"]["node3"]["san"] = [{"interface": "eth1", "address": "192.168.200.3/24"}]
    model = model_mod.validate(raw)
    assert runner._stream_addresses(model, "node1", "node3") is None
    assert runner._stream_addresses(model, "node3", "node2") is None


def test_stream_ports_are_distinct_under_concurrency_and_given_back():
    gate, taken = threading.Barrier(20), []

    def take():
        gate.wait(10)
        taken.append(runner._take_stream_port())

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(taken) == list(range(31000, 31020))
    for port in taken:
        runner._give_stream_port(port)
    assert runner._take_stream_port() == 31000  # the lowest free one again
    runner._give_stream_port(31000)
    runner._give_stream_port(31000)  # idempotent


def test_no_stream_port_left():
    ports = [runner._take_stream_port() for _ in range(runner.STREAM_PORT_COUNT)]
    try:
        assert ports[-1] == 31099
        with pytest.raises(runner.CommandExecutionError, match="no free stream port in 31000-31099"):
            runner._take_stream_port()
    finally:
        for port in ports:
            runner._give_stream_port(port)


def test_rerun_commands_name_a_transport_other_than_ssh():
    assert runner._rerun("migrate", {"guest": "web1", "target": None}) == "salt-run xencluster.migrate web1"
    assert runner._rerun("migrate", {"guest": "web1", "target": "node2", "transport": "stream"}) == (
        "salt-run xencluster.migrate web1 node2 transport=stream")
    assert runner._rerun("evacuate", {"node": "node1", "transport": "stream"}) == (
        "salt-run xencluster.evacuate node1 transport=stream")
    assert runner._rerun("evacuate", {"node": "node1"}) == "salt-run xencluster.evacuate node1"


# --- migrate transport=stream: the publishes ----------------------------------------------------


def test_a_stream_migration_publishes_listener_migrate_stop_postcheck(master, answers, moved, bus, jid_event,
                                                                      context):  # noqa: F811  # fmt: skip
    master.cmd.side_effect = stream_cluster(answers, {"node1": migrated()}, moved)
    result = runner.migrate("web1", transport="stream")
    assert calls(master) == [
        ((["node1", "node2"], [REPORT, INFO], [[], []]), {"timeout": 30, "tgt_type": "list", "full_return": True}),
        ((["node2"], RECEIVE, [31000, "192.168.100.2", "192.168.100.1"]),
         {"kwarg": {"accept_timeout": 60}, "timeout": 30, "tgt_type": "list", "full_return": True}),
        ((["node1"], XL_MIGRATE, ["web1", "node2"]),
         {"timeout": 1800, "tgt_type": "list", "full_return": True, "kwarg": LAB_KWARG}),
        ((["node2"], STOP, [31000]), {"timeout": 30, "tgt_type": "list", "full_return": True}),  # never force
        ((["node1", "node2"], LIST), {"timeout": 30, "tgt_type": "list", "full_return": True}),
    ]  # fmt: skip
    assert result["result"] is True and result["retcode"] == 0 and result["ran"] is True and context == {}
    assert result["transport"] == "stream" and result["xl_duration_s"] == 23.041
    assert isinstance(result["duration_s"], float) and result["where"] == ["node2"]
    assert result["message"] == (f"web1 migrated from node1 to node2 over stream in {result['duration_s']} s "
                                 "(xl migrate 23.041 s)")  # fmt: skip
    started = dict(bus.events)["xencluster/migrate/web1/started"]
    assert started == {"guest": "web1", "source": "node1", "target": "node2", "timeout": 1800, "transport": "stream"}
    finished = dict(bus.events)["xencluster/migrate/web1/finished"]
    assert (finished["transport"], finished["xl_duration_s"]) == ("stream", 23.041)
    lines = progress(jid_event)
    assert "web1: xl migrate from node1 to node2 over stream (up to 1800 s)" in lines
    assert "stream listener on node2 at 192.168.100.2:31000, accepting 192.168.100.1 only" in lines
    [record] = records().values()
    step = next(s for s in record["steps"] if s["step"] == "xl_migrate_started")
    assert step["transport"] == "stream" and record["args"]["transport"] == "stream"
    assert record["rerun"] == "salt-run xencluster.migrate web1 transport=stream"
    assert {k: record["detail"][k] for k in ("transport", "stream_target", "stream_port", "stream_address",
                                             "stream_from")} == {  # fmt: skip
        "transport": "stream", "stream_target": "node2", "stream_port": 31000,
        "stream_address": "192.168.100.2:31000", "stream_from": "192.168.100.1"}  # fmt: skip


def test_the_listener_does_not_start_xl_migrate_is_never_published(master, answers, still, bus, context):  # noqa: F811
    error = {"ret": "ERROR: 192.168.100.2:31000 is in use on this host: not listening there", "retcode": 1}
    master.cmd.side_effect = stream_cluster(answers, post=still, receive=error)
    result = runner.migrate("web1", transport="stream")
    assert funs(master) == [[REPORT, INFO], RECEIVE, LIST]  # no migrate, no stop: nothing was started
    assert result["result"] is False and result["ran"] is False and context["retcode"] == 1
    assert result["message"] == ("the stream listener on node2 did not start: ERROR: 192.168.100.2:31000 is in use "
                                 "on this host: not listening there; web1 still runs on node1")  # fmt: skip
    assert result["where"] == ["node1"] and "xl_duration_s" not in result
    assert bus.tags()[-1] == "xencluster/migrate/web1/failed"


def test_a_listener_that_did_not_answer_is_stopped_and_xl_migrate_never_runs(master, answers, still):  # noqa: F811
    master.cmd.side_effect = stream_cluster(answers, post=still, receive={}, stop=stopped("listening"))
    result = runner.migrate("web1", transport="stream", check_timeout=7)
    assert funs(master) == [[REPORT, INFO], RECEIVE, STOP, LIST]
    assert master.cmd.call_args_list[2].args == (["node2"], STOP, [31000])
    assert result["ran"] is False and result["message"] == (
        "the stream listener on node2 did not start: no answer within 7 s; web1 still runs on node1")


def test_xl_migrate_fails_the_listener_is_still_stopped_and_its_log_said(master, answers, still):  # noqa: F811
    error = {"node1": {"ret": "ERROR: xl migrate ... failed (rc 1): migration sender: Target reported failure "
                       "(the target's side: /var/log/xen/xencluster-stream-31000.log there; ...)", "retcode": 1}}
    master.cmd.side_effect = stream_cluster(answers, error, still, stop=stopped("exited", TAIL))
    result = runner.migrate("web1", transport="stream")
    assert funs(master) == [[REPORT, INFO], RECEIVE, XL_MIGRATE, STOP, LIST]
    assert result["result"] is False and result["ran"] is True and "xl_duration_s" not in result
    assert result["message"].startswith("xl migrate failed on node1: ERROR: xl migrate ... failed (rc 1)")
    assert ("; target side: 2026/01/01 00:00:01 socat[812] N accepting connection from AF=2 192.168.100.1:40212 | "
            "migration target: Ready to receive domain. | migration target (incoming domain): Failed to restore: "
            "xc_domain_restore failed; web1 still runs on node1") in result["message"]  # fmt: skip


def test_a_listener_still_waiting_after_a_failure_is_stopped_and_said(master, answers, still):  # noqa: F811
    error = {"node1": {"ret": "ERROR: web1 is a PV guest", "retcode": 1}}
    master.cmd.side_effect = stream_cluster(answers, error, still, stop=stopped("listening"))
    result = runner.migrate("web1", transport="stream")
    assert result["message"] == ("xl migrate failed on node1: ERROR: web1 is a PV guest; the stream listener on "
                                 "node2 was still listening: stopped; web1 still runs on node1")  # fmt: skip


def test_no_answer_from_migrate_the_unforced_stop_refuses_and_says_so(master, answers, monkeypatch):  # noqa: F811
    inflight = {"node1": running(monkeypatch, "web1"), "node2": running(monkeypatch, "db1", "web1--incoming")}
    master.cmd.side_effect = stream_cluster(answers, {}, inflight, stop={"ret": STREAMING, "retcode": 1})
    result = runner.migrate("web1", transport="stream", timeout=60)
    assert funs(master) == [[REPORT, INFO], RECEIVE, XL_MIGRATE, STOP, LIST]
    stop = master.cmd.call_args_list[3]
    assert stop.args == (["node2"], STOP, [31000]) and "kwarg" not in stop.kwargs  # never force=True
    assert result["result"] is False and result["message"].startswith(
        "node1 did not answer xencluster_xl.migrate within 60 s; stream_stop 31000 on node2: ERROR: the stream "
        "listener on port 31000 (pid 812) has accepted its connection: a migration is streaming through it")


def test_the_stop_is_published_even_when_the_migrate_call_raises(master, answers, monkeypatch):  # noqa: F811
    inner = stream_cluster(answers)
    seen = []

    def cmd(tgt, fun, *args, **kwargs):
        seen.append(fun)
        if fun == XL_MIGRATE:
            raise KeyboardInterrupt  # not an Exception: _migrate_call lets it through
        return inner(tgt, fun, *args, **kwargs)

    master.cmd.side_effect = cmd
    with pytest.raises(KeyboardInterrupt):
        runner.migrate("web1", transport="stream")
    assert seen == [[REPORT, INFO], RECEIVE, XL_MIGRATE, STOP]


def test_the_post_check_decides_a_stream_migration_whose_answer_was_lost(master, answers, moved):  # noqa: F811
    master.cmd.side_effect = stream_cluster(answers, {}, moved)
    result = runner.migrate("web1", transport="stream", timeout=60)
    assert result["result"] is True and "xl_duration_s" not in result
    assert "over stream in" in result["message"] and result["message"].endswith(
        "(node1 did not answer xencluster_xl.migrate within 60 s, but the post-check finds it moved)")


def test_ssh_publishes_no_listener_and_reports_the_module_duration(master, answers, moved, bus,
                                                                   jid_event):  # noqa: F811  # fmt: skip
    master.cmd.side_effect = stream_cluster(answers, {"node1": ok({"argv": ["xl", "migrate", "web1", "node2"],
                                                                   "migrated": True, "duration_s": 9.5})}, moved)
    result = runner.migrate("web1")
    assert funs(master) == [[REPORT, INFO], XL_MIGRATE, LIST]
    assert master.cmd.call_args_list[1].kwargs["kwarg"] == {"transport": "ssh"}
    assert (result["transport"], result["xl_duration_s"]) == ("ssh", 9.5)
    assert result["message"] == f"web1 migrated from node1 to node2 in {result['duration_s']} s (xl migrate 9.5 s)"
    assert dict(bus.events)["xencluster/migrate/web1/started"]["transport"] == "ssh"
    assert "web1: xl migrate from node1 to node2 over ssh (up to 1800 s)" in progress(jid_event)
    [record] = records().values()
    assert next(s for s in record["steps"] if s["step"] == "xl_migrate_started")["transport"] == "ssh"
    assert "transport" not in record["args"] and "stream_port" not in record["detail"]


def test_parallel_stream_migrations_to_one_target_get_distinct_ports(master, answers):  # noqa: F811
    gate, seen, lock = threading.Barrier(2), [], threading.Lock()

    def cmd(tgt, fun, *args, **kwargs):
        with lock:
            seen.append((fun, args[0], kwargs.get("kwarg")))
        if fun == RECEIVE:
            return {"node2": received(port=args[0][0])}
        if fun == XL_MIGRATE:
            gate.wait(10)  # both listeners are up at once here
            return {"node1": migrated()}
        return {"node2": stopped(port=args[0][0])}

    master.cmd.side_effect = cmd
    out = []

    def go(guest):
        plan = {"guest": guest, "source": "node1", "target": "node2"}
        out.append(runner._call_with_transport(master, MODEL, plan, "stream", 60, 5))

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(go, g)) for g in ("web1", "db1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [kind for kind, _ret, _note in out] == ["ok", "ok"]
    addresses = sorted(kw["stream_address"] for fun, _a, kw in seen if fun == XL_MIGRATE)
    assert addresses == ["192.168.100.2:31000", "192.168.100.2:31001"]
    assert sorted(a[0] for fun, a, _kw in seen if fun == STOP) == [31000, 31001]


# --- the dry run: stream_ready -----------------------------------------------------------------


def dry_answers(receive=None, source=None):
    receive = received(pid=None, started=False) if receive is None else receive
    source = ok({"argv": MIGRATE_ARGV, "checks": {}, "migrated": False, "transport": "stream",
                 "stream_address": "192.168.100.2:31000", "source_address": "192.168.100.1",
                 "receive_argv": RECEIVE_ARGV}) if source is None else source  # fmt: skip
    return receive, source


def dry_cluster(pre, receive, source):
    inner = cluster(pre)

    def cmd(tgt, fun, *args, **kwargs):
        if fun == RECEIVE:
            return {"node2": receive} if receive else {}
        if fun == XL_MIGRATE:
            return {"node1": source} if source else {}
        assert fun != STOP
        return inner(tgt, fun, *args, **kwargs)

    return cmd


def test_a_stream_dry_run_proves_both_ends_and_starts_nothing(master, answers, bus, context):  # noqa: F811
    master.cmd.side_effect = dry_cluster(answers, *dry_answers())
    result = runner.migrate("web1", transport="stream", dry_run=True)
    assert calls(master)[1:] == [
        ((["node2"], RECEIVE, [31000, "192.168.100.2", "192.168.100.1"]),
         {"kwarg": {"accept_timeout": 60, "dry_run": True}, "timeout": 30, "tgt_type": "list", "full_return": True}),
        ((["node1"], XL_MIGRATE, ["web1", "node2"]),
         {"kwarg": dict(LAB_KWARG, dry_run=True), "timeout": 30, "tgt_type": "list", "full_return": True}),
    ]  # fmt: skip
    assert result["result"] is True and result["ran"] is False and context == {}
    assert result["message"] == "would migrate web1 from node1 to node2 over stream"
    assert result["checks"][-1] == {"check": "stream_ready", "ok": True, "message": "node2 can listen at "
                                    "192.168.100.2:31000 for 192.168.100.1, node1 can stream web1 to it"}
    assert result["stream"] == {"stream_address": "192.168.100.2:31000", "stream_from": "192.168.100.1",
                                "port": 31000, "receive_argv": RECEIVE_ARGV, "argv": MIGRATE_ARGV}
    assert bus.events == [] and records() == {}


def test_a_stream_dry_run_says_what_is_missing_on_each_end(master, answers, context):  # noqa: F811
    receive = {"ret": "ERROR: socat is not installed on this host (the xencluster formula installs it)",
               "retcode": 1}
    source = {"ret": "ERROR: /usr/libexec/xencluster/xl-stream-connect is missing or not executable on this host",
              "retcode": 1}
    master.cmd.side_effect = dry_cluster(answers, receive, source)
    result = runner.migrate("web1", transport="stream", dry_run=True)
    assert result["result"] is False and context["retcode"] == 1 and "stream" not in result
    check = result["checks"][-1]
    assert check["check"] == "stream_ready" and check["ok"] is False
    assert check["message"] == ("node2: xencluster_xl.stream_receive failed: ERROR: socat is not installed on this "
                                "host (the xencluster formula installs it); node1: xencluster_xl.migrate failed: "
                                "ERROR: /usr/libexec/xencluster/xl-stream-connect is missing or not executable on "
                                "this host")  # fmt: skip
    assert result["message"] == "would not migrate web1: 1 check(s) failed (stream_ready); it runs on node1"


def test_a_stream_dry_run_with_a_silent_target(master, answers):  # noqa: F811
    master.cmd.side_effect = dry_cluster(answers, {}, dry_answers()[1])
    check = runner.migrate("web1", transport="stream", dry_run=True)["checks"][-1]
    assert check["ok"] is False and check["message"] == "node2 (minion node2) did not answer"


def test_an_ssh_dry_run_publishes_only_the_prechecks(master, answers):  # noqa: F811
    master.cmd.side_effect = dry_cluster(answers, *dry_answers())
    result = runner.migrate("web1", dry_run=True)
    assert funs(master) == [[REPORT, INFO]] and "stream_ready" not in [c["check"] for c in result["checks"]]


# --- an interrupted stream migration ----------------------------------------------------------------


def test_a_rerun_tells_where_an_interrupted_stream_listener_may_wait(master, answers, moved, jid_event):  # noqa: F811
    record = interrupted_record("migrate", "web1", {"guest": "web1", "target": None, "transport": "stream"},
                                ["guest.web1"], "migrate web1->node2", steps=("prechecked", "xl_migrate_started"),
                                source="node1", target="node2", stream_target="node2", stream_port=31000)
    master.cmd.side_effect = stream_cluster(answers, {"node1": migrated()}, moved)
    result = runner.migrate("web1", transport="stream")
    assert result["result"] is True and result["interrupted"][0]["status"] == "interrupted"
    line = (f"op {record['op']} had a stream listener on node2 port 31000: it exits by itself within 60 s of its "
            "start when nothing connects (xencluster_xl.stream_stop 31000 on node2 stops it now)")
    assert line in progress(jid_event)
    assert funs(master).count(STOP) == 1  # only its own listener's: the old one is never stopped from here


# --- evacuate transport=stream ------------------------------------------------------------------


def test_evacuate_passes_the_transport_to_every_migration(master, monkeypatch, bus):  # noqa: F811
    seen = []

    def one(client, model, guest, target, dry_run, timeout, transport, check_timeout):
        seen.append((guest, dry_run, transport))
        return {"result": True, "retcode": 0, "guest": guest, "source": "node1", "target": target, "checks": [],
                "ran": not dry_run, "where": [target], "duration_s": 25.0, "xl_duration_s": 23.0, "message": "ok"}

    monkeypatch.setattr(runner, "_migrate_one", one)
    lists = {"node1": running(monkeypatch, "web1"), "node2": running(monkeypatch, "db1")}
    master.cmd.side_effect = lambda tgt, fun, **kw: {m: {"ret": lists[m], "retcode": 0} for m in tgt}
    result = runner.evacuate("node1", transport="stream")
    assert seen == [("web1", False, "stream")] and result["result"] is True
    assert result["moved"] == [{"guest": "web1", "from": "node1", "to": "node2", "duration_s": 25.0,
                                "xl_duration_s": 23.0}]  # fmt: skip
    assert dict(bus.events)["xencluster/evacuate/node1/started"]["transport"] == "stream"
    [record] = [r for r in records().values() if r["verb"] == "evacuate"]
    assert record["rerun"] == "salt-run xencluster.evacuate node1 transport=stream"
    runner.undrain("node1")
    seen.clear()
    assert runner.evacuate("node1", transport="stream", dry_run=True)["result"] is True
    assert seen == [("web1", True, "stream")]
    seen.clear()
    runner.undrain("node1")
    runner.evacuate("node1")
    assert seen == [("web1", False, "ssh")]


def test_evacuate_refuses_an_unknown_transport(master, context):  # noqa: F811
    result = runner.evacuate("node1", transport="tcp")
    assert result["result"] is False and context["retcode"] == 1
    assert result["message"] == "not evacuating node1: transport must be one of ssh, stream: 'tcp'"
    master.cmd.assert_not_called()
    assert runner._drained() == []
