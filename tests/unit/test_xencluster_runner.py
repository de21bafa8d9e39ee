"""xencluster.locate runner: one parallel call, double runs flagged, nothing crashes."""

import logging
from unittest.mock import MagicMock

import pytest

from saltext.xencluster.runners import xencluster as runner


def _ok(domains):
    return {"ret": domains, "retcode": 0, "jid": "20260101000000000000"}


WEB1 = {"domid": 3, "type": "pvh", "memory": 1024**3, "vcpus": 2, "state": "blocked"}
DB1 = {"domid": 5, "type": "pv", "memory": 4 * 1024**3, "vcpus": 4, "state": "running"}


@pytest.fixture
def client():
    client = MagicMock()
    client.cmd.return_value = {}
    return client


@pytest.fixture
def client_class(client):
    return MagicMock(return_value=client)


@pytest.fixture
def configure_loader_modules():
    return {
        runner: {
            "__opts__": {"conf_file": "/etc/salt/master", "timeout": 5},
        }
    }


@pytest.fixture(autouse=True)
def _local_client(monkeypatch, client_class):
    monkeypatch.setattr(runner.salt.client, "LocalClient", client_class)


def test_locate_one_parallel_call(client, client_class):
    client.cmd.return_value = {"node1": _ok({"web1": WEB1}), "node2": _ok({"db1": DB1})}
    result = runner.locate()
    client_class.assert_called_once_with("/etc/salt/master")
    client.cmd.assert_called_once_with(
        "*", "xencluster_xl.list_domains", timeout=5, tgt_type="glob", full_return=True
    )
    assert result == {
        "guests": {"db1": ["node2"], "web1": ["node1"]},
        "double_runs": [],
        "no_answer": [],
        "unavailable": {},
        "errors": {},
    }


def test_locate_passes_target_and_timeout(client):
    runner.locate(tgt="G@xencluster:dom0", tgt_type="compound", timeout=20)
    client.cmd.assert_called_once_with(
        "G@xencluster:dom0",
        "xencluster_xl.list_domains",
        timeout=20,
        tgt_type="compound",
        full_return=True,
    )


def test_double_run_is_flagged_and_logged_at_error(client, caplog):
    client.cmd.return_value = {
        "node1": _ok({"web1": WEB1, "db1": DB1}),
        "node2": _ok({"web1": dict(WEB1, domid=12)}),
        "node3": _ok({"web1": dict(WEB1, domid=4), "web2--incoming": WEB1}),
    }
    with caplog.at_level(logging.ERROR, logger=runner.__name__):
        result = runner.locate()
    assert result["double_runs"] == ["web1"]
    assert result["guests"]["web1"] == ["node1", "node2", "node3"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "DOUBLE RUN" in errors[0].getMessage()
    assert "web1" in errors[0].getMessage() and "node1, node2, node3" in errors[0].getMessage()


def test_migration_is_not_a_double_run(client):
    client.cmd.return_value = {
        "node1": _ok({"web1": WEB1}),
        "node2": _ok({"web1--incoming": dict(WEB1, state="paused")}),
    }
    assert runner.locate()["double_runs"] == []


def test_no_answer_unavailable_and_errors(client):
    client.cmd.return_value = {
        "node1": _ok({"web1": WEB1}),
        "node2": False,  # LocalClient.cmd: targeted, did not return in time
        "mgmt1": {
            "ret": "'xencluster_xl' __virtual__ returned False: xencluster_xl: not a Xen dom0 "
            "(no control_d in /proc/xen/capabilities)",
            "retcode": 1,
        },
        "old1": {"ret": "'xencluster_xl.list_domains' is not available.", "retcode": 1},
        "node3": {
            "ret": "ERROR: xl list -l failed (rc 1): libxl: error: cannot get domain info",
            "retcode": 1,
        },
    }
    result = runner.locate()
    assert result["guests"] == {"web1": ["node1"]}
    assert result["no_answer"] == ["node2"]
    assert sorted(result["unavailable"]) == ["mgmt1", "old1"]
    assert list(result["errors"]) == ["node3"]
    assert result["double_runs"] == []


def test_nothing_targeted(client):
    client.cmd.return_value = {}
    assert runner.locate(tgt="nomatch*") == {
        "guests": {},
        "double_runs": [],
        "no_answer": [],
        "unavailable": {},
        "errors": {},
    }


def test_many_nodes_many_guests_still_one_call(client):
    client.cmd.return_value = {
        f"node{n}": _ok({f"g{n}-{i}": WEB1 for i in range(50)}) for n in range(100)
    }
    result = runner.locate()
    assert client.cmd.call_count == 1
    assert len(result["guests"]) == 5000 and result["double_runs"] == []


NO_RETURN = {
    "out": "no_return",
    "ret": "Minion did not return. [No response]\nThe minions may not have all finished running and any "
    "remaining minions will return upon completion. To look up the return data for this job later, run "
    "the following command:\n\nsalt-run jobs.lookup_jid 20261124020128715550",
    "retcode": 1,
}


def test_salt_3008_no_return_is_no_answer_not_an_error(client):
    # what LocalClient.cmd(..., full_return=True) gives for a silent or unknown minion in 3008.3
    client.cmd.return_value = {
        "node1": _ok({"web1": WEB1}),
        "node2": NO_RETURN,
        "node3": dict(NO_RETURN, ret="Minion did not return. [Not connected]"),
    }
    result = runner.locate()
    assert result["no_answer"] == ["node2", "node3"] and result["errors"] == {}


def test_expect_adds_the_minions_that_are_not_in_the_returns(client):
    client.cmd.return_value = {"node1": _ok({"web1": WEB1}), "node2": False}
    result = runner.locate(tgt=["node1", "node2", "node3"], tgt_type="list", expect=["node3", "node1", "node2"])
    client.cmd.assert_called_once_with(
        ["node1", "node2", "node3"], "xencluster_xl.list_domains", timeout=5, tgt_type="list", full_return=True
    )
    assert result["no_answer"] == ["node2", "node3"]
    assert result["guests"] == {"web1": ["node1"]}


def test_expect_from_the_command_line_and_when_all_answer(client):
    client.cmd.return_value = {"node1": _ok({}), "node2": _ok({"db1": DB1})}
    assert runner.locate(tgt="node1,node2", tgt_type="list", expect="node1,node2")["no_answer"] == []
    # nothing answered at all: every expected minion is unknown
    client.cmd.return_value = {}
    assert runner.locate(expect="node1,node2")["no_answer"] == ["node1", "node2"]


@pytest.mark.parametrize("expect", [[""], [1], {"node1": True}, 5])
def test_expect_must_be_minion_ids(client, expect):
    with pytest.raises(runner.SaltInvocationError, match="expect must be a list of minion ids"):
        runner.locate(expect=expect)
    client.cmd.assert_not_called()
