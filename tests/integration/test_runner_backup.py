"""salt-run xencluster.backup and xencluster.restore_backup on a real master and minion (127.0.0.1, no Xen here).

A master of its own, because the model needs a backup section: the frozen lab
model plus targets bk1 on node1 and bk2 on node2, the default bk1, and a guest
app1 whose disk has no filesystem. node1 is the running minion
``xc-bk-dom0`` (extension synced, no Xen, no device-mapper: its LVM report
is real and empty, ``xencluster_node`` and ``xencluster_xl`` do not load);
node2 is ``xc-bk-ghost`` (no key: it never answers). So every path ends in
a refusal, each through the real publishes, the master's event bus and
salt-run's exit status: model refusals before any publish, the real round to
node1 finding no backup volume (a dry run and a real run), a node without a
key, and restore_backup's confirm and live check (the recover round).
"""

import json
import os
import time

import pytest
import salt.utils.yaml
from test_runner_migrate import json_documents
from xc_helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOM0 = "xc-bk-dom0"  # node1 of the model: a running minion, extension synced, no Xen
GHOST = "xc-bk-ghost"  # node2 of the model: no key on the master, never answers
VOLUME_MISSING = (f"the backup volume xcvg/xcbackup-bk1 of target bk1 is missing on node1: create it there once "
                  f"(salt {DOM0} xencluster_lvm.lv_create xcvg xcbackup-bk1 <size>, then mkfs.ext4 "
                  "/dev/xcvg/xcbackup-bk1); backup never creates it")  # fmt: skip


@pytest.fixture(scope="module")
def backup_pillar_roots(tmp_path_factory):
    """The frozen lab model, node1/node2 mapped to the minion ids above, with backups and app1."""
    raw = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())
    model = raw["xencluster"]
    model["nodes"]["node1"]["minion"] = DOM0
    model["nodes"]["node2"]["minion"] = GHOST
    model["backup"] = {"targets": {"bk1": {"node": "node1", "vg": "xcvg"}, "bk2": {"node": "node2", "vg": "xcvg"}},
                       "default": "bk1", "retention": {"daily": 7, "weekly": 4}}  # fmt: skip
    model["guests"]["db1"]["backup"] = "bk2"
    app1 = json.loads(json.dumps(model["guests"]["db1"]))
    app1.update(backup="bk1", interfaces=[{"vlan": 10, "mac": "00:16:3e:00:03:01"}])
    app1["disks"][0]["filesystem"] = "none"
    model["guests"]["app1"] = app1
    base = tmp_path_factory.mktemp("backup-pillar")
    (base / "top.sls").write_text("base:\n  '*':\n    - xencluster\n")
    (base / "xencluster.sls").write_text(json.dumps(raw))  # JSON is YAML
    return base


@pytest.fixture(scope="module")
def backup_master(salt_factories, file_roots, backup_pillar_roots):
    """A master serving the extension and that model; its runners and xencluster_model synced."""
    master = salt_factories.salt_master_daemon(
        "xc-bk-master",
        overrides={"file_roots": {"base": [str(file_roots)]}, "pillar_roots": {"base": [str(backup_pillar_roots)]}},
    )
    with master.started():
        run = master.salt_run_cli(timeout=120)
        for sync in ("saltutil.sync_runners", "saltutil.sync_modules"):
            res = run.run(sync)
            assert res.returncode == 0, res
        yield master


@pytest.fixture(scope="module")
def backup_dom0(backup_master):
    minion = backup_master.salt_minion_daemon(DOM0)
    with minion.started():
        res = backup_master.salt_cli(timeout=120).run("saltutil.sync_modules", minion_tgt=DOM0)
        assert res.returncode == 0, res
        yield minion


def salt_run(master, *args):
    res = master.salt_run_cli(timeout=120).run(*args, "check_timeout=10", "--out=json")
    return res, json_documents(res.stdout)


