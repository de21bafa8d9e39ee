"""publish.runner from a minion reaches xencluster.locate on the master, through peer_run.

This is the path of the ``xencluster_guest.running`` live check: the state
calls ``publish.runner("xencluster.locate", arg=locate_arg(<dom0 ids>))`` on
the dom0 and the master runs ``locate`` with those keyword arguments. A master
of its own here (the session master has no peer_run), on 127.0.0.1:

* a minion matched by ``peer_run`` gets the locate result, restricted to the
  minion ids it sent, with an id that has no key reported in ``no_answer``
  (``expect``);
* a minion that peer_run does not match gets ``{}``, which the state treats as
  "cannot be asked" and refuses to start.

These minions are no dom0s: locate reports them as ``unavailable``.
"""

import json

import pytest

from saltext.xencluster.states import xencluster_guest as guest_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ALLOWED = "xc-dom0-1"
DENIED = "xc-other"
GHOST = "xc-dom0-9"  # in the model, no key on the master


@pytest.fixture(scope="module")
def peer_master(salt_factories, file_roots):
    master = salt_factories.salt_master_daemon(
        "xc-peer-master",
        overrides={
            "file_roots": {"base": [str(file_roots)]},
            "peer_run": {r"xc-dom0-[0-9]+$": [r"xencluster\.locate$"]},
        },
    )
    with master.started():
        synced = master.salt_run_cli(timeout=120).run("saltutil.sync_runners")
        assert synced.returncode == 0, synced
        yield master


@pytest.fixture(scope="module")
def minions(peer_master):
    allowed = peer_master.salt_minion_daemon(ALLOWED)
    denied = peer_master.salt_minion_daemon(DENIED)
    with allowed.started(), denied.started():
        yield allowed, denied


def publish_locate(master, minion_id, minion_ids, arg=None):
    arg = arg or guest_state.locate_arg(minion_ids, timeout=15)
    res = master.salt_cli(timeout=180).run(
        "publish.runner", "xencluster.locate", f"arg={json.dumps(arg)}", "timeout=60", minion_tgt=minion_id
    )
    assert res.returncode == 0, res
    return res.data


def test_a_peer_run_minion_gets_the_live_locate_result(peer_master, minions):
    located = publish_locate(peer_master, ALLOWED, [ALLOWED, GHOST])
    assert guest_state._malformed(located) is None, located  # pylint: disable=protected-access
    # only the minion ids that were sent were targeted (not xc-other)
    assert sorted(located["unavailable"]) == [ALLOWED]
    assert located["unavailable"][ALLOWED].startswith("'xencluster_xl")
    # the id without a key is "did not answer" (not an error)
    assert located["no_answer"] == [GHOST]
    assert located["guests"] == {} and located["double_runs"] == [] and located["errors"] == {}
    # and the state's judge refuses on it: unknown is unsafe
    verdict, reason = guest_state.judge("web1", ALLOWED, [ALLOWED, GHOST], located)
    assert verdict == "refuse" and f"{GHOST} did not answer" in reason


def test_a_minion_outside_peer_run_gets_nothing(peer_master, minions):
    located = publish_locate(peer_master, DENIED, [DENIED])
    assert located == {}
    assert "peer_run" in guest_state._malformed(located)  # pylint: disable=protected-access


def test_expect_arrives_as_a_keyword_list(peer_master, minions):
    arg = guest_state.locate_arg([ALLOWED], timeout=15)
    arg[0]["expect"] = [ALLOWED, GHOST]  # GHOST is expected but not targeted
    located = publish_locate(peer_master, ALLOWED, None, arg=arg)
    assert sorted(located["unavailable"]) == [ALLOWED]
    assert located["no_answer"] == [GHOST] and located["errors"] == {}
