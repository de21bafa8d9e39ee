"""Stable leg paths: /dev/xencluster/<guest>.<disk>.<node> is the same data on the owner and on its peer.

node1 owns leg ``t1.disk0.node1``: an LV of that name (VG ``xclegs`` on its
SECOND data disk, so it never meets test_lio_iscsi's VG on the first one),
exported to node2 only with the leg id as the LUN's unit serial. The udev
rules of xencluster_disk link it on both nodes: to the LV on node1, to the
iSCSI disk on node2. 1 MiB of random data written through the stable path on
node1 reads back, bit for bit, through the stable path on node2 (direct I/O),
also after node2 logs out and in again (the link goes and comes back).

Everything the test creates is removed at the end (logout and node record,
unexport, VG/PV, temporary files). The rules file stays installed on both
nodes: it is static, part of every xencluster dom0, and a second install is a
no-op.
"""

import json

import pytest

from labcli import salt

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

OWNER, PEER = "node1", "node2"
GUEST, DISK_NAME = "t1", "disk0"
LEG = f"{GUEST}.{DISK_NAME}.{OWNER}"  # the leg id: also the LV name and the LUN's unit serial
STABLE = f"/dev/xencluster/{LEG}"
PV = "/dev/disk/by-id/virtio-n1data2"
VG = "xclegs"
DEVICE = f"/dev/{VG}/{LEG}"
BACKSTORE = f"xcl-{LEG}"
TARGET = "iqn.2025-01.lab.xen:xcl-legs-node1"
SAN = "192.168.100.1"
PORTAL = f"{SAN}:3260"
SRC = "/tmp/xcl-stable-src"  # on node1
READBACK = "/tmp/xcl-stable-readback"  # on both nodes
OFFSET_MIB = 3  # not sector 0: nothing on node2 may take random data for a partition table


def run(node, argv, ok=(0,)):
    """cmd.run_all with an argument list (no shell) on one node."""
    ret = salt(node, "cmd.run_all", json.dumps(argv), "python_shell=False")[node]
    assert isinstance(ret, dict) and ret["retcode"] in ok, (node, argv, ret)
    return ret


def call(node, fun, *args):
    ret = salt(node, fun, *args)[node]
    assert not (isinstance(ret, str) and ("ERROR" in ret or "Traceback" in ret)), (node, fun, ret)
    return ret


def udev_properties(node, device):
    """udev's properties of ``device`` on ``node``, for assertion messages."""
    ret = salt(node, "cmd.run_all", json.dumps(["udevadm", "info", "--query=property", f"--name={device}"]),
               "python_shell=False")[node]  # fmt: skip
    return ret.get("stdout", "") + ret.get("stderr", "") if isinstance(ret, dict) else ret


def wait_for_link(node, device_hint):
    """xencluster_disk.wait_for on ``node``; on failure say what udev knows about the device."""
    ret = salt(node, "xencluster_disk.wait_for", GUEST, DISK_NAME, OWNER, "timeout=60", timeout=120)[node]
    assert isinstance(ret, dict), (
        f"{node}: no {STABLE} after 60 s: {ret}\nudev properties of {device_hint}:\n"
        f"{udev_properties(node, device_hint)}"
    )
    return ret


def sha256(node, path):
    return run(node, ["sha256sum", path])["stdout"].split()[0]


def read_through_stable_path(node):
    """sha256 of the 1 MiB at OFFSET_MIB, read through the stable path with O_DIRECT."""
    run(node, ["dd", f"if={STABLE}", f"of={READBACK}", "bs=1M", f"skip={OFFSET_MIB}", "count=1",
               "iflag=direct", "status=none"])  # fmt: skip
    return sha256(node, READBACK)


def iscsi_device(node):
    """The block device of LUN 0 of TARGET in node's sessions (after a login)."""
    sessions = [s for s in call(node, "xencluster_iscsi.sessions") if s["target"] == TARGET]
    assert len(sessions) == 1 and sessions[0]["state"] == "LOGGED_IN", sessions
    (lun,) = sessions[0]["devices"]
    assert lun["lun"] == 0 and lun["device"].startswith("/dev/sd"), sessions
    return lun["device"]


@pytest.fixture(scope="module")
def synced(lab_cluster):
    return lab_cluster  # the extension is synced and loaded once for the session (conftest.py)


@pytest.fixture
def rules(synced):
    """The udev rules on both nodes, through Salt; installing them twice changes nothing."""
    for node in (OWNER, PEER):
        first = call(node, "xencluster_disk.install_rules")
        assert first["path"] == "/etc/udev/rules.d/61-xencluster-legs.rules", first
        again = call(node, "xencluster_disk.install_rules")
        assert again == {"changed": False, "path": first["path"]}, (node, again)
        text = run(node, ["cat", first["path"]])["stdout"]
        assert text.rstrip("\n") == call(node, "xencluster_disk.udev_rules").rstrip("\n"), node
    return True


