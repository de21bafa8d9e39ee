"""xencluster_lvm.lv_present: plan (pure), test=True predictions, apply, idempotence.

The execution module runs for real behind the state; only ``cmd.run_all`` is
fake, answering with the LVM recording (4 MiB extents, VG xcrec with 398 free
extents, web1-disk0-a linear 320M in two segments, db1-disk0-a 2 x 64k stripes
128M, /dev/loop2 a PV in no VG).
"""

import copy
import json
import os
import pathlib

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
        for name in (
            "report", "lv_args", "lv_create", "lv_extend", "parse_size",
            "vg_args", "signatures", "vg_create", "vg_extend",
        )  # fmt: skip
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



# --- vg_present ------------------------------------------------------------------------
#
# Real recordings: SIGS is a host with no VG (/dev/loop0 ext4, loop1 blank, loop2 swap,
# loop3 a PV in no VG, loop4 a DOS partition table, loop5 blank); VGREC is the same host
# after `vgcreate xcvg /dev/loop1`, and its pvs.extended/vgs.extended after
# `vgextend xcvg /dev/loop5`.

SIGS = "bookworm-signatures"
VGREC = "bookworm-vg-created"
W = ["wipefs", "--no-act", "--json"]
RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings"


def _wipefs_commands(name):
    meta = json.loads((RECORDINGS / "lvm" / name / "meta.json").read_text())
    return {
        tuple(c["argv"]): {
            "retcode": c["rc"],
            "stdout": (RECORDINGS / "lvm" / name / f"{key}.out").read_text(),
            "stderr": c["stderr"],
        }
        for key, c in meta["commands"].items()
        if key.startswith("wipefs")
    }


def _wipefs_rows(recording, name, *devices):
    """The recorded wipefs rows of ``devices`` only (what wipefs prints for them alone)."""
    data = json.loads(recording("lvm", name, "wipefs"))
    names = {d.rsplit("/", 1)[-1] for d in devices}
    return json.dumps({"signatures": [r for r in data["signatures"] if r["device"] in names]})


def _host(run_all, recording, name, pvs="pvs", vgs="vgs"):
    run_all.outputs["pvs"] = recording("lvm", name, pvs)
    run_all.outputs["vgs"] = recording("lvm", name, vgs)
    run_all.outputs["lvs"] = recording("lvm", name, "lvs")
    run_all.outputs.update(_wipefs_commands(name))
    return run_all


@pytest.fixture
def no_vg(run_all, recording):
    return _host(run_all, recording, SIGS)


@pytest.fixture
def one_pv(run_all, recording):
    """xcvg on /dev/loop1; wipefs of /dev/loop5 alone answers blank (it is blank in VGREC)."""
    _host(run_all, recording, VGREC)
    run_all.outputs[(*W, "/dev/loop5")] = _wipefs_rows(recording, VGREC, "/dev/loop5")
    return run_all


@pytest.fixture
def two_pvs(run_all, recording):
    """xcvg on /dev/loop1 and /dev/loop5 (after the recorded vgextend)."""
    return _host(run_all, recording, VGREC, "pvs.extended", "vgs.extended")


def _become(run_all, recording):
    """After vgcreate/vgextend the host shows xcvg on loop1 and loop5 (the recorded end state)."""
    run_all.outputs["pvs"] = recording("lvm", VGREC, "pvs.extended")
    run_all.outputs["vgs"] = recording("lvm", VGREC, "vgs.extended")


def _report(run_all):
    rep = lvm_mod.report()
    run_all.calls.clear()
    return rep


# the plan (pure)


def test_plan_vg_create(no_vg):
    rep = _report(no_vg)
    sigs = {"/dev/loop1": [], "/dev/loop5": []}
    assert lvm_state._plan_vg(rep, sigs, "xcvg", ["/dev/loop1", "/dev/loop5"]) == {  # pylint: disable=protected-access
        "action": "create",
        "add": ["/dev/loop1", "/dev/loop5"],
        "comment": "volume group xcvg would be created on /dev/loop1, /dev/loop5",
    }


