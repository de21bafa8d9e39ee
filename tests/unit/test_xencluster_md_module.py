"""xencluster_md execution module: md RAID1 status from real mdstat/mdadm recordings, validation, mirror ops."""

import json
import pathlib

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_md as md

RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings"

INJECTIONS = [
    "",
    "/dev/md0; rm -rf /",
    "/dev/md0 && reboot",
    "/dev/md0$(reboot)",
    "/dev/`id`",
    "/dev/md0|cat",
    "/dev/md0\n",
    "/dev/md0\nrm",
    "--force",
    "-f",
    "/dev/-f",
    "/dev/../etc/passwd",
    "/dev/md/../../etc",
    "/dev/md0 /dev/md1",
    "/dev/md0'",
    '/dev/md0"',
    "/dev/md0>/etc/passwd",
    "/dev/md0\x00",
    "/dev/md0\u200b",
    "/dev/ｍｄ0",
    "md0",
    "/tmp/md0",
    "/dev/md/" + "a" * 33,
    None,
    0,
    ["/dev/md0"],
]


@pytest.fixture
def configure_loader_modules(run_all):
    return {md: {"__salt__": {"cmd.run_all": run_all}}}


# --- validation ------------------------------------------------------------------


@pytest.mark.parametrize("bad", INJECTIONS)
def test_bad_md_names_never_reach_a_command(run_all, bad):
    # status(None) / set_sync_speed(md=None) mean every array / system-wide
    calls = [] if bad is None else [lambda: md.status(bad), lambda: md.set_sync_speed(max_kbs=1000, md=bad)]
    for call in (
        *calls,
        lambda: md.fail_leg(bad, "/dev/xvdb"),
        lambda: md.remove_leg(bad, "/dev/xvdb"),
        lambda: md.re_add(bad, "/dev/xvdb"),
        lambda: md.create_mirror(bad, ["/dev/xvdb", "/dev/xvdc"]),
    ):
        with pytest.raises(SaltInvocationError):
            call()
    assert run_all.calls == []


@pytest.mark.parametrize("bad", [*INJECTIONS, "/dev/md0", "/dev/md/web1", "/dev/md127p1", "/dev/md/" + "a" * 40, "/dev/xvdb/", "/dev/./xvdb", "/dev/a b"])
def test_bad_leg_paths_never_reach_a_command(run_all, bad):
    for call in (
        lambda: md.fail_leg("/dev/md0", bad),
        lambda: md.remove_leg("/dev/md0", bad),
        lambda: md.re_add("/dev/md0", bad),
        lambda: md.examine(bad),
        lambda: md.create_mirror("/dev/md0", [bad, "/dev/xvdc"]),
    ):
        with pytest.raises(SaltInvocationError):
            call()
    assert run_all.calls == []


@pytest.mark.parametrize(
    "leg",
    ["/dev/xvdb", "/dev/mdrec/leg0", "/dev/mapper/vg0-web1--disk0--a", "/dev/disk/by-id/virtio-n2data2",
     "/dev/disk/by-path/ip-10.0.0.2:3260-iscsi-iqn.2026-11.lab:xcl-lun-0", "/dev/xc/web1-disk0-b"],
)  # fmt: skip
def test_good_leg_paths(leg):
    assert md._check_leg(leg) == leg


@pytest.mark.parametrize("md_path", ["/dev/md0", "/dev/md127", "/dev/md/web1", "/dev/md/web1-disk0.x_y"])
def test_good_md_paths(md_path):
    assert md._check_md(md_path) == md_path