@pytest.fixture
def leg_lv(rules):
    """The LV of leg t1.disk0.node1 on node1; removes everything the test made afterwards, whatever happened."""
    try:
        run(OWNER, ["vgcreate", "--yes", VG, PV])  # makes PV a PV too
        run(OWNER, ["lvcreate", "--yes", "--name", LEG, "--size", "16m", VG])
        yield DEVICE
    finally:
        problems = []

        def attempt(what, node, argv, ok=(0,)):
            try:
                run(node, argv, ok)
            except AssertionError as exc:
                problems.append(f"{what}: {exc}")

        try:
            call(PEER, "xencluster_iscsi.logout", TARGET, PORTAL, "delete=True")
        except AssertionError as exc:
            problems.append(f"logout: {exc}")
        attempt("readback file", PEER, ["rm", "-f", READBACK])
        try:
            call(OWNER, "xencluster_lio.unexport", BACKSTORE, TARGET)
        except AssertionError as exc:
            problems.append(f"unexport: {exc}")
        attempt("temporary files", OWNER, ["rm", "-f", SRC, READBACK])
        attempt("vgremove", OWNER, ["vgremove", "--force", "--yes", VG], ok=(0, 5))  # and its LV
        attempt("pvremove", OWNER, ["pvremove", "--yes", PV], ok=(0, 5))
        assert not problems, "cleanup failed:\n" + "\n".join(problems)


def test_the_stable_path_is_the_same_data_on_owner_and_peer(leg_lv):
    # node1: the leg's LV gets its link from LVM's udev properties.
    path = call(OWNER, "xencluster_disk.leg_path", GUEST, DISK_NAME, OWNER)
    assert path == STABLE == call(PEER, "xencluster_disk.leg_path", GUEST, DISK_NAME, OWNER)
    owner = wait_for_link(OWNER, DEVICE)
    lv_node = run(OWNER, ["readlink", "-f", DEVICE])["stdout"].strip()
    assert owner["kind"] == "lv" and owner["path"] == STABLE and owner["target"] == lv_node, (owner, lv_node)

    # node1 exports it to node2 only, with the leg id as the LUN's unit serial.
    initiator = call(PEER, "xencluster_iscsi.initiator_name")
    export_argv = [BACKSTORE, DEVICE, TARGET, json.dumps([initiator]), json.dumps([SAN])]
    exported = call(OWNER, "xencluster_lio.export", *export_argv, f"serial={LEG}")
    assert exported["changed"] is True and exported["serial"] == LEG, exported
    assert any(f"with unit serial {LEG}" in c for c in exported["changes"]), exported
    assert call(OWNER, "xencluster_lio.exports")["backstores"][BACKSTORE]["wwn"] == LEG
    again = call(OWNER, "xencluster_lio.export", *export_argv, f"serial={LEG}")
    assert again["changed"] is False, again
    # Another serial for the same backstore is refused: it would change the disk under its initiators.
    refused = salt(OWNER, "xencluster_lio.export", *export_argv, f"serial={GUEST}.{DISK_NAME}.node9")[OWNER]
    assert isinstance(refused, str) and "already exists with unit serial" in refused, refused
    assert call(OWNER, "xencluster_lio.exports")["backstores"][BACKSTORE]["wwn"] == LEG

    # node2 logs in: its udev links the LUN by the serial scsi_id reads (VPD page 0x80).
    found = call(PEER, "xencluster_iscsi.discover", SAN)
    assert {"portal": PORTAL, "tpgt": 1, "target": TARGET} in found, found
    login = call(PEER, "xencluster_iscsi.login", TARGET, SAN)
    assert login["session"] is not None and login["session"]["state"] == "LOGGED_IN", login
    lun = iscsi_device(PEER)
    peer = wait_for_link(PEER, lun)
    assert peer["kind"] == "iscsi" and peer["path"] == STABLE and peer["target"] == lun, (peer, lun)
    props = udev_properties(PEER, lun)
    assert f"ID_SCSI_SERIAL={LEG}" in props and "ID_VENDOR=LIO-ORG" in props, props

    # resolve: the same path on both nodes, an LV on the owner, the LUN on the peer.
    assert call(OWNER, "xencluster_disk.resolve", GUEST, DISK_NAME, OWNER) == owner
    assert call(PEER, "xencluster_disk.resolve", GUEST, DISK_NAME, OWNER) == peer
    assert call(PEER, "xencluster_disk.links")[LEG] == peer

    # Write on node1 through the stable path, read on node2 through the stable path.
    run(OWNER, ["dd", "if=/dev/urandom", f"of={SRC}", "bs=1M", "count=1", "iflag=fullblock", "status=none"])
    want = sha256(OWNER, SRC)
    run(OWNER, ["dd", f"if={SRC}", f"of={STABLE}", "bs=1M", f"seek={OFFSET_MIB}", "count=1",
                "oflag=direct", "conv=fsync,notrunc", "status=none"])  # fmt: skip
    assert read_through_stable_path(OWNER) == want, "node1 does not read back what it wrote through the stable path"
    assert read_through_stable_path(PEER) == want, f"{STABLE} on node2 is not the data of {STABLE} on node1"

    # Log out: the link goes with the disk. Log in again: it comes back, to the same data.
    out = call(PEER, "xencluster_iscsi.logout", TARGET, PORTAL)
    assert out["changed"] is True, out
    run(PEER, ["udevadm", "settle", "--timeout=30"])
    gone = salt(PEER, "xencluster_disk.resolve", GUEST, DISK_NAME, OWNER)[PEER]
    assert isinstance(gone, str) and "has no stable path on this node" in gone, gone
    assert LEG not in call(PEER, "xencluster_disk.links")
    login = call(PEER, "xencluster_iscsi.login", TARGET, SAN)
    assert login["changed"] is True and login["session"]["state"] == "LOGGED_IN", login
    lun = iscsi_device(PEER)
    back = wait_for_link(PEER, lun)
    assert back["kind"] == "iscsi" and back["path"] == STABLE and back["target"] == lun, (back, lun)
    assert read_through_stable_path(PEER) == want, f"{STABLE} on node2 changed data after a re-login"
