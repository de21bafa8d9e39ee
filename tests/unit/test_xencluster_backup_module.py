"""xencluster_backup execution module: backup of a leg through a snapshot, retention, restore.

Every command answers with real output: ``tests/unit/data/backup`` (mdadm,
blkid, losetup, mount, umount, rsync and LVM failures recorded on a Debian 12
host, see its README.md) and ``tests/recordings/lvm/lab-node1-snapshots``
(``lvs`` of real snapshots on a lab dom0). ``xencluster_lvm`` is the real
module, loaded next to ``xencluster_backup`` on the same fake ``cmd.run_all``,
so snapshot creation, usage and removal go through its real argv and parsing.

The one derived input: ``lvs`` of the lab VG *before* the snapshot exists is
the lab recording with the snapshot's rows taken out (``_without``).
"""

import datetime
import fcntl
import json
import os
import pathlib
import re

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_backup as backup
from saltext.xencluster.modules import xencluster_lvm as lvm
from saltext.xencluster.modules import xencluster_md as md

DATA = pathlib.Path(__file__).resolve().parent / "data" / "backup"
RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings"
LAB = "lab-node1-snapshots"
META = json.loads((DATA / "meta.json").read_text())["commands"]
VG, LEG, SNAP, TINY = "xcvg", "web1-disk0-a", "web1-disk0-a-snap", "web1-disk0-a-tiny"
LEG_PATH = f"/dev/{VG}/{LEG}"
LOOP = "/dev/loop0"  # what the recorded losetup printed
NOW = datetime.datetime(2026, 11, 24, 8, 15, 0, tzinfo=datetime.timezone.utc)
STAMP = "20261124T081500Z"
MiB = 1024**2

INJECTIONS = [
    "", "x; rm -rf /", "x && reboot", "$(reboot)", "`id`", "x|cat", "x\n", "x\nrm", "-ff", "--force",
    "../../etc", "x y", "x'", 'x"', "x>/etc/passwd", "x\x00", "x\u200b", "ｘ", "a" * 65, None, 7, ["x"],
]  # fmt: skip
PATH_INJECTIONS = [
    "", "relative/dir", "/srv/backup/", "/srv/../etc", "/srv/./x", "//srv", "/srv/x;reboot", "/srv/$(id)",
    "/srv/x y", "/srv/host:path", "/srv/x\n", "/srv/\x00", "/", None, 7, ["/srv"],
]  # fmt: skip


def rec(name):
    """One recorded command of tests/unit/data/backup as a cmd.run_all answer."""
    info = META[name]
    return {"retcode": info["rc"], "stdout": (DATA / f"{name}.out").read_text(), "stderr": info["stderr"]}


def lab(command):
    return (RECORDINGS / "lvm" / LAB / f"{command}.out").read_text()


def lab_stderr(command):
    return json.loads((RECORDINGS / "lvm" / LAB / "meta.json").read_text())["commands"][command]["stderr"]


def _without(lvs_json, *names):
    data = json.loads(lvs_json)
    for section in data["report"]:
        section["lv"] = [r for r in section["lv"] if r["lv_name"] not in names]
    return json.dumps(data)


def lvs(*select):
    return tuple([*lvm.LVS_ARGV, *select])


def attach_argv(device, read_only=False):
    return tuple(["losetup", "--find", "--show", *(["--read-only"] if read_only else []),
                  "--offset", "1048576", "--sizelimit", "267386880", "--", device])  # fmt: skip


BLKID = ("blkid", "--probe", "--output", "export", "--", LOOP)
DETACH = ("losetup", "--detach", LOOP)


@pytest.fixture
def context():
    return {}


