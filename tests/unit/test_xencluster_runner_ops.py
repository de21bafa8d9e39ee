"""The runner's safety: one lock per guest and node, the operation journal, EOPINTERRUPTED, resuming migrate.

The dom0 answers are those of the migrate tests (the REAL ``xencluster_xl``
parsers over the recordings, see test_xencluster_runner_migrate.py) and, for
verify, the converged reports of test_xencluster_runner_verify.py. The locks
and the journal are the real ones: the Salt master cache (localfs) and the
flock file under a private cachedir per test.

An interrupted operation is made for real: a separate Python process runs
``migrate`` against a fake LocalClient that never answers one publish (the
pre-check round, or ``xl migrate``), the test waits until the journal shows
that step, then kills it with SIGKILL, exactly what happens to a ``salt-run``
killed mid-flight. Two calls at once run in threads of this process (the
LocalClient fake blocks the first one) or in separate processes (the flock).
"""

import contextvars
import copy
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import salt.cache
import salt.config
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
from test_xencluster_runner_migrate import domains_of
from test_xencluster_runner_migrate import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import master  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import ok
from test_xencluster_runner_migrate import running
from test_xencluster_runner_verify import healthy_reports

from saltext.xencluster.runners import xencluster as runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOST = socket.gethostname()


def cache():
    return salt.cache.factory(runner.__opts__)


def locks():
    c = cache()
    return {key: c.fetch(runner.LOCKS_BANK, key) for key in c.list(runner.LOCKS_BANK)}


def records():
    return runner._op_records(cache())


def when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def progress(jid_event):  # noqa: F811
    return [c.args[0]["message"] for c in jid_event.fire_event.call_args_list]


def interrupted_record(verb, subject, args, keys, title, steps=(), parent=None, **detail):
    """The record and locks of an operation whose process died: written by ``_begin``, then its owner pid dead."""
    op, refusal = runner._begin(verb, subject, args, keys, title)
    assert refusal is None, refusal
    op["detail"].update(detail)
    op["parent"] = parent
    for step in steps:
        runner._op_step(op, step)
    op.update(pid=dead_pid(), pid_start=None)
    runner._save_op(op)
    c = cache()
    for key in keys:
        c.store(runner.LOCKS_BANK, key, dict(c.fetch(runner.LOCKS_BANK, key), pid=op["pid"], pid_start=None))
    assert runner._alive(op) is False
    return op


def live_lock(verb, subject, keys, title, args=None):
    """An operation of this (live) process holding ``keys``."""
    args = args or {"node": subject, "guest": subject}
    op, refusal = runner._begin(verb, subject, args, keys, title)
    assert refusal is None, refusal
    return op


# --- an interrupted migrate: a real process, killed -9 -----------------------------------------

CHILD = r"""
import copy, json, sys, time
import salt.config
from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.runners import xencluster as runner

cfg = json.loads(open(sys.argv[1]).read())


class Bus:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def fire_event(self, data, tag):
        pass


class Client:
    def __init__(self, *args, **kwargs):
        pass

    def destroy(self):
        pass

    def cmd(self, tgt, fun, *args, **kwargs):
        name = fun if isinstance(fun, str) else "precheck"
        if name == cfg["hang"]:
            open(cfg["marker"], "w").close()  # tell the test it is here
            time.sleep(3600)  # never answers: the test kills this process here
        if name == "precheck":
            return {m: a for m, a in cfg["answers"].items() if m in tgt}
        return {}


runner.__opts__ = dict(salt.config.DEFAULT_MASTER_OPTS, **cfg["opts"])
runner.__context__ = {}
runner.salt.client.LocalClient = Client
runner.salt.utils.event.get_master_event = lambda *args, **kwargs: Bus()
runner._pillar_model = lambda tgt, tgt_type: ("node1", copy.deepcopy(cfg["raw"]))
runner._validate = lambda raw: model_mod.validate(raw)
runner.migrate("web1", *cfg["args"])
"""


def killed_migrate(tmp_path, answers, hang, step, args=()):  # noqa: F811
    """Run ``migrate web1`` in a process of its own until its record reaches ``step``; SIGKILL it. Its record."""
    opts = {k: runner.__opts__[k] for k in ("cachedir", "sock_dir", "conf_file")}
    path, marker = tmp_path / "child.json", tmp_path / "child.hanging"
    marker.unlink(missing_ok=True)
    path.write_text(json.dumps({"opts": opts, "answers": answers, "raw": RAW, "hang": hang, "args": list(args),
                                "marker": str(marker)}))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # the child is inside the publish that never answers
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"the child never reached {hang}"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: no zombie left with that pid
    [record] = [r for r in records().values() if r.get("pid") == proc.pid]
    assert (record["status"], record["step"]) == ("running", step)
    assert locks()["guest.web1"]["op"] == record["op"]
    return record


