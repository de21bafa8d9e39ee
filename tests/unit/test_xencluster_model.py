"""xencluster_model: the cluster model in pillar, its validation and the per-node view.

Everything here is pure: the example pillars are read as YAML with Salt's own
loader (which also refuses duplicate keys) and mutated one rule at a time.
Every rejection test asserts the exact key path that starts the problem line.
"""

import copy
import json
import pathlib

import pytest
import salt.utils.yaml
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_lio as lio
from saltext.xencluster.modules import xencluster_lvm as lvm
from saltext.xencluster.modules import xencluster_model as xm

PILLAR = pathlib.Path(__file__).resolve().parents[2] / "pillar" / "xencluster"
MiB = 1024**2
GiB = 1024**3
SECRETS = ("REPLACE-ME-chap-secret-1", "REPLACE-ME-chap-secret-2", "REPLACE-ME-chap-secret-3")

INJECTIONS = [
    "",
    "x; rm -rf /",
    "x && reboot",
    "$(reboot)",
    "`id`",
    "x|cat",
    "x\n",
    "x\nxencluster.fake: injected line",
    "-f",
    "../../etc",
    "a b",
    "x'",
    'x"',
    "x>/etc/passwd",
    "x\x00",
    "x\u200b",
    "ｘ",
    "a/b",
    "a.b",
    "UPPER",
    "a" * 32,
    "\x1b[31mred",
]


def _load(name):
    text = (PILLAR / name).read_text()
    assert "{%" not in text and "{{" not in text, "example pillars are plain YAML"
    return salt.utils.yaml.safe_load(text)["xencluster"]


LAB = salt.utils.yaml.safe_load(
    (pathlib.Path(__file__).parent / "data" / "two_node_model.sls").read_text()
)["xencluster"]  # frozen: exact expectations below do not move with the shipped lab pillar
LAB_SHIPPED = _load("lab.sls")
THREE = _load("example-3node.sls")


@pytest.fixture
def configure_loader_modules():
    return {xm: {"__pillar__": {"xencluster": copy.deepcopy(LAB)}}}


@pytest.fixture
def lab():
    return copy.deepcopy(LAB)


@pytest.fixture
def three():
    return copy.deepcopy(THREE)


def problems(model):
    """The problem lines of a model that must be refused."""
    with pytest.raises(SaltInvocationError) as exc:
        xm.validate(model)
    lines = str(exc.value).split("\n")
    for line in lines:
        assert line.startswith("xencluster"), line
    return lines


def assert_problem(model, path, text=""):
    """Some problem line starts with exactly ``<path>: `` and contains ``text``."""
    lines = problems(model)
    hits = [line for line in lines if line.startswith(f"{path}: ") and text in line]
    assert hits, f"no problem at {path!r} containing {text!r} in:\n" + "\n".join(lines)
    return lines


# --- the example pillars ---------------------------------------------------------------------


@pytest.mark.parametrize("model", [LAB, LAB_SHIPPED, THREE], ids=["lab-frozen", "lab", "example-3node"])
def test_example_pillars_validate(model):
    before = copy.deepcopy(model)
    out = xm.validate(model)
    assert model == before, "validate never changes its input"
    json.dumps(out)  # plain data


def test_lab_normalised(lab):
    out = xm.validate(lab)
    assert out["cluster"] == {"name": "lab", "iqn_base": "iqn.2025-01.lab.xen", "san_port": 3260,
                              "replacement_timeout": 20, "chap": None}
    node1 = out["nodes"]["node1"]
    assert node1["initiator"] == "iqn.2025-01.lab.xen:node1"
    assert node1["minion"] == "node1"
    assert node1["san"] == [{"interface": "eth1", "address": "192.168.100.1/24", "ip": "192.168.100.1",
                             "network": "192.168.100.0/24", "portal": "192.168.100.1:3260"}]
    assert node1["vgs"] == {"xcvg": {"pvs": ["/dev/vdb", "/dev/vdc"]}}
    assert node1["vlans"] == {10: {"bridge": "br-svc10", "parent": "eth2"}}
    web1 = out["guests"]["web1"]
    assert web1["memory"] == 128 and web1["vcpus"] == 1 and web1["sched"] == {"weight": 256, "cap": 0}
    assert web1["nodes"] == ["node1", "node2"] and web1["node"] == "node1"
    root, data = web1["disks"]
    assert (root["name"], root["vdev"], root["index"], root["size"]) == ("root", "xvda", 0, 256 * MiB)
    assert (data["name"], data["vdev"], data["stripes"], data["stripe_size"]) == ("data", "xvdb", 2, 65536)
    assert root["legs"][0] == {
        "node": "node1", "vg": "xcvg", "lv": "web1.root.node1",
        "path": "/dev/xencluster/web1.root.node1", "device": "/dev/xcvg/web1.root.node1",
        "size": 256 * MiB, "stripes": 1, "stripe_size": None,
        "backstore": "web1.root.node1", "serial": "web1.root.node1",
        "target": "iqn.2025-01.lab.xen:web1.root.node1", "lun": 0,
    }  # fmt: skip
    assert [leg["node"] for leg in root["legs"]] == ["node1", "node2"]
    assert web1["interfaces"] == [{"index": 0, "vlan": 10, "bridge": None, "mac": "00:16:3e:00:01:01",
                                   "bridges": {"node1": "br-svc10", "node2": "br-svc10"}}]
    assert web1["provision"] is None
    assert web1["targets"] == sorted(leg["target"] for d in web1["disks"] for leg in d["legs"])
    assert len(web1["targets"]) == 4
    assert out["backup"] == {"targets": {}, "default": None, "retention": {"daily": 0, "weekly": 0, "monthly": 0}}


def test_three_node_defaults_and_backups(three):
    out = xm.validate(three)
    bond0, bond1 = out["nodes"]["xen1"]["bonds"]["bond0"], out["nodes"]["xen1"]["bonds"]["bond1"]
    assert bond0 == {"mode": "802.3ad", "links": ["ens1f0", "ens2f0"], "mtu": 1500, "miimon": 100,
                     "primary": None, "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"}
    assert bond1["primary"] == "ens1f1" and bond1["lacp_rate"] is None and bond1["mtu"] == 9000
    web1, db1, win1 = (out["guests"][g] for g in ("web1", "db1", "win1"))
    assert [d["nodes"] for d in web1["disks"]] == [["xen1", "xen2"]] * 2  # the guest's pair
    assert [d["vg"] for d in db1["disks"]] == ["xcvg", "xcvg"]  # the guest's vg
    assert web1["memory"] == 2048 and db1["memory"] == 8192
    assert web1["backup"] == "nas3" and [d["backup"] for d in web1["disks"]] == [True, False]  # swap
    assert win1["backup"] is None and win1["disks"][0]["backup"] is False
    assert out["guests"]["legacy1"]["backup"] == "nas3"  # the default
    assert db1["disks"][1]["size"] == 200 * GiB and db1["disks"][1]["stripe_size"] == 65536
    assert out["backup"]["retention"] == {"daily": 7, "weekly": 4, "monthly": 6}
    assert out["nodes"]["xen1"]["minion"] == "xen1.example.net"


def test_guests_and_disks_may_be_lists_and_disks_keep_their_order(lab):
    lab["guests"] = [{"name": name, **spec} for name, spec in lab["guests"].items()]
    lab["guests"][0]["disks"].reverse()
    disks = xm.validate(lab)["guests"]["web1"]["disks"]
    assert [(d["name"], d["vdev"], d["index"]) for d in disks] == [("data", "xvda", 0), ("root", "xvdb", 1)]
    lab["guests"][0]["disks"] = {d.pop("name"): d for d in lab["guests"][0]["disks"]}
    disks = xm.validate(lab)["guests"]["web1"]["disks"]
    assert [(d["name"], d["vdev"]) for d in disks] == [("data", "xvda"), ("root", "xvdb")]


def test_validate_defaults_to_the_pillar():
    assert xm.validate()["cluster"]["name"] == "lab"


def test_validate_without_the_pillar_key_names_it(monkeypatch):
    monkeypatch.setattr(xm, "__pillar__", {}, raising=False)
    with pytest.raises(SaltInvocationError, match=r"^xencluster: missing from the pillar"):
        xm.validate()
    with pytest.raises(SaltInvocationError, match=r"^xencluster: missing"):
        xm.node_view("node1")


@pytest.mark.parametrize("model", ["xencluster", [], 3])
def test_a_model_that_is_not_a_mapping(model):
    assert problems(model) == [f"xencluster: must be a mapping, not {xm._kind(model)}"]  # pylint: disable=protected-access


def test_virtual_always_loads_and_every_public_function_has_a_cli_example():
    assert xm.__virtual__() == "xencluster_model"
    for name in ("validate", "node_view", "redact"):
        assert "CLI Example:" in getattr(xm, name).__doc__


def test_the_module_is_self_contained_and_runs_no_command():
    text = pathlib.Path(xm.__file__).read_text()
    assert "__salt__" not in text
    assert "import xencluster" not in text and "from saltext" not in text
    for word in ("subprocess", "os.system", "cmd.run", "open("):
        assert word not in text


# --- one test per rule: the key path starts the line ----------------------------------------------


def test_unknown_top_level_key(lab):
    lab["guest"] = {}
    assert_problem(lab, "xencluster.guest", "unknown key (did you mean 'guests'?")


