"""xencluster_net.managed: refusal on the management link, test=True, atomic writes, stale removal, reload.

The real execution module plans against a directory under ``tmp_path``;
``networkctl`` is a FakeRunAll (argument lists, python_shell=False only) and
``service.status`` a stub saying whether systemd-networkd runs.
"""

import copy
import os
import pathlib
import stat

import pytest
import salt.utils.yaml

from saltext.xencluster.modules import xencluster_model as xm
from saltext.xencluster.modules import xencluster_net as net
from saltext.xencluster.states import xencluster_net as net_state

PILLAR = pathlib.Path(__file__).resolve().parents[2] / "pillar" / "xencluster"
LAB = salt.utils.yaml.safe_load((pathlib.Path(__file__).parent / "data" / "two_node_model.sls").read_text())[
    "xencluster"
]  # frozen copy of the lab pillar: expectations do not move with the shipped one
THREE = salt.utils.yaml.safe_load((PILLAR / "example-3node.sls").read_text())["xencluster"]
RELOAD = ["networkctl", "reload"]


@pytest.fixture
def opts():
    return {"test": False}


@pytest.fixture
def pillar():
    return {"xencluster": copy.deepcopy(LAB)}


@pytest.fixture
def networkd():
    """service.status stub; set networkd.running = False to stop it."""

    class Status:
        running = True
        calls = []

        def __call__(self, name):
            self.calls.append(name)
            return self.running

    return Status()


@pytest.fixture
def configure_loader_modules(run_all, opts, pillar, networkd):
    grains = {"id": "node1", "ip4_interfaces": {"eth0": ["10.0.2.15"]}}
    return {
        xm: {"__pillar__": pillar},
        net: {"__salt__": {"xencluster_model.node_view": xm.node_view}, "__grains__": grains},
        net_state: {
            "__salt__": {"xencluster_net.plan": net.plan, "cmd.run_all": run_all, "service.status": networkd},
            "__opts__": opts,
        },
    }


@pytest.fixture
def netdir(tmp_path, monkeypatch, run_all):
    etc = tmp_path / "etc" / "systemd" / "network"
    etc.mkdir(parents=True)
    monkeypatch.setattr(net, "NETWORK_DIR", str(etc))
    monkeypatch.setattr(net, "RUN_DIR", str(tmp_path / "run"))
    run_all.outputs["networkctl"] = ""
    return etc


def listing(directory):
    return sorted(os.listdir(directory))


def test_first_run_writes_every_file_then_reloads_once(netdir, run_all):
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is True, ret
    wanted = net.render()
    assert ret["changes"] == {"written": sorted(wanted)}
    assert run_all.calls == [RELOAD]
    for path, text in wanted.items():
        assert pathlib.Path(path).read_text() == text
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert listing(netdir) == sorted(os.path.basename(p) for p in wanted)  # no temporary file left
    assert "wrote 6 and removed 0" in ret["comment"]


def test_second_run_changes_nothing_and_runs_nothing(netdir, run_all, networkd):
    net_state.managed("xencluster-network")
    run_all.calls.clear()
    networkd.calls.clear()
    ret = net_state.managed("xencluster-network")
    assert ret == {"name": "xencluster-network", "result": True, "changes": {},
                   "comment": "6 xencluster network file(s) up to date"}  # fmt: skip
    assert run_all.calls == [] and networkd.calls == []


def test_test_mode_returns_the_plan_and_writes_nothing(netdir, run_all, opts):
    opts["test"] = True
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is None
    assert ret["changes"] == {"written": sorted(net.render())}
    assert "would write 6 and remove 0" in ret["comment"] and "networkctl reload" in ret["comment"]
    assert listing(netdir) == [] and run_all.calls == []


def test_written_files_are_0644_whatever_the_umask(netdir):
    old = os.umask(0o077)
    try:
        net_state.managed("xencluster-network")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(os.stat(netdir / n).st_mode) for n in listing(netdir)} == {0o644}


def test_stale_files_are_removed_and_reloaded(netdir, run_all):
    net_state.managed("xencluster-network")
    run_all.calls.clear()
    (netdir / "40-xencluster-br-old.netdev").write_text("[NetDev]\nName=br-old\nKind=bridge\n")
    (netdir / "10-admin.network").write_text("[Match]\nName=eth7\n")
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is True
    assert ret["changes"] == {"removed": [str(netdir / "40-xencluster-br-old.netdev")]}
    assert "its device stays until networkctl delete" in ret["comment"]
    assert (netdir / "10-admin.network").exists() and not (netdir / "40-xencluster-br-old.netdev").exists()
    assert run_all.calls == [RELOAD]


def test_an_edited_file_is_put_back(netdir):
    net_state.managed("xencluster-network")
    path = netdir / "40-xencluster-eth1.network"
    path.write_text("# edited by hand\n")
    ret = net_state.managed("xencluster-network")
    assert ret["changes"] == {"written": [str(path)]}
    assert "Address=192.168.100.1/24" in path.read_text()