def test_refusals_before_any_publish(backup_master, backup_dom0):
    start = time.monotonic()
    res, [result] = salt_run(backup_master, "xencluster.backup", "web9")
    assert res.returncode == 1 and result["message"].startswith("not backing up: no guest web9 in the model"), result
    res, [result] = salt_run(backup_master, "xencluster.backup", "app1", "dry_run=True")
    assert res.returncode == 1, res
    [app1] = result["guests"]
    assert app1["message"].startswith("would not back up app1: disk root: the model says it holds no filesystem "
                                      "(xencluster.guests.app1.disks.root.filesystem: none)"), app1  # fmt: skip
    assert time.monotonic() - start < 30  # nothing waited for a dom0


def test_dry_run_asks_the_real_node_and_changes_nothing(backup_master, backup_dom0):
    before = os.path.exists("/srv/xencluster-backup/bk1")
    res, docs = salt_run(backup_master, "xencluster.backup", "web1", "dry_run=True")
    assert res.returncode == 1, res
    [result] = docs  # a dry run prints no progress: one JSON document
    [web1] = result["guests"]
    assert (web1["outcome"], web1["node"], web1["target"]) == ("refused", "node1", "bk1"), web1
    # node1's real LVM report, mounts and blkid: no volume; xencluster_xl is not loaded there
    assert web1["message"] == f"would not back up web1: {VOLUME_MISSING}", web1
    assert web1["runs_on_backup_node"] is None and result["dry_run"] is True
    assert os.path.exists("/srv/xencluster-backup/bk1") == before
    assert "Traceback" not in res.stdout


def test_a_real_run_of_all_guests_refuses_each_and_is_heard(backup_master, backup_dom0, event_listener):
    start = time.time()
    res, docs = salt_run(backup_master, "xencluster.backup", "all=True")
    assert res.returncode == 1, res
    *progress, result = docs
    guests = {e["guest"]: e for e in result["guests"]}
    assert sorted(guests) == ["app1", "db1", "web1"] and result["refused"] == ["app1", "db1", "web1"], result
    assert guests["db1"]["message"] == f"not backing up db1: node2 (minion {GHOST}) did not answer", guests["db1"]
    assert guests["web1"]["message"] == f"not backing up web1: {VOLUME_MISSING}"
    messages = [p["event"]["message"] for p in progress if p.get("suffix") == "progress"]
    assert messages == [guests[g]["message"] for g in ("app1", "db1", "web1")] + [
        "backup: 3 refused (app1, db1, web1)"], messages
    # a backup that cannot run is heard on the master's bus
    tags = [(backup_master.id, f"xencluster/backup/{g}/failed") for g in ("app1", "db1", "web1")]
    matched = event_listener.wait_for_events(tags, after_time=start, timeout=30)
    assert matched.found_all_events, list(matched)
    assert {e.data["guest"]: e.data["outcome"] for e in matched} == dict.fromkeys(guests, "refused")


def test_restore_backup_needs_confirm_and_a_guest_known_to_run_nowhere(backup_master, backup_dom0):
    res, [result] = salt_run(backup_master, "xencluster.restore_backup", "web1", "root")  # no confirm=True
    assert res.returncode == 1, res
    assert result["message"].startswith("not restoring: restore_backup replaces the filesystem on one leg of "
                                        "web1/root"), result  # fmt: skip
    assert result["checks"] == [] and result["steps"] == []
    res, [result] = salt_run(backup_master, "xencluster.restore_backup", "web1", "root", "dry_run=True")
    assert res.returncode == 1, res
    assert (result["node"], result["leg"], result["other_leg"]) == ("node1", "web1.root.node1", "web1.root.node2")
    # the recover round: node1 cannot tell its domains (no Xen), node2 does not answer
    assert result["message"].startswith("would not restore: every node must tell its domains, so that web1 is "
                                        f"known to run nowhere: node1 (minion {DOM0}) could not report: "
                                        "'xencluster_node.report' is not loaded there"), result  # fmt: skip
    assert f"node2 (minion {GHOST}) did not answer" in result["message"], result
    assert [c["check"] for c in result["checks"]] == ["runs_nowhere"] and result["steps"] == []
