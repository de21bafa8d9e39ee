"""xencluster_backup against the real tools, on loop devices only.

``test_backup_prune_restore_with_real_tools`` runs the module with a real
``cmd.run_all`` (every command really runs: mdadm, losetup, blkid, mount,
rsync, umount, mkfs) on a leg that is a sparse file with an md 1.2
superblock and ext4 inside it, while a "guest" keeps that filesystem mounted
and writes to it. Only LVM is stood in for: the kernels this was written on
have no device-mapper, so the "snapshot" is a point-in-time copy of the leg
file on its own loop device (``LoopLvm``), which is what an LVM snapshot of
a busy leg shows: a crash-consistent image whose newest metadata is only in
the journal.

``test_backup_with_real_lvm`` is the same with real LVM through
``salt-call --local`` (a VG on a loop device, seen by nothing else), and runs
only where device-mapper works (skipped otherwise, e.g. in a container).

Both need root; everything they create is removed at the end, also on failure.
"""

import datetime
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from xc_helpers import ROOT
from xc_helpers import salt_call

from saltext.xencluster.modules import xencluster_backup as backup

MiB = 1024**2
LEG_SIZE = 256 * MiB
TOOLS = ("mdadm", "rsync", "losetup", "blkid", "mount", "umount", "mkfs.ext4", "cp")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mount)"),
    pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="no loop devices"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (mdadm, rsync, e2fsprogs)"
    ),
]


def _md_superblock():
    path = ROOT / "tests" / "unit" / "data" / "backup" / "md_superblock.py"
    spec = importlib.util.spec_from_file_location("md_superblock", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mdsb = _md_superblock()


def sh(*argv, check=True):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed (rc {proc.returncode}): {proc.stderr}")
    return proc.stdout.strip()


def gone(dev, timeout=5.0):
    """A loop device with autoclear set goes when its last user does (maybe not at once)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/sys/block/{os.path.basename(dev)}/loop") and time.monotonic() < deadline:
        time.sleep(0.1)
    return not os.path.exists(f"/sys/block/{os.path.basename(dev)}/loop")


def real_run_all(argv, python_shell=None, **_kwargs):
    """What cmd.run_all does with an argument list: run it, no shell."""
    assert python_shell is False and isinstance(argv, list), argv
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL)
    return {"pid": 0, "retcode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


class Host:
    """Every loop device and mount the test makes, released in reverse order at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.loops, self.mounts = [], []

    def loop(self, img, offset=0, size=None):
        argv = ["losetup", "--find", "--show"]
        if offset or size:
            argv += ["--offset", offset, "--sizelimit", size]
        dev = sh(*argv, "--", img)
        self.loops.append(dev)
        return dev

    def detach(self, dev):
        sh("losetup", "--detach", dev)
        self.loops.remove(dev)

    def mount(self, dev, target, options="nodev,nosuid,noexec"):
        target.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "ext4", "-o", options, "--", dev, target)
        self.mounts.append(str(target))

    def umount(self, target):
        sh("umount", "--", target)
        self.mounts.remove(str(target))

    def release(self):
        problems = []
        for target in reversed(self.mounts):
            if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
                problems.append(f"umount {target}")
        # the module's own loop devices are on files under tmp: find them by their backing files
        listed = sh("losetup", "--list", "--json", "--output", "NAME,BACK-FILE", check=False)
        for dev in json.loads(listed or '{"loopdevices": []}')["loopdevices"]:
            back = (dev.get("back-file") or "").split(" (deleted)")[0]
            if back.startswith(str(self.tmp)) and dev["name"] not in self.loops:
                self.loops.append(dev["name"])
        for dev in reversed(self.loops):
            subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)
            if not gone(dev):
                problems.append(f"losetup --detach {dev}")
        return problems

    def ours(self):
        """Loop devices backed by files under tmp that are still attached."""
        listed = json.loads(sh("losetup", "--list", "--json", "--output", "NAME,BACK-FILE") or '{"loopdevices": []}')
        return [d["name"] for d in listed["loopdevices"] if (d.get("back-file") or "").startswith(str(self.tmp))]