@pytest.mark.parametrize(
    "legs",
    [["/dev/xvdb"], ["/dev/xvdb", "/dev/xvdb"], ["/dev/xvdb", "/dev/xvdc", "/dev/xvdd"], "/dev/xvdb", [], None],
)
def test_a_mirror_has_exactly_two_distinct_legs(run_all, legs):
    with pytest.raises(SaltInvocationError):
        md.create_mirror("/dev/md0", legs)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "a b"}, {"name": "-x"}, {"name": "x;y"}, {"name": "a" * 33}, {"metadata": "0.90"},
     {"metadata": "1.2;x"}, {"bitmap": "/tmp/bitmap"}, {"bitmap": "external"},
     {"bitmap_chunk": "3M"}, {"bitmap_chunk": "2K"}, {"bitmap_chunk": "2G"}, {"bitmap_chunk": "1M;x"},
     {"bitmap_chunk": 1024}, {"bitmap_chunk": "-1M"}, {"bitmap_chunk": "1M", "bitmap": "none"}],
)  # fmt: skip
def test_create_mirror_refuses_bad_options(run_all, kwargs):
    with pytest.raises(SaltInvocationError):
        md.create_mirror("/dev/md0", ["/dev/xvdb", "/dev/xvdc"], **kwargs)
    assert run_all.calls == []


def test_virtual_needs_mdadm(monkeypatch):
    monkeypatch.setattr(md.salt.utils.path, "which", lambda name: None)
    assert md.__virtual__() == (False, "xencluster_md: the mdadm binary is not installed")
    monkeypatch.setattr(md.salt.utils.path, "which", lambda name: f"/sbin/{name}")
    assert md.__virtual__() == "xencluster_md"


def test_every_public_function_has_a_cli_example():
    for name in ("status", "examine", "create_mirror", "fail_leg", "remove_leg", "re_add",
                 "set_sync_speed", "parse_mdstat", "parse_export"):  # fmt: skip
        assert "CLI Example:" in getattr(md, name).__doc__, name


# --- sync speed: plain file I/O, no command ----------------------------------------


@pytest.fixture
def speed_files(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "speed_limit_min").write_text("1000\n")
    (proc / "speed_limit_max").write_text("200000\n")
    sysmd = tmp_path / "sys" / "md127" / "md"
    sysmd.mkdir(parents=True)
    (sysmd / "sync_speed_min").write_text("1000 (system)\n")
    (sysmd / "sync_speed_max").write_text("200000 (system)\n")
    monkeypatch.setattr(md, "PROC_RAID", str(proc))
    monkeypatch.setattr(md, "SYS_BLOCK", str(tmp_path / "sys"))
    monkeypatch.setattr(md, "_real", lambda p: {"/dev/md/mdrec": "/dev/md127"}.get(p, p))
    return proc, sysmd


def test_set_sync_speed_system_wide(run_all, speed_files):
    proc, _ = speed_files
    res = md.set_sync_speed(max_kbs=1000)
    assert res == {"min": {"old": "1000", "new": "1000"}, "max": {"old": "200000", "new": "1000"}}
    assert (proc / "speed_limit_max").read_text() == "1000\n"
    assert run_all.calls == []


def test_set_sync_speed_per_array_by_name(run_all, speed_files):
    _, sysmd = speed_files
    res = md.set_sync_speed(min_kbs="500", max_kbs=5000, md="/dev/md/mdrec")
    assert (sysmd / "sync_speed_min").read_text() == "500\n"
    assert (sysmd / "sync_speed_max").read_text() == "5000\n"
    assert res["max"]["old"] == "200000 (system)"
    assert run_all.calls == []


@pytest.mark.parametrize(
    "kwargs",
    [{"max_kbs": 0}, {"max_kbs": -1}, {"max_kbs": "1k"}, {"max_kbs": "1000; reboot"}, {"max_kbs": True},
     {"max_kbs": 1.5}, {"max_kbs": 10**10}, {"min_kbs": 5000, "max_kbs": 1000}, {"min_kbs": "\uff11"},
     {"max_kbs": "1000\n"}],
)  # fmt: skip
def test_set_sync_speed_refuses_bad_values(speed_files, kwargs):
    proc, _ = speed_files
    with pytest.raises(SaltInvocationError):
        md.set_sync_speed(**kwargs)
    assert (proc / "speed_limit_max").read_text() == "200000\n"


