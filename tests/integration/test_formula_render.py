"""The dom0 formula (salt/xencluster) rendered by a real salt-master and minion, with the lab pillar.

A master of its own (127.0.0.1) serves ``salt/`` plus the extension trees
(``file_roots``) and a pillar top that gives the lab model to minion
``node1``; the minion syncs the extension, then ``state.show_sls`` compiles
the formula. Nothing is applied: this host is no dom0.
"""

import json
import pathlib

import pytest
from xc_helpers import ROOT
from xc_helpers import TREES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# state id -> (state module, function) of the whole formula
EXPECTED = {
    "xencluster-packages": ("pkg", "installed"),
    "xencluster-xendomains-dead": ("service", "dead"),
    "xencluster-xendomains-masked": ("service", "masked"),
    "xencluster-xen-console-log-dir": ("file", "directory"),
    "xencluster-xenconsoled-args": ("file", "replace"),
    "xencluster-xenconsoled": ("service", "running"),
    "xencluster-xl-stream-connect": ("file", "managed"),
    "xencluster-lvm-global-filter": ("file", "managed"),
    "xencluster-md-udev-assembly-masked": ("file", "managed"),
    "xencluster-md-udev-reload": ("module", "run"),
    "xencluster-mdadm-default": ("file", "keyvalue"),
    "xencluster-mdadm-conf": ("file", "managed"),
    "xencluster-initramfs": ("module", "run"),
    "xencluster-kmods": ("kmod", "present"),
    "xencluster-lio-restore-at-boot": ("service", "enabled"),
    "xencluster-iscsi-initiatorname": ("file", "managed"),
    "xencluster-iscsid-node-startup": ("file", "replace"),
    "xencluster-iscsid-enabled": ("service", "enabled"),
    "xencluster-iscsid": ("service", "running"),
    "xencluster-open-iscsi-enabled": ("service", "enabled"),
    "xencluster-udev-leg-rules": ("xencluster_disk", "rules_installed"),
    "xencluster-network": ("xencluster_net", "managed"),
    "xencluster-vg-xcvg": ("xencluster_lvm", "vg_present"),
    "xencluster-legs": ("xencluster_leg", "node_legs"),
    "xencluster-guests": ("xencluster_guest", "node_guests"),
}


@pytest.fixture(scope="module")
def formula_roots(tmp_path_factory):
    """file_roots: salt/ and the extension trees; pillar_roots: the shipped pillar/ (top and lab model)."""
    base = tmp_path_factory.mktemp("formula")
    ext = base / "ext"
    ext.mkdir()
    for tree in TREES:
        (ext / tree).symlink_to(ROOT / tree, target_is_directory=True)
    return {"file_roots": [str(ROOT / "salt"), str(ext)], "pillar_roots": [str(ROOT / "pillar")]}


@pytest.fixture(scope="module")
def formula_master(salt_factories, formula_roots):
    master = salt_factories.salt_master_daemon(
        "xc-formula",
        overrides={
            "file_roots": {"base": formula_roots["file_roots"]},
            "pillar_roots": {"base": formula_roots["pillar_roots"]},
        },
    )
    assert master.config["interface"] == "127.0.0.1"
    with master.started():
        yield master


@pytest.fixture(scope="module")
def node1(formula_master):
    minion = formula_master.salt_minion_daemon("node1")
    with minion.started():
        cli = formula_master.salt_cli(timeout=120)
        synced = cli.run("saltutil.sync_all", minion_tgt="node1")
        assert synced.returncode == 0, synced
        assert {"modules.xencluster_net", "states.xencluster_net", "states.xencluster_disk"} <= {
            *synced.data["modules"], *synced.data["states"]
        }
        yield minion


@pytest.fixture(scope="module")
def cli(formula_master):
    return formula_master.salt_cli(timeout=120)


@pytest.fixture(scope="module")
def compiled(node1, cli):
    res = cli.run("state.show_sls", "xencluster", minion_tgt="node1")
    assert res.returncode == 0, res
    assert isinstance(res.data, dict), res.data  # a list would be render errors
    return res.data


def args(state):
    """{arg: value} of a compiled state (the list of one-key dicts after module and function)."""
    out = {}
    for item in next(v for k, v in state.items() if not k.startswith("__")):
        if isinstance(item, dict):
            out.update(item)
    return out