# --- liveness of an owner --------------------------------------------------------------------


def test_alive_this_process_a_dead_pid_a_zombie_a_reused_pid_another_host():
    me = runner._owner_fields()
    assert me["pid"] == os.getpid() and me["host"] == HOST and isinstance(me["pid_start"], int)
    assert runner._alive(me) is True
    assert runner._alive(dict(me, pid=dead_pid(), pid_start=None)) is False
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while runner._proc_stat(zombie.pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(zombie.pid, 0)  # the pid still exists...
        assert runner._alive(dict(me, pid=zombie.pid, pid_start=None)) is False  # ...but it is dead
    finally:
        zombie.wait()
    assert runner._alive(dict(me, pid_start=me["pid_start"] + 1)) is False  # pid reused by a later process
    assert runner._alive(dict(me, host="elsewhere")) is None  # cannot be told: counts as alive
    assert runner._alive(dict(me, pid="1")) is False and runner._alive(None) is False


# --- begin / end, busy, stale, pruning ----------------------------------------------------------


def test_begin_writes_the_record_and_the_lock_end_closes_and_releases():
    before = int(time.time())
    op, refusal = runner._begin("migrate", "web1", {"guest": "web1", "target": None}, ["guest.web1"],
                                "migrate web1")  # fmt: skip
    assert refusal is None and runner.salt.utils.jid.is_jid(op["op"]) and op["op"].endswith(f"_{os.getpid()}")
    stored = records()[op["op"]]
    assert stored == op and stored["status"] == "running" and stored["step"] == "started"
    assert (stored["pid"], stored["host"], stored["guest"], stored["node"]) == (os.getpid(), HOST, "web1", None)
    assert stored["rerun"] == "salt-run xencluster.migrate web1" and before <= stored["started"] <= time.time()
    lock = locks()["guest.web1"]
    assert (lock["op"], lock["verb"], lock["pid"], lock["host"]) == (op["op"], "migrate", os.getpid(), HOST)
    runner._op_step(op, "prechecked", source="node1", target="node2")
    assert records()[op["op"]]["detail"] == {"source": "node1", "target": "node2"}
    runner._end(op, {"result": True, "message": "web1 migrated"})
    assert locks() == {}
    stored = records()[op["op"]]
    assert (stored["status"], stored["message"], stored["step"]) == ("finished", "web1 migrated", "finished")
    assert [s["step"] for s in stored["steps"]] == ["started", "prechecked", "finished"]


@pytest.mark.parametrize("result, status", [({"result": False, "message": "x"}, "failed"), (None, "failed")])
def test_end_of_a_failure_or_an_exception(result, status):
    op, _r = runner._begin("backup", "all", {"guest": None}, [], "backup all")
    runner._end(op, result)
    assert records()[op["op"]]["status"] == status
    assert runner._rerun("backup", {"guest": None}) == "salt-run xencluster.backup all=True"


def test_a_live_lock_is_busy_with_its_holder():
    op, _r = runner._begin("migrate", "web1", {"guest": "web1"}, ["guest.web1"], "migrate web1")
    op["title"] = "migrate web1->node2"
    runner._save_op(op)
    again, refusal = runner._begin("backup", "web1", {"guest": "web1"}, ["guest.web1"], "backup web1")
    assert again is None
    started = locks()["guest.web1"]["started"]
    assert refusal["message"] == (f"busy: web1 is locked by migrate web1->node2 (op {op['op']}, pid {os.getpid()} on "
                                  f"{HOST}, since {when(started)})")  # fmt: skip
    assert (refusal["op"], refusal["verb"], refusal["key"], refusal["alive"]) == (op["op"], "migrate", "guest.web1",
                                                                                   True)  # fmt: skip
    assert list(records()) == [op["op"]]  # the refused call wrote nothing
    assert runner._busy(["node.node1", "guest.web1"])["op"] == op["op"] and runner._busy(["guest.db1"]) is None


def test_a_lock_held_on_another_host_is_busy_and_says_how_to_clear_it():
    cache().store(runner.LOCKS_BANK, "node.node1", {"op": "20260101000000000000_7", "verb": "evacuate",
                                                    "title": "evacuate node1", "pid": 7, "host": "master2",
                                                    "started": 1767225600})  # fmt: skip
    _op, refusal = runner._begin("restore", "node1", {"node": "node1"}, ["node.node1"], "restore node1")
    assert refusal["alive"] is None and refusal["message"] == (
        "busy: node1 is locked by evacuate node1 (op 20260101000000000000_7, pid 7 on master2, since 2026-01-01 "
        "00:00:00 UTC); it ran on another host: whether it still runs cannot be told here (once it is certainly "
        "gone: salt-run cache.flush xencluster/locks node.node1)")  # fmt: skip


def test_a_stale_lock_is_taken_over():
    cache().store(runner.LOCKS_BANK, "guest.web1", {"op": "20260101000000000000_9", "verb": "migrate", "pid": dead_pid(),
                                                    "host": HOST, "started": 1767225600})  # fmt: skip
    op, refusal = runner._begin("migrate", "web1", {"guest": "web1"}, ["guest.web1"], "migrate web1")
    assert refusal is None and locks()["guest.web1"]["op"] == op["op"]
    assert [t["op"] for t in records()[op["op"]]["taken_over"]] == ["20260101000000000000_9"]


def test_the_journal_keeps_the_newest_ended_records_and_every_running_one():
    c = cache()
    for i in range(60):
        c.store(runner.OPS_BANK, f"2026010100000000{i:04d}_1",
                {"op": f"2026010100000000{i:04d}_1", "status": "finished", "ended": 1767225600 + i})
    old_running = {"op": "20250101000000000000_1", "status": "running", "pid": dead_pid(), "host": HOST,
                   "ended": None}  # fmt: skip
    c.store(runner.OPS_BANK, old_running["op"], old_running)
    op, _r = runner._begin("migrate", "web1", {"guest": "web1"}, ["guest.web1"], "migrate web1")
    kept = records()
    ended = sorted(k for k, r in kept.items() if r["status"] != "running")
    assert ended == [f"2026010100000000{i:04d}_1" for i in range(10, 60)]  # the 50 newest
    assert old_running["op"] in kept and op["op"] in kept and len(kept) == runner.OPS_KEEP + 2


def test_a_cache_that_fails_refuses_without_busy_and_leaves_nothing_running(master, monkeypatch, context):
    def broken(*args):
        raise runner.SaltCacheError("disk full")

    monkeypatch.setattr(runner, "_store_locks", broken)
    result = runner.migrate("web1")
    assert (result["result"], result["retcode"], context["retcode"]) == (False, 1, 1) and "busy" not in result
    assert result["message"] == "cannot lock web1 in the master cache: disk full"
    master.cmd.assert_not_called()
    [record] = records().values()  # written before the locks: closed, not left to look interrupted
    assert record["status"] == "failed" and runner._op_findings()[0] == []


def test_the_locks_never_go_through_the_in_process_memcache(monkeypatch):
    monkeypatch.setitem(runner.__opts__, "memcache_expire_seconds", 10)
    assert isinstance(salt.cache.factory(runner.__opts__), salt.cache.MemCache)
    assert type(runner._ops_cache()) is salt.cache.Cache  # pylint: disable=unidiomatic-typecheck


LOCKER = r"""
import json, sys, time
import salt.config
from saltext.xencluster.runners import xencluster as runner

runner.__opts__ = dict(salt.config.DEFAULT_MASTER_OPTS, cachedir=sys.argv[1])
while time.time() < float(sys.argv[2]):  # every process starts at the same moment
    pass
op, refusal = runner._begin("migrate", "web1", {"guest": "web1"}, ["guest.web1"], "migrate web1")
print(json.dumps({"op": op and op["op"], "busy": (refusal or {}).get("op")}), flush=True)
sys.stdin.read()  # alive, holding what it took, until every process has answered
"""


def test_check_and_set_is_atomic_across_processes():
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, runner.__opts__["cachedir"], str(start)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(6)]  # fmt: skip
    try:
        out = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    winners = [o["op"] for o in out if o["op"]]
    assert len(winners) == 1, out
    assert all(o["busy"] == winners[0] for o in out if not o["op"]), out


