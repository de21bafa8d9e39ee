"""Unit tests of the lab runtime's building blocks (no QEMU, no root, no network)."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lab import config, master, preflight, procs, qemu, ssh, state, switch, wait
from lab.config import Node
from lab.errors import LabError, PreflightError, WaitTimeout


@pytest.fixture
def lab_dirs(tmp_path, monkeypatch):
    """Point every lab path at a temp dir (config's derived paths too)."""
    run, mdir = tmp_path / "run", tmp_path / "master"
    run.mkdir()
    patches = {
        "LAB_DIR": tmp_path, "RUN_DIR": run, "MASTER_DIR": mdir,
        "SAN_SWITCH_SOCK": run / "san.vde", "SAN_SWITCH_PIDFILE": run / "san.pid",
        "SERVICE_SWITCH_SOCK": run / "svc.vde", "SERVICE_SWITCH_PIDFILE": run / "svc.pid",
        "CLUSTER_STATE": run / "cluster.json", "LOCK_FILE": run / "lab.lock",
        "MASTER_ETC": mdir / "etc", "MASTER_ROOT": mdir / "r", "MASTER_EXT": mdir / "ext",
        "MASTER_PIDFILE": mdir / "r" / "master.pid", "MASTER_LOG": mdir / "r" / "master.log",
    }
    for name, value in patches.items():
        monkeypatch.setattr(config, name, value)
    monkeypatch.setattr(master, "CONFIG_FILE", mdir / "etc" / "master")
    monkeypatch.setattr(master, "PKI_DIR", mdir / "r" / "pki")
    monkeypatch.setattr(master, "SOCK_DIR", mdir / "r" / "sock")
    return tmp_path


@pytest.fixture
def sleeper():
    """A process that is NOT ours (a plain sleep); it must survive every lab action."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


# --- preflight -----------------------------------------------------------------------


def test_missing_tools_name_the_debian_package(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: None if tool in ("vde_switch", "qemu-img") else "/x")
    with pytest.raises(PreflightError) as err:
        preflight.require_tools(["qemu-system-x86_64", "qemu-img", "vde_switch", "socat"])
    message = str(err.value)
    assert "vde_switch" in message and "qemu-img" in message
    assert "apt-get install qemu-utils vde2" in message


def test_all_tools_present_passes(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: "/usr/bin/" + tool)
    preflight.require_tools(preflight.TOOL_PACKAGES)


def test_not_root_is_refused(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    with pytest.raises(PreflightError, match=r"`python -m lab up` needs root"):
        preflight.require_root("up")


def test_occupied_port_is_named_with_its_purpose():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not preflight.port_free(port)
        with pytest.raises(PreflightError) as err:
            preflight.require_free_ports([(port, "ssh to node1")])
    assert f"127.0.0.1:{port} (ssh to node1)" in str(err.value)


def test_free_port_passes():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    preflight.require_free_ports([(port, "ssh to node1")])


def test_too_little_disk_states_free_and_needed(monkeypatch, tmp_path):
    usage = type("Usage", (), {"free": 1 * 2**30})
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(PreflightError) as err:
        preflight.require_disk(tmp_path / "not" / "yet", 6 * 2**30, "2 new node(s)' overlays and data disks")
    assert "1.0 GiB free, 6.0 GiB needed for 2 new node(s)' overlays" in str(err.value)


def test_enough_disk_passes(tmp_path):
    preflight.require_disk(tmp_path, 1024, "a tiny file")


def test_socket_path_limit_is_108_bytes_with_nul():
    preflight.require_short_socket_paths([Path("/" + "a" * 106)])
    with pytest.raises(PreflightError, match="too long for AF_UNIX"):
        preflight.require_short_socket_paths([Path("/" + "a" * 107)])


def test_comma_in_path_is_refused_for_qemu():
    with pytest.raises(PreflightError, match="comma"):
        preflight.require_qemu_safe_paths([Path("/var/tmp/a,b")])


@pytest.mark.parametrize("text,size", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1024", 1024), ("2GB", 2 * 2**30)])
def test_parse_size(text, size):
    assert preflight.parse_size(text) == size


# --- pidfiles and processes ----------------------------------------------------------


def test_stale_pidfile_of_a_dead_process_is_removed_and_reported(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = tmp_path / "node1.pid"
    pidfile.write_text(f"{dead.pid}\n")
    said = []
    assert procs.live_pid(pidfile, ["qemu-system-x86_64"], "node1", said.append) is None
    assert not pidfile.exists()
    assert said and "stale pidfile" in said[0] and "not running" in said[0]


def test_pid_reused_by_another_program_is_left_alone(tmp_path, sleeper):
    pidfile = tmp_path / "node1.pid"
    pidfile.write_text(str(sleeper.pid))
    said = []
    assert procs.live_pid(pidfile, ["qemu-system-x86_64", str(pidfile)], "node1", said.append) is None
    assert not pidfile.exists()
    assert "another program" in said[0] and "left it alone" in said[0]
    assert sleeper.poll() is None  # still running


def test_status_style_lookup_does_not_remove_pidfiles(tmp_path, sleeper):
    pidfile = tmp_path / "node1.pid"
    pidfile.write_text(str(sleeper.pid))
    assert procs.live_pid(pidfile, ["qemu"], "node1", cleanup=False) is None
    assert pidfile.exists()


def test_our_process_is_found_by_its_markers(tmp_path, sleeper):
    pidfile = tmp_path / "x.pid"
    pidfile.write_text(str(sleeper.pid))
    assert procs.live_pid(pidfile, ["sleep", "60"], "sleeper") == sleeper.pid


def test_terminate_never_signals_a_process_that_is_not_ours(sleeper):
    assert procs.terminate(sleeper.pid, ["qemu-system-x86_64", "/run/node1.pid"], timeout=1) is False
    assert sleeper.poll() is None


def test_terminate_stops_our_process(sleeper):
    assert procs.terminate(sleeper.pid, ["sleep", "60"], timeout=5)
    assert sleeper.wait(timeout=5) == -15


def test_children_are_found_through_proc():
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        found = wait.until(lambda: (bool(procs.children(parent.pid)), "no child yet"),
                           what="the child", timeout=5, interval=0.05)
        assert found < 5
        child = procs.children(parent.pid)[0]
        assert procs.cmdline(child)[0] == "sleep"
    finally:
        for pid in procs.children(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


# --- waits ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_returns_elapsed_time_when_ready():
    clock = FakeClock()
    answers = iter([(False, "refused"), (False, "refused"), (True, "ok")])
    took = wait.until(lambda: next(answers), what="x", timeout=60, interval=2, clock=clock, sleep=clock.sleep)
    assert took == 4.0


def test_wait_timeout_names_what_and_last_observation_and_console_tail(tmp_path):
    log = tmp_path / "node1.console.log"
    log.write_text("".join(f"boot line {i}\r\n" for i in range(100)))
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as err:
        wait.until(lambda: (False, "ssh: Connection refused"), what="node1 to be ready (ssh)",
                   timeout=10, interval=3, clock=clock, sleep=clock.sleep,
                   details=lambda: wait.console_details(log, 5))
    assert "gave up after 10 s waiting for node1 to be ready (ssh)" in str(err.value)
    assert "Connection refused" in str(err.value)
    assert "boot line 99" in err.value.details and "boot line 94" not in err.value.details
    assert "\r" not in err.value.details


def test_wait_aborts_at_once_when_the_process_died():
    clock = FakeClock()
    with pytest.raises(LabError, match="its QEMU .* exited") as err:
        wait.until(lambda: (False, "refused"), what="node1", timeout=600, clock=clock, sleep=clock.sleep,
                   abort=lambda: "its QEMU (pid 1) exited")
    assert not isinstance(err.value, WaitTimeout)
    assert clock.now == 0


def test_console_details_of_missing_log(tmp_path):
    assert "empty or missing" in wait.console_details(tmp_path / "none.log")


# --- QEMU command line and disks -----------------------------------------------------


def test_node_argv_has_the_facts_that_work(lab_dirs):
    node, img = Node(2), Path("/img/abc")
    argv = qemu.node_argv(node, img)
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"  # KVM hangs
    assert argv[argv.index("-cpu") + 1] == "qemu64,+npt"
    assert "bootscrub=0" in argv[argv.index("-append") + 1]
    assert argv[argv.index("-initrd") + 1] == (
        "/img/abc/vmlinuz root=/dev/vda ro console=hvc0 systemd.hostname=node2 net.ifnames=0 panic=-1 xclab.role=dom0"
        ",/img/abc/initrd.img"
    )
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined and "restrict=on" in joined
    assert f"guestfwd=tcp:10.0.2.100:4506-cmd:socat - TCP:127.0.0.1:{config.MASTER_RET_PORT}" in joined
    assert f"vde,id=san,sock={lab_dirs / 'run' / 'san.vde'}" in joined
    assert "mac=52:54:00:00:02:01" in joined and "mac=52:54:00:00:02:02" in joined
    assert "serial=n2data1" in joined and "serial=n2root" in joined and "serial=n2groot" in joined
    assert argv[-3:] == ["-pidfile", str(node.pidfile), "-daemonize"]
    # nothing but loopback is ever bound on the host
    assert "0.0.0.0" not in joined and "hostfwd=tcp::" not in joined


def _netdevs_and_nics(argv: list[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """-netdev TYPE,id=X,... by id, and the virtio-net-pci -device options, in order."""
    netdevs, nics = {}, []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-netdev":
            kind, *rest = value.split(",")
            options = dict(part.split("=", 1) for part in rest if "=" in part)
            netdevs[options["id"]] = f"{kind},{value.split(',', 1)[1]}"
        elif flag == "-device" and value.startswith("virtio-net-pci,"):
            nics.append(dict(part.split("=", 1) for part in value.split(",")[1:]))
    return netdevs, nics


def test_node_has_two_service_links_on_the_service_switch(lab_dirs):
    node = Node(2)
    netdevs, nics = _netdevs_and_nics(qemu.node_argv(node, Path("/img")))
    # eth0 mgmt, eth1 SAN, eth2 + eth3 the service links: PCI order is argv order
    assert [nic["mac"] for nic in nics] == [node.mac(n) for n in (1, 2, 3, 4)]
    assert [nic.get("id") for nic in nics] == [None, "san0", "svc1", "svc2"]
    service = lab_dirs / "run" / "svc.vde"
    for nic in nics[2:]:
        assert netdevs[nic["netdev"]] == f"vde,id={nic['netdev']},sock={service}"
        assert nic["netdev"] != nic["id"]  # set_link acts on every net client with that name
    assert netdevs[nics[1]["netdev"]] == f"vde,id=san,sock={lab_dirs / 'run' / 'san.vde'}"
    assert node.mac(3) == "52:54:00:00:02:03" and node.mac(4) == "52:54:00:00:02:04"


def test_running_qemu_with_and_without_service_links(lab_dirs, monkeypatch):
    argv = qemu.node_argv(Node(1), Path("/img"))
    monkeypatch.setattr(qemu, "cmdline", lambda pid: argv)
    assert qemu.has_service_links(1234)
    older = [arg for arg in argv if "svc" not in arg]  # a node an older lab started
    monkeypatch.setattr(qemu, "cmdline", lambda pid: older)
    assert not qemu.has_service_links(1234)
    monkeypatch.setattr(qemu, "cmdline", lambda pid: None)
    assert not qemu.has_service_links(1234)


def test_qemu_markers_are_specific_to_one_node(lab_dirs):
    argv1 = " ".join(qemu.node_argv(Node(1), Path("/img")))
    assert all(marker in argv1 for marker in qemu.markers(Node(1)))
    assert not all(marker in argv1 for marker in qemu.markers(Node(2)))


def _fake_image(root: Path, key: str = "key1") -> Path:
    img = root / "images" / key
    img.mkdir(parents=True)
    for name in qemu.IMAGE_FILES:
        (img / name).write_bytes(b"x")
    with (img / "base.raw").open("wb") as handle:
        handle.truncate(2**20)
    return img


needs_qemu_img = pytest.mark.skipif(not preflight.shutil.which("qemu-img"), reason="qemu-img not installed")


@needs_qemu_img
def test_prepare_disks_makes_overlay_stamp_and_sparse_data_disks(lab_dirs, monkeypatch):
    monkeypatch.setattr(config, "DATA_DISK_SIZE", "1G")
    img, node = _fake_image(lab_dirs), Node(1)
    assert qemu.prepare_disks(node, img) == ["overlay", "data1", "data2"]
    assert node.data_disk(1).stat().st_size == 2**30
    assert node.data_disk(1).stat().st_blocks == 0  # sparse
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(node.overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    pinned = Path(qemu.read_stamp(node)["dir"])
    assert info["backing-filename"] == str(pinned / "base.raw")
    assert (pinned / "base.raw").stat().st_ino == (img / "base.raw").stat().st_ino  # a hard link
    assert qemu.read_stamp(node)["key"] == "key1"
    assert qemu.backing_intact(node)
    assert qemu.stale_disks_reason(node, img) is None
    assert qemu.prepare_disks(node, img) == []  # idempotent


@needs_qemu_img
def test_overlay_of_another_image_key_is_stale(lab_dirs):
    old, new, node = _fake_image(lab_dirs, "old"), _fake_image(lab_dirs, "new"), Node(1)
    qemu.prepare_disks(node, old)
    assert "built on image old, the current image is new" in qemu.stale_disks_reason(node, new)
    assert len(qemu.remove_disks(node)) == 5
    assert not node.overlay.exists() and not node.guest_root.exists() and not node.data_disk(2).exists()


@needs_qemu_img
def test_rebuilt_image_with_same_key_makes_the_overlay_stale(lab_dirs):
    img, node = _fake_image(lab_dirs), Node(1)
    qemu.prepare_disks(node, img)
    os.utime(img / "base.raw", ns=(1, 1))
    assert "rebuilt" in qemu.stale_disks_reason(node, img)


@needs_qemu_img
def test_pinned_image_survives_a_forced_rebuild_of_the_cache(lab_dirs):
    import shutil

    img, node = _fake_image(lab_dirs), Node(1)
    (img / "id_ed25519").write_text("the key the overlay trusts")
    qemu.prepare_disks(node, img)
    shutil.rmtree(img)  # what a forced rebuild does to the old image directory
    rebuilt = _fake_image(lab_dirs)
    pinned = Path(qemu.read_stamp(node)["dir"])
    assert (pinned / "id_ed25519").read_text() == "the key the overlay trusts"
    assert (pinned / "vmlinuz").exists() and qemu.backing_intact(node)
    assert "rebuilt" in qemu.stale_disks_reason(node, rebuilt)  # the next fresh `up` moves on


@needs_qemu_img
def test_pins_no_overlay_uses_are_pruned(lab_dirs):
    old, new, node = _fake_image(lab_dirs, "old"), _fake_image(lab_dirs, "new"), Node(1)
    qemu.prepare_disks(node, old)
    old_pin = Path(qemu.read_stamp(node)["dir"])
    qemu.remove_disks(node)
    qemu.prepare_disks(node, new)
    assert qemu.prune_pins() == [old_pin]
    assert Path(qemu.read_stamp(node)["dir"]).exists()


def test_overlay_without_a_stamp_is_stale(lab_dirs):
    img, node = _fake_image(lab_dirs), Node(1)
    node.overlay.write_bytes(b"")
    assert "no image record" in qemu.stale_disks_reason(node, img)


def test_console_log_of_the_previous_boot_is_kept(lab_dirs):
    node = Node(1)
    node.console_log.write_text("old boot\n")
    qemu.rotate_console_log(node)
    assert not node.console_log.exists()
    assert node.console_log.with_name("node1.console.log.1").read_text() == "old boot\n"


def test_first_error_skips_gui_module_noise():
    stderr = ("qemu: module ui-ui-gtk not found, do you want to install qemu-system-gui package?\n"
              "qemu-system-x86_64: -netdev vde: could not connect\n")
    assert qemu.first_error(stderr) == "qemu-system-x86_64: -netdev vde: could not connect"


def test_monitor_quit_talks_hmp_over_the_unix_socket(lab_dirs):
    node = Node(1)
    received = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(node.monitor))
    server.listen()

    def fake_qemu():
        conn, _ = server.accept()
        conn.sendall(b"QEMU 7.2.0 monitor - type 'help' for more information\r\n(qemu) ")
        received.append(conn.recv(100))
        conn.close()

    thread = threading.Thread(target=fake_qemu)
    thread.start()
    assert qemu.quit_via_monitor(node)
    thread.join(5)
    server.close()
    assert received == [b"quit\n"]


def test_monitor_quit_without_a_monitor_says_so(lab_dirs):
    assert qemu.quit_via_monitor(Node(1)) is False


def _fake_monitor(node: Node, answer: bytes) -> tuple[threading.Thread, list[bytes], socket.socket]:
    """A QEMU HMP monitor on the node's socket: banner, then `answer` to one command."""
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(node.monitor))
    server.listen()

    def fake_qemu():
        conn, _ = server.accept()
        conn.sendall(b"QEMU 7.2.0 monitor - type 'help' for more information\r\n(qemu) ")
        command = conn.recv(100)
        received.append(command)
        conn.sendall(command.replace(b"\n", b"\r\n") + answer + b"(qemu) ")  # HMP echoes the line
        conn.close()

    thread = threading.Thread(target=fake_qemu)
    thread.start()
    return thread, received, server