def test_missing_required_sections():
    lines = problems({"guests": {}})
    assert "xencluster.cluster: is required" in lines
    assert "xencluster.nodes: is required" in lines


@pytest.mark.parametrize(
    "where,key,path",
    [
        (lambda m: m["cluster"], "iqn", "xencluster.cluster.iqn"),
        (lambda m: m["nodes"]["node1"], "vg", "xencluster.nodes.node1.vg"),
        (lambda m: m["nodes"]["node1"]["san"][0], "mask", "xencluster.nodes.node1.san[0].mask"),
        (lambda m: m["nodes"]["node1"]["vgs"]["xcvg"], "pv", "xencluster.nodes.node1.vgs.xcvg.pv"),
        (lambda m: m["nodes"]["node1"]["vlans"][10], "bridges", "xencluster.nodes.node1.vlans.10.bridges"),
        (lambda m: m["guests"]["web1"], "memroy", "xencluster.guests.web1.memroy"),
        (lambda m: m["guests"]["web1"]["sched"], "weigth", "xencluster.guests.web1.sched.weigth"),
        (lambda m: m["guests"]["web1"]["interfaces"][0], "brigde", "xencluster.guests.web1.interfaces[0].brigde"),
        (lambda m: m["guests"]["web1"]["disks"][1], "stripe", "xencluster.guests.web1.disks.data.stripe"),
    ],
)
def test_unknown_keys_are_typos(lab, where, key, path):
    where(lab)[key] = 1
    assert_problem(lab, path, "unknown key")


def test_unknown_key_suggests_the_closest(lab):
    lab["guests"]["web1"]["disks"][1]["stripe"] = 2
    assert_problem(lab, "xencluster.guests.web1.disks.data.stripe", "did you mean 'stripes'?")


def test_yaml_on_key_read_as_a_boolean_gets_a_hint(lab):
    lab["nodes"]["node1"]["vlans"][10] = salt.utils.yaml.safe_load("{bridge: br-svc10, on: eth2}")
    lines = assert_problem(lab, "xencluster.nodes.node1.vlans.10[True]", "YAML reads unquoted on/off")
    assert "xencluster.nodes.node1.vlans.10.parent: is required" in lines


def test_both_legs_on_the_same_node(lab):
    lab["guests"]["web1"]["disks"][1]["nodes"] = ["node1", "node1"]
    lines = problems(lab)
    assert "xencluster.guests.web1.disks.data.nodes: both legs on node1" in lines


def test_unknown_node_in_a_pair(lab):
    lab["guests"]["web1"]["disks"][1]["nodes"] = ["node1", "node3"]
    assert_problem(lab, "xencluster.guests.web1.disks.data.nodes[1]", "unknown node 'node3'")


@pytest.mark.parametrize("nodes", [["node1"], ["node1", "node2", "node1"], "node1", None, []])
def test_a_pair_is_exactly_two_nodes(lab, nodes):
    lab["guests"]["db1"]["disks"][0]["nodes"] = nodes
    assert_problem(lab, "xencluster.guests.db1.disks.root.nodes", "exactly two nodes")


def test_a_disk_needs_a_pair(lab):
    del lab["guests"]["db1"]["disks"][0]["nodes"]
    assert_problem(lab, "xencluster.guests.db1.disks.root.nodes", "is required (here or as the guest's nodes)")


def test_unknown_vg(lab):
    lab["guests"]["web1"]["disks"][0]["vg"] = "nosuchvg"
    lines = problems(lab)
    assert "xencluster.guests.web1.disks.root.vg: VG nosuchvg does not exist on node1" in lines
    assert "xencluster.guests.web1.disks.root.vg: VG nosuchvg does not exist on node2" in lines


def test_vg_must_exist_on_both_nodes(lab):
    lab["nodes"]["node2"]["vgs"] = {"othervg": {"pvs": ["/dev/vdb", "/dev/vdc"]}}
    lines = problems(lab)
    assert "xencluster.guests.web1.disks.root.vg: VG xcvg does not exist on node2" in lines
    assert not [line for line in lines if "on node1" in line]


def test_duplicate_disk_names(lab):
    lab["guests"]["web1"]["disks"][1]["name"] = "root"
    assert_problem(lab, "xencluster.guests.web1.disks[1]",
                   "duplicate disk name 'root' (also at xencluster.guests.web1.disks.root)")


def test_duplicate_guest_names(lab):
    lab["guests"] = [{"name": "web1", **lab["guests"]["web1"]}, {"name": "web1", **lab["guests"]["db1"]}]
    assert_problem(lab, "xencluster.guests[1]", "duplicate guest name 'web1'")


def test_duplicate_keys_in_yaml_are_refused_before_validation():
    with pytest.raises(Exception, match="conflicting ID 'web1'"):
        salt.utils.yaml.safe_load("guests:\n  web1: {}\n  web1: {}\n")


STRICT_BAD = ["Node1", "node_1", "-node", "a.b", "x" * 32, "x;reboot"]


@pytest.mark.parametrize(
    "kind,path,bad_names",
    [
        ("node", "xencluster.nodes", STRICT_BAD),
        ("guest", "xencluster.guests", STRICT_BAD),
        ("target", "xencluster.backup.targets", STRICT_BAD),
        ("vg", "xencluster.nodes.xen1.vgs", ["-vg", "a.b", "x" * 65, "x;reboot", "vg 0"]),  # LVM allows A-Z and _
        ("bond", "xencluster.nodes.xen1.bonds", ["Bond0", "0bond", "a.b", "x" * 16, "x;reboot"]),
    ],
)
def test_names_must_be_safe_identifiers(three, kind, path, bad_names):
    for bad in bad_names:
        model = copy.deepcopy(three)
        where = {
            "node": model["nodes"], "guest": model["guests"], "vg": model["nodes"]["xen1"]["vgs"],
            "bond": model["nodes"]["xen1"]["bonds"], "target": model["backup"]["targets"],
        }[kind]  # fmt: skip
        where[bad] = where.pop(next(iter(where)))
        assert_problem(model, xm._join(path, bad), f"invalid {kind if kind not in ('vg', 'target') else ''}")  # pylint: disable=protected-access


def test_disk_and_bridge_names(lab):
    lab["guests"]["web1"]["disks"][0]["name"] = "Root"
    lab["nodes"]["node1"]["vlans"][10]["bridge"] = "br.svc10"
    lines = problems(lab)
    assert "xencluster.guests.web1.disks.Root: invalid disk name 'Root' (1-31 of a-z 0-9 '-', starting with a letter or digit)" in lines
    assert [line for line in lines if line.startswith("xencluster.nodes.node1.vlans.10.bridge: invalid bridge name")]


@pytest.mark.parametrize("name", ["snapshot1", "pvmove-x"])
def test_guest_names_reserved_by_lvm(lab, name):
    lab["guests"][name] = lab["guests"].pop("db1")
    assert_problem(lab, f"xencluster.guests.{name}", "reserved by LVM")


def test_leg_id_is_an_lv_name_of_at_most_64_characters(lab):
    long_guest, long_disk = "g" * 31, "d" * 31  # each valid alone; with ".node1" the leg id is 69
    lab["guests"][long_guest] = lab["guests"].pop("db1")
    lab["guests"][long_guest]["disks"][0]["name"] = long_disk
    assert_problem(lab, f"xencluster.guests.{long_guest}.disks.{long_disk}",
                   f"leg id {long_guest}.{long_disk}.node2 is 69 characters; LV names are at most 64")


@pytest.mark.parametrize("size", ["10X", "10GB", "1.5G", "-1G", "0", 0, " 10G", "10G\n", True, None, [], "ten"])
def test_sizes_that_do_not_parse(lab, size):
    lab["guests"]["web1"]["disks"][0]["size"] = size
    assert_problem(lab, "xencluster.guests.web1.disks.root.size")


def test_size_is_required(lab):
    del lab["guests"]["web1"]["disks"][0]["size"]
    assert "xencluster.guests.web1.disks.root.size: is required" in problems(lab)


@pytest.mark.parametrize("size,expected", [("10G", 10 * GiB), ("1TiB", 1024 * GiB), (4096 * 1024, 4 * MiB), ("512m", 512 * MiB)])
def test_sizes_are_bytes(lab, size, expected):
    lab["guests"]["web1"]["disks"][0]["size"] = size
    assert xm.validate(lab)["guests"]["web1"]["disks"][0]["size"] == expected


@pytest.mark.parametrize(
    "memory,text",
    [(256, "256 bytes is less than 32M"), ("16M", "less than 32M"), ("33554433", "whole MiB"),
     ("65T", "at most 64T"), ("lots", "invalid size")],
)
def test_memory(lab, memory, text):
    lab["guests"]["web1"]["memory"] = memory
    assert_problem(lab, "xencluster.guests.web1.memory", text)


@pytest.mark.parametrize("memory,mib", [("32M", 32), ("1G", 1024), ("1GiB", 1024), (64 * MiB, 64)])
def test_memory_is_mib(lab, memory, mib):
    lab["guests"]["web1"]["memory"] = memory
    assert xm.validate(lab)["guests"]["web1"]["memory"] == mib


@pytest.mark.parametrize("vcpus", [0, 129, "2", 1.0, True])
def test_vcpus(lab, vcpus):
    lab["guests"]["web1"]["vcpus"] = vcpus
    assert_problem(lab, "xencluster.guests.web1.vcpus", "integer from 1 to 128")


