"""Record the real tool output that xencluster_backup parses (see README.md here).

Run as root from the checkout, with a Python that imports salt:

    .venv/bin/python tests/unit/data/backup/record.py

Needs mdadm, rsync, util-linux (losetup, blkid, mount), e2fsprogs, xfsprogs,
lvm2 and loop devices; no device-mapper, no md driver. Everything lives on sparse files in a
fresh /tmp directory; every loop device and mount is released at the end,
also on failure. The argv lists come from the module itself, so a recording
matches what it runs. md superblocks are written by md_superblock.py (this
host's kernel has no md driver); the first check below makes sure mdadm reads
them exactly as it read the lab's real ones.
"""

import datetime
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[3]
MiB = 1024**2


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bk = _load("xencluster_backup", ROOT / "_modules" / "xencluster_backup.py")
mdsb = _load("md_superblock", HERE / "md_superblock.py")
META = {"commands": {}, "evidence": {}}
LOOPS, MOUNTS = [], []


def run(key, argv, keep=True, check=True, env=None, **kw):
    """Run argv; stdout -> <key>.out (keep), argv/rc/stderr -> meta.json."""
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1", **(env or {}))
    proc = subprocess.run(argv, capture_output=True, check=False, env=env, stdin=subprocess.DEVNULL, **kw)
    if key:
        if keep:
            (HERE / f"{key}.out").write_bytes(proc.stdout)
        META["commands"][key] = {"argv": [str(a) for a in argv], "rc": proc.returncode,
                                 "stderr": proc.stderr.decode(errors="replace")}  # fmt: skip
        if not keep:
            META["commands"][key]["stdout"] = proc.stdout.decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: rc {proc.returncode}: {proc.stderr!r}")
    return proc


def sparse(path, size):
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def loop(path, offset=0, size=None, read_only=False, key=None):
    argv = [*bk.LOSETUP_ATTACH, *(["--read-only"] if read_only else [])]
    if offset or size:
        argv += ["--offset", str(offset), "--sizelimit", str(size)]
    dev = run(key, [*argv, "--", str(path)]).stdout.decode().strip()
    LOOPS.append(dev)
    return dev


def detach(dev, key=None):
    run(key, [*bk.LOSETUP_DETACH, dev])
    LOOPS.remove(dev)


def mount(fstype, options, dev, target, key=None, check=True):
    proc = run(key, ["mount", "-t", bk.SUPPORTED[fstype], "-o", options, "--", dev, str(target)], check=check)
    if proc.returncode == 0:
        MOUNTS.append(str(target))
    return proc


def umount(target, key=None, check=True):
    proc = run(key, ["umount", "--", str(target)], check=check)
    if proc.returncode == 0:
        MOUNTS.remove(str(target))
    return proc


def leg(work, name, image_size, fs=None, **md):
    """A leg image with an md superblock (lab layout) and ``fs`` made inside its data area."""
    img = sparse(work / f"{name}.img", image_size)
    layout = mdsb.write(img, **mdsb.lab_fields(md.pop("dev_number", 0), **md))
    if fs:
        dev = loop(img, layout["data_offset"], layout["size"])
        mkfs = {
            "ext2": ["mkfs.ext2", "-q"], "ext3": ["mkfs.ext3", "-q"], "ext4": ["mkfs.ext4", "-q"],
            "xfs": ["mkfs.xfs", "-q"], "swap": ["mkswap"],
            "LVM2_member": ["pvcreate", "-q", "--config", "devices{use_devicesfile=0} global{activation=0}"],
        }[fs]  # fmt: skip
        run(None, [*mkfs, dev])
        detach(dev)
    return img, layout


def check_superblock_writer(work):
    """mdadm --examine --export of the written lab leg0 == the lab's real recording."""
    img, _ = leg(work, "lab-leg0", 256 * MiB)
    dev = loop(img, read_only=True)
    run("examine.clean", [*bk.MDADM_EXAMINE, dev])
    out = run("examine_export.clean", ["mdadm", "--examine", "--export", dev]).stdout
    detach(dev)
    lab = (ROOT / "tests/recordings/md/lab-node2-clean/examine_export.leg0.out").read_bytes()
    assert out == lab, (out, lab)
    META["evidence"]["superblock_writer"] = (
        "mdadm --examine --export of the written leg0 is byte for byte "
        "tests/recordings/md/lab-node2-clean/examine_export.leg0.out (lab node2, real mdadm --create)"
    )