class LoopLvm:
    """Stands in for xencluster_lvm on a host without device-mapper.

    A leg is a file on a loop device; a "snapshot" is a sparse copy of the
    leg file made at that instant, on a loop device of its own, removed with
    it. ``full`` makes the next usage check report an overflowed snapshot.
    """

    def __init__(self, host, vg):
        self.host, self.vg = host, vg
        self.legs, self.snaps = {}, {}
        self.full = False
        self.calls = []

    def _lv(self, name, path, origin=None):
        return {"vg": self.vg, "name": name, "path": path, "size": LEG_SIZE, "origin": origin,
                "attr": "swi-a-s---" if origin else "-wi-a-----", "active": True, "open": False}  # fmt: skip

    def report(self):
        lvs = {f"{self.vg}/{n}": self._lv(n, dev) for n, (dev, _img) in self.legs.items()}
        lvs.update({f"{self.vg}/{n}": self._lv(n, s["dev"], s["origin"]) for n, s in self.snaps.items()})
        vgs = {self.vg: {"vg_free": 4 * 1024**3, "vg_extent_size": 4 * MiB}}
        return {"pvs": {}, "vgs": vgs, "lvs": lvs}

    def snapshot_create(self, vg, origin, name, size, tags=None):
        self.calls.append(("snapshot_create", vg, origin, name, size, tuple(tags or ())))
        img = self.host.tmp / f"{name}.img"
        sh("cp", "--sparse=always", self.legs[origin][1], img)
        dev = sh("losetup", "--find", "--show", "--", img)
        self.snaps[name] = {"dev": dev, "img": img, "origin": origin}
        return self._lv(name, dev, origin)

    def snapshot_usage(self, vg, name):
        self.calls.append(("snapshot_usage", vg, name))
        assert name in self.snaps, "usage asked after the snapshot went"
        percent = 100.0 if self.full else 3.5
        return {"origin": self.snaps[name]["origin"], "size": LEG_SIZE, "usage_percent": percent,
                "full": self.full, "comment": None}  # fmt: skip

    def snapshot_remove(self, vg, name):
        self.calls.append(("snapshot_remove", vg, name))
        snap = self.snaps[name]
        holders = os.listdir(f"/sys/block/{os.path.basename(snap['dev'])}/holders")
        sh("losetup", "--detach", snap["dev"])  # LVM refuses an open LV; here: nothing may hold it
        assert not holders
        if os.path.exists(f"/sys/block/{os.path.basename(snap['dev'])}/loop"):
            raise AssertionError(f"snapshot {name} is still in use")
        os.unlink(snap["img"])
        del self.snaps[name]
        return {"removed": True, "lv": f"{vg}/{name}", "origin": snap["origin"]}


def make_leg(host, name, dev_number, fs=True):
    """A leg file with lab node2's md superblock; ext4 in its data area when ``fs``."""
    img = host.tmp / f"{name}.img"
    with open(img, "wb") as fh:
        fh.truncate(LEG_SIZE)
    layout = mdsb.write(img, **mdsb.lab_fields(dev_number))
    if fs:
        data = host.loop(img, layout["data_offset"], layout["size"])
        sh("mkfs.ext4", "-q", "-L", "root", data)
        host.detach(data)
    return img, layout


def tree(root):
    """{relative path: (kind, content or target, uid, xattr)} of a directory, lost+found left out."""
    out = {}
    for path in sorted(pathlib.Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("lost+found"):
            continue
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), st.st_uid)
        elif path.is_dir():
            out[rel] = ("dir", None, st.st_uid)
        else:
            xattrs = {a: os.getxattr(path, a) for a in os.listxattr(path) if a.startswith("user.")}
            out[rel] = ("file", path.read_bytes(), st.st_uid, xattrs)
    return out


def write_guest_files(root):
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("web1\n")
    (root / "srv").mkdir()
    for i in range(20):
        (root / "srv" / f"page{i:02d}.html").write_text(f"<p>{i}</p>\n" * 200)
    os.link(root / "srv" / "page00.html", root / "srv" / "index.html")
    os.symlink("page01.html", root / "srv" / "latest.html")
    os.setxattr(root / "srv" / "page02.html", "user.xc", b"kept")
    os.chown(root / "srv" / "page03.html", 1234, 5678)


def fsync_all(root):
    """What a careful guest does (a database, a mail server): fsync its files.

    ext4 then has the data on disk and the metadata committed to its journal,
    but not yet written in place (that happens later, at a checkpoint): a
    snapshot taken now shows the files only once the journal is replayed.
    Without the fsync a snapshot may show them empty (delayed allocation),
    as a power cut would.
    """
    for path in sorted(pathlib.Path(root).rglob("*"), reverse=True):
        if path.is_symlink() or path.name == "lost+found":
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@pytest.fixture
def configure_loader_modules():
    return {backup: {"__salt__": {"cmd.run_all": real_run_all}, "__context__": {}}}


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = Host(tmp_path)
    monkeypatch.setattr(backup, "MOUNT_BASE", str(tmp_path / "run"))
    # this host's own udev md rule (unmasked on a CI machine) is not what these tests are about:
    # the check has unit tests of its own (test_xencluster_backup_module.py)
    monkeypatch.setattr(backup, "UDEV_RULES_LIB", ())
    try:
        yield h
    finally:
        problems = h.release()
        leftovers = h.ours()
        assert not problems and not leftovers, (problems, leftovers)