@pytest.mark.parametrize("sched,key", [({"weight": 0}, "weight"), ({"weight": 65536}, "weight"),
                                       ({"cap": -1}, "cap"), ({"cap": 201}, "cap")])
def test_sched(lab, sched, key):
    lab["guests"]["web1"]["vcpus"] = 2
    lab["guests"]["web1"]["sched"] = sched
    assert_problem(lab, f"xencluster.guests.web1.sched.{key}")


def test_sched_cap_is_per_vcpu(lab):
    lab["guests"]["web1"].update(vcpus=2, sched={"cap": 200})
    assert xm.validate(lab)["guests"]["web1"]["sched"] == {"weight": 256, "cap": 200}
    lab["guests"]["web1"]["vcpus"] = 1
    assert_problem(lab, "xencluster.guests.web1.sched.cap", "from 0 to 100, not 200")


def test_guest_type(lab):
    lab["guests"]["web1"]["type"] = "kvm"
    assert_problem(lab, "xencluster.guests.web1.type", "must be one of pvh, pv, hvm")


@pytest.mark.parametrize("gtype", ["pv", "pvh"])
def test_pv_and_pvh_need_a_kernel_or_a_bootloader(lab, gtype):
    guest = lab["guests"]["web1"]
    guest["type"] = gtype
    for key in ("kernel", "ramdisk", "extra"):
        del guest[key]
    assert_problem(lab, "xencluster.guests.web1", f"a {gtype} guest needs kernel (direct boot) or bootloader")
    guest["bootloader"] = "pygrub"
    assert xm.validate(lab)["guests"]["web1"]["bootloader"] == "pygrub"
    guest["kernel"] = "/vmlinuz"
    assert_problem(lab, "xencluster.guests.web1.bootloader", "not both")


def test_ramdisk_and_extra_only_with_a_kernel(lab):
    guest = lab["guests"]["web1"]
    del guest["kernel"]
    guest["bootloader"] = "pygrub"
    lines = problems(lab)
    assert "xencluster.guests.web1.ramdisk: only with kernel" in lines
    assert "xencluster.guests.web1.extra: only with kernel" in lines


def test_hvm_takes_no_kernel(lab):
    lab["guests"]["web1"]["type"] = "hvm"
    lines = problems(lab)
    for key in ("kernel", "ramdisk", "extra"):
        assert f"xencluster.guests.web1.{key}: hvm guests boot from their disks: no kernel, ramdisk, extra or bootloader" in lines
    for key in ("kernel", "ramdisk", "extra"):
        del lab["guests"]["web1"][key]
    assert xm.validate(lab)["guests"]["web1"]["kernel"] is None


@pytest.mark.parametrize(
    "key,value",
    [("kernel", "vmlinuz"), ("kernel", "/boot/../etc/shadow"), ("kernel", "/boot/vm linuz"),
     ("ramdisk", "/x;reboot"), ("extra", 'console=hvc0" x'), ("extra", "a\nb"), ("extra", "a\\b"),
     ("extra", ""), ("bootloader", "/usr/bin/evil")],
)
def test_boot_fields(lab, key, value):
    lab["guests"]["web1"][key] = value
    if key == "bootloader":
        del lab["guests"]["web1"]["kernel"]
    assert_problem(lab, f"xencluster.guests.web1.{key}")


@pytest.mark.parametrize(
    "mac,text",
    [("00:16:3e:00:01", "invalid MAC"), ("00-16-3e-00-01-01", "invalid MAC"), ("0016.3e00.0101", "invalid MAC"),
     ("01:16:3e:00:01:01", "not a unicast MAC"), ("ff:ff:ff:ff:ff:ff", "not a unicast MAC"),
     ("00:00:00:00:00:00", "not a unicast MAC"), (None, "invalid MAC"), (0x00163E000101, "invalid MAC")],
)
def test_mac_format_and_unicast(lab, mac, text):
    lab["guests"]["web1"]["interfaces"][0]["mac"] = mac
    assert_problem(lab, "xencluster.guests.web1.interfaces[0].mac", text)


def test_macs_are_unique_in_the_cluster_ignoring_case(lab):
    lab["guests"]["db1"]["interfaces"][0]["mac"] = "00:16:3E:00:01:01"
    # guests are checked in name order: the later name (web1) carries the problem
    assert_problem(lab, "xencluster.guests.web1.interfaces[0].mac",
                   "duplicate MAC 00:16:3e:00:01:01, also at xencluster.guests.db1.interfaces[0].mac")


def test_problems_do_not_depend_on_the_order_of_the_pillar_mappings(lab):
    lab["guests"]["db1"]["interfaces"][0]["mac"] = "00:16:3e:00:01:01"
    lab["nodes"]["node2"]["san"][0]["address"] = "192.168.101.2/24"
    reordered = dict(lab, guests=dict(reversed(list(lab["guests"].items()))),
                     nodes=dict(reversed(list(lab["nodes"].items()))))  # fmt: skip
    assert list(reordered["guests"]) != list(lab["guests"])
    assert problems(reordered) == problems(lab)


def test_macs_are_normalised_to_lower_case(lab):
    lab["guests"]["web1"]["interfaces"][0]["mac"] = "00:16:3E:0A:0B:0C"
    assert xm.validate(lab)["guests"]["web1"]["interfaces"][0]["mac"] == "00:16:3e:0a:0b:0c"


@pytest.mark.parametrize("vlan", [0, 4095, -1, "x", None, True])
def test_interface_vlan_range(lab, vlan):
    lab["guests"]["web1"]["interfaces"][0]["vlan"] = vlan
    assert_problem(lab, "xencluster.guests.web1.interfaces[0].vlan", "integer from 1 to 4094")


@pytest.mark.parametrize("vid", [0, 4095, "5000", "ten"])
def test_node_vlan_range(lab, vid):
    lab["nodes"]["node1"]["vlans"][vid] = {"bridge": "br-x", "parent": "eth2"}
    assert_problem(lab, xm._join("xencluster.nodes.node1.vlans", vid), "integer from 1 to 4094")  # pylint: disable=protected-access


def test_vlan_ids_as_strings_are_ints(lab):
    lab["nodes"]["node1"]["vlans"] = {"10": lab["nodes"]["node1"]["vlans"][10]}
    assert list(xm.validate(lab)["nodes"]["node1"]["vlans"]) == [10]
    lab["nodes"]["node1"]["vlans"][10] = {"bridge": "br-other", "parent": "eth2"}
    assert_problem(lab, "xencluster.nodes.node1.vlans.10", "VLAN 10 is defined twice")


def test_interface_vlan_must_be_bridged_on_every_node_of_the_pair(lab):
    del lab["nodes"]["node2"]["vlans"][10]
    lines = problems(lab)
    assert "xencluster.guests.web1.interfaces[0].vlan: VLAN 10 has no bridge on node2" in lines
    assert "xencluster.guests.db1.interfaces[0].vlan: VLAN 10 has no bridge on node2" in lines
    assert len(lines) == 2


def test_pinned_node_must_be_in_the_pair(three):
    three["guests"]["web1"]["node"] = "xen3"
    lines = problems(three)
    assert "xencluster.guests.web1.node: xen3 is not in the pair of disk root (xen1, xen2)" in lines


def test_pinned_node_must_be_known(lab):
    lab["guests"]["web1"]["node"] = "node7"
    assert_problem(lab, "xencluster.guests.web1.node", "unknown node 'node7'")


def test_all_disks_of_a_guest_on_the_same_pair(three):
    three["guests"]["web1"]["disks"][1]["nodes"] = ["xen2", "xen3"]
    assert_problem(three, "xencluster.guests.web1.disks.swap.nodes",
                   "xen2, xen3 differs from the guest's pair xen1, xen2")


def test_a_guest_needs_a_disk(lab):
    lab["guests"]["db1"]["disks"] = []
    assert_problem(lab, "xencluster.guests.db1.disks", "at least one disk")


def test_stripes_at_most_the_pvs_of_the_vg_on_each_node(lab):
    lab["nodes"]["node2"]["vgs"]["xcvg"]["pvs"] = ["/dev/vdb"]
    assert problems(lab) == ["xencluster.guests.web1.disks.data.stripes: 2 stripes but VG xcvg has 1 PV on node2"]


@pytest.mark.parametrize("stripes", [0, 129, "2", 1.5, True])
def test_stripes_range(lab, stripes):
    lab["guests"]["web1"]["disks"][1]["stripes"] = stripes
    assert_problem(lab, "xencluster.guests.web1.disks.data.stripes", "integer from 1 to 128")


@pytest.mark.parametrize("stripe_size,text", [("48k", "power of two"), ("2k", "power of two"), (1000, "power of two"),
                                              ("64kb", "invalid size")])
def test_stripe_size(lab, stripe_size, text):
    lab["guests"]["web1"]["disks"][1]["stripe_size"] = stripe_size
    assert_problem(lab, "xencluster.guests.web1.disks.data.stripe_size", text)


def test_stripe_size_only_with_two_stripes_or_more(lab):
    lab["guests"]["web1"]["disks"][0]["stripe_size"] = "64k"
    assert_problem(lab, "xencluster.guests.web1.disks.root.stripe_size", "only with stripes >= 2")


