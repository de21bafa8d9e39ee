"""xencluster_net: systemd-networkd files rendered from the cluster model, and the plan against the disk.

The example pillars are read as plain YAML and validated by the real
``xencluster_model.node_view``; ``/etc/systemd/network`` and
``/run/systemd/network`` are directories under ``tmp_path``. No command may
run: ``__salt__`` holds nothing but the model.
"""

import copy
import os
import pathlib

import pytest
import salt.utils.yaml
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_model as xm
from saltext.xencluster.modules import xencluster_net as net

PILLAR = pathlib.Path(__file__).resolve().parents[2] / "pillar" / "xencluster"
LAB = salt.utils.yaml.safe_load((pathlib.Path(__file__).parent / "data" / "two_node_model.sls").read_text())[
    "xencluster"
]  # frozen copy of the lab pillar: expectations do not move with the shipped one
THREE = salt.utils.yaml.safe_load((PILLAR / "example-3node.sls").read_text())["xencluster"]


@pytest.fixture
def grains():
    return {"id": "node1", "ip4_interfaces": {"eth0": ["10.0.2.15"]}, "ip6_interfaces": {"eth0": ["fe80::1"]}}


@pytest.fixture
def configure_loader_modules(grains):
    return {
        xm: {"__pillar__": {"xencluster": copy.deepcopy(LAB)}},
        net: {"__salt__": {"xencluster_model.node_view": xm.node_view}, "__grains__": grains},
    }


@pytest.fixture
def netdir(tmp_path, monkeypatch):
    etc, run = tmp_path / "etc" / "systemd" / "network", tmp_path / "run" / "systemd" / "network"
    etc.mkdir(parents=True)
    run.mkdir(parents=True)
    monkeypatch.setattr(net, "NETWORK_DIR", str(etc))
    monkeypatch.setattr(net, "RUN_DIR", str(run))
    return etc


def names(files):
    return sorted(os.path.basename(p) for p in files)


def ini(text):
    """{section: [(key, value)]} of a rendered file (order kept)."""
    out, section = {}, None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, [])
        else:
            key, value = line.split("=", 1)
            out[section].append((key, value))
    return out


def values(text, section, key):
    return [v for k, v in ini(text).get(section, []) if k == key]


def three(**node_changes):
    model = copy.deepcopy(THREE)
    model["nodes"]["xen1"].update(node_changes)
    return model


def render_dir(files, name):
    return files[os.path.join(net.NETWORK_DIR, name)]


# --- render: the lab pillar ----------------------------------------------------------------


def test_lab_node1_files(netdir):
    files = net.render()  # the minion id (node1) and pillar["xencluster"]
    assert names(files) == [
        "40-xencluster-br-svc10.netdev", "40-xencluster-br-svc10.network",
        "40-xencluster-eth1.network",
        "40-xencluster-eth2.10.netdev", "40-xencluster-eth2.10.network",
        "40-xencluster-eth2.network",
    ]  # fmt: skip
    assert all(os.path.dirname(p) == str(netdir) for p in files)
    san = render_dir(files, "40-xencluster-eth1.network")
    assert ini(san)["Match"] == [("Name", "eth1")]
    assert values(san, "Network", "Address") == ["192.168.100.1/24"]
    parent = render_dir(files, "40-xencluster-eth2.network")
    assert values(parent, "Network", "VLAN") == ["eth2.10"]
    vlan_dev = render_dir(files, "40-xencluster-eth2.10.netdev")
    assert ini(vlan_dev) == {"NetDev": [("Name", "eth2.10"), ("Kind", "vlan")], "VLAN": [("Id", "10")]}
    assert values(render_dir(files, "40-xencluster-eth2.10.network"), "Network", "Bridge") == ["br-svc10"]
    bridge = render_dir(files, "40-xencluster-br-svc10.netdev")
    assert ini(bridge)["NetDev"] == [("Name", "br-svc10"), ("Kind", "bridge")]
    assert values(render_dir(files, "40-xencluster-br-svc10.network"), "Network", "ConfigureWithoutCarrier") == ["yes"]


