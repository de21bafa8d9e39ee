"""The lab scales past two nodes: a third dom0 joins the running cluster.

Runs after the two-node smoke tests (file order); the session teardown stops
all nodes if the tests started the cluster.
"""

import pytest
from labcli import lab, salt

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]


def test_third_node_joins_master_and_san(lab_cluster):
    lab("up", "3", timeout=1200)
    lab("master", timeout=900)
    nodes = [*lab_cluster, "node3"]
    assert salt(",".join(nodes), "test.ping", "-L") == {node: True for node in nodes}
    # node3 is on the same private SAN segment as node1 (one L2 switch for N nodes).
    ping = salt("node3", "cmd.run_all", '["busybox", "ping", "-c", "2", "-W", "5", "192.168.100.1"]',
                "python_shell=False")
    assert ping["node3"]["retcode"] == 0, ping
    initiator = salt("node3", "cmd.run_all", '["cat", "/etc/iscsi/initiatorname.iscsi"]', "python_shell=False")
    assert initiator["node3"]["stdout"].strip() == "InitiatorName=iqn.2025-01.lab.xen:node3"