# --- migrate: busy, no lock in a dry run, released on an exception ------------------------------


def blocking_cluster(answers, monkeypatch, release, entered):  # noqa: F811
    """The migrate publishes of a converged cluster; xl migrate waits for ``release``. Records each call's thread."""
    moved = {"node1": {}, "node2": running(monkeypatch, "db1", "web1")}
    inner = cluster(answers, {"node1": ok({"migrated": True})}, moved)
    calls = []

    def cmd(tgt, fun, *args, **kwargs):
        calls.append((threading.current_thread().name, fun))
        if fun == XL_MIGRATE:
            entered.set()
            assert release.wait(30)
        return inner(tgt, fun, *args, **kwargs)

    return cmd, calls


def in_thread(fun, *args, **kwargs):
    out = {}
    ctx = contextvars.copy_context()  # Salt's loader dunders may live in the context
    thread = threading.Thread(target=lambda: out.update(result=ctx.run(fun, *args, **kwargs)), name="first")
    thread.start()
    return thread, out


def test_a_second_migrate_of_the_same_guest_is_busy_and_publishes_nothing(master, answers, monkeypatch, bus):
    release, entered = threading.Event(), threading.Event()
    master.cmd.side_effect, calls = blocking_cluster(answers, monkeypatch, release, entered)
    thread, first = in_thread(runner.migrate, "web1")
    try:
        assert entered.wait(30)  # the first one is in xl migrate, holding web1
        second = runner.migrate("web1")
        dry = runner.migrate("web1", dry_run=True)
    finally:
        release.set()
        thread.join(30)
    [holder] = [r for r in records().values() if r["verb"] == "migrate"]
    message = (f"busy: web1 is locked by migrate web1->node2 (op {holder['op']}, pid {os.getpid()} on {HOST}, "
               f"since {when(holder['steps'][0]['at'])})")  # fmt: skip
    for result in (second, dry):
        assert (result["result"], result["retcode"], result["ran"], result["checks"]) == (False, 1, False, [])
        assert result["message"] == message and result["busy"]["op"] == holder["op"]
    assert [c for c in calls if c[0] != "first"] == []  # the busy calls published nothing
    assert [fun for _t, fun in calls] == [[REPORT, INFO], XL_MIGRATE, LIST]
    assert first["result"]["result"] is True and first["result"]["ran"] is True
    assert holder["status"] == "finished" and locks() == {}
    assert [s["step"] for s in holder["steps"]] == ["started", "prechecked", "xl_migrate_started", "post_checked",
                                                    "finished"]  # fmt: skip
    assert bus.tags() == ["xencluster/migrate/web1/prechecked", "xencluster/migrate/web1/started",
                          "xencluster/migrate/web1/finished"]  # the busy calls fired nothing


