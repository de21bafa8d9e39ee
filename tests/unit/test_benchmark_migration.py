"""The pure parts of benchmarks/migration.py: the plan, shell lines, parsing, ratios, goals, the result."""

import argparse
import datetime as dt
import importlib.util
import json
import pathlib
import shlex

import pytest
import salt.utils.yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("migration", ROOT / "benchmarks" / "migration.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mig = _load()
LAB_PILLAR = salt.utils.yaml.safe_load((ROOT / "pillar" / "xencluster" / "lab.sls").read_text())
BAD_NAMES = ["", "Web1", "1web", "web_1", "web1;reboot", "web1 node2", "a" * 32, "$(id)", None, 7]


# --- names, addresses, the plan ------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_that_could_reach_a_shell_are_refused(bad):
    with pytest.raises(ValueError):
        mig.check_name(bad, "guest")


def test_good_names_pass():
    assert mig.check_name("web1", "guest") == "web1"
    assert mig.check_name("a" + "-" * 30, "node") == "a" + "-" * 30


@pytest.mark.parametrize("bad", ["10.0.2.15", "192.168.101.1", "192.168.100.0", "192.168.100.255", "::1",
                                 "192.168.100.1/24", "192.168.100.1; id", ""])
def test_only_hosts_of_the_lab_san_are_addresses(bad):
    with pytest.raises(ValueError):
        mig.san_ip(bad)


def test_san_ip_normalizes():
    assert mig.san_ip("192.168.100.2") == "192.168.100.2"


@pytest.mark.parametrize("bad", [31000, 31099, 31200, 22, "31100", True, None])
def test_ports_stay_outside_the_runners_range(bad):
    with pytest.raises(ValueError):
        mig.check_port(bad)


def test_bench_ports_do_not_meet_the_runners():
    assert mig.STREAM_PORT in mig.BENCH_PORTS and mig.COPY_PORT in mig.BENCH_PORTS
    assert mig.STREAM_PORT != mig.COPY_PORT
    assert not set(mig.BENCH_PORTS) & set(range(31000, 31100))


def test_plan_of_web1_from_the_lab_model():
    plan = mig.plan_from_model(LAB_PILLAR, "web1")
    assert plan == {"guest": "web1", "source": "node1", "target": "node2", "nodes": {
        "node1": {"minion": "node1", "ip": "192.168.100.1"},
        "node2": {"minion": "node2", "ip": "192.168.100.2"},
    }}
    assert mig.hops(plan) == [("node1", "node2"), ("node2", "node1")]


def test_plan_of_db1_starts_at_its_home_node2():
    plan = mig.plan_from_model(LAB_PILLAR, "db1")
    assert (plan["source"], plan["target"]) == ("node2", "node1")
    assert plan["nodes"]["node1"]["ip"] == "192.168.100.1"


def _model(**node1):
    pillar = json.loads(json.dumps(LAB_PILLAR))
    pillar["xencluster"]["nodes"]["node1"].update(node1)
    return pillar


@pytest.mark.parametrize("pillar, guest, words", [
    (LAB_PILLAR, "nosuch", "not in the lab model"),
    (LAB_PILLAR, "Web1", "invalid guest"),
    (_model(san=[{"interface": "eth1", "address": "10.9.0.1/24"}]), "web1", "no SAN subnet"),
    (_model(minion="node1;id"), "web1", "invalid minion"),
    ({}, "web1", "not in the lab model"),
])
def test_plan_refusals(pillar, guest, words):
    with pytest.raises(ValueError, match=words):
        mig.plan_from_model(pillar, guest)


def test_plan_refuses_addresses_off_the_lab_san():
    off = [{"interface": "eth1", "address": "10.9.0.1/24"}]
    pillar = _model(san=off)
    pillar["xencluster"]["nodes"]["node2"]["san"] = [{"interface": "eth1", "address": "10.9.0.2/24"}]
    with pytest.raises(ValueError, match="not a host of the lab SAN"):
        mig.plan_from_model(pillar, "web1")


def test_plan_refuses_a_guest_whose_disks_span_other_pairs():
    pillar = json.loads(json.dumps(LAB_PILLAR))
    pillar["xencluster"]["guests"]["web1"]["disks"][1]["nodes"] = ["node1", "node3"]
    with pytest.raises(ValueError, match="one pair"):
        mig.plan_from_model(pillar, "web1")


# --- shell lines ---------------------------------------------------------------------------


def test_raw_ssh_line_times_xl_migrate_on_the_dom0():
    line = mig.raw_ssh_migrate_line("web1", "node2")
    assert line == ('s=$(date +%s.%N); xl migrate web1 node2 >&2; rc=$?; e=$(date +%s.%N); '
                    'echo "$s $e"; exit $rc')
    for bad in ("web1;id", "$(id)"):
        with pytest.raises(ValueError):
            mig.raw_ssh_migrate_line(bad, "node2")
        with pytest.raises(ValueError):
            mig.raw_ssh_migrate_line("web1", bad)


def test_xl_memory_line():
    assert mig.xl_memory_line("web1") == "xl list -l web1"
    with pytest.raises(ValueError):
        mig.xl_memory_line("web1 db1")


def _inner_argv(line):
    """The argv the detached wrapper execs, from copy_listen_line."""
    quoted = line.split("setsid nohup sh -c ", 1)[1].split(" </dev/null", 1)[0]
    (inner,) = shlex.split(quoted)
    return shlex.split(inner.split("; exec ", 1)[1])


def test_copy_listener_binds_the_san_accepts_the_source_only_and_counts():
    line = mig.copy_listen_line(31101, "192.168.100.2", "192.168.100.1", 960)
    argv = _inner_argv(line)
    assert argv[:5] == ["timeout", "960", "socat", "-u",
                        "TCP4-LISTEN:31101,bind=192.168.100.2,reuseaddr,accept-timeout=60,range=192.168.100.1/32"]
    assert argv[5] == "SYSTEM:wc -c > /var/tmp/xcbench-copy-31101.count"
    assert "echo $$ > /var/tmp/xcbench-copy-31101.pid; exec timeout" in line  # the pidfile names timeout
    assert "grep -qF ' 192.168.100.2:31101 '" in line and "echo listening" in line
    assert "0.0.0.0" not in line


@pytest.mark.parametrize("args", [
    (31001, "192.168.100.2", "192.168.100.1", 60),  # the runner's range
    (31101, "10.0.2.15", "192.168.100.1", 60),  # management network
    (31101, "192.168.100.2", "127.0.0.1", 60),
    (31101, "192.168.100.2", "192.168.100.1", 0),
])
def test_copy_listener_refusals(args):
    with pytest.raises(ValueError):
        mig.copy_listen_line(*args)


def test_copy_sender_waits_for_the_listener_to_close():
    line = mig.copy_send_line(134217728, "192.168.100.2", 31101, 900)
    assert ("head -c 134217728 /dev/zero | socat -t 900 - TCP4:192.168.100.2:31101,connect-timeout=10 >/dev/null"
            in line)
    assert line.startswith("s=$(date +%s.%N); ") and line.endswith('echo "$s $e"; exit $rc')
    assert "-u" not in shlex.split(line.split("|", 1)[1])
    for bad in ((0, "192.168.100.2", 31101, 9), (10, "8.8.8.8", 31101, 9), (10, "192.168.100.2", 80, 9),
                ("10", "192.168.100.2", 31101, 9), (10, "192.168.100.2", 31101, 0)):
        with pytest.raises(ValueError):
            mig.copy_send_line(*bad)


def test_copy_collect_only_signals_its_own_timeout_process():
    line = mig.copy_collect_line(31101)
    assert line.startswith("P=$(cat /var/tmp/xcbench-copy-31101.pid 2>/dev/null)")
    assert '= timeout ]; then kill "$P"' in line and "pkill" not in line and "killall" not in line
    assert line.endswith("rm -f /var/tmp/xcbench-copy-31101.pid /var/tmp/xcbench-copy-31101.count "
                         "/var/tmp/xcbench-copy-31101.log")
    assert 'while [ -n "$P" ]' in line  # no listener recorded: no wait


# --- parsing -------------------------------------------------------------------------------


def test_parse_date_pair():
    assert mig.parse_date_pair("1795541162.140037951 1795541162.444141563\n") == pytest.approx(0.304103612)
    noisy = "migration target: Ready\n1700000000.000000000 1700000012.500000000\n"
    assert mig.parse_date_pair(noisy) == pytest.approx(12.5)
    for bad in ("", "1700000000 1700000012", "1700000001.000000000 1700000000.000000000", "x y"):
        with pytest.raises(ValueError):
            mig.parse_date_pair(bad)


XL_LIST_L = json.dumps([{
    "domid": 5,
    "config": {"c_info": {"type": "pvh", "name": "web1"},
               "b_info": {"max_vcpus": 1, "max_memkb": 131072, "target_memkb": 131072}},
}])


def test_parse_xl_memory():
    assert mig.parse_xl_memory(XL_LIST_L, "web1") == 128 * 2**20
    only_max = XL_LIST_L.replace('"target_memkb": 131072', '"target_memkb": null')
    assert mig.parse_xl_memory(only_max, "web1") == 128 * 2**20
    with pytest.raises(ValueError, match="does not list db1"):
        mig.parse_xl_memory(XL_LIST_L, "db1")
    with pytest.raises(ValueError, match="not print JSON"):
        mig.parse_xl_memory("(domain (domid 5))", "web1")
    with pytest.raises(ValueError, match="no memory size"):
        mig.parse_xl_memory(json.dumps([{"config": {"c_info": {"name": "web1"}, "b_info": {}}}]), "web1")


def test_parse_copy_count():
    assert mig.parse_copy_count("count 134217728\n") == 134217728
    assert mig.parse_copy_count("count \n") is None
    assert mig.parse_copy_count("") is None


def test_json_documents_keeps_progress_and_return():
    text = '{"progress": "x"}\n{"result": true,\n "where": ["node2"]}\n'
    assert mig.json_documents(text) == [{"progress": "x"}, {"result": True, "where": ["node2"]}]
    assert mig.json_documents("") == []


def _located(guests, **extra):
    return {"guests": guests, "double_runs": [], "no_answer": [], "unavailable": {}, "errors": {}, **extra}


def test_placement_problem():
    nodes = ["node1", "node2"]
    assert mig.placement_problem(_located({"web1": ["node2"], "db1": ["node2"]}), "web1", nodes, "node2") is None
    assert "runs on node1, node2" in mig.placement_problem(_located({"web1": ["node1", "node2"]}), "web1", nodes,
                                                           "node2")
    assert "runs on no node" in mig.placement_problem(_located({}), "web1", nodes, "node1")
    assert "in flight" in mig.placement_problem(_located({"web1": ["node1"], "web1--incoming": ["node2"]}),
                                                "web1", nodes, "node1")
    assert "node2 did not tell" in mig.placement_problem(_located({"web1": ["node1"]}, no_answer=["node2"]),
                                                         "web1", nodes, "node1")
    assert "locate answered" in mig.placement_problem("Exception: no master", "web1", nodes, "node1")


def test_drained_problem():
    assert mig.drained_problem({}, ["node1", "node2"]) is None
    assert mig.drained_problem({"node3": {}}, ["node1", "node2"]) is None
    assert "node2 drained" in mig.drained_problem({"node2": {"since": 1}}, ["node1", "node2"])


# --- result --------------------------------------------------------------------------------

NBYTES = 100 * mig.MB


def hop(s, rnd=1, src="node1", dst="node2", **extra):
    return {"round": rnd, "from": src, "to": dst, "s": s, **extra}


def records(raw_ssh=(10.0, 12.0), saltrun_ssh=(12.0, 14.0), raw_stream=(4.0, 6.0), saltrun_stream=(6.0, 6.0)):
    return {
        "raw_ssh": [hop(s) for s in raw_ssh],
        "saltrun_ssh": [hop(s, runner_s=s - 1, xl_s=s - 2) for s in saltrun_ssh],
        "raw_stream": [hop(s) for s in raw_stream],
        "saltrun_stream": [hop(s, runner_s=s - 1, xl_s=s - 1.5) for s in saltrun_stream],
    }


def test_method_summary_medians_and_throughput():
    m = mig.method_summary(records()["saltrun_ssh"], NBYTES)
    assert m["samples_s"] == [12.0, 14.0] and m["median_s"] == 13.0
    assert m["runner_s"]["median_s"] == 12.0 and m["xl_s"]["median_s"] == 11.0
    assert m["mb_per_s"] == round(100 / 13, 2) and m["xl_mb_per_s"] == round(100 / 11, 2)
    raw = mig.method_summary(records()["raw_ssh"], NBYTES)
    assert "xl_s" not in raw and raw["mb_per_s"] == round(100 / 11, 2)
    with pytest.raises(ValueError):
        mig.samples([])


def test_ratios_and_goals():
    methods = {name: mig.method_summary(r, NBYTES) for name, r in records().items()}
    r = mig.ratios(methods, {"median_s": 4.5})
    assert r == {"overhead_ssh": round(13 / 11, 3), "overhead_stream": 1.2, "stream_speedup_raw": 2.2,
                 "stream_speedup_saltrun": round(13 / 6, 3), "copy_over_stream": 0.9,
                 "copy_over_stream_saltrun_xl": 1.0}
    g = {x["name"]: x for x in mig.goals(r)}
    assert [x["met"] for x in mig.goals(r)] == [True, True, True]
    assert g["overhead_ssh"]["goal"] == "<= 1.25" and g["copy_over_stream"]["goal"] == ">= 0.8"


def test_goals_not_met_and_not_measured():
    g = {x["name"]: x["met"] for x in mig.goals({"overhead_ssh": 1.3, "overhead_stream": None,
                                                 "copy_over_stream": 0.5})}
    assert g == {"overhead_ssh": False, "overhead_stream": None, "copy_over_stream": False}
    assert {x["met"] for x in mig.goals({"overhead_ssh": 1.25, "overhead_stream": 1.25,
                                         "copy_over_stream": 0.8})} == {True}  # the limits themselves pass


def test_assemble_and_summary():
    when = dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.timezone.utc)
    plan = mig.plan_from_model(LAB_PILLAR, "web1")
    args = argparse.Namespace(rounds=1, settle=5)
    result = mig.assemble(command="python benchmarks/migration.py", when=when, git={"commit": "abc"},
                          host={"cpus": 2}, lab={"image_key": "k"}, args=args, plan=plan, nbytes=128 * 2**20,
                          hop_records=records(saltrun_ssh=(20.0, 20.0)), copy_s=[5.0, 3.0], phases_s={"total": 1.0})
    assert result["benchmark"] == "migration" and result["date"] == "2026-11-25T01:02:03+00:00"
    assert (result["guest"], result["source"], result["target"]) == ("web1", "node1", "node2")
    assert result["ports"] == {"stream": 31100, "copy": 31101}
    assert result["bytes"]["value"] == 128 * 2**20 and "estimate" in result["bytes"]["note"]
    assert list(result["methods"]) == list(mig.METHODS)
    assert result["copy"]["median_s"] == 4.0 and result["copy"]["bytes"] == 128 * 2**20
    assert set(result["method"]) == {*mig.METHODS, "copy"}
    assert {g["name"]: g["met"] for g in result["goals"]} == {"overhead_ssh": False, "overhead_stream": True,
                                                              "copy_over_stream": True}
    json.dumps(result)
    text = mig.format_summary(result)
    assert "web1 node1 <-> node2, 128 MiB per migration (estimate), 1 round(s)" in text
    assert "goal overhead_ssh <= 1.25: 1.818 NOT MET" in text
    assert "goal copy_over_stream >= 0.8: 0.800 MET" in text
    assert "socat copy" in text and "saltrun_stream" in text
    assert mig.result_path(pathlib.Path("/r"), when) == pathlib.Path("/r/migration-20261125-010203.json")