def test_set_sync_speed_of_a_name_that_is_no_md(speed_files, monkeypatch):
    monkeypatch.setattr(md, "_real", lambda p: "/dev/sda")
    with pytest.raises(CommandExecutionError, match="does not resolve to an md device"):
        md.set_sync_speed(max_kbs=1000, md="/dev/md/evil")


def test_set_sync_speed_without_md_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(md, "PROC_RAID", str(tmp_path / "nope"))
    with pytest.raises(CommandExecutionError, match="cannot set md sync speed"):
        md.set_sync_speed(max_kbs=1000)


# --- hosts replayed from real recordings ------------------------------------------
# Recorded on lab node2 (Debian 12, kernel 6.1.0-56, mdadm 4.2-5): RAID1
# /dev/md/mdrec (= md127) over LVs mdrec/leg0 (dm-0) and mdrec/leg1 (dm-1).
# capture.py ran `mdadm --detail --export /dev/md/mdrec`; the module runs the
# same on the kernel path /dev/md127 (meta.json records the realpath).


class Host:
    """Serves one recording: /proc/mdstat from a file, realpaths and mdadm answers from meta.json."""

    def __init__(self, run_all, tmp_path, monkeypatch):
        self.run_all = run_all
        self.mdstat = tmp_path / "mdstat"
        self.realpath = {}
        self.mdstat_reads = 0
        monkeypatch.setattr(md, "MDSTAT", str(self.mdstat))
        monkeypatch.setattr(md, "_real", lambda p: self.realpath.get(p, p))
        real_read = md._read_mdstat

        def counting_read():
            self.mdstat_reads += 1
            return real_read()

        monkeypatch.setattr(md, "_read_mdstat", counting_read)

    def load(self, name):
        rec = RECORDINGS / "md" / name
        meta = json.loads((rec / "meta.json").read_text())
        self.mdstat.write_text((rec / "mdstat.out").read_text())
        self.realpath = dict(meta["realpath"])
        for cmd, info in meta["commands"].items():
            out = {"retcode": info["rc"], "stdout": (rec / f"{cmd}.out").read_text(), "stderr": info["stderr"]}
            if cmd.startswith("detail_export."):
                path = self.realpath[info["argv"][-1]]
                self.run_all.outputs[(*md.DETAIL_EXPORT, path)] = out
            elif cmd.startswith("examine_export."):
                self.run_all.outputs[tuple(info["argv"])] = out
        return self


@pytest.fixture
def host(run_all, tmp_path, monkeypatch):
    return Host(run_all, tmp_path, monkeypatch)


MD = "/dev/md/mdrec"
K = "/dev/md127"
L0, L1 = "/dev/mdrec/leg0", "/dev/mdrec/leg1"
DETAIL = [*md.DETAIL_EXPORT, K]
UUID = "6a26659a:350b5f59:385754c0:6857aa6a"


def _legs(st):
    return [(leg["kernel_name"], leg["role"], leg["state"]) for leg in st["legs"]]


def _counts(st):
    return tuple(st[f"{k}_devices"] for k in ("raid", "active", "working", "failed", "spare"))


def test_status_of_a_clean_mirror(host, run_all):
    host.load("lab-node2-clean")
    st = md.status()
    assert list(st) == [K]
    st = st[K]
    assert st["level"] == "raid1" and st["metadata"] == "1.2"
    assert st["uuid"] == UUID and st["name"] == "node2:mdrec"
    assert st["state"] == "active"
    assert _counts(st) == (2, 2, 2, 0, 0)
    assert st["bitmap"] == "internal"
    assert st["bitmap_detail"] == {"pages": 1, "pages_total": 1, "page_kib": 4, "chunk_kib": 65536, "file": None}
    assert st["size_kib"] == 261120
    assert _legs(st) == [("dm-0", 0, "active"), ("dm-1", 1, "active")]
    assert st["legs"][0]["device"] == "/dev/dm-0"
    assert st["sync"] is None
    # one mdstat read + one mdadm call per array
    assert host.mdstat_reads == 1 and run_all.calls == [DETAIL]


