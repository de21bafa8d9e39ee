"""Provisioning requests through a real master's reactor and orchestration (127.0.0.1, no Xen).

The shipped master.d example (salt/xencluster/files/master.d/xencluster-provision.conf) goes
into the master's ``master.d/`` with its allow-list set to ``ASKER``; the reactor and the
orchestrate SLS are served from this checkout's ``salt/``. The pillar is the frozen two-node
model plus a guest ``svc1`` with ``provision`` settings; node1 is the running minion ``ASKER``
(no Xen: it cannot tell which guests it runs), node2 a minion id with no key (never answers).

So no request here can provision anything; what is under test is the way a request goes:
refused and logged by the reactor (a minion not on the allow-list, a bad payload), refused by
the runner (a guest not in the model), or run by the orchestration up to the runner's first
cluster-wide check (``locate``), which must refuse because a dom0 cannot tell where the guest
runs: nothing is ever created on an unknown cluster.
"""

import json
import pathlib
import re
import time

import pytest
import salt.utils.yaml
from xc_helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ASKER = "xc-prov-node1"  # node1 of the model and on the allow-list
OTHER = "xc-prov-other"  # a minion of the master, not on the allow-list
GHOST = "xc-prov-ghost"  # node2 of the model: no key, never answers
MASTER_D = ROOT / "salt" / "xencluster" / "files" / "master.d" / "xencluster-provision.conf"
TAG = "xencluster/guest/provision"
SVC1 = {
    "type": "pvh", "node": "node1", "memory": "256M", "kernel": "/vmlinuz",
    "ramdisk": "/srv/xencluster/images/guest-initrd.gz", "extra": "console=hvc0",
    "interfaces": [{"bridge": "xcguests", "mac": "00:16:3e:99:00:20"}],
    "disks": [{"name": "root", "size": "1G", "nodes": ["node1", "node2"], "vg": "xcvg", "filesystem": "ext4"}],
    "provision": {"image": "/srv/xencluster/images/debian12-guest.tar.zst", "address": "10.99.0.20/24",
                  "master": "10.99.0.1"},
}  # fmt: skip


@pytest.fixture(scope="module")
def provision_pillar_roots(tmp_path_factory):
    raw = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())
    raw["xencluster"]["nodes"]["node1"]["minion"] = ASKER
    raw["xencluster"]["nodes"]["node2"]["minion"] = GHOST
    raw["xencluster"]["guests"]["svc1"] = SVC1
    base = tmp_path_factory.mktemp("provision-pillar")
    (base / "top.sls").write_text("base:\n  '*':\n    - xencluster\n")
    (base / "xencluster.sls").write_text(json.dumps(raw))  # JSON is YAML
    return base


@pytest.fixture(scope="module")
def provision_master(salt_factories, file_roots, provision_pillar_roots):
    master = salt_factories.salt_master_daemon(
        "xc-prov-master",
        overrides={
            "file_roots": {"base": [str(file_roots), str(ROOT / "salt")]},
            "pillar_roots": {"base": [str(provision_pillar_roots)]},
        },
    )
    conf = salt.utils.yaml.safe_load(MASTER_D.read_text())
    assert conf["reactor"] == [{TAG: ["salt://reactor/xencluster_provision.sls"]}], conf
    conf["xencluster_provision_allow"] = [ASKER]
    master_d = pathlib.Path(master.config_dir) / "master.d"
    master_d.mkdir(exist_ok=True)
    (master_d / MASTER_D.name).write_text(json.dumps(conf))  # JSON is YAML
    with master.started():
        run = master.salt_run_cli(timeout=120)
        for sync in ("saltutil.sync_runners", "saltutil.sync_modules"):
            res = run.run(sync)
            assert res.returncode == 0, res
        yield master


@pytest.fixture(scope="module")
def minions(provision_master):
    asker = provision_master.salt_minion_daemon(ASKER)
    other = provision_master.salt_minion_daemon(OTHER)
    with asker.started(), other.started():
        yield {ASKER: asker, OTHER: other}


RECORD = re.compile(r"\[[^]]*\]\[[^]]*\]\[(?P<level>[A-Z]+) *\]\[[^]]*\] (?P<message>.*)")