def test_parse_args_defaults_and_refusals():
    args = mig.parse_args([])
    assert (args.guest, args.rounds, args.settle, args.timeout) == ("web1", 2, 5, 900)
    assert mig.parse_args(["--guest", "db1", "--rounds", "1", "--settle", "0"]).rounds == 1
    for bad in (["--guest", "web1;id"], ["--rounds", "0"], ["--rounds", "21"], ["--settle", "-1"],
                ["--timeout", "10"]):
        with pytest.raises(SystemExit):
            mig.parse_args(bad)


def test_refuses_with_one_line_when_the_lab_is_not_ready(monkeypatch, capsys):
    def not_ready(lab, args):
        raise mig.NotReady("web1 runs on node2, expected on node1 only\nmore detail")

    monkeypatch.setattr(mig, "prepare", not_ready)
    assert mig.main([]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "web1 runs on node2" in err


def test_a_lab_error_in_the_checks_is_a_refusal_too(monkeypatch):
    class Down(mig.Lab):
        def salt_run(self, *argv, timeout):
            raise mig.BenchError("salt-run xencluster.drained: no JSON (exit 1):\n  master down")

    monkeypatch.setattr(mig, "check_processes", lambda lab, plan: None)
    plan = mig.plan_from_model(LAB_PILLAR, "web1")
    with pytest.raises(mig.NotReady, match="no JSON") as exc:
        mig.check_ready(Down(), plan)
    assert "\n" not in str(exc.value)


# --- the whole run against a simulated lab (no lab: the wiring of main) ---------------------


class FakeLab(mig.Lab):
    """Answers like the lab would; web1 moves where each migration sends it."""

    fail_on = None  # (method, hop number) that fails
    calls: list

    def __init__(self):
        self.where, self.calls, self.hops = "node1", [], 0

    def _move(self, method, dst):
        self.hops += 1
        if self.fail_on == (method, self.hops):
            return False
        self.where = dst
        return True

    def ssh(self, node, line, timeout=120, check=True):
        self.calls.append(("ssh", node, line))
        out, rc = "", 0
        if line.startswith("xl list -l "):
            out = XL_LIST_L
        elif "xl migrate web1 " in line:
            rc = 0 if self._move("raw_ssh", line.split("xl migrate web1 ")[1].split()[0]) else 1
            out = "1700000000.000000000 1700000010.000000000\n"
        elif "TCP4-LISTEN" in line:
            out = "listening\n"
        elif "head -c" in line:
            out = "1700000000.000000000 1700000002.000000000\n"
        elif line.startswith("P=$(cat"):
            out = f"count {128 * 2**20}\n"
        return mig.subprocess.CompletedProcess([], rc, out, "")

    def salt(self, minion, *argv, timeout):
        self.calls.append(("salt", minion, argv))
        fun = argv[0]
        if fun == "xencluster_xl.stream_receive":
            return {"started": True, "port": 31100}, 0.5
        if fun == "xencluster_xl.migrate":
            ok = self._move("raw_stream", argv[2])
            return ({"migrated": True, "duration_s": 4.0} if ok else "ERROR: xl migrate failed"), 6.0
        return {"state": "exited", "stopped": False}, 0.5  # stream_stop

    def salt_run(self, *argv, timeout):
        self.calls.append(("salt-run", argv))
        if argv[0] == "xencluster.drained":
            return 0, {}, 0.5
        if argv[0] == "xencluster.locate":
            return 0, _located({"web1": [self.where], "db1": ["node2"]}), 0.5
        dst, transport = argv[2], argv[3].split("=")[1]
        ok = self._move(f"saltrun_{transport}", dst)
        ret = {"result": ok, "where": [self.where], "duration_s": 11.0, "xl_duration_s": 10.5,
               "message": "moved" if ok else "xl migrate failed; web1 still runs on " + self.where}
        return (0 if ok else 1), ret, 12.0


@pytest.fixture
def fake(monkeypatch):
    lab = FakeLab()
    monkeypatch.setattr(mig, "Lab", lambda: lab)
    monkeypatch.setattr(mig, "check_processes", lambda lab, plan: None)
    monkeypatch.setattr(mig, "lab_info", lambda: {"image_key": "k", "lab_dir": "/x"})
    return lab


def test_a_run_migrates_there_and_back_per_method_checks_each_hop_and_writes_the_result(fake, tmp_path, capsys):
    assert mig.main(["--rounds", "1", "--settle", "0", "--results-dir", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("migration-*.json")
    result = json.loads(out.read_text())
    assert {m: r["samples_s"] for m, r in result["methods"].items()} == {
        "raw_ssh": [10.0, 10.0], "saltrun_ssh": [12.0, 12.0], "raw_stream": [4.0, 4.0], "saltrun_stream": [12.0, 12.0]}
    assert [(h["from"], h["to"]) for h in result["methods"]["raw_ssh"]["hops"]] == [("node1", "node2"),
                                                                                  ("node2", "node1")]
    assert result["copy"]["samples_s"] == [2.0] and result["ratios"]["copy_over_stream"] == 0.5
    assert fake.where == "node1" and fake.hops == 8
    locates = [c for c in fake.calls if c[0] == "salt-run" and c[1][0] == "xencluster.locate"]
    assert len(locates) == 1 + 8  # the precondition, then after every hop
    receive = next(c for c in fake.calls if c[0] == "salt" and c[2][0] == "xencluster_xl.stream_receive")
    assert receive[1] == "node2" and receive[2][1:] == ("31100", "192.168.100.2", "192.168.100.1", "accept_timeout=60")
    migrate = next(c for c in fake.calls if c[0] == "salt" and c[2][0] == "xencluster_xl.migrate")
    assert migrate[1] == "node1" and migrate[2][1:] == ("web1", "node2", "transport=stream",
                                                        "stream_address=192.168.100.2:31100",
                                                        "stream_from=192.168.100.1")
    stops = [c for c in fake.calls if c[0] == "salt" and c[2][0] == "xencluster_xl.stream_stop"]
    assert len(stops) == 2 + 2  # leftovers on both nodes first, then after each raw stream hop
    assert "goal copy_over_stream >= 0.8: 0.500 NOT MET" in capsys.readouterr().out


def test_a_failed_hop_stops_says_where_the_guest_is_and_writes_nothing(fake, tmp_path, capsys):
    fake.fail_on = ("raw_stream", 6)  # raw_ssh 1-2, saltrun_ssh 3-4, raw_stream 5 ok, 6 fails (node2 -> node1)
    assert mig.main(["--rounds", "1", "--settle", "0", "--results-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "xencluster_xl.migrate web1 node1 transport=stream on node2" in err
    assert "web1 is left where it is: on node2" in err and "no result written" in err
    assert not list(tmp_path.iterdir())


def test_the_guest_away_from_home_is_a_refusal(fake, tmp_path, capsys):
    fake.where = "node2"
    assert mig.main(["--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "migration: web1 runs on node2, expected on node1 only"
    assert not [c for c in fake.calls if c[0] == "ssh" or c[0] == "salt"]  # nothing touched


def test_main_gives_back_the_signal_handlers(fake, tmp_path):
    before = {sig: mig.signal.getsignal(sig) for sig in (mig.signal.SIGINT, mig.signal.SIGTERM)}
    fake.fail_on = ("raw_ssh", 1)
    assert mig.main(["--rounds", "1", "--settle", "0", "--results-dir", str(tmp_path)]) == 1
    assert {sig: mig.signal.getsignal(sig) for sig in before} == before
