"""xencluster_lvm execution module: parsing real LVM reports, validation, create/grow."""

import json
import pathlib

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_lvm as lvm

RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings"
REC = "bookworm-3pv-2lv"
MiB = 1024**2

INJECTIONS = [
    "",
    "vg0; rm -rf /",
    "vg0 && reboot",
    "$(reboot)",
    "`id`",
    "vg0|cat",
    "vg0\n",
    "vg0\nrm",
    "-ff",
    "--force",
    "../../etc",
    "vg 0",
    "vg0'",
    'vg0"',
    "vg0>/etc/passwd",
    "vg0\x00",
    "vg0\u200b",
    "ｖｇ0",
    "a" * 65,
    None,
    7,
    ["vg0"],
]


@pytest.fixture
def configure_loader_modules(run_all):
    return {lvm: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def recorded(run_all, recording):
    """The fake LVM answers every report with the real recording."""
    for cmd in ("pvs", "vgs", "lvs"):
        run_all.outputs[cmd] = recording("lvm", REC, cmd)
    return run_all


# --- sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,expected",
    [
        (1, 1),
        (1073741824, 1073741824),
        ("1073741824", 1073741824),
        ("64k", 64 * 1024),
        ("64K", 64 * 1024),
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("10G", 10 * 1024**3),
        ("10GiB", 10 * 1024**3),
        ("2T", 2 * 1024**4),
        ("1P", 1024**5),
        ("1E", 1024**6),
    ],
)
def test_parse_size_accepts_bytes_and_binary_units(size, expected):
    assert lvm.parse_size(size) == expected


@pytest.mark.parametrize(
    "size",
    [
        0, -1, "0", "0G", "-1G", "+1G", "1.5G", "1,5G", "10GB", "10gb", "10 G", " 10G", "10G ",
        "10G\n", "G", "", "10X", "0x10", "1e9", "10Gi", "10iB", True, None, 1.0, "１0G", "10G;reboot",
    ],
)  # fmt: skip
def test_parse_size_refuses_everything_else(size):
    with pytest.raises(SaltInvocationError):
        lvm.parse_size(size)


# --- names ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", INJECTIONS)
def test_bad_vg_names_never_reach_a_command(run_all, bad):
    with pytest.raises(SaltInvocationError):
        lvm.lv_create(bad, "web1-disk0-a", "1G")
    with pytest.raises(SaltInvocationError):
        lvm.lv_extend(bad, "web1-disk0-a", "1G")
    assert run_all.calls == []


@pytest.mark.parametrize(
    "bad", [*INJECTIONS, "snapshot1", "pvmove0", "web1_rimage_0", "x_tmeta", "web1_mlog"]
)
def test_bad_lv_names_never_reach_a_command(run_all, bad):
    with pytest.raises(SaltInvocationError):
        lvm.lv_create("vg0", bad, "1G")
    with pytest.raises(SaltInvocationError):
        lvm.lv_extend("vg0", bad, "1G")
    assert run_all.calls == []


@pytest.mark.parametrize(
    "bad",
    ["/dev/sdb;reboot", "/dev/../etc/passwd", "sdb", "/dev/sdb:0-99", "/dev/sd b", "/dev/sdb\n", "-/dev/sdb", [], ["/dev/sdb", "$(id)"]],
)  # fmt: skip
def test_bad_pv_paths_never_reach_a_command(run_all, bad):
    with pytest.raises(SaltInvocationError):
        lvm.lv_create("vg0", "web1-disk0-a", "1G", pvs=bad)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "stripes,stripe_size",
    [(0, None), (129, None), (True, None), ("2", None), (1, "64k"), (None, "64k"), (2, "3k"), (2, "96k"), (2, "2k")],
)  # fmt: skip
def test_bad_stripes_are_refused(run_all, stripes, stripe_size):
    with pytest.raises(SaltInvocationError):
        lvm.lv_create("vg0", "db1-disk0-a", "1G", stripes=stripes, stripe_size=stripe_size)
    assert run_all.calls == []


def test_lv_args_normalises():
    assert lvm.lv_args("vg0", "db1-disk0-a", "1G", 2, "64k", "/dev/sdb") == {
        "vg": "vg0",
        "name": "db1-disk0-a",
        "size": 1024**3,
        "stripes": 2,
        "stripe_size": 65536,
        "pvs": ["/dev/sdb"],
    }


