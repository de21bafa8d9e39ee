"""salt-run xencluster.restore on a real master and minion (127.0.0.1, no Xen here).

As for recover (conftest.py ``model_master``, ``model_dom0``): the frozen lab
model is the pillar, node1 is the minion ``xc-rdom0-1`` (running, extension
synced, no dom0: ``xencluster_node`` and ``xencluster_xl`` do not load) and
node2 is ``xc-rdom0-2`` (no key, never answers). So restore must refuse,
through the real multi-function round, the real master cache, the master's
event bus and salt-run's exit status: bad arguments before anything is
published, a node that does not answer, a node that answers but cannot tell
its domains. A dry run fires nothing, so its stdout is one JSON document; a
refused real run prints its progress line and fires ``finished``. The drained
marks are left as they were.
"""

import json
import time

import pytest
from test_runner_migrate import drained_marks
from test_runner_migrate import json_documents
from xc_helpers import MODEL_DOM0
from xc_helpers import MODEL_GHOST

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NOT_LOADED = f"node1 (minion {MODEL_DOM0}) could not report: 'xencluster_node.report' is not loaded there"


def run_restore(master, *args):
    res = master.salt_run_cli(timeout=120).run("xencluster.restore", *args, "check_timeout=10", "--out=json")
    return res, json_documents(res.stdout)


@pytest.mark.parametrize(
    "args, why",
    [
        (("node1", "resync_timeout=0"), "not restoring node1: resync_timeout must be a whole number of seconds from 1 "
                                        "to 604800: 0"),
        (("node1", "undrain=maybe"), "not restoring node1: undrain must be True or False: 'maybe'"),
        (("node9",), "not restoring node9: no node node9 in the model (pillar of "),
    ],
)  # fmt: skip
def test_bad_arguments_are_returned_before_anything_is_asked(model_master, model_dom0, args, why):
    start = time.monotonic()
    res, [result] = run_restore(model_master, *args)
    assert res.returncode == 1, res
    assert result["message"].startswith(why), result
    assert (result["result"], result["retcode"], result["guests"], result["legs"]) == (False, 1, [], []), result
    assert time.monotonic() - start < 30  # no publish waited for a minion


def test_dry_run_of_a_node_that_does_not_answer(model_master, model_dom0):
    res, [result] = run_restore(model_master, "node2", "dry_run=True")
    assert res.returncode == 1, res
    assert result["message"] == ("would not restore node2: node2 did not answer: boot it and let its minion connect "
                                 "first"), result  # fmt: skip
    assert result["dry_run"] is True and result["legs"] == [] and "Traceback" not in res.stdout


def test_dry_run_of_a_node_that_cannot_tell_its_domains(model_master, model_dom0):
    res, [result] = run_restore(model_master, "node1", "dry_run=True")
    assert res.returncode == 1, res
    assert result["message"] == (
        "would not restore node1: every node must tell its domains, so that where each guest runs is known: "
        f"{NOT_LOADED} (not a dom0, or the extension is not synced: saltutil.sync_modules); node2 (minion "
        f"{MODEL_GHOST}) did not answer"), result  # fmt: skip
    assert (result["undrained"], result["guests"]) == (False, []), result


def test_a_refused_real_run_prints_progress_fires_finished_and_leaves_the_marks(model_master, model_dom0,
                                                                                event_listener):  # fmt: skip
    run = model_master.salt_run_cli(timeout=120)
    before = drained_marks(run)
    start = time.time()
    res, docs = run_restore(model_master, "node1")
    assert res.returncode == 1, res
    *progress, result = docs
    assert [p["event"]["message"] for p in progress if p.get("suffix") == "progress"] == [result["message"]], res
    assert result["message"].startswith("not restoring node1: every node must tell its domains"), result
    matched = event_listener.wait_for_events([(model_master.id, "xencluster/restore/node1/finished")],
                                             after_time=start, timeout=30)  # fmt: skip
    assert matched.found_all_events, res
    [event] = [e for e in matched if e.tag == "xencluster/restore/node1/finished"]
    assert event.data["retcode"] == 1 and event.data["message"] == result["message"]
    # refused before any change: no started event, no legs state, the drained marks as they were
    started = event_listener.get_events([(model_master.id, "xencluster/restore/node1/started")], after_time=start)
    assert not list(started) and drained_marks(run) == before
    assert json.dumps(result)
