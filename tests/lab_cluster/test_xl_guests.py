"""xl through Salt on real dom0s: create, list, PV migration refusal, double-run alarm, destroy.

The probe guests boot the dom0's own kernel and initrd with an init that does
not exist, so they crash at once and are kept (on_crash=preserve): a real
domain for xl, with no guest image needed.
"""

import json

import pytest
from labcli import salt, salt_run

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]



def probe_config(name, guest_type):
    release = salt("node1", "xencluster_xl.info")["node1"]["release"]  # the dom0 kernel, in every node
    return json.dumps({
        "name": name, "type": guest_type, "memory": 128, "vcpus": 1,  # the dom0 kernel + initrd do not fit in 64 MiB
        "kernel": f"/boot/vmlinuz-{release}", "ramdisk": f"/boot/initrd.img-{release}",
        "extra": "console=hvc0 rdinit=/no-such-init", "on_crash": "preserve",
    })


def destroy_everywhere(nodes, name):
    salt(",".join(nodes), "xencluster_xl.destroy", name, "-L")


@pytest.fixture
def synced(lab_cluster):
    yield lab_cluster  # the extension is synced once for the session (conftest.py)
    for name in ("xcprobe-pvh", "xcprobe-pv"):
        destroy_everywhere(lab_cluster, name)


def test_create_list_and_destroy_a_pvh_guest(synced):
    created = salt("node1", "xencluster_xl.create", probe_config("xcprobe-pvh", "pvh"))["node1"]
    assert created["name"] == "xcprobe-pvh" and isinstance(created["domid"], int), created
    listed = salt("node1", "xencluster_xl.list_domains")["node1"]
    assert listed["xcprobe-pvh"]["type"] == "pvh" and listed["xcprobe-pvh"]["memory"] == 128 * 1024**2
    # The probe crashed at once (kept by on_crash=preserve): nothing to migrate, even as a dry run.
    dry = salt("node1", "xencluster_xl.migrate", "xcprobe-pvh", "node2", "dry_run=True")["node1"]
    assert isinstance(dry, str) and "is crashed here, not running" in dry, dry
    # A second create of the same name on the same host is refused locally.
    again = salt("node1", "xencluster_xl.create", probe_config("xcprobe-pvh", "pvh"))["node1"]
    assert isinstance(again, str) and "xcprobe-pvh" in again, again
    assert salt("node1", "xencluster_xl.destroy", "xcprobe-pvh")["node1"]["changed"] is True
    assert "xcprobe-pvh" not in salt("node1", "xencluster_xl.list_domains")["node1"]


def test_pv_guest_migration_is_refused_before_xl_runs(synced):
    salt("node1", "xencluster_xl.create", probe_config("xcprobe-pv", "pv"))
    refused = salt("node1", "xencluster_xl.migrate", "xcprobe-pv", "node2")["node1"]
    assert isinstance(refused, str) and "PV" in refused and "shadow" in refused, refused
    # Nothing arrived on node2.
    assert "xcprobe-pv" not in salt("node2", "xencluster_xl.list_domains")["node2"]


def test_a_guest_on_two_nodes_is_the_top_alarm(synced):
    for node in ("node1", "node2"):
        salt(node, "xencluster_xl.create", probe_config("xcprobe-pvh", "pvh"))
    located = salt_run("xencluster.locate", "tgt=node1,node2", "tgt_type=list")
    assert located["double_runs"] == ["xcprobe-pvh"]
    assert located["guests"]["xcprobe-pvh"] == ["node1", "node2"]
