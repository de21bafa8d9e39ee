"""The runner's safety for recover: the lost node's lock, each guest's while it starts, an interrupted run closed.

The cluster is the recover tests' (node1 lost, node2 a SYNTHETIC dom0 behind
the REAL ``xencluster_xl``, the guest state's own config files); the locks and
the journal are the real ones under a private cachedir.
"""

from unittest.mock import MagicMock

import pytest
from test_xencluster_runner_ops import HOST
from test_xencluster_runner_ops import interrupted_record
from test_xencluster_runner_ops import live_lock
from test_xencluster_runner_ops import locks
from test_xencluster_runner_ops import records
from test_xencluster_runner_ops import when
from test_xencluster_runner_recover import bus  # noqa: F401  (fixture)
from test_xencluster_runner_recover import by_guest
from test_xencluster_runner_recover import cfg_dir  # noqa: F401  (fixture)
from test_xencluster_runner_recover import cluster  # noqa: F401  (fixture)
from test_xencluster_runner_recover import configure_loader_modules  # noqa: F401  (fixture)
from test_xencluster_runner_recover import context  # noqa: F401  (fixture)
from test_xencluster_runner_recover import dom0  # noqa: F401  (fixture)
from test_xencluster_runner_recover import dom0_creates
from test_xencluster_runner_recover import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_recover import opts  # noqa: F401  (fixture)
from test_xencluster_runner_recover import recover

from saltext.xencluster.modules import xencluster_xl as xl_mod
from saltext.xencluster.runners import xencluster as runner


def busy_text(holder, key, name):
    return (f"busy: {name} is locked by {holder['title']} (op {holder['op']}, pid {holder['pid']} on {HOST}, since "
            f"{when(locks()[key]['started'])})")  # fmt: skip


@pytest.mark.parametrize("dry_run", [False, True])
def test_recover_of_a_locked_node_is_busy_and_publishes_nothing(cluster, bus, context, dry_run):  # noqa: F811
    holder = live_lock("evacuate", "node1", ["node.node1"], "evacuate node1")
    result = recover(dry_run=dry_run)
    assert (result["result"], result["retcode"], result["guests"]) == (False, 1, [])
    assert result["message"] == busy_text(holder, "node.node1", "node1") and result["busy"]["op"] == holder["op"]
    assert cluster.calls == [] and bus.events == [] and runner._drained() == [] and context["retcode"] == 1


def test_a_guest_another_operation_holds_is_not_started(cluster, bus, context):  # noqa: F811
    holder = live_lock("restore_backup", "web1/root", ["guest.web1"], "restore_backup web1/root into web1/root",
                       {"guest": "web1", "disk": "root"})
    result = recover()
    web1 = by_guest(result)["web1"]
    assert (web1["outcome"], web1["message"]) == ("refused", "not starting web1: " + busy_text(holder, "guest.web1",
                                                                                               "web1"))  # fmt: skip
    assert dom0_creates(cluster) == [] and set(xl_mod.list_domains()) == {"db1"}
    assert result["retcode"] == 1 and bus.events == []
    assert set(locks()) == {"guest.web1"}  # the recover's own locks are released


def test_a_dry_run_says_which_guest_is_busy(cluster, bus):  # noqa: F811
    holder = live_lock("migrate", "web1", ["guest.web1"], "migrate web1->node2")
    result = recover(dry_run=True)
    web1 = by_guest(result)["web1"]
    assert (web1["outcome"], web1["message"]) == ("refused", "would not start web1: " + busy_text(
        holder, "guest.web1", "web1"))  # fmt: skip
    assert list(records()) == [holder["op"]] and bus.events == []


def test_recover_locks_the_node_and_the_guest_while_it_starts(cluster, monkeypatch):  # noqa: F811
    seen = []

    def spy(tgt, fun, *args, **kwargs):
        seen.append(sorted(locks()))
        return cluster(tgt, fun, *args, **kwargs)

    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=spy)))
    result = recover()
    assert by_guest(result)["web1"]["outcome"] == "started"
    assert seen[0] == ["node.node1"] and ["guest.web1", "node.node1"] in seen and locks() == {}
    [record] = records().values()
    assert [s["step"] for s in record["steps"]] == ["started", "round", "drained", "starting web1", "started web1",
                                                    "finished"]  # fmt: skip


def test_rerun_closes_an_interrupted_recovery_and_does_the_work(cluster, bus):  # noqa: F811
    old = interrupted_record("recover", "node1", {"node": "node1"}, ["node.node1", "guest.web1"], "recover node1",
                             steps=["round", "drained", "starting web1"])  # fmt: skip
    result = recover()
    assert by_guest(result)["web1"]["outcome"] == "started" and result["retcode"] == 0
    new = next(r for r in records().values() if r["op"] != old["op"])
    stored = records()[old["op"]]
    assert (stored["status"], stored["note"]) == ("interrupted", f"interrupted at starting web1; re-run by op "
                                                   f"{new['op']}: recover is idempotent (a guest that runs already "
                                                   "is skipped)")  # fmt: skip
    assert [e["op"] for e in result["interrupted"]] == [old["op"]]
    assert [t["key"] for t in new["taken_over"]] == ["node.node1"] and locks() == {}
    assert runner._op_findings()[0] == []
    assert bus.tags()[:2] == [f"xencluster/op/{old['op']}/interrupted", f"xencluster/op/{old['op']}/closed"]
