"""The pure parts of benchmarks/backup_resync.py: parsing, validity checks, ratios, goals, the result."""

import argparse
import datetime as dt
import importlib.util
import pathlib
from types import SimpleNamespace

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("backup_resync_bench", ROOT / "benchmarks" / "backup_resync.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


br = _load()

# coreutils 9.1 dd (Debian 12), LC_ALL=C
DD_STDERR = """128+0 records in
128+0 records out
134217728 bytes (134 MB, 128 MiB) copied, 2.48297 s, 54.1 MB/s
"""

# mdadm 4.2 --examine-bitmap of a member, 1 MiB chunks, one leg away
EXAMINE_BITMAP = """        Filename : /dev/xvdb
           Magic : 6d746962
         Version : 4
            UUID : 0f1e2d3c:4b5a6978:8796a5b4:c3d2e1f0
          Events : 44
  Events Cleared : 40
           State : OK
       Chunksize : 1 MB
          Daemon : 5s flush period
      Write Mode : Normal
       Sync Size : 130048 (127.00 MiB 133.17 MB)
          Bitmap : 127 bits (chunks), 4 dirty (3.1%)
"""

# /sys/block/xvdc/stat: field 7 is sectors written
STAT = "    4711        0   376880     1234     2048       12   262144     5678        0     9000     6912"

DMESG = """[    1.000000] Linux version 6.1.0-28-amd64
[  120.000000] md: recovery of RAID array md0
[  150.000000] md: md0: recovery done.
[  301.123456] md/raid1:md0: Disk failure on xvdc, disabling device.
               md/raid1:md0: Operation continuing on 1 devices.
[  305.000001] xcbench: bitmap-r1-42
[  306.100000] md: recovery of RAID array md0
[  306.950000] md: md0: recovery done.
"""

SHA_A, SHA_B = "a" * 64, "b" * 64


def args_ns(**over):
    base = {"rounds": 2, "files": 1000, "file_kib": 64, "write_mib": 4, "sync_kbs": 20000, "only": None,
            "results_dir": pathlib.Path("/tmp/x")}
    return argparse.Namespace(**{**base, **over})


# --- arguments and the data set ------------------------------------------------------------


def test_defaults_are_the_briefs_data_set():
    args = br.parse_args([])
    assert (args.rounds, args.files, args.file_kib, args.write_mib, args.sync_kbs, args.only) == (
        2, 1000, 64, 4, 20000, None)


@pytest.mark.parametrize("over, word", [
    ({"rounds": 0}, "--rounds"), ({"rounds": 11}, "--rounds"), ({"files": 99}, "--files"),
    ({"file_kib": 2}, "--file-kib"), ({"files": 2000, "file_kib": 64}, "80 MiB"),
    ({"write_mib": 0}, "--write-mib"), ({"sync_kbs": 999}, "--sync-kbs"),
])  # fmt: skip
def test_args_problem_names_the_bad_option(over, word):
    assert word in br.args_problem(args_ns(**over))


def test_parse_args_refuses_a_data_set_too_big_for_the_legs(capsys):
    with pytest.raises(SystemExit):
        br.parse_args(["--files", "10000", "--file-kib", "64"])
    assert "80 MiB" in capsys.readouterr().err


def test_changed_files_are_one_percent_spread_and_differ_per_round():
    first, second = br.changed_files(1000, 1), br.changed_files(1000, 2)
    assert len(first) == len(set(first)) == 10
    assert first[:3] == ["f0001", "f0101", "f0201"]
    assert not set(first) & set(second)
    assert br.changed_files(100, 1) == ["f0001"]  # at least one file


def test_write_offsets_stay_in_the_array_for_every_round():
    offsets = [br.write_offset_mib(r) for r in range(1, br.MAX_ROUNDS + 1)]
    assert offsets[0] == 16 and len(set(offsets)) == br.MAX_ROUNDS
    assert max(offsets) + 32 < 127  # the largest --write-mib fits in the 127 MiB array


# --- parsing ---------------------------------------------------------------------------------


def test_parse_dd_reads_bytes_and_seconds():
    assert br.parse_dd(DD_STDERR) == {"bytes": 134217728, "seconds": 2.48297}


@pytest.mark.parametrize("line, seconds", [
    ("1048576 bytes (1.0 MB, 1.0 MiB) copied, 0,5 s, 2,1 MB/s", 0.5),
    ("512 bytes copied, 1.5e-05 s, 34 MB/s", 1.5e-05),
])  # fmt: skip
def test_parse_dd_decimal_comma_and_exponent(line, seconds):
    assert br.parse_dd(line)["seconds"] == seconds


def test_parse_dd_without_a_summary_raises():
    with pytest.raises(ValueError, match="no dd summary"):
        br.parse_dd("dd: failed to open '/dev/x': No such file or directory")


def test_parse_sums_and_their_problems():
    sums = br.parse_sums(f"{SHA_A}  f0000\n{SHA_B} *f0001\n\n")
    assert sums == {"f0000": SHA_A, "f0001": SHA_B}
    assert br.sums_problems(sums, dict(sums)) == []
    problems = br.sums_problems(sums, {"f0000": SHA_B, "f0002": SHA_A})
    assert problems == ["1 file(s) missing: f0001", "1 file(s) unexpected: f0002",
                        "1 file(s) with another SHA-256: f0000"]  # fmt: skip


def test_parse_bitmap():
    assert br.parse_bitmap(EXAMINE_BITMAP) == {"bits": 127, "dirty": 4, "chunk_bytes": 2**20}
    assert br.parse_bitmap("Chunksize : 64 KB")["chunk_bytes"] == 65536
    assert br.parse_bitmap("") == {"bits": None, "dirty": None, "chunk_bytes": None}


def test_parse_written_bytes():
    assert br.parse_written_bytes(STAT) == 262144 * 512
    with pytest.raises(ValueError):
        br.parse_written_bytes("1 2 3")


def test_parse_sections():
    text = "junk\n--- stat\n1 2\n--- sums\nxvdb x\nxvdc y\n--- dmesg\n"
    assert br.parse_sections(text) == {"stat": "1 2\n", "sums": "xvdb x\nxvdc y\n", "dmesg": ""}


def test_parse_kernel_resync_after_the_marker_only():
    got = br.parse_kernel_resync(DMESG, "xcbench: bitmap-r1-42")
    assert got["marker"] == 305.000001 and got["start"] == 306.1 and got["end"] == 306.95
    assert got["action"] == "recovery" and got["outcome"] == "done"
    assert got["kernel_s"] == pytest.approx(0.85)


def test_parse_kernel_resync_takes_the_last_marker_and_reports_interrupted():
    text = DMESG + "[  400.0] xcbench: bitmap-r1-42\n[  401.0] md: recovery of RAID array md0\n" \
                   "[  402.5] md: md0: recovery interrupted.\n"
    got = br.parse_kernel_resync(text, "xcbench: bitmap-r1-42")
    assert (got["start"], got["outcome"], got["kernel_s"]) == (401.0, "interrupted", 1.5)


@pytest.mark.parametrize("text", [
    DMESG.replace("xcbench: bitmap-r1-42", "something else"),  # no marker
    DMESG.replace("[  306.950000] md: md0: recovery done.\n", ""),  # not finished
    DMESG.replace("md0", "md1"),  # another array
])  # fmt: skip
def test_parse_kernel_resync_gives_none_without_its_lines(text):
    assert br.parse_kernel_resync(text, "xcbench: bitmap-r1-42")["kernel_s"] is None


def test_parse_cmp():
    assert br.parse_cmp("rc=0\n") == {"equal": True, "detail": None}
    differ = br.parse_cmp("/dev/fd/63 /dev/fd/62 differ: byte 5001, line 19\nrc=1\n")
    assert differ == {"equal": False, "detail": "/dev/fd/63 /dev/fd/62 differ: byte 5001, line 19"}
    assert br.parse_cmp("cmp: EOF on /dev/fd/62 after byte 0\nrc=1")["equal"] is False
    assert br.parse_cmp("")["equal"] is False  # the script stopped before cmp


# --- validity ----------------------------------------------------------------------------------


def backup_ret(transferred, size, link_dest=None, **over):
    ret = {"result": True, "error": None, "backup": "20261124T010000Z", "link_dest": link_dest,
           "snapshot": {"name": "mdg.disk0.node1-xcbk", "full": False, "usage_percent": 1.0},
           "rsync": {"transferred": transferred, "transferred_size": size},
           "cleanup": [{"step": "umount", "ok": True}], "seconds": 12.5}  # fmt: skip
    return {**ret, **over}


def test_a_clean_full_and_incremental_backup_have_no_problems():
    assert br.backup_problems(backup_ret(1000, 1000 * 65536), 1000, 65536) == []
    names = br.changed_files(1000, 1)
    incr = backup_ret(10, 10 * 65536, link_dest="20261124T000000Z")
    assert br.backup_problems(incr, 1000, 65536, changed=names, link_dest="20261124T000000Z") == []


@pytest.mark.parametrize("ret, word", [
    (backup_ret(999, 999 * 65536), "rsync moved 999"),
    (backup_ret(1000, 1000 * 65536, result=False, error="boom"), "backup failed: boom"),
    (backup_ret(1000, 1000 * 65536, cleanup=[{"step": "snapshot_remove", "ok": False, "error": "busy"}]),
     "snapshot_remove failed: busy"),
    (backup_ret(1000, 1000 * 65536, snapshot={"full": True}), "snapshot overflowed"),
    (backup_ret(1000, 1000 * 65536, link_dest="20261123T000000Z"), "link_dest"),
    ("ERROR: no such module", "backup_leg returned"),
])  # fmt: skip
def test_an_invalid_full_backup_says_why(ret, word):
    assert any(word in p for p in br.backup_problems(ret, 1000, 65536))


def test_an_incremental_backup_that_moved_more_than_the_changed_files_is_invalid():
    incr = backup_ret(11, 11 * 65536, link_dest="20261124T000000Z")
    problems = br.backup_problems(incr, 1000, 65536, changed=br.changed_files(1000, 1),
                                  link_dest="20261124T000000Z")  # fmt: skip
    assert problems == [f"rsync moved 11 files / {11 * 65536} bytes, expected 10 / {10 * 65536}"]


def test_dd_problems():
    assert br.dd_problems({"bytes": 100, "seconds": 1.0}, 100) == []
    assert "read 50 bytes" in br.dd_problems({"bytes": 50, "seconds": 1.0}, 100)[0]
    assert br.dd_problems({"bytes": 100, "seconds": 0.0}, 100)


def resync_sample(mode, written, method=None, equal=True, outcome="done", kernel_s=1.0, wall_s=3.0):
    return {
        "mode": mode, "method": method or {"bitmap": "re-add", "full": "add"}[mode],
        "legs": {"equal": equal, "detail": None if equal else "differ: byte 5001, line 19"},
        "kernel": {"outcome": outcome, "kernel_s": kernel_s}, "wall_s": wall_s,
        "written_bytes": written, "array_bytes": 127 * 2**20,
    }  # fmt: skip


def test_valid_resyncs_have_no_problems():
    assert br.resync_problems("bitmap", resync_sample("bitmap", 4 * 2**20)) == []
    assert br.resync_problems("full", resync_sample("full", 127 * 2**20 + 8192)) == []
    assert br.resync_problems("bitmap", resync_sample("bitmap", 4 * 2**20, outcome=None)) == []  # no kernel lines


@pytest.mark.parametrize("mode, sample, word", [
    ("bitmap", resync_sample("bitmap", 4 * 2**20, method="add"), "used 'add'"),
    ("bitmap", resync_sample("bitmap", 127 * 2**20), "a full resync, or none"),
    ("bitmap", resync_sample("bitmap", 0), "a full resync, or none"),
    ("full", resync_sample("full", 4 * 2**20), "only 4194304 bytes"),
    ("full", resync_sample("full", 127 * 2**20, equal=False), "data differ after the resync: differ: byte 5001"),
    ("bitmap", resync_sample("bitmap", 4 * 2**20, equal=False), "data differ"),
    ("full", resync_sample("full", 127 * 2**20, outcome="interrupted"), "interrupted"),
])  # fmt: skip
def test_invalid_resyncs_say_why(mode, sample, word):
    assert any(word in p for p in br.resync_problems(mode, sample))


# --- results ----------------------------------------------------------------------------------


def test_samples_ratio_goal():
    assert br.samples([3.0, 1.0, 2.0]) == {"samples": [3.0, 1.0, 2.0], "median": 2.0}
    with pytest.raises(ValueError):
        br.samples([])
    assert br.ratio(1.0, 4.0) == 0.25 and br.ratio(1.0, 0) is None and br.ratio(None, 1.0) is None
    assert br.goal("full_backup/dd", 1.3) == {"ratio": 1.3, "goal": "<= 1.3", "met": True}
    assert br.goal("incremental/full_backup", 0.2)["met"] is False
    assert br.goal("bitmap_resync/full_resync", None)["met"] is None


def backup_round(n, dd_s, full_s, incr_s):
    return {"round": n, "dd": {"bytes": 128 * 2**20, "seconds": dd_s},
            "full": {"seconds": full_s, "wall_s": full_s + 2}, "incremental": {"seconds": incr_s, "wall_s": incr_s + 2}}


def resync_round(bitmap_kernel, full_kernel):
    return {"bitmap": resync_sample("bitmap", 4 * 2**20, kernel_s=bitmap_kernel, wall_s=3.0),
            "full": resync_sample("full", 127 * 2**20, kernel_s=full_kernel, wall_s=20.0)}


def test_backup_summary_and_ratios():
    b = br.backup_summary([backup_round(1, 2.0, 10.0, 3.0), backup_round(2, 2.2, 12.0, 2.0)])
    assert b["dd_s"]["median"] == 2.1 and b["full_s"]["median"] == 11.0 and b["incremental_wall_s"]["median"] == 4.5
    r = br.ratios(b, None)
    assert r["full_backup/dd"] == round(11.0 / 2.1, 4) and r["incremental/full_backup"] == round(2.5 / 11, 4)
    assert r["bitmap_resync/full_resync"] is None and r["bitmap_resync_bytes/full_resync_bytes"] is None


def test_resync_summary_uses_kernel_time_when_every_sample_has_it():
    s = br.resync_summary([resync_round(0.5, 10.0), resync_round(0.7, 12.0)])
    assert s["time_source"] == "kernel_s"
    assert s["bitmap"]["time_s"]["median"] == 0.6 and s["full"]["time_s"]["median"] == 11.0
    r = br.ratios(None, s)
    assert r["bitmap_resync/full_resync"] == round(0.6 / 11.0, 4)
    assert r["bitmap_resync_bytes/full_resync_bytes"] == round(4 / 127, 4)


def test_resync_summary_falls_back_to_host_time_if_one_sample_lacks_kernel_time():
    s = br.resync_summary([resync_round(0.5, 10.0), resync_round(None, 12.0)])
    assert s["time_source"] == "wall_s"
    assert s["bitmap"]["time_s"]["median"] == 3.0 and s["full"]["time_s"]["median"] == 20.0


def assembled(backup=True, resync=True, errors=(), only=None):
    b = br.backup_summary([backup_round(1, 2.0, 2.4, 0.3)]) if backup else None
    s = br.resync_summary([resync_round(0.5, 10.0)]) if resync else None
    return br.assemble(
        command="python benchmarks/backup_resync.py", when=dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.timezone.utc),
        git={"commit": "abc", "dirty": False}, host={"name": "h"}, lab={"image_key": "k"},
        params=br.params(args_ns(rounds=1, only=only)), backup=b, resync=s, errors=list(errors),
        phases_s={"total": 1.0},
    )  # fmt: skip