def test_lab_node2_by_name_and_the_mgmt_link_is_never_rendered(netdir):
    files = net.render("node2")
    assert values(render_dir(files, "40-xencluster-eth1.network"), "Network", "Address") == ["192.168.100.2/24"]
    assert not [p for p in files if "eth0" in p]


def test_every_file_is_ours_plain_and_static(netdir):
    for model, node in ((LAB, "node1"), (THREE, "xen1"), (THREE, "xen3.example.net")):
        for path, text in net.render(node, model=copy.deepcopy(model)).items():
            name = os.path.basename(path)
            assert name.startswith("40-xencluster-") and name.endswith((".netdev", ".network"))
            assert text.startswith("# Managed by Salt (xencluster_net")
            assert text.endswith("\n")
            assert "Gateway" not in text and "DHCP" not in text
            if name.endswith(".network"):
                assert values(text, "Network", "LinkLocalAddressing") == ["no"], path
                assert values(text, "Network", "IPv6AcceptRA") == ["no"], path
                assert values(text, "Match", "Name") == [name[len("40-xencluster-") : -len(".network")]]


def test_render_is_deterministic():
    assert net.render("xen2", model=copy.deepcopy(THREE)) == net.render("xen2", model=copy.deepcopy(THREE))


# --- render: bonds, VLANs, bridges, SAN (the three-node example) -------------------------------


def test_lacp_bond_with_service_vlans():
    files = net.render("xen1", model=copy.deepcopy(THREE))
    bond = ini(render_dir(files, "40-xencluster-bond0.netdev"))
    assert bond["NetDev"] == [("Name", "bond0"), ("Kind", "bond")]
    assert bond["Bond"] == [
        ("Mode", "802.3ad"), ("MIIMonitorSec", "100ms"),
        ("LACPTransmitRate", "fast"), ("TransmitHashPolicy", "layer3+4"),
    ]  # fmt: skip
    bond_net = render_dir(files, "40-xencluster-bond0.network")
    assert values(bond_net, "Network", "VLAN") == ["bond0.10", "bond0.20"]
    assert values(bond_net, "Link", "MTUBytes") == ["1500"]
    assert values(bond_net, "Network", "Address") == []  # no service traffic address in dom0
    for link in ("ens1f0", "ens2f0"):
        member = render_dir(files, f"40-xencluster-{link}.network")
        assert values(member, "Network", "Bond") == ["bond0"]
        assert values(member, "Network", "PrimarySlave") == []
    for vid, bridge in ((10, "br-front"), (20, "br-back")):
        assert values(render_dir(files, f"40-xencluster-bond0.{vid}.netdev"), "VLAN", "Id") == [str(vid)]
        assert values(render_dir(files, f"40-xencluster-bond0.{vid}.network"), "Network", "Bridge") == [bridge]
        assert values(render_dir(files, f"40-xencluster-{bridge}.netdev"), "NetDev", "Kind") == ["bridge"]


def test_active_backup_san_bond():
    files = net.render("xen1", model=copy.deepcopy(THREE))
    bond = ini(render_dir(files, "40-xencluster-bond1.netdev"))
    assert bond["Bond"] == [("Mode", "active-backup"), ("MIIMonitorSec", "100ms"), ("PrimaryReselectPolicy", "always")]
    san = render_dir(files, "40-xencluster-bond1.network")
    assert values(san, "Network", "Address") == ["10.20.0.1/24"]
    assert values(san, "Network", "VLAN") == []  # the SAN carries no service VLAN
    assert values(san, "Link", "MTUBytes") == ["9000"]
    assert values(render_dir(files, "40-xencluster-ens1f1.network"), "Network", "PrimarySlave") == ["yes"]
    assert values(render_dir(files, "40-xencluster-ens2f1.network"), "Network", "PrimarySlave") == []
    assert values(render_dir(files, "40-xencluster-ens2f1.network"), "Link", "MTUBytes") == ["9000"]


