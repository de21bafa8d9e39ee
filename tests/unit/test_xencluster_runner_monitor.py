"""xencluster.monitor runner: one alert event per serious finding, min_severity, the last_seen record, bad input.

The dom0 and guest answers are those of the verify tests (the REAL parsers of
the execution modules over the recordings, see
test_xencluster_runner_verify.py); the master's bus is the migrate tests'
recorder. The master cache is a real ``localfs`` cache in a temporary
directory. The reactor example (salt/reactor/xencluster_alert.sls) is
rendered here by Salt's own jinja|yaml renderers, and the master.d example is
checked against the runner it schedules.
"""

import copy
import inspect
import json
import logging
import pathlib
import time
from unittest.mock import MagicMock

import pytest
import salt.cache
import salt.config
import salt.loader
import salt.template
import salt.utils.yaml
from test_xencluster_runner_migrate import bus  # noqa: F401  (fixture)
from test_xencluster_runner_verify import MODEL
from test_xencluster_runner_verify import RAW
from test_xencluster_runner_verify import _answers
from test_xencluster_runner_verify import client  # noqa: F401  (fixture)
from test_xencluster_runner_verify import context  # noqa: F401  (fixture)
from test_xencluster_runner_verify import master  # noqa: F401  (fixture)
from test_xencluster_runner_verify import md_status
from test_xencluster_runner_verify import ok
from test_xencluster_runner_verify import reports  # noqa: F401  (fixture)
from test_xencluster_runner_verify import ret_of
from test_xencluster_runner_verify import xl_domains

from saltext.xencluster.runners import xencluster as runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
REACTOR = ROOT / "salt" / "reactor" / "xencluster_alert.sls"
MASTER_D = ROOT / "salt" / "xencluster" / "files" / "master.d" / "xencluster-monitor.conf"
FIELDS = ("code", "severity", "message", "node", "guest", "leg")


@pytest.fixture
def configure_loader_modules(context, tmp_path):  # noqa: F811
    opts = dict(salt.config.DEFAULT_MASTER_OPTS, conf_file="/etc/salt/master", sock_dir=str(tmp_path / "sock"),
                cachedir=str(tmp_path / "cache"), timeout=5)  # fmt: skip
    return {runner: {"__opts__": opts, "__context__": context}}


def monitor(master, reports, raid=None, **kwargs):  # noqa: F811
    """monitor() against the mocked LocalClient answering with ``reports`` (dom0s) and ``raid`` (guests)."""
    master.cmd.side_effect = _answers(reports, raid)
    return runner.monitor(**kwargs)


def clean_raid(monkeypatch):
    clean = ok(md_status(monkeypatch, "lab-node2-clean"))
    return {"web1": clean, "db1": clean}


def mixed(reports, monkeypatch):  # noqa: F811
    """One finding of each severity: web1 also on node2, an owned LV gone, an xl config missing."""
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1"]))
    del ret_of(reports, "node1")["lvm"]["lvs"]["xcvg/web1.root.node1"]
    ret_of(reports, "node2")["configs"] = ["db1"]
    return reports


def stored():
    return salt.cache.factory(runner.__opts__).fetch(runner.LAST_SEEN_BANK, runner.LAST_SEEN_KEY)


# --- alerts --------------------------------------------------------------------------------------


def test_a_double_run_fires_a_critical_alert_at_every_run(master, reports, bus, context, monkeypatch):  # noqa: F811
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1"]))
    before = int(time.time())
    result = monitor(master, reports, guests=False)
    assert bus.tags() == ["xencluster/alert/ECLUSTERDOUBLERUN"]
    alert = dict(bus.events[0][1])
    assert before <= alert.pop("at") <= time.time()
    assert alert == {
        "code": "ECLUSTERDOUBLERUN", "severity": "critical", "node": None, "guest": "web1", "leg": None,
        "message": "DOUBLE RUN: guest web1 is running on node1, node2 at the same time: its disks are written "
                   "from two nodes",
    }  # fmt: skip
    assert (result["ok"], result["retcode"], context["retcode"]) == (False, 2, 2)
    assert result["summary"] == {"critical": 1, "error": 0, "warning": 0}
    assert result["alerts"] == [bus.events[0][1]] and result["min_severity"] == "error"
    assert result["at"] == bus.events[0][1]["at"]
    json.dumps(result)
    # no de-duplication: the next period alerts again while it lasts
    monitor(master, reports, guests=False)
    assert bus.tags() == ["xencluster/alert/ECLUSTERDOUBLERUN"] * 2