def test_filesystem_and_disk_backup(three):
    three["guests"]["web1"]["disks"][0]["filesystem"] = "ntfs"
    three["guests"]["web1"]["disks"][1]["backup"] = True
    three["guests"]["db1"]["disks"][0]["backup"] = "yes"
    lines = problems(three)
    assert [x for x in lines if x.startswith("xencluster.guests.web1.disks.root.filesystem: must be one of ext2")]
    assert "xencluster.guests.web1.disks.swap.backup: swap disks are never backed up" in lines
    assert "xencluster.guests.db1.disks.root.backup: must be true or false, not 'yes'" in lines


@pytest.mark.parametrize(
    "iqn",
    ["iqn.2025-01.lab", "iqn.2025-13.lab.xen", "IQN.2025-01.lab.xen", "iqn.2025-01.lab.xen:x_y", "naa.5001405abcdef012"],
)
def test_iqn_base_follows_rtslib(lab, iqn):
    lab["cluster"]["iqn_base"] = iqn
    assert_problem(lab, "xencluster.cluster.iqn_base", "invalid IQN")


def test_iqn_base_leaves_room_for_leg_targets(lab):
    lab["cluster"]["iqn_base"] = "iqn.2025-01.lab.xen:" + "a" * 150
    assert_problem(lab, "xencluster.cluster.iqn_base", "too long")


def test_initiators_are_valid_and_unique(lab):
    lab["nodes"]["node1"]["initiator"] = "iqn.2025-01.lab:node1"
    lab["nodes"]["node2"]["initiator"] = "iqn.1993-08.org.debian:01:abc"
    assert_problem(lab, "xencluster.nodes.node1.initiator", "invalid IQN 'iqn.2025-01.lab:node1'")
    lab["nodes"]["node1"]["initiator"] = "iqn.1993-08.org.debian:01:abc"
    assert_problem(lab, "xencluster.nodes.node2.initiator", "is also the initiator IQN of node1")


def test_explicit_initiator_is_kept(lab):
    lab["nodes"]["node2"]["initiator"] = "iqn.1993-08.org.debian:01:abc"
    view = xm.node_view("node1", lab)
    assert {leg["initiator"] for leg in view["owned"]} == {"iqn.1993-08.org.debian:01:abc"}


def test_san_addresses_unique_across_nodes(lab):
    lab["nodes"]["node2"]["san"][0]["address"] = "192.168.100.1/24"
    assert_problem(lab, "xencluster.nodes.node2.san[0].address", "192.168.100.1 is also the SAN address of node1")


@pytest.mark.parametrize(
    "address,text",
    [("192.168.100.1", "with its prefix length"), ("192.168.100.300/24", "invalid address"),
     ("192.168.100.0/24", "network or broadcast"), ("192.168.100.255/24", "network or broadcast"),
     ("127.0.0.2/8", "cannot be a SAN address"), ("fe80::1/64", "cannot be a SAN address"),
     ("0.0.0.0/0", "cannot be a SAN address"), (None, "invalid address")],
)
def test_san_address(lab, address, text):
    lab["nodes"]["node1"]["san"][0]["address"] = address
    assert_problem(lab, "xencluster.nodes.node1.san[0].address", text)


def test_ipv6_san_portals(lab):
    lab["nodes"]["node1"]["san"][0]["address"] = "fd00:100::1/64"
    lab["nodes"]["node2"]["san"][0]["address"] = "fd00:100::2/64"
    view = xm.node_view("node2", lab)
    assert view["imported"][0]["portals"] == ["[fd00:100::1]:3260"]


def test_a_pair_needs_a_shared_san_subnet(lab):
    lab["nodes"]["node2"]["san"][0]["address"] = "192.168.101.2/24"
    assert_problem(lab, "xencluster.guests.db1.disks.root.nodes", "node2 and node1 share no SAN subnet")


def test_san_needs_at_least_one_path(lab):
    lab["nodes"]["node1"]["san"] = []
    assert_problem(lab, "xencluster.nodes.node1.san", "list of 1 to 8")


def test_a_bond_link_is_not_reused_by_another_bond(three):
    three["nodes"]["xen1"]["bonds"]["bond1"]["links"] = ["ens1f0", "ens2f1"]
    three["nodes"]["xen1"]["bonds"]["bond1"]["primary"] = "ens2f1"
    assert_problem(three, "xencluster.nodes.xen1.bonds.bond1.links[0]", "ens1f0 is already a link of bond0")


def test_a_bond_link_is_not_the_san_interface(three):
    three["nodes"]["xen2"]["san"][0]["interface"] = "ens1f1"
    assert_problem(three, "xencluster.nodes.xen2.san[0].interface", "ens1f1 is a link of bond1")


def test_the_san_is_not_on_a_bond_carrying_vlans(three):
    three["nodes"]["xen3"]["san"][0]["interface"] = "bond0"
    assert_problem(three, "xencluster.nodes.xen3.san[0].interface",
                   "bond0 carries service VLANs (10, 20); keep the SAN apart from service traffic")


def test_the_san_is_not_a_vlan_parent_link(lab):
    lab["nodes"]["node1"]["vlans"][10]["parent"] = "eth1"
    assert_problem(lab, "xencluster.nodes.node1.san[0].interface", "eth1 carries service VLANs (10)")


def test_a_vlan_parent_is_not_a_bond_link(three):
    three["nodes"]["xen1"]["vlans"][20]["parent"] = "ens2f0"
    assert_problem(three, "xencluster.nodes.xen1.vlans.20.parent", "ens2f0 is a link of bond0; put the VLAN on the bond")


def test_bridge_names_are_unique_per_node(three):
    three["nodes"]["xen1"]["vlans"][20]["bridge"] = "br-front"
    assert_problem(three, "xencluster.nodes.xen1.vlans.20.bridge", "br-front is already the bridge of VLAN 10")
    three["nodes"]["xen1"]["vlans"][20]["bridge"] = "bond1"
    assert_problem(three, "xencluster.nodes.xen1.vlans.20.bridge", "already a link or bond")


def test_management_stays_off_the_san(lab):
    lab["nodes"]["node1"]["mgmt_interface"] = "eth1"
    assert_problem(lab, "xencluster.nodes.node1.mgmt_interface", "eth1 is a SAN interface")


@pytest.mark.parametrize(
    "change,path,text",
    [
        ({"mode": "balance-rr"}, "mode", "must be one of active-backup, 802.3ad"),
        ({"primary": "ens1f0"}, "primary", "only for mode active-backup"),
        ({"links": []}, "links", "list of 1 to 8"),
        ({"links": ["ens1f0", "ens1f0"]}, "links[1]", "listed twice"),
        ({"mtu": 100}, "mtu", "576 to 9216"),
        ({"lacp_rate": "sometimes"}, "lacp_rate", "slow, fast"),
        ({"xmit_hash_policy": "layer4"}, "xmit_hash_policy", "must be one of"),
    ],
)
def test_bond_options(three, change, path, text):
    three["nodes"]["xen1"]["bonds"]["bond0"].update(change)
    assert_problem(three, f"xencluster.nodes.xen1.bonds.bond0.{path}", text)


def test_active_backup_options(three):
    three["nodes"]["xen1"]["bonds"]["bond1"].update(primary="eth9", lacp_rate="fast")
    lines = problems(three)
    assert "xencluster.nodes.xen1.bonds.bond1.primary: 'eth9' is not one of the bond's links" in lines
    assert "xencluster.nodes.xen1.bonds.bond1.lacp_rate: only for mode 802.3ad" in lines


@pytest.mark.parametrize("pvs,path", [(["/dev/vdb", "/dev/vd b"], "pvs[1]"), (["/dev/../etc"], "pvs[0]"),
                                      (["vdb"], "pvs[0]"), ([], "pvs"), ("/dev/vdb", "pvs")])
def test_pvs(lab, pvs, path):
    lab["nodes"]["node1"]["vgs"]["xcvg"]["pvs"] = pvs
    assert_problem(lab, f"xencluster.nodes.node1.vgs.xcvg.{path}")


def test_a_pv_belongs_to_one_vg(lab):
    lab["nodes"]["node1"]["vgs"]["other"] = {"pvs": ["/dev/vdc"]}
    assert_problem(lab, "xencluster.nodes.node1.vgs.other.pvs[0]", "/dev/vdc is already a PV of VG xcvg")


def test_minion_ids(three):
    three["nodes"]["xen2"]["minion"] = "xen1.example.net"
    assert_problem(three, "xencluster.nodes.xen2.minion", "is also the minion id of xen1")
    three["nodes"]["xen2"]["minion"] = "xen2 example"
    assert_problem(three, "xencluster.nodes.xen2.minion", "invalid minion id")


def test_backup_targets_reference_known_nodes_and_vgs(three):
    three["backup"]["targets"]["nas9"] = {"node": "xen9", "vg": "backupvg"}
    three["backup"]["targets"]["nas1"] = {"node": "xen1", "vg": "backupvg"}
    lines = problems(three)
    assert "xencluster.backup.targets.nas9.node: unknown node 'xen9'" in lines
    assert "xencluster.backup.targets.nas1.vg: VG backupvg does not exist on xen1" in lines


def test_backup_default_and_guest_targets(three):
    three["backup"]["default"] = "nas7"
    three["guests"]["db1"]["backup"] = "nas8"
    lines = problems(three)
    assert "xencluster.backup.default: unknown backup target 'nas7'" in lines
    assert "xencluster.guests.db1.backup: unknown backup target 'nas8'" in lines


def test_backup_needs_a_target(three):
    three["backup"]["targets"] = {}
    assert_problem(three, "xencluster.backup.targets", "at least one backup target")