def test_backup_prune_restore_with_real_tools(host, monkeypatch):
    started = time.monotonic()
    lvm = LoopLvm(host, "xct")
    for fun in ("report", "snapshot_create", "snapshot_usage", "snapshot_remove"):
        monkeypatch.setitem(backup.__salt__, f"xencluster_lvm.{fun}", getattr(lvm, fun))
    monkeypatch.setitem(backup.__salt__, "xencluster_lvm.parse_size", lambda s: int(s))
    clock = {"now": datetime.datetime(2026, 11, 24, 1, 0, tzinfo=datetime.timezone.utc)}
    monkeypatch.setattr(backup, "_now", lambda: clock["now"])

    # the backup volume: its own ext4, so the backup directory is not on the root filesystem
    vol = host.tmp / "backupvol.img"
    with open(vol, "wb") as fh:
        fh.truncate(256 * MiB)
    vol_dev = host.loop(vol)
    sh("mkfs.ext4", "-q", vol_dev)
    host.mount(vol_dev, host.tmp / "vol")
    dest = host.tmp / "vol" / "web1" / "root"
    dest.mkdir(parents=True)

    # leg a, with a "guest" that keeps its filesystem mounted and busy
    img, layout = make_leg(host, "web1.root.node1", 0)
    lvm.legs["web1.root.node1"] = (host.loop(img), img)
    guest = host.tmp / "guest"
    host.mount(host.loop(img, layout["data_offset"], layout["size"]), guest)
    write_guest_files(guest)
    fsync_all(guest)

    first = backup.backup_leg("xct", "web1.root.node1", str(dest), fstype="ext4")
    assert first["result"] is True, first
    assert first["md"]["data_offset"] == layout["data_offset"] and first["md"]["size"] == layout["size"]
    assert first["filesystem"]["type"] == "ext4" and first["snapshot"]["name"] == "web1.root.node1-xcbk"
    assert [c[0] for c in lvm.calls] == ["snapshot_create", "snapshot_usage", "snapshot_remove"]
    one = dest / first["backup"]
    assert tree(one) == tree(guest)  # committed to the journal, not in place: there through the replay
    assert one.joinpath("srv", "index.html").stat().st_ino == one.joinpath("srv", "page00.html").stat().st_ino
    assert os.readlink(dest / "latest") == first["backup"]

    # the guest changes one file and adds one; the second backup moves only those
    (guest / "srv" / "page05.html").write_text("<p>changed</p>\n")
    (guest / "srv" / "new.html").write_text("<p>new</p>\n")
    fsync_all(guest)
    clock["now"] += datetime.timedelta(days=1)
    second = backup.backup_leg("xct", "web1.root.node1", str(dest), fstype="ext4")
    assert second["result"] is True, second
    assert second["link_dest"] == first["backup"]
    assert second["rsync"]["transferred"] == 2, second["rsync"]
    two = dest / second["backup"]
    assert tree(two) == tree(guest)
    assert two.joinpath("srv", "page10.html").stat().st_ino == one.joinpath("srv", "page10.html").stat().st_ino
    assert two.joinpath("srv", "page05.html").stat().st_ino != one.joinpath("srv", "page05.html").stat().st_ino

    # a snapshot that overflowed: no backup, and everything released all the same
    lvm.full = True
    clock["now"] += datetime.timedelta(days=1)
    third = backup.backup_leg("xct", "web1.root.node1", str(dest), fstype="ext4")
    assert third["result"] is False and "filled up during the backup" in third["error"]
    assert all(step["ok"] for step in third["cleanup"]) and lvm.snaps == {}
    assert [b["name"] for b in backup.list_backups(str(dest))["backups"]] == [second["backup"], first["backup"]]
    assert os.readlink(dest / "latest") == second["backup"]
    lvm.full = False

    # retention: keep one
    pruned = backup.prune(str(dest), keep=1)
    assert pruned["deleted"] == [first["backup"]]
    assert sorted(os.listdir(dest)) == sorted([".lock", "latest", second["backup"], f"{second['backup']}.json"])

    # restore the latest into leg b: mirrored (md superblock) but no filesystem yet
    host.umount(guest)
    target, tl = make_leg(host, "web1.root.node2", 1, fs=False)
    lvm.legs["web1.root.node2"] = (host.loop(target), target)
    refused = backup.restore_leg("xct", "web1.root.node2", str(dest))
    assert refused["result"] is False and "pass mkfs=True" in refused["error"]
    restored = backup.restore_leg("xct", "web1.root.node2", str(dest), mkfs=True)
    assert restored["result"] is True, restored
    check = host.loop(target, tl["data_offset"], tl["size"])
    assert sh("blkid", "--probe", "--match-tag", "UUID", "--output", "value", check) == first["filesystem"]["uuid"]
    host.mount(check, host.tmp / "check", "ro,nodev,nosuid,noexec")
    assert tree(host.tmp / "check") == tree(two)
    host.umount(host.tmp / "check")

    # and the other leg of the pair is zeroed so that md resyncs it from the restored one
    gone = backup.invalidate_leg("xct", "web1.root.node1", first["md"]["array_uuid"])
    assert gone["zeroed"] is True
    assert subprocess.run(["mdadm", "--examine", lvm.legs["web1.root.node1"][0]], capture_output=True).returncode == 1

    assert not os.listdir(backup.MOUNT_BASE)
    assert time.monotonic() - started < 60


