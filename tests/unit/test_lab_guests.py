"""The lab guests' xl configs (lab/guests.py): the probe guest, with and without a NIC."""

import pytest

from lab import domu, guests
from lab.config import Node

LEGS = ["/dev/xencluster/probe.d.node1", "/dev/xencluster/probe.d.node2"]


@pytest.fixture(autouse=True)
def kernel(monkeypatch):
    monkeypatch.setattr(guests, "kernel_abi", lambda node: "6.1.0-99-amd64")


def test_probe_without_network_is_unchanged():
    cfg = guests.probe_config("probe", LEGS, Node(1))
    assert cfg["extra"] == "console=hvc0 loglevel=4"
    assert "vif" not in cfg
    assert cfg["kernel"] == "/boot/vmlinuz-6.1.0-99-amd64" and cfg["ramdisk"] == guests.PROBE_RAMDISK
    assert cfg["disk"] == [f"phy:{LEGS[0]},xvda,w", f"phy:{LEGS[1]},xvdb,w"]


def test_probe_on_a_vlan_bridge_with_address_and_peer():
    cfg = guests.probe_config("probe-a", LEGS, Node(1), vif=("br-svc10", "00:16:3E:10:00:02"),
                              ip="10.20.0.2/24", peer="10.20.0.3")
    assert cfg["vif"] == ["mac=00:16:3e:10:00:02,bridge=br-svc10"]
    assert cfg["extra"] == "console=hvc0 loglevel=4 probe.ip=10.20.0.2/24 probe.peer=10.20.0.3"
    # the init script reads exactly these words (lab/files/domu/probe-init)
    text = domu.PROBE_INIT.read_text()
    assert "probe_arg probe.ip" in text and "probe_arg probe.peer" in text


def test_probe_with_a_nic_but_no_address_only_gets_the_vif():
    cfg = guests.probe_config("probe", LEGS, Node(2), 96, vif=("br-svc20", "00:16:3e:20:00:05"))
    assert cfg["vif"] == ["mac=00:16:3e:20:00:05,bridge=br-svc20"]
    assert cfg["extra"] == "console=hvc0 loglevel=4" and cfg["memory"] == 96


@pytest.mark.parametrize("kwargs, message", [
    ({"ip": "10.20.0.2/24"}, "need a vif"),
    ({"vif": ("br-svc10", "00:16:3e:10:00:02"), "peer": "10.20.0.3"}, "needs probe.ip"),
    ({"vif": ("br-svc10", "00:16:3e:10:00:02"), "ip": "10.20.0.2"}, "prefix length"),
    ({"vif": ("br-svc10", "00:16:3e:10:00:02"), "ip": "10.20.0.300/24"}, "10.20.0.300"),
    ({"vif": ("br-svc10", "00:16:3e:10:00:02"), "ip": "10.20.0.2/24", "peer": "node2"}, "node2"),
    ({"vif": ("br-svc10", "01:16:3e:10:00:02")}, "not a unicast MAC"),
    ({"vif": ("br-svc10", "00:16:3e:10:00")}, "not a unicast MAC"),
    ({"vif": ("br,x", "00:16:3e:10:00:02")}, "not a bridge name"),
])
def test_probe_network_refuses_what_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        guests.probe_config("probe", LEGS, Node(1), **kwargs)
