"""xencluster.monitor run by a real master's schedule; its alerts routed by the reactor example (127.0.0.1, no Xen).

A master of its own, because the schedule and the reactor are master
configuration: the shipped master.d example
(salt/xencluster/files/master.d/xencluster-monitor.conf) is put in the
master's ``master.d/`` with its period shortened to ``PERIOD`` seconds and its
timeout to ``CHECK_TIMEOUT``; the reactor SLS is served from this checkout's
``salt/`` as ``salt://reactor/xencluster_alert.sls``. The pillar is the
frozen lab model where node1 is the running minion ``xc-mon-dom0`` (no Xen:
it cannot report, ENODEUNAVAILABLE) and node2 is ``xc-mon-ghost`` (no key:
it never answers, ENODENOANSWER). Both findings are errors, so with the
example's ``min_severity: error`` every scheduled run must fire both alerts,
and the reactor must write each to the master's log at ERROR.
"""

import json
import pathlib
import re
import time

import pytest
import salt.utils.yaml
from xc_helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOM0 = "xc-mon-dom0"  # node1 of the model: a running minion, nothing synced, no Xen
GHOST = "xc-mon-ghost"  # node2 of the model: no key on the master, never answers
PERIOD = 5  # seconds between scheduled runs (the example says 60)
CHECK_TIMEOUT = 3  # verify's timeout per round of answers
# A run answered here takes about a second; the scheduler wakes once a second or so late.
RUN_AND_JITTER = 2 * CHECK_TIMEOUT + 2
MASTER_D = ROOT / "salt" / "xencluster" / "files" / "master.d" / "xencluster-monitor.conf"


@pytest.fixture(scope="module")
def monitor_pillar_roots(tmp_path_factory):
    """The frozen lab model with node1/node2 mapped to the minion ids above."""
    raw = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())
    raw["xencluster"]["nodes"]["node1"]["minion"] = DOM0
    raw["xencluster"]["nodes"]["node2"]["minion"] = GHOST
    base = tmp_path_factory.mktemp("monitor-pillar")
    (base / "top.sls").write_text("base:\n  '*':\n    - xencluster\n")
    (base / "xencluster.sls").write_text(json.dumps(raw))  # JSON is YAML
    return base


def shortened_example():
    """The shipped master.d example with a test-sized period and timeout, nothing else changed."""
    conf = salt.utils.yaml.safe_load(MASTER_D.read_text())
    job = conf["schedule"]["xencluster-monitor"]
    job["seconds"], job["kwargs"]["timeout"] = PERIOD, CHECK_TIMEOUT
    return conf


@pytest.fixture(scope="module")
def monitor_master(salt_factories, file_roots, monitor_pillar_roots):
    """A master with the example's schedule and reactor in master.d; the runner and xencluster_model synced."""
    master = salt_factories.salt_master_daemon(
        "xc-mon-master",
        overrides={
            "file_roots": {"base": [str(file_roots), str(ROOT / "salt")]},  # salt/: the reactor SLS
            "pillar_roots": {"base": [str(monitor_pillar_roots)]},
        },
    )
    master_d = pathlib.Path(master.config_dir) / "master.d"
    master_d.mkdir(exist_ok=True)
    (master_d / MASTER_D.name).write_text(json.dumps(shortened_example()))  # JSON is YAML
    with master.started():
        run = master.salt_run_cli(timeout=120)
        # the runs scheduled before this find no xencluster.monitor yet: each is logged and skipped
        for sync in ("saltutil.sync_runners", "saltutil.sync_modules"):
            res = run.run(sync)
            assert res.returncode == 0, res
        yield master


@pytest.fixture(scope="module")
def monitor_dom0(monitor_master):
    minion = monitor_master.salt_minion_daemon(DOM0)
    with minion.started():
        yield minion


def alerts(event_listener, master, code, after):
    """The ``xencluster/alert/<code>`` events the master fired after ``after``."""
    return list(event_listener.get_events([(master.id, f"xencluster/alert/{code}")], after_time=after))


def wait_for_runs(event_listener, master, code, after, runs, timeout):
    """The alert events of ``code`` fired after ``after``, once ``runs`` distinct runs fired one, or at timeout."""
    deadline = time.time() + timeout
    while True:
        found = alerts(event_listener, master, code, after)
        if len({e.data["at"] for e in found}) >= runs or time.time() > deadline:
            return found
        time.sleep(0.2)


# saltfactories' log_fmt_logfile: [time][logger:line][LEVEL   ][process(pid)] message
RECORD = re.compile(r"\[[^]]*\]\[[^]]*\]\[(?P<level>[A-Z]+) *\]\[[^]]*\] (?P<message>.*)")


