"""salt-run xencluster.verify on a real master and minion (127.0.0.1, no Xen here).

A master of its own, with the frozen lab model as pillar where node1 is the
minion ``xc-vdom0-1`` (running, extension synced, but no dom0: its
``xencluster_node`` does not load) and node2 is ``xc-vdom0-2`` (no key: it
cannot answer). The runner reads that model from the master's pillar,
validates it with ``xencluster_model`` synced to the master, publishes once
and must say that neither dom0 could report, exit non-zero, and print JSON
that parses (and findings the highstate outputter can render).
"""

import json

import pytest
import salt.utils.yaml
from xc_helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOM0 = "xc-vdom0-1"
GHOST = "xc-vdom0-2"  # in the model, no key on the master


@pytest.fixture(scope="module")
def pillar_roots(tmp_path_factory):
    raw = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())
    raw["xencluster"]["nodes"]["node1"]["minion"] = DOM0
    raw["xencluster"]["nodes"]["node2"]["minion"] = GHOST
    base = tmp_path_factory.mktemp("verify-pillar")
    (base / "top.sls").write_text("base:\n  '*':\n    - xencluster\n")
    (base / "xencluster.sls").write_text(json.dumps(raw))  # JSON is YAML
    return base


@pytest.fixture(scope="module")
def verify_master(salt_factories, file_roots, pillar_roots):
    master = salt_factories.salt_master_daemon(
        "xc-verify-master",
        overrides={"file_roots": {"base": [str(file_roots)]}, "pillar_roots": {"base": [str(pillar_roots)]}},
    )
    with master.started():
        run = master.salt_run_cli(timeout=120)
        for sync in ("saltutil.sync_runners", "saltutil.sync_modules"):  # the runner and xencluster_model
            res = run.run(sync)
            assert res.returncode == 0, res
        yield master


@pytest.fixture(scope="module")
def dom0(verify_master):
    minion = verify_master.salt_minion_daemon(DOM0)
    with minion.started():
        res = verify_master.salt_cli(timeout=120).run("saltutil.sync_modules", minion_tgt=DOM0)
        assert res.returncode == 0, res
        yield minion


def test_verify_says_the_dom0s_cannot_report_and_exits_non_zero(verify_master, dom0):
    res = verify_master.salt_run_cli(timeout=120).run("xencluster.verify", "timeout=15", "--out=json")
    assert res.returncode == 1, res  # errors, nothing critical
    result = json.loads(res.stdout)
    found = {(f["code"], f["node"]): f for f in result["findings"]}
    assert set(found) == {("ENODEUNAVAILABLE", "node1"), ("ENODENOANSWER", "node2")}, result["findings"]
    assert "not a Xen dom0" in found[("ENODEUNAVAILABLE", "node1")]["message"]
    assert result["ok"] is False and result["retcode"] == 1 and result["guests"] == {}
    assert result["summary"]["model_from"] == DOM0 and result["summary"]["error"] == 2


def test_verify_highstate_output(verify_master, dom0):
    res = verify_master.salt_run_cli(timeout=120).run(
        "xencluster.status", "timeout=15", "guests=False", "out=highstate", "--out=highstate"
    )
    assert res.returncode == 1, res
    assert "ENODEUNAVAILABLE" in res.stdout and "ENODENOANSWER" in res.stdout
    assert "Failed:" in res.stdout and "not a valid highstate return" not in res.stderr


def test_verify_without_a_model_fails_and_publishes_nothing(verify_master, dom0):
    res = verify_master.salt_run_cli(timeout=120).run("xencluster.verify", "tgt=nomatch*", "--out=json")
    assert res.returncode != 0, res
    assert "has pillar 'xencluster'" in res.stdout, res
