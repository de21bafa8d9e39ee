"""xencluster_xl.block_list and migrate's running check, on recordings of real lab guests.

lab-node1-probe-pair: the PVH probe guest running on node1 with its two legs at
their stable paths (a local LV and node2's iSCSI LUN); lab-node1-pvh-crashed: a
crash-preserved PVH guest.
"""

import json

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_xl as xl

PAIR = "lab-node1-probe-pair"
LEGS = ["/dev/xencluster/probe.disk0.node1", "/dev/xencluster/probe.disk0.node2"]


@pytest.fixture
def configure_loader_modules(run_all):
    return {xl: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def probe_host(run_all, recording):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", PAIR, "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", PAIR, "xl_list")
    run_all.outputs[(*xl.XL_LIST_LONG, "probe")] = recording("xl", PAIR, "xl_list_l.probe")
    run_all.outputs[(*xl.XL_BLOCK_LIST, "probe")] = recording("xl", PAIR, "xl_block_list.probe")
    return run_all


def test_block_list_of_a_guest_on_its_disk_pair(probe_host):
    disks = xl.block_list("probe")
    assert probe_host.calls == [[*xl.XL_LIST_LONG, "probe"], [*xl.XL_BLOCK_LIST, "probe"]]
    assert [(d["vdev"], d["devid"], d["target"], d["mode"], d["state"]) for d in disks] == [
        ("xvda", 51712, LEGS[0], "w", "connected"),
        ("xvdb", 51728, LEGS[1], "w", "connected"),
    ]
    assert disks[0]["backend_path"] == "/local/domain/0/backend/vbd/1/51712"
    assert disks[0]["backend_domid"] == 0 and disks[0]["frontend_domid"] == 1
    assert disks[0]["format"] == "raw" and disks[0]["state_code"] == 4


def test_block_list_keeps_a_device_only_one_side_knows(probe_host, recording):
    # SYNTHETIC: the recorded block-list plus a third, unconfigured device (a hot-plug in flight)
    extra = "51744 0   1      1     -1     -1       /local/domain/0/backend/vbd/1/51744\n"
    probe_host.outputs[(*xl.XL_BLOCK_LIST, "probe")] = recording("xl", PAIR, "xl_block_list.probe") + extra
    disks = xl.block_list("probe")
    assert disks[-1]["vdev"] is None and disks[-1]["devid"] == 51744 and disks[-1]["state"] == "initialising"
    # SYNTHETIC: a configured disk whose frontend is already gone
    config = json.loads(recording("xl", PAIR, "xl_list_l.probe"))
    config[0]["config"]["disks"].append({"pdev_path": "/dev/vg/x", "vdev": "xvdc", "readwrite": 0})
    probe_host.outputs[(*xl.XL_LIST_LONG, "probe")] = json.dumps(config)
    probe_host.outputs[(*xl.XL_BLOCK_LIST, "probe")] = recording("xl", PAIR, "xl_block_list.probe")
    gone = xl.block_list("probe")[-1]
    assert gone["vdev"] == "xvdc" and gone["devid"] == 51744 and gone["state"] is None and gone["mode"] == "r"


def test_block_list_of_an_unknown_guest_carries_xl_stderr(run_all):
    run_all.outputs[(*xl.XL_LIST_LONG, "nope")] = {"retcode": 1, "stdout": "", "stderr": "libxl: domain nope not found\n"}
    with pytest.raises(CommandExecutionError, match="domain nope not found"):
        xl.block_list("nope")


def test_block_list_refuses_unexpected_output(probe_host):
    probe_host.outputs[(*xl.XL_BLOCK_LIST, "probe")] = "Vdev BE handle\n1 2 3\n"
    with pytest.raises(CommandExecutionError, match="unexpected xl block-list output"):
        xl.block_list("probe")


@pytest.mark.parametrize("name", ["; rm -rf /", "-h", "probe\n", "", None, "a" * 65, "../probe"])
def test_block_list_validates_the_name_first(run_all, name):
    with pytest.raises(SaltInvocationError):
        xl.block_list(name)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "vdev, number",
    [("xvda", 51712), ("xvdb", 51728), ("xvdp", 51952), ("xvdq", (1 << 28) | (16 << 8)),
     ("xvdaa", (1 << 28) | (26 << 8)), ("sda", 2048), ("sdb", 2064), ("hda", 768), ("hdb", 832),
     ("hdc", 5632), ("hdd", 5696), ("hde", None), ("xvda1", None), ("vda", None), (None, None)],
)  # fmt: skip
def test_vdev_numbers_follow_xen_vbd_interface(vdev, number):
    assert xl.vdev_number(vdev) == number


def test_migrate_refuses_a_crashed_guest_before_xl_runs(run_all, recording):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = recording("xl", "lab-node1-pvh-crashed", "xl_list_l")
    run_all.outputs[tuple(xl.XL_LIST)] = recording("xl", "lab-node1-pvh-crashed", "xl_list")
    (name,) = xl.list_domains()
    run_all.calls.clear()
    with pytest.raises(CommandExecutionError, match="is crashed here, not running"):
        xl.migrate(name, "node2", dry_run=True)
    assert run_all.calls == [xl.XL_LIST_LONG, xl.XL_LIST]


def test_migrate_dry_run_of_the_running_probe(probe_host):
    checks = xl.migrate("probe", "node2", dry_run=True)
    assert checks["checks"]["type"] == "pvh" and checks["checks"]["state"] == "blocked"
    assert checks["argv"] == ["xl", "migrate", "probe", "node2"]