@pytest.mark.parametrize("up, word", [(False, "off"), (True, "on")])
def test_set_link_sends_the_hmp_command(lab_dirs, up, word):
    node = Node(1)
    thread, received, server = _fake_monitor(node, b"")
    qemu.set_link(node, "svc1", up)
    thread.join(5)
    server.close()
    assert received == [f"set_link svc1 {word}\n".encode()]


def test_set_link_of_an_unknown_nic_is_an_error_with_a_hint(lab_dirs):
    node = Node(2)
    thread, _, server = _fake_monitor(node, b"Error: Device 'svc2' not found\r\n")
    with pytest.raises(LabError, match=r"node2: `set_link svc2 off` failed: Error: Device 'svc2' not found .*restart node2"):
        qemu.set_link(node, "svc2", False)
    thread.join(5)
    server.close()


def test_set_link_without_a_monitor_says_so(lab_dirs):
    with pytest.raises(LabError, match="node1: cannot reach its QEMU monitor"):
        qemu.set_link(Node(1), "svc1", False)


def test_link_ids_by_nic_number():
    assert [qemu.link_id(nic) for nic in (2, 3, 4)] == ["san0", "svc1", "svc2"]
    for nic in (0, 1, 5):  # 1 is the management link: never taken down
        with pytest.raises(LabError, match="choose one of 2, 3, 4"):
            qemu.link_id(nic)