def log_records(master, prefix, timeout):
    """(level, message) of the master log's records whose message starts with ``prefix``, waiting for one."""
    path = pathlib.Path(master.config["log_file"])
    deadline = time.time() + timeout
    while True:
        found = [m.group("level", "message") for m in map(RECORD.fullmatch, path.read_text(errors="replace")
                 .splitlines()) if m and m.group("message").startswith(prefix)]  # fmt: skip
        if found or time.time() > deadline:
            return found
        time.sleep(0.5)


def events(event_listener, master, tag, after, timeout, count=1):
    deadline = time.time() + timeout
    while True:
        found = list(event_listener.get_events([(master.id, tag)], after_time=after))
        if len(found) >= count or time.time() > deadline:
            return found
        time.sleep(0.3)


def ask(minion, payload):
    res = minion.salt_call_cli(timeout=60).run("event.send", TAG, json.dumps(payload))
    assert res.returncode == 0, res


def test_a_minion_not_on_the_allow_list_is_refused_and_logged(provision_master, minions, event_listener):
    after = time.time()
    ask(minions[OTHER], {"guest": "svc1"})
    records = log_records(provision_master, f"xencluster: provision request refused (from {OTHER})", timeout=60)
    assert records and records[0][0] == "WARNING", records
    assert "not allowed to ask" in records[0][1], records
    # the reactor stopped it: no orchestration, so the runner never ran
    assert not events(event_listener, provision_master, "xencluster/provision/*", after, timeout=5)


@pytest.mark.parametrize("payload, why", [
    ({"guest": "Bad Name; rm -rf /"}, "guest must be a guest name"),
    ({"guest": "svc1", "node": "node2"}, "unexpected key(s) node"),
    ({}, "guest must be a guest name"),
])  # fmt: skip
def test_a_bad_payload_is_refused_and_logged(provision_master, minions, event_listener, payload, why):
    after = time.time()
    ask(minions[ASKER], payload)
    records = log_records(provision_master, f"xencluster: provision request refused (from {ASKER}): {why}",
                          timeout=60)  # fmt: skip
    assert records and records[0][0] == "WARNING", records
    assert not events(event_listener, provision_master, "xencluster/provision/*", after, timeout=3)


def test_a_guest_not_in_pillar_is_refused_by_the_runner(provision_master, minions, event_listener):
    after = time.time()
    ask(minions[ASKER], {"guest": "nosuch"})
    [refused] = events(event_listener, provision_master, "xencluster/provision/refused", after, timeout=120)
    assert refused.data["guest"] == "nosuch" and refused.data["requested_by"] == ASKER, refused.data
    assert "no guest nosuch in the cluster model" in refused.data["message"], refused.data
    assert log_records(provision_master, "xencluster.provision: request for nosuch from", timeout=10)


def test_an_allowed_request_runs_the_orchestration_and_stops_at_an_unknown_cluster(
        provision_master, minions, event_listener):
    after = time.time()
    ask(minions[ASKER], {"guest": "svc1"})
    [failed] = events(event_listener, provision_master, "xencluster/provision/svc1/failed", after, timeout=180)
    assert failed.data["requested_by"] == ASKER, failed.data
    assert failed.data["result"] is False and "cannot tell where svc1 runs" in failed.data["message"], failed.data
    assert GHOST in failed.data["message"], failed.data
    assert [s["step"] for s in failed.data["steps"]] == [], failed.data  # refused at locate: nothing done


def test_a_request_fired_on_the_master_needs_no_allow_list(provision_master, minions, event_listener):
    after = time.time()
    res = provision_master.salt_run_cli(timeout=60).run("event.send", TAG, f"data={json.dumps({'guest': 'svc1'})}")
    assert res.returncode == 0, res
    [failed] = events(event_listener, provision_master, "xencluster/provision/svc1/failed", after, timeout=180)
    assert failed.data["requested_by"] is None, failed.data


def test_the_runner_refuses_a_requester_off_the_allow_list_itself(provision_master, minions):
    res = provision_master.salt_run_cli(timeout=120).run("xencluster.provision", "svc1", f"requested_by={OTHER}")
    assert res.returncode != 0, res
    assert "not allowed to ask" in res.data["message"], res.data
