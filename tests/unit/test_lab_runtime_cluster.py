"""Unit tests of `python -m lab up/down/restart/status` orchestration and the CLI, with
QEMU, ssh and the switch replaced by fakes (no root, no processes started)."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from lab import __main__ as cli
from lab import cluster, config, master, nodes, preflight, qemu, state, switch
from lab.config import Node
from lab.errors import LabError, PreflightError

from test_lab_runtime import _fake_image, lab_dirs  # noqa: F401  (fixture)


@pytest.fixture
def fake_lab(lab_dirs, monkeypatch):  # noqa: F811
    """A lab where the image exists, we are root, tools exist, and nothing really starts."""
    img = _fake_image(lab_dirs)
    running: dict[str, int] = {}
    calls = {"san": 0, "service": 0, "started": [], "waited": [], "stopped": [], "fail_start": set(),
             "switch_pids": {}, "switches_stopped": []}

    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: "/usr/bin/" + tool)
    monkeypatch.setattr(cluster, "image_dir", lambda build=False, log=print: img)
    monkeypatch.setattr(nodes, "pid", lambda node, log=None, cleanup=True: running.get(node.name))

    def fake_switch(sw, log):
        calls[sw.key] += 1
        calls["switch_pids"][sw.key] = 4242 if sw is switch.SAN else 4343
        return calls["switch_pids"][sw.key]

    def fake_prepare(node, image):
        node.overlay.write_bytes(b"qcow2")
        node.image_stamp.write_text(json.dumps({**qemu.image_identity(image), "dir": str(image)}))
        return ["overlay"]

    def fake_start(node, image):
        if node.name in calls["fail_start"]:
            raise LabError(f"{node.name}: starting QEMU: qemu-system-x86_64 failed (exit 1): boom")
        running[node.name] = 1000 + node.number
        calls["started"].append(node.name)
        return running[node.name]

    def fake_wait(node, started_at, timeout=None):
        calls["waited"].append(node.name)
        return {"ssh_after_s": 40.0, "boot_to_ready_s": 55.0}

    def fake_stop(node, hard, log):
        calls["stopped"].append(node.name)
        running.pop(node.name, None)
        return {"stopped": True, "how": "monitor quit" if hard else "graceful poweroff", "seconds": 1.0}

    monkeypatch.setattr(switch, "ensure", fake_switch)
    monkeypatch.setattr(switch, "stop", lambda sw, log: calls["switches_stopped"].append(sw.key))
    monkeypatch.setattr(switch, "running", lambda sw, log=None, cleanup=True: calls["switch_pids"].get(sw.key))
    monkeypatch.setattr(qemu, "has_service_links", lambda pid: True)
    monkeypatch.setattr(master, "stop", lambda log: False)
    monkeypatch.setattr(master, "running", lambda log=None, cleanup=True: None)
    monkeypatch.setattr(qemu, "prepare_disks", fake_prepare)
    monkeypatch.setattr(qemu, "start", fake_start)
    monkeypatch.setattr(nodes, "wait_ready", fake_wait)
    monkeypatch.setattr(nodes, "stop", fake_stop)
    monkeypatch.setattr(config, "SSH_PORT_BASE", _free_port_base())
    return {"img": img, "running": running, "calls": calls, "dir": lab_dirs}


def _free_port_base() -> int:
    """A base so that base+1..base+8 are free right now (kept clear of real lab ports)."""
    for base in range(40100, 60000, 10):
        if all(preflight.port_free(base + n) for n in range(1, 9)):
            return base
    pytest.skip("no free loopback port range")


def test_up_starts_all_nodes_and_records_them(fake_lab):
    said = []
    data = cluster.up(2, log=said.append)
    assert fake_lab["calls"]["started"] == ["node1", "node2"]
    assert fake_lab["calls"]["san"] == 1 and fake_lab["calls"]["service"] == 1
    recorded = json.loads((fake_lab["dir"] / "run" / "cluster.json").read_text())
    assert recorded["san_switch"]["pid"] == 4242 and recorded["san_switch"]["hub"] is False
    assert recorded["service_switch"] == {"pid": 4343, "sock": str(fake_lab["dir"] / "run" / "svc.vde"), "hub": True}
    assert recorded["nodes"]["node2"]["service_macs"] == ["52:54:00:00:02:03", "52:54:00:00:02:04"]
    assert recorded["nodes"]["node2"]["links_down"] == []
    assert recorded["image_key"] == "key1"
    assert recorded["nodes"]["node1"]["pid"] == 1001 and recorded["nodes"]["node2"]["boot_to_ready_s"] == 55.0
    assert recorded["ports"]["ssh"]["node2"] == config.SSH_PORT_BASE + 2
    assert data["nodes"]["node1"]["ssh_after_s"] == 40.0
    assert any("node1: ready 55.0 s after start" in line for line in said)


def test_second_up_reuses_running_nodes_and_starts_only_missing_ones(fake_lab):
    fake_lab["running"]["node1"] = 777
    said = []
    cluster.up(3, log=said.append)
    assert fake_lab["calls"]["started"] == ["node2", "node3"]
    assert "node1: already running (pid 777), reused" in said
    assert sorted(fake_lab["calls"]["waited"]) == ["node1", "node2", "node3"]


def test_up_without_an_image_says_build_first(lab_dirs, monkeypatch):  # noqa: F811
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)

    class NoImage:
        @staticmethod
        def current():
            return None

    monkeypatch.setattr(nodes, "image_module", lambda: NoImage)
    with pytest.raises(LabError, match=r"run `python -m lab build` first"):
        cluster.up(2)


def test_occupied_port_fails_before_anything_starts(fake_lab):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", Node(2).ssh_port))
        holder.listen()
        with pytest.raises(PreflightError, match=rf"127.0.0.1:{Node(2).ssh_port} \(ssh to node2\)"):
            cluster.up(2)
    assert fake_lab["calls"]["san"] == 0 and fake_lab["calls"]["started"] == []
    assert not Node(1).overlay.exists()


def test_port_held_by_our_own_running_node_is_fine(fake_lab):
    fake_lab["running"]["node1"] = 777
    with socket.socket() as held_by_node1:
        held_by_node1.bind(("127.0.0.1", Node(1).ssh_port))
        held_by_node1.listen()
        cluster.up(2, log=lambda line: None)
    assert fake_lab["calls"]["started"] == ["node2"]


def test_too_little_disk_fails_before_anything_starts(fake_lab, monkeypatch):
    usage = type("Usage", (), {"free": 2**30})
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(PreflightError, match=r"1.0 GiB free, 6.0 GiB needed for 2 new node"):
        cluster.up(2)
    assert fake_lab["calls"]["san"] == 0 and fake_lab["calls"]["started"] == []


def test_failure_mid_up_leaves_started_nodes_running_and_recorded(fake_lab):
    fake_lab["calls"]["fail_start"].add("node2")
    with pytest.raises(LabError, match="node2: starting QEMU"):
        cluster.up(2, log=lambda line: None)
    assert fake_lab["running"] == {"node1": 1001}
    assert fake_lab["calls"]["stopped"] == []
    assert state.load()["nodes"]["node1"]["pid"] == 1001
    # ... and the next `up` resumes: node1 reused, only node2 started
    fake_lab["calls"]["fail_start"].clear()
    cluster.up(2, log=lambda line: None)
    assert fake_lab["calls"]["started"] == ["node1", "node2"]
    assert fake_lab["running"] == {"node1": 1001, "node2": 1002}


def test_a_node_that_never_gets_ready_fails_up_but_stays_recorded(fake_lab, monkeypatch):
    def slow(node, started_at, timeout=None):
        if node.name == "node2":
            raise LabError("gave up after 900 s waiting for node2 to be ready", "--- console tail ---")
        return {"ssh_after_s": 1.0, "boot_to_ready_s": 2.0}

    monkeypatch.setattr(nodes, "wait_ready", slow)
    with pytest.raises(LabError) as err:
        cluster.up(2, log=lambda line: None)
    assert "node2" in str(err.value) and "`python -m lab up` resumes" in str(err.value)
    assert err.value.details == "--- console tail ---"
    recorded = state.load()["nodes"]
    assert recorded["node1"]["boot_to_ready_s"] == 2.0 and recorded["node2"]["pid"] == 1002


def test_overlay_of_another_image_gets_fresh_disks_and_says_so(fake_lab):
    node = Node(1)
    node.overlay.write_bytes(b"old")
    node.data_disk(1).write_bytes(b"old data")
    node.image_stamp.write_text(json.dumps({"key": "oldkey", "base": "1:1"}))
    said = []
    cluster.up(1, log=said.append)
    assert any("built on image oldkey" in line and "fresh overlay and data disks" in line for line in said)
    assert not node.data_disk(1).exists()  # removed; the (fake) prepare made only a new overlay
    assert qemu.read_stamp(node)["key"] == "key1"


def test_down_stops_only_running_nodes_and_wipes_on_request(fake_lab, monkeypatch):
    cluster.up(2, log=lambda line: None)
    monkeypatch.setattr(nodes, "running", lambda log=None, cleanup=True: [
        Node(int(name[-1])) for name in sorted(fake_lab["running"])])
    said = []
    cluster.down(hard=True, wipe=True, log=said.append)
    assert sorted(fake_lab["calls"]["stopped"]) == ["node1", "node2"]
    assert fake_lab["calls"]["switches_stopped"] == ["san", "service"]
    assert "node1: stopped by monitor quit in 1.0 s" in said
    assert not Node(1).overlay.exists() and not (fake_lab["dir"] / "run" / "cluster.json").exists()


def test_restart_boots_the_same_overlay(fake_lab, monkeypatch):
    cluster.up(1, log=lambda line: None)
    prepared = []
    monkeypatch.setattr(qemu, "prepare_disks", lambda node, img: prepared.append(node.name) or [])
    said = []
    result = cluster.restart("node1", log=said.append)
    assert fake_lab["calls"]["stopped"] == ["node1"]
    assert fake_lab["calls"]["started"] == ["node1", "node1"]
    assert Node(1).overlay.read_bytes() == b"qcow2"  # same overlay, not recreated
    assert result["stop"]["how"] == "graceful poweroff" and result["boot_to_ready_s"] == 55.0
    assert "node1: stopped by graceful poweroff in 1.0 s" in said


def test_stop_of_one_node_keeps_its_disks_for_up(fake_lab):
    cluster.up(2, log=lambda line: None)
    node2 = Node(2)
    node2.data_disk(1).write_bytes(b"legs")
    said = []
    result = cluster.stop("node2", hard=True, log=said.append)
    assert fake_lab["calls"]["stopped"] == ["node2"] and result["stopped"] is True
    assert state.load()["nodes"]["node2"]["pid"] is None
    assert node2.overlay.exists() and node2.data_disk(1).read_bytes() == b"legs"  # the lost node's disks stay
    assert "node2: stopped by monitor quit in 1.0 s; `up` boots it again, same disks" in said, said


def test_restart_refuses_an_overlay_whose_base_changed(fake_lab):
    cluster.up(1, log=lambda line: None)
    base = fake_lab["img"] / "base.raw"
    base.unlink()
    base.write_bytes(b"rebuilt")
    with pytest.raises(LabError, match="base image under node1's overlay was rebuilt"):
        cluster.restart("node1")
    assert fake_lab["calls"]["stopped"] == []  # refused before stopping anything


def test_restart_of_a_node_without_overlay_points_to_up(fake_lab):
    with pytest.raises(LabError, match="use `python -m lab up`"):
        cluster.restart("node1")


def test_status_with_nothing_running(lab_dirs):  # noqa: F811
    data = cluster.status()
    assert data["nodes"] == {} and data["master"]["alive"] is False and data["san_switch"]["alive"] is False
    assert data["service_switch"] == {"pid": None, "alive": False, "hub": True,
                                      "sock": str(config.SERVICE_SWITCH_SOCK)}


# --- node stop ladder ----------------------------------------------------------------


def test_stop_falls_back_to_monitor_quit_when_ssh_is_dead(lab_dirs, monkeypatch):  # noqa: F811
    node = Node(1)
    monkeypatch.setattr(nodes, "pid", lambda node, log=None, cleanup=True: 4321)
    monkeypatch.setattr(nodes, "ssh", lambda *a, **k: subprocess.CompletedProcess([], 255, "", "refused"))
    monkeypatch.setattr(qemu, "quit_via_monitor", lambda n: True)
    monkeypatch.setattr(nodes.procs, "wait_gone", lambda pid, timeout, interval=0.5: True)
    monkeypatch.setattr(nodes.procs, "terminate", lambda *a, **k: pytest.fail("SIGTERM not needed"))
    said = []
    outcome = nodes.stop(node, hard=False, log=said.append)
    assert outcome["how"] == "monitor quit"
    assert "ssh does not answer" in said[0]


def test_stop_uses_sigterm_on_our_pid_as_last_resort(lab_dirs, monkeypatch):  # noqa: F811
    monkeypatch.setattr(nodes, "pid", lambda node, log=None, cleanup=True: 4321)
    monkeypatch.setattr(qemu, "quit_via_monitor", lambda n: False)
    terminated = []
    monkeypatch.setattr(nodes.procs, "terminate", lambda pid, markers, timeout=15: terminated.append((pid, markers)) or True)
    outcome = nodes.stop(Node(1), hard=True, log=lambda line: None)
    assert outcome["how"] == "SIGTERM"
    assert terminated == [(4321, qemu.markers(Node(1)))]


def test_stop_of_a_node_that_is_not_running(lab_dirs, monkeypatch):  # noqa: F811
    monkeypatch.setattr(nodes, "pid", lambda node, log=None, cleanup=True: None)
    assert nodes.stop(Node(1), hard=False, log=print) == {"stopped": False, "how": "not running"}


# --- CLI -----------------------------------------------------------------------------


def test_cli_expected_error_is_one_line_without_traceback(capsys):
    assert cli.main(["ssh", "node0"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["lab: error: not a lab node name: 'node0' (expected node1..node8)"]


def test_cli_prints_details_then_the_error_line(monkeypatch, capsys):
    def boom(count, build=False, log=print):
        raise LabError("gave up after 900 s waiting for node1", "--- last 2 lines ---\nline a\nline b")

    monkeypatch.setattr(cluster, "up", boom)
    assert cli.main(["up", "2"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "lab: error: gave up after 900 s waiting for node1"
    assert "line b" in lines


def test_cli_passes_salt_arguments_through_untouched():
    args = cli.parse(["salt-key", "-L", "--out=json"])
    assert args.rest == ["-L", "--out=json"]
    args = cli.parse(["ssh", "node2", "ls", "-la", "/"])
    assert args.node == "node2" and args.command == ["ls", "-la", "/"]


def test_cli_node_count_is_bounded(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(["up", "9"])
    assert exit_.value.code == 2
    assert "between 1 and 8" in capsys.readouterr().err
    assert cli.parse(["up"]).count == 2 and cli.parse(["up", "3"]).count == 3


def test_cli_status_json(lab_dirs, capsys):  # noqa: F811
    assert cli.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"nodes", "san_switch", "service_switch", "master"}


def test_cli_logs_tail(lab_dirs, capsys):  # noqa: F811
    Node(1).console_log.write_text("\n".join(f"l{i}" for i in range(50)) + "\n")
    assert cli.main(["logs", "node1", "-n", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["l47", "l48", "l49"]


def test_up_with_every_node_running_needs_no_image(fake_lab, monkeypatch):
    fake_lab["running"].update(node1=771, node2=772)
    fake_lab["calls"]["switch_pids"].update(san=4242, service=4343)
    monkeypatch.setattr(cluster, "image_dir", lambda build=False, log=print: pytest.fail("image not needed"))
    said = []
    cluster.up(2, log=said.append)
    assert fake_lab["calls"]["started"] == []
    assert said[:2] == ["node1: already running (pid 771), reused", "node2: already running (pid 772), reused"]


def test_reused_node_keeps_its_recorded_boot_time(fake_lab):
    cluster.up(1, log=lambda line: None)
    said = []
    cluster.up(1, log=said.append)
    assert "node1: ready (booted in 55.0 s)" in said
    assert state.load()["nodes"]["node1"]["boot_to_ready_s"] == 55.0


def test_fresh_overlay_drops_the_masters_old_key_for_that_node(fake_lab):
    accepted = fake_lab["dir"] / "master" / "r" / "pki" / "minions"
    accepted.mkdir(parents=True)
    (accepted / "node1").write_text("old key")
    said = []
    cluster.up(1, log=said.append)
    assert not (accepted / "node1").exists()
    assert "node1: new overlay, new minion key: dropped the master's old key for it" in said


def test_up_says_when_running_nodes_lost_their_san_switch(fake_lab):
    fake_lab["running"]["node1"] = 771
    said = []
    cluster.up(1, log=said.append)
    assert any("lost their SAN link" in line for line in said)


def test_up_says_which_switch_the_running_nodes_lost(fake_lab):
    fake_lab["running"]["node1"] = 771
    fake_lab["calls"]["switch_pids"]["san"] = 4242  # only the service switch is gone
    said = []
    cluster.up(1, log=said.append)
    lost = [line for line in said if "lost their" in line]
    assert lost == ["service switch: was not running, so the running nodes (node1) lost their service links; "
                    "`python -m lab restart NODE` reconnects one"]
    assert fake_lab["calls"]["service"] == 1


def test_up_names_a_running_node_without_service_links(fake_lab, monkeypatch):
    fake_lab["running"]["node1"] = 771
    fake_lab["calls"]["switch_pids"].update(san=4242)
    monkeypatch.setattr(qemu, "has_service_links", lambda pid: False)
    said = []
    cluster.up(1, log=said.append)
    assert ("node1: runs without service links (started by an older lab); "
            "`python -m lab restart node1` adds them") in said
    # it never had service links, so it lost none when the service switch was missing
    assert not any("lost their service links" in line for line in said)


def test_restart_starts_both_switches(fake_lab):
    cluster.up(1, log=lambda line: None)
    cluster.restart("node1", log=lambda line: None)
    assert fake_lab["calls"]["san"] == 2 and fake_lab["calls"]["service"] == 2


# --- link ----------------------------------------------------------------------------


@pytest.fixture
def linked(fake_lab, monkeypatch):
    cluster.up(2, log=lambda line: None)
    sent = []
    monkeypatch.setattr(qemu, "set_link", lambda node, nic_id, up: sent.append((node.name, nic_id, up)))
    return sent


def test_link_down_and_up_through_the_monitor_and_recorded(linked):
    said = []
    result = cluster.link("node1", 3, False, log=said.append)
    assert linked == [("node1", "svc1", False)]
    assert result["links_down"] == ["svc1"] and said == ["node1: NIC 3 (svc1, 52:54:00:00:01:03) link down"]
    cluster.link("node1", 4, False, log=said.append)
    assert state.load()["nodes"]["node1"]["links_down"] == ["svc1", "svc2"]
    cluster.link("node1", 3, True, log=said.append)
    assert state.load()["nodes"]["node1"]["links_down"] == ["svc2"]
    assert linked[-1] == ("node1", "svc1", True)


def test_restart_plugs_every_link_back_in(linked):
    cluster.link("node2", 4, False, log=lambda line: None)
    cluster.restart("node2", log=lambda line: None)
    assert state.load()["nodes"]["node2"]["links_down"] == []


def test_link_refuses_the_management_nic_and_stopped_nodes(linked):
    with pytest.raises(LabError, match="NIC 1 cannot be taken down"):
        cluster.link("node1", 1, False)
    with pytest.raises(LabError, match="node3 is not running"):
        cluster.link("node3", 3, False)
    assert linked == []


def test_cli_link(linked, capsys):
    assert cli.main(["link", "node2", "4", "down"]) == 0
    assert linked == [("node2", "svc2", False)]
    assert "node2: NIC 4 (svc2, 52:54:00:00:02:04) link down" in capsys.readouterr().out
    assert cli.main(["link", "node2", "1", "down"]) == 1
    assert "lab: error: NIC 1 cannot be taken down" in capsys.readouterr().err


def test_cli_link_needs_up_or_down(capsys):
    with pytest.raises(SystemExit):
        cli.parse(["link", "node1", "3", "off"])
    assert "invalid choice: 'off'" in capsys.readouterr().err


def test_cli_status_shows_both_switches_and_links_down(linked, monkeypatch, capsys):
    cluster.link("node1", 3, False, log=lambda line: None)
    monkeypatch.setattr(cluster, "_node_status", lambda node: {
        "pid": 1000 + node.number, "alive": True, "ssh_port": node.ssh_port, "ssh": True, "xl": True,
        "minion_service": "active", "minion_answers": None})
    monkeypatch.setattr(switch, "running", lambda sw, log=None, cleanup=True: 4343 if sw is switch.SERVICE else None)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("node1: ") and line.endswith("links down: svc1") for line in out)
    assert not any(line.startswith("node2: ") and "links down" in line for line in out)
    assert "SAN switch: stopped" in out and "service switch: pid 4343 (hub)" in out


def test_socket_path_preflight_covers_both_switches(lab_dirs):  # noqa: F811
    paths = cluster._socket_paths([Node(1)])
    for sock in ("san.vde", "svc.vde"):
        assert lab_dirs / "run" / sock / "ctl" in paths