def test_plan_vg_extend(one_pv):
    rep = _report(one_pv)
    p = lvm_state._plan_vg(rep, {"/dev/loop5": []}, "xcvg", ["/dev/loop1", "/dev/loop5"])  # pylint: disable=protected-access
    assert (p["action"], p["add"]) == ("extend", ["/dev/loop5"])
    assert p["comment"] == "volume group xcvg would be extended with /dev/loop5"


def test_plan_vg_converged_needs_no_signatures(two_pvs):
    rep = _report(two_pvs)
    assert lvm_state._plan_vg(rep, {}, "xcvg", ["/dev/loop5", "/dev/loop1"]) == {  # pylint: disable=protected-access
        "action": "none",
        "add": [],
        "comment": "volume group xcvg is present with /dev/loop5, /dev/loop1",
    }


def test_plan_vg_resolves_symlinks(two_pvs):
    rep = _report(two_pvs)
    realpaths = {"/dev/disk/by-id/virtio-n1data1": "/dev/loop1", "/dev/disk/by-id/virtio-n1data5": "/dev/loop5"}
    p = lvm_state._plan_vg(rep, {}, "xcvg", list(realpaths), realpaths)  # pylint: disable=protected-access
    assert (p["action"], p["add"]) == ("none", [])
    p = lvm_state._plan_vg(rep, {}, "xcvg", list(realpaths))  # pylint: disable=protected-access
    assert p["action"] == "error"  # unresolved, they are unknown devices with no probe
    assert "was not probed" in p["comment"]


def test_plan_vg_errors(one_pv):
    rep = _report(one_pv)
    ext4 = [{"type": "ext4", "offset": 1080, "uuid": "u", "label": None}]
    p = lvm_state._plan_vg(rep, {"/dev/loop0": ext4}, "xcvg", ["/dev/loop1", "/dev/loop0"])  # pylint: disable=protected-access
    assert p == {
        "action": "error",
        "add": [],
        "comment": (
            "volume group xcvg: refusing: /dev/loop0 carries ext4. xencluster never wipes a device: "
            "if what is on it may go, wipe it yourself (wipefs --all DEVICE) and run again"
        ),
    }
    p = lvm_state._plan_vg(rep, {}, "xcnew", ["/dev/loop1"])  # pylint: disable=protected-access
    assert p["comment"] == "volume group xcnew: refusing: /dev/loop1 is a physical volume of volume group xcvg"
    lvm2 = [{"type": "LVM2_member", "offset": 536, "uuid": "u", "label": None}]
    p = lvm_state._plan_vg(rep, {"/dev/loop3": lvm2}, "xcvg", ["/dev/loop3"])  # pylint: disable=protected-access
    assert "/dev/loop3 carries LVM2_member (an LVM PV of no VG: pvremove it if it is not needed)" in p["comment"]
    p = lvm_state._plan_vg(rep, {"/dev/loop5": []}, "xcvg", ["/dev/loop5", "/dev/loop5"])  # pylint: disable=protected-access
    assert p["action"] == "error" and "/dev/loop5 is listed twice" in p["comment"]


def test_plan_vg_warns_about_unlisted_pvs(two_pvs):
    rep = _report(two_pvs)
    p = lvm_state._plan_vg(rep, {}, "xcvg", ["/dev/loop1"])  # pylint: disable=protected-access
    assert p == {
        "action": "none",
        "add": [],
        "comment": (
            "volume group xcvg is present with /dev/loop1; warning: /dev/loop5 is a PV of xcvg "
            "but not listed (this state never removes a PV from a VG)"
        ),
    }


def test_plan_vg_is_pure(one_pv):
    rep = _report(one_pv)
    before = copy.deepcopy(rep)
    sigs = {"/dev/loop5": []}
    lvm_state._plan_vg(rep, sigs, "xcvg", ["/dev/loop1", "/dev/loop5"])  # pylint: disable=protected-access
    assert rep == before and sigs == {"/dev/loop5": []}


# the state