@pytest.mark.parametrize("retention,path,text", [
    ({"daily": 0}, "retention.daily", "integer from 1"),
    ({"weekly": -1}, "retention.weekly", "integer from 1"),
    ({"monthly": "6"}, "retention.monthly", "integer from 1"),
    ({}, "retention", "keep at least one of daily, weekly, monthly"),
    ({"hourly": 3}, "retention.hourly", "unknown key"),
])
def test_retention_counts_are_positive_ints(three, retention, path, text):
    three["backup"]["retention"] = retention
    assert_problem(three, f"xencluster.backup.{path}", text)


# --- CHAP: checked, never shown --------------------------------------------------------------------


@pytest.mark.parametrize(
    "chap,path,text",
    [
        ({"userid": "xc", "password": "short-secret"[:11]}, "password", "12-255"),
        ({"userid": "xc", "password": "secret with spaces"}, "password", "12-255"),
        ({"userid": "xc", "password": "x" * 256}, "password", "12-255"),
        ({"userid": "xc"}, "password", "is required"),
        ({"password": "a-good-secret-1"}, "userid", "is required"),
        ({"userid": "x c", "password": "a-good-secret-1"}, "userid", "invalid CHAP user id"),
        ({"userid": "xc", "password": "a-good-secret-1", "mutual_userid": "t"}, "mutual_password", "needs both"),
        ({"userid": "xc", "password": "a-good-secret-1", "mutual_password": "a-good-secret-2"}, "mutual_userid", "needs both"),
        ({"userid": "xc", "password": "a-good-secret-1", "mutual_userid": "t", "mutual_password": "a-good-secret-1"},
         "mutual_password", "must differ"),
        ({"userid": "xc", "password": "a-good-secret-1", "secret": "a-good-secret-3"}, "secret", "unknown key"),
    ],
)
def test_chap_rules_never_echo_the_secret(lab, chap, path, text):
    lab["cluster"]["chap"] = chap
    lines = assert_problem(lab, f"xencluster.cluster.chap.{path}", text)
    message = "\n".join(lines)
    for key, value in chap.items():
        if key != "userid" and key != "mutual_userid":
            assert value not in message


def test_node_chap_is_checked_too(three):
    three["nodes"]["xen3"]["chap"]["password"] = "tiny"
    lines = assert_problem(three, "xencluster.nodes.xen3.chap.password", "invalid CHAP secret (not shown)")
    assert "tiny" not in "\n".join(lines)


def test_secrets_never_in_validate_or_node_view(three):
    dumps = [json.dumps(xm.validate(three))]
    dumps += [json.dumps(xm.node_view(node, three)) for node in ("xen1", "xen2", "xen3")]
    for dump in dumps:
        for secret in SECRETS:
            assert secret not in dump
    assert dumps[0].count(xm.REDACTED) == 3  # cluster password + mutual, xen3's password


def test_secrets_never_in_error_messages(three):
    three["guests"]["web1"]["memory"] = 1
    three["cluster"]["chap"]["mutual_password"] = three["cluster"]["chap"]["password"]
    message = "\n".join(problems(three))
    for secret in SECRETS:
        assert secret not in message


def test_redacted_chap_in_node_view(three):
    view = xm.node_view("xen1", three)
    assert view["chap"] == {"userid": "xc-prod", "password": "********",
                            "mutual_userid": "xc-prod-target", "mutual_password": "********"}
    to_xen3 = [leg for leg in view["owned"] if leg["partner"] == "xen3"]
    assert to_xen3 and all(leg["chap"] == {"userid": "xc-prod-xen3", "password": "********",
                                           "mutual_userid": None, "mutual_password": None} for leg in to_xen3)
    assert xm.node_view("xen3", three)["chap"]["userid"] == "xc-prod-xen3"


def test_redact():
    data = {"a": [{"password": "p1", "Mutual_Password": "p2", "x": ("secret-1",)}],
            "chap_secret": {"nested": "s"}, "password": None, "passwd": "", "user": "u"}
    before = copy.deepcopy(data)
    out = xm.redact(data)
    assert out == {"a": [{"password": "********", "Mutual_Password": "********", "x": ["secret-1"]}],
                   "chap_secret": "********", "password": None, "passwd": "", "user": "u"}
    assert data == before
    assert xm.redact("x") == "x" and xm.redact(None) is None


# --- many problems at once ------------------------------------------------------------------------


def test_every_problem_is_reported_together(lab):
    lab["guests"]["web1"]["disks"][1]["nodes"] = ["node1", "node1"]
    lab["guests"]["web1"]["disks"][0]["size"] = "10 G"
    lab["guests"]["db1"]["interfaces"][0]["mac"] = "00:16:3e:00:01:01"
    lab["guests"]["db1"]["node"] = "node3"
    lab["nodes"]["node2"]["vlans"][10]["bridge"] = "Br10"
    lab["cluster"]["iqn_base"] = "iqn.2025-01.lab"
    lab["nodes"]["node1"]["typo"] = True
    lines = problems(lab)
    for path in (
        "xencluster.guests.web1.disks.data.nodes",
        "xencluster.guests.web1.disks.root.size",
        "xencluster.guests.web1.interfaces[0].mac",
        "xencluster.guests.db1.node",
        "xencluster.nodes.node2.vlans.10.bridge",
        "xencluster.cluster.iqn_base",
        "xencluster.nodes.node1.typo",
    ):
        assert [line for line in lines if line.startswith(f"{path}: ")], (path, lines)
    assert len(lines) == len(set(lines))


def test_a_broken_section_does_not_crash_or_cascade(lab):
    lab["nodes"]["node2"] = "not a mapping"
    lab["guests"]["web1"]["sched"] = [1]
    lab["guests"]["db1"]["interfaces"] = {"vlan": 10}
    lines = problems(lab)
    assert "xencluster.nodes.node2: must be a mapping, not a string" in lines
    assert "xencluster.guests.web1.sched: must be a mapping, not a list" in lines
    assert [line for line in lines if line.startswith("xencluster.guests.db1.interfaces: must be a list")]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize(
    "kind", ["node", "guest", "disk", "vg", "bridge", "bond", "vlan parent", "mgmt", "guest bridge"]
)
def test_injection_strings_in_names_are_rejected_on_one_line(lab, kind, bad):
    node1 = lab["nodes"]["node1"]
    if kind == "node":
        lab["nodes"][bad] = lab["nodes"].pop("node2")
    elif kind == "guest":
        lab["guests"][bad] = lab["guests"].pop("db1")
    elif kind == "disk":
        lab["guests"]["web1"]["disks"][0]["name"] = bad
    elif kind == "vg":
        node1["vgs"][bad] = node1["vgs"].pop("xcvg")
    elif kind == "bridge":
        node1["vlans"][10]["bridge"] = bad
    elif kind == "bond":
        node1["bonds"] = {bad: {"mode": "active-backup", "links": ["eth3"]}}
    elif kind == "vlan parent":
        node1["vlans"][10]["parent"] = bad
    elif kind == "guest bridge":
        lab["guests"]["web1"]["interfaces"][0] = {"bridge": bad, "mac": "00:16:3e:00:01:01"}
    else:
        node1["mgmt_interface"] = bad
    if kind == "vg" and bad == "UPPER":
        return  # LVM allows upper case VG names
    lines = problems(lab)
    assert lines, "refused"
    assert not [line for line in lines if line.startswith("xencluster.fake")]
    assert all("\x00" not in line and "\x1b" not in line for line in lines)


def test_the_model_is_not_mutated_by_a_failed_validation(lab):
    lab["guests"]["web1"]["disks"][1]["nodes"] = ["node1", "node1"]
    before = copy.deepcopy(lab)
    problems(lab)
    assert lab == before


# --- node_view ----------------------------------------------------------------------------------


def test_replacement_timeout_defaults_to_20_and_reaches_every_imported_leg(lab):
    assert all(leg["replacement_timeout"] == 20 for leg in xm.node_view("node2", lab)["imported"])
    lab["cluster"]["replacement_timeout"] = 45
    assert xm.validate(lab)["cluster"]["replacement_timeout"] == 45
    assert {leg["replacement_timeout"] for leg in xm.node_view("node1", lab)["imported"]} == {45}


@pytest.mark.parametrize("bad", [4, 601, "20s", None, True])
def test_a_bad_replacement_timeout_names_its_key(lab, bad):
    lab["cluster"]["replacement_timeout"] = bad
    with pytest.raises(SaltInvocationError) as exc:
        xm.validate(lab)
    assert "xencluster.cluster.replacement_timeout: must be an integer from 5 to 600, not" in str(exc.value)