@pytest.fixture
def configure_loader_modules(run_all, context):
    salt_funs = {
        "cmd.run_all": run_all,
        **{f"xencluster_lvm.{f}": getattr(lvm, f) for f in
           ("report", "parse_size", "snapshot_create", "snapshot_remove", "snapshot_usage")},
    }  # fmt: skip
    return {lvm: {"__salt__": {"cmd.run_all": run_all}}, backup: {"__salt__": salt_funs, "__context__": context}}


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Private mount base, an empty /sys/block, a fixed clock and a backup directory."""
    monkeypatch.setattr(backup, "MOUNT_BASE", str(tmp_path / "run"))
    monkeypatch.setattr(backup, "SYS_BLOCK", str(tmp_path / "sys"))
    (tmp_path / "sys").mkdir()
    clock = {"now": NOW}
    monkeypatch.setattr(backup, "_now", lambda: clock["now"])
    dest = tmp_path / "backup" / "web1" / "root"
    dest.mkdir(parents=True)
    # the root-filesystem check compares with a directory on another filesystem than tmp_path
    monkeypatch.setattr(backup, "ROOT_FS", "/proc")
    # udev as the formula leaves it: no packaged md auto-assembly rule active (see its own tests)
    monkeypatch.setattr(backup, "UDEV_RULES_ETC", str(tmp_path / "etc-udev"))
    monkeypatch.setattr(backup, "UDEV_RULES_LIB", (str(tmp_path / "lib-udev"),))
    return {"dest": str(dest), "tmp": tmp_path, "clock": clock}


def lab_lvm(run_all, snap=SNAP):
    """LVM as on the lab dom0; ``snap`` appears once lvcreate ran and goes once lvremove ran."""
    before = _without(lab("lvs.xcvg"), snap)
    for cmd in ("pvs", "vgs"):
        run_all.outputs[cmd] = lab(cmd)
    run_all.outputs[tuple(lvm.LVS_ARGV)] = before
    run_all.outputs[lvs(VG)] = before
    if (RECORDINGS / "lvm" / LAB / f"lvs.xcvg+{snap}.out").exists():
        run_all.outputs[lvs(f"{VG}/{snap}")] = lab(f"lvs.xcvg+{snap}")
    run_all.outputs["lvcreate"] = ""
    run_all.outputs["lvremove"] = ""

    def created(_argv):
        run_all.outputs[lvs(VG)] = lab("lvs.xcvg")

    def removed(_argv):
        run_all.outputs[lvs(VG)] = before

    run_all.effects["lvcreate"] = created
    run_all.effects["lvremove"] = removed


def tools(run_all, snap=SNAP, fs="ext4", read_only=False, rsync="rsync.backup1", examine="examine.active"):
    """mdadm, losetup, blkid, mount, rsync, umount answering as recorded for an ext4 leg."""
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.clean")
    run_all.outputs[("mdadm", "--examine", f"/dev/{VG}/{snap}")] = rec(examine)
    run_all.outputs[attach_argv(f"/dev/{VG}/{snap}", read_only)] = rec(f"losetup.{fs}")
    run_all.outputs[BLKID] = rec(f"blkid.{fs}")
    run_all.outputs["mount"] = rec("mount.backup1")
    run_all.outputs["rsync"] = rec(rsync)
    run_all.outputs["umount"] = rec("umount.backup1")
    run_all.outputs[DETACH] = rec("losetup_detach.backup1")


@pytest.fixture
def lab_host(run_all, host):
    lab_lvm(run_all)
    tools(run_all)
    return host


def steps(result):
    return [(c["step"], c["ok"]) for c in result["cleanup"]]


def call(run_all, name):
    return [c for c in run_all.calls if c[0] == name]


ALL_CLEAN = [("umount", True), ("rmdir mount point", True), ("losetup --detach", True), ("snapshot_remove", True)]


# --- the recordings are what the module thinks they are ---------------------------------------


def test_the_superblock_writer_was_checked_against_the_lab():
    """record.py asserts this too; a re-recording that broke it would show here."""
    lab_export = (RECORDINGS / "md" / "lab-node2-clean" / "examine_export.leg0.out").read_text()
    assert (DATA / "examine_export.clean.out").read_text() == lab_export
    assert "DATA_OFFSET" not in lab_export and "Data Offset" not in lab_export  # why --examine is parsed


def test_parse_examine_clean_leg_matches_the_lab_array():
    got = backup.parse_examine(rec("examine.clean")["stdout"])
    mdstat = (RECORDINGS / "md" / "lab-node2-clean" / "mdstat.out").read_text()
    blocks = int(mdstat.split(" blocks super 1.2")[0].split()[-1])  # the lab array's size in KiB
    assert got["size"] == blocks * 1024  # the md device the guest sees
    assert got["data_offset"] == 2048 * 512
    assert got["super_offset"] == 8 * 512
    assert got["array_uuid"] == "6a26659a:350b5f59:385754c0:6857aa6a"
    assert (got["version"], got["level"], got["raid_devices"], got["role"]) == ("1.2", "raid1", 2, 0)
    assert (got["feature_map"], got["events"], got["state"], got["array_state"]) == (1, 19, "clean", "AA")
    assert got["checksum_ok"] is True and got["recovery_offset"] is None
    assert backup._md_problems(got, 256 * MiB) == []


def test_parse_examine_variants():
    grown = backup.parse_examine(rec("examine.grown")["stdout"])
    assert grown["size"] == 522240 * 512  # Used Dev Size, not the larger Avail Dev Size
    active = backup.parse_examine(rec("examine.active")["stdout"])
    assert (active["state"], active["events"]) == ("active", 4711)
    assert backup._md_problems(active, 256 * MiB) == []  # a running guest's leg is fine
    recovering = backup.parse_examine(rec("examine.recovering")["stdout"])
    assert (recovering["feature_map"], recovering["recovery_offset"]) == (3, 131072)
    spare = backup.parse_examine(rec("examine.spare")["stdout"])
    assert (spare["role"], spare["role_text"]) == (None, "spare")
    assert backup.parse_examine(rec("examine.partner-failed-0")["stdout"])["array_state"] == ".A"
    assert backup.parse_examine(rec("examine.nobitmap")["stdout"])["feature_map"] == 0


@pytest.mark.parametrize(
    "name,words",
    [
        ("examine.recovering", "recovery in progress"),
        ("examine.spare", "not an active member"),
        ("examine.badblocks", "bad blocks recorded"),
    ],
)
def test_md_problems_name_the_reason(name, words):
    problems = backup._md_problems(backup.parse_examine(rec(name)["stdout"]), 256 * MiB)
    assert len(problems) == 1 and words in problems[0]


def test_md_data_past_the_device_end_is_refused():
    got = backup.parse_examine(rec("examine.clean")["stdout"])
    assert "runs past the end" in backup._md_problems(got, 64 * MiB)[0]
    assert "no md superblock" in backup._md_problems(None, 64 * MiB)[0]


def test_parse_blkid():
    assert backup.parse_blkid(rec("blkid.ext4")["stdout"])["TYPE"] == "ext4"
    lvm2 = backup.parse_blkid(rec("blkid.LVM2_member")["stdout"])
    assert (lvm2["TYPE"], lvm2["VERSION"]) == ("LVM2_member", "LVM2 001")  # "LVM2\ 001" unescaped
    assert backup.parse_blkid(rec("blkid.xfs")["stdout"])["TYPE"] == "xfs"
    assert rec("blkid.None")["retcode"] == 2 and backup.parse_blkid(rec("blkid.None")["stdout"]) == {}


def test_parse_rsync_stats():
    text = rec("rsync.backup1")["stdout"]
    first = backup.parse_rsync_stats(text)
    # bytes on the wire vary a little between runs: compare with rsync's own summary line
    sent, received = re.search(r"^sent ([0-9]+) bytes  received ([0-9]+) bytes", text, re.M).groups()
    assert first == {
        "files": 38, "created": 38, "deleted": 0, "transferred": 32, "total_size": 8412316,
        "transferred_size": 8411613, "literal_data": 8411613, "matched_data": 0, "bytes_sent": int(sent),
        "bytes_received": int(received),
    }  # fmt: skip
    second = backup.parse_rsync_stats(rec("rsync.backup2")["stdout"])
    assert (second["transferred"], second["created"], second["transferred_size"]) == (1, 0, 8)
    assert backup.parse_rsync_stats(rec("rsync.restore-again")["stdout"])["deleted"] == 1
    assert backup.parse_rsync_stats(rec("rsync.enospc")["stdout"]) == {}


def test_name_rules_agree_with_the_lvm_and_md_modules():
    assert backup._NAME_RE.pattern == lvm._NAME_RE.pattern
    assert backup._LV_RESERVED == lvm._LV_RESERVED
    assert backup._DEV_RE.pattern == md._LEG_RE.pattern


def test_snapshot_name():
    assert backup.snapshot_name("web1.root.node1") == "web1.root.node1-xcbk"
    long = "g" * 30 + "." + "d" * 20 + "." + "n" * 13  # a 65-character name is refused anyway
    name = backup.snapshot_name(long[:64])
    assert len(name) == 64 and name.endswith("-xcbk")
    assert name != backup.snapshot_name(long[:63] + "x")
    lvm._check_lv(name)


def test_virtual_names_every_missing_tool(monkeypatch):
    monkeypatch.setattr(backup.salt.utils.path, "which", lambda t: None if t in ("rsync", "mdadm") else f"/bin/{t}")
    ok, why = backup.__virtual__()
    assert ok is False and "mdadm (mdadm)" in why and "rsync (rsync)" in why and "lvm" not in why
    monkeypatch.setattr(backup.salt.utils.path, "which", lambda t: f"/bin/{t}")
    assert backup.__virtual__() == "xencluster_backup"


# --- backup: the whole run ---------------------------------------------------------------------


def test_backup_runs_every_step_and_cleans_up(run_all, lab_host, context):
    dest = lab_host["dest"]
    res = backup.backup_leg(VG, LEG, dest, fstype="ext4", snapshot=SNAP)
    assert res["result"] is True, res
    assert res["backup"] == STAMP and res["error"] is None and context == {}
    assert run_all.commands() == [
        "pvs", "vgs", "lvs", "mdadm",                  # query: LVM report, md superblock of the leg
        "lvs", "lvcreate", "lvs",                      # xencluster_lvm.snapshot_create
        "mdadm", "losetup", "blkid", "mount", "rsync",
        "lvs",                                         # snapshot usage, after the copy
        "umount", "losetup", "lvs", "lvremove",        # cleanup
    ]  # fmt: skip
    size = 268435456 * 10 // 100
    assert call(run_all, "lvcreate") == [["lvcreate", "--snapshot", "--name", SNAP, "--size",
                                          f"{-(-size // 512) * 512}b", "--addtag", "xc-backup", "--",
                                          f"{VG}/{LEG}"]]  # fmt: skip
    assert tuple(call(run_all, "losetup")[0]) == attach_argv(f"/dev/{VG}/{SNAP}")  # writable: journal replay
    mount = call(run_all, "mount")[0]
    assert mount[:5] == ["mount", "-t", "ext4", "-o", "ro,nodev,nosuid,noexec,errors=remount-ro"]
    mountpoint = mount[-1]
    assert mount[5:] == ["--", LOOP, mountpoint] and mountpoint.startswith(backup.MOUNT_BASE + "/xcbk-")
    assert call(run_all, "rsync") == [[*backup.RSYNC, f"{mountpoint}/", f"{dest}/.partial-{STAMP}/"]]
    assert call(run_all, "lvremove") == [["lvremove", "--yes", "--", f"{VG}/{SNAP}"]]
    assert steps(res) == ALL_CLEAN
    assert not os.path.exists(mountpoint)
    assert sorted(os.listdir(dest)) == [".lock", STAMP, f"{STAMP}.json", "latest"]
    assert os.readlink(os.path.join(dest, "latest")) == STAMP
    meta = json.loads(pathlib.Path(dest, f"{STAMP}.json").read_text())
    assert meta["leg"] == f"{VG}/{LEG}" and meta["md"]["array_uuid"] == "6a26659a:350b5f59:385754c0:6857aa6a"
    assert meta["filesystem"] == {"type": "ext4", "uuid": backup.parse_blkid(rec("blkid.ext4")["stdout"])["UUID"],
                                  "label": None}  # fmt: skip
    assert meta["snapshot"]["usage_percent"] == 37.66 and meta["snapshot"]["full"] is False
    assert meta["rsync"]["transferred"] == 32 and meta["link_dest"] is None


def test_second_backup_links_to_the_first(run_all, lab_host):
    dest = lab_host["dest"]
    first = backup.backup_leg(VG, LEG, dest, snapshot=SNAP)
    lab_host["clock"]["now"] = NOW + datetime.timedelta(days=1)
    run_all.outputs["rsync"] = rec("rsync.backup2")
    second = backup.backup_leg(VG, LEG, dest, snapshot=SNAP)
    assert first["result"] and second["result"], second
    assert second["backup"] == "20261125T081500Z" and second["link_dest"] == STAMP
    rsync = call(run_all, "rsync")[1]
    assert f"--link-dest={dest}/{STAMP}" in rsync
    assert second["rsync"]["transferred"] == 1 and second["rsync"]["created"] == 0
    assert os.readlink(os.path.join(dest, "latest")) == "20261125T081500Z"
    assert [b["name"] for b in backup.list_backups(dest)["backups"]] == ["20261125T081500Z", STAMP]


def test_journal_skip_is_read_only_everywhere(run_all, host):
    lab_lvm(run_all)
    tools(run_all, read_only=True)
    res = backup.backup_leg(VG, LEG, host["dest"], snapshot=SNAP, journal="skip")
    assert res["result"] is True, res
    assert tuple(call(run_all, "losetup")[0]) == attach_argv(f"/dev/{VG}/{SNAP}", read_only=True)
    assert call(run_all, "mount")[0][4] == "ro,nodev,nosuid,noexec,noload,errors=remount-ro"
    assert any("journal=skip" in w for w in res["warnings"])


@pytest.mark.parametrize(
    "fs,mount_type,options",
    [
        ("xfs", "xfs", "ro,nodev,nosuid,noexec,nouuid"),
        ("ext3", "ext4", "ro,nodev,nosuid,noexec,errors=remount-ro"),
        ("ext2", "ext4", "ro,nodev,nosuid,noexec,errors=remount-ro"),  # mount -t ext2 -o noload fails
    ],
)
def test_each_supported_filesystem(run_all, host, fs, mount_type, options):
    lab_lvm(run_all)
    tools(run_all)
    run_all.outputs[BLKID] = rec(f"blkid.{fs}")
    res = backup.backup_leg(VG, LEG, host["dest"], snapshot=SNAP, fstype=fs)
    assert res["result"] is True, res
    assert call(run_all, "mount")[0][2:5] == [mount_type, "-o", options]
    assert res["filesystem"]["type"] == fs


@pytest.mark.parametrize(
    "found,words",
    [
        ("LVM2_member", "runs LVM inside its md array"),
        ("swap", "swap holds no files"),
        ("None", "no filesystem found"),
    ],
)
def test_unsupported_filesystem_found_is_refused_and_cleaned_up(run_all, lab_host, context, found, words):
    run_all.outputs[BLKID] = rec(f"blkid.{found}")
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert res["result"] is False and res["backup"] is None
    assert words in res["error"] and "refused" in res["error"]
    assert steps(res) == [("losetup --detach", True), ("snapshot_remove", True)]
    assert "mount" not in run_all.commands() and "rsync" not in run_all.commands()
    assert context["retcode"] == 1
    assert os.listdir(lab_host["dest"]) == [".lock"]


def test_filesystem_other_than_the_model_says_is_refused(run_all, lab_host):
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, fstype="xfs")
    assert res["result"] is False
    assert "the cluster model says xfs but the leg holds ext4" in res["error"]
    assert "lvremove" in run_all.commands()


@pytest.mark.parametrize("fstype,words", [("btrfs", "btrfs is not supported"), ("swap", "swap holds no files"),
                                          ("none", "the cluster model says this disk has no filesystem")])  # fmt: skip
def test_unsupported_model_filesystem_is_refused_before_any_change(run_all, lab_host, fstype, words):
    plan = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, fstype=fstype, dry_run=True)
    assert any(words in r for r in plan["refused"])
    with pytest.raises(CommandExecutionError, match=re.escape(f"backup of {VG}/{LEG} refused: {words}")):
        backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, fstype=fstype)
    assert "lvcreate" not in run_all.commands()


# --- snapshot overflow ---------------------------------------------------------------------------


def test_snapshot_that_filled_up_fails_the_backup(run_all, host, context):
    lab_lvm(run_all, snap=TINY)
    tools(run_all, snap=TINY)
    res = backup.backup_leg(VG, LEG, host["dest"], snapshot=TINY, snapshot_size="8M")
    assert res["result"] is False and res["backup"] is None
    assert res["snapshot"] == {"name": TINY, "size": 8 * MiB, "usage_percent": 100.0, "full": True}
    assert f"snapshot {VG}/{TINY} filled up during the backup (100.0%)" in res["error"]
    assert "was not kept" in res["error"]
    # checked after the copy, before the snapshot went
    after_copy = run_all.calls[run_all.commands().index("rsync"):]
    assert [c[0] for c in after_copy[:3]] == ["rsync", "lvs", "umount"]
    assert after_copy[1] == list(lvs(f"{VG}/{TINY}"))
    assert steps(res) == [*ALL_CLEAN, ("remove partial copy", True)]
    assert os.listdir(host["dest"]) == [".lock"]  # no backup, no latest, no partial
    assert context["retcode"] == 1


def test_copy_failure_caused_by_an_overflow_says_so(run_all, host):
    lab_lvm(run_all, snap=TINY)
    tools(run_all, snap=TINY, rsync="rsync.enospc")
    res = backup.backup_leg(VG, LEG, host["dest"], snapshot=TINY, snapshot_size="8M")
    assert res["result"] is False and res["snapshot"]["full"] is True
    assert "filled up during the backup" in res["error"]
    assert "No space left on device" in res["error"]  # rsync's own stderr, kept


def test_copy_failure_without_overflow_keeps_the_tool_error(run_all, lab_host):
    run_all.outputs["rsync"] = rec("rsync.enospc")
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert res["result"] is False and res["snapshot"]["full"] is False
    assert "rsync --archive" in res["error"] and "(rc 11)" in res["error"]
    assert "No space left on device (28)" in res["error"]
    assert steps(res) == [*ALL_CLEAN, ("remove partial copy", True)]
    assert os.listdir(lab_host["dest"]) == [".lock"]


def test_unreadable_usage_fails_the_backup(run_all, lab_host):
    calls = {"n": 0}
    real = run_all.outputs[lvs(f"{VG}/{SNAP}")]

    def usage_lvs_fails(_argv):  # the lvs after rsync finds no such LV (recorded lab failure)
        calls["n"] += 1
        run_all.outputs[lvs(f"{VG}/{SNAP}")] = {"retcode": 5, "stdout": lab("lvs.xcvg+nope"),
                                                "stderr": lab_stderr("lvs.xcvg+nope")}  # fmt: skip

    run_all.effects["rsync"] = usage_lvs_fails
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert calls["n"] == 1 and real
    assert res["result"] is False
    assert f"the usage of snapshot {VG}/{SNAP} could not be read" in res["error"]
    assert "Failed to find logical volume" in res["error"]
    assert not os.path.exists(os.path.join(lab_host["dest"], STAMP))


# --- cleanup in every failure order ------------------------------------------------------------


FAILURES = {
    # step that fails: (how, the cleanup steps that must follow, words of the error)
    "lvcreate": ("lvcreate", "lvcreate.snapshot-no-dm", [], "Can't create snapshot"),
    "examine": (("mdadm", "--examine", f"/dev/{VG}/{SNAP}"), "examine.blank", [("snapshot_remove", True)],
                "no md superblock"),
    "losetup": (attach_argv(f"/dev/{VG}/{SNAP}"), "losetup.missing",
                [("snapshot_remove", True)], "failed to set up loop device"),
    "blkid": (BLKID, "blkid.LVM2_member", [("losetup --detach", True), ("snapshot_remove", True)], "LVM"),
    "mount": ("mount", "mount.ro-device-dirty-journal",
              [("rmdir mount point", True), ("losetup --detach", True), ("snapshot_remove", True)],
              "read-only.\n"),
    "rsync": ("rsync", "rsync.enospc", [*ALL_CLEAN, ("remove partial copy", True)], "No space left"),
}  # fmt: skip


@pytest.mark.parametrize("failing", FAILURES)
def test_each_failure_cleans_up_what_was_done_before_it(run_all, lab_host, context, failing):
    key, answer, cleanup, words = FAILURES[failing]
    run_all.outputs[key] = rec(answer)
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert res["result"] is False and words in res["error"], res["error"]
    assert steps(res) == cleanup
    assert context["retcode"] == 1
    assert os.listdir(lab_host["dest"]) == [".lock"]
    assert not os.path.isdir(backup.MOUNT_BASE) or os.listdir(backup.MOUNT_BASE) == []
    # the snapshot is removed whenever it was made
    assert ("lvremove" in run_all.commands()) is (failing != "lvcreate")


CLEANUP_FAILURES = {
    "umount": ("umount", "umount.busy", "umount", "target is busy"),
    "detach": (DETACH, "losetup_detach.free", "losetup --detach", "detach failed: No such device or address"),
    "lvremove": ("lvremove", "lvremove.missing", "snapshot_remove", "Failed to find logical volume"),
}


@pytest.mark.parametrize("failing", CLEANUP_FAILURES)
def test_a_failing_cleanup_step_does_not_stop_the_others(run_all, lab_host, failing):
    key, answer, step, words = CLEANUP_FAILURES[failing]
    run_all.outputs[key] = rec(answer)
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert [s for s, _ in steps(res)] == [s for s, _ in ALL_CLEAN]  # every step attempted
    assert [s for s, ok in steps(res) if not ok] == [step]
    assert res["result"] is False and "cleanup incomplete" in res["error"] and words in res["error"]
    assert res["backup"] == STAMP  # the copy itself was complete and kept: only the leftover is the failure
    assert os.readlink(os.path.join(lab_host["dest"], "latest")) == STAMP


def test_all_cleanup_steps_failing_are_all_reported(run_all, lab_host):
    for key, answer, _step, _words in CLEANUP_FAILURES.values():
        run_all.outputs[key] = rec(answer)
    run_all.outputs["rsync"] = rec("rsync.enospc")
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert steps(res) == [("umount", False), ("rmdir mount point", True), ("losetup --detach", False),
                          ("snapshot_remove", False), ("remove partial copy", True)]  # fmt: skip
    for _key, _answer, _step, words in CLEANUP_FAILURES.values():
        assert words in res["error"]
    assert res["error"].startswith("rsync ")  # the first failure first


def test_detach_of_a_busy_loop_device_is_not_taken_for_done(run_all, lab_host, monkeypatch):
    """losetup --detach of a device still in use exits 0 and only sets autoclear (recorded)."""
    assert META["losetup_detach.busy"]["rc"] == 0
    run_all.outputs[DETACH] = rec("losetup_detach.busy")
    os.makedirs(os.path.join(backup.SYS_BLOCK, "loop0", "loop"))
    monkeypatch.setattr(backup, "DETACH_WAIT", 0.3)
    res = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    assert ("losetup --detach", False) in steps(res)
    assert "/dev/loop0 is still attached" in res["error"]


def test_stale_partial_copies_are_removed_first(run_all, lab_host):
    dest = lab_host["dest"]
    os.makedirs(os.path.join(dest, ".partial-20261120T000000Z", "etc"))
    os.makedirs(os.path.join(dest, ".deleting-20261101T000000Z"))
    plan = backup.backup_leg(VG, LEG, dest, snapshot=SNAP, dry_run=True)
    assert plan["stale_partials"] == [".partial-20261120T000000Z", ".deleting-20261101T000000Z"]
    res = backup.backup_leg(VG, LEG, dest, snapshot=SNAP)
    assert res["result"] and res["removed_stale"] == plan["stale_partials"]
    assert sorted(os.listdir(dest)) == [".lock", STAMP, f"{STAMP}.json", "latest"]


# --- dry run and the plan's refusals -----------------------------------------------------------


def test_dry_run_returns_the_plan_and_changes_nothing(run_all, lab_host):
    dest = lab_host["dest"]
    plan = backup.backup_leg(VG, LEG, dest, snapshot=SNAP, fstype="ext4", dry_run=True)
    assert plan["dry_run"] is True and plan["refused"] == []
    assert run_all.commands() == ["pvs", "vgs", "lvs", "mdadm"]
    assert plan["snapshot"]["size"] == 26843545 and plan["snapshot"]["vg_free"] == 7667187712
    assert plan["loop"] == {"offset": 1048576, "size": 267386880, "read_only": False}
    assert (plan["backup"], plan["partial"], plan["link_dest"]) == (STAMP, f".partial-{STAMP}", None)
    assert os.listdir(dest) == []  # not even the lock file
    assert not os.path.exists(backup.MOUNT_BASE)


def test_default_snapshot_name_and_size(run_all, host):
    name = backup.snapshot_name(LEG)
    lab_lvm(run_all, snap=name)
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.clean")
    plan = backup.backup_leg(VG, LEG, host["dest"], dry_run=True)
    assert plan["snapshot"]["name"] == "web1-disk0-a-xcbk" and plan["snapshot"]["size"] == 26843545
    plan = backup.backup_leg(VG, LEG, host["dest"], snapshot_size="64M", dry_run=True)
    assert plan["snapshot"]["size"] == 64 * MiB


def test_plan_refuses_everything_at_once(run_all, host):
    """A leg with a leftover snapshot, too little room, a stale md superblock and a busy dest."""
    lab_lvm(run_all)
    run_all.outputs[lvs(VG)] = run_all.outputs[tuple(lvm.LVS_ARGV)] = lab("lvs.xcvg")  # SNAP still there
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.recovering")
    dest = host["dest"]
    with backup._Lock(dest):
        plan = backup.backup_leg(VG, LEG, dest, snapshot=SNAP, snapshot_size="8T", dry_run=True)
        with pytest.raises(CommandExecutionError) as exc:
            backup.backup_leg(VG, LEG, dest, snapshot=SNAP, snapshot_size="8T")
    refused = " | ".join(plan["refused"])
    assert f"an LV named {VG}/{SNAP} already exists" in refused
    assert "volume group xcvg has 7667187712 bytes free, the snapshot needs 8796093022208" in refused
    assert "recovery in progress" in refused
    assert "another backup, prune or restore holds" in refused
    assert len(plan["refused"]) == 4
    assert all(r in str(exc.value) for r in plan["refused"])
    assert "lvcreate" not in run_all.commands()


def test_missing_and_inactive_legs_are_refused(run_all, host):
    lab_lvm(run_all)
    plan = backup.backup_leg(VG, "nope", host["dest"], dry_run=True)
    assert plan["refused"] == [f"logical volume {VG}/nope not found on this node"]
    plan = backup.backup_leg(VG, "spare", host["dest"], dry_run=True)  # inactive in the lab recording
    assert plan["refused"] == [f"{VG}/spare is not active on this node"]
    plan = backup.backup_leg(VG, TINY, host["dest"], snapshot="x-xcbk", dry_run=True)
    assert f"{VG}/{TINY} is itself a snapshot, not a leg" in plan["refused"]
    examined = [c[-1] for c in run_all.calls if c[0] == "mdadm"]
    assert f"/dev/{VG}/spare" not in examined and f"/dev/{VG}/{TINY}" not in examined


def test_leg_without_md_superblock_is_refused(run_all, lab_host):
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.blank")
    plan = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, dry_run=True)
    assert plan["refused"] == ["no md superblock on the leg (mdadm: No md superblock detected): "
                               "not a mirrored guest disk"]  # fmt: skip


def test_examine_of_a_missing_path_is_an_error_with_mdadms_words(run_all, lab_host):
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.missing")
    with pytest.raises(CommandExecutionError, match="cannot open /dev/xencluster-missing/leg"):
        backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, dry_run=True)


PARTNER = "/dev/xencluster/web1.disk0.node2"


@pytest.mark.parametrize("answer,refused", [("examine.partner-ok", []), ("examine.partner-failed-0", ["stale"])])
def test_partner_superblock_must_count_this_leg(run_all, lab_host, answer, refused):
    run_all.outputs[("mdadm", "--examine", PARTNER)] = rec(answer)
    plan = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, partner=PARTNER, dry_run=True)
    assert [w for w in refused if any(w in r for r in plan["refused"])] == refused
    assert len(plan["refused"]) == len(refused)
    assert plan["partner"]["md"]["array_state"] == ("AA" if not refused else ".A")


def test_dest_checks(run_all, lab_host, monkeypatch, tmp_path):
    missing = str(tmp_path / "nowhere")
    plan = backup.backup_leg(VG, LEG, missing, snapshot=SNAP, dry_run=True)
    assert plan["refused"] == [f"backup directory {missing} does not exist (or is a symlink): "
                               "mount the backup volume and create it"]  # fmt: skip
    monkeypatch.setattr(backup, "ROOT_FS", lab_host["dest"])  # dest on the "root" filesystem
    plan = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, dry_run=True)
    assert len(plan["refused"]) == 1 and "is on the root filesystem" in plan["refused"][0]
    plan = backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP, allow_root_fs=True, dry_run=True)
    assert plan["refused"] == []
    link = tmp_path / "link"
    link.symlink_to(lab_host["dest"])
    plan = backup.backup_leg(VG, LEG, str(link), snapshot=SNAP, dry_run=True)
    assert "does not exist (or is a symlink)" in plan["refused"][0]


# --- validation: nothing odd reaches a command line --------------------------------------------


@pytest.mark.parametrize("bad", INJECTIONS)
def test_bad_names_never_reach_a_command(run_all, lab_host, bad):
    dest = lab_host["dest"]
    for call_ in (
        lambda: backup.backup_leg(bad, LEG, dest),
        lambda: backup.backup_leg(VG, bad, dest),
        lambda: backup.backup_leg(VG, LEG, dest, snapshot=bad if bad is not None else "-x"),
        lambda: backup.restore_leg(bad, LEG, dest),
        lambda: backup.restore_leg(VG, bad, dest),
        lambda: backup.invalidate_leg(VG, bad, "6a26659a:350b5f59:385754c0:6857aa6a"),
        lambda: backup.invalidate_leg(VG, LEG, bad),
        lambda: backup.restore_leg(VG, LEG, dest, backup=bad),
    ):
        with pytest.raises(SaltInvocationError):
            call_()
    assert run_all.calls == []


@pytest.mark.parametrize("bad", PATH_INJECTIONS)
def test_bad_paths_never_reach_a_command(run_all, lab_host, bad):
    for call_ in (
        lambda: backup.backup_leg(VG, LEG, bad),
        lambda: backup.restore_leg(VG, LEG, bad),
        lambda: backup.list_backups(bad),
        lambda: backup.prune(bad, keep=1),
    ):
        with pytest.raises(SaltInvocationError):
            call_()
    if bad is not None:  # partner=None: no partner check
        with pytest.raises(SaltInvocationError):
            backup.backup_leg(VG, LEG, lab_host["dest"], partner=bad)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"journal": "maybe"}, {"journal": None}, {"fstype": "ntfs"}, {"fstype": "ext4;x"},
        {"snapshot_size": "0%"}, {"snapshot_size": "101%"}, {"snapshot_size": "-1G"}, {"snapshot_size": "1.5G"},
        {"snapshot_size": "10 %"}, {"allow_root_fs": "yes"}, {"dry_run": 1}, {"partner": "/dev/../etc/x"},
        {"partner": "/dev/-f"},
    ],
)  # fmt: skip
def test_bad_options_are_refused_before_any_command(run_all, lab_host, kwargs):
    with pytest.raises(SaltInvocationError):
        backup.backup_leg(VG, LEG, lab_host["dest"], **kwargs)
    assert run_all.calls == []


# --- retention -----------------------------------------------------------------------------------


def _stamps(*times):
    return [t.strftime("%Y%m%dT%H%M%SZ") for t in times]


def _days(n, hour=1):
    return [NOW.replace(hour=hour) - datetime.timedelta(days=d) for d in range(n)]


def test_retention_keep_newest():
    stamps = _stamps(*_days(5))
    plan = backup.retention_plan(stamps, keep=2)
    assert list(plan["keep"]) == stamps[:2] and plan["delete"] == stamps[2:]
    assert plan["keep"][stamps[0]] == ["keep", "newest"]


def test_retention_daily_keeps_the_newest_of_each_day():
    times = [*_days(4, hour=1), *_days(4, hour=13)]  # two a day
    stamps = _stamps(*times)
    plan = backup.retention_plan(stamps, daily=3)
    kept = list(plan["keep"])
    assert kept == _stamps(*_days(3, hour=13))
    assert len(plan["delete"]) == 5


def test_retention_weekly_and_monthly():
    times = [NOW - datetime.timedelta(days=d) for d in range(0, 120, 3)]
    stamps = _stamps(*times)
    plan = backup.retention_plan(stamps, weekly=2, monthly=3)
    weeks = {datetime.datetime.strptime(s, "%Y%m%dT%H%M%SZ").isocalendar()[:2] for s, why in plan["keep"].items()
             if "weekly" in why}  # fmt: skip
    months = [s[:6] for s, why in plan["keep"].items() if "monthly" in why]
    assert len(weeks) == 2 and months == ["202611", "202610", "202609"]
    # each kept one is the newest of its month
    for s in (s for s, why in plan["keep"].items() if "monthly" in why):
        assert s == max(x for x in stamps if x[:6] == s[:6])


def test_retention_never_deletes_the_newest_or_latest():
    stamps = _stamps(*_days(4))
    plan = backup.retention_plan(stamps, monthly=1, latest=stamps[2])
    assert set(plan["keep"]) == {stamps[0], stamps[2]}
    assert plan["keep"][stamps[2]] == ["latest"]
    assert backup.retention_plan(stamps[:1], keep=1)["delete"] == []


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"keep": 0}, {"keep": -1}, {"daily": "x"}, {"weekly": True}, {"monthly": 1.5}, {"keep": 10**6}],
)
def test_retention_needs_a_valid_count(kwargs):
    with pytest.raises(SaltInvocationError):
        backup.retention_plan(_stamps(*_days(2)), **kwargs)


def test_retention_refuses_names_that_are_no_backups():
    with pytest.raises(SaltInvocationError):
        backup.retention_plan(["20261124T081500Z", "../../etc"], keep=1)
    with pytest.raises(SaltInvocationError):
        backup.retention_plan("20261124T081500Z", keep=1)


def _layout(dest, stamps, latest=None):
    for s in stamps:
        os.makedirs(os.path.join(dest, s, "etc"))
        pathlib.Path(dest, s, "etc", "hostname").write_text("web1\n")
        pathlib.Path(dest, f"{s}.json").write_text(json.dumps({"backup": s}))
    if latest:
        os.symlink(latest, os.path.join(dest, "latest"))


def test_prune_deletes_old_backups_and_their_metadata(host):
    dest = host["dest"]
    stamps = _stamps(*_days(5))
    _layout(dest, stamps, latest=stamps[0])
    os.makedirs(os.path.join(dest, ".partial-20261101T000000Z"))
    dry = backup.prune(dest, keep=2, dry_run=True)
    assert dry["deleted"] == stamps[2:] and dry["stale"] == [".partial-20261101T000000Z"]
    assert len(os.listdir(dest)) == 5 * 2 + 2  # nothing changed
    res = backup.prune(dest, keep=2)
    assert res["deleted"] == stamps[2:]
    assert sorted(os.listdir(dest)) == sorted([".lock", "latest", *stamps[:2], *(f"{s}.json" for s in stamps[:2])])
    listed = backup.list_backups(dest)
    assert [b["name"] for b in listed["backups"]] == stamps[:2]
    assert listed["backups"][0]["latest"] is True and listed["backups"][1]["meta"] == {"backup": stamps[1]}


def test_prune_is_refused_while_a_backup_holds_the_lock(host):
    dest = host["dest"]
    _layout(dest, _stamps(*_days(3)))
    fd = os.open(os.path.join(dest, ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(CommandExecutionError, match="another backup, prune or restore holds"):
            backup.prune(dest, keep=1)
    finally:
        os.close(fd)
    assert len(backup.list_backups(dest)["backups"]) == 3


def test_prune_leaves_no_half_deleted_backup_that_looks_complete(host, monkeypatch):
    dest = host["dest"]
    stamps = _stamps(*_days(3))
    _layout(dest, stamps)

    def rmtree_fails(path, *a, **k):
        raise OSError(5, "Input/output error", path)

    monkeypatch.setattr(backup.shutil, "rmtree", rmtree_fails)
    with pytest.raises(CommandExecutionError, match=f"prune of {dest} stopped at {stamps[1]}: .*Input/output"):
        backup.prune(dest, keep=1)
    listed = backup.list_backups(dest)
    assert [b["name"] for b in listed["backups"]] == stamps[:1] + stamps[2:]  # the one being deleted is gone
    assert listed["deleting"] == [f".deleting-{stamps[1]}"]


def test_list_backups_of_an_empty_and_a_missing_directory(host, tmp_path):
    assert backup.list_backups(host["dest"]) == {"dest": host["dest"], "latest": None, "backups": [],
                                                 "partials": [], "deleting": []}  # fmt: skip
    with pytest.raises(CommandExecutionError):
        backup.list_backups(str(tmp_path / "none"))


# --- restore -------------------------------------------------------------------------------------


RESTORE_ATTACH = attach_argv(LEG_PATH)


@pytest.fixture
def restore_host(run_all, host):
    lab_lvm(run_all)
    _layout(host["dest"], [STAMP], latest=STAMP)
    uuid = backup.parse_blkid(rec("blkid.ext4")["stdout"])["UUID"]
    pathlib.Path(host["dest"], f"{STAMP}.json").write_text(
        json.dumps({"filesystem": {"type": "ext4", "uuid": uuid, "label": "root"}})
    )
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.clean")
    run_all.outputs[RESTORE_ATTACH] = rec("losetup.ext4")
    run_all.outputs[BLKID] = rec("blkid.ext4")
    run_all.outputs["mount"] = rec("mount.backup1")
    run_all.outputs["rsync"] = rec("rsync.restore-again")
    run_all.outputs["umount"] = rec("umount.backup1")
    run_all.outputs[DETACH] = rec("losetup_detach.backup1")
    return {**host, "uuid": uuid}


def test_restore_over_an_existing_filesystem_needs_overwrite(run_all, restore_host, context):
    res = backup.restore_leg(VG, LEG, restore_host["dest"])
    assert res["result"] is False and "pass overwrite=True" in res["error"]
    assert steps(res) == [("losetup --detach", True)] and "rsync" not in run_all.commands()
    assert context["retcode"] == 1


def test_restore_overwrite(run_all, restore_host):
    dest = restore_host["dest"]
    res = backup.restore_leg(VG, LEG, dest, overwrite=True)
    assert res["result"] is True, res
    assert res["backup"] == STAMP and res["rsync"]["deleted"] == 1 and res["mkfs"] is None
    assert "invalidate_leg" in res["after"]
    assert tuple(call(run_all, "losetup")[0]) == RESTORE_ATTACH  # writable, at the md data offset
    mount = call(run_all, "mount")[0]
    assert mount[2:5] == ["ext4", "-o", "nodev,nosuid,noexec,errors=remount-ro"]
    assert call(run_all, "rsync") == [[*backup.RSYNC, "--delete", f"{dest}/{STAMP}/", f"{mount[-1]}/"]]
    assert steps(res) == ALL_CLEAN[:3]  # no snapshot in a restore
    assert "lvcreate" not in run_all.commands() and "lvremove" not in run_all.commands()


def test_restore_into_a_blank_leg_makes_the_filesystem_with_the_old_uuid(run_all, restore_host):
    run_all.outputs[BLKID] = rec("blkid.None")
    run_all.outputs["mkfs.ext4"] = ""
    res = backup.restore_leg(VG, LEG, restore_host["dest"], mkfs=True)
    assert res["result"] is True and res["mkfs"] == "ext4"
    assert call(run_all, "mkfs.ext4") == [["mkfs.ext4", "-q", "-U", restore_host["uuid"], "-L", "root", "--", LOOP]]
    assert run_all.commands().index("mkfs.ext4") < run_all.commands().index("mount")


def test_restore_into_a_blank_leg_needs_mkfs(run_all, restore_host):
    run_all.outputs[BLKID] = rec("blkid.None")
    res = backup.restore_leg(VG, LEG, restore_host["dest"], overwrite=True)
    assert res["result"] is False and "pass mkfs=True" in res["error"]
    assert "mount" not in run_all.commands()


def test_restore_refuses_another_filesystem_type(run_all, restore_host):
    run_all.outputs[BLKID] = rec("blkid.xfs")
    res = backup.restore_leg(VG, LEG, restore_host["dest"], overwrite=True)
    assert res["result"] is False and "holds xfs, the backup is ext4" in res["error"]
    run_all.outputs[BLKID] = rec("blkid.LVM2_member")
    res = backup.restore_leg(VG, LEG, restore_host["dest"], overwrite=True)
    assert "runs LVM inside its md array" in res["error"]


def test_restore_refuses_a_leg_in_use_and_missing_backups(run_all, restore_host, tmp_path):
    run_all.outputs[("mdadm", "--examine", "/dev/xcvg/db1-disk0-a")] = rec("examine.clean")
    plan = backup.restore_leg(VG, "db1-disk0-a", restore_host["dest"], overwrite=True, dry_run=True)
    assert plan["refused"] == [f"{VG}/db1-disk0-a is open: a guest, an md array, a mount or an LIO export "
                               "uses it; stop the guest and unexport the leg first"]  # fmt: skip
    with pytest.raises(CommandExecutionError, match="is open"):
        backup.restore_leg(VG, "db1-disk0-a", restore_host["dest"], overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    plan = backup.restore_leg(VG, LEG, str(empty), dry_run=True)
    assert plan["refused"] == [f"no backup latest in {empty}"]
    plan = backup.restore_leg(VG, LEG, restore_host["dest"], backup="20261101T000000Z", dry_run=True)
    assert plan["refused"] == [f"no backup 20261101T000000Z in {restore_host['dest']}"]
    assert "losetup" not in run_all.commands()


def test_restore_dry_run(run_all, restore_host):
    plan = backup.restore_leg(VG, LEG, restore_host["dest"], overwrite=True, dry_run=True)
    assert plan["refused"] == [] and plan["backup"] == STAMP and plan["fstype"] == "ext4"
    assert plan["loop"] == {"offset": 1048576, "size": 267386880, "read_only": False}
    assert run_all.commands() == ["pvs", "vgs", "lvs", "mdadm"]


def test_restore_copy_failure_cleans_up(run_all, restore_host):
    run_all.outputs["rsync"] = rec("rsync.enospc")
    run_all.outputs["umount"] = rec("umount.busy")
    res = backup.restore_leg(VG, LEG, restore_host["dest"], overwrite=True)
    assert steps(res) == [("umount", False), ("rmdir mount point", True), ("losetup --detach", True)]
    assert "No space left" in res["error"] and "target is busy" in res["error"]


# --- invalidate the other leg --------------------------------------------------------------------


UUID = "6a26659a:350b5f59:385754c0:6857aa6a"


def test_invalidate_leg(run_all, restore_host):
    # the other leg of the pair: device 1 of the same array
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.partner-ok")
    dry = backup.invalidate_leg(VG, LEG, UUID, dry_run=True)
    assert dry == {"leg": f"{VG}/{LEG}", "array_uuid": UUID, "zeroed": False, "dry_run": True}
    assert ["mdadm", "--zero-superblock", LEG_PATH] not in run_all.calls
    run_all.outputs[("mdadm", "--zero-superblock", LEG_PATH)] = rec("zero.leg")
    assert backup.invalidate_leg(VG, LEG, UUID)["zeroed"] is True
    assert run_all.calls[-1] == ["mdadm", "--zero-superblock", LEG_PATH]


def test_invalidate_leg_refusals(run_all, restore_host):
    run_all.outputs[("mdadm", "--examine", "/dev/xcvg/db1-disk0-a")] = rec("examine.clean")
    with pytest.raises(CommandExecutionError, match="belongs to array 6a26659a"):
        backup.invalidate_leg(VG, LEG, "00000000:00000000:00000000:00000000")
    with pytest.raises(CommandExecutionError, match="is open"):
        backup.invalidate_leg(VG, "db1-disk0-a", UUID)
    run_all.outputs[("mdadm", "--examine", LEG_PATH)] = rec("examine.blank")
    with pytest.raises(CommandExecutionError, match="carries no md superblock"):
        backup.invalidate_leg(VG, LEG, UUID)
    assert not [c for c in run_all.calls if "--zero-superblock" in c]


def test_restore_into_a_blank_leg_as_xfs(run_all, restore_host):
    """mkfs.xfs takes the UUID as -m uuid= and no '--' (argv checked by hand with mkfs.xfs 6.1.0)."""
    run_all.outputs[BLKID] = rec("blkid.None")
    run_all.outputs["mkfs.xfs"] = ""
    res = backup.restore_leg(VG, LEG, restore_host["dest"], mkfs=True, fstype="xfs")
    assert res["result"] is True and res["mkfs"] == "xfs"
    assert call(run_all, "mkfs.xfs") == [["mkfs.xfs", "-q", "-m", f"uuid={restore_host['uuid']}", "-L", "root", LOOP]]
    assert call(run_all, "mount")[0][2:5] == ["xfs", "-o", "nodev,nosuid,noexec,nouuid"]


def test_a_lock_file_that_is_a_symlink_is_refused(run_all, lab_host):
    os.symlink("/etc/passwd", os.path.join(lab_host["dest"], ".lock"))
    with pytest.raises(CommandExecutionError, match=r"\.lock is not a regular file"):
        backup.backup_leg(VG, LEG, lab_host["dest"], snapshot=SNAP)
    # and were it to appear between the plan and the lock
    with pytest.raises(CommandExecutionError, match=r"cannot open .*\.lock: \[Errno 40\]"):
        with backup._Lock(lab_host["dest"]):
            pass
    assert "lvcreate" not in run_all.commands()


# --- md auto-assembly in dom0 (found in the lab: udev assembled the snapshot as md127) ---------

PACKAGED_RULE = 'SUBSYSTEM=="block", ACTION=="add|change", IMPORT{program}="/sbin/mdadm --incremental --export $devnode"\n'


def _rules(host, etc=None, lib=True):
    etc_dir, lib_dir = host["tmp"] / "etc-udev", host["tmp"] / "lib-udev"
    etc_dir.mkdir(exist_ok=True)
    lib_dir.mkdir(exist_ok=True)
    if lib:
        (lib_dir / backup.MD_ASSEMBLY_RULES).write_text(PACKAGED_RULE)
    if etc == "devnull":
        (etc_dir / backup.MD_ASSEMBLY_RULES).symlink_to(os.devnull)
    elif etc is not None:
        (etc_dir / backup.MD_ASSEMBLY_RULES).write_text(etc)
    return lib_dir / backup.MD_ASSEMBLY_RULES, etc_dir / backup.MD_ASSEMBLY_RULES


def test_packaged_md_assembly_rule_unmasked_is_active(host):
    packaged, _ = _rules(host)
    assert backup.md_autoassembly() == str(packaged)


@pytest.mark.parametrize("mask", ["# Managed by Salt (xencluster.hygiene). Deliberately without rules.\n\n", "",
                                  "devnull"])
def test_masked_md_assembly_rule_is_inactive(host, mask):
    _rules(host, etc=mask)
    assert backup.md_autoassembly() is None


def test_a_custom_rule_of_the_same_name_is_active(host):
    _, override = _rules(host, etc="# ours\n" + PACKAGED_RULE)
    assert backup.md_autoassembly() == str(override)


def test_no_rule_anywhere_is_inactive(host):
    _rules(host, lib=False)
    assert backup.md_autoassembly() is None


def test_backup_is_refused_before_any_change_while_md_autoassembles(run_all, lab_host):
    packaged, _ = _rules(lab_host)
    plan = backup.backup_leg(VG, LEG, lab_host["dest"], fstype="ext4", dry_run=True)
    assert any(str(packaged) in reason and "md auto-assembly" in reason for reason in plan["refused"]), plan
    with pytest.raises(CommandExecutionError, match="md auto-assembly is active"):
        backup.backup_leg(VG, LEG, lab_host["dest"], fstype="ext4")
    assert [c for c in run_all.calls if c[0] in ("lvcreate", "lvm")] == [], run_all.calls