def test_the_formula_compiles_to_the_expected_states(compiled):
    found = {}
    for sid, state in compiled.items():
        module = next(k for k in state if not k.startswith("__"))
        found[sid] = (module, next(i for i in state[module] if isinstance(i, str)))
    assert found == EXPECTED
    sls = {state["__sls__"] for state in compiled.values()}
    assert sls == {"xencluster.dom0", "xencluster.hygiene", "xencluster.storage", "xencluster.network",
                   "xencluster.guests"}


def test_the_shipped_tops_give_a_dom0_the_formula(node1, cli):
    """pillar/top.sls gives node1 the lab model; salt/top.sls maps every minion with a model."""
    res = cli.run("state.show_top", minion_tgt="node1")
    assert res.returncode == 0, res
    assert res.data == {"base": ["xencluster"]}


def test_vgs_legs_and_guests_come_from_the_model(compiled):
    vg = args(compiled["xencluster-vg-xcvg"])
    assert (vg["name"], vg["pvs"]) == ("xcvg", ["/dev/vdb", "/dev/vdc"])
    legs = args(compiled["xencluster-legs"])
    assert (legs["name"], legs["import_wait"]) == ("node1", 900)
    assert {"xencluster_lvm": "xencluster-vg-xcvg"} in legs["require"]
    guests = args(compiled["xencluster-guests"])
    assert (guests["name"], guests["check_timeout"]) == ("node1", 40)
    assert {"xencluster_leg": "xencluster-legs"} in guests["require"]
    assert {"xencluster_net": "xencluster-network"} in guests["require"]


def test_the_lab_model_reaches_the_states(compiled):
    lvm = args(compiled["xencluster-lvm-global-filter"])
    assert lvm["name"] == "/etc/lvm/lvmlocal.conf"
    assert 'global_filter = [ "a|^/dev/vdb$|", "a|^/dev/vdc$|", "r|.*|" ]' in lvm["contents"]
    initiator = args(compiled["xencluster-iscsi-initiatorname"])
    assert initiator["contents"] == "InitiatorName=iqn.2025-01.lab.xen:node1"
    assert initiator["mode"] == "0600"
    mdadm = args(compiled["xencluster-mdadm-conf"])["contents"].splitlines()
    assert "AUTO -all" in mdadm and "ARRAY <ignore> UUID=00000000:00000000:00000000:00000000" in mdadm
    assert [line for line in mdadm if line.startswith("ARRAY")] == [
        "ARRAY <ignore> UUID=00000000:00000000:00000000:00000000"
    ]
    mask = args(compiled["xencluster-md-udev-assembly-masked"])
    assert mask["name"] == "/etc/udev/rules.d/64-md-raid-assembly.rules"
    assert all(line.startswith("#") for line in mask["contents"].splitlines())
    network = args(compiled["xencluster-network"])
    assert (network["backend"], network["force"]) == ("networkd", False)


def test_commands_are_argument_lists_without_a_shell(compiled):
    for sid in ("xencluster-initramfs", "xencluster-md-udev-reload"):
        call = args(compiled[sid])["cmd.run_all"]
        flat = {k: v for item in call for k, v in item.items()}
        assert isinstance(flat["cmd"], list) and flat["python_shell"] is False
    assert args(compiled["xencluster-initramfs"])["cmd.run_all"][0]["cmd"] == ["update-initramfs", "-u", "-k", "all"]
    onchanges = args(compiled["xencluster-initramfs"])["onchanges"]
    assert {list(o.values())[0] for o in onchanges} == {
        "xencluster-lvm-global-filter", "xencluster-md-udev-assembly-masked",
        "xencluster-mdadm-default", "xencluster-mdadm-conf",
    }  # fmt: skip


def test_xendomains_is_stopped_and_masked(compiled):
    assert args(compiled["xencluster-xendomains-dead"])["name"] == "xendomains"
    assert args(compiled["xencluster-xendomains-masked"])["name"] == "xendomains"
    assert args(compiled["xencluster-xenconsoled-args"])["repl"] == (
        'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console --timestamp=guest"'
    )


def test_the_stream_migration_connector_and_socat(compiled, cli):
    connector = args(compiled["xencluster-xl-stream-connect"])
    assert (connector["name"], connector["source"], connector["mode"]) == (
        "/usr/libexec/xencluster/xl-stream-connect", "salt://xencluster/files/xl-stream-connect", "0755")
    assert "socat" in args(compiled["xencluster-packages"])["pkgs"]
    served = cli.run("cp.get_file_str", connector["source"], minion_tgt="node1")
    assert isinstance(served.data, str) and served.data.startswith("#!/bin/sh\n"), served


