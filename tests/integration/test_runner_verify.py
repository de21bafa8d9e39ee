"""salt-run xencluster.verify on a real master and minion (127.0.0.1, no Xen here).

A master of its own, with the frozen lab model as pillar where node1 is the
minion ``xc-rdom0-1`` (running, extension synced, but no dom0: its
``xencluster_node`` does not load) and node2 is ``xc-rdom0-2`` (no key: it
cannot answer). The runner reads that model from the master's pillar,
validates it with ``xencluster_model`` synced to the master, publishes once
and must say that neither dom0 could report, exit non-zero, and print JSON
that parses (and findings the highstate outputter can render).
"""

import json

import pytest
from xc_helpers import MODEL_DOM0
from xc_helpers import MODEL_GHOST

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOM0, GHOST = MODEL_DOM0, MODEL_GHOST  # conftest.py: model_master, model_dom0


def test_verify_says_the_dom0s_cannot_report_and_exits_non_zero(model_master, model_dom0):
    res = model_master.salt_run_cli(timeout=120).run("xencluster.verify", "timeout=15", "--out=json")
    assert res.returncode == 1, res  # errors, nothing critical
    result = json.loads(res.stdout)
    found = {(f["code"], f["node"]): f for f in result["findings"]}
    assert set(found) == {("ENODEUNAVAILABLE", "node1"), ("ENODENOANSWER", "node2")}, result["findings"]
    assert "not a Xen dom0" in found[("ENODEUNAVAILABLE", "node1")]["message"]
    assert result["ok"] is False and result["retcode"] == 1 and result["guests"] == {}
    assert result["summary"]["model_from"] == DOM0 and result["summary"]["error"] == 2


def test_verify_highstate_output(model_master, model_dom0):
    res = model_master.salt_run_cli(timeout=120).run(
        "xencluster.status", "timeout=15", "guests=False", "out=highstate", "--out=highstate"
    )
    assert res.returncode == 1, res
    assert "ENODEUNAVAILABLE" in res.stdout and "ENODENOANSWER" in res.stdout
    assert "Failed:" in res.stdout and "not a valid highstate return" not in res.stderr


def test_verify_without_a_model_fails_and_publishes_nothing(model_master, model_dom0):
    res = model_master.salt_run_cli(timeout=120).run("xencluster.verify", "tgt=nomatch*", "--out=json")
    assert res.returncode != 0, res
    assert "has pillar 'xencluster'" in res.stdout, res
