"""xencluster_lvm.lv_present: plan (pure), test=True predictions, apply, idempotence.

The execution module runs for real behind the state; only ``cmd.run_all`` is
fake, answering with the LVM recording (4 MiB extents, VG xcrec with 398 free
extents, web1-disk0-a linear 320M in two segments, db1-disk0-a 2 x 64k stripes
128M, /dev/loop2 a PV in no VG).
"""

import copy
import json

import pytest

from saltext.xencluster.modules import xencluster_lvm as lvm_mod
from saltext.xencluster.states import xencluster_lvm as lvm_state

REC = "bookworm-3pv-2lv"
MiB = 1024**2


@pytest.fixture
def opts():
    return {"test": False}


@pytest.fixture
def configure_loader_modules(run_all, opts):
    exec_funcs = {
        f"xencluster_lvm.{name}": getattr(lvm_mod, name)
        for name in ("report", "lv_args", "lv_create", "lv_extend", "parse_size")
    }
    return {
        lvm_mod: {"__salt__": {"cmd.run_all": run_all}},
        lvm_state: {"__salt__": exec_funcs, "__opts__": opts},
    }


@pytest.fixture
def recorded(run_all, recording):
    for cmd in ("pvs", "vgs", "lvs"):
        run_all.outputs[cmd] = recording("lvm", REC, cmd)
    return run_all


@pytest.fixture
def report(recorded):
    rep = lvm_mod.report()
    recorded.calls.clear()
    return rep


def plan(report, name, size, **kw):
    return lvm_state._plan_lv(report, "xcrec", name, lvm_mod.parse_size(size), **kw)  # pylint: disable=protected-access


# --- the plan: pure, and exactly what LVM will do -------------------------------------


def test_plan_create_rounds_up_to_extents(report):
    assert plan(report, "new1", "10M") == {
        "action": "create",
        "old_size": None,
        "new_size": 12 * MiB,
        "comment": f"xcrec/new1 would be created with {12 * MiB} bytes",
    }


def test_plan_create_striped_rounds_up_to_whole_stripes(report):
    # 10M -> 3 extents -> 4 extents for 2 stripes (what lvcreate printed in the lab)
    p = plan(report, "new1", "10M", stripes=2, stripe_size=65536)
    assert (p["action"], p["new_size"]) == ("create", 16 * MiB)


def test_plan_present_is_a_noop(report):
    for size in ("320M", "318M", 335544320, "100M"):
        p = plan(report, "web1-disk0-a", size)
        assert (p["action"], p["old_size"], p["new_size"]) == ("none", 320 * MiB, 320 * MiB)
    assert "never shrunk" in plan(report, "web1-disk0-a", "100M")["comment"]


def test_plan_extend_linear(report):
    p = plan(report, "web1-disk0-a", "321M")
    assert (p["action"], p["old_size"], p["new_size"]) == ("extend", 320 * MiB, 324 * MiB)


def test_plan_extend_striped_keeps_whole_stripes(report):
    # 128M = 32 extents; 130M -> 33 extents, +1 rounded to +2 for 2 stripes
    p = plan(report, "db1-disk0-a", "130M")
    assert (p["action"], p["new_size"]) == ("extend", 136 * MiB)


def test_plan_errors(report):
    assert plan(report, "big", "2G")["action"] == "error"  # VG has 398 * 4 MiB free
    assert "free" in plan(report, "big", "2G")["comment"]
    assert plan(report, "web1-disk0-a", "2G")["action"] == "error"
    p = lvm_state._plan_lv(report, "nope", "x", MiB)  # pylint: disable=protected-access
    assert (p["action"], p["comment"]) == ("error", "volume group nope not found")
    p = plan(report, "new1", "4M", pvs=["/dev/loop2"])
    assert p["action"] == "error" and "not a physical volume of xcrec" in p["comment"]


def test_plan_free_space_of_the_given_pvs_only(report):
    # /dev/loop1 has 1002438656 bytes free, loop0 666894336
    assert plan(report, "n", "900M", pvs=["/dev/loop1"])["action"] == "create"
    assert plan(report, "n", "900M", pvs=["/dev/loop0"])["action"] == "error"


def test_plan_refuses_another_layout(report):
    p = plan(report, "web1-disk0-a", "400M", stripes=2, stripe_size=65536)
    assert p["action"] == "error" and "not changed" in p["comment"]
    assert plan(report, "db1-disk0-a", "128M", stripes=2, stripe_size=65536)["action"] == "none"
    assert plan(report, "db1-disk0-a", "128M", stripes=2, stripe_size=131072)["action"] == "error"


def test_plan_is_pure(report):
    before = copy.deepcopy(report)
    plan(report, "web1-disk0-a", "1G")
    plan(report, "new1", "10M", stripes=2)
    assert report == before


# --- the state ----------------------------------------------------------------------