# --- with real LVM, where device-mapper works --------------------------------------------------


def _dm_works():
    if os.geteuid() != 0 or shutil.which("dmsetup") is None:
        return False
    return subprocess.run(["dmsetup", "version"], capture_output=True, check=False).returncode == 0


@pytest.fixture
def loop_vg(tmp_path):
    """A VG on one 512 MiB loop device, seen by nothing else; activation on (snapshots need it)."""
    vg = f"xcb{uuid.uuid4().hex[:8]}"
    img = tmp_path / "pv.img"
    with open(img, "wb") as fh:
        fh.truncate(512 * MiB)
    dev = sh("losetup", "--find", "--show", img)
    conf = tmp_path / "lvm"
    conf.mkdir()
    (conf / "lvm.conf").write_text(
        "devices {\n"
        f'  filter = [ "a|^{dev}$|", "r|.*|" ]\n  global_filter = [ "a|^{dev}$|", "r|.*|" ]\n'
        "  use_devicesfile = 0\n  obtain_device_list_from_udev = 0\n}\n"
        "activation { udev_sync = 0\n udev_rules = 0 }\n"
        "backup { backup = 0\n archive = 0 }\n"
    )
    env = dict(os.environ, LVM_SYSTEM_DIR=str(conf), LVM_SUPPRESS_FD_WARNINGS="1")
    try:
        subprocess.run(["vgcreate", vg, dev], check=True, capture_output=True, env=env, timeout=60)
        yield vg, {"LVM_SYSTEM_DIR": str(conf)}, env
    finally:
        subprocess.run(["vgremove", "--force", vg], capture_output=True, env=env, check=False, timeout=60)
        subprocess.run(["pvremove", dev], capture_output=True, env=env, check=False, timeout=60)
        subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)


@pytest.mark.skipif(not _dm_works(), reason="device-mapper is not available (LVM snapshots need it)")
def test_backup_with_real_lvm(loop_vg, local_minion_config, tmp_path):
    vg, salt_env, env = loop_vg
    conf, _root = local_minion_config
    minion = json.loads((conf / "minion").read_text())
    minion["disable_modules"] = ["xencluster_lio"]  # no LIO here: snapshot_remove skips its export check
    (conf / "minion").write_text(json.dumps(minion))
    h = Host(tmp_path)
    try:
        subprocess.run(["lvcreate", "--yes", "--name", "web1-root-a", "--size", f"{LEG_SIZE}b", vg],
                       check=True, capture_output=True, env=env, timeout=60)  # fmt: skip
        leg = f"/dev/{vg}/web1-root-a"
        layout = mdsb.write(leg, **mdsb.lab_fields(0))
        data = h.loop(leg, layout["data_offset"], layout["size"])
        sh("mkfs.ext4", "-q", data)
        h.mount(data, tmp_path / "guest")
        write_guest_files(tmp_path / "guest")
        fsync_all(tmp_path / "guest")
        dest = tmp_path / "dest"
        dest.mkdir()

        def call(*args):
            rc, out, err = salt_call(sys.executable, conf, *args, cwd=tmp_path, env=salt_env)
            assert out is not None, err
            return rc, out

        rc, res = call("xencluster_backup.backup_leg", vg, "web1-root-a", str(dest), "fstype=ext4",
                       "snapshot_size=64M", "allow_root_fs=True")  # fmt: skip
        assert rc == 0 and res["result"] is True, res
        assert res["snapshot"]["full"] is False and res["snapshot"]["usage_percent"] < 100
        assert tree(dest / res["backup"]) == tree(tmp_path / "guest")
        lvs = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", vg], capture_output=True, text=True,
                             env=env, check=True).stdout.split()  # fmt: skip
        assert lvs == ["web1-root-a"]  # the snapshot is gone
    finally:
        problems = h.release()
        subprocess.run(["lvremove", "--yes", f"{vg}/web1-root-a"], capture_output=True, env=env, check=False)
        assert not problems, problems