def test_active_backup_without_primary_and_custom_miimon():
    model = copy.deepcopy(THREE)
    model["nodes"]["xen1"]["bonds"]["bond1"] = {"mode": "active-backup", "links": ["ens1f1", "ens2f1"], "miimon": 250}
    files = net.render("xen1", model=model)
    assert ini(render_dir(files, "40-xencluster-bond1.netdev"))["Bond"] == [
        ("Mode", "active-backup"), ("MIIMonitorSec", "250ms"),
    ]  # fmt: skip
    assert values(render_dir(files, "40-xencluster-bond1.network"), "Link", "MTUBytes") == []


def test_every_node_of_the_example_renders_the_same_shape():
    shapes = set()
    for node in ("xen1", "xen2", "xen3"):
        shapes.add(tuple(names(net.render(node, model=copy.deepcopy(THREE)))))
    assert len(shapes) == 1 and len(next(iter(shapes))) == 16


def test_ipv6_san_keeps_ipv6_link_local_addressing():
    model = copy.deepcopy(LAB)
    model["nodes"]["node1"]["san"] = [{"interface": "eth1", "address": "fd00:100::1/64"}]
    model["nodes"]["node2"]["san"] = [{"interface": "eth1", "address": "fd00:100::2/64"}]
    san = render_dir(net.render("node1", model=model), "40-xencluster-eth1.network")
    assert values(san, "Network", "Address") == ["fd00:100::1/64"]
    assert values(san, "Network", "LinkLocalAddressing") == ["ipv6"]


def test_two_san_paths():
    model = copy.deepcopy(LAB)
    model["nodes"]["node1"]["san"].append({"interface": "eth3", "address": "192.168.101.1/24"})
    files = net.render("node1", model=model)
    assert values(render_dir(files, "40-xencluster-eth3.network"), "Network", "Address") == ["192.168.101.1/24"]


def test_a_vlan_device_name_longer_than_15_characters():
    model = copy.deepcopy(LAB)
    model["nodes"]["node1"]["vlans"] = {10: {"bridge": "br-long", "parent": "enp129s0f1np1"}}
    files = net.render("node1", model=model)  # enp129s0f1np1.10 would be 16 characters
    assert values(render_dir(files, "40-xencluster-enp129s0f1np1.network"), "Network", "VLAN") == ["vlan10"]
    assert values(render_dir(files, "40-xencluster-vlan10.netdev"), "VLAN", "Id") == ["10"]
    assert values(render_dir(files, "40-xencluster-vlan10.network"), "Network", "Bridge") == ["br-long"]


def test_a_vlan_device_name_that_collides_is_refused():
    model = copy.deepcopy(LAB)
    model["nodes"]["node1"]["vlans"] = {10: {"bridge": "br-long", "parent": "enp129s0f1np1"}}
    model["nodes"]["node1"]["bonds"] = {"vlan10": {"mode": "active-backup", "links": ["eth5", "eth6"]}}
    with pytest.raises(SaltInvocationError, match="VLAN 10 would be named vlan10, which is already a bond"):
        net.render("node1", model=model)


# --- render: refusals --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["ifupdown", "ovs", "", None, "NetworkManager"])
def test_other_backends_are_refused(backend):
    with pytest.raises(SaltInvocationError, match=r"systemd-networkd files only.*ifupdown.*not supported"):
        net.render(backend=backend)
    with pytest.raises(SaltInvocationError, match="not supported"):
        net.plan(backend=backend)


def test_systemd_networkd_is_an_alias():
    assert net.render(backend="systemd-networkd") == net.render()


def test_an_invalid_model_shows_the_validator_lines():
    model = copy.deepcopy(LAB)
    model["nodes"]["node1"]["vlans"][10]["parent"] = "eth1"  # the SAN link
    with pytest.raises(SaltInvocationError) as exc:
        net.render("node1", model=model)
    assert "xencluster.nodes.node1.san[0].interface: eth1 carries service VLANs (10)" in str(exc.value)


def test_an_unknown_node_is_refused():
    with pytest.raises(SaltInvocationError, match="no node or minion id 'node9'"):
        net.render("node9")