def test_assemble_reports_goals_met_or_not():
    result = assembled()
    assert result["benchmark"] == "backup_resync" and result["date"] == "2026-11-25T01:02:03+00:00"
    assert result["complete"] is True and result["errors"] == []
    assert result["goals"]["full_backup/dd"] == {"ratio": 1.2, "goal": "<= 1.3", "met": True}
    assert result["goals"]["incremental/full_backup"] == {"ratio": 0.125, "goal": "<= 0.15", "met": True}
    assert result["goals"]["bitmap_resync/full_resync"] == {"ratio": 0.05, "goal": "<= 0.1", "met": True}
    assert result["params"]["changed_files"] == 10 and result["method"]


def test_assemble_is_incomplete_with_a_part_missing_or_an_error():
    missing = assembled(resync=False)
    assert missing["complete"] is False and missing["goals"]["bitmap_resync/full_resync"]["met"] is None
    assert assembled(resync=False, only="backup")["complete"] is True
    error = assembled(errors=[{"test": "test_resync_bitmap_vs_full", "when": "teardown", "error": "x"}])
    assert error["complete"] is False


def test_format_summary():
    text = br.format_summary(assembled())
    assert "full backup of 1000 x 64 KiB: 2.40 s" in text
    assert "full_backup/dd = 1.2 (goal <= 1.3): MET" in text
    assert "bitmap_resync/full_resync = 0.05 (goal <= 0.1): MET" in text
    assert "INCOMPLETE" not in text
    partial = br.format_summary(assembled(resync=False, errors=[{"test": "t", "when": "call", "error": "e"}]))
    assert "bitmap_resync/full_resync = - (goal <= 0.1): not measured" in partial
    assert "INCOMPLETE: t (call)" in partial