def test_status_during_the_initial_resync(host):
    st = host.load("lab-node2-initial-resync") and md.status(MD)[K]
    assert st["state"] == "active, resyncing"
    assert _counts(st) == (2, 2, 2, 0, 0)  # a resync keeps both legs in sync-state U
    assert st["sync"] == {
        "action": "resync", "percent": 1.9, "done_kib": 5376, "total_kib": 261120,
        "speed_kbs": 1344, "eta_seconds": 186,
    }  # fmt: skip


def test_status_with_a_failed_leg_still_in_the_array(host):
    # mdadm --export calls the faulty leg's role "spare"; mdstat's (F) says faulty.
    st = host.load("lab-node2-leg1-faulty") and md.status(MD)[K]
    assert st["state"] == "active, degraded"
    assert _counts(st) == (2, 1, 1, 1, 0)
    assert _legs(st) == [("dm-0", 0, "active"), ("dm-1", "spare", "faulty"), (None, 1, "missing")]
    assert st["bitmap_detail"]["pages"] == 0


def test_status_degraded_after_the_leg_was_removed(host):
    st = host.load("lab-node2-degraded") and md.status(MD)[K]
    assert st["state"] == "active, degraded"
    assert _counts(st) == (2, 1, 1, 0, 0)
    assert _legs(st) == [("dm-0", 0, "active"), (None, 1, "missing")]
    # 48 MiB written while leg1 was away: the bitmap has dirty pages
    assert st["bitmap"] == "internal" and st["bitmap_detail"]["pages"] == 1
    assert st["sync"] is None


@pytest.mark.parametrize(
    "rec,number,percent,speed,eta,pages",
    [
        ("lab-node2-bitmap-recovery", 1, 2.1, 1504, 168, 1),  # --re-add keeps its old slot number
        ("lab-node2-bitmap-recovery-later", 1, 5.0, 1245, 198, 1),
        ("lab-node2-full-recovery", 2, 1.1, 1536, 162, 0),  # --add: a new number, a clean bitmap
    ],
)
def test_status_while_a_leg_recovers(host, rec, number, percent, speed, eta, pages):
    st = host.load(rec) and md.status(MD)[K]
    assert st["state"] == "active, degraded, recovering"
    assert _counts(st) == (2, 1, 2, 0, 1)  # mdadm's meaning: a rebuilding leg counts as spare
    assert _legs(st) == [("dm-0", 0, "active"), ("dm-1", 1, "rebuilding")]
    assert md.parse_mdstat(host.mdstat.read_text())["md127"]["members"]["dm-1"]["number"] == number
    sync = st["sync"]
    assert (sync["action"], sync["percent"], sync["speed_kbs"], sync["eta_seconds"]) == ("recovery", percent, speed, eta)
    assert sync["total_kib"] == 261120
    assert st["bitmap_detail"]["pages"] == pages


def test_status_of_two_arrays_reads_mdstat_once_and_runs_one_mdadm_per_array(host, run_all):
    host.load("lab-node2-two-arrays")
    st = md.status()
    assert list(st) == ["/dev/md126", "/dev/md127"]
    assert host.mdstat_reads == 1
    assert run_all.calls == [[*md.DETAIL_EXPORT, "/dev/md126"], [*md.DETAIL_EXPORT, "/dev/md127"]]
    small = st["/dev/md126"]
    assert small["name"] == "node2:mdrec2" and small["bitmap"] == "none" and small["bitmap_detail"] is None
    assert small["size_kib"] == 31744 and small["state"] == "active"
    assert _legs(small) == [("dm-2", 0, "active"), ("dm-3", 1, "active")]
    assert st["/dev/md127"]["uuid"] == UUID


def test_detail_scan_export_cannot_be_split_per_array():
    """Why status() does not use `mdadm --detail --scan --export` (mdadm 4.2):
    it prints the per-array blocks back to back, with no separator or array path."""
    rec = RECORDINGS / "md" / "lab-node2-two-arrays"
    scan = (rec / "detail_scan_export.out").read_text()
    per_array = (rec / "detail_export.mdrec.out").read_text() + (rec / "detail_export.mdrec2.out").read_text()
    assert scan == per_array
    assert "" not in scan.splitlines() and "/dev/md12" not in scan


