"""The runner's safety for restore: the node's lock, each guest's while its legs go back, an interrupted run closed.

The cluster is the restore tests' (node2 a SYNTHETIC dom0 behind the REAL
``xencluster_xl``, the guest minions the REAL ``xencluster_md`` over the lab's
md recordings); the locks and the journal are the real ones under a private
cachedir.
"""

from unittest.mock import MagicMock

import pytest
from test_xencluster_runner_ops import HOST
from test_xencluster_runner_ops import interrupted_record
from test_xencluster_runner_ops import live_lock
from test_xencluster_runner_ops import locks
from test_xencluster_runner_ops import records
from test_xencluster_runner_ops import when
from test_xencluster_runner_restore import bus  # noqa: F401  (fixture)
from test_xencluster_runner_restore import by_guest
from test_xencluster_runner_restore import cfg_dir  # noqa: F401  (fixture)
from test_xencluster_runner_restore import clock  # noqa: F401  (fixture)
from test_xencluster_runner_restore import cluster  # noqa: F401  (fixture)
from test_xencluster_runner_restore import configure_loader_modules  # noqa: F401  (fixture)
from test_xencluster_runner_restore import context  # noqa: F401  (fixture)
from test_xencluster_runner_restore import dom0  # noqa: F401  (fixture)
from test_xencluster_runner_restore import guest_calls
from test_xencluster_runner_restore import guests  # noqa: F401  (fixture)
from test_xencluster_runner_restore import hotplug  # noqa: F401  (autouse fixture: attached disks show up)
from test_xencluster_runner_restore import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_restore import opts  # noqa: F401  (fixture)
from test_xencluster_runner_restore import restore
from test_xencluster_runner_restore import runs_on  # noqa: F401  (fixture)

from saltext.xencluster.runners import xencluster as runner


def busy_text(holder, key, name):
    return (f"busy: {name} is locked by {holder['title']} (op {holder['op']}, pid {holder['pid']} on {HOST}, since "
            f"{when(locks()[key]['started'])})")  # fmt: skip


@pytest.mark.parametrize("dry_run", [False, True])
def test_restore_of_a_locked_node_is_busy_and_publishes_nothing(cluster, bus, context, dry_run):  # noqa: F811
    holder = live_lock("evacuate", "node1", ["node.node1"], "evacuate node1")
    result = restore(dry_run=dry_run)
    assert (result["result"], result["retcode"], result["guests"], result["legs"]) == (False, 1, [], [])
    assert result["message"] == busy_text(holder, "node.node1", "node1") and result["busy"]["op"] == holder["op"]
    assert cluster.calls == [] and bus.events == [] and runner._drained() == ["node1"] and context["retcode"] == 1


def test_a_guest_another_operation_holds_is_left_alone(cluster, guests, context):  # noqa: F811
    web1, db1 = guests
    holder = live_lock("migrate", "web1", ["guest.web1"], "migrate web1->node1", {"guest": "web1"})
    result = restore()
    entry = by_guest(result)["web1"]
    assert (entry["outcome"], entry["message"]) == ("refused", "not restoring web1's legs: " + busy_text(
        holder, "guest.web1", "web1"))  # fmt: skip
    assert guest_calls(web1) == [] and by_guest(result)["db1"]["outcome"] == "in_sync"  # the others go on
    assert result["retcode"] == 1 and result["undrained"] is False and runner._drained() == ["node1"]
    assert set(locks()) == {"guest.web1"}


def test_restore_locks_the_node_and_each_guest_while_its_legs_go_back(cluster, monkeypatch):  # noqa: F811
    seen = []

    def spy(tgt, fun, *args, **kwargs):
        seen.append((tgt, sorted(locks())))
        return cluster(tgt, fun, *args, **kwargs)

    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=spy)))
    result = restore()
    assert result["retcode"] == 0 and locks() == {}
    assert seen[0] == (["node1", "node2"], ["node.node1"])  # the round: the node only
    assert (["web1"], ["guest.web1", "node.node1"]) in seen and (["db1"], ["guest.db1", "node.node1"]) in seen
    [record] = records().values()
    assert [s["step"] for s in record["steps"]] == ["started", "round", "legs", "re-adding db1", "re-adding web1",
                                                    "resync", "finished"]  # fmt: skip


def test_rerun_closes_an_interrupted_restore(cluster, bus):  # noqa: F811
    old = interrupted_record("restore", "node1", {"node": "node1"}, ["node.node1", "guest.web1"], "restore node1",
                             steps=["round", "legs", "re-adding web1"])  # fmt: skip
    assert [f["node"] for f in runner._op_findings()[0]] == ["node1"]
    result = restore()
    assert result["retcode"] == 0 and result["in_sync"] == ["db1", "web1"]
    new = next(r for r in records().values() if r["op"] != old["op"])
    stored = records()[old["op"]]
    assert (stored["status"], stored["note"]) == ("interrupted", f"interrupted at re-adding web1; re-run by op "
                                                  f"{new['op']}: restore is idempotent (it attaches and re-adds only "
                                                  "what is missing)")  # fmt: skip
    assert [e["op"] for e in result["interrupted"]] == [old["op"]] and locks() == {}
    assert runner._op_findings()[0] == []
    assert bus.tags()[:2] == [f"xencluster/op/{old['op']}/interrupted", f"xencluster/op/{old['op']}/closed"]