# --- report ----------------------------------------------------------------------


def test_report_parses_the_recording_into_exact_ints(recorded):
    rep = lvm.report()
    assert recorded.commands() == ["pvs", "vgs", "lvs"]  # one call per tool, whatever the count

    assert rep["vgs"]["xcrec"] == {
        "vg_name": "xcrec",
        "vg_uuid": "YwPe25-iPeh-pizM-m40m-jIKs-66c3-byRUg6",
        "vg_attr": "wz--n-",
        "vg_size": 2139095040,
        "vg_free": 1669332992,
        "vg_extent_size": 4194304,
        "vg_extent_count": 510,
        "vg_free_count": 398,
        "pv_count": 2,
        "lv_count": 2,
    }
    assert sorted(rep["pvs"]) == ["/dev/loop0", "/dev/loop1", "/dev/loop2"]
    assert rep["pvs"]["/dev/loop2"]["vg_name"] == ""  # a PV in no VG
    assert rep["pvs"]["/dev/loop0"]["pv_free"] == 666894336

    web = rep["lvs"]["xcrec/web1-disk0-a"]
    assert web["size"] == 320 * MiB
    assert web["seg_count"] == 2
    assert [(s["start"], s["size"], s["devices"]) for s in web["segments"]] == [
        (0, 256 * MiB, ["/dev/loop0(0)"]),
        (256 * MiB, 64 * MiB, ["/dev/loop0(80)"]),
    ]
    db = rep["lvs"]["xcrec/db1-disk0-a"]
    assert db["segments"] == [
        {
            "start": 0,
            "size": 128 * MiB,
            "type": "striped",
            "stripes": 2,
            "stripe_size": 65536,
            "devices": ["/dev/loop0(64)", "/dev/loop1(0)"],
        }
    ]
    assert db["path"] == "/dev/xcrec/db1-disk0-a"


def test_report_argv_is_exact_and_machine_readable(recorded):
    lvm.report()
    for argv in recorded.calls:
        assert argv[1:6] == ["--reportformat", "json", "--units", "b", "--nosuffix"]
        assert "-o" in argv  # explicit field list


def test_report_of_a_host_without_lvm(run_all, recording):
    for cmd in ("pvs", "vgs", "lvs"):
        run_all.outputs[cmd] = recording("lvm", "bookworm-no-lvm", cmd)
    assert lvm.report() == {"pvs": {}, "vgs": {}, "lvs": {}}


def test_report_failure_carries_stderr(run_all):
    run_all.outputs["pvs"] = {"retcode": 5, "stderr": "  Volume group vg0 has insufficient free space"}
    with pytest.raises(CommandExecutionError, match="insufficient free space"):
        lvm.report()


def test_report_refuses_non_json(run_all):
    run_all.outputs["pvs"] = "  PV  VG  Fmt\n"
    with pytest.raises(CommandExecutionError, match="unexpected LVM pv report"):
        lvm.report()


# --- create / extend ------------------------------------------------------------------


def _lvs_of(recording, lv):
    """The recorded lvs report narrowed to one LV (what `lvs ... vg/lv` prints)."""
    data = json.loads(recording("lvm", REC, "lvs"))
    rows = [r for r in data["report"][0]["lv"] if f"{r['vg_name']}/{r['lv_name']}" == lv]
    return json.dumps({"report": [{"lv": rows}]})


def test_lv_create_argv(run_all, recording):
    run_all.outputs["lvcreate"] = ""
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/db1-disk0-a")
    lv = lvm.lv_create(
        "xcrec", "db1-disk0-a", "128M", stripes=2, stripe_size="64k", pvs=["/dev/loop0", "/dev/loop1"]
    )
    assert run_all.calls[0] == [
        "lvcreate", "--yes", "--name", "db1-disk0-a", "--size", f"{128 * MiB}b",
        "--stripes", "2", "--stripesize", "65536b", "--", "xcrec", "/dev/loop0", "/dev/loop1",
    ]  # fmt: skip
    assert run_all.calls[1][-1] == "xcrec/db1-disk0-a"
    assert lv["size"] == 128 * MiB


