"""salt-run xencluster.migrate on a real master and minion (127.0.0.1, no Xen here).

As for verify: the frozen lab model is the pillar, node1 is the minion
``xc-rdom0-1`` (running, extension synced, no dom0: neither ``xencluster_node``
nor ``xencluster_xl`` loads) and node2 is ``xc-rdom0-2`` (no key). The dry run
goes through the real multi-function pre-check publish and must refuse
cleanly: checks that say the dom0s could not report, nothing run, JSON that
parses, a non-zero exit status. No event is fired in a dry run, so stdout is
the one JSON document of the return.
"""

import json
import time

import pytest
from lab.master import json_documents  # the sibling runner modules import it from here too
from xc_helpers import MODEL_DOM0
from xc_helpers import MODEL_GHOST

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOM0, GHOST = MODEL_DOM0, MODEL_GHOST  # conftest.py: model_master, model_dom0


def test_dry_run_says_the_dom0s_cannot_report_and_exits_non_zero(model_master, model_dom0):
    res = model_master.salt_run_cli(timeout=120).run(
        "xencluster.migrate", "web1", "dry_run=True", "check_timeout=15", "--out=json"
    )
    assert res.returncode == 1, res
    result = json.loads(res.stdout)
    assert (result["result"], result["retcode"], result["ran"]) == (False, 1, False), result
    assert (result["guest"], result["source"], result["target"], result["where"]) == ("web1", None, None, [])
    checks = {c["check"]: c for c in result["checks"]}
    assert list(checks) == ["runs_once", "target_in_pair", "target_not_drained", "legs_on_target",
                            "target_memory", "migratable", "xen_compatible"]  # fmt: skip
    once = checks["runs_once"]
    assert once["ok"] is False and once["message"].startswith("where web1 runs is not known"), once
    # a multi-function publish of functions the minion has not loaded: seen as such, not as a traceback
    assert f"node1 (minion {DOM0}) could not report: 'xencluster_node.report' is not loaded there" in (
        once["message"]), once
    assert "Traceback" not in json.dumps(result) and f"node2 (minion {GHOST}) did not answer" in once["message"]
    assert checks["migratable"]["ok"] is True  # from the model: PVH
    assert result["message"].startswith("would not migrate web1: 6 check(s) failed"), result


def test_an_unknown_guest_exits_non_zero(model_master, model_dom0):
    # returned, not raised: salt-run would print "Passed invalid arguments" and exit 0
    res = model_master.salt_run_cli(timeout=120).run("xencluster.migrate", "web9", "dry_run=True", "--out=json")
    assert res.returncode == 1, res
    result = json.loads(res.stdout)
    assert result["message"].startswith("not migrating web9: no guest web9 in the model"), result


def test_a_refused_run_fires_prechecked_and_prints_progress(model_master, model_dom0, event_listener):
    # not a dry run: the real master bus and salt-run's progress printing (mocked in the unit tests)
    start = time.time()
    res = model_master.salt_run_cli(timeout=120).run("xencluster.migrate", "web1", "check_timeout=15")
    assert res.returncode == 1, res
    # salt-run prints the progress event (here as JSON, the CLI's --out) before the return
    assert '"suffix": "progress"' in res.stdout and "not migrating web1: 6 check(s) failed" in res.stdout, res
    assert "where it runs is not known" in res.stdout, res
    matched = event_listener.wait_for_events([(model_master.id, "xencluster/migrate/web1/*")], after_time=start,
                                             timeout=30)  # fmt: skip
    assert matched.found_all_events, res
    [event] = [e for e in matched if e.tag.startswith("xencluster/migrate/")]
    assert event.tag == "xencluster/migrate/web1/prechecked" and event.data["result"] is False
    assert [c["check"] for c in event.data["checks"]][0] == "runs_once"


# --- evacuate / undrain / drained ---------------------------------------------------------------


def drained_marks(run):
    res = run.run("xencluster.drained", "--out=json")
    assert res.returncode == 0, res
    return json.loads(res.stdout)


def test_evacuate_dry_run_says_the_node_cannot_list_its_domains(model_master, model_dom0):
    run = model_master.salt_run_cli(timeout=120)
    res = run.run("xencluster.evacuate", "node1", "dry_run=True", "check_timeout=15", "--out=json")
    assert res.returncode == 1, res
    result = json.loads(res.stdout)  # a dry run fires nothing: one document
    assert (result["result"], result["retcode"], result["drained"]) == (False, 1, False), result
    # the minion has no xl: xencluster_xl does not load there
    assert result["message"].startswith(f"cannot evacuate node1: node1 (minion {DOM0}) could not report: "
                                        "'xencluster_xl' __virtual__ returned False"), result  # fmt: skip
    assert "not a dom0, or the extension is not synced" in result["message"], result
    assert (result["moved"], result["failed"], result["skipped"]) == ([], [], []), result
    assert drained_marks(run) == {}


def test_evacuate_marks_the_node_drained_and_undrain_clears_it(model_master, model_dom0, event_listener):
    run = model_master.salt_run_cli(timeout=120)
    start = time.time()
    try:
        res = run.run("xencluster.evacuate", "node1", "check_timeout=15", "concurrency=2", "--out=json")
        assert res.returncode == 1, res
        *progress, result = json_documents(res.stdout)
        lines = [p["event"]["message"] for p in progress if p.get("suffix") == "progress"]
        assert lines == ["node1 marked drained: it takes no guest"], res
        assert (result["result"], result["drained"], result["moved"]) == (False, True, []), result
        assert result["message"].startswith(f"cannot evacuate node1: node1 (minion {DOM0}) could not report"), result
        assert result["message"].endswith("; node1 stays drained (salt-run xencluster.undrain node1)"), result
        marks = drained_marks(run)
        assert list(marks) == ["node1"] and start - 1 <= marks["node1"]["since"] <= time.time(), marks
        matched = event_listener.wait_for_events([(model_master.id, "xencluster/evacuate/node1/finished")],
                                                 after_time=start, timeout=30)  # fmt: skip
        assert matched.found_all_events, res
        # a drained node takes no guest: migrate's pre-check says so (here with what it cannot know)
        res = run.run("xencluster.migrate", "web1", "node1", "dry_run=True", "check_timeout=15", "--out=json")
        checks = {c["check"]: c for c in json.loads(res.stdout)["checks"]}
        assert checks["target_not_drained"]["message"] == "node1 is drained: it takes no guest", checks
    finally:
        res = run.run("xencluster.undrain", "node1", "--out=json")
    assert res.returncode == 0 and json.loads(res.stdout)["changed"] is True, res
    res = run.run("xencluster.undrain", "node1", "--out=json")
    assert res.returncode == 0 and json.loads(res.stdout)["changed"] is False, res
    assert drained_marks(run) == {}