def test_render_runs_no_command_and_reads_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(net, "NETWORK_DIR", str(tmp_path / "absent"))
    assert net.__salt__.keys() == {"xencluster_model.node_view"}
    assert net.render()  # the directory does not even exist
    assert not (tmp_path / "absent").exists()


# --- plan ------------------------------------------------------------------------------------


def write_all(files):
    for path, text in files.items():
        pathlib.Path(path).write_text(text)


def test_plan_on_an_empty_directory_writes_everything(netdir):
    plan = net.plan()
    assert plan["write"] == net.render()
    assert plan["remove"] == [] and plan["unchanged"] == []
    assert plan["touches_mgmt"] is False and plan["touching"] == []
    assert plan["mgmt"] == {"interface": "eth0", "names": ["eth0"], "addresses": ["10.0.2.15"]}
    assert plan["dir"] == str(netdir) and plan["prefix"] == "40-xencluster-"
    assert plan["shadowed"] == {} and plan["netdev_changed"] == []


def test_plan_is_idempotent_once_written(netdir):
    write_all(net.plan()["write"])
    plan = net.plan()
    assert plan["write"] == {} and plan["remove"] == []
    assert plan["unchanged"] == sorted(net.render())
    assert plan["touches_mgmt"] is False


def test_plan_rewrites_an_edited_file(netdir):
    write_all(net.render())
    path = netdir / "40-xencluster-eth1.network"
    path.write_text(path.read_text().replace("192.168.100.1/24", "192.168.100.9/24"))
    plan = net.plan()
    assert list(plan["write"]) == [str(path)]
    assert "192.168.100.1/24" in plan["write"][str(path)]


def test_plan_removes_only_stale_xencluster_files(netdir):
    write_all(net.render())
    stale = ["40-xencluster-br-old.netdev", "40-xencluster-br-old.network"]
    keep = ["10-mgmt.network", "40-xencluster-notes.txt", "41-xencluster-x.network", "40-xencluster-.network"]
    for name in stale + keep:
        (netdir / name).write_text("[Match]\nName=br-old\n")
    (netdir / "40-xencluster-dir.network").mkdir()
    (netdir / "40-xencluster-link.network").symlink_to(netdir / "10-mgmt.network")
    plan = net.plan()
    assert plan["remove"] == [str(netdir / n) for n in stale]
    assert plan["write"] == {}
    assert plan["touches_mgmt"] is False


def test_a_changed_netdev_is_reported(netdir):
    write_all(net.render())
    (netdir / "40-xencluster-eth2.10.netdev").write_text("[NetDev]\nName=eth2.10\nKind=vlan\n\n[VLAN]\nId=11\n")
    plan = net.plan()
    assert plan["netdev_changed"] == [str(netdir / "40-xencluster-eth2.10.netdev")]


def test_plan_reads_no_command_and_writes_nothing(netdir):
    before = sorted(os.listdir(netdir))
    net.plan()
    assert sorted(os.listdir(netdir)) == before


# --- plan: the management link --------------------------------------------------------------


def test_mgmt_on_a_bond_is_protected(netdir, grains):
    grains["ip4_interfaces"] = {"bond0": ["10.10.0.1"]}
    plan = net.plan("xen1", model=three(mgmt_interface="bond0"))
    assert plan["touches_mgmt"] is True
    assert plan["mgmt"]["names"] == ["bond0", "ens1f0", "ens2f0"]
    assert plan["mgmt"]["addresses"] == ["10.10.0.1"]
    touching = names(plan["touching"])
    assert {"40-xencluster-bond0.netdev", "40-xencluster-bond0.network", "40-xencluster-ens1f0.network",
            "40-xencluster-ens2f0.network"} <= set(touching)  # fmt: skip
    # bond1 (the SAN), the VLAN devices and the bridges do not name bond0 or its links
    for name in ("40-xencluster-bond1.network", "40-xencluster-bond0.10.network", "40-xencluster-br-back.netdev"):
        assert name not in touching


