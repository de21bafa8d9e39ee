"""salt-run xencluster.recover on a real master and minion (127.0.0.1, no Xen here).

As for verify and migrate (conftest.py ``model_master``, ``model_dom0``): the
frozen lab model is the pillar, node1 is the minion ``xc-rdom0-1`` (running,
extension synced, no dom0: ``xencluster_node`` and ``xencluster_xl`` do not
load) and node2 is ``xc-rdom0-2`` (no key, never answers). So recover must
refuse, through the real multi-function publish, the real master cache and
salt-run's exit status: a missing or wrong ``confirm_dead`` before anything is
published, a "lost" node that answers, and a lost node whose partner cannot
tell its domains. A dry run fires nothing, so its stdout is one JSON document.
"""

import json
import time

import pytest
import salt.cache
from test_runner_migrate import json_documents
from xc_helpers import MODEL_DOM0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOM0 = MODEL_DOM0
NOT_LOADED = f"node1 (minion {DOM0}) could not report: 'xencluster_node.report' is not loaded there"


def run_recover(master, *args):
    res = master.salt_run_cli(timeout=120).run("xencluster.recover", *args, "check_timeout=10", "--out=json")
    return res, json_documents(res.stdout)


@pytest.fixture
def last_seen(model_master):
    """The master cache's last_seen record (what verify keeps): web1 last seen on node2; removed after."""
    cache = salt.cache.factory(model_master.config)
    record = {"at": 1767225600, "guests": {"web1": ["node2"], "stray": ["node2"]}, "nodes": ["node2"]}
    cache.store("xencluster/last_seen", "guests", record)
    yield record
    cache.flush("xencluster/last_seen", "guests")


@pytest.mark.parametrize(
    "args, why",
    [
        ((), "refused: recover starts the guests of node2 on one leg of their disks; say that node2 is dead "
             "(powered off, fenced) with confirm_dead=node2"),
        (("confirm_dead=node1",), "refused: confirm_dead=node1 does not name the lost node node2"),
    ],
)  # fmt: skip
def test_without_the_right_confirm_dead_nothing_is_asked(model_master, model_dom0, args, why):
    start = time.monotonic()
    res, [result] = run_recover(model_master, "node2", *args)
    assert res.returncode == 1, res
    assert (result["result"], result["retcode"], result["guests"]) == (False, 1, []), result
    assert result["message"].startswith(f"not recovering node2: {why}"), result
    assert time.monotonic() - start < 60  # no publish waited for the dom0s


def test_a_lost_node_that_answers_is_not_dead(model_master, model_dom0):
    res, [result] = run_recover(model_master, "node1", "confirm_dead=node1", "dry_run=True")
    assert res.returncode == 1, res
    assert result["message"].startswith(f"would not recover node1: node1 answered ({NOT_LOADED}"), result
    assert result["message"].endswith("it is not dead. Fence it (power it off) before recovering its guests "
                                      "elsewhere"), result  # fmt: skip
    [web1] = result["guests"]  # pinned to node1 in the model
    assert (web1["guest"], web1["outcome"], web1["pinned"]) == ("web1", "refused", True), web1
    assert "Traceback" not in res.stdout


def test_dry_run_with_a_partner_that_cannot_tell(model_master, model_dom0, last_seen):
    res, [result] = run_recover(model_master, "node2", "confirm_dead=node2", "dry_run=True")
    assert res.returncode == 1, res
    assert result["message"] == (f"would not recover node2: every other node must tell its domains: {NOT_LOADED} "
                                 "(not a dom0, or the extension is not synced: saltutil.sync_modules)"), result
    # db1 is pinned to node2; web1 was last seen there (the master cache); stray is no guest of the model
    assert [(e["guest"], e["outcome"], e["pinned"], e["last_seen"]) for e in result["guests"]] == [
        ("db1", "refused", True, False), ("web1", "refused", False, True)], result  # fmt: skip
    assert result["unknown"] == ["stray"] and result["dry_run"] is True
    assert result["last_seen"] == {"at": 1767225600, "guests": ["stray", "web1"], "error": None}, result


def test_a_refused_real_run_prints_progress_and_starts_nothing(model_master, model_dom0, event_listener):
    start = time.time()
    res, docs = run_recover(model_master, "node2", "confirm_dead=node2")
    assert res.returncode == 1, res
    *progress, result = docs
    assert [p["event"]["message"] for p in progress if p.get("suffix") == "progress"] == [result["message"]], res
    assert result["message"].startswith("not recovering node2: every other node must tell its domains"), result
    assert result["started"] == [] and result["refused"] == ["db1"], result
    # nothing was started, so no guest event: the bus carries none under xencluster/recover/
    matched = event_listener.wait_for_events([(model_master.id, "xencluster/recover/*")], after_time=start,
                                             timeout=5)  # fmt: skip
    assert not matched.found_all_events, list(matched)
    assert json.dumps(result)