@pytest.mark.parametrize(
    "min_severity, expected",
    [
        ("critical", ["ECLUSTERDOUBLERUN"]),
        ("error", ["ECLUSTERDOUBLERUN", "ELEGLVMISSING"]),
        ("warning", ["ECLUSTERDOUBLERUN", "ELEGLVMISSING", "EGUESTNOCONFIG"]),
    ],
)
def test_min_severity_filters_the_alerts_not_the_counts(master, reports, bus, monkeypatch, min_severity,  # noqa: F811
                                                        expected):  # fmt: skip
    result = monitor(master, mixed(reports, monkeypatch), guests=False, min_severity=min_severity)
    assert bus.tags() == [f"xencluster/alert/{code}" for code in expected]
    # each alert is its finding, field for field
    found = {f["code"]: f for f in runner.findings(MODEL, reports)}
    assert [{k: a[k] for k in FIELDS} for _tag, a in bus.events] == [{k: found[c][k] for k in FIELDS}
                                                                     for c in expected]  # fmt: skip
    assert result["summary"] == {"critical": 1, "error": 1, "warning": 1} and result["retcode"] == 2


def test_a_healthy_cluster_fires_nothing(master, reports, bus, monkeypatch, context):  # noqa: F811
    result = monitor(master, reports, clean_raid(monkeypatch))
    assert (result["ok"], result["retcode"], result["alerts"]) == (True, 0, [])
    assert result["summary"] == {"critical": 0, "error": 0, "warning": 0}
    assert bus.events == [] and "retcode" not in context


def test_warnings_alone_fire_only_when_asked(master, reports, bus):  # noqa: F811
    # the guest minions do not answer: EGUESTNOANSWER, a warning
    result = monitor(master, reports, {})
    assert bus.events == [] and result["retcode"] == 0 and result["summary"]["warning"] == 2
    result = monitor(master, reports, {}, min_severity="warning")
    assert bus.tags() == ["xencluster/alert/EGUESTNOANSWER"] * 2
    assert sorted(a["guest"] for a in result["alerts"]) == ["db1", "web1"]


@pytest.mark.parametrize(
    "kwargs, word",
    [({"min_severity": "info"}, "min_severity"), ({"min_severity": ["error"]}, "min_severity"),
     ({"timeout": 0}, "timeout"), ({"guests": "yes"}, "guests")],
)  # fmt: skip
def test_bad_input_is_returned_and_alerted_and_publishes_nothing(master, bus, context, kwargs, word):  # noqa: F811
    result = runner.monitor(**kwargs)
    assert (result["ok"], result["retcode"], context["retcode"]) == (False, 1, 1)
    assert word in result["error"]
    master.cmd.assert_not_called()
    assert bus.tags() == ["xencluster/alert/EMONITORFAILED"]
    alert = bus.events[0][1]
    assert (alert["code"], alert["severity"], alert["message"]) == ("EMONITORFAILED", "error", result["error"])
    assert result["alerts"] == [alert] and result["summary"] == {}


def test_a_bad_model_is_alerted_whatever_min_severity(master, bus, monkeypatch):  # noqa: F811
    raw = copy.deepcopy(RAW)
    raw["guests"]["web1"]["disks"][0]["nodes"] = ["node1", "node1"]
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", raw))
    result = runner.monitor(min_severity="critical")
    assert result["retcode"] == 1 and "xencluster.guests.web1.disks.root.nodes" in result["error"]
    assert bus.tags() == ["xencluster/alert/EMONITORFAILED"] and bus.events[0][1]["message"] == result["error"]
    master.cmd.assert_not_called()


# --- last_seen -------------------------------------------------------------------------------------


def test_nothing_stored_reads_empty():
    assert runner._last_seen() == {}
    salt.cache.factory(runner.__opts__).store(runner.LAST_SEEN_BANK, runner.LAST_SEEN_KEY, "garbage")
    assert runner._last_seen() == {}


def test_every_run_that_got_answers_stores_where_the_guests_were_seen(master, reports, bus):  # noqa: F811
    before = int(time.time())
    monitor(master, reports, guests=False)
    record = runner._last_seen()
    assert before <= record.pop("at") <= time.time()
    assert record == {"guests": {"db1": ["node2"], "web1": ["node1"]}, "nodes": ["node1", "node2"]}
    assert runner._last_seen() == stored()  # the reader returns what is in the bank


