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
