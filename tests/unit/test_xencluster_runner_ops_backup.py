"""The runner's safety for backup and restore_backup: the guest's lock, busy, an interrupted run closed.

The cluster is the backup tests' (SYNTHETIC dom0s behind the REAL
``xencluster_backup`` and ``xencluster_lvm`` over recorded tool output); the
locks and the journal are the real ones under a private cachedir.
"""

import copy
from unittest.mock import MagicMock

import pytest
from test_xencluster_runner_backup import BACKUP
from test_xencluster_runner_backup import RESTORE
from test_xencluster_runner_backup import VOLUME
from test_xencluster_runner_backup import bus  # noqa: F401  (fixture)
from test_xencluster_runner_backup import by_guest
from test_xencluster_runner_backup import cluster  # noqa: F401  (fixture)
from test_xencluster_runner_backup import configure_loader_modules  # noqa: F401  (fixture)
from test_xencluster_runner_backup import context  # noqa: F401  (fixture)
from test_xencluster_runner_backup import dom0s  # noqa: F401  (fixture)
from test_xencluster_runner_backup import host  # noqa: F401  (fixture)
from test_xencluster_runner_backup import jid_event  # noqa: F401  (fixture)
from test_xencluster_runner_backup import make_cluster
from test_xencluster_runner_backup import node_context  # noqa: F401  (fixture)
from test_xencluster_runner_backup import opts  # noqa: F401  (fixture)
from test_xencluster_runner_backup import stored  # noqa: F401  (fixture)
from test_xencluster_runner_backup import switch  # noqa: F401  (fixture)
from test_xencluster_runner_backup import with_backup
from test_xencluster_runner_ops import HOST
from test_xencluster_runner_ops import interrupted_record
from test_xencluster_runner_ops import live_lock
from test_xencluster_runner_ops import locks
from test_xencluster_runner_ops import records
from test_xencluster_runner_ops import when

from saltext.xencluster.runners import xencluster as runner


def busy_text(holder, key, name):
    return (f"busy: {name} is locked by {holder['title']} (op {holder['op']}, pid {holder['pid']} on {HOST}, since "
            f"{when(locks()[key]['started'])})")  # fmt: skip


# --- backup ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True])
def test_backup_of_a_locked_guest_is_busy_and_publishes_nothing(cluster, bus, context, dry_run):  # noqa: F811
    holder = live_lock("migrate", "db1", ["guest.db1"], "migrate db1->node1", {"guest": "db1"})
    result = runner.backup("db1", dry_run=dry_run)
    assert (result["result"], result["retcode"], result["guests"]) == (False, 1, [])
    assert result["message"] == busy_text(holder, "guest.db1", "db1") and result["busy"]["op"] == holder["op"]
    assert cluster.calls == [] and bus.events == [] and context["retcode"] == 1


def test_backup_locks_the_guest_for_the_run(cluster, monkeypatch):  # noqa: F811
    seen = []

    def spy(tgt, fun, *args, **kwargs):
        seen.append(sorted(locks()))
        return cluster(tgt, fun, *args, **kwargs)

    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=spy)))
    result = runner.backup("db1")
    assert result["result"] is True and seen and all(s == ["guest.db1"] for s in seen) and locks() == {}
    [record] = records().values()
    assert (record["verb"], record["subject"], record["status"]) == ("backup", "db1", "finished")


