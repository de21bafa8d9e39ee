"""make demo's main job (lab/demo.py): what it converges and how it judges a highstate."""

import pytest

from lab import demo
from lab.errors import LabError

MODEL_NODES = {"node1": {"san": "192.168.100.1"}, "node2": {"san": "192.168.100.2"}}


@pytest.fixture
def salt_calls(monkeypatch):
    """Every salt call the demo makes, answered from ``answers`` by function name."""
    calls, answers = [], {}

    def fake(argv, timeout=300):
        calls.append(argv)
        return answers[argv[2]]

    monkeypatch.setattr(demo, "_salt_json", fake)
    return calls, answers


def test_only_the_nodes_of_the_model_are_converged(salt_calls, capsys):
    calls, answers = salt_calls
    answers["pillar.get"] = {name: MODEL_NODES for name in ("node1", "node2", "node3")}
    assert demo._model_members("node1,node2,node3", ["node1", "node2", "node3"]) == ["node1", "node2"]
    assert calls == [["-L", "node1,node2,node3", "pillar.get", "xencluster:nodes"]]
    assert "node3: not a node of the cluster model" in capsys.readouterr().out


def test_no_node_of_the_model_running_is_an_error(salt_calls):
    _, answers = salt_calls
    answers["pillar.get"] = {"node3": {}}
    with pytest.raises(LabError, match="no running dom0 is a node of the cluster model"):
        demo._model_members("node3", ["node3"])


def test_a_highstate_is_summarised_with_its_failures():
    ret = {
        "a": {"__id__": "xencluster-legs", "result": True, "changes": {"x": 1}, "comment": ""},
        "b": {"__id__": "web1", "result": False, "changes": {}, "comment": "refused: runs on node2"},
        "c": {"__id__": "bridges", "result": True, "changes": {}, "comment": ""},
    }
    line, failures = demo._summarise_highstate("node1", ret)
    assert line == "  node1: 3 states, 1 changed, 1 failed"
    assert failures == {"web1": "refused: runs on node2"}


def test_a_highstate_that_did_not_run_is_a_failure():
    line, failures = demo._summarise_highstate("node2", ['The function "state.highstate" is running as PID 622'])
    assert line == "  node2: did not run" and "is running as PID 622" in str(failures["render"])