def test_node_view_lab_node1(lab):
    view = xm.node_view("node1", lab)
    assert view["node"] == "node1" and view["initiator"] == "iqn.2025-01.lab.xen:node1" and view["chap"] is None
    assert [leg["lv"] for leg in view["owned"]] == ["db1.root.node1", "web1.data.node1", "web1.root.node1"]
    assert [leg["lv"] for leg in view["imported"]] == ["db1.root.node2", "web1.data.node2", "web1.root.node2"]
    owned = view["owned"][2]
    assert owned["device"] == "/dev/xcvg/web1.root.node1" and owned["path"] == "/dev/xencluster/web1.root.node1"
    assert owned["partner"] == "node2" and owned["initiator"] == "iqn.2025-01.lab.xen:node2"
    assert owned["portals"] == ["192.168.100.1:3260"] and owned["partner_addresses"] == ["192.168.100.2"]
    assert owned["target"] == "iqn.2025-01.lab.xen:web1.root.node1" and owned["lun"] == 0
    assert view["owned"][1]["stripes"] == 2 and view["owned"][1]["stripe_size"] == 65536
    imported = view["imported"][2]
    assert imported == {
        "guest": "web1", "disk": "root", "owner": "node2", "lv": "web1.root.node2",
        "path": "/dev/xencluster/web1.root.node2", "size": 256 * MiB, "serial": "web1.root.node2",
        "target": "iqn.2025-01.lab.xen:web1.root.node2", "lun": 0, "replacement_timeout": 20,
        "portals": ["192.168.100.2:3260"], "chap": None,
    }  # fmt: skip
    assert view["peers"] == {"node2": {"minion": "node2", "initiator": "iqn.2025-01.lab.xen:node2",
                                       "portals": ["192.168.100.2:3260"]}}
    assert sorted(view["guests"]) == ["db1", "web1"]
    assert view["guests"]["web1"]["home"] is True and view["guests"]["db1"]["home"] is False
    assert view["guests"]["db1"]["partner"] == "node2"
    assert view["guests"]["web1"]["interfaces"] == [{"index": 0, "vlan": 10, "mac": "00:16:3e:00:01:01", "bridge": "br-svc10"}]
    assert view["vgs"] == {"xcvg": {"pvs": ["/dev/vdb", "/dev/vdc"]}}
    assert view["network"]["mgmt_interface"] == "eth0"
    assert view["network"]["san"][0]["interface"] == "eth1"
    assert view["network"]["vlans"] == {10: {"bridge": "br-svc10", "parent": "eth2"}}


def test_node_view_lab_node2_is_the_mirror_of_node1(lab):
    one, two = xm.node_view("node1", lab), xm.node_view("node2", lab)
    assert [leg["lv"] for leg in two["owned"]] == [leg["lv"] for leg in one["imported"]]
    assert [leg["lv"] for leg in two["imported"]] == [leg["lv"] for leg in one["owned"]]
    assert {leg["initiator"] for leg in two["owned"]} == {"iqn.2025-01.lab.xen:node1"}
    assert {tuple(leg["portals"]) for leg in two["imported"]} == {("192.168.100.1:3260",)}
    assert list(two["peers"]) == ["node1"]
    assert two["guests"]["db1"]["home"] is True and two["guests"]["web1"]["partner"] == "node1"


def test_node_view_three_nodes(three):
    xen2 = xm.node_view("xen2", three)
    assert sorted(xen2["guests"]) == ["app1", "db1", "web1"]  # not win1 (xen1/xen3) nor legacy1 (xen3/xen1)
    assert {leg["partner"] for leg in xen2["owned"]} == {"xen1", "xen3"}
    assert {(leg["lv"], leg["initiator"]) for leg in xen2["owned"] if leg["guest"] == "db1"} == {
        ("db1.root.xen2", "iqn.2025-01.net.example.xen:xen3"),
        ("db1.data.xen2", "iqn.2025-01.net.example.xen:xen3"),
    }
    assert {leg["owner"] for leg in xen2["imported"]} == {"xen1", "xen3"}
    assert list(xen2["peers"]) == ["xen1", "xen3"]
    assert xen2["guests"]["web1"]["interfaces"][1]["bridge"] == "br-back"
    assert xen2["backup"]["targets"] == {}
    xen3 = xm.node_view("xen3.example.net", three)  # by minion id
    assert xen3["node"] == "xen3" and xen3["backup"]["targets"] == {"nas3": {"node": "xen3", "vg": "backupvg"}}
    assert sorted(xen3["guests"]) == ["app1", "db1", "legacy1", "win1"]
    assert xen3["guests"]["legacy1"]["home"] is True


def test_node_view_of_an_unknown_node(lab):
    with pytest.raises(SaltInvocationError, match=r"^xencluster.nodes: no node or minion id 'node9'"):
        xm.node_view("node9", lab)


def test_node_view_validates_first(lab):
    lab["guests"]["web1"]["disks"][1]["nodes"] = ["node1", "node1"]
    with pytest.raises(SaltInvocationError, match="both legs on node1"):
        xm.node_view("node1", lab)


def test_node_view_defaults_to_the_pillar():
    assert xm.node_view("node2")["node"] == "node2"


def test_node_view_is_plain_data(three):
    for node in ("xen1", "xen2", "xen3"):
        assert json.loads(json.dumps(xm.node_view(node, three)))


# --- the local copies agree with xencluster_lvm and xencluster_lio ------------------------------


SIZES = [
    1, 512, 4096, "1", "512", "64k", "64K", "64kiB", "64KiB", "512M", "512m", "10G", "1TiB", "2P", "1E",
    "99999999999999999999", 0, -1, "0", "0k", "", " ", "1.5G", "-1G", "+1G", "10GB", "10gb", "10 G",
    "10G ", "10G\n", "G", "10g1", "1e3", "0x10", "１０G", True, False, None, 1.0, [], {}, "10Gi", "10GiB",
]


@pytest.mark.parametrize("size", SIZES, ids=repr)
def test_parse_size_agrees_with_xencluster_lvm(size):
    try:
        expected = lvm.parse_size(size)
    except SaltInvocationError:
        expected = "refused"
    try:
        got = xm._parse_size(size)  # pylint: disable=protected-access
    except ValueError:
        got = "refused"
    assert got == expected


IQNS = [
    "iqn.2025-01.lab.xen", "iqn.2025-01.lab.xen:node2", "iqn.2025-01.lab.xen:web1.root.node1",
    "iqn.1993-08.org.debian:01:5d3b4e8a9f1c", "iqn.2003-01.org.linux-iscsi.node1.x8664:sn.0123456789ab",
    "iqn.2025-12.com.example:storage:disk-1.a", "iqn.2025-01.lab:node2", "iqn.2025-13.lab.xen:x",
    "iqn.2025-00.lab.xen:x", "iqn.25-01.lab.xen:x", "IQN.2025-01.lab.xen:x", "iqn.2025-01.Lab.xen:x",
    "iqn.2025-01.lab.xen:x y", "iqn.2025-01.lab.xen:x_y", "iqn.2025-01.lab.xen:x;reboot",
    "iqn.2025-01.lab.xen:x\n", "iqn.2025-01.-lab.xen:x", "iqn.2025-01.lab..xen:x",
    "iqn.2025-01.lab.xen:" + "a" * 190, "iqn.2025-01.lab.xen:" + "a" * 210, "naa.5001405abcdef012",
    "eui.0123456789abcdef", "", None, 7, ["iqn.2025-01.lab.xen"],
]


@pytest.mark.parametrize("iqn", IQNS, ids=repr)
def test_valid_iqn_agrees_with_xencluster_lio(iqn):
    assert xm._valid_iqn(iqn) == lio.valid_iqn(iqn)  # pylint: disable=protected-access


# --- interfaces on a plain dom0 bridge ------------------------------------------------------------


def test_an_interface_on_a_plain_bridge(lab):
    lab["guests"]["web1"]["interfaces"].append({"bridge": "xcguests", "mac": "00:16:3e:00:01:02"})
    web1 = xm.validate(lab)["guests"]["web1"]
    assert web1["interfaces"][1] == {"index": 1, "vlan": None, "bridge": "xcguests", "mac": "00:16:3e:00:01:02",
                                     "bridges": {"node1": "xcguests", "node2": "xcguests"}}
    for node in ("node1", "node2"):
        assert xm.node_view(node, lab)["guests"]["web1"]["interfaces"] == [
            {"index": 0, "vlan": 10, "mac": "00:16:3e:00:01:01", "bridge": "br-svc10"},
            {"index": 1, "vlan": None, "mac": "00:16:3e:00:01:02", "bridge": "xcguests"},
        ]


def test_a_plain_bridge_needs_no_vlan_on_the_nodes(lab):
    lab["guests"]["db1"]["interfaces"] = [{"bridge": "xcguests", "mac": "00:16:3e:00:02:01"}]
    del lab["guests"]["web1"]["interfaces"]
    for node in ("node1", "node2"):
        del lab["nodes"][node]["vlans"]
    assert xm.validate(lab)["guests"]["db1"]["interfaces"][0]["bridges"] == {"node1": "xcguests", "node2": "xcguests"}


@pytest.mark.parametrize(
    "iface, path, text",
    [
        ({"vlan": 10, "bridge": "xcguests", "mac": "00:16:3e:00:01:01"}, "interfaces[0]", "takes vlan or bridge, not both"),
        ({"mac": "00:16:3e:00:01:01"}, "interfaces[0]", "needs vlan (a service VLAN of the model) or bridge"),
        ({"bridge": "xcguests"}, "interfaces[0].mac", "is required"),
        ({"bridge": "br.lab", "mac": "00:16:3e:00:01:01"}, "interfaces[0].bridge", "invalid bridge name 'br.lab'"),
        ({"bridge": 7, "mac": "00:16:3e:00:01:01"}, "interfaces[0].bridge", "invalid bridge name 7"),
        ({"bridge": "br-svc10", "mac": "00:16:3e:00:01:01"}, "interfaces[0].bridge",
         "br-svc10 is the bridge of VLAN 10 on node1: write vlan: 10 instead"),
        ({"bridge": "eth1", "mac": "00:16:3e:00:01:01"}, "interfaces[0].bridge", "eth1 is a SAN interface on node1"),
        ({"bridge": "eth2", "mac": "00:16:3e:00:01:01"}, "interfaces[0].bridge", "eth2 is the parent of VLAN 10 on node2"),
        ({"brigde": "xcguests", "mac": "00:16:3e:00:01:01"}, "interfaces[0].brigde", "did you mean 'bridge'?"),
    ],
)
def test_interface_rules(lab, iface, path, text):
    lab["guests"]["web1"]["interfaces"] = [iface]
    assert_problem(lab, f"xencluster.guests.web1.{path}", text)