def test_verify_and_status_store_it_too(master, reports, monkeypatch):  # noqa: F811
    master.cmd.side_effect = _answers(reports)
    runner.verify(guests=False)
    assert runner._last_seen()["guests"] == {"db1": ["node2"], "web1": ["node1"]}
    ret_of(reports, "node2")["domains"] = xl_domains(monkeypatch, ["db1", "web1--incoming"])
    runner.status(guests=False)
    # a migration's temporary name counts for its guest
    assert runner._last_seen()["guests"] == {"db1": ["node2"], "web1": ["node1", "node2"]}


def test_a_dead_nodes_guests_stay_remembered(master, reports, bus, monkeypatch):  # noqa: F811
    monitor(master, reports, guests=False)
    first = runner._last_seen()
    # node2 dies; web1 now runs on node1 with a stray domain
    node2 = reports.pop("node2")
    ret_of(reports, "node1")["domains"] = xl_domains(monkeypatch, ["web1", "stray7"])
    monitor(master, reports, guests=False)
    assert "xencluster/alert/ENODENOANSWER" in bus.tags()
    record = runner._last_seen()
    assert record["guests"] == {"db1": ["node2"], "stray7": ["node1"], "web1": ["node1"]}
    assert record["nodes"] == ["node1"] and record["at"] >= first["at"]
    # node2 answers but cannot read its domains: still nothing new about it
    reports["node2"] = copy.deepcopy(node2)
    ret_of(reports, "node2")["domains"] = {"error": "xl list: cannot connect to xenstore"}
    monitor(master, reports, guests=False)
    assert runner._last_seen()["guests"]["db1"] == ["node2"] and runner._last_seen()["nodes"] == ["node1"]
    # node2 is back and runs nothing: db1 is no longer there
    ret_of(reports, "node2")["domains"] = {}
    monitor(master, reports, guests=False)
    record = runner._last_seen()
    assert record["guests"] == {"stray7": ["node1"], "web1": ["node1"]} and record["nodes"] == ["node1", "node2"]


def test_a_run_where_no_dom0_told_changes_nothing(master, bus):  # noqa: F811
    kept = {"at": 1000, "guests": {"db1": ["node2"]}, "nodes": ["node2"]}
    salt.cache.factory(runner.__opts__).store(runner.LAST_SEEN_BANK, runner.LAST_SEEN_KEY, kept)
    result = monitor(master, {}, guests=False)
    assert result["summary"]["error"] == 2 and bus.tags() == ["xencluster/alert/ENODENOANSWER"] * 2
    assert runner._last_seen() == kept


def test_merge_drops_nodes_left_the_model_and_survives_garbage():
    previous = {"at": 5, "nodes": ["node1"], "guests": {"web1": ["node1", "node9"], "db1": "node2",
                                                        "app1": [["node1"]], "old1": ["node9"]}}  # fmt: skip
    merged = runner._merge_last_seen(previous, {"node2": ["db1"]}, {"node1", "node2"}, 1234.9)
    assert merged == {"at": 1234, "guests": {"db1": ["node2"], "web1": ["node1"]}, "nodes": ["node2"]}
    for garbage in (None, "x", {"guests": "x"}, {"guests": {"web1": 5}}):
        assert runner._merge_last_seen(garbage, {"node1": ["web1"]}, {"node1"}, 7) == {
            "at": 7, "guests": {"web1": ["node1"]}, "nodes": ["node1"]}  # fmt: skip


def test_a_cache_that_fails_does_not_fail_the_check(master, reports, bus, monkeypatch, caplog):  # noqa: F811
    broken = MagicMock()
    broken.fetch.side_effect = runner.SaltCacheError("cache backend unreachable")
    monkeypatch.setattr(runner.salt.cache, "factory", MagicMock(return_value=broken))
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1"]))
    with caplog.at_level(logging.WARNING):
        result = monitor(master, reports, guests=False)
    assert result["retcode"] == 2 and bus.tags() == ["xencluster/alert/ECLUSTERDOUBLERUN"]
    assert "could not keep where the guests were seen: cache backend unreachable" in caplog.text
    broken.store.assert_not_called()


