"""The lab's service segment itself, before any product configuration: each dom0 has
two service links (eth2, eth3) on the vde hub, 802.1Q-tagged frames cross it, and
`python -m lab link` cuts and restores a link.

The VLAN test uses a throw-away VLAN interface on eth2 and removes it afterwards; it
is skipped once the product's formula owns eth2 (enslaved to a bond).
"""

import time

import pytest

from labcli import lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

TEST_VLAN = 3999
TEST_NET = "10.250.99"
TEST_IF = "xct3999"


def sh(node, line, check=True):
    proc = lab("ssh", node, line, check=False, timeout=120)
    if check:
        assert proc.returncode == 0, (node, line, proc.stdout, proc.stderr)
    return proc


def mac(node_name, nic):
    return f"52:54:00:00:{int(node_name.removeprefix('node')):02x}:{nic:02x}"


def pings(node, addr, attempts=1):
    for attempt in range(attempts):
        if sh(node, f"busybox ping -c 1 -W 2 {addr} >/dev/null 2>&1", check=False).returncode == 0:
            return True
        if attempt + 1 < attempts:
            time.sleep(2)
    return False


def test_service_links_are_eth2_and_eth3_and_the_image_leaves_them_alone(lab_cluster):
    for node in lab_cluster:
        # a bond slave reports the bond's MAC in address; its own stays in perm_hwaddr
        line = ("for i in eth2 eth3; do cat /sys/class/net/$i/bonding_slave/perm_hwaddr 2>/dev/null "
                "|| cat /sys/class/net/$i/address; done; "
                "networkctl list --no-legend eth2 eth3 | awk '{print $2, $5}'")
        out = sh(node, line).stdout.split("\n")
        assert out[:2] == [mac(node, 3), mac(node, 4)], (node, out)
        for row in filter(None, out[2:]):
            name, setup = row.split()
            # no lab .network file matches them: unmanaged, unless the product configured them
            assert setup in ("unmanaged", "configured", "configuring"), (node, row)


def test_tagged_frames_cross_the_service_hub_and_a_pulled_link_cuts_them(lab_cluster):
    first, second = lab_cluster[0], lab_cluster[1]
    for node in (first, second):
        if sh(node, "test -e /sys/class/net/eth2/master", check=False).returncode == 0:
            pytest.skip(f"{node}: eth2 belongs to a bond already (the product's network formula ran)")
    peer = f"{TEST_NET}.{second.removeprefix('node')}"
    try:
        for node in (first, second):
            sh(node, f"ip link del {TEST_IF} 2>/dev/null; ip link set eth2 up && "
                     f"ip link add link eth2 name {TEST_IF} type vlan id {TEST_VLAN} && "
                     f"ip addr add {TEST_NET}.{node.removeprefix('node')}/24 dev {TEST_IF} && "
                     f"ip link set {TEST_IF} up")
        assert pings(first, peer, attempts=5), "VLAN-tagged frames do not cross the service hub"
        lab("link", second, "3", "down")
        assert sh(second, "cat /sys/class/net/eth2/carrier", check=False).stdout.strip() == "0"  # dom0 sees it
        assert not pings(first, peer, attempts=2), "a pulled link still carries frames"
        lab("link", second, "3", "up")
        assert pings(first, peer, attempts=10), "the link did not come back"
    finally:
        lab("link", second, "3", "up", check=False)
        for node in (first, second):
            sh(node, f"ip link del {TEST_IF}", check=False)
