"""LIO export on node1, open-iscsi import on node2, through the xencluster modules and the host master.

node1 exports a small LV (VG ``xclio`` on its first data disk) to node2 only,
on its SAN address; node2 logs in, sees the LUN as a block device and reads
back what node1 wrote; an initiator with another name is refused. Everything
it creates is removed at the end (logout, node records, the extra iface,
unexport, save, lvremove/vgremove/pvremove), so it can run again on the same
cluster and leaves nothing to other tests.
"""

import json

import pytest

from labcli import salt

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

EXPORTER, IMPORTER = "node1", "node2"
DISK = "/dev/disk/by-id/virtio-n1data1"
VG, LV = "xclio", "lv0"
DEVICE = f"/dev/{VG}/{LV}"
BACKSTORE = "xcl-lv0"
TARGET = "iqn.2025-01.lab.xen:xcl-node1"
SAN = "192.168.100.1"
PORTAL = f"{SAN}:3260"
INTRUDER_IFACE = "xcl-intruder"
INTRUDER = "iqn.2025-01.lab.xen:xcl-intruder"
READBACK = "/tmp/xcl-readback"


def run(node, argv, ok=(0,)):
    """cmd.run_all with an argument list (no shell) on one node."""
    args = json.dumps(argv)
    ret = salt(node, "cmd.run_all", args, "python_shell=False")[node]
    assert isinstance(ret, dict) and ret["retcode"] in ok, (node, argv, ret)
    return ret


def call(node, fun, *args):
    ret = salt(node, fun, *args)[node]
    assert not (isinstance(ret, str) and ("ERROR" in ret or "Traceback" in ret)), (node, fun, ret)
    return ret


def export(initiator):
    return call(EXPORTER, "xencluster_lio.export", BACKSTORE, DEVICE, TARGET,
                json.dumps([initiator]), json.dumps([SAN]))  # fmt: skip


@pytest.fixture(scope="module")
def synced(lab_cluster):
    return lab_cluster  # the extension is synced and loaded once for the session (conftest.py)


@pytest.fixture
def exported_lv(synced):
    """An LV on node1 and the names involved; removes everything afterwards, whatever happened."""
    try:
        run(EXPORTER, ["vgcreate", "--yes", VG, DISK])  # makes DISK a PV too
        run(EXPORTER, ["lvcreate", "--yes", "--name", LV, "--size", "16m", VG])
        yield call(IMPORTER, "xencluster_iscsi.initiator_name")
    finally:
        problems = []

        def attempt(what, node, argv, ok=(0,)):
            try:
                run(node, argv, ok)
            except AssertionError as exc:
                problems.append(f"{what}: {exc}")

        # The intruder's record first: with two iface records for one target/portal,
        # `iscsiadm -m node -T -p -o delete` fails (rc 6, "iSCSI database failure").
        attempt("intruder record", IMPORTER, ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL,
                                              "-I", INTRUDER_IFACE, "-o", "delete"], ok=(0, 21))  # fmt: skip
        try:
            call(IMPORTER, "xencluster_iscsi.logout", TARGET, PORTAL, "delete=True")
        except AssertionError as exc:
            problems.append(f"logout: {exc}")
        attempt("intruder iface", IMPORTER, ["iscsiadm", "-m", "iface", "-I", INTRUDER_IFACE, "-o", "delete"],
                ok=(0, 21, 22))  # fmt: skip
        attempt("readback file", IMPORTER, ["rm", "-f", READBACK])
        try:
            call(EXPORTER, "xencluster_lio.unexport", BACKSTORE, TARGET)
            call(EXPORTER, "xencluster_lio.save")
        except AssertionError as exc:
            problems.append(f"unexport: {exc}")
        attempt("vgremove", EXPORTER, ["vgremove", "--force", "--yes", VG], ok=(0, 5))  # and its LV
        attempt("pvremove", EXPORTER, ["pvremove", "--yes", DISK], ok=(0, 5))
        assert not problems, "cleanup failed:\n" + "\n".join(problems)


def test_export_to_node2_only_login_and_read_back(exported_lv):
    initiator = exported_lv

    first = export(initiator)
    assert first["changed"] is True and first["lun"] == 0, first
    again = export(initiator)
    assert again == {"changed": False, "changes": [], "target": TARGET, "backstore": BACKSTORE, "lun": 0}
    call(EXPORTER, "xencluster_lio.save")

    lio = call(EXPORTER, "xencluster_lio.exports")
    (tpg,) = lio["targets"][TARGET]["tpgs"]
    assert tpg["enable"] is True
    assert tpg["portals"] == [PORTAL]  # the SAN address only, no 0.0.0.0
    assert set(tpg["acls"]) == {initiator}  # node2 only
    assert tpg["acls"][initiator]["mapped_luns"] == [{"index": 0, "tpg_lun": 0, "write_protect": False}]
    assert lio["backstores"][BACKSTORE]["dev"] == DEVICE
    saved = run(EXPORTER, ["grep", "-c", TARGET, "/etc/rtslib-fb-target/saveconfig.json"])
    assert int(saved["stdout"]) >= 1

    found = call(IMPORTER, "xencluster_iscsi.discover", SAN)
    assert {"portal": PORTAL, "tpgt": 1, "target": TARGET} in found, found
    login = call(IMPORTER, "xencluster_iscsi.login", TARGET, SAN)
    assert login["session"] is not None and login["session"]["state"] == "LOGGED_IN", login
    relogin = call(IMPORTER, "xencluster_iscsi.login", TARGET, SAN)
    assert relogin["changed"] is False, relogin  # already up: a no-op
    show = run(IMPORTER, ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-o", "show"])
    assert "node.startup = automatic" in show["stdout"]

    sessions = [s for s in call(IMPORTER, "xencluster_iscsi.sessions") if s["target"] == TARGET]
    assert len(sessions) == 1 and sessions[0]["portal"] == PORTAL, sessions
    (lun,) = sessions[0]["devices"]
    assert lun["lun"] == 0 and lun["device"].startswith("/dev/sd"), sessions
    # Random data over the whole 16 MiB LV on node1 reads back, bit for bit, through node2's
    # iSCSI disk (direct I/O on both sides: node2 read sector 0 at login, before the write).
    run(EXPORTER, ["dd", "if=/dev/urandom", f"of={DEVICE}", "bs=1M", "count=16", "oflag=direct", "status=none"])
    want = run(EXPORTER, ["sha256sum", DEVICE])["stdout"].split()[0]
    run(IMPORTER, ["dd", f"if={lun['device']}", f"of={READBACK}", "bs=1M", "iflag=direct", "status=none"])
    got = run(IMPORTER, ["sha256sum", READBACK])["stdout"].split()[0]
    assert got == want  # also proves the iSCSI disk is exactly as large as the LV

    # Another initiator name (an iscsiadm iface on node2) is refused at login.
    iface = ["iscsiadm", "-m", "iface", "-I", INTRUDER_IFACE]
    run(IMPORTER, [*iface, "-o", "new"])
    run(IMPORTER, [*iface, "-o", "update", "-n", "iface.initiatorname", "-v", INTRUDER])
    node_argv = ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", INTRUDER_IFACE]
    run(IMPORTER, [*node_argv, "-o", "new"])
    refused = run(IMPORTER, [*node_argv, "--login"], ok=tuple(range(1, 256)))
    assert refused["retcode"] == 24 and "authorization failure" in refused["stderr"], refused
