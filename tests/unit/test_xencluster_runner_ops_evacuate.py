"""The runner's safety for evacuate (the node's lock, each guest's through migrate) and the journal of every verb.

The dom0 answers are those of the migrate and evacuate tests (the REAL
``xencluster_xl`` parsers over the recordings); the locks and the journal are
the real ones (localfs master cache, flock) under a private cachedir. An
interrupted operation is a record written by ``_begin`` whose owner pid is
then a dead process (test_xencluster_runner_ops.py kills real ones).
"""

import time

import pytest
from test_xencluster_runner_evacuate import cluster_in_time
from test_xencluster_runner_migrate import INFO
from test_xencluster_runner_migrate import LIST
from test_xencluster_runner_migrate import REPORT
from test_xencluster_runner_migrate import XL_MIGRATE
from test_xencluster_runner_migrate import answers  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import bus  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import configure_loader_modules  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import context  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_migrate import master  # noqa: F401  (fixture)
from test_xencluster_runner_ops import HOST
from test_xencluster_runner_ops import interrupted_record
from test_xencluster_runner_ops import live_lock
from test_xencluster_runner_ops import locks
from test_xencluster_runner_ops import records
from test_xencluster_runner_ops import when

from saltext.xencluster.runners import xencluster as runner


def funs(master):  # noqa: F811
    return [c.args[1] for c in master.cmd.call_args_list]


# --- busy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True])
def test_evacuate_of_a_locked_node_is_busy_and_touches_nothing(master, bus, context, dry_run):
    holder = live_lock("restore", "node1", ["node.node1"], "restore node1")
    result = runner.evacuate("node1", dry_run=dry_run)
    message = (f"busy: node1 is locked by restore node1 (op {holder['op']}, pid {holder['pid']} on {HOST}, since "
               f"{when(locks()['node.node1']['started'])})")  # fmt: skip
    assert (result["result"], result["retcode"], result["drained"], result["message"]) == (False, 1, False, message)
    assert result["busy"]["op"] == holder["op"] and context["retcode"] == 1
    master.cmd.assert_not_called()
    assert runner._drained() == [] and bus.events == [] and list(records()) == [holder["op"]]


def test_evacuate_a_guest_another_operation_holds_fails_busy(master, answers, monkeypatch, bus):
    holder = live_lock("backup", "web1", ["guest.web1"], "backup web1")
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node1")
    assert funs(master) == [LIST]  # web1's migration published nothing
    [failed] = result["failed"]
    assert failed["guest"] == "web1" and failed["message"] == (
        f"busy: web1 is locked by backup web1 (op {holder['op']}, pid {holder['pid']} on {HOST}, since "
        f"{when(locks()['guest.web1']['started'])})")  # fmt: skip
    assert result["result"] is False and runner._drained() == ["node1"]
    assert set(locks()) == {"guest.web1"}  # the evacuate's node lock is released, the backup's is not


def test_evacuate_locks_the_node_and_each_guest_while_it_migrates(master, answers, monkeypatch):
    seen = []
    inner = cluster_in_time(answers, monkeypatch)

    def cmd(tgt, fun, *args, **kwargs):
        seen.append((fun, sorted(locks())))
        return inner(tgt, fun, *args, **kwargs)

    master.cmd.side_effect = cmd
    result = runner.evacuate("node1")
    assert result["result"] is True
    assert seen == [(LIST, ["node.node1"]), ([REPORT, INFO], ["guest.web1", "node.node1"]),
                    (XL_MIGRATE, ["guest.web1", "node.node1"]), (LIST, ["guest.web1", "node.node1"])]
    assert locks() == {}
    [evacuation] = [r for r in records().values() if r["verb"] == "evacuate"]
    [migration] = [r for r in records().values() if r["verb"] == "migrate"]
    assert migration["parent"] == evacuation["op"] and migration["status"] == evacuation["status"] == "finished"
    assert [s["step"] for s in evacuation["steps"]] == ["started", "drained", "listed", "finished"]


def test_a_dry_run_says_a_guest_is_busy_and_takes_nothing(master, answers, monkeypatch, bus):
    holder = live_lock("backup", "web1", ["guest.web1"], "backup web1")
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node1", dry_run=True)
    assert funs(master) == [LIST]
    assert result["plan"][0]["message"].startswith("busy: web1 is locked by backup web1")
    assert result["result"] is False and list(records()) == [holder["op"]] and bus.events == []


# --- an interrupted evacuation, resumed ----------------------------------------------------------


