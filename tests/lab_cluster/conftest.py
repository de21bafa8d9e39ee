"""Lab tier: tests that run against the real two-node Xen cluster in QEMU.

The session fixture builds the image (cached), boots the nodes and starts the
host master through the lab CLI, exactly as an operator would. A cluster that
was already running before the tests is reused and left running. One the tests
start themselves starts from wiped disks, because the data disks outlive a
`down` and a previous run (its highstate test above all) leaves them holding
VGs, legs and guests; it is stopped and wiped again at the end (set
XENCLUSTER_LAB_KEEP=1 to keep it running and its disks as they are). One that
tests/lab_cluster/lanes.py booted from wiped disks for this session
(XENCLUSTER_LAB_FRESH=1) counts as started by the session.
"""

import json
import os

import pytest
from labcli import NODES, SESSION, lab, salt


def _cluster_running():
    proc = lab("status", "--json", check=False, timeout=120)
    if proc.returncode != 0:
        return False
    try:
        state = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return False
    nodes = state.get("nodes", {})
    return all(nodes.get(n, {}).get("alive") for n in NODES)


# What every module of the lab tier uses, checked once (a sync costs 10-40 s under TCG).
EXTENSION = {"xencluster_xl", "xencluster_lvm", "xencluster_lio", "xencluster_iscsi", "xencluster_disk",
             "xencluster_md", "xencluster_backup", "xencluster_node"}  # fmt: skip


def _sync_extension():
    """The extension's modules and runner on the dom0s and the master, once for the session."""
    nodes = ",".join(NODES)
    synced = salt(nodes, "saltutil.sync_all", "-L", timeout=600)
    assert sorted(synced) == sorted(NODES) and all(isinstance(v, dict) for v in synced.values()), synced
    lab("salt-run", "saltutil.sync_runners", timeout=300)
    loaded = salt(nodes, "sys.list_modules", "-L")
    for node in NODES:
        missing = EXTENSION - set(loaded.get(node) or [])
        assert not missing, f"{node} did not load {sorted(missing)}: {loaded.get(node)}"


@pytest.fixture(scope="session")
def lab_cluster():
    if os.geteuid() != 0:
        pytest.fail("the lab tier needs root (QEMU image build with debootstrap/chroot)")
    was_running = _cluster_running()
    # tests/lab_cluster/lanes.py boots each lane's cluster from wiped disks just before its
    # session and hands it over (XENCLUSTER_LAB_FRESH=1): as if the session had booted it.
    handed_over = was_running and os.environ.get("XENCLUSTER_LAB_FRESH") == "1"
    owned = handed_over or not was_running
    SESSION["started_fresh"] = owned
    if not was_running:
        lab("down", "--hard", "--wipe", timeout=600)
    lab("build", timeout=3600)
    lab("up", str(len(NODES)), timeout=1800)
    lab("master", timeout=900)
    _sync_extension()
    yield NODES
    if owned and not os.environ.get("XENCLUSTER_LAB_KEEP"):
        lab("down", "--hard", "--wipe", timeout=600)


# After every other lab test, in this order: the third node's boot (it then stays up, and a third
# TCG node on a 2-core host slows every test after it), then the module that wipes and rebuilds
# the cluster and leaves it changed for good (bonds, LVM filter, running guests).
RUN_LAST = ("test_three_nodes", "test_cluster_highstate")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.module.__name__.rpartition(".")[2] if item.module else ""
        return RUN_LAST.index(name) + 1 if name in RUN_LAST else 0

    items.sort(key=rank)  # stable: everything else keeps its order