def test_two_migrates_started_together_exactly_one_runs(master, answers, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    master.cmd.side_effect, calls = blocking_cluster(answers, monkeypatch, release, entered)
    gate = threading.Barrier(2)
    results = []

    def go():
        gate.wait(10)
        results.append(runner.migrate("web1"))
        if len(results) == 1:
            release.set()  # whichever is busy returns first and lets the other finish

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(go,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r["result"] for r in results) == [False, True]
    assert [r["message"].startswith("busy: web1 is locked by migrate web1") for r in results].count(True) == 1
    assert [fun for _t, fun in calls].count(XL_MIGRATE) == 1 and locks() == {}


def test_a_dry_run_takes_no_lock_and_writes_no_journal(master, answers):
    seen = []
    inner = cluster(answers)

    def cmd(tgt, fun, *args, **kwargs):
        seen.append((locks(), records()))  # what the cache holds while the dry run publishes
        return inner(tgt, fun, *args, **kwargs)

    master.cmd.side_effect = cmd
    result = runner.migrate("web1", dry_run=True)
    assert result["result"] is True and seen == [({}, {})]
    assert locks() == {} and records() == {} and not os.path.exists(
        os.path.join(runner.__opts__["cachedir"], runner.OPS_BANK))


def test_the_lock_is_released_when_migrate_raises(master, answers):
    def cmd(tgt, fun, *args, **kwargs):
        raise RuntimeError("the master is shutting down")

    master.cmd.side_effect = cmd
    with pytest.raises(RuntimeError):
        runner.migrate("web1")
    assert locks() == {}
    [record] = records().values()
    assert record["status"] == "failed" and record["message"] == "the runner raised an exception (master log)"
    master.cmd.side_effect = cluster(answers)
    assert runner.migrate("web1", dry_run=True)["result"] is True  # not busy


# --- an interrupted migrate: verify, then the re-run --------------------------------------------


def test_verify_reports_a_killed_migrate_as_EOPINTERRUPTED(master, answers, tmp_path, monkeypatch, context):
    master.cmd.side_effect = lambda tgt, fun, **kw: {m: a for m, a in healthy.items() if m in tgt}
    healthy = healthy_reports(monkeypatch, tmp_path)
    clean = runner.status(guests=False)
    assert clean["findings"] == [] and clean["retcode"] == 0 and clean["summary"]["operations"] == []
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    result = runner.status(guests=False)
    assert result["retcode"] == 1 and result["ok"] is False and context["retcode"] == 1
    [finding] = result["findings"]
    assert finding == {
        "code": "EOPINTERRUPTED", "severity": "error", "node": None, "guest": "web1", "leg": None,
        "message": f"operation migrate web1->node2 (op {record['op']}, pid {record['pid']} on {HOST}, started "
                   f"{when(record['started'])}, last step xl_migrate_started at {when(record['updated'])}) was "
                   "interrupted: its owner is gone; re-run `salt-run xencluster.migrate web1` to finish or clean up",
    }  # fmt: skip
    assert result["summary"]["codes"] == {"EOPINTERRUPTED": 1} and result["summary"]["operations"] == []
    ops = runner.ops()
    assert [r["op"] for r in ops["interrupted"]] == [record["op"]] and ops["running"] == []
    assert ops["locks"]["guest.web1"]["alive"] is False


def test_a_running_operation_is_no_finding(master, tmp_path, monkeypatch):
    healthy = healthy_reports(monkeypatch, tmp_path)
    master.cmd.side_effect = lambda tgt, fun, **kw: {m: a for m, a in healthy.items() if m in tgt}
    op, _r = runner._begin("evacuate", "node2", {"node": "node2"}, ["node.node2"], "evacuate node2")
    result = runner.verify(guests=False)
    assert result["findings"] == [] and result["retcode"] == 0
    assert result["summary"]["operations"] == [{"op": op["op"], "verb": "evacuate", "title": "evacuate node2",
                                                "step": "started", "pid": os.getpid(), "host": HOST,
                                                "started": op["started"], "alive": True}]  # fmt: skip


def moved_to_node2(answers, monkeypatch):  # noqa: F811
    domains_of(answers, "node1").pop("web1")
    domains_of(answers, "node2").update(running(monkeypatch, "web1"))


def test_rerun_finds_the_guest_on_the_target_closes_it_as_completed(master, answers, tmp_path, monkeypatch, bus,
                                                                    jid_event):  # fmt: skip
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    moved_to_node2(answers, monkeypatch)  # xl migrate completed on the minion after salt-run was killed
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1")
    assert [c.args[1] for c in master.cmd.call_args_list] == [[REPORT, INFO]]  # no second xl migrate
    message = f"web1 runs on node2: the interrupted migration to node2 (op {record['op']}) had completed; nothing to migrate"
    assert (result["result"], result["retcode"], result["ran"], result["message"]) == (True, 0, False, message)
    assert (result["source"], result["target"], result["where"]) == ("node1", "node2", ["node2"])
    [entry] = result["interrupted"]
    assert (entry["op"], entry["status"], entry["note"]) == (record["op"], "finished",
                                                             "completed by re-run: web1 runs on node2")  # fmt: skip
    old = records()[record["op"]]
    assert (old["status"], old["note"]) == ("finished", "completed by re-run: web1 runs on node2")
    [new] = [r for r in records().values() if r["op"] != record["op"]]
    assert old["closed_by"] == new["op"] and new["status"] == "finished" and new["message"] == message
    assert locks() == {}
    assert bus.tags() == [f"xencluster/op/{record['op']}/interrupted", f"xencluster/op/{record['op']}/closed"]
    assert bus.events[0][1]["by"] == new["op"] and bus.events[1][1]["status"] == "finished"
    lines = progress(jid_event)
    assert lines[0].startswith(f"found the interrupted migrate web1->node2 (op {record['op']}, pid {record['pid']}")
    assert lines[1] == f"migrate web1->node2 (op {record['op']}) closed: completed by re-run: web1 runs on node2"
    assert lines[2] == f"web1: {message}"


def test_rerun_with_another_target_closes_it_and_migrates(master, answers, tmp_path, monkeypatch):
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    moved_to_node2(answers, monkeypatch)
    back = {"node1": running(monkeypatch, "web1"), "node2": running(monkeypatch, "db1")}
    master.cmd.side_effect = cluster(answers, {"node2": ok({"migrated": True})}, back)
    result = runner.migrate("web1", "node1")
    assert [c.args[1] for c in master.cmd.call_args_list] == [[REPORT, INFO], XL_MIGRATE, LIST]
    assert master.cmd.call_args_list[1].args[:3] == (["node2"], XL_MIGRATE, ["web1", "node1"])
    assert result["result"] is True and result["source"] == "node2" and result["target"] == "node1"
    assert records()[record["op"]]["status"] == "finished"


def test_rerun_finds_the_guest_still_on_the_source_cleans_up_and_migrates(master, answers, tmp_path, monkeypatch):
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    moved = {"node1": {}, "node2": running(monkeypatch, "db1", "web1")}
    master.cmd.side_effect = cluster(answers, {"node1": ok({"migrated": True})}, moved)  # still on node1
    result = runner.migrate("web1")
    assert [c.args[1] for c in master.cmd.call_args_list] == [[REPORT, INFO], XL_MIGRATE, LIST]
    assert result["result"] is True and result["ran"] is True
    old = records()[record["op"]]
    assert (old["status"], old["note"]) == ("interrupted", "interrupted, guest still on node1: cleaned up")
    assert result["interrupted"][0]["status"] == "interrupted" and locks() == {}


def test_rerun_after_a_kill_before_xl_migrate(master, answers, tmp_path, monkeypatch):
    record = killed_migrate(tmp_path, answers, "precheck", "started")
    moved = {"node1": {}, "node2": running(monkeypatch, "db1", "web1")}
    master.cmd.side_effect = cluster(answers, {"node1": ok({"migrated": True})}, moved)
    result = runner.migrate("web1")
    assert result["result"] is True and XL_MIGRATE in [c.args[1] for c in master.cmd.call_args_list]
    old = records()[record["op"]]
    assert (old["status"], old["note"]) == ("interrupted", "interrupted at started, before xl migrate: nothing had "
                                                           "changed; cleaned up")  # fmt: skip


def test_rerun_refuses_a_migration_still_in_flight(master, answers, tmp_path, monkeypatch, context):
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    domains_of(answers, "node2").update(running(monkeypatch, "web1--incoming"))
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1")
    assert [c.args[1] for c in master.cmd.call_args_list] == [[REPORT, INFO]]
    assert result["result"] is False and result["retcode"] == 1 and context["retcode"] == 1
    assert result["message"] == (
        f"not migrating web1: a migration of web1 is still in flight (web1--incoming on node2) from the interrupted "
        f"migrate web1->node2 (op {record['op']}, pid {record['pid']} on {HOST}, started {when(record['started'])}, "
        f"last step xl_migrate_started at {when(record['updated'])}): its xl migrate may still run on node1; wait "
        "until it ends (salt-run xencluster.verify), then re-run `salt-run xencluster.migrate web1`")  # fmt: skip
    assert records()[record["op"]]["status"] == "running"  # left open: verify still reports it
    assert result["interrupted"][0]["status"] == "running" and locks() == {}
    assert [f["code"] for f in runner._op_findings()[0]] == ["EOPINTERRUPTED"]


def test_rerun_on_a_double_run_raises_the_alarm_and_leaves_it_open(master, answers, tmp_path, monkeypatch):
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    domains_of(answers, "node2").update(running(monkeypatch, "web1"))
    master.cmd.side_effect = cluster(answers)
    result = runner.migrate("web1")
    assert [c.args[1] for c in master.cmd.call_args_list] == [[REPORT, INFO]]
    assert result["result"] is False and result["where"] == ["node1", "node2"]
    assert "DOUBLE RUN: web1 runs on node1 and node2" in result["checks"][0]["message"]
    assert records()[record["op"]]["status"] == "running"


def test_a_dry_run_shows_the_interrupted_record_and_changes_nothing(master, answers, tmp_path, monkeypatch, bus):
    record = killed_migrate(tmp_path, answers, XL_MIGRATE, "xl_migrate_started")
    moved_to_node2(answers, monkeypatch)
    master.cmd.side_effect = cluster(answers)
    before_locks, before_records = locks(), records()
    result = runner.migrate("web1", dry_run=True)  # a stale lock is no busy
    assert result["result"] is True and result["message"].startswith("web1 runs on node2: the interrupted")
    assert result["interrupted"][0]["status"] == "finished"  # what a real run closes it with
    assert locks() == before_locks and records() == before_records and bus.events == []
    assert records()[record["op"]]["status"] == "running"