@pytest.mark.parametrize("bridge, text", [("bond0", "bond0 is a bond on xen1"), ("ens2f0", "ens2f0 is a link of bond0")])
def test_a_plain_bridge_is_not_a_bond_or_a_link(three, bridge, text):
    three["guests"]["web1"]["interfaces"][1] = {"bridge": bridge, "mac": "00:16:3e:10:00:02"}
    assert_problem(three, "xencluster.guests.web1.interfaces[1].bridge", text)


def test_a_plain_bridge_interface_keeps_its_mac_unique(lab):
    lab["guests"]["db1"]["interfaces"] = [{"bridge": "xcguests", "mac": "00:16:3e:00:01:01"}]
    assert_problem(lab, "xencluster.guests.web1.interfaces[0].mac", "duplicate MAC 00:16:3e:00:01:01")


# --- provision --------------------------------------------------------------------------------------


def provisioned(model, guest="web1", **provision):
    """``model`` with ``provision`` (an image by default) on ``guest``; returns the model."""
    spec = {"image": "/srv/xencluster/images/debian12-guest.tar.zst", "master": "10.99.0.1"}
    spec.update(provision)
    model["guests"][guest]["provision"] = {k: v for k, v in spec.items() if v is not None}
    return model


def test_provision_normalised_from_an_image(lab):
    provisioned(lab, address="10.99.0.20/24", gateway="10.99.0.1", dns=["10.99.0.1", "10.99.0.2"])
    assert xm.validate(lab)["guests"]["web1"]["provision"] == {
        "source": "image", "image": "/srv/xencluster/images/debian12-guest.tar.zst", "debootstrap": None,
        "address": "10.99.0.20/24", "gateway": "10.99.0.1", "dns": ["10.99.0.1", "10.99.0.2"],
        "master": "10.99.0.1", "highstate": True, "final_backup": False,
    }  # fmt: skip


def test_provision_by_debootstrap_with_defaults(lab):
    provisioned(lab, image=None, debootstrap={"suite": "bookworm"}, master="salt.example.org")
    assert xm.validate(lab)["guests"]["web1"]["provision"] == {
        "source": "debootstrap", "image": None,
        "debootstrap": {"suite": "bookworm", "mirror": "http://deb.debian.org/debian", "variant": "minbase",
                        "include": []},
        "address": None, "gateway": None, "dns": [], "master": "salt.example.org",
        "highstate": True, "final_backup": False,
    }  # fmt: skip


def test_provision_by_debootstrap_in_full(lab):
    deb = {"suite": "bookworm", "mirror": "https://mirror.example.net:8443/debian/", "variant": "buildd",
           "include": ["mdadm", "python3", "libstdc++6", "g++-12"]}
    provisioned(lab, image=None, debootstrap=deb, highstate=False)
    out = xm.validate(lab)["guests"]["web1"]["provision"]
    assert out["debootstrap"] == deb and out["highstate"] is False


def test_provision_ipv6_is_normalised(lab):
    provisioned(lab, address="2001:DB8::0020/64", gateway="fe80::1", dns=["2001:db8:0::53"], master="2001:db8::1")
    out = xm.validate(lab)["guests"]["web1"]["provision"]
    assert (out["address"], out["gateway"], out["dns"], out["master"]) == (
        "2001:db8::20/64", "fe80::1", ["2001:db8::53"], "2001:db8::1")


def test_no_provision_is_none(lab):
    assert all(g["provision"] is None for g in xm.validate(lab)["guests"].values())
    lab["guests"]["web1"]["provision"] = None  # e.g. a pillar override switching it off
    assert xm.validate(lab)["guests"]["web1"]["provision"] is None


def test_provision_in_node_view_and_untouched_by_redact(lab):
    provisioned(lab, address="10.99.0.20/24")
    provision = xm.validate(lab)["guests"]["web1"]["provision"]
    assert xm.redact(provision) == provision
    for node in ("node1", "node2"):
        assert xm.node_view(node, lab)["guests"]["web1"]["provision"] == provision
        assert xm.node_view(node, lab)["guests"]["db1"]["provision"] is None


def test_the_example_guest_app1(three):
    app1 = xm.validate(three)["guests"]["app1"]
    assert app1["provision"]["source"] == "image" and app1["provision"]["final_backup"] is True
    assert app1["provision"]["master"] == "salt.example.net" and app1["backup"] == "nas3"
    assert [(i["vlan"], i["bridge"]) for i in app1["interfaces"]] == [(20, None), (None, "br-lab")]
    assert xm.node_view("xen3", three)["guests"]["app1"]["interfaces"][1]["bridge"] == "br-lab"


@pytest.mark.parametrize(
    "provision, path, text",
    [
        ("yes", "provision", "must be a mapping, not a string"),
        ({"master": "10.99.0.1"}, "provision", "needs image (a tar of a root filesystem on the dom0) or debootstrap"),
        ({"image": "/x.tar", "debootstrap": {"suite": "bookworm"}, "master": "10.99.0.1"}, "provision",
         "takes image or debootstrap, not both"),
        ({"image": "/x.tar"}, "provision.master", "is required"),
        ({"image": "/x.tar", "mastr": "x", "master": "10.99.0.1"}, "provision.mastr", "did you mean 'master'?"),
        ({"debootstrap": {"suite": "bookworm", "varient": "buildd"}, "master": "10.99.0.1"},
         "provision.debootstrap.varient", "did you mean 'variant'?"),
        ({"debootstrap": {"mirror": "http://deb.debian.org/debian"}, "master": "10.99.0.1"},
         "provision.debootstrap.suite", "is required"),
        ({"debootstrap": "bookworm", "master": "10.99.0.1"}, "provision.debootstrap", "must be a mapping"),
    ],
)
def test_provision_shape(lab, provision, path, text):
    lab["guests"]["web1"]["provision"] = provision
    assert_problem(lab, f"xencluster.guests.web1.{path}", text)


@pytest.mark.parametrize(
    "image",
    ["/srv/x.tar", "/srv/x.tar.gz", "/srv/x.tgz", "/srv/x.tar.xz", "/srv/x.tar.zst", "/a/B_c+d-1.2/..x.tar"],
)
def test_provision_image_paths(lab, image):
    assert xm.validate(provisioned(lab, image=image))["guests"]["web1"]["provision"]["image"] == image


@pytest.mark.parametrize(
    "image",
    ["srv/x.tar", "/srv/../x.tar", "/srv/x/..", "/../x.tar", "/srv/x.tar.bz2", "/srv/x.zip", "/srv/x", "/srv/x y.tar",
     "/srv/$(id).tar", "/srv/x;reboot.tar", "/srv/x.tar\n", "/srv/x\n.tar", "/srv/'x'.tar", "/srv/ｘ.tar", ".tar",
     "/" + "a" * 4100 + ".tar", "", None, 3, ["/x.tar"]],
    ids=repr,
)
def test_provision_bad_image_paths(lab, image):
    assert_problem(provisioned(lab, image=image) if image is not None else _with(lab, "image", None),
                   "xencluster.guests.web1.provision.image", "invalid image path")


def _with(model, key, value):
    """web1 provisioned with ``key`` set to ``value`` (even None)."""
    provisioned(model)
    model["guests"]["web1"]["provision"][key] = value
    return model


@pytest.mark.parametrize(
    "mirror",
    ["http://deb.debian.org/debian", "https://mirror.example.net:8443/debian/", "http://10.0.0.5/debian",
     "http://[2001:db8::5]/debian", "http://apt-cacher:3142/deb.debian.org/debian", "http://x/a%20b/~u/d=1,2:3@4"],
)
def test_debootstrap_mirrors(lab, mirror):
    provisioned(lab, image=None, debootstrap={"suite": "bookworm", "mirror": mirror})
    assert xm.validate(lab)["guests"]["web1"]["provision"]["debootstrap"]["mirror"] == mirror


@pytest.mark.parametrize(
    "mirror",
    ["ftp://deb.debian.org/debian", "deb.debian.org/debian", "http://", "http:///debian", "http://x y/",
     "http://x/a b", "http://x/$(id)", "http://x/`id`", "http://x/;reboot", "http://x/a&b", "http://x/a|b",
     "http://x/'a'", 'http://x/"a"', "http://x/a\\b", "http://x/a?b=1", "http://x/#f", "http://x/\n",
     "http://user:secret@x/", "http://x:0/", "http://x:99999/", "http://[zz]/", "http://[10.0.0.1]/",
     "http://2001:db8::5/", "http://999.1.1.1/", "http://-x/", "http://x/%zz", "HTTP://x/",
     "http://x/" + "a" * 1100, 7, None],
    ids=repr,
)
def test_debootstrap_bad_mirrors(lab, mirror):
    provisioned(lab, image=None, debootstrap={"suite": "bookworm", "mirror": mirror})
    assert_problem(lab, "xencluster.guests.web1.provision.debootstrap.mirror", "invalid mirror URL")