def md_variants(work):
    variants = {
        # the LV grew after the mirror was made: Avail Dev Size > Used Dev Size
        "grown": dict(data_size=522240 + 8192, size=522240),
        # a running guest's leg: resync_offset 0 -> State active, Resync Offset
        "active": dict(resync_offset=0, events=4711),
        # a leg being rebuilt: feature 0x2, Recovery Offset
        "recovering": dict(feature=mdsb.FEATURE_BITMAP | mdsb.FEATURE_RECOVERY, recovery_offset=131072),
        "spare": dict(roles=[0, mdsb.ROLE_SPARE], dev_number=1),
        # the partner (device 1) after this leg (device 0) failed: Array State ".A"
        "partner-failed-0": dict(roles=[mdsb.ROLE_FAULTY, 1], dev_number=1, events=57),
        "partner-ok": dict(dev_number=1),
        "badblocks": dict(feature=mdsb.FEATURE_BITMAP | mdsb.FEATURE_BAD_BLOCKS),
        "nobitmap": dict(feature=0, bitmap_offset=0),
    }
    for name, fields in variants.items():
        img, _ = leg(work, f"md-{name}", 256 * MiB + (8192 * 512 if name == "grown" else 0), **fields)
        dev = loop(img, read_only=True)
        run(f"examine.{name}", [*bk.MDADM_EXAMINE, dev])
        detach(dev)
    blank = loop(sparse(work / "blank.img", 64 * MiB), read_only=True)
    run("examine.blank", [*bk.MDADM_EXAMINE, blank], check=False)
    run("examine.missing", [*bk.MDADM_EXAMINE, "/dev/xencluster-missing/leg"], check=False)
    run("zero.blank", [*bk.MDADM_ZERO, blank], check=False)
    detach(blank)
    img, _ = leg(work, "md-zero", 64 * MiB, dev_number=1)
    dev = loop(img)
    run("zero.leg", [*bk.MDADM_ZERO, dev])
    run("examine.after-zero", [*bk.MDADM_EXAMINE, dev], check=False)
    detach(dev)


def blkid_variants(work):
    for fs, size in (("ext4", 256), ("ext3", 256), ("ext2", 256), ("xfs", 512), ("swap", 256),
                     ("LVM2_member", 256), (None, 256)):  # fmt: skip
        img, layout = leg(work, f"fs-{fs}", size * MiB, fs)
        dev = loop(img, layout["data_offset"], layout["size"], read_only=True, key=f"losetup.{fs}")
        run(f"blkid.{fs}", [*bk.BLKID_PROBE, "--", dev], check=False)
        detach(dev)


def populate(root, late=False):
    """A small tree: 30 files, a hard link, a symlink, an xattr, a sparse file, foreign ids.

    ``late=True`` changes only data/f05 (what a second backup has to move).
    """
    if late:
        (root / "data" / "f05").write_text("changed\n")
        return
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("web1\n")
    (root / "data").mkdir()
    for i in range(30):
        (root / "data" / f"f{i:02d}").write_text(f"file {i}\n" * 100)
    os.link(root / "data" / "f00", root / "data" / "hard")
    os.symlink("f01", root / "data" / "sym")
    os.setxattr(root / "data" / "f02", "user.xc", b"backup")
    with open(root / "data" / "sparse", "wb") as fh:
        fh.truncate(8 * MiB)
        fh.write(b"end")
    os.chown(root / "data" / "f03", 1234, 5678)


