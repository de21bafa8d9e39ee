"""xencluster_xl.block_attach and disk_spec: a returning leg hot-plugged into a running guest.

The host is the recording ``xl/lab-node1-probe-pair``: the PVH probe guest on
node1 with xvda = ``/dev/xencluster/probe.disk0.node1`` (local LV) and xvdb
= ``/dev/xencluster/probe.disk0.node2`` (node2's iSCSI LUN). The DEGRADED
probe, as ``recover`` starts it when node1's leg is gone, is that recording
minus xvda (SYNTHETIC: the xvda entry of ``xl list -l probe`` and its
``xl block-list`` row removed); after ``xl block-attach`` the host answers
the recording unchanged.
"""

import copy
import json
import os
import pathlib
import stat

import pytest
import salt.utils.yaml
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl
from saltext.xencluster.states import xencluster_guest as guest_state

PAIR = "lab-node1-probe-pair"
LEG1, LEG2 = "/dev/xencluster/probe.disk0.node1", "/dev/xencluster/probe.disk0.node2"
SPEC1 = f"format=raw,vdev=xvda,access=rw,target={LEG1}"
ATTACH = ["xl", "block-attach", "probe", SPEC1]
LISTS = [xl.XL_LIST_LONG, xl.XL_LIST]
BLOCKS = [[*xl.XL_LIST_LONG, "probe"], [*xl.XL_BLOCK_LIST, "probe"]]


