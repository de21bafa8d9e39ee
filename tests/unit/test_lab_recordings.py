"""Parsers against output recorded on a real lab dom0 (Xen 4.17, LVM 2.03.16).

See tests/recordings/README.md for how and where each recording was made.
"""

import pytest

from saltext.xencluster.modules import xencluster_lvm as lvm
from saltext.xencluster.modules import xencluster_xl as xl

XL_IDLE = "lab-node1-idle"
LVM_LEGS = "lab-node1-legs"
MiB = 1024**2


@pytest.fixture
def configure_loader_modules(run_all):
    return {
        xl: {"__salt__": {"cmd.run_all": run_all}},
        lvm: {"__salt__": {"cmd.run_all": run_all}},
    }


@pytest.fixture
def idle_dom0(run_all, recording):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", XL_IDLE, "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", XL_IDLE, "xl_list")
    run_all.outputs[tuple(xl.XL_INFO)] = recording("xl", XL_IDLE, "xl_info")
    return run_all


@pytest.fixture
def dom0_with_legs(run_all, recording):
    for cmd in ("pvs", "vgs", "lvs"):
        run_all.outputs[cmd] = recording("lvm", LVM_LEGS, cmd)
    return run_all


def test_idle_dom0_lists_no_guest_and_keeps_domain0_out(idle_dom0):
    # The real `xl list -l` of 4.17 does include Domain-0 (domid 0).
    assert xl.list_domains() == {}
    assert idle_dom0.calls == [xl.XL_LIST_LONG, xl.XL_LIST]


def test_xl_info_of_a_lab_dom0(idle_dom0):
    info = xl.info()
    assert (info["xen_major"], info["xen_minor"], info["xen_extra"]) == (4, 17, ".7")
    assert info["xen_version"] == "4.17.7"
    assert info["host"] == "node1"
    assert info["total_memory"] == 2047 and info["free_memory"] == 1256
    assert "hap" in info["virt_caps"].split()  # HAP: PVH/HVM guests can live-migrate
    assert info["xen_scheduler"] == "credit2"
    assert info["xen_commandline"].endswith("bootscrub=0")
    assert info["xen_changeset"] == ""  # an empty value stays an empty string
    assert idle_dom0.calls == [xl.XL_INFO]


def test_lvm_report_of_a_lab_dom0_with_legs_and_a_snapshot(dom0_with_legs):
    report = lvm.report()
    assert dom0_with_legs.commands() == ["pvs", "vgs", "lvs"]
    assert sorted(report["pvs"]) == ["/dev/vdb", "/dev/vdc"]
    assert all(pv["vg_name"] == "xcvg" for pv in report["pvs"].values())
    vg = report["vgs"]["xcvg"]
    assert vg["vg_extent_size"] == 4 * MiB and vg["lv_count"] == 3
    assert vg["vg_size"] == 8581545984 and vg["vg_free"] == 7709130752

    striped = report["lvs"]["xcvg/db1-disk0-a"]
    assert striped["size"] == 512 * MiB and striped["attr"].startswith("-wi-a")
    (segment,) = striped["segments"]
    assert (segment["type"], segment["stripes"], segment["stripe_size"]) == ("striped", 2, 64 * 1024)
    assert segment["devices"] == ["/dev/vdb(64)", "/dev/vdc(0)"]

    origin = report["lvs"]["xcvg/web1-disk0-a"]
    assert origin["size"] == 256 * MiB and origin["attr"][0] == "o"  # has a snapshot
    snapshot = report["lvs"]["xcvg/web1-disk0-a-snap"]
    assert snapshot["size"] == 64 * MiB and snapshot["attr"][0] == "s"


def test_list_domains_of_a_lab_dom0_with_a_crashed_pvh_guest(run_all, recording):
    rec = "lab-node1-pvh-crashed"
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", rec, "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", rec, "xl_list")
    assert xl.list_domains() == {
        "probe1": {"domid": 1, "type": "pvh", "memory": 128 * MiB, "vcpus": 1, "state": "crashed"}
    }
    assert run_all.calls == [xl.XL_LIST_LONG, xl.XL_LIST]
