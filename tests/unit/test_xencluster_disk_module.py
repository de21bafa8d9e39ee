"""xencluster_disk execution module: leg ids, stable paths, the udev rules, links from sysfs.

``/dev/xencluster`` and ``/sys`` are rebuilt under ``tmp_path`` (symlinks laid
out as udev and the kernel lay them out on a dom0); ``udevadm`` is a FakeRunAll.
"""

import os
import re

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_disk as disk

LEG = "web1.disk0.node1"
SETTLE = ["udevadm", "settle", f"--timeout={disk.SETTLE_TIMEOUT}"]

BAD_PARTS = [
    "", "a;b", "../x", "-x", "x\n", "A", "a.b", "a" * 32, "a b", "a/b", "a_b", "$(id)", "`id`", "x'", "ｘ",
    "x\x00", "*", "a*", "?", "--force", None, 7, ["x"], True,
]  # fmt: skip


@pytest.fixture
def configure_loader_modules(run_all):
    return {disk: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A fake /dev (with /dev/xencluster) and /sys; returns (dev, sys)."""
    dev, sys_root = tmp_path / "dev", tmp_path / "sys"
    (dev / "xencluster").mkdir(parents=True)
    (sys_root / "block").mkdir(parents=True)
    monkeypatch.setattr(disk, "DEV_ROOT", str(dev / "xencluster"))
    monkeypatch.setattr(disk, "SYS_ROOT", str(sys_root))
    return dev, sys_root


def add_lv(roots, name, kernel, vg="xcvg", uuid_prefix="LVM-"):
    """dm-N of LV vg/name, linked as udev links it: /dev/xencluster/<name> -> ../dm-N."""
    dev, sys_root = roots
    device = sys_root / "devices" / "virtual" / "block" / kernel
    (device / "dm").mkdir(parents=True)
    (device / "dm" / "name").write_text(f"{vg}-{name.replace('-', '--')}\n")
    (device / "dm" / "uuid").write_text(f"{uuid_prefix}abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCDEF01\n")
    (sys_root / "block" / kernel).symlink_to(os.path.relpath(device, sys_root / "block"))
    (dev / "xencluster" / name).symlink_to(f"../{kernel}")


def add_sd(roots, name, kernel, iscsi=True, host=2, sid=1):
    """sdX of a SCSI LUN, under an iSCSI session (or a plain SCSI HBA), linked as udev links it."""
    dev, sys_root = roots
    hctl = f"{host}:0:0:0"
    parent = sys_root / "devices" / "platform" / f"host{host}"
    if iscsi:
        parent = parent / f"session{sid}"
    lun = parent / f"target{host}:0:0" / hctl
    (lun / "block" / kernel).mkdir(parents=True)
    (sys_root / "block" / kernel).symlink_to(os.path.relpath(lun / "block" / kernel, sys_root / "block"))
    (lun / "block" / kernel / "device").symlink_to("../..")
    (dev / "xencluster" / name).symlink_to(f"../{kernel}")


# --- leg ids and paths ---------------------------------------------------------------


def test_leg_id_and_path():
    assert disk.leg_id("web1", "disk0", "node1") == LEG
    assert disk.leg_path("web1", "disk0", "node1") == "/dev/xencluster/web1.disk0.node1"
    assert disk.leg_id("a", "0", "n-1") == "a.0.n-1"
    longest = "a" * 31
    assert disk.leg_id(longest, longest, longest) == ".".join([longest] * 3)


@pytest.mark.parametrize("bad", BAD_PARTS)
@pytest.mark.parametrize("position", ["guest", "disk", "node"])
def test_leg_id_refuses_bad_parts_and_names_them(bad, position):
    parts = {"guest": "web1", "disk": "disk0", "node": "node1", position: bad}
    for fun in (disk.leg_id, disk.leg_path, disk.resolve):
        with pytest.raises(SaltInvocationError, match=f"invalid {position} name"):
            fun(parts["guest"], parts["disk"], parts["node"])


def test_numbers_from_the_command_line_are_refused_not_converted():
    # Salt's CLI turns `007` into 7: a silent different leg id. Refuse it.
    with pytest.raises(SaltInvocationError, match="quote numbers"):
        disk.leg_id("web1", 0, "node1")


def test_the_leg_id_is_a_valid_lvm_name_and_lio_serial():
    from saltext.xencluster.modules import xencluster_lio as lio
    from saltext.xencluster.modules import xencluster_lvm as lvm

    leg = disk.leg_id("web-1", "disk0", "node1")
    assert lvm._check_lv(leg) == leg
    assert lio._check_serial(leg) == leg


# --- the rules -------------------------------------------------------------------------


def test_rules_text_has_the_exact_match_keys():
    text = disk.udev_rules()
    lines = text.splitlines()
    # The LV of the owner: LVM's properties, and the flags LVM's own rules honour.
    assert 'ENV{DM_UDEV_DISABLE_OTHER_RULES_FLAG}=="1", GOTO="xencluster_legs_end"' in lines
    assert 'ENV{DM_LV_LAYER}=="?*", GOTO="xencluster_legs_end"' in lines
    assert 'ENV{DM_UDEV_RULES_VSN}!="?*", GOTO="xencluster_legs_end"' in lines
    assert (
        'ENV{DM_VG_NAME}=="?*", ENV{DM_LV_NAME}=="?*.?*.?*", SYMLINK+="xencluster/$env{DM_LV_NAME}"'
    ) in lines
    # The LUN of a peer: scsi_id's VPD page 0x80 serial of a LIO disk.
    assert (
        'ENV{DEVTYPE}=="disk", ENV{ID_VENDOR}=="LIO-ORG", ENV{ID_SCSI_SERIAL}=="?*.?*.?*", '
        'SYMLINK+="xencluster/$env{ID_SCSI_SERIAL}"'
    ) in lines
    # Nothing but leg id characters ever becomes a link name.
    assert 'ENV{DM_LV_NAME}=="*[!a-z0-9.-]*", GOTO="xencluster_legs_end"' in lines
    assert 'ENV{ID_SCSI_SERIAL}=="*[!a-z0-9.-]*", GOTO="xencluster_legs_end"' in lines
    assert 'KERNEL=="dm-[0-9]*", GOTO="xencluster_legs_lv"' in lines
    assert 'KERNEL=="sd*", GOTO="xencluster_legs_iscsi"' in lines
    assert 'ACTION!="add|change", GOTO="xencluster_legs_end"' in lines


def test_rules_text_is_static_and_consistent():
    text = disk.udev_rules()
    assert text == disk.UDEV_RULES and text.endswith("\n")
    assert "node1" not in text and "web1" not in text  # nothing per leg
    gotos = set(re.findall(r'GOTO="([a-z_]+)"', text))
    labels = set(re.findall(r'LABEL="([a-z_]+)"', text))
    assert gotos <= labels and labels == {"xencluster_legs_lv", "xencluster_legs_iscsi", "xencluster_legs_end"}
    assert text.count("SYMLINK+=") == 2
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.count('"') % 2 == 0, line


def test_rules_file_runs_after_the_rules_that_set_its_properties():
    name = os.path.basename(disk.RULES_FILE)
    assert disk.RULES_FILE == "/etc/udev/rules.d/61-xencluster-legs.rules"
    for earlier in ("10-dm.rules", "11-dm-lvm.rules", "13-dm-disk.rules", "55-dm.rules", "56-lvm.rules",
                    "60-persistent-storage-dm.rules", "60-persistent-storage.rules"):  # fmt: skip
        assert sorted([earlier, name])[0] == earlier


@pytest.fixture
def rules_file(tmp_path, monkeypatch):
    path = tmp_path / "etc" / "udev" / "rules.d" / "61-xencluster-legs.rules"
    monkeypatch.setattr(disk, "RULES_FILE", str(path))
    return path


def udevadm_ok(run_all):
    run_all.outputs["udevadm"] = ""
    return run_all


def test_install_rules_writes_reloads_triggers_settles(rules_file, run_all):
    udevadm_ok(run_all)
    assert disk.install_rules() == {"changed": True, "path": str(rules_file)}
    assert rules_file.read_text() == disk.UDEV_RULES
    assert oct(rules_file.stat().st_mode & 0o777) == "0o644"
    assert run_all.calls == [
        ["udevadm", "control", "--reload"],
        ["udevadm", "trigger", "--action=change", "--subsystem-match=block"],
        SETTLE,
    ]
    assert os.listdir(rules_file.parent) == [rules_file.name]  # no temporary file left


def test_install_rules_twice_writes_and_runs_nothing_the_second_time(rules_file, run_all):
    udevadm_ok(run_all)
    disk.install_rules()
    run_all.calls.clear()
    before = rules_file.stat().st_mtime_ns, rules_file.stat().st_ino
    assert disk.install_rules() == {"changed": False, "path": str(rules_file)}
    assert run_all.calls == []
    assert (rules_file.stat().st_mtime_ns, rules_file.stat().st_ino) == before


def test_install_rules_replaces_a_different_file(rules_file, run_all):
    udevadm_ok(run_all)
    rules_file.parent.mkdir(parents=True)
    rules_file.write_text("# old\n")
    rules_file.chmod(0o600)
    assert disk.install_rules()["changed"] is True
    assert rules_file.read_text() == disk.UDEV_RULES
    assert rules_file.stat().st_mode & 0o777 == 0o644


def test_install_rules_test_mode_predicts_without_writing(rules_file, run_all):
    assert disk.install_rules(test=True) == {"changed": True, "path": str(rules_file)}
    assert not rules_file.exists() and run_all.calls == []
    rules_file.parent.mkdir(parents=True)
    rules_file.write_text(disk.UDEV_RULES)
    assert disk.install_rules(test=True) == {"changed": False, "path": str(rules_file)}
    assert run_all.calls == []


def test_install_rules_udevadm_failure_raises_with_stderr(rules_file, run_all):
    run_all.outputs["udevadm"] = {"retcode": 2, "stderr": "Failed to send reload request: No such file"}
    with pytest.raises(CommandExecutionError, match="udevadm control --reload failed .*No such file"):
        disk.install_rules()


# --- links, resolve, wait_for -------------------------------------------------------------


def test_links_from_dev_and_sysfs(roots, run_all):
    dev, _ = roots
    add_lv(roots, LEG, "dm-3")
    add_sd(roots, "web1.disk0.node2", "sdb", sid=4)
    add_sd(roots, "db.disk1.node3", "sdc", iscsi=False, host=0)  # a SCSI disk, but no iSCSI session
    add_lv(roots, "db.disk1.node1", "dm-4", uuid_prefix="CRYPT-")  # device-mapper, but no LV
    (dev / "xencluster" / "stale.disk0.node9").symlink_to("../sdz")  # no such device in sysfs
    (dev / "xencluster" / "odd.disk0.node9").symlink_to("/tmp/elsewhere/dm-3")  # not into /dev
    (dev / "xencluster" / "not-a-link").write_text("")
    got = disk.links()
    xc = str(dev / "xencluster")
    assert got[LEG] == {"path": f"{xc}/{LEG}", "target": str(dev / "dm-3"), "kind": "lv", "device": "dm-3"}
    assert got["web1.disk0.node2"] == {
        "path": f"{xc}/web1.disk0.node2", "target": str(dev / "sdb"), "kind": "iscsi", "device": "sdb",
    }  # fmt: skip
    assert got["db.disk1.node3"]["kind"] == "unknown"
    assert got["db.disk1.node1"]["kind"] == "unknown"
    assert got["stale.disk0.node9"]["kind"] == "unknown"
    assert got["odd.disk0.node9"]["kind"] == "unknown"
    assert "not-a-link" not in got
    assert run_all.calls == []  # sysfs and /dev only


def test_links_without_the_directory_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "DEV_ROOT", str(tmp_path / "nothing"))
    assert disk.links() == {}


def test_resolve(roots, run_all):
    dev, _ = roots
    add_lv(roots, LEG, "dm-0")
    add_sd(roots, "web1.disk0.node2", "sdd")
    assert disk.resolve("web1", "disk0", "node1")["kind"] == "lv"
    peer = disk.resolve("web1", "disk0", "node2")
    assert peer == {
        "path": str(dev / "xencluster" / "web1.disk0.node2"), "target": str(dev / "sdd"), "kind": "iscsi",
        "device": "sdd",
    }  # fmt: skip
    assert peer == disk.links()["web1.disk0.node2"]
    assert run_all.calls == []


def test_resolve_of_a_missing_leg_says_what_to_check(roots):
    with pytest.raises(CommandExecutionError) as exc:
        disk.resolve("web1", "disk0", "node2")
    msg = str(exc.value)
    assert "leg web1.disk0.node2 has no stable path on this node" in msg
    assert "is the LV present / the LUN logged in?" in msg


def test_the_stable_path_is_the_same_on_owner_and_peer(roots):
    """Same leg id, an LV on one node and a LUN on the other: one path."""
    add_lv(roots, LEG, "dm-1")
    owner = disk.resolve("web1", "disk0", "node1")
    os.unlink(owner["path"])
    add_sd(roots, LEG, "sde")
    peer = disk.resolve("web1", "disk0", "node1")
    assert owner["path"] == peer["path"] == disk.leg_path("web1", "disk0", "node1")
    assert (owner["kind"], peer["kind"]) == ("lv", "iscsi")


def test_wait_for_settles_once_then_polls_sysfs(roots, run_all, monkeypatch):
    udevadm_ok(run_all)
    sleeps = []

    def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:  # the LUN appears after a re-login
            add_sd(roots, LEG, "sdf")

    monkeypatch.setattr(disk.time, "sleep", fake_sleep)
    got = disk.wait_for("web1", "disk0", "node1", timeout=30)
    assert got["kind"] == "iscsi" and got["device"] == "sdf"
    assert run_all.calls == [["udevadm", "settle", "--timeout=30"]]
    assert len(sleeps) == 3


def test_wait_for_an_existing_link_returns_at_once(roots, run_all, monkeypatch):
    udevadm_ok(run_all)
    add_lv(roots, LEG, "dm-2")
    monkeypatch.setattr(disk.time, "sleep", lambda s: pytest.fail("no poll needed"))
    assert disk.wait_for("web1", "disk0", "node1")["kind"] == "lv"
    assert run_all.commands() == ["udevadm"]


def test_wait_for_times_out(roots, run_all, monkeypatch):
    run_all.outputs["udevadm"] = {"retcode": 1, "stderr": "Timed out for waiting the udev queue being empty."}
    clock = iter(range(0, 1000, 1))
    monkeypatch.setattr(disk.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(disk.time, "sleep", lambda s: None)
    with pytest.raises(CommandExecutionError, match=r"no stable path on this node after 5 s.*udevadm settle: Timed out"):
        disk.wait_for("web1", "disk0", "node1", timeout=5)


@pytest.mark.parametrize("bad", [0, -1, 601, "x", "1;reboot", True, None, [1]])
def test_wait_for_refuses_bad_timeouts(roots, run_all, bad):
    with pytest.raises(SaltInvocationError, match="timeout"):
        disk.wait_for("web1", "disk0", "node1", timeout=bad)
    assert run_all.calls == []


# --- the loader ------------------------------------------------------------------------------


def test_virtual(monkeypatch):
    monkeypatch.setattr(disk.salt.utils.platform, "is_linux", lambda: True)
    monkeypatch.setattr(disk.salt.utils.path, "which", lambda name: None)
    ok, reason = disk.__virtual__()
    assert ok is False and "udevadm" in reason
    monkeypatch.setattr(disk.salt.utils.path, "which", lambda name: f"/usr/bin/{name}")
    assert disk.__virtual__() == "xencluster_disk"
    monkeypatch.setattr(disk.salt.utils.platform, "is_linux", lambda: False)
    ok, reason = disk.__virtual__()
    assert ok is False and "Linux" in reason


def test_every_public_function_has_a_cli_example():
    for name in ("leg_id", "leg_path", "udev_rules", "install_rules", "links", "resolve", "wait_for"):
        assert "CLI Example:" in getattr(disk, name).__doc__, name