@pytest.fixture
def configure_loader_modules(run_all):
    return {xl: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def devices(monkeypatch):
    """The block devices of the host: both stable leg paths."""
    found = {LEG1, LEG2}
    monkeypatch.setattr(xl, "_is_block_device", lambda path: path in found)
    return found


def degraded(recording):
    """``(xl list -l probe, xl block-list probe)`` of the probe without xvda (SYNTHETIC, see the docstring)."""
    config = json.loads(recording("xl", PAIR, "xl_list_l.probe"))
    config[0]["config"]["disks"] = [d for d in config[0]["config"]["disks"] if d["vdev"] != "xvda"]
    rows = recording("xl", PAIR, "xl_block_list.probe").splitlines(keepends=True)
    return json.dumps(config), "".join(r for r in rows if not r.startswith("51712 "))


@pytest.fixture
def probe_host(run_all, recording, devices):
    """The probe running degraded; ``xl block-attach`` brings back the recorded pair."""
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", PAIR, "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", PAIR, "xl_list")
    listing, blocks = degraded(recording)
    run_all.outputs[(*xl.XL_LIST_LONG, "probe")] = listing
    run_all.outputs[(*xl.XL_BLOCK_LIST, "probe")] = blocks

    def attached(argv):
        run_all.outputs[(*xl.XL_LIST_LONG, "probe")] = recording("xl", PAIR, "xl_list_l.probe")
        run_all.outputs[(*xl.XL_BLOCK_LIST, "probe")] = recording("xl", PAIR, "xl_block_list.probe")

    run_all.outputs[tuple(ATTACH)] = ""
    run_all.effects["xl"] = lambda argv: attached(argv) if argv[1] == "block-attach" else None
    return run_all


def test_a_missing_leg_is_attached_at_its_vdev(probe_host):
    res = xl.block_attach("probe", LEG1, "xvda")
    assert probe_host.calls == [*LISTS, *BLOCKS, ATTACH, *BLOCKS]
    assert (res["changed"], res["spec"], res["argv"]) == (True, SPEC1, ATTACH)
    disk = res["disk"]
    assert (disk["vdev"], disk["target"], disk["state"], disk["devid"]) == ("xvda", LEG1, "connected", 51712)


def test_a_leg_already_there_changes_nothing(probe_host, recording):
    # the recorded pair: xvda is attached
    probe_host.outputs[(*xl.XL_LIST_LONG, "probe")] = recording("xl", PAIR, "xl_list_l.probe")
    probe_host.outputs[(*xl.XL_BLOCK_LIST, "probe")] = recording("xl", PAIR, "xl_block_list.probe")
    res = xl.block_attach("probe", LEG1, "xvda")
    assert res["changed"] is False and res["disk"]["state"] == "connected"
    assert probe_host.calls == [*LISTS, *BLOCKS]


def test_the_dry_run_checks_and_attaches_nothing(probe_host):
    res = xl.block_attach("probe", LEG1, "xvda", dry_run=True)
    assert (res["changed"], res["disk"], res["argv"]) == (False, None, ATTACH)
    assert probe_host.calls == [*LISTS, *BLOCKS]


def test_a_leg_attached_at_another_vdev_is_refused(probe_host):
    with pytest.raises(CommandExecutionError, match=f"^{LEG2} is attached to probe already, at xvdb, not at xvdc$"):
        xl.block_attach("probe", LEG2, "xvdc")
    assert ATTACH[:2] not in [c[:2] for c in probe_host.calls]


def test_a_vdev_taken_by_another_disk_is_refused(probe_host):
    with pytest.raises(CommandExecutionError, match=f"^xvdb of probe is taken by {LEG2}$"):
        xl.block_attach("probe", LEG1, "xvdb")


def test_a_vdev_taken_by_a_device_being_attached_is_refused(probe_host, recording):
    # SYNTHETIC: a block-list row (xvda, state 1) that xl list -l does not show yet: a hot-plug in flight
    extra = "51712 0   1      1     -1     -1       /local/domain/0/backend/vbd/1/51712\n"
    probe_host.outputs[(*xl.XL_BLOCK_LIST, "probe")] += extra
    with pytest.raises(CommandExecutionError, match="^xvda of probe is taken by a device being attached$"):
        xl.block_attach("probe", LEG1, "xvda")


def test_a_target_that_is_no_block_device_is_refused(probe_host, devices):
    devices.discard(LEG1)
    with pytest.raises(CommandExecutionError, match=f"^{LEG1} is not a block device on this host"):
        xl.block_attach("probe", LEG1, "xvda")
    assert probe_host.calls == LISTS


def test_a_guest_that_is_not_running_here_is_refused(run_all, recording, devices):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", "lab-node1-pvh-crashed", "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", "lab-node1-pvh-crashed", "xl_list")
    (name,) = xl.list_domains()
    with pytest.raises(CommandExecutionError, match=f"^guest {name} is crashed on this host: nothing to attach"):
        xl.block_attach(name, LEG1, "xvda")
    with pytest.raises(CommandExecutionError, match="^guest web1 does not exist on this host"):
        xl.block_attach("web1", LEG1, "xvda")
    assert [c[1] for c in run_all.calls] == ["list"] * 6  # list_domains only, three times


def test_xl_failing_carries_its_stderr(probe_host):
    probe_host.outputs[tuple(ATTACH)] = {"retcode": 1, "stderr": "libxl: error: libxl_device.c: unable to add vbd\n"}
    with pytest.raises(CommandExecutionError, match="unable to add vbd"):
        xl.block_attach("probe", LEG1, "xvda")


@pytest.mark.parametrize(
    "args, kwargs, what",
    [
        (("probe; reboot", LEG1, "xvda"), {}, "invalid guest name"),
        (("-h", LEG1, "xvda"), {}, "invalid guest name"),
        (("probe", "relative/path", "xvda"), {}, "invalid target"),
        (("probe", "/dev/../etc/shadow", "xvda"), {}, "invalid target"),
        (("probe", "/dev/x y", "xvda"), {}, "invalid target"),
        (("probe", "/dev/x\nvdev=xvdz", "xvda"), {}, "invalid target"),
        (("probe", LEG1, "xvda1"), {}, "invalid vdev"),
        (("probe", LEG1, "vda"), {}, "invalid vdev"),
        (("probe", LEG1, "xvda,target=/etc"), {}, "invalid vdev"),
        (("probe", LEG1, None), {}, "invalid vdev"),
        (("probe", LEG1, "xvda"), {"access": "w!"}, "access must be one of rw, ro"),
        (("probe", LEG1, "xvda"), {"disk_format": "qcow2"}, "disk_format must be one of raw"),
        (("probe", LEG1, "xvda"), {"dry_run": "yes"}, "dry_run must be True or False"),
    ],
)  # fmt: skip
def test_bad_arguments_never_reach_a_command(run_all, args, kwargs, what):
    with pytest.raises(SaltInvocationError, match=what):
        xl.block_attach(*args, **kwargs)
    assert run_all.calls == []


def test_disk_spec_is_the_entry_the_guest_state_writes():
    model_file = pathlib.Path(__file__).resolve().parent / "data" / "two_node_model.sls"
    raw = salt.utils.yaml.safe_load(model_file.read_text())
    view = model_mod.node_view("node2", copy.deepcopy(raw["xencluster"]))
    written = guest_state.guest_config(view["guests"]["web1"], "node2")["disk"]
    assert [xl.disk_spec(path, vdev) for vdev, path in guest_state.guest_disks(view["guests"]["web1"])] == written
    assert xl.disk_spec(LEG1, "xvda", access="ro") == f"format=raw,vdev=xvda,access=ro,target={LEG1}"


def test_is_block_device_follows_symlinks(tmp_path, monkeypatch):
    regular = tmp_path / "file"
    regular.write_text("")
    link = tmp_path / "link"
    link.symlink_to(regular)
    assert xl._is_block_device(str(link)) is False and xl._is_block_device(str(tmp_path / "none")) is False
    real_stat = os.stat
    monkeypatch.setattr(xl.os, "stat", lambda p: os.stat_result((stat.S_IFBLK | 0o660,) + tuple(real_stat(p))[1:]))
    assert xl._is_block_device(str(link)) is True


def test_cli_examples():
    for func in (xl.block_attach, xl.disk_spec, xl.block_list):
        assert "CLI Example:" in func.__doc__, func.__name__