def test_test_mode_predicts_creation_and_runs_nothing_but_the_report(recorded, opts):
    opts["test"] = True
    ret = lvm_state.lv_present("new1", "xcrec", "10M")
    assert ret["result"] is None
    assert ret["changes"] == {"xcrec/new1": {"old": None, "new": {"size": 12 * MiB}}}
    assert recorded.commands() == ["pvs", "vgs", "lvs"]  # one read, nothing written


def test_test_mode_predicts_growth(recorded, opts):
    opts["test"] = True
    ret = lvm_state.lv_present("db1-disk0-a", "xcrec", "130M")
    assert ret["result"] is None
    assert ret["changes"] == {
        "xcrec/db1-disk0-a": {"old": {"size": 128 * MiB}, "new": {"size": 136 * MiB}}
    }


def _lvs_with(recording, name, size):
    """The recorded lvs report plus/with LV ``name`` at ``size`` (what LVM shows after the change)."""
    data = json.loads(recording("lvm", REC, "lvs"))
    rows = [r for r in data["report"][0]["lv"] if r["lv_name"] != name]
    rows.append(
        {
            "vg_name": "xcrec", "lv_name": name, "lv_uuid": "x", "lv_attr": "-wi-a-----",
            "lv_size": str(size), "lv_path": f"/dev/xcrec/{name}", "vg_extent_size": "4194304",
            "seg_count": "1", "seg_start": "0", "seg_size": str(size), "segtype": "linear",
            "stripes": "1", "stripe_size": "0", "devices": "/dev/loop1(16)",
        }
    )  # fmt: skip
    data["report"][0]["lv"] = rows
    return json.dumps(data)


def test_create_then_idempotent(recorded, recording, opts):
    opts["test"] = True
    predicted = lvm_state.lv_present("new1", "xcrec", "10M")["changes"]

    opts["test"] = False
    recorded.calls.clear()
    recorded.outputs["lvcreate"] = ""
    recorded.effects["lvcreate"] = lambda argv: recorded.outputs.update(
        lvs=_lvs_with(recording, "new1", 12 * MiB)  # what LVM shows afterwards
    )
    ret = lvm_state.lv_present("new1", "xcrec", "10M")
    assert ret["result"] is True, ret
    assert ret["changes"] == predicted
    assert recorded.commands() == ["pvs", "vgs", "lvs", "lvcreate", "lvs"]
    assert recorded.calls[3][:6] == ["lvcreate", "--yes", "--name", "new1", "--size", f"{10 * MiB}b"]

    recorded.calls.clear()
    again = lvm_state.lv_present("new1", "xcrec", "10M")
    assert again["result"] is True and again["changes"] == {}
    assert recorded.commands() == ["pvs", "vgs", "lvs"]


def test_grow_reports_actual_sizes(recorded, recording):
    recorded.outputs["lvextend"] = ""
    recorded.effects["lvextend"] = lambda argv: recorded.outputs.update(
        lvs=_lvs_with(recording, "web1-disk0-a", 324 * MiB)
    )
    ret = lvm_state.lv_present("web1-disk0-a", "xcrec", "321M")
    assert ret["result"] is True, ret
    assert ret["changes"] == {
        "xcrec/web1-disk0-a": {"old": {"size": 320 * MiB}, "new": {"size": 324 * MiB}}
    }
    assert recorded.commands() == ["pvs", "vgs", "lvs", "lvs", "lvextend", "lvs"]
    assert recorded.calls[4] == ["lvextend", "--size", f"{321 * MiB}b", "--", "xcrec/web1-disk0-a"]


def test_never_shrinks(recorded):
    ret = lvm_state.lv_present("web1-disk0-a", "xcrec", "100M")
    assert ret["result"] is True and ret["changes"] == {}
    assert "never shrunk" in ret["comment"]
    assert recorded.commands() == ["pvs", "vgs", "lvs"]


@pytest.mark.parametrize("test_mode", [True, False])
def test_bad_arguments_fail_before_any_command(recorded, opts, test_mode):
    opts["test"] = test_mode
    ret = lvm_state.lv_present("web1; reboot", "xcrec", "1G")
    assert ret["result"] is False and "invalid logical volume name" in ret["comment"]
    ret = lvm_state.lv_present("web1", "xcrec", "1.5G")
    assert ret["result"] is False and "invalid size" in ret["comment"]
    assert recorded.calls == []


def test_lvm_failure_is_reported(recorded):
    recorded.outputs["lvcreate"] = {"retcode": 5, "stderr": "  Insufficient suitable allocatable extents"}
    ret = lvm_state.lv_present("new1", "xcrec", "10M")
    assert ret["result"] is False
    assert "Insufficient suitable allocatable extents" in ret["comment"]
    assert ret["changes"] == {}


def test_missing_vg_fails_in_test_mode_too(recorded, opts):
    opts["test"] = True
    ret = lvm_state.lv_present("new1", "vg9", "10M")
    assert ret["result"] is False and ret["comment"] == "volume group vg9 not found"