def test_rerun_resumes_an_interrupted_evacuation(master, answers, monkeypatch, bus, jid_event):
    old = interrupted_record("evacuate", "node1", {"node": "node1"}, ["node.node1"], "evacuate node1",
                             steps=["drained", "listed"])  # fmt: skip
    # killed while db1 was in xl migrate (it has since arrived on node2) and web1 was pre-checked
    gone = interrupted_record("migrate", "db1", {"guest": "db1", "target": "node2"}, ["guest.db1"],
                              "migrate db1->node2", steps=["prechecked", "xl_migrate_started"], parent=old["op"],
                              source="node1", target="node2")  # fmt: skip
    web1 = interrupted_record("migrate", "web1", {"guest": "web1", "target": "node2"}, ["guest.web1"],
                              "migrate web1->node2", steps=["prechecked"], parent=old["op"], source="node1",
                              target="node2")  # fmt: skip
    assert sorted(f["guest"] or f["node"] for f in runner._op_findings()[0]) == ["db1", "node1", "web1"]
    master.cmd.side_effect = cluster_in_time(answers, monkeypatch)
    result = runner.evacuate("node1")
    assert funs(master) == [LIST, [REPORT, INFO], XL_MIGRATE, LIST]  # web1 only: db1 is not on node1
    assert result["result"] is True and [m["guest"] for m in result["moved"]] == ["web1"]
    assert [e["op"] for e in result["interrupted"]] == [old["op"]]
    new = next(r for r in records().values() if r["verb"] == "evacuate" and r["op"] != old["op"])
    stored = records()
    assert (stored[old["op"]]["status"], stored[old["op"]]["note"]) == (
        "interrupted", f"interrupted at listed; resumed by op {new['op']}: the guests still on node1 are migrated "
        "now (web1 -> node2)")  # fmt: skip
    assert (stored[gone["op"]]["status"], stored[gone["op"]]["note"]) == (
        "interrupted", f"interrupted at xl_migrate_started; closed by evacuate node1 (op {new['op']}): db1 is no "
        "longer on node1")  # fmt: skip
    assert (stored[web1["op"]]["status"], stored[web1["op"]]["note"]) == (
        "interrupted", "interrupted at prechecked, before xl migrate: nothing had changed; cleaned up")
    assert runner._op_findings()[0] == [] and locks() == {}
    assert [t["key"] for t in new["taken_over"]] == ["node.node1"]
    tags = bus.tags()
    assert tags[:3] == [f"xencluster/op/{old['op']}/interrupted", f"xencluster/op/{gone['op']}/closed",
                        f"xencluster/op/{old['op']}/closed"]  # fmt: skip
    assert f"xencluster/op/{web1['op']}/closed" in tags and tags[-1] == "xencluster/evacuate/node1/finished"


# --- EOPINTERRUPTED of every verb: what to run ----------------------------------------------------


@pytest.mark.parametrize(
    "verb, subject, args, title, where, rerun",
    [
        ("migrate", "web1", {"guest": "web1", "target": "node2"}, "migrate web1->node2", (None, "web1"),
         "salt-run xencluster.migrate web1 node2"),
        ("evacuate", "node1", {"node": "node1"}, "evacuate node1", ("node1", None), "salt-run xencluster.evacuate node1"),
        ("recover", "node2", {"node": "node2"}, "recover node2", ("node2", None),
         "salt-run xencluster.recover node2 confirm_dead=node2"),
        ("restore", "node1", {"node": "node1"}, "restore node1", ("node1", None), "salt-run xencluster.restore node1"),
        ("backup", "all", {"guest": None}, "backup all", (None, None), "salt-run xencluster.backup all=True"),
        ("backup", "db1", {"guest": "db1"}, "backup db1", (None, "db1"), "salt-run xencluster.backup db1"),
        ("restore_backup", "web2/root", {"guest": "web1", "disk": "root", "backup": None, "into": "web2/root",
         "node": None}, "restore_backup web1/root into web2/root", (None, "web2"),
         "salt-run xencluster.restore_backup web1 root into=web2/root confirm=True"),
    ],
)  # fmt: skip
def test_each_verb_interrupted_says_what_to_run(verb, subject, args, title, where, rerun):
    op = interrupted_record(verb, subject, args, [], title, steps=["half way"])
    [finding] = runner._op_findings()[0]
    assert (finding["code"], finding["severity"], finding["node"], finding["guest"]) == ("EOPINTERRUPTED", "error",
                                                                                          *where)  # fmt: skip
    assert finding["message"] == (
        f"operation {title} (op {op['op']}, pid {op['pid']} on {HOST}, started {when(op['started'])}, last step half "
        f"way at {when(op['updated'])}) was interrupted: its owner is gone; re-run `{rerun}` to finish or clean up")


def test_findings_sort_EOPINTERRUPTED_after_the_critical_ones_before_the_other_errors():
    found = [runner._finding(runner.ENODENOANSWER, "x", node="node2"),
             runner._finding(runner.EOPINTERRUPTED, "y", guest="web1"),
             runner._finding(runner.ECLUSTERDOUBLERUN, "z", guest="web1")]  # fmt: skip
    assert [f["code"] for f in sorted(found, key=runner._sort_key)] == ["ECLUSTERDOUBLERUN", "EOPINTERRUPTED",
                                                                        "ENODENOANSWER"]  # fmt: skip
    assert runner.retcode([found[1]]) == 1 and "EOPINTERRUPTED" in runner.__doc__


def test_ops_lists_running_interrupted_ended_and_the_locks():
    dead = interrupted_record("migrate", "web1", {"guest": "web1"}, ["guest.web1"], "migrate web1")
    live = live_lock("evacuate", "node1", ["node.node1"], "evacuate node1")
    done = live_lock("backup", "db1", ["guest.db1"], "backup db1")
    runner._end(done, {"result": True, "message": "backed up"})
    time.sleep(0.01)
    out = runner.ops(limit=5)
    assert [r["op"] for r in out["interrupted"]] == [dead["op"]] and [r["op"] for r in out["running"]] == [live["op"]]
    assert [r["op"] for r in out["ended"]] == [done["op"]]
    assert {k: v["alive"] for k, v in out["locks"].items()} == {"guest.web1": False, "node.node1": True}
    assert runner.ops(limit=-1)["retcode"] == 1