def rsync_runs(work):
    """The backup pipeline's own commands on an ext4 leg: two backups, then a restore."""
    img, layout = leg(work, "rsync-leg", 256 * MiB, "ext4")
    mnt, dest = work / "mnt", work / "dest"
    mnt.mkdir()
    dest.mkdir()
    for n, late in ((1, False), (2, True)):
        rw = loop(img, layout["data_offset"], layout["size"])
        mount("ext4", bk.MOUNT_OPTIONS[("ext4", "restore")], rw, mnt)
        populate(mnt, late)
        umount(mnt)
        detach(rw)
        ro = loop(img, layout["data_offset"], layout["size"], read_only=True)
        mount("ext4", bk.MOUNT_OPTIONS[("ext4", "skip")], ro, mnt, key=f"mount.backup{n}")
        link = [f"--link-dest={dest / 'b1'}"] if n == 2 else []
        run(f"rsync.backup{n}", [*bk.RSYNC, *link, f"{mnt}/", f"{dest / f'b{n}'}/"])
        umount(mnt, key=f"umount.backup{n}")
        detach(ro, key=f"losetup_detach.backup{n}")
    META["evidence"]["link_dest"] = {
        "links of unchanged data/f10 in b2": os.stat(dest / "b2" / "data" / "f10").st_nlink,
        "links of changed data/f05 in b2": os.stat(dest / "b2" / "data" / "f05").st_nlink,
    }
    # restore b1 into a fresh ext4 leg, then again over it (--delete)
    target, tl = leg(work, "restore-leg", 256 * MiB, "ext4", dev_number=1)
    rw = loop(target, tl["data_offset"], tl["size"])
    mount("ext4", bk.MOUNT_OPTIONS[("ext4", "restore")], rw, mnt)
    run("rsync.restore", [*bk.RSYNC, "--delete", f"{dest / 'b2'}/", f"{mnt}/"])
    (mnt / "data" / "extra").write_text("not in the backup\n")
    run("rsync.restore-again", [*bk.RSYNC, "--delete", f"{dest / 'b1'}/", f"{mnt}/"])
    umount(mnt)
    detach(rw)


def failures(work):
    """Real failures the cleanup tests replay: a busy umount, a detach of a free loop, a full dest."""
    img, layout = leg(work, "fail-leg", 256 * MiB, "ext4")
    mnt = work / "busy"
    mnt.mkdir()
    ro = loop(img, layout["data_offset"], layout["size"], read_only=True)
    mount("ext4", bk.MOUNT_OPTIONS[("ext4", "skip")], ro, mnt)
    holder = subprocess.Popen(["sleep", "30"], cwd=mnt)  # pylint: disable=consider-using-with
    try:
        run("umount.busy", ["umount", "--", str(mnt)], check=False)
        run("losetup_detach.busy", [*bk.LOSETUP_DETACH, ro], check=False)
        META["evidence"]["detach_while_mounted"] = run(
            None, ["losetup", "--list", "--json", "--output", "NAME,AUTOCLEAR", ro], check=False
        ).stdout.decode()
    finally:
        holder.kill()
        holder.wait()
    umount(mnt)
    if ro in LOOPS and os.path.exists(f"/sys/block/{os.path.basename(ro)}/loop"):
        detach(ro)
    elif ro in LOOPS:
        LOOPS.remove(ro)  # autoclear freed it when the mount went
    run("losetup_detach.free", [*bk.LOSETUP_DETACH, ro], check=False)
    run("losetup.missing", [*bk.LOSETUP_ATTACH, "--read-only", "--offset", "1048576", "--sizelimit",
        "267386880", "--", str(work / "missing.img")], check=False)  # fmt: skip
    # rsync into a destination that is too small
    small, big = work / "small", work / "big"
    small.mkdir()
    big.mkdir()
    sdev = loop(sparse(work / "small.img", 16 * MiB))
    run(None, ["mkfs.ext4", "-q", sdev])
    mount("ext4", "nodev,nosuid,noexec", sdev, small)
    with open(big / "blob", "wb") as fh:
        fh.write(os.urandom(24 * MiB))
    run("rsync.enospc", [*bk.RSYNC, f"{big}/", f"{small / 'b1'}/"], check=False)
    umount(small)
    detach(sdev)
    # a mount that needs journal recovery on a read-only device, without noload
    dirty = crash_image(work, "ext4")
    ro = loop(dirty, 2048 * 512, os.path.getsize(dirty) - 2048 * 512, read_only=True)
    mount("ext4", bk.MOUNT_OPTIONS[("ext4", "replay")], ro, mnt, key="mount.ro-device-dirty-journal", check=False)
    if str(mnt) in MOUNTS:
        umount(mnt)
    detach(ro)