def test_result_path():
    when = dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.timezone.utc)
    assert br.result_path(pathlib.Path("/r"), when) == pathlib.Path("/r/backup_resync-20261125-010203.json")


# --- command lines and the pytest run -------------------------------------------------------


def test_command_lines():
    assert br.write_files_line(1000, 65536).startswith(f"head -c {1000 * 65536} /dev/urandom | split -b 65536 -a 4 -d")
    assert br.rewrite_files_line(["f0001", "f0101"], 65536) == (
        "cd /mnt/data && for f in f0001 f0101; do head -c 65536 /dev/urandom > $f; done && sync")
    dd = br.dd_line("/dev/xcguest/mdg.disk0.node1-xcbk")
    assert "drop_caches" in dd
    assert "LC_ALL=C dd if=/dev/xcguest/mdg.disk0.node1-xcbk of=/dev/null bs=1M iflag=direct" in dd
    assert "echo 'xcbench: bitmap-r1-1' > /dev/kmsg" in br.before_resync_line("bitmap-r1-1")
    after = br.after_resync_line()
    assert "cmp -n $size <(dd if=/dev/xvdb bs=1M iflag=direct," in after and "<(dd if=/dev/xvdc" in after
    assert "/sys/block/md0/md/dev-xvdc/offset" in after and "/sys/block/xvdc/stat" in after
    assert after.endswith("dmesg")


def test_pytest_argv_disables_salt_factories_and_selects_a_part():
    argv = br.pytest_argv(args_ns())
    assert argv[0].endswith("benchmarks/backup_resync.py") and "-s" in argv
    assert "no:salt-factories-log-server" in argv and "no:salt-factories-event-listener" in argv
    assert "no:cacheprovider" in argv and "-k" not in argv
    assert br.pytest_argv(args_ns(only="resync"))[-2:] == ["-k", "test_resync"]


def test_recorder_keeps_failures():
    rec = br.Recorder(args_ns())
    rec.pytest_runtest_logreport(SimpleNamespace(failed=False))
    rec.pytest_runtest_logreport(SimpleNamespace(failed=True, nodeid="benchmarks/backup_resync.py::test_x",
                                                 when="setup", longreprtext="E   boom"))  # fmt: skip
    assert rec.errors == [{"test": "test_x", "when": "setup", "error": "E   boom"}]
    assert rec.XCBENCH == "backup_resync"