def test_monitor_error_finds_the_error_after_echo_and_escapes():
    assert qemu.monitor_error("set_link svc1 off\r\n(qemu) ") is None
    assert qemu.monitor_error("\x1b[Kset_link x off\r\nError: Device 'x' not found\r\n(qemu) ") == (
        "Error: Device 'x' not found")
    assert qemu.monitor_error("unknown command: 'set_lnk'\r\n") == "unknown command: 'set_lnk'"


# --- SAN switch, ssh -----------------------------------------------------------------


def test_san_switch_argv_stays_in_run_dir(lab_dirs):
    argv = switch.argv(switch.SAN)
    assert argv[:3] == ["vde_switch", "--sock", str(lab_dirs / "run" / "san.vde")]
    assert "--daemon" in argv and str(lab_dirs / "run" / "san.pid") in argv
    assert "--hub" not in argv  # the SAN stays a learning switch (untagged traffic only)
    assert all(marker in " ".join(argv) for marker in switch.markers(switch.SAN))


def test_service_switch_is_a_hub_with_its_own_dir_and_pidfile(lab_dirs):
    argv = switch.argv(switch.SERVICE)
    assert argv[:3] == ["vde_switch", "--sock", str(lab_dirs / "run" / "svc.vde")]
    # a vde switch drops 802.1Q frames on ports not configured as members of that VLAN;
    # a hub forwards every frame untouched
    assert "--hub" in argv
    assert argv[argv.index("--pidfile") + 1] == str(lab_dirs / "run" / "svc.pid") and "--daemon" in argv
    assert all(marker in " ".join(argv) for marker in switch.markers(switch.SERVICE))
    # the markers tell the two switches apart
    assert not all(marker in " ".join(argv) for marker in switch.markers(switch.SAN))