def lvm_failures(work):
    """How lvcreate --snapshot and lvremove fail, with xencluster_lvm's argv shapes.

    An LVM of its own (LVM_SYSTEM_DIR: only this loop device, activation off,
    no backups), so the host's volumes are never seen.
    """
    dev = loop(sparse(work / "pv.img", 128 * MiB))
    conf = work / "lvm"
    conf.mkdir()
    (conf / "lvm.conf").write_text(
        "devices {\n"
        f'  filter = [ "a|^{dev}$|", "r|.*|" ]\n'
        f'  global_filter = [ "a|^{dev}$|", "r|.*|" ]\n'
        "  use_devicesfile = 0\n  obtain_device_list_from_udev = 0\n}\n"
        "global { activation = 0 }\nbackup { backup = 0\n archive = 0 }\n"
    )
    env = {"LVM_SYSTEM_DIR": str(conf)}
    try:
        run(None, ["pvcreate", "-q", dev], env=env)
        run(None, ["vgcreate", "-q", "xcrec", dev], env=env)
        run(None, ["lvcreate", "--yes", "--name", "web1-disk0-a", "--size", "33554432b", "--", "xcrec"], env=env)
        run("lvcreate.snapshot-no-dm", ["lvcreate", "--snapshot", "--name", "web1-disk0-a-xcbk", "--size",
            "8388608b", "--addtag", "xc-backup", "--", "xcrec/web1-disk0-a"], check=False, env=env)  # fmt: skip
        run("lvremove.missing", ["lvremove", "--yes", "--", "xcrec/web1-disk0-a-xcbk"], check=False, env=env)
    finally:
        run(None, ["vgremove", "--force", "xcrec"], check=False, env=env)
        run(None, ["pvremove", "-q", dev], check=False, env=env)
        detach(dev)


def crash_image(work, fs):
    """A copy of a leg taken while its filesystem was mounted and busy: as an LVM snapshot sees it."""
    size = 512 * MiB if fs == "xfs" else 256 * MiB
    img, layout = leg(work, f"live-{fs}", size, fs)
    mnt = work / f"live-{fs}"
    mnt.mkdir(exist_ok=True)
    rw = loop(img, layout["data_offset"], layout["size"])
    mount(fs, "nodev,nosuid,noexec" + (",nouuid" if fs == "xfs" else ""), rw, mnt)
    populate(mnt)
    run(None, ["sync"])
    (mnt / "late").mkdir()
    for i in range(20):
        (mnt / "late" / f"g{i:02d}").write_text(f"late {i}\n")
    if fs == "xfs":
        run(None, ["sync"])  # forces the xfs log; the metadata stays to be written in place
    else:
        time.sleep(7)  # past ext4's 5 s journal commit; the metadata is not yet checkpointed
    copy = work / f"crash-{fs}.img"
    run(None, ["cp", "--sparse=always", str(img), str(copy)])
    umount(mnt)
    detach(rw)
    return copy


def journal_evidence(work):
    """What each journal mode shows of a crash-consistent copy (the 20 files under late/)."""
    mnt = work / "jmnt"
    mnt.mkdir()
    for fs in ("ext4", "xfs"):
        crash = crash_image(work, fs)
        seen = {}
        for mode in ("skip", "replay"):
            copy = work / f"crash-{fs}-{mode}.img"
            run(None, ["cp", "--sparse=always", str(crash), str(copy)])
            dev = loop(copy, 2048 * 512, os.path.getsize(copy) - 2048 * 512, read_only=mode == "skip")
            mount(fs, bk.MOUNT_OPTIONS[(bk.SUPPORTED[fs], mode)], dev, mnt, key=f"mount.{fs}-{mode}")
            late = mnt / "late"
            seen[mode] = len(list(late.iterdir())) if late.is_dir() else "late/ missing"
            umount(mnt)
            detach(dev)
        META["evidence"][f"journal_{fs}_files_in_late"] = seen


def versions():
    def first(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]

    return [first(["mdadm", "--version"]), first(["rsync", "--version"]), first(["losetup", "--version"]),
            first(["blkid", "--version"]), first(["mkfs.xfs", "-V"])]  # fmt: skip


def main():
    if os.geteuid() != 0:
        sys.exit("record.py needs root (loop devices, mount)")
    for old in HERE.glob("*.out"):
        old.unlink()
    work = pathlib.Path(tempfile.mkdtemp(prefix="xc-backup-rec-", dir="/tmp"))
    META.update(host=os.uname().nodename, kernel=os.uname().release, tool_version=versions(),
                captured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    try:
        check_superblock_writer(work)
        md_variants(work)
        blkid_variants(work)
        rsync_runs(work)
        failures(work)
        lvm_failures(work)
        journal_evidence(work)
    finally:
        for target in reversed(MOUNTS):
            subprocess.run(["umount", target], check=False)
        for dev in reversed(LOOPS):
            subprocess.run(["losetup", "--detach", dev], check=False)
        shutil.rmtree(work, ignore_errors=True)
    (HERE / "meta.json").write_text(json.dumps(META, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
