"""The pure parts of benchmarks/report_scaling.py: naming, parsing, result assembly, verdict, arguments."""

import argparse
import datetime as dt
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("report_scaling", ROOT / "benchmarks" / "report_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rs = _load()


def timing(median, calls=None, bench=1, total=None, stable=True):
    """A driver timing: samples around ``median`` (odd count so the median is exact)."""
    return {
        "samples_s": [median * 1.2, median, median * 0.9],
        "warmup_s": median * 2,
        "calls": {"pvs": 1, "vgs": 1, "lvs": 1} if calls is None else calls,
        "calls_stable": stable,
        "objects": {"bench": bench, "total": bench if total is None else total},
    }


def timings(large=200, slow=None):
    slow = slow or {}
    calls = {"xencluster_lvm.report": {"pvs": 1, "vgs": 1, "lvs": 1},
             "xencluster_lio.exports": {}, "xencluster_iscsi.sessions": {"iscsiadm": 1}}
    return {
        n: {f: timing(1.0 * (slow.get(f, 1.5) if n == large else 1.0), calls=calls[f], bench=n) for f in calls}
        for n in (1, large)
    }


# --- naming --------------------------------------------------------------------------


def test_object_names_are_three_digits_and_inclusive():
    assert rs.object_names(3) == ["b001", "b002", "b003"]
    assert rs.object_names(200, 2)[0] == "b002" and rs.object_names(200, 2)[-1] == "b200"
    assert len(rs.object_names(200, 2)) == 199
    assert rs.object_names(1) == ["b001"]


@pytest.mark.parametrize("count,start", [(0, 1), (1000, 1), (5, 6), (5, 0)])
def test_object_names_refuses_out_of_range(count, start):
    with pytest.raises(ValueError):
        rs.object_names(count, start)


def test_names_of_the_lio_and_lvm_objects():
    assert rs.target_iqn("b007") == "iqn.2025-01.lab.xen:bench.b007"
    assert rs.backstore_name("b007") == "xcbench-b007"
    assert rs.lv_path("b007") == "/dev/xcbench/b007"
    assert rs.san_portal() == "192.168.100.1:3260"
    assert rs.initiator_iqn() == "iqn.2025-01.lab.xen:node2"


def test_the_iqns_are_valid_for_the_modules():
    lio = _module("xencluster_lio")
    assert lio.valid_iqn(rs.target_iqn("b200"))
    assert lio.export_args(rs.backstore_name("b200"), rs.lv_path("b200"), rs.target_iqn("b200"),
                           [rs.initiator_iqn()], [rs.san_portal()])["portals"] == ["192.168.100.1:3260"]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "_modules" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("iqn,mine", [
    ("iqn.2025-01.lab.xen:bench.b001", True),
    ("iqn.2025-01.lab.xen:bench.b200", True),
    ("iqn.2025-01.lab.xen:node1", False),
    ("iqn.2025-01.lab.xen:bench.b0001", False),
    ("iqn.2025-01.lab.xen:bench.b001x", False),
    ("iqn.2025-01.lab.xen:benchmark.b001", False),
    ("iqn.2025-01.lab.xen:target.node1", False),
    ("", False),
    (None, False),
])
def test_only_bench_targets_are_recognised(iqn, mine):
    assert rs.is_bench_target(iqn) is mine


@pytest.mark.parametrize("name,mine", [
    ("xcbench-b001", True), ("xcbench-b999", True), ("xcbench-b01", False), ("xcl-web1-disk0-a", False),
    ("b001", False), ("xcbench-b001-x", False),
])
def test_only_bench_backstores_are_recognised(name, mine):
    assert rs.is_bench_backstore(name) is mine


@pytest.mark.parametrize("cmd,tool", [
    (["pvs", "--reportformat", "json"], "pvs"),
    (["/usr/sbin/iscsiadm", "-m", "session"], "iscsiadm"),
    ("lvs -o lv_name 'a b'", "lvs"),
    ([], "?"),
    ("", "?"),
])
def test_tool_name_is_argv0_basename(cmd, tool):
    assert rs.tool_name(cmd) == tool


# --- parsing tool output -----------------------------------------------------------


def test_parse_sessions_and_records():
    sessions = (
        "tcp: [1] 192.168.100.1:3260,1 iqn.2025-01.lab.xen:bench.b001 (non-flash)\n"
        "tcp: [12] 192.168.100.3:3260,1 iqn.2025-01.lab.xen:target.node3 (non-flash)\n"
        "garbage\n"
    )
    assert rs.parse_sessions(sessions) == [
        {"sid": 1, "portal": "192.168.100.1:3260", "target": "iqn.2025-01.lab.xen:bench.b001"},
        {"sid": 12, "portal": "192.168.100.3:3260", "target": "iqn.2025-01.lab.xen:target.node3"},
    ]
    records = "192.168.100.1:3260,1 iqn.2025-01.lab.xen:bench.b002\n192.168.100.1:3260,1 iqn.2025-01.lab.xen:x.y\n"
    assert rs.parse_records(records) == [
        {"portal": "192.168.100.1:3260", "target": "iqn.2025-01.lab.xen:bench.b002"},
        {"portal": "192.168.100.1:3260", "target": "iqn.2025-01.lab.xen:x.y"},
    ]
    assert rs.parse_sessions("") == [] and rs.parse_records("") == []


def test_parse_losetup():
    out = "/dev/loop0: [2049]:131 (/var/tmp/xcbench.img)\n/dev/loop3: []: (/var/tmp/xcbench.img)\n"
    assert rs.parse_losetup(out) == ["/dev/loop0", "/dev/loop3"]
    assert rs.parse_losetup("") == []


def test_count_objects_per_function():
    report = {"lvs": {"xcbench/b001": {"vg": "xcbench"}, "vg0/web1": {"vg": "vg0"}}}
    assert rs.count_objects("xencluster_lvm.report", report) == {"bench": 1, "total": 2}
    exports = {"targets": {"iqn.2025-01.lab.xen:bench.b001": {}, "iqn.2025-01.lab.xen:bench.b002": {},
                           "iqn.2025-01.lab.xen:node1": {}}}
    assert rs.count_objects("xencluster_lio.exports", exports) == {"bench": 2, "total": 3}
    sessions = [{"target": "iqn.2025-01.lab.xen:bench.b001"}, {"target": "iqn.2025-01.lab.xen:other.x"}]
    assert rs.count_objects("xencluster_iscsi.sessions", sessions) == {"bench": 1, "total": 2}
    assert rs.count_objects("xencluster_iscsi.sessions", []) == {"bench": 0, "total": 0}
    with pytest.raises(ValueError):
        rs.count_objects("xencluster_md.status", {})


def test_driver_output_is_the_last_marked_line():
    out = "noise\nXCBENCH-RESULT {\"a\": 1}\nmore noise\nXCBENCH-RESULT {\"a\": 2}\n"
    assert rs.parse_driver_output(out) == {"a": 2}
    assert rs.parse_driver_output("no result\n") is None
    assert rs.parse_driver_output(None) is None


# --- result --------------------------------------------------------------------------


def test_summarize_median_and_min():
    assert rs.summarize([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "samples_s": [3.0, 1.0, 2.0]}
    assert rs.summarize([1.0, 2.0])["median_s"] == 1.5
    with pytest.raises(ValueError):
        rs.summarize([])


def test_function_entry_ratio_is_median_over_median():
    entry = rs.function_entry("node1", timing(0.5), timing(0.9, bench=200), 1, 200)
    assert entry["ratio"] == 1.8 and entry["ratio_ok"] is True
    assert entry["n1"]["median_s"] == 0.5 and entry["n200"]["median_s"] == 0.9
    assert entry["n1"]["calls"] == {"pvs": 1, "vgs": 1, "lvs": 1} and entry["n1"]["calls_total"] == 3
    assert entry["calls_equal"] is True and entry["node"] == "node1"


def test_ratio_of_two_or_more_fails():
    assert rs.function_entry("node1", timing(0.5), timing(1.0), 1, 200)["ratio_ok"] is False
    assert rs.function_entry("node1", timing(0.5), timing(0.999), 1, 200)["ratio_ok"] is True


def test_calls_must_be_equal_and_stable():
    more = rs.function_entry("node2", timing(1.0), timing(1.1, calls={"pvs": 1, "vgs": 1, "lvs": 2}), 1, 200)
    assert more["calls_equal"] is False
    unstable = rs.function_entry("node2", timing(1.0), timing(1.1, stable=False), 1, 200)
    assert unstable["calls_equal"] is False


def test_verdict_names_every_failure():
    functions = {
        "f.ok": rs.function_entry("node1", timing(1.0), timing(1.5, bench=200), 1, 200),
        "f.slow": rs.function_entry("node1", timing(1.0), timing(3.0, bench=200), 1, 200),
        "f.calls": rs.function_entry("node2", timing(1.0, calls={"iscsiadm": 1}),
                                     timing(1.0, calls={"iscsiadm": 200}, bench=200), 1, 200),
        "f.missing": rs.function_entry("node2", timing(1.0), timing(1.0, bench=198), 1, 200),
    }
    v = rs.verdict(functions, 1, 200)
    assert v["pass"] is False and v["max_ratio"] == 2.0
    text = "\n".join(v["failures"])
    assert "f.slow: ratio 3.0 >= 2.0" in text
    assert "f.calls: tool calls {'iscsiadm': 1} with 1, {'iscsiadm': 200} with 200" in text
    assert "f.missing: saw 198 bench objects, expected 200" in text
    assert "f.ok" not in text
    assert rs.verdict({"f.ok": functions["f.ok"]}, 1, 200) == {"pass": True, "max_ratio": 2.0, "failures": []}


def _result(objects=200, slow=None):
    args = argparse.Namespace(objects=objects, repeat=3)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    return rs.assemble(command="python benchmarks/report_scaling.py", when=when,
                       git={"commit": "abc", "dirty": False}, image_key="a9d1", host={"cpus": 2},
                       args=args, timings=timings(objects, slow), nodes_info={"node1": {"salt": "3008.3"}},
                       phases_s={"total": 10.0}, setup="b001 with export()")


def test_assemble_has_what_the_result_file_needs():
    result = _result()
    assert result["benchmark"] == "report_scaling"
    assert result["command"] == "python benchmarks/report_scaling.py"
    assert result["date"] == "2026-01-02T03:04:05+00:00"
    assert result["git"] == {"commit": "abc", "dirty": False}
    assert result["lab"]["image_key"] == "a9d1"
    assert result["repeat"] == 3 and result["warmup"] == 1
    assert result["objects"]["small"] == 1 and result["objects"]["large"] == 200
    assert set(result["functions"]) == {"xencluster_lvm.report", "xencluster_lio.exports",
                                        "xencluster_iscsi.sessions"}
    assert result["functions"]["xencluster_lvm.report"]["node"] == "node1"
    assert result["functions"]["xencluster_iscsi.sessions"]["node"] == "node2"
    for entry in result["functions"].values():
        assert {"n1", "n200", "ratio"} <= set(entry)
        assert {"median_s", "min_s", "calls"} <= set(entry["n1"])
    assert result["verdict"]["pass"] is True
    json.dumps(result)  # it is written as JSON


def test_assemble_with_a_small_count_keys_by_that_count():
    result = _result(objects=5, slow={"xencluster_lio.exports": 4.0})
    entry = result["functions"]["xencluster_lio.exports"]
    assert {"n1", "n5"} <= set(entry) and entry["ratio"] == 4.0
    assert result["verdict"]["pass"] is False


def test_table_shows_each_function_and_the_verdict():
    table = rs.format_table(_result(slow={"xencluster_lio.exports": 4.0}))
    lines = table.splitlines()
    assert "n=200 median (min)" in lines[0]
    assert any(line.startswith("xencluster_lio.exports") and line.rstrip().endswith("NO") for line in lines)
    assert any(line.startswith("xencluster_lvm.report") and line.rstrip().endswith("yes") for line in lines)
    assert lines[-1].startswith("verdict: FAIL: xencluster_lio.exports: ratio 4.0")


def test_result_path_is_utc_stamped():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert rs.result_path(pathlib.Path("/r"), when) == pathlib.Path("/r/report_scaling-20260102-030405.json")


# --- arguments ---------------------------------------------------------------------


def test_defaults():
    args = rs.parse_args([])
    assert (args.objects, args.repeat, args.jobs) == (200, 7, 4)
    assert args.export_each is False and args.cleanup_only is False
    assert args.results_dir == ROOT / "benchmarks" / "results"


def test_smoke_options():
    args = rs.parse_args(["--objects", "5", "--repeat", "2", "--results-dir", "/tmp/x", "--jobs", "2"])
    assert (args.objects, args.repeat, args.jobs, args.results_dir) == (5, 2, 2, pathlib.Path("/tmp/x"))
    assert rs.parse_args(["--cleanup-only"]).cleanup_only is True
    assert rs.parse_args(["--export-each"]).export_each is True


@pytest.mark.parametrize("argv", [["--objects", "1"], ["--objects", "1000"], ["--repeat", "0"],
                                  ["--jobs", "0"], ["--objects", "x"], ["--bogus"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        rs.parse_args(argv)
    assert exc.value.code == 2


def test_the_driver_subcommand_is_not_a_host_option():
    """`driver` is what the nodes run; the host parser does not know it."""
    with pytest.raises(SystemExit):
        rs.parse_args(["driver", "time"])


# --- node-side helpers and what the nodes can import ------------------------------------


def test_mem_available_mib():
    meminfo = "MemTotal:  654321 kB\nMemFree:  100000 kB\nMemAvailable:  498688 kB\n"
    assert rs.mem_available_mib(meminfo) == 487
    assert rs.mem_available_mib("MemTotal: 1 kB\n") is None


def test_setup_description_says_how_the_luns_were_made():
    assert rs.setup_description(200, False).startswith("b001 exported with xencluster_lio.export; b002..b200 with")
    assert "export() would change none of them" in rs.setup_description(200, False)
    assert rs.setup_description(5, True) == "b001 exported with xencluster_lio.export; b002..b005 too"


def test_assemble_keeps_the_setup_steps():
    result = _result()
    assert result["setup_steps"] == {}
    args = argparse.Namespace(objects=200, repeat=3)
    steps = {"node1 LVs and exports b001..b001": {"lvs_created": 1}}
    result = rs.assemble(command="c", when=dt.datetime.now(dt.timezone.utc), git={}, image_key=None, host={},
                         args=args, timings=timings(), nodes_info={}, phases_s={}, setup="s", setup_steps=steps)
    assert result["setup_steps"] == steps


def test_the_file_imports_nothing_the_nodes_lack_at_top_level():
    """The nodes run this file with /opt/salt/bin/python: no lab package there, salt only inside functions."""
    import ast

    tree = ast.parse((ROOT / "benchmarks" / "report_scaling.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"lab", "salt", "rtslib_fb", "pytest"}, top