@pytest.mark.parametrize(
    "debootstrap, path, text",
    [
        ({"suite": "Bookworm"}, "suite", "invalid suite 'Bookworm'"),
        ({"suite": "bookworm;reboot"}, "suite", "invalid suite"),
        ({"suite": "bookworm", "variant": "fakechroot"}, "variant", "must be one of minbase, buildd"),
        ({"suite": "bookworm", "include": "mdadm"}, "include", "must be a list of 0 to 64 items, not a string"),
        ({"suite": "bookworm", "include": [f"p{i}" for i in range(65)]}, "include", "not a list of 65"),
        ({"suite": "bookworm", "include": ["mdadm", "Mdadm"]}, "include[1]", "invalid package name 'Mdadm'"),
        ({"suite": "bookworm", "include": ["-f"]}, "include[0]", "invalid package name"),
        ({"suite": "bookworm", "include": ["a"]}, "include[0]", "invalid package name"),
        ({"suite": "bookworm", "include": ["mdadm,curl"]}, "include[0]", "invalid package name"),
        ({"suite": "bookworm", "include": ["mdadm", "mdadm"]}, "include[1]", "mdadm is listed twice"),
    ],
)
def test_debootstrap_rules(lab, debootstrap, path, text):
    provisioned(lab, image=None, debootstrap=debootstrap)
    assert_problem(lab, f"xencluster.guests.web1.provision.debootstrap.{path}", text)


@pytest.mark.parametrize(
    "provision, path, text",
    [
        ({"address": "10.99.0.20"}, "address", "invalid address '10.99.0.20'"),
        ({"address": "10.99.0.0/24"}, "address", "network or broadcast address"),
        ({"address": "127.0.0.2/8"}, "address", "cannot be a guest address"),
        ({"address": "fe80::2/64"}, "address", "cannot be a guest address"),
        ({"gateway": "10.99.0.1"}, "gateway", "only with address (a DHCP guest learns its gateway)"),
        ({"address": "10.99.0.20/24", "gateway": "10.99.0.1/24"}, "gateway", "invalid gateway '10.99.0.1/24'"),
        ({"address": "10.99.0.20/24", "gateway": "gw.example.org"}, "gateway", "invalid gateway"),
        ({"address": "10.99.0.20/24", "gateway": "2001:db8::1"}, "gateway",
         "2001:db8::1 is IPv6 but the address 10.99.0.20/24 is IPv4"),
        ({"address": "10.99.0.20/24", "gateway": "10.98.0.1"}, "gateway", "10.98.0.1 is not in 10.99.0.0/24"),
        ({"address": "10.99.0.20/24", "gateway": "10.99.0.20"}, "gateway", "the guest's own address"),
        ({"dns": "10.99.0.1"}, "dns", "must be a list of 1 to 3 items, not a string"),
        ({"dns": []}, "dns", "not a list of 0"),
        ({"dns": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]}, "dns", "not a list of 4"),
        ({"dns": ["10.0.0.1", "ns.example.org"]}, "dns[1]", "invalid DNS server 'ns.example.org'"),
        ({"dns": ["0.0.0.0"]}, "dns[0]", "invalid DNS server"),
        ({"dns": ["10.0.0.1", "10.0.0.1"]}, "dns[1]", "10.0.0.1 is listed twice"),
        ({"highstate": "yes"}, "highstate", "must be true or false, not 'yes'"),
        ({"final_backup": 1}, "final_backup", "must be true or false, not 1"),
        ({"final_backup": True}, "final_backup", "true needs a backup target for the guest"),
    ],
)
def test_provision_network_and_flags(lab, provision, path, text):
    provisioned(lab, **provision)
    assert_problem(lab, f"xencluster.guests.web1.provision.{path}", text)


def test_a_gateway_of_a_point_to_point_address_may_be_off_link(lab):
    provisioned(lab, address="10.99.0.20/32", gateway="10.99.1.1")
    assert xm.validate(lab)["guests"]["web1"]["provision"]["gateway"] == "10.99.1.1"


def test_final_backup_with_a_backup_target(three):
    provisioned(three, final_backup=True)  # web1 backs up to nas3
    assert xm.validate(three)["guests"]["web1"]["provision"]["final_backup"] is True
    three["guests"]["web1"]["backup"] = False
    assert_problem(three, "xencluster.guests.web1.provision.final_backup", "true needs a backup target")


def test_provision_network_needs_an_interface(lab):
    del lab["guests"]["web1"]["interfaces"]
    provisioned(lab, address="10.99.0.20/24", gateway="10.99.0.1", dns=["10.99.0.1"])
    lines = problems(lab)
    for key in ("address", "gateway", "dns"):
        assert f"xencluster.guests.web1.provision.{key}: needs an interface: it configures the guest's interfaces[0]" in lines
    assert ("xencluster.guests.web1.provision.master: the guest reaches its master over the network: "
            "give it an interface") in lines
    assert len(lines) == 4


@pytest.mark.parametrize("master", ["10.99.0.1", "salt", "salt.example.org", "Salt-1.example.org", "2001:db8::1"])
def test_provision_masters(lab, master):
    assert xm.validate(provisioned(lab, master=master))["guests"]["web1"]["provision"]["master"] == master


@pytest.mark.parametrize(
    "master, text",
    [
        ("127.0.0.1", "cannot be the salt master"),
        ("::1", "cannot be the salt master"),
        ("0.0.0.0", "cannot be the salt master"),
        ("224.0.0.1", "cannot be the salt master"),
        ("999.1.1.1", "invalid master"),
        ("10.99.0.1:4506", "invalid master"),
        ("10.99.0.1/24", "invalid master"),
        ("http://salt", "invalid master"),
        ("salt master", "invalid master"),
        ("-salt", "invalid master"),
        ("salt-", "invalid master"),
        ("salt_1", "invalid master"),
        ("salt..example", "invalid master"),
        ("a" * 64 + ".example.org", "invalid master"),
        ("fe80::1%eth0", "invalid master"),
        ("", "invalid master"),
        (3, "invalid master"),
        (None, "invalid master"),
    ],
)
def test_provision_bad_masters(lab, master, text):
    assert_problem(_with(lab, "master", master), "xencluster.guests.web1.provision.master", text)


def test_provisioning_needs_a_dom0_kernel_and_ramdisk(lab):
    del lab["guests"]["web1"]["ramdisk"], lab["guests"]["web1"]["extra"]
    assert_problem(provisioned(lab), "xencluster.guests.web1.ramdisk",
                   "is required to provision: the guest boots a dom0 kernel whose ramdisk assembles the md RAID1 root")


def test_provisioning_refuses_a_bootloader(lab):
    g = lab["guests"]["web1"]
    del g["kernel"], g["ramdisk"], g["extra"]
    g["bootloader"] = "pygrub"
    lines = assert_problem(provisioned(lab), "xencluster.guests.web1.bootloader",
                           "a provisioned guest boots a dom0 kernel and ramdisk, not a boot loader")
    assert len(lines) == 1


def test_provisioning_refuses_hvm(three):
    provisioned(three, guest="win1")
    assert_problem(three, "xencluster.guests.win1.type",
                   "hvm cannot be provisioned: an hvm guest boots a boot loader from its disk")


@pytest.mark.parametrize("filesystem", ["ext2", "ext3", "ext4", "xfs"])
def test_a_provisioned_root_filesystem(lab, filesystem):
    lab["guests"]["web1"]["disks"][0]["filesystem"] = filesystem
    assert xm.validate(provisioned(lab))["guests"]["web1"]["provision"]["source"] == "image"


@pytest.mark.parametrize("filesystem", ["btrfs", "swap", "none", None])
def test_a_provisioned_guest_needs_a_root_filesystem_on_its_first_disk(lab, filesystem):
    root = lab["guests"]["web1"]["disks"][0]
    if filesystem is None:
        del root["filesystem"]  # none by default
    else:
        root["filesystem"] = filesystem
    assert_problem(provisioned(lab), "xencluster.guests.web1.disks.root.filesystem",
                   f"a provisioned guest's first disk is its root: its filesystem must be one of ext2, ext3, "
                   f"ext4, xfs, not {filesystem or 'none'}")


def test_the_first_disk_is_the_root_whatever_its_name(lab):
    lab["guests"]["web1"]["disks"].reverse()  # data (xfs) first
    lab["guests"]["web1"]["disks"][1]["filesystem"] = "swap"
    assert xm.validate(provisioned(lab))["guests"]["web1"]["disks"][0]["name"] == "data"


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("kind", ["image", "suite", "mirror", "include", "address", "gateway", "dns", "master"])
def test_injection_strings_in_provision_are_rejected_on_one_line(lab, kind, bad):
    if kind in ("suite", "mirror", "include"):
        deb = {"suite": "bookworm", kind: [bad] if kind == "include" else bad}
        provisioned(lab, image=None, debootstrap=deb)
    else:
        provisioned(lab, address="10.99.0.20/24")
        lab["guests"]["web1"]["provision"][kind] = [bad] if kind == "dns" else bad
    if (kind, bad) in {("master", "a.b"), ("master", "UPPER"), ("master", "a" * 32),
                       ("include", "a.b"), ("include", "a" * 32)}:
        xm.validate(lab)  # harmless: a host name, a package name
        return
    lines = problems(lab)
    assert all(line.startswith("xencluster.guests.web1.provision.") for line in lines), lines
    assert all("\x00" not in line and "\x1b" not in line and "\n" not in line for line in lines)