def test_status_of_one_array_by_name(host, run_all):
    host.load("lab-node2-two-arrays")
    assert list(md.status("/dev/md/mdrec2")) == ["/dev/md126"]
    assert run_all.calls == [[*md.DETAIL_EXPORT, "/dev/md126"]]


def test_status_of_a_host_without_arrays(host, run_all):
    host.load("lab-node2-blank-legs")
    assert md.status() == {}
    assert run_all.calls == []
    with pytest.raises(CommandExecutionError, match="not an assembled md array"):
        md.status(MD)


def test_status_without_md_driver(run_all, monkeypatch, tmp_path):
    monkeypatch.setattr(md, "MDSTAT", str(tmp_path / "mdstat"))
    with pytest.raises(CommandExecutionError, match="is the md driver loaded"):
        md.status()


def test_detail_failure_carries_mdadm_stderr(host, run_all):
    host.load("lab-node2-clean")
    run_all.outputs[tuple(DETAIL)] = {"retcode": 1, "stderr": "mdadm: cannot open /dev/md127: No such file or directory\n"}
    with pytest.raises(CommandExecutionError, match="cannot open /dev/md127") as exc:
        md.status()
    assert exc.value.info["retcode"] == 1


# --- examine ----------------------------------------------------------------------


def test_examine_a_blank_leg_and_a_member(host):
    host.load("lab-node2-blank-legs")
    assert md.examine(L0) is None
    host.load("lab-node2-clean")
    sb = md.examine(L0)
    assert sb["MD_UUID"] == UUID and sb["MD_NAME"] == "node2:mdrec" and sb["MD_LEVEL"] == "raid1"
    assert sb["MD_EVENTS"] == "19"


def test_examine_other_failures_raise(run_all):
    run_all.outputs["mdadm"] = {"retcode": 1, "stderr": "mdadm: cannot open /dev/xvdz: No such file or directory\n"}
    with pytest.raises(CommandExecutionError, match="cannot open /dev/xvdz"):
        md.examine("/dev/xvdz")


# --- create_mirror ----------------------------------------------------------------

CREATE = [
    "mdadm", "--create", MD, "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
    "--bitmap=internal", "--name=mdrec", L0, L1,
]  # fmt: skip


def _on(run_all, op, effect):
    """Run effect after an mdadm call whose argv contains op (e.g. '--create')."""
    previous = run_all.effects.get("mdadm")

    def _effect(argv):
        if previous:
            previous(argv)
        if op in argv:
            effect(argv)

    run_all.effects["mdadm"] = _effect


def test_create_mirror_on_blank_legs(host, run_all):
    host.load("lab-node2-blank-legs")
    run_all.outputs[tuple(CREATE)] = {"retcode": 0, "stderr": "mdadm: array /dev/md/mdrec started.\n"}
    _on(run_all, "--create", lambda argv: host.load("lab-node2-initial-resync"))
    res = md.create_mirror(MD, [L0, L1], name="mdrec")
    assert run_all.calls == [[*md.EXAMINE_EXPORT, L0], [*md.EXAMINE_EXPORT, L1], CREATE, DETAIL]
    assert res["changed"] is True
    assert res["status"]["uuid"] == UUID and res["status"]["sync"]["action"] == "resync"


def test_create_mirror_with_a_small_bitmap_chunk(host, run_all):
    host.load("lab-node2-blank-legs")
    create = [*CREATE[:-3], "--bitmap-chunk=1024K", *CREATE[-3:]]
    run_all.outputs[tuple(create)] = {"retcode": 0, "stderr": "mdadm: array /dev/md/mdrec started.\n"}
    _on(run_all, "--create", lambda argv: host.load("lab-node2-initial-resync"))
    assert md.create_mirror(MD, [L0, L1], name="mdrec", bitmap_chunk="1M")["changed"] is True
    assert create in run_all.calls


