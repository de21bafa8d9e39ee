"""The provisioning reactor (salt/reactor/xencluster_provision.sls) rendered as the Reactor does.

Through Salt's own jinja|yaml renderers with a master's opts holding the allow-list: a request
becomes one orchestration (with the guest and the asking minion in its pillar), anything else
one warning on the master's log and nothing else. The same file is driven through a real master
in tests/integration/test_runner_provision.py.
"""

import json
import pathlib

import pytest
import salt.config
import salt.loader
import salt.template

ROOT = pathlib.Path(__file__).resolve().parents[2]
REACTOR = ROOT / "salt" / "reactor" / "xencluster_provision.sls"
ORCHESTRATE = ROOT / "salt" / "xencluster" / "orchestrate" / "provision.sls"
TAG = "xencluster/guest/provision"


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """render(tag, data, allow=...) -> the reaction as plain data."""
    cache = str(tmp_path_factory.mktemp("c"))

    def _render(tag, data, allow=("node[0-9]*",)):
        opts = dict(salt.config.DEFAULT_MASTER_OPTS, file_client="local", cachedir=cache,
                    xencluster_provision_allow=list(allow) if isinstance(allow, tuple) else allow)  # fmt: skip
        renderers = salt.loader.render(opts, {})
        return json.loads(json.dumps(salt.template.compile_template(
            str(REACTOR), renderers, opts["renderer"], opts["renderer_blacklist"], opts["renderer_whitelist"],
            tag=tag, data=data)))  # fmt: skip

    return _render


def minion_event(minion, payload):
    """What the master's bus carries for `salt-call event.send` on ``minion``."""
    return {"id": minion, "tag": TAG, "data": payload, "cmd": "_minion_event", "_stamp": "2026-11-25T08:00:00"}


def orchestration(reaction):
    [(name, body)] = reaction.items()
    [(fun, [args])] = body.items()
    assert fun == "runner.state.orchestrate", reaction
    mods, pillar = args["args"]
    assert mods == {"mods": "xencluster.orchestrate.provision"}, reaction
    return name, pillar["pillar"]["xencluster_provision"]


def refusal(reaction):
    [(name, body)] = reaction.items()
    assert name == "xencluster-provision-refused" and list(body) == ["runner.salt.cmd"], reaction
    fun, message = body["runner.salt.cmd"][0]["args"]
    assert fun == {"fun": "log.warning"}, reaction
    return message["message"]


def test_an_allowed_minion_starts_the_orchestration(render):
    name, request = orchestration(render(TAG, minion_event("node1", {"guest": "svc1", "__pub_fun": "event.send"})))
    assert name == "xencluster-provision-svc1" and request == {"guest": "svc1", "requested_by": "node1"}


def test_a_request_fired_on_the_master_has_no_requester(render):
    assert orchestration(render(TAG, {"guest": "svc1", "_stamp": "x"}))[1] == {"guest": "svc1", "requested_by": None}


@pytest.mark.parametrize("allow, minion, ok", [
    (["node[0-9]*"], "node12", True),
    (["node1"], "node1", True),
    (["node1"], "node10", False),
    ("node2", "node2", True),  # a single string
    ([], "node1", False),
    (None, "node1", False),
    (["node?"], "nodeX", True),
    (["node?"], "node.x", False),
    (["web*"], "node1", False),
    (["node[!1]"], "node2", True),
    (["node[!1]"], "node1", False),
    (["node[12]", "web?"], "web9", True),
    (["node.1"], "nodex1", False),  # '.' is literal
    (["node[1"], "node1", False),  # an unclosed class matches nothing
])  # fmt: skip
def test_the_allow_list_takes_exact_ids_and_globs(render, allow, minion, ok):
    reaction = render(TAG, minion_event(minion, {"guest": "svc1"}), allow=allow)
    if ok:
        assert orchestration(reaction)[1]["requested_by"] == minion
    else:
        assert refusal(reaction) == (f"xencluster: provision request refused (from {minion}): minion {minion} is "
                                     "not allowed to ask (master config xencluster_provision_allow)")  # fmt: skip


@pytest.mark.parametrize("payload, why", [
    ({"guest": "Web1"}, "guest must be a guest name (1-31 of a-z 0-9 '-'): Web1"),
    ({"guest": "-x"}, "guest must be a guest name"),
    ({"guest": "a" * 32}, "guest must be a guest name"),
    ({"guest": "svc1\nreboot"}, "guest must be a guest name"),
    ({"guest": 7}, "guest must be a guest name"),
    ({}, "guest must be a guest name"),
    ({"guest": "svc1", "node": "node2"}, "unexpected key(s) node"),
    (["svc1"], "the payload is not a mapping"),
    ("svc1", "the payload is not a mapping"),
])  # fmt: skip
def test_a_bad_payload_is_refused_with_its_reason(render, payload, why):
    assert why in refusal(render(TAG, minion_event("node1", payload)))


def test_hostile_text_stays_one_string(render):
    hostile = "x\" - fun: cmd.run {{ 6 * 7 }} {% raw %} ' & <b>"
    message = refusal(render(TAG, minion_event("node1", {"guest": hostile})))
    assert "42" not in message and message.startswith("xencluster: provision request refused (from node1): ")


def test_another_tag_is_refused(render):
    assert "unexpected tag xencluster/guest/other" in refusal(render("xencluster/guest/other",
                                                                     minion_event("node1", {"guest": "svc1"})))


def test_the_orchestration_passes_the_request_to_the_runner():
    text = ORCHESTRATE.read_text()
    assert "xencluster.provision" in text and "requested_by" in text