def test_backup_all_skips_a_busy_guest_and_backs_up_the_others(monkeypatch, dom0s, switch, node_context,  # noqa: F811
                                                              bus, context):  # fmt: skip
    raw = with_backup()
    raw["guests"]["app1"] = copy.deepcopy(raw["guests"]["db1"])
    raw["guests"]["app1"]["interfaces"][0]["mac"] = "00:16:3e:00:03:01"
    raw["guests"]["web1"]["backup"] = False
    cluster = make_cluster(monkeypatch, raw, dom0s, switch, node_context)  # noqa: F811
    holder = live_lock("restore_backup", "app1/root", ["guest.app1"], "restore_backup app1/root into app1/root",
                       {"guest": "app1", "disk": "root"})  # fmt: skip
    result = runner.backup(all=True)
    guests = by_guest(result)
    assert guests["app1"]["outcome"] == "refused"
    assert guests["app1"]["message"] == "not backing up app1: " + busy_text(holder, "guest.app1", "app1")
    assert guests["db1"]["outcome"] == "backed_up" and result["retcode"] == 1
    assert [args[1] for args, _k in cluster.of(BACKUP)] == ["db1.root.node1", "db1.root.node1"]  # app1 never
    assert set(locks()) == {"guest.app1"}
    [mine] = [r for r in records().values() if r["verb"] == "backup"]
    assert mine["subject"] == "all" and "backing up db1" in [s["step"] for s in mine["steps"]]


def test_rerun_of_an_interrupted_backup_closes_it(cluster, bus):  # noqa: F811
    old = interrupted_record("backup", "db1", {"guest": "db1"}, ["guest.db1"], "backup db1", steps=["backing up db1"])
    result = runner.backup("db1")
    assert result["result"] is True and [e["op"] for e in result["interrupted"]] == [old["op"]]
    stored_old = records()[old["op"]]
    new = next(r for r in records().values() if r["op"] != old["op"])
    assert (stored_old["status"], stored_old["note"]) == ("interrupted", f"interrupted at backing up db1; re-run by "
                                                          f"op {new['op']}: a snapshot it left is reported by verify "
                                                          "(ELEGSNAPSHOT)")  # fmt: skip
    assert runner._op_findings()[0] == [] and locks() == {}


# --- restore_backup ------------------------------------------------------------------------------


def restore(**kwargs):
    kwargs.setdefault("check_timeout", 7)
    return runner.restore_backup("db1", "root", **kwargs)


@pytest.mark.parametrize("dry_run", [False, True])
def test_restore_backup_of_a_locked_guest_is_busy(cluster, stored, bus, context, dry_run):  # noqa: F811
    holder = live_lock("recover", "node2", ["node.node2", "guest.db1"], "recover node2")
    result = restore(dry_run=dry_run, confirm=not dry_run)
    assert (result["result"], result["outcome"], result["retcode"]) == (False, "refused", 1)
    assert result["message"] == busy_text(holder, "guest.db1", "db1") and result["busy"]["op"] == holder["op"]
    assert cluster.calls == [] and bus.events == [] and result["steps"] == []


def test_restore_backup_locks_the_guest_and_a_rerun_closes_an_interrupted_one(cluster, stored, monkeypatch,  # noqa: F811
                                                                              bus):  # fmt: skip
    old = interrupted_record("restore_backup", "db1/root", {"guest": "db1", "disk": "root"}, ["guest.db1"],
                             "restore_backup db1/root into db1/root", steps=["checked", "restoring"])  # fmt: skip
    seen = []

    def spy(tgt, fun, *args, **kwargs):
        seen.append((fun, sorted(locks())))
        return cluster(tgt, fun, *args, **kwargs)

    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=MagicMock(cmd=spy)))
    result = restore(confirm=True)
    assert result["outcome"] == "restored", result["message"]
    assert all(held == ["guest.db1"] for _f, held in seen) and (RESTORE, ["guest.db1"]) in seen
    assert VOLUME in [f for f, _h in seen]
    new = next(r for r in records().values() if r["op"] != old["op"])
    assert records()[old["op"]]["note"] == (f"interrupted at restoring; re-run by op {new['op']}: a leg an earlier "
                                            "run already zeroed is left alone")  # fmt: skip
    assert [s["step"] for s in new["steps"]] == ["started", "checked", "restoring", "finished"]
    assert new["rerun"] == "salt-run xencluster.restore_backup db1 root confirm=True" and locks() == {}