def test_create_mirror_of_the_assembled_array_changes_nothing(host, run_all):
    host.load("lab-node2-clean")
    res = md.create_mirror(MD, "/dev/mdrec/leg1,/dev/mdrec/leg0", name="mdrec")
    assert res["changed"] is False and res["status"]["state"] == "active"
    assert run_all.calls == [DETAIL]


def test_create_mirror_refuses_when_md_has_other_legs(host, run_all):
    host.load("lab-node2-clean")
    with pytest.raises(CommandExecutionError, match="already assembled"):
        md.create_mirror(MD, ["/dev/xvdb", "/dev/xvdc"])
    assert "--create" not in sum(run_all.calls, [])


def test_create_mirror_refuses_legs_of_another_array_unless_forced(host, run_all):
    # leg0 carries mdrec's superblock (recorded), leg1 is blank; /dev/md/other is not assembled
    host.load("lab-node2-clean")
    host.mdstat.write_text((RECORDINGS / "md" / "lab-node2-blank-legs" / "mdstat.out").read_text())
    run_all.outputs[(*md.EXAMINE_EXPORT, L1)] = {
        "retcode": 1, "stderr": "mdadm: No md superblock detected on /dev/mdrec/leg1.\n"
    }  # fmt: skip
    with pytest.raises(CommandExecutionError, match=f"carries the md superblock.*{UUID}.*force=True"):
        md.create_mirror("/dev/md/other", [L0, L1])
    assert run_all.calls == [[*md.EXAMINE_EXPORT, L0]]

    run_all.calls.clear()
    run_all.outputs["mdadm"] = {"retcode": 0, "stderr": "mdadm: array /dev/md/other started.\n"}

    def created(argv):
        host.load("lab-node2-clean").realpath["/dev/md/other"] = K

    _on(run_all, "--create", created)
    res = md.create_mirror("/dev/md/other", [L0, L1], bitmap="none", metadata=1.2, force=True)
    assert res["changed"] is True
    assert run_all.calls[2] == [
        "mdadm", "--create", "/dev/md/other", "--run", "--level=1", "--raid-devices=2",
        "--metadata=1.2", "--bitmap=none", L0, L1,
    ]  # fmt: skip


def test_create_failure_carries_mdadm_stderr(host, run_all):
    host.load("lab-node2-blank-legs")
    # real stderr of mdadm 4.2 when the legs followed a "--" (lab node2)
    run_all.outputs[tuple(CREATE)] = {
        "retcode": 1, "stderr": "mdadm: You haven't given enough devices (real or missing) to create this array\n"
    }  # fmt: skip
    with pytest.raises(CommandExecutionError, match="enough devices"):
        md.create_mirror(MD, [L0, L1], name="mdrec")


# --- fail, remove, re-add ---------------------------------------------------------


def test_fail_then_remove_a_leg(host, run_all):
    host.load("lab-node2-clean")
    fail = ["mdadm", "--manage", MD, "--fail", L1]
    remove = ["mdadm", "--manage", MD, "--remove", L1]
    run_all.outputs[tuple(fail)] = {"retcode": 0, "stderr": "mdadm: set /dev/mdrec/leg1 faulty in /dev/md/mdrec\n"}
    run_all.outputs[tuple(remove)] = {"retcode": 0, "stderr": "mdadm: hot removed /dev/mdrec/leg1 from /dev/md/mdrec\n"}
    _on(run_all, "--fail", lambda argv: host.load("lab-node2-leg1-faulty"))
    _on(run_all, "--remove", lambda argv: host.load("lab-node2-degraded"))
    st = md.fail_leg(MD, L1)
    assert _legs(st)[1] == ("dm-1", "spare", "faulty")
    st = md.remove_leg(MD, L1)
    assert _legs(st) == [("dm-0", 0, "active"), (None, 1, "missing")]
    assert run_all.calls == [fail, DETAIL, remove, DETAIL]


