"""The pure parts of benchmarks/highstate_commands.py: pillar generation, strace parsing, summaries."""

import argparse
import datetime as dt
import importlib.util
import json
import pathlib
import shlex

import pytest
import salt.utils.yaml

from saltext.xencluster.modules import xencluster_model as xm

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("highstate_commands", ROOT / "benchmarks" / "highstate_commands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hc = _load()
LAB_PILLAR = salt.utils.yaml.safe_load((ROOT / "pillar" / "xencluster" / "lab.sls").read_text())

# `strace -f -qq -e trace=execve -o FILE -p ...`: lines from real strace 6.1 runs (pids, the
# interleaved <unfinished ...>/<... execve resumed> pairs and their column padding, a PATH
# search's ENOENT, a truncated string) with lab tools in the same format.
STRACE = r"""
20104 execve("/usr/bin/sh", ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11"...], 0x7ffc7a2dc540 /* 39 vars */) = 0
20108 execve("/usr/bin/cat", ["cat"], 0x5593a513a2a8 /* 39 vars */ <unfinished ...>
20106 execve("/usr/bin/ls", ["ls", "/"], 0x5593a513a288 /* 39 vars */ <unfinished ...>
20108 <... execve resumed>)             = 0
20106 <... execve resumed>)             = 0
20105 execve("/nonexist/x", ["/nonexist/x"], 0x5593a513a258 /* 39 vars */) = -1 ENOENT (No such file or directory)
20113 execve("/nonexist/x", ["/nonexist/x"], 0x5593a513a468 /* 39 vars */ <unfinished ...>
20116 execve("/usr/sbin/lvs", ["lvs", "--reportformat", "json", "--units", "b"], 0x5593a513a648 /* 12 vars */ <unfinished ...>
20113 <... execve resumed>)             = -1 ENOENT (No such file or directory)
20116 <... execve resumed>)             = 0
18739 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=18740, si_uid=0, si_status=0, si_utime=0, si_stime=0} ---
21001 execve("/usr/local/sbin/xl", ["xl", "list", "-l"], 0x7ffd5e1c2a10 /* 20 vars */) = -1 ENOENT (No such file or directory)
21001 execve("/usr/sbin/xl", ["xl", "list", "-l"], 0x7ffd5e1c2a10 /* 20 vars */) = 0
21002 execve("/usr/sbin/xl", ["xl", "list", "-l"], 0x7ffd5e1c2a10 /* 20 vars */) = 0
21003 execve("/usr/sbin/iscsiadm", ["iscsiadm", "-m", "session", "-P", "3"], 0x7ffd5e1c2a10 /* 20 vars */) = 0
21004 execve("/usr/bin/systemctl", ["systemctl", "is-active", "--", "iscsid.service"], 0x7ffd5e1c2a10 /* 20 vars */) = 0
21005 execve("/usr/bin/ip", ["/usr/bin/ip", "-json", "-details", "link", "show"], 0x7ffd5e1c2a10 /* 20 vars */) = 0
21005 +++ exited with 0 +++
21006 execve("/usr/sbin/mdadm", ["mdadm", "--examine", "--scan"], 0x7ffd5e1c2a10 /* 20 vars */) = ?
"""


def parsed():
    return hc.parse_strace(STRACE)


# --- strace ----------------------------------------------------------------------------


def test_only_successful_execve_calls_count():
    p = parsed()
    paths = [e["path"] for e in p["execs"]]
    assert paths == ["/usr/bin/sh", "/usr/bin/cat", "/usr/bin/ls", "/usr/sbin/lvs", "/usr/sbin/xl",
                     "/usr/sbin/xl", "/usr/sbin/iscsiadm", "/usr/bin/systemctl", "/usr/bin/ip"]
    assert p["failed"] == 4  # 2 ENOENT, 1 ENOENT after resume, 1 "= ?" (died in exec)
    assert p["unmatched"] == 0
    assert [e["pid"] for e in p["execs"]][:3] == [20104, 20108, 20106]


def test_resumed_calls_keep_their_arguments():
    lvs = next(e for e in parsed()["execs"] if e["path"] == "/usr/sbin/lvs")
    assert lvs["argv"] == ["lvs", "--reportformat", "json", "--units", "b"]
    assert lvs["pid"] == 20116


def test_summary_groups_by_binary_and_prefix():
    s = hc.summarize_commands(parsed())
    assert s["total"] == 9
    assert s["by_binary"] == {"cat": 1, "ip": 1, "iscsiadm": 1, "ls": 1, "lvs": 1, "sh": 1, "systemctl": 1, "xl": 2}
    assert list(s["by_binary"]) == sorted(s["by_binary"])
    prefixes = {p["prefix"]: p["count"] for p in s["prefixes"]}
    assert prefixes["xl list -l"] == 2
    assert prefixes["lvs --reportformat json"] == 1
    assert prefixes["iscsiadm -m session"] == 1
    assert prefixes["ip -json -details"] == 1  # argv[0] given as a path: its basename
    assert prefixes["ls /"] == 1 and prefixes["cat"] == 1
    assert [p["prefix"] for p in s["prefixes"]] == sorted(prefixes)
    assert s["failed_execve"] == 4 and s["unmatched"] == 0
    assert s["argv"][4] == ["xl", "list", "-l"]
    json.dumps(s)


def test_bracket_pid_prefix_and_no_prefix():
    text = ('[pid  4242] execve("/usr/sbin/vgs", ["vgs"], 0x1 /* 3 vars */) = 0\n'
            'execve("/usr/bin/true", ["true"], 0x1 /* 3 vars */) = 0\n')
    execs = hc.parse_strace(text)["execs"]
    assert [(e["pid"], e["path"]) for e in execs] == [(4242, "/usr/sbin/vgs"), (None, "/usr/bin/true")]


def test_exec_of_a_thread_resumes_under_the_leader():
    # A non-leader thread's exec: strace resumes it under the thread group's pid.
    text = ('501 execve("/usr/sbin/targetcli", ["targetcli", "ls"], 0x1 /* 3 vars */ <unfinished ...>\n'
            '500 <... execve resumed>)             = 0\n')
    p = hc.parse_strace(text)
    assert [e["argv"] for e in p["execs"]] == [["targetcli", "ls"]]
    assert p["unmatched"] == 0


def test_unmatched_resumes_and_dangling_calls_are_counted_not_guessed():
    text = ('7 execve("/a", ["a"], 0x1 /* 3 vars */ <unfinished ...>\n'
            '8 execve("/b", ["b"], 0x1 /* 3 vars */ <unfinished ...>\n'
            '9 <... execve resumed>) = 0\n')
    p = hc.parse_strace(text)
    assert p["execs"] == [] and p["unmatched"] == 3  # 9 matches neither; 7 and 8 never finished


def test_execve_args_escapes_truncation_and_abbreviation():
    path, argv = hc.parse_execve_args(r'"/bin/sh", ["sh", "-c", "echo \"a) = 0\"\n\t\\x\101"], 0x1 /* 2 vars */')
    assert path == "/bin/sh"
    assert argv == ["sh", "-c", 'echo "a) = 0"\n\t\\xA']
    assert hc.parse_execve_args('"/x", ["x", "long"..., "y", ...], 0x1') == ("/x", ["x", "long", "y"])
    assert hc.parse_execve_args('"/x", NULL, 0x1') == ("/x", [])
    assert hc.parse_execve_args("0x1234, 0x0, 0x0") == ("", [])


def test_a_quoted_result_inside_an_argument_is_not_the_result():
    line = '12 execve("/bin/echo", ["echo", ") = 0"], 0x1 /* 2 vars */) = -1 EACCES (Permission denied)\n'
    p = hc.parse_strace(line)
    assert p["execs"] == [] and p["failed"] == 1


def test_command_prefix_without_argv_is_the_path_basename():
    assert hc.command_prefix({"path": "/usr/sbin/xl", "argv": []}) == "xl"
    assert hc.command_prefix({"path": "/x", "argv": ["/usr/bin/lvs", "a b", "c", "d"]}) == "lvs 'a b' c"


def test_parse_pids():
    assert hc.parse_pids("812\n1500\n  812\n\n") == [812, 1500]
    assert hc.parse_pids("") == []


# --- remote shell lines ------------------------------------------------------------------


def test_strace_start_line_traces_every_pid_detached_and_waits_for_the_tracer():
    line = hc.strace_start_line([812, 1500])
    words = shlex.split(line.split("setsid nohup sh -c ", 1)[1].split(" </dev/null", 1)[0])
    inner = shlex.split(words[0].split("; exec ", 1)[1])
    assert inner[0] == "strace"
    assert inner[inner.index("-e") + 1] == "trace=execve"
    assert {"-f", "-qq"} <= set(inner)
    assert inner[inner.index("-o") + 1] == hc.STRACE_OUT
    assert [inner[i + 1] for i, w in enumerate(inner) if w == "-p"] == ["812", "1500"]
    assert words[0].startswith(f"echo $$ > {hc.STRACE_PID}")  # the pidfile names strace itself
    assert "TracerPid" in line and "for p in 812 1500" in line
    with pytest.raises(ValueError):
        hc.strace_start_line([])


def test_strace_stop_line_only_signals_strace():
    line = hc.strace_stop_line(cat=True)
    assert "= strace ]" in line and "kill -INT $S" in line and line.endswith(f"cat {hc.STRACE_OUT}")
    assert hc.strace_stop_line(cat=False).endswith(f"rm -f {hc.STRACE_OUT} {hc.STRACE_ERR}")


def test_parse_node_objects_and_leftovers():
    out = "--- domains\nDomain-0\nb01\nweb1\n--- lvs\nb01.root.node1\nb02.root.node1\nweb1.root.node1\n"
    domains, lvs = hc.parse_node_objects(out)
    assert domains == ["Domain-0", "b01", "web1"]
    assert lvs == ["b01.root.node1", "b02.root.node1", "web1.root.node1"]
    left = hc.leftovers(domains, lvs, 1)
    assert left == {"bench": ["LV xcvg/b02.root.node1"], "foreign": ["LV xcvg/web1.root.node1", "domain web1"]}
    assert hc.leftovers(domains, lvs, 20)["bench"] == []


# --- pillar --------------------------------------------------------------------------------


def test_only_the_pinned_guests_have_a_home_and_homes_alternate():
    assert [g.get("node") for g in hc.bench_guests(20).values()] == ["node1"] + [None] * 19  # default: 1 pinned
    guests = hc.bench_guests(20, pinned=20)
    assert [g["node"] for g in guests.values()][:4] == ["node1", "node2", "node1", "node2"]
    assert sum(g["node"] == "node1" for g in guests.values()) == 10
    assert [g.get("node") for g in hc.bench_guests(3, pinned=2).values()] == ["node1", "node2", None]
    assert all("node" not in g for g in hc.bench_guests(3, pinned=0).values())


def test_guests_have_unique_macs():
    guests = hc.bench_guests(20)
    assert list(guests) == [f"b{i:02d}" for i in range(1, 21)]
    macs = [g["interfaces"][0]["mac"] for g in guests.values()]
    assert len(set(macs)) == 20 and macs[0] == "00:16:3e:bb:00:01" and macs[19] == "00:16:3e:bb:00:20"
    b01 = guests["b01"]
    assert b01 == {
        "type": "pvh", "node": "node1", "memory": "96M", "vcpus": 1, "kernel": "/vmlinuz",
        "ramdisk": "/srv/domu/probe-initrd.gz", "extra": "console=hvc0",
        "interfaces": [{"vlan": 10, "mac": "00:16:3e:bb:00:01"}],
        "disks": [{"name": "root", "size": "16M", "nodes": ["node1", "node2"], "vg": "xcvg", "filesystem": "none"}],
    }


@pytest.mark.parametrize("count", [0, 100])
def test_guest_count_range(count):
    with pytest.raises(ValueError):
        hc.guest_names(count)


def test_model_keeps_the_lab_cluster_and_nodes_and_only_bench_guests():
    model = hc.bench_model(LAB_PILLAR, 3)
    assert model["cluster"] == LAB_PILLAR["xencluster"]["cluster"]
    assert model["nodes"] == LAB_PILLAR["xencluster"]["nodes"]
    assert sorted(model["guests"]) == ["b01", "b02", "b03"]
    with pytest.raises(ValueError):
        hc.bench_model({"xencluster": {"nodes": {}}}, 1)


@pytest.mark.parametrize("count", [1, 20])
def test_generated_pillar_is_a_valid_model_with_two_legs_per_guest_on_node1(count):
    files = hc.pillar_files(hc.bench_model(LAB_PILLAR, count))
    top = salt.utils.yaml.safe_load(files["top.sls"])
    assert top == {"base": {"node[1-9]": ["xencluster.bench"]}}
    model = salt.utils.yaml.safe_load(files["xencluster/bench.sls"])["xencluster"]
    assert model == hc.bench_model(LAB_PILLAR, count)  # survives Salt's YAML (MACs stay strings)
    assert "{{" not in files["xencluster/bench.sls"] and "{%" not in files["xencluster/bench.sls"]
    xm.validate(model)
    view = xm.node_view("node1", model)
    assert len(view["owned"]) == len(view["imported"]) == count
    assert hc.legs_on("node1", model["guests"]) == {"owned": count, "imported": count, "total": 2 * count}
    assert sorted(view["guests"]) == hc.guest_names(count)


def test_parse_guest_counts():
    assert hc.parse_guest_counts("1,20") == [1, 20]
    assert hc.parse_guest_counts("5") == [5]
    for bad in ("20,1", "1,1", "0,20", "1,100", "a", ""):
        with pytest.raises(ValueError):
            hc.parse_guest_counts(bad)


# --- highstate returns -------------------------------------------------------------------


def state(result=True, changes=None, duration=10.5, comment="ok", run=0, sid="xencluster-legs"):
    return {"result": result, "changes": changes or {}, "duration": duration, "comment": comment,
            "__run_num__": run, "__id__": sid}


def test_converged_needs_every_minion_all_true_and_no_changes():
    good = {"a_|-x_|-x_|-run": state(run=0, sid="x"), "b_|-y_|-y_|-run": state(run=1, sid="y", duration=2)}
    assert hc.converged({"node1": good, "node2": good}, ["node1", "node2"]) == (True, [])
    assert hc.highstate_summary(good)["duration_ms"] == 12.5
    assert hc.highstate_summary(good)["states"] == 2
    changed = {**good, "c": state(changes={"lv": "created"}, sid="legs", run=2)}
    failed = {**good, "d": state(result=False, comment="iscsiadm: no\nportal", sid="imports", run=3)}
    ok, problems = hc.converged({"node1": changed, "node2": failed}, ["node1", "node2"])
    assert not ok
    assert problems == ['node1: changed legs: {"lv": "created"}', "node2: FAILED imports: iscsiadm: no portal"]
    ok, problems = hc.converged({"node1": ["Rendering SLS 'base:xencluster' failed: bad"]}, ["node1", "node2"])
    assert problems == ["node1: Rendering SLS 'base:xencluster' failed: bad", "node2: no answer"]
    ok, problems = hc.converged({"node1": "Minion did not return. [No response]"}, ["node1"])
    assert problems == ["node1: Minion did not return. [No response]"]


def test_a_state_with_result_none_is_not_converged():
    ok, problems = hc.converged({"node1": {"s": state(result=None, comment="would change")}}, ["node1"])
    assert not ok and problems == ["node1: FAILED xencluster-legs: would change"]


# --- result --------------------------------------------------------------------------------


def commands(by_binary):
    return {"total": sum(by_binary.values()), "by_binary": dict(sorted(by_binary.items())), "prefixes": [],
            "failed_execve": 0, "unmatched": 0, "argv": []}


def scenarios(large_by_binary=None, wall=(10.0, 30.0)):
    small_bin = {"xl": 2, "lvs": 1, "iscsiadm": 1}
    large_bin = large_by_binary or small_bin
    conv = {"runs": 2, "seconds": [100.0, 50.0]}
    return {
        "n1": hc.scenario(1, commands(small_bin), 40.0, [wall[0], wall[0] * 1.1, wall[0] * 0.9],
                          [8000.0, 9000.0, 7000.0], 50, conv, {}),
        "n20": hc.scenario(20, commands(large_bin), 90.0, [wall[1], wall[1] * 1.2, wall[1] * 0.8],
                           [20000.0, 21000.0, 19000.0], 50, conv, {}),
    }


def test_scenario_holds_legs_medians_and_samples():
    s = scenarios()["n20"]
    assert s["legs_on_node1"] == {"owned": 20, "imported": 20, "total": 40}
    assert (s["guests_pinned"], s["guests_home_on_node1"]) == (1, 1)  # the default: b01 runs, on node1
    assert s["wall_s"] == {"samples": [30.0, 36.0, 24.0], "median": 30.0}
    assert s["states_duration_sum_s"] == {"samples": [20.0, 21.0, 19.0], "median": 20.0}


def test_ratios_and_goal_met():
    sc = scenarios()
    assert hc.ratios(sc, [1, 20]) == {"commands_20/commands_1": 1.0, "wall_20/wall_1": 3.0,
                                      "states_duration_20/states_duration_1": 2.5}
    assert hc.goal(sc, [1, 20]) == {"goal": hc.GOAL, "met": True, "differs": {}}


def test_goal_names_the_binaries_that_grow():
    sc = scenarios(large_by_binary={"xl": 2, "lvs": 21, "iscsiadm": 1, "mdadm": 20})
    g = hc.goal(sc, [1, 20])
    assert g["met"] is False
    assert g["differs"] == {"lvs": {"1": 1, "20": 21}, "mdadm": {"1": 0, "20": 20}}
    assert hc.ratios(sc, [1, 20])["commands_20/commands_1"] == 11.0


def test_one_count_is_not_compared():
    sc = {"n1": scenarios()["n1"]}
    assert hc.ratios(sc, [1]) == {}
    assert hc.goal(sc, [1])["met"] is None


def test_assemble_and_summary():
    when = dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.timezone.utc)
    args = argparse.Namespace(repeat=3, pinned=1)
    sc = scenarios(large_by_binary={"xl": 2, "lvs": 21, "iscsiadm": 1})
    result = hc.assemble(command="python benchmarks/highstate_commands.py", when=when, git={"commit": "abc"},
                         host={"cpus": 2}, lab={"image_key": "k"}, args=args, counts=[1, 20], scenarios=sc,
                         phases_s={"total": 1.0})
    assert result["benchmark"] == "highstate_commands" and result["date"] == "2026-11-25T01:02:03+00:00"
    assert result["node"] == "node1" and result["guest_counts"] == [1, 20]
    assert result["verdict"]["met"] is False
    assert "strace" in result["method"]["commands"] and "trace=execve" in result["method"]["commands"]
    json.dumps(result)
    text = hc.format_summary(result)
    assert "goal (commands must not grow with guests): NOT MET" in text
    assert "lvs 1/21" in text and "xl 2/2" in text
    assert "ratio wall_20/wall_1: 3.0" in text
    assert hc.result_path(pathlib.Path("/r"), when) == pathlib.Path("/r/highstate_commands-20261125-010203.json")


def test_parse_args_defaults_and_refusals(capsys):
    args = hc.parse_args([])
    assert args.counts == [1, 20] and args.repeat == 3 and args.max_runs == 4 and args.timeout == 2400
    assert hc.parse_args(["--guests", "2,5", "--repeat", "1"]).counts == [2, 5]
    for bad in (["--guests", "20,1"], ["--repeat", "0"], ["--max-runs", "0"], ["--timeout", "5"]):
        with pytest.raises(SystemExit):
            hc.parse_args(bad)


def test_refuses_with_one_line_when_the_lab_is_not_running(monkeypatch, capsys):
    def not_running():
        raise hc.BenchError("node1 is not running; start the lab first")

    monkeypatch.setattr(hc, "check_lab", not_running)
    assert hc.main([]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "node1 is not running" in err