def test_switches_ignore_the_hosts_vde_rc_files(lab_dirs):
    for sw in switch.ALL:
        argv = switch.argv(sw)
        assert argv[argv.index("--rcfile") + 1] == "/dev/null"


def test_switch_paths_follow_the_lab_dir(lab_dirs):
    assert switch.SAN.ctl == lab_dirs / "run" / "san.vde" / "ctl"
    assert switch.SERVICE.ctl == lab_dirs / "run" / "svc.vde" / "ctl"
    assert [sw.state_key for sw in switch.ALL] == ["san_switch", "service_switch"]


@pytest.mark.skipif(not shutil.which("vde_switch") or not shutil.which("vde_plug"),
                    reason="vde2/vdeplug are not installed")
@pytest.mark.parametrize("sw, forwards_tagged", [(switch.SAN, False), (switch.SERVICE, True)],
                         ids=["san-switch", "service-hub"])
def test_a_real_vde_switch_forwards_vlan_tagged_frames_only_as_a_hub(tmp_path, sw, forwards_tagged):
    """The reason the service segment is a hub, checked against the installed vde_switch.

    Its own switch in tmp_path (never the lab's), two plugs, one broadcast frame each way.
    """
    argv = switch.argv(sw)
    sock, pidfile = tmp_path / "sw", tmp_path / "sw.pid"
    argv[argv.index("--sock") + 1] = str(sock)
    argv[argv.index("--pidfile") + 1] = str(pidfile)
    subprocess.run(argv, check=True, timeout=10)
    plugs = []
    try:
        wait.until(lambda: ((sock / "ctl").exists() and pidfile.exists(), "starting"), what="vde_switch",
                   timeout=10, interval=0.1)
        plugs = [subprocess.Popen(["vde_plug", f"vde://{sock}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for _ in range(2)]
        untagged = _frame(b"\x08\x00", 60)
        tagged = _frame(b"\x81\x00\x00\x0a\x08\x00", 1518)  # VLAN 10, full-size: 1500 + 14 + 4
        # Until both plugs are connected, frames are lost: resend the untagged one until it arrives.
        wait.until(lambda: (_through(plugs, untagged, timeout=0.2) == untagged, "no frame yet"),
                   what="an untagged frame through the switch", timeout=10, interval=0.1)
        while _through(plugs, None, timeout=0.3) is not None:  # drain the resent copies
            pass
        assert _through(plugs, tagged) == (tagged if forwards_tagged else None)
    finally:
        for plug in plugs:
            plug.kill()
            plug.wait()
        pid = procs.read_pid(pidfile)
        if pid and procs.is_ours(pid, ["vde_switch", str(sock)]):
            procs.terminate(pid, ["vde_switch", str(sock)])


def _frame(ethertype: bytes, size: int) -> bytes:
    head = b"\xff" * 6 + bytes.fromhex("525400000103") + ethertype
    return head + bytes(size - len(head))


def _through(plugs: list[subprocess.Popen], frame: bytes | None, timeout: float = 2.0) -> bytes | None:
    """Send one frame into plug 0 (vde_plug's stdio: 2-byte length, frame); what plug 1 gets."""
    if frame is not None:
        plugs[0].stdin.write(len(frame).to_bytes(2, "big") + frame)
        plugs[0].stdin.flush()
    out = plugs[1].stdout.fileno()
    ready, _, _ = select.select([out], [], [], timeout)
    if not ready:
        return None
    length = int.from_bytes(_read_exactly(out, 2), "big")
    return _read_exactly(out, length)


def _read_exactly(fd: int, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = os.read(fd, count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_ssh_argv_is_batch_loopback_and_quotes_argv():
    argv = ssh.argv(Node(3), Path("/k/id_ed25519"), ["sh", "-c", "echo 'a b'"])
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and "StrictHostKeyChecking=no" in argv
    assert "UserKnownHostsFile=/dev/null" in argv and "ConnectTimeout=5" in argv
    assert argv[argv.index("-p") + 1] == "2223" and argv[argv.index("-i") + 1] == "/k/id_ed25519"
    assert argv[-2] == "root@127.0.0.1"
    assert argv[-1] == "sh -c 'echo '\"'\"'a b'\"'\"''"


def test_ssh_string_command_is_a_shell_line():
    assert ssh.argv(Node(1), Path("/k"), "xl list | wc -l")[-1] == "xl list | wc -l"
    assert ssh.argv(Node(1), Path("/k"))[-1] == "root@127.0.0.1"


def test_ssh_shares_one_connection_per_node_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUN_DIR", tmp_path)
    argv = ssh.argv(Node(2), Path("/k"), "true")
    assert "ControlMaster=auto" in argv and f"ControlPersist={ssh.CONTROL_PERSIST_S}" in argv
    assert f"ControlPath={tmp_path}/ssh-node2-2222.mux" in argv
    assert argv[-2:] == ["root@127.0.0.1", "true"]  # options before the destination


def test_ssh_connects_alone_when_the_socket_path_cannot_be_made(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUN_DIR", tmp_path / ("d" * 100))  # too long for a unix socket
    assert not [a for a in ssh.argv(Node(1), Path("/k"), "true") if a.startswith("Control")]
    monkeypatch.setattr(config, "RUN_DIR", tmp_path / "absent")  # no run dir yet: nothing to share
    assert not [a for a in ssh.argv(Node(1), Path("/k"), "true") if a.startswith("Control")]


# --- state and lock ------------------------------------------------------------------


def test_state_records_nodes_incrementally(lab_dirs):
    state.update_node("node1", pid=10, boot_to_ready_s=None)
    state.update_node("node1", boot_to_ready_s=55.5)
    state.update_node("node2", pid=11)
    data = json.loads((lab_dirs / "run" / "cluster.json").read_text())
    assert data["nodes"]["node1"] == {"pid": 10, "boot_to_ready_s": 55.5}
    assert data["nodes"]["node2"] == {"pid": 11}


def test_lock_refuses_a_second_lab_command(lab_dirs):
    script = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
              "print('locked', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(lab_dirs / "run" / "lab.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LabError, match="another `python -m lab` command"):
            with state.locked("up"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_reentrant_within_one_command(lab_dirs):
    with state.locked("up"):
        with state.locked("master"):
            pass
    with state.locked("down"):
        pass


# --- master --------------------------------------------------------------------------


def test_master_config_binds_loopback_and_serves_the_checkout(lab_dirs):
    assert master.write_config() is True
    assert master.write_config() is False  # unchanged: a running master is kept
    import yaml

    conf = yaml.safe_load((lab_dirs / "master" / "etc" / "master").read_text())
    assert conf["interface"] == "127.0.0.1" and conf["auto_accept"] is False
    assert conf["publish_port"] == config.MASTER_PUBLISH_PORT and conf["ret_port"] == config.MASTER_RET_PORT
    assert conf["user"] == "root" and conf["worker_threads"] == 6 and conf["timeout"] == 30
    assert conf["file_roots"]["base"] == [str(config.REPO / "salt"), str(lab_dirs / "master" / "ext")]
    assert conf["pillar_roots"]["base"] == [str(config.REPO / "pillar")]
    # salt prefixes root_dir to paths outside it, so pidfile and log live inside it
    for key in ("pidfile", "log_file", "pki_dir", "sock_dir", "cachedir"):
        assert conf[key].startswith(conf["root_dir"] + "/"), key
    for tree in ("_modules", "_states", "_runners"):
        assert (lab_dirs / "master" / "ext" / tree).resolve() == config.REPO / tree


def test_master_sockets_fit_af_unix_by_default():
    preflight.require_short_socket_paths([master.SOCK_DIR / "master_event_pull.ipc"])


PUB = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"


def test_minion_key_is_accepted_and_pending_copies_removed(tmp_path):
    (tmp_path / "minions_pre").mkdir()
    (tmp_path / "minions_pre" / "node1").write_text(PUB)
    assert master.install_minion_key("node1", PUB, tmp_path) == "accepted"
    assert (tmp_path / "minions" / "node1").read_text() == PUB
    assert not (tmp_path / "minions_pre" / "node1").exists()
    assert master.install_minion_key("node1", PUB, tmp_path) == "already accepted"


def test_stale_minion_key_of_an_earlier_overlay_is_replaced(tmp_path):
    (tmp_path / "minions").mkdir()
    (tmp_path / "minions" / "node1").write_text(PUB.replace("AAAA", "OLD"))
    assert "replaced a stale key" in master.install_minion_key("node1", PUB, tmp_path)
    assert (tmp_path / "minions" / "node1").read_text() == PUB


def test_garbage_instead_of_a_key_is_refused(tmp_path):
    with pytest.raises(LabError, match="does not look like a public key"):
        master.install_minion_key("node1", "cat: no such file", tmp_path)


def test_salt_tools_run_with_the_lab_config(lab_dirs):
    argv = master.salt_argv("salt", ["*", "test.ping"])
    assert Path(argv[0]).parent == Path(sys.executable).parent
    assert argv[1:] == ["-c", str(lab_dirs / "master" / "etc"), "*", "test.ping"]


def test_one_ssh_round_trip_reads_minion_key_cached_master_key_and_minion_state():
    output = PUB + master.KEY_SEPARATOR + "\n" + "MASTERKEY\n" + master.STATE_SEPARATOR + "\nactive\n"
    assert master.split_keys(output) == (PUB, "MASTERKEY", "active")
    output = PUB + master.KEY_SEPARATOR + "\n" + master.STATE_SEPARATOR + "\nfailed\n"
    assert master.split_keys(output) == (PUB, "", "failed")


def test_fresh_overlay_drops_every_key_the_master_holds_for_the_node(tmp_path):
    for kind in ("minions", "minions_denied"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "node1").write_text(PUB)
    (tmp_path / "minions").joinpath("node2").write_text(PUB)
    assert master.forget_minion_key("node1", tmp_path) is True
    assert not (tmp_path / "minions" / "node1").exists() and not (tmp_path / "minions_denied" / "node1").exists()
    assert (tmp_path / "minions" / "node2").exists()
    assert master.forget_minion_key("node1", tmp_path) is False


def test_a_pidfile_being_written_is_not_removed_while_waiting_for_startup(tmp_path):
    pidfile = tmp_path / "san.pid"
    pidfile.write_text("")  # the daemon has created it but not written its pid yet
    assert procs.live_pid(pidfile, ["vde_switch"], "SAN switch", cleanup=False) is None
    assert pidfile.exists()


def test_a_cancelled_wait_stops_at_its_next_poll():
    wait.cancelled.set()
    try:
        with pytest.raises(LabError, match="interrupted while waiting for node1"):
            wait.until(lambda: (False, ""), what="node1", timeout=600)
    finally:
        wait.cancelled.clear()


def test_a_tool_that_vanished_after_preflight_is_still_one_clear_line(monkeypatch):
    def not_installed(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    monkeypatch.setattr(qemu.subprocess, "run", not_installed)
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: None)
    with pytest.raises(PreflightError, match="apt-get install vde2"):
        qemu.run_checked(["vde_switch", "--help"], "starting the SAN switch")


def test_minion_returns_merges_one_document_per_minion():
    # `salt -L node1,node2 test.version --out=json` without --static, as printed in the lab
    stdout = '{\n    "node2": "3008.3"\n}\n{\n    "node1": "3008.3"\n}'
    assert master.minion_returns(stdout) == {"node1": "3008.3", "node2": "3008.3"}
    assert master.minion_returns("") == {}
    with pytest.raises(json.JSONDecodeError):
        master.minion_returns("No minions matched the target.")


def test_json_documents_keeps_every_document_in_order():
    # `salt-run xencluster.migrate ... --out=json`: a progress event, then the return
    assert master.json_documents('{"progress": 1}\n[2]\n"x" {"result": true}') == [{"progress": 1}, [2], "x",
                                                                                       {"result": True}]
    assert master.json_documents(None) == []


@pytest.mark.parametrize("argv", [
    ["state.highstate", "test=True", "--batch-size=1"],  # an option the in-process call does not take
    ["xencluster_lvm.report,cmd.run", ",", "true"],  # a compound call
    ["-L"],  # no function at all: the CLI says what is wrong
])
def test_local_call_leaves_what_it_does_not_take_to_the_cli(argv, monkeypatch):
    monkeypatch.setitem(sys.modules, "salt.client", None)  # it must decide before importing Salt
    assert master.local_call("node1", argv, timeout=5) is None


def test_forget_cluster_cache_drops_xencluster_banks_and_jobs_only(tmp_path):
    cache = tmp_path / "cache"
    (cache / "xencluster" / "drained").mkdir(parents=True)
    (cache / "xencluster" / "drained" / "nodes.p").write_bytes(b"x")
    (cache / "xencluster-ops.flock").write_text("")
    (cache / "jobs" / "ab").mkdir(parents=True)
    (cache / "minions" / "node1").mkdir(parents=True)  # the minion data cache stays
    assert master.forget_cluster_cache(cache) == ["xencluster", "xencluster-ops.flock", "jobs"]
    assert sorted(p.name for p in cache.iterdir()) == ["minions"]
    assert master.forget_cluster_cache(cache) == []


def test_a_lab_whose_master_is_on_other_ports_forwards_the_advertised_publish_port(monkeypatch):
    # A minion subscribes to the publish port its master advertises, not to its own config's.
    monkeypatch.setattr(config, "MASTER_PUBLISH_PORT", 4525)
    monkeypatch.setattr(config, "MASTER_RET_PORT", 4526)
    netdev = qemu.mgmt_netdev(Node(1))
    forwards = [part for part in netdev.split(",") if part.startswith("guestfwd=")]
    assert forwards == [
        "guestfwd=tcp:10.0.2.100:4505-cmd:socat - TCP:127.0.0.1:4525",
        "guestfwd=tcp:10.0.2.100:4506-cmd:socat - TCP:127.0.0.1:4526",
        "guestfwd=tcp:10.0.2.100:4525-cmd:socat - TCP:127.0.0.1:4525",
    ]
    monkeypatch.setattr(config, "MASTER_PUBLISH_PORT", 4505)
    assert len([p for p in qemu.mgmt_netdev(Node(1)).split(",") if p.startswith("guestfwd=")]) == 2