def test_remove_failure_carries_stderr(host, run_all):
    host.load("lab-node2-clean")
    run_all.outputs["mdadm"] = {"retcode": 1, "stderr": "mdadm: hot remove failed for /dev/mdrec/leg1: Device or resource busy\n"}
    with pytest.raises(CommandExecutionError, match="Device or resource busy"):
        md.remove_leg(MD, L1)


READD = ["mdadm", "--manage", MD, "--re-add", L1]
ADD = ["mdadm", "--manage", MD, "--add", L1]
# real stderr of mdadm 4.2 on lab node2 for a leg whose superblock was zeroed
READD_REFUSED = {"retcode": 1, "stderr": "mdadm: --re-add for /dev/mdrec/leg1 to /dev/md/mdrec is not possible\n"}


def test_re_add_a_returning_leg_resyncs_by_bitmap(host, run_all):
    host.load("lab-node2-degraded")
    run_all.outputs[tuple(READD)] = {"retcode": 0, "stderr": "mdadm: re-added /dev/mdrec/leg1\n"}
    _on(run_all, "--re-add", lambda argv: host.load("lab-node2-bitmap-recovery"))
    res = md.re_add(MD, L1)
    assert res["changed"] is True and res["method"] == "re-add"
    assert res["status"]["sync"]["action"] == "recovery"
    assert run_all.calls == [DETAIL, READD, DETAIL]


def test_re_add_refused_does_not_fall_back_to_a_full_resync(host, run_all):
    host.load("lab-node2-degraded")
    run_all.outputs[tuple(READD)] = READD_REFUSED
    with pytest.raises(CommandExecutionError, match="is not possible -- not falling back.*allow_full_resync=True"):
        md.re_add(MD, L1)
    assert ADD not in run_all.calls


@pytest.mark.parametrize("flag", ["yes", 1, "True"])
def test_re_add_falls_back_only_on_an_explicit_true(host, run_all, flag):
    host.load("lab-node2-degraded")
    run_all.outputs[tuple(READD)] = READD_REFUSED
    with pytest.raises(CommandExecutionError):
        md.re_add(MD, L1, allow_full_resync=flag)
    assert ADD not in run_all.calls


def test_re_add_with_allow_full_resync_adds(host, run_all):
    host.load("lab-node2-degraded")
    run_all.outputs[tuple(READD)] = READD_REFUSED
    run_all.outputs[tuple(ADD)] = {"retcode": 0, "stderr": "mdadm: added /dev/mdrec/leg1\n"}
    _on(run_all, "--add", lambda argv: host.load("lab-node2-full-recovery"))
    res = md.re_add(MD, L1, allow_full_resync=True)
    assert res["method"] == "add" and res["changed"] is True
    assert run_all.calls == [DETAIL, READD, ADD, DETAIL]
    assert _legs(res["status"])[1] == ("dm-1", 1, "rebuilding")


def test_re_add_of_an_active_leg_changes_nothing(host, run_all):
    host.load("lab-node2-clean")
    res = md.re_add(MD, L1)
    assert res["changed"] is False and res["method"] is None
    assert run_all.calls == [DETAIL]


# --- the recordings are evidence for the argv the module runs --------------------


@pytest.mark.parametrize("rec", sorted(p.name for p in (RECORDINGS / "md").iterdir()))
def test_recordings_match_the_argv_the_module_runs(rec):
    meta = json.loads((RECORDINGS / "md" / rec / "meta.json").read_text())
    assert meta["files"] == {"mdstat": md.MDSTAT}
    assert meta["tool_version"] == ["mdadm - v4.2 - 2021-12-30 - Debian 4.2-5"]
    for cmd, info in meta["commands"].items():
        kind = cmd.split(".")[0]
        if kind == "detail_export":
            assert info["argv"][:-1] == md.DETAIL_EXPORT
        elif kind == "examine_export":
            assert info["argv"][:-1] == md.EXAMINE_EXPORT
        else:
            assert info["argv"] == ["mdadm", "--detail", "--scan", "--export"]