def test_a_changed_netdev_says_it_needs_a_delete_or_reboot(netdir):
    net_state.managed("xencluster-network")
    (netdir / "40-xencluster-eth2.10.netdev").write_text("[NetDev]\nName=eth2.10\nKind=vlan\n[VLAN]\nId=11\n")
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is True
    assert "applies it only to a new device (networkctl delete <device>" in ret["comment"]


# --- the management link ---------------------------------------------------------------------


def mgmt_on_bond(pillar):
    model = copy.deepcopy(THREE)
    model["nodes"]["xen1"]["mgmt_interface"] = "bond0"
    pillar["xencluster"] = model


@pytest.mark.parametrize("test", [False, True])
def test_a_change_touching_mgmt_is_refused_without_force(netdir, run_all, opts, pillar, test):
    mgmt_on_bond(pillar)
    opts["test"] = test
    ret = net_state.managed("xencluster-network", node="xen1")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith("Refused: this change touches the management interface bond0")
    assert "40-xencluster-bond0.network" in ret["comment"] and "force=True" in ret["comment"]
    assert listing(netdir) == [] and run_all.calls == []


def test_force_applies_a_change_touching_mgmt(netdir, run_all, pillar):
    mgmt_on_bond(pillar)
    ret = net_state.managed("xencluster-network", node="xen1", force=True)
    assert ret["result"] is True
    assert len(ret["changes"]["written"]) == 16
    assert run_all.calls == [RELOAD]
    # and once applied, nothing touches it any more: no force needed
    assert net_state.managed("xencluster-network", node="xen1")["result"] is True


def test_a_change_apart_from_mgmt_needs_no_force(netdir, pillar):
    pillar["xencluster"] = copy.deepcopy(THREE)  # management on eno1, rendered nowhere
    assert net_state.managed("xencluster-network", node="xen1.example.net")["result"] is True


def test_removing_a_file_of_the_mgmt_link_is_refused(netdir, run_all):
    net_state.managed("xencluster-network")
    run_all.calls.clear()
    (netdir / "40-xencluster-eth0.network").write_text("[Match]\nName=eth0\n")
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is False and "Refused" in ret["comment"]
    assert (netdir / "40-xencluster-eth0.network").exists() and run_all.calls == []


# --- networkd, reload and failures -----------------------------------------------------------------


def test_networkd_not_running_writes_nothing(netdir, run_all, networkd):
    networkd.running = False
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is False
    assert ret["comment"].startswith("systemd-networkd is not running") and "reload=False" in ret["comment"]
    assert networkd.calls == ["systemd-networkd"]
    assert listing(netdir) == [] and run_all.calls == []


def test_reload_false_only_writes(netdir, run_all, networkd):
    networkd.running = False
    ret = net_state.managed("xencluster-network", reload=False)
    assert ret["result"] is True and "(no reload)" in ret["comment"]
    assert len(listing(netdir)) == 6 and run_all.calls == [] and networkd.calls == []


def test_a_failed_reload_is_a_failure_with_the_files_written(netdir, run_all):
    run_all.outputs["networkctl"] = {"retcode": 1, "stderr": "Failed to reload network settings: boom"}
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is False
    assert "networkctl reload failed (rc 1): Failed to reload network settings: boom" in ret["comment"]
    assert len(ret["changes"]["written"]) == 6


def test_an_invalid_model_is_a_failure_with_the_validator_line(netdir, pillar, run_all):
    pillar["xencluster"]["nodes"]["node1"]["san"][0]["address"] = "192.168.100.0/24"
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is False
    assert "xencluster.nodes.node1.san[0].address: 192.168.100.0 is the network or broadcast address" in ret["comment"]
    assert listing(netdir) == [] and run_all.calls == []


def test_ifupdown_is_refused(netdir):
    ret = net_state.managed("xencluster-network", backend="ifupdown")
    assert ret["result"] is False and "systemd-networkd files only" in ret["comment"]


def test_a_plan_naming_a_foreign_file_is_refused(netdir, run_all, monkeypatch):
    def bad_plan(**_kw):
        plan = net.plan()
        plan["write"] = {"/etc/passwd": "x", **plan["write"]}
        return plan

    monkeypatch.setitem(net_state.__salt__, "xencluster_net.plan", bad_plan)
    ret = net_state.managed("xencluster-network")
    assert ret["result"] is False and "not xencluster's: /etc/passwd" in ret["comment"]
    assert listing(netdir) == [] and run_all.calls == []


def test_virtual_needs_the_execution_module(monkeypatch):
    assert net_state.__virtual__() == "xencluster_net"
    monkeypatch.delitem(net_state.__salt__, "xencluster_net.plan")
    assert net_state.__virtual__()[0] is False