def log_records(master, prefix, timeout):
    """(level, message) of the master log's records whose message starts with ``prefix``, waiting for one."""
    path = pathlib.Path(master.config["log_file"])
    deadline = time.time() + timeout
    while True:
        found = [m.group("level", "message") for m in map(RECORD.fullmatch, path.read_text(errors="replace")
                 .splitlines()) if m and m.group("message").startswith(prefix)]  # fmt: skip
        if found or time.time() > deadline:
            return found
        time.sleep(0.5)


def test_the_schedule_alerts_a_serious_finding_within_one_period(monitor_master, monitor_dom0, event_listener):
    start = time.time()
    found = wait_for_runs(event_listener, monitor_master, "ENODENOANSWER", start, runs=2,
                          timeout=2 * PERIOD + RUN_AND_JITTER)  # fmt: skip
    found = [e for e in found if e.data["node"] == "node2"]  # node1 too, while its minion authenticates
    ats = sorted({e.data["at"] for e in found})
    assert len(ats) >= 2, found
    # the condition held from the start: the next run alerted it within one period (plus its own time)
    first = min(found, key=lambda e: e.data["at"])
    assert first.stamp.timestamp() - start <= PERIOD + RUN_AND_JITTER, (start, first)
    # and every period again while it lasts (no de-duplication). No lower bound: "at" is taken
    # when a run has its answers, so a slow run followed by a quick one ends closer than a period.
    assert 0 < ats[1] - ats[0] <= PERIOD + RUN_AND_JITTER, ats
    data = first.data
    assert (data["code"], data["severity"], data["node"], data["guest"], data["leg"]) == (
        "ENODENOANSWER", "error", "node2", None, None)  # fmt: skip
    assert data["message"].startswith(f"dom0 node2 (minion {GHOST}) did not answer"), data
    # each run fires every error finding: once node1's minion answers (a run that started while it
    # was still authenticating has it as ENODENOANSWER too), node1 cannot report either
    def both():
        unavailable = alerts(event_listener, monitor_master, "ENODEUNAVAILABLE", start)
        runs = {e.data["at"] for e in alerts(event_listener, monitor_master, "ENODENOANSWER", start)
                if e.data["node"] == "node2"}
        return [e for e in unavailable if e.data["at"] in runs]

    deadline = time.time() + 3 * PERIOD + RUN_AND_JITTER
    while not both() and time.time() < deadline:
        time.sleep(0.2)
    (unavailable, *_) = both() or [None]
    assert unavailable is not None, alerts(event_listener, monitor_master, "ENODEUNAVAILABLE", start)
    assert unavailable.data["node"] == "node1" and "not available" in unavailable.data["message"], unavailable


def test_the_reactor_writes_each_alert_to_the_master_log_at_its_level(monitor_master, monitor_dom0):
    # the reactor's own records (the event bus logs the alert data too, at DEBUG, inside other messages)
    records = log_records(monitor_master, "xencluster alert ENODENOANSWER (error): dom0 node2",
                          timeout=2 * PERIOD + RUN_AND_JITTER + 10)  # fmt: skip
    assert records, f"no reactor record in {monitor_master.config['log_file']}"
    level, message = records[-1]
    assert level == "ERROR" and message == (f"xencluster alert ENODENOANSWER (error): dom0 node2 (minion {GHOST}) "
                                            "did not answer: the guests it runs and its legs are unknown "
                                            "[node=node2]"), records  # fmt: skip
    [(level, message), *_] = log_records(monitor_master, "xencluster alert ENODEUNAVAILABLE", timeout=10)
    assert level == "ERROR" and message.startswith("xencluster alert ENODEUNAVAILABLE (error): dom0 node1"), message


def test_the_reactor_keeps_event_data_out_of_its_yaml(monitor_master):
    # any minion can fire an event to the master: its data must stay data
    run = monitor_master.salt_run_cli(timeout=60)
    hostile = f"x\" - fun: cmd.run {{{{ 6 * 7 }}}} {{% raw %}} ' & <b> {time.time()}"
    forged = {"code": "ELEGSNAPSHOT", "severity": "warning", "message": hostile, "node": "node1"}
    mismatched = dict(forged, message=f"mismatched {hostile}")  # its code is not its tag's
    # the mismatched one first: by the time the forged one is logged, it was rendered (to nothing)
    for tag, data in (("xencluster/alert/ENODENOANSWER", mismatched), ("xencluster/alert/ELEGSNAPSHOT", forged)):
        res = run.run("event.send", tag, f"data={json.dumps(data)}")
        assert res.returncode == 0, res
    # one string, {{ }} not evaluated, at the level the data named
    assert log_records(monitor_master, f"xencluster alert ELEGSNAPSHOT (warning): {hostile}", timeout=30) == [
        ("WARNING", f"xencluster alert ELEGSNAPSHOT (warning): {hostile} [node=node1]")]
    assert not log_records(monitor_master, "xencluster alert ELEGSNAPSHOT (warning): mismatched", timeout=2)