def test_sizes_are_rounded_up_to_sectors_for_lvm(run_all, recording):
    run_all.outputs["lvcreate"] = ""
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/web1-disk0-a")
    lvm.lv_create("xcrec", "web1-disk0-a", 10000000)
    assert "10000384b" in run_all.calls[0]  # LVM refuses byte sizes not a multiple of 512


def test_lv_extend_grows(run_all, recording):
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/web1-disk0-a")
    run_all.outputs["lvextend"] = ""
    res = lvm.lv_extend("xcrec", "web1-disk0-a", "400M")
    assert run_all.commands() == ["lvs", "lvextend", "lvs"]
    assert run_all.calls[1] == ["lvextend", "--size", f"{400 * MiB}b", "--", "xcrec/web1-disk0-a"]
    assert res["old_size"] == 320 * MiB


def test_lv_extend_same_size_runs_nothing(run_all, recording):
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/web1-disk0-a")
    # 318M rounds up to 80 extents of 4 MiB = the current 320M: no lvextend
    assert lvm.lv_extend("xcrec", "web1-disk0-a", "318M") == {
        "old_size": 320 * MiB,
        "new_size": 320 * MiB,
    }
    assert run_all.commands() == ["lvs"]


@pytest.mark.parametrize(
    "flags",
    [{}, {"allow_shrink": True}, {"fs_already_shrunk": True}, {"allow_shrink": "yes", "fs_already_shrunk": 1}],
)  # fmt: skip
def test_lv_extend_refuses_to_shrink(run_all, recording, flags):
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/web1-disk0-a")
    with pytest.raises(CommandExecutionError, match="refusing to shrink"):
        lvm.lv_extend("xcrec", "web1-disk0-a", "100M", **flags)
    assert run_all.commands() == ["lvs"]


def test_lv_extend_shrinks_only_with_both_flags(run_all, recording):
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/web1-disk0-a")
    run_all.outputs["lvreduce"] = ""
    lvm.lv_extend("xcrec", "web1-disk0-a", "100M", allow_shrink=True, fs_already_shrunk=True)
    assert run_all.calls[1] == ["lvreduce", "--yes", "--size", f"{100 * MiB}b", "--", "xcrec/web1-disk0-a"]


def test_lv_extend_missing_lv(run_all, recording):
    run_all.outputs["lvs"] = _lvs_of(recording, "xcrec/nope")
    with pytest.raises(CommandExecutionError, match="not found"):
        lvm.lv_extend("xcrec", "nope", "1G")


def test_lvcreate_failure_carries_stderr(run_all):
    run_all.outputs["lvcreate"] = {
        "retcode": 5,
        "stderr": '  Volume group "xcrec" has insufficient free space (398 extents): 1000 required.\n',
    }
    with pytest.raises(CommandExecutionError, match="insufficient free space") as exc:
        lvm.lv_create("xcrec", "big", "4000M")
    assert exc.value.info["retcode"] == 5


def test_virtual_needs_lvm(monkeypatch):
    monkeypatch.setattr(lvm.salt.utils.path, "which", lambda name: None)
    assert lvm.__virtual__() == (False, "xencluster_lvm: the lvm binary (lvm2) is not installed")
    monkeypatch.setattr(lvm.salt.utils.path, "which", lambda name: f"/usr/sbin/{name}")
    assert lvm.__virtual__() == "xencluster_lvm"


@pytest.mark.parametrize("name", ["bookworm-3pv-2lv", "bookworm-no-lvm"])
def test_recordings_match_the_argv_the_module_runs(name):
    """A recording is only evidence for the command it recorded: re-record when the argv changes."""
    meta = json.loads((RECORDINGS / "lvm" / name / "meta.json").read_text())
    for cmd, argv in {"pvs": lvm.PVS_ARGV, "vgs": lvm.VGS_ARGV, "lvs": lvm.LVS_ARGV}.items():
        recorded = [a for a in meta["commands"][cmd]["argv"] if not a.startswith(("--devices=", "--config="))]
        assert recorded == argv, f"{name}/{cmd}: recorded with {recorded}, the module runs {argv}"