def test_mgmt_on_a_vlan_of_a_bond_covers_the_bond_and_its_links(netdir):
    plan = net.plan("xen1", model=three(mgmt_interface="bond0.100"))
    assert plan["mgmt"]["names"] == ["bond0", "bond0.100", "ens1f0", "ens2f0"]
    assert plan["touches_mgmt"] is True


def test_mgmt_on_a_service_bridge_covers_its_vlan_device_and_parent(netdir):
    plan = net.plan("xen1", model=three(mgmt_interface="br-front"))
    assert plan["mgmt"]["names"] == ["bond0", "bond0.10", "br-front", "ens1f0", "ens2f0"]


def test_mgmt_apart_is_untouched_and_unchanged_files_never_count(netdir):
    model = three()
    plan = net.plan("xen1", model=model)
    assert plan["touches_mgmt"] is False  # eno1 is rendered nowhere
    write_all(plan["write"])
    plan = net.plan("xen1", model=three(mgmt_interface="bond0"))
    assert plan["write"] == {} and plan["touches_mgmt"] is False


def test_a_file_with_the_mgmt_address_touches_it(netdir, grains):
    grains["ip4_interfaces"] = {"eth0": ["192.168.100.1"]}  # eth0 holds the SAN address today
    plan = net.plan()
    assert plan["touching"] == [str(netdir / "40-xencluster-eth1.network")]
    assert plan["touches_mgmt"] is True


def test_removing_a_stale_file_of_the_mgmt_link_touches_it(netdir):
    write_all(net.render())
    (netdir / "40-xencluster-eth0.network").write_text("[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\n")
    plan = net.plan()
    assert plan["remove"] == [str(netdir / "40-xencluster-eth0.network")]
    assert plan["touching"] == plan["remove"] and plan["touches_mgmt"] is True


def test_an_old_file_naming_the_mgmt_link_touches_it_when_rewritten(netdir):
    write_all(net.render())
    (netdir / "40-xencluster-eth2.network").write_text("[Match]\nName=eth2\n\n[Network]\nVLAN=eth0.5\nVLAN=eth0\n")
    assert net.plan()["touching"] == [str(netdir / "40-xencluster-eth2.network")]


def test_without_mgmt_interface_every_change_counts(netdir):
    model = copy.deepcopy(LAB)
    del model["nodes"]["node1"]["mgmt_interface"]
    plan = net.plan(model=model)
    assert plan["mgmt"] == {"interface": None, "names": [], "addresses": []}
    assert plan["touches_mgmt"] is True and plan["touching"] == sorted(plan["write"])
    write_all(plan["write"])
    assert net.plan(model=model)["touches_mgmt"] is False  # nothing to change, nothing touched


def test_link_local_mgmt_addresses_are_ignored(netdir, grains):
    grains["ip6_interfaces"] = {"eth0": ["fe80::5054:ff:fe00:101%eth0", "fd00::15"]}
    assert net.plan()["mgmt"]["addresses"] == ["10.0.2.15", "fd00::15"]


# --- plan: shadowing ---------------------------------------------------------------------------


def test_an_earlier_file_matching_the_same_name_shadows_ours(netdir):
    (netdir / "10-san.network").write_text("[Match]\nName=eth1 eth9\n\n[Network]\nAddress=192.168.100.1/24\n")
    (netdir / "20-any.network").write_text("[Match]\nName=br-*\n")
    (netdir / "90-late.network").write_text("[Match]\nName=eth2\n")
    (netdir / "05-by-mac.network").write_text("[Match]\nMACAddress=52:54:00:00:01:02\n")
    run = pathlib.Path(net.RUN_DIR)
    (run / "30-generated.network").write_text("[Match]\nName=eth2.10\n")
    shadowed = net.plan()["shadowed"]
    assert shadowed == {
        str(netdir / "40-xencluster-eth1.network"): str(netdir / "10-san.network"),
        str(netdir / "40-xencluster-br-svc10.network"): str(netdir / "20-any.network"),
        str(netdir / "40-xencluster-eth2.10.network"): str(run / "30-generated.network"),
    }
