"""Mutual CHAP, a grown LUN seen after a rescan, and LIO's saved config restored, through Salt.

node1 exports a leg (VG ``xcchap`` on its second data disk) to node2 with
mutual CHAP. node2 logs in only with the right credentials (set_chap), is
refused once they are cleared, sees the LUN grow after ``lv_extend`` +
``rescan``, and after node1 unexports and restores its saved LIO config the
target is back exactly as it was.
"""

import json
import secrets

import pytest

from labcli import salt
from legs import call, run

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

OWNER, PEER = "node1", "node2"
PV, VG, LV = "/dev/disk/by-id/virtio-n1data2", "xcchap", "chap.disk0.node1"
DEVICE = f"/dev/{VG}/{LV}"
TARGET = f"iqn.2025-01.lab.xen:{LV}"
PORTAL = "192.168.100.1:3260"
SAVED = "/var/tmp/xc-chap-saveconfig.json"


def secret():
    return secrets.token_hex(8)  # 16 characters of [0-9a-f]


def failed(ret):
    return isinstance(ret, str) and ret.startswith("ERROR")


def lun_size(device):
    return int(run(PEER, ["blockdev", "--getsize64", device])["stdout"])


def peer_device():
    (session,) = [s for s in call(PEER, "xencluster_iscsi.sessions") if s["target"] == TARGET]
    (lun,) = session["devices"]
    return lun["device"]


@pytest.fixture
def chap_export(lab_cluster):
    chap = {"userid": "node2-in", "password": secret(), "mutual_userid": "node1-out", "mutual_password": secret()}
    try:
        run(OWNER, ["vgcreate", "--yes", VG, PV])
        call(OWNER, "xencluster_lvm.lv_create", VG, LV, "16M")
        ret = call(OWNER, "xencluster_lio.export", LV, DEVICE, TARGET, json.dumps(["iqn.2025-01.lab.xen:node2"]),
                   json.dumps([PORTAL]), f"chap={json.dumps(chap)}", f"serial={LV}")  # fmt: skip
        assert isinstance(ret, dict), ret
        assert chap["password"] not in json.dumps(ret) and chap["mutual_password"] not in json.dumps(ret)
        yield chap
    finally:
        salt(PEER, "xencluster_iscsi.logout", TARGET, PORTAL, "delete=True")
        salt(OWNER, "xencluster_lio.unexport", LV, TARGET)
        salt(OWNER, "cmd.run_all", json.dumps(["rm", "-f", SAVED]), "python_shell=False")
        run(OWNER, ["vgremove", "--force", "--yes", VG], ok=(0, 5))
        run(OWNER, ["pvremove", "--yes", PV], ok=(0, 5))


def test_mutual_chap_rescan_and_restore(chap_export):
    chap = chap_export
    call(PEER, "xencluster_iscsi.discover", PORTAL)
    # without credentials the target refuses the login
    assert failed(salt(PEER, "xencluster_iscsi.login", TARGET, PORTAL)[PEER])
    call(PEER, "xencluster_iscsi.set_chap", TARGET, PORTAL, chap["userid"], chap["password"],
         chap["mutual_userid"], chap["mutual_password"])  # fmt: skip
    call(PEER, "xencluster_iscsi.login", TARGET, PORTAL)
    device = peer_device()
    assert lun_size(device) == 16 * 2**20

    # the owner grows the leg; the peer sees it after a rescan
    call(OWNER, "xencluster_lvm.lv_extend", VG, LV, "32M")
    call(PEER, "xencluster_iscsi.rescan")
    assert lun_size(device) == 32 * 2**20

    # wrong mutual secret: the initiator refuses the target
    call(PEER, "xencluster_iscsi.logout", TARGET, PORTAL)
    call(PEER, "xencluster_iscsi.set_chap", TARGET, PORTAL, chap["userid"], chap["password"],
         chap["mutual_userid"], secret())  # fmt: skip
    assert failed(salt(PEER, "xencluster_iscsi.login", TARGET, PORTAL)[PEER])
    call(PEER, "xencluster_iscsi.clear_chap", TARGET, PORTAL)
    assert failed(salt(PEER, "xencluster_iscsi.login", TARGET, PORTAL)[PEER])

    # LIO's saved config brings the export back, CHAP included
    before = call(OWNER, "xencluster_lio.exports")
    call(OWNER, "xencluster_lio.save", SAVED)
    call(OWNER, "xencluster_lio.unexport", LV, TARGET)
    assert TARGET not in call(OWNER, "xencluster_lio.exports")["targets"]
    call(OWNER, "xencluster_lio.restore", SAVED)
    assert call(OWNER, "xencluster_lio.exports") == before
    call(PEER, "xencluster_iscsi.set_chap", TARGET, PORTAL, chap["userid"], chap["password"],
         chap["mutual_userid"], chap["mutual_password"])  # fmt: skip
    call(PEER, "xencluster_iscsi.login", TARGET, PORTAL)
    assert lun_size(peer_device()) == 32 * 2**20