def _setup(host, monkeypatch, vol_size=256 * MiB):
    """LoopLvm in place of xencluster_lvm, a backup volume, a leg with a busy guest filesystem."""
    lvm = LoopLvm(host, "xct")
    for fun in ("report", "snapshot_create", "snapshot_usage", "snapshot_remove"):
        monkeypatch.setitem(backup.__salt__, f"xencluster_lvm.{fun}", getattr(lvm, fun))
    monkeypatch.setitem(backup.__salt__, "xencluster_lvm.parse_size", lambda s: int(s))
    vol = host.tmp / "backupvol.img"
    with open(vol, "wb") as fh:
        fh.truncate(vol_size)
    vol_dev = host.loop(vol)
    sh("mkfs.ext4", "-q", vol_dev)
    host.mount(vol_dev, host.tmp / "vol")
    dest = host.tmp / "vol" / "web1" / "root"
    dest.mkdir(parents=True)
    img, layout = make_leg(host, "web1.root.node1", 0)
    lvm.legs["web1.root.node1"] = (host.loop(img), img)
    guest = host.tmp / "guest"
    host.mount(host.loop(img, layout["data_offset"], layout["size"]), guest)
    write_guest_files(guest)
    return lvm, dest, guest


def test_a_copy_that_fails_releases_everything(host, monkeypatch):
    lvm, dest, guest = _setup(host, monkeypatch, vol_size=16 * MiB)
    with open(guest / "srv" / "big.bin", "wb") as fh:
        fh.write(os.urandom(24 * MiB))  # more than the backup volume holds
    fsync_all(guest)
    res = backup.backup_leg("xct", "web1.root.node1", str(dest), fstype="ext4")
    assert res["result"] is False and "No space left on device" in res["error"]
    assert [(c["step"], c["ok"]) for c in res["cleanup"]] == [
        ("umount", True), ("rmdir mount point", True), ("losetup --detach", True), ("snapshot_remove", True),
        ("remove partial copy", True),
    ]  # fmt: skip
    assert os.listdir(dest) == [".lock"] and lvm.snaps == {} and not os.listdir(backup.MOUNT_BASE)
    assert backup.__context__["retcode"] == 1


def test_a_busy_mount_is_reported_and_nothing_after_it_is_skipped(host, monkeypatch):
    """Someone enters the mounted snapshot during the copy: umount fails, and every later step says why."""
    lvm, dest, guest = _setup(host, monkeypatch)
    fsync_all(guest)
    holders = []
    usage = lvm.snapshot_usage

    def usage_and_intruder(vg, name):  # runs after rsync, while the snapshot is mounted
        (mountpoint,) = os.listdir(backup.MOUNT_BASE)
        holders.append(subprocess.Popen(["sleep", "60"], cwd=os.path.join(backup.MOUNT_BASE, mountpoint)))
        return usage(vg, name)

    monkeypatch.setitem(backup.__salt__, "xencluster_lvm.snapshot_usage", usage_and_intruder)
    try:
        res = backup.backup_leg("xct", "web1.root.node1", str(dest), fstype="ext4")
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
    steps = {c["step"]: c for c in res["cleanup"]}
    assert list(steps) == ["umount", "rmdir mount point", "losetup --detach", "snapshot_remove"]
    assert "target is busy" in steps["umount"]["error"]
    assert "Device or resource busy" in steps["rmdir mount point"]["error"]
    assert "is still attached" in steps["losetup --detach"]["error"]  # losetup itself said rc 0
    assert "still in use" in steps["snapshot_remove"]["error"]
    assert res["result"] is False and res["error"].startswith("cleanup incomplete: umount: ")
    assert res["backup"] is not None  # the copy was complete: kept, the leftovers reported
    # what the failed cleanup left, released by hand now that nobody holds it: once the mount
    # goes, the autoclear that both detach attempts set frees the two loop devices by itself
    (mountpoint,) = os.listdir(backup.MOUNT_BASE)
    sh("umount", os.path.join(backup.MOUNT_BASE, mountpoint))
    os.rmdir(os.path.join(backup.MOUNT_BASE, mountpoint))
    snap = lvm.snaps.pop(res["snapshot"]["name"])
    assert gone(snap["dev"])
    os.unlink(snap["img"])