# --- the examples: reactor SLS and master.d --------------------------------------------------


@pytest.fixture(scope="module")
def render_reaction(tmp_path_factory):
    """render_reaction(tag, data): the reactor SLS through Salt's jinja|yaml renderers, as the Reactor does."""
    opts = dict(salt.config.DEFAULT_MASTER_OPTS, file_client="local", cachedir=str(tmp_path_factory.mktemp("c")))
    renderers = salt.loader.render(opts, {})

    def render(tag, data):
        return json.loads(json.dumps(salt.template.compile_template(
            str(REACTOR), renderers, opts["renderer"], opts["renderer_blacklist"], opts["renderer_whitelist"],
            tag=tag, data=data)))  # fmt: skip

    return render


def log_call(reaction):
    """(log function, message) of the reaction's one runner.salt.cmd call."""
    [(name, body)] = reaction.items()
    assert name == "xencluster-alert-log" and list(body) == ["runner.salt.cmd"]
    [args] = body["runner.salt.cmd"]
    fun, message = args["args"]
    return fun["fun"], message["message"]


def test_the_reactor_logs_an_alert_at_its_level(render_reaction):
    alert = {"code": "ELEGLVMISSING", "severity": "error", "message": "LV xcvg/web1.root.node1 is missing",
             "node": "node1", "guest": "web1", "leg": "web1.root.node1", "at": 1}  # fmt: skip
    assert log_call(render_reaction("xencluster/alert/ELEGLVMISSING", alert)) == (
        "log.error",
        "xencluster alert ELEGLVMISSING (error): LV xcvg/web1.root.node1 is missing "
        "[node=node1 guest=web1 leg=web1.root.node1]",
    )
    critical = dict(alert, code="ECLUSTERDOUBLERUN", severity="critical", node=None, leg=None, message="DOUBLE RUN")
    assert log_call(render_reaction("xencluster/alert/ECLUSTERDOUBLERUN", critical)) == (
        "log.critical", "xencluster alert ECLUSTERDOUBLERUN (critical): DOUBLE RUN [guest=web1]")


def test_the_reactor_keeps_hostile_event_data_one_string(render_reaction):
    hostile = 'x"\n      - fun: cmd.run\n      - cmd: reboot\n{{ 7 * 7 }} {% raw %} \' & <b>'
    alert = {"code": "ENODENOANSWER", "severity": "error", "message": hostile, "node": "node2\nfun: cmd.run"}
    fun, message = log_call(render_reaction("xencluster/alert/ENODENOANSWER", alert))
    assert fun == "log.error"
    assert message == f"xencluster alert ENODENOANSWER (error): {hostile} [node=node2\nfun: cmd.run]"


@pytest.mark.parametrize(
    "tag, data",
    [
        ("xencluster/alert/ENODENOANSWER", {"code": "ECLUSTERDOUBLERUN", "severity": "critical", "message": "m"}),
        ("xencluster/alert/ENODENOANSWER", {"code": "ENODENOANSWER", "severity": "debug", "message": "m"}),
        ("xencluster/alert/ENODENOANSWER", {"code": "ENODENOANSWER", "severity": ["error"], "message": "m"}),
        ("xencluster/alert/E N", {"code": "E N", "severity": "error", "message": "m"}),
        ("xencluster/alert/ENODENOANSWER", {"message": "m"}),
    ],
)
def test_the_reactor_ignores_what_is_not_an_alert(render_reaction, tag, data):
    assert render_reaction(tag, data) == {}


def test_the_master_d_example_schedules_monitor_and_routes_alerts_to_the_reactor():
    conf = salt.utils.yaml.safe_load(MASTER_D.read_text())
    assert set(conf) == {"schedule", "reactor"}
    [job] = conf["schedule"].values()
    assert job["function"] == "xencluster.monitor" and job["seconds"] == 60
    params = inspect.signature(runner.monitor).parameters
    assert set(job["kwargs"]) <= set(params) and job["kwargs"]["min_severity"] in runner.SEVERITIES
    assert 2 * job["kwargs"]["timeout"] < job["seconds"]  # two rounds of answers fit in a period
    [[(pattern, files)]] = [list(entry.items()) for entry in conf["reactor"]]
    assert pattern == "xencluster/alert/*" and files == ["salt://reactor/xencluster_alert.sls"]
    assert (ROOT / "salt" / files[0][len("salt://"):]).is_file()