def test_vg_present_creates_then_is_converged(no_vg, recording, opts):
    opts["test"] = True
    dry = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert dry["result"] is None
    assert no_vg.commands() == ["pvs", "vgs", "lvs", "wipefs"]  # one read, nothing written

    opts["test"] = False
    no_vg.calls.clear()
    no_vg.outputs["vgcreate"] = ""
    no_vg.effects["vgcreate"] = lambda argv: _become(no_vg, recording)
    ret = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert ret["result"] is True, ret
    assert ret["changes"] == {"created": {"vg": "xcvg", "pvs": ["/dev/loop1", "/dev/loop5"]}}
    assert ret["changes"] == dry["changes"]
    assert ret["comment"] == "volume group xcvg created on /dev/loop1, /dev/loop5"
    # the plan's read, then vg_create's own check right before vgcreate
    assert no_vg.commands() == ["pvs", "vgs", "lvs", "wipefs", "pvs", "vgs", "lvs", "wipefs", "vgcreate"]
    assert no_vg.calls[3] == [*W, "/dev/loop1", "/dev/loop5"]
    assert no_vg.calls[-1] == ["vgcreate", "xcvg", "/dev/loop1", "/dev/loop5"]

    no_vg.calls.clear()
    again = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert (again["result"], again["changes"]) == (True, {})
    assert again["comment"] == "volume group xcvg is present with /dev/loop1, /dev/loop5"
    assert no_vg.commands() == ["pvs", "vgs", "lvs"]  # converged: one report, no wipefs


def test_vg_present_extends(one_pv, recording, opts):
    opts["test"] = True
    dry = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert dry["result"] is None
    assert dry["changes"] == {"extended": {"vg": "xcvg", "added": ["/dev/loop5"]}}
    assert one_pv.calls[3] == [*W, "/dev/loop5"]  # only the PV not yet in the VG is probed

    opts["test"] = False
    one_pv.calls.clear()
    one_pv.outputs["vgextend"] = ""
    one_pv.effects["vgextend"] = lambda argv: _become(one_pv, recording)
    ret = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert ret["result"] is True, ret
    assert ret["changes"] == dry["changes"]
    assert ret["comment"] == "volume group xcvg extended with /dev/loop5"
    assert one_pv.calls[-1] == ["vgextend", "xcvg", "/dev/loop5"]
    assert one_pv.commands().count("vgextend") == 1

    one_pv.calls.clear()
    again = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert (again["result"], again["changes"]) == (True, {})
    assert one_pv.commands() == ["pvs", "vgs", "lvs"]


@pytest.mark.parametrize("test_mode", [True, False])
def test_vg_present_converged_makes_no_wipefs_call(two_pvs, opts, test_mode):
    opts["test"] = test_mode
    ret = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert (ret["result"], ret["changes"]) == (True, {})
    assert two_pvs.calls == [lvm_mod.PVS_ARGV, lvm_mod.VGS_ARGV, lvm_mod.LVS_ARGV]


def test_vg_present_symlinks_compare_by_realpath(two_pvs, monkeypatch):
    links = {"/dev/disk/by-id/virtio-n1data1": "/dev/loop1", "/dev/disk/by-id/virtio-n1data5": "/dev/loop5"}
    real_realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p: links.get(p) or real_realpath(p))
    ret = lvm_state.vg_present("xcvg", list(links))
    assert (ret["result"], ret["changes"]) == (True, {}), ret
    assert two_pvs.commands() == ["pvs", "vgs", "lvs"]


def test_vg_present_unlisted_pv_is_only_a_warning(two_pvs):
    ret = lvm_state.vg_present("xcvg", ["/dev/loop5"])
    assert (ret["result"], ret["changes"]) == (True, {})
    assert "warning: /dev/loop1 is a PV of xcvg but not listed" in ret["comment"]
    assert two_pvs.commands() == ["pvs", "vgs", "lvs"]  # no vgreduce, nothing


def test_vg_present_extend_keeps_the_warning(one_pv, recording):
    """xcvg on loop1; asking for loop5 only: loop5 is added, loop1 stays (warning)."""
    one_pv.outputs["vgextend"] = ""
    ret = lvm_state.vg_present("xcvg", ["/dev/loop5"])
    assert ret["result"] is True, ret
    assert ret["changes"] == {"extended": {"vg": "xcvg", "added": ["/dev/loop5"]}}
    assert ret["comment"].endswith("warning: /dev/loop1 is a PV of xcvg but not listed (this state never removes a PV from a VG)")
    assert "vgreduce" not in one_pv.commands()