def test_packages_follow_the_model_xfsprogs_and_debootstrap_only_when_needed(compiled, node1, cli):
    default = args(compiled["xencluster-packages"])["pkgs"]
    assert {"rsync", "zstd", "socat"} <= set(default)  # backups, .tar.zst images, stream migrations
    assert not {"xfsprogs", "debootstrap"} & set(default)  # web1's xfs disk is not provisioned by a dom0
    guest = {"memory": "128M", "kernel": "/vmlinuz", "ramdisk": "/initrd.img", "node": "node1",
             "interfaces": [{"vlan": 10, "mac": "00:16:3e:00:09:01"}],
             "provision": {"debootstrap": {"suite": "bookworm"}, "master": "10.99.0.1"},
             "disks": [{"name": "root", "size": "1G", "nodes": ["node1", "node2"], "vg": "xcvg",
                        "filesystem": "xfs"}]}  # fmt: skip
    pillar = json.dumps({"xencluster": {"guests": {"xfs1": guest}}})
    res = cli.run("state.show_sls", "xencluster", f"pillar={pillar}", minion_tgt="node1")
    assert isinstance(res.data, dict), res
    assert args(res.data["xencluster-packages"])["pkgs"] == [*default, "xfsprogs", "debootstrap"]
    own = json.dumps({"xencluster": {"guests": {"xfs1": guest}}, "xencluster_dom0": {"packages": ["xen-utils-4.17"]}})
    res = cli.run("state.show_sls", "xencluster", f"pillar={own}", minion_tgt="node1")
    assert args(res.data["xencluster-packages"])["pkgs"] == ["xen-utils-4.17"]  # the operator's list is the list


def test_host_options_from_the_command_line(node1, cli):
    pillar = (
        '{"xencluster_dom0": {"lvm_accept": ["/dev/md0"], "network_force": true,'
        ' "md_arrays": ["ARRAY /dev/md0 metadata=1.2 UUID=0a1b2c3d:0a1b2c3d:0a1b2c3d:0a1b2c3d"]}}'
    )
    res = cli.run("state.show_sls", "xencluster", f"pillar={pillar}", minion_tgt="node1")
    assert isinstance(res.data, dict), res
    assert '"a|^/dev/md0$|", "r|.*|"' in args(res.data["xencluster-lvm-global-filter"])["contents"]
    assert "ARRAY /dev/md0 metadata=1.2 UUID=0a1b2c3d:0a1b2c3d:0a1b2c3d:0a1b2c3d" in (
        args(res.data["xencluster-mdadm-conf"])["contents"].splitlines()
    )
    assert args(res.data["xencluster-network"])["force"] is True


def test_an_invalid_model_fails_the_render_with_the_validator_line(node1, cli):
    pillar = '{"xencluster": {"nodes": {"node1": {"vgs": {"xcvg": {"pvs": ["/dev/vdb", "/dev/vdb"]}}}}}}'
    res = cli.run("state.show_sls", "xencluster", f"pillar={pillar}", minion_tgt="node1")
    assert isinstance(res.data, list), res
    text = "\n".join(res.data)
    assert "Rendering SLS 'base:xencluster.dom0' failed" in text
    assert "xencluster.nodes.node1.vgs.xcvg.pvs[1]: /dev/vdb is already a PV of VG xcvg" in text


def test_an_unknown_host_option_fails_the_render(node1, cli):
    res = cli.run("state.show_sls", "xencluster.dom0", 'pillar={"xencluster_dom0": {"lvm_acept": []}}',
                  minion_tgt="node1")  # fmt: skip
    assert isinstance(res.data, list), res
    assert "xencluster_dom0.lvm_acept: unknown key" in "\n".join(res.data)


def test_the_network_module_renders_on_the_minion(node1, cli):
    res = cli.run("xencluster_net.render", minion_tgt="node1")
    assert res.returncode == 0, res
    assert sorted(pathlib.PurePath(p).name for p in res.data) == [
        "40-xencluster-bond0.10.netdev", "40-xencluster-bond0.10.network",
        "40-xencluster-bond0.20.netdev", "40-xencluster-bond0.20.network",
        "40-xencluster-bond0.netdev", "40-xencluster-bond0.network",
        "40-xencluster-br-svc10.netdev", "40-xencluster-br-svc10.network",
        "40-xencluster-br-svc20.netdev", "40-xencluster-br-svc20.network",
        "40-xencluster-eth1.network", "40-xencluster-eth2.network", "40-xencluster-eth3.network",
    ]  # fmt: skip
    refused = cli.run("xencluster_net.render", "backend=ifupdown", minion_tgt="node1")
    assert "systemd-networkd files only" in str(refused.data)
