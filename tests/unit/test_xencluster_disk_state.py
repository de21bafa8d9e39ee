"""xencluster_disk.rules_installed: the state over xencluster_disk.install_rules.

The real execution module runs with its rules file under ``tmp_path``;
``udevadm`` is a FakeRunAll (argument lists, python_shell=False only).
"""

import os
import stat

import pytest

from saltext.xencluster.modules import xencluster_disk as disk
from saltext.xencluster.states import xencluster_disk as disk_state

UDEVADM = [
    ["udevadm", "control", "--reload"],
    ["udevadm", "trigger", "--action=change", "--subsystem-match=block"],
    ["udevadm", "settle", f"--timeout={disk.SETTLE_TIMEOUT}"],
]


@pytest.fixture
def opts():
    return {"test": False}


@pytest.fixture
def configure_loader_modules(run_all, opts):
    return {
        disk: {"__salt__": {"cmd.run_all": run_all}},
        disk_state: {"__salt__": {"xencluster_disk.install_rules": disk.install_rules}, "__opts__": opts},
    }


@pytest.fixture
def rules(tmp_path, monkeypatch, run_all):
    path = tmp_path / "etc" / "udev" / "rules.d" / "61-xencluster-legs.rules"
    monkeypatch.setattr(disk, "RULES_FILE", str(path))
    run_all.outputs["udevadm"] = ""
    return path


def test_installs_then_reloads_triggers_and_settles(rules, run_all):
    ret = disk_state.rules_installed("xencluster-udev-leg-rules")
    assert ret["result"] is True
    assert ret["changes"] == {str(rules): "written; udev rules reloaded, block devices re-triggered and settled"}
    assert rules.read_text() == disk.udev_rules()
    assert stat.S_IMODE(os.stat(rules).st_mode) == 0o644
    assert run_all.calls == UDEVADM


def test_second_run_changes_nothing_and_runs_nothing(rules, run_all):
    disk_state.rules_installed("xencluster-udev-leg-rules")
    run_all.calls.clear()
    ret = disk_state.rules_installed("xencluster-udev-leg-rules")
    assert ret == {"name": "xencluster-udev-leg-rules", "result": True, "changes": {},
                   "comment": f"{rules} is up to date"}  # fmt: skip
    assert run_all.calls == []


@pytest.mark.parametrize("present", [False, True], ids=["missing", "edited"])
def test_test_mode_predicts_and_touches_nothing(rules, run_all, opts, present):
    if present:
        rules.parent.mkdir(parents=True)
        rules.write_text("# edited\n")
    opts["test"] = True
    ret = disk_state.rules_installed("xencluster-udev-leg-rules")
    assert ret["result"] is None
    assert list(ret["changes"]) == [str(rules)] and "would be written" in ret["comment"]
    assert run_all.calls == []
    assert (rules.read_text() == "# edited\n") if present else not rules.exists()


def test_test_mode_when_up_to_date(rules, run_all, opts):
    disk_state.rules_installed("x")
    run_all.calls.clear()
    opts["test"] = True
    assert disk_state.rules_installed("x")["result"] is True
    assert run_all.calls == []


def test_test_flag_is_passed_through(opts, monkeypatch):
    seen = []

    def fake(test=False):
        seen.append(test)
        return {"changed": True, "path": "/etc/udev/rules.d/61-xencluster-legs.rules"}

    monkeypatch.setitem(disk_state.__salt__, "xencluster_disk.install_rules", fake)
    opts["test"] = True
    disk_state.rules_installed("x")
    opts["test"] = False
    disk_state.rules_installed("x")
    assert seen == [True, False]


def test_a_failing_udevadm_is_a_failure(rules, run_all):
    run_all.outputs["udevadm"] = {"retcode": 2, "stderr": "Failed to send reload request"}
    ret = disk_state.rules_installed("x")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith("installing the udev rules of the stable leg paths failed: udevadm control")
    assert "Failed to send reload request" in ret["comment"]


def test_virtual_needs_the_execution_module(monkeypatch):
    assert disk_state.__virtual__() == "xencluster_disk"
    monkeypatch.delitem(disk_state.__salt__, "xencluster_disk.install_rules")
    assert disk_state.__virtual__()[0] is False