@pytest.mark.parametrize("test_mode", [True, False])
def test_vg_present_refuses_signed_devices(no_vg, opts, test_mode):
    opts["test"] = test_mode
    ret = lvm_state.vg_present("xcvg", [f"/dev/loop{i}" for i in range(6)])
    assert ret["result"] is False
    assert ret["changes"] == {}
    assert ret["comment"].startswith(
        "volume group xcvg: refusing: /dev/loop0 carries ext4; /dev/loop2 carries swap; "
        "/dev/loop3 carries LVM2_member (an LVM PV of no VG: pvremove it if it is not needed); "
        "/dev/loop4 carries dos. xencluster never wipes a device"
    ), ret["comment"]
    assert no_vg.commands() == ["pvs", "vgs", "lvs", "wipefs"]


def test_vg_present_refuses_a_pv_of_another_vg(one_pv):
    ret = lvm_state.vg_present("xcnew", ["/dev/loop5", "/dev/loop1"])
    assert ret["result"] is False
    assert ret["comment"] == "volume group xcnew: refusing: /dev/loop1 is a physical volume of volume group xcvg"
    # only the device in no VG is probed; nothing is written
    assert one_pv.calls[3:] == [[*W, "/dev/loop5"]]


@pytest.mark.parametrize("test_mode", [True, False])
def test_vg_present_missing_device_fails_with_wipefs_stderr(no_vg, opts, test_mode):
    opts["test"] = test_mode
    ret = lvm_state.vg_present("xcvg", ["/dev/loop0", "/dev/xcrec-nope", "/dev/loop2"])
    assert ret["result"] is False
    assert ret["comment"].startswith(
        "cannot probe /dev/loop0, /dev/xcrec-nope, /dev/loop2 for signatures: wipefs failed (rc 1): "
        "wipefs: error: /dev/xcrec-nope: probing initialization failed: No such file or directory"
    ), ret["comment"]
    assert no_vg.commands() == ["pvs", "vgs", "lvs", "wipefs"]


def test_vg_present_vgcreate_failure(no_vg):
    no_vg.outputs["vgcreate"] = {"retcode": 5, "stderr": "  Device /dev/loop1 excluded by a filter.\n"}
    ret = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith(
        "create of volume group xcvg failed: vgcreate failed (rc 5): Device /dev/loop1 excluded by a filter"
    )


def test_vg_present_device_signed_between_plan_and_apply(no_vg, recording):
    """vg_create checks again right before vgcreate: a signature that appeared meanwhile stops it."""
    key = (*W, "/dev/loop1", "/dev/loop5")  # recorded: both blank, for the plan's probe
    signed = _wipefs_rows(recording, SIGS, "/dev/loop0").replace('"loop0"', '"loop5"')  # then: ext4 on loop5
    no_vg.effects["wipefs"] = lambda argv: no_vg.outputs.__setitem__(key, signed)
    ret = lvm_state.vg_present("xcvg", ["/dev/loop1", "/dev/loop5"])
    assert ret["result"] is False
    assert "/dev/loop5 carries ext4" in ret["comment"]
    assert "vgcreate" not in no_vg.commands()


@pytest.mark.parametrize("test_mode", [True, False])
@pytest.mark.parametrize(
    "name,pvs,match",
    [
        ("xcvg; reboot", ["/dev/loop1"], "invalid volume group name"),
        ("xcvg", ["/dev/loop1;reboot"], "invalid physical volume path"),
        ("xcvg", ["--all"], "invalid physical volume path"),
        ("xcvg", [], "non-empty list"),
        ("xcvg", None, "non-empty list"),
    ],
)
def test_vg_present_bad_arguments_fail_before_any_command(run_all, opts, test_mode, name, pvs, match):
    opts["test"] = test_mode
    ret = lvm_state.vg_present(name, pvs)
    assert ret["result"] is False and match in ret["comment"], ret
    assert run_all.calls == []
