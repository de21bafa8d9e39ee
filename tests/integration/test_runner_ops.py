"""Locks and the operation journal of the runner on a real salt-master, with real salt-run processes (127.0.0.1).

A master of its own serving the real runner and ``xencluster_model``, and two
SIMULATED dom0s: the minions ``xc-ops-node1`` and ``xc-ops-node2`` (node1 and
node2 of the frozen lab model) run stand-in ``xencluster_node`` and
``xencluster_xl`` modules, written below and synced from this master's
file_roots. They answer from files in a shared directory (which guests each
node runs) and compute the rest of a converged node from the model in their
pillar (LVs, LIO exports, iSCSI sessions, stable paths, xl configs), so that
``verify`` finds nothing and ``migrate`` passes its pre-checks. ``xl migrate``
moves the guest from one file to the other.

To hold a ``salt-run`` inside its operation without any timing guess, the
stand-in ``xencluster_node.report`` waits while a ``hold`` file exists (and
logs each call first): a ``salt-run xencluster.migrate`` whose pre-check
round has reached the minions holds the guest's lock until the test removes
the file. Two concurrent ``salt-run``: exactly one proceeds, the other prints
busy and publishes nothing. ``kill -9`` of the one holding the lock:
``salt-run xencluster.status`` reports EOPINTERRUPTED and exits 1; running
the migrate again closes the record and migrates.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import salt.cache
import salt.utils.yaml
from test_runner_migrate import json_documents
from xc_helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODE1, NODE2 = "xc-ops-node1", "xc-ops-node2"

FAKE_NODE = '''"""SIMULATED dom0 (integration tier only): xencluster_node.report of a converged node, from files."""
import json
import os
import time

__virtualname__ = "xencluster_node"
MIB = 1024 ** 2


def __virtual__():
    return __virtualname__


def _dir():
    return __opts__["xc_fake_dir"]


def _log(line):
    with open(os.path.join(_dir(), "calls.log"), "a", encoding="utf-8") as fh:
        fh.write(line + "\\n")


def _model():
    return __salt__["xencluster_model.validate"]()


def _me(model):
    return next(n for n, spec in model["nodes"].items() if spec["minion"] == __opts__["id"])


def domains(node):
    with open(os.path.join(_dir(), node + ".json"), encoding="utf-8") as fh:
        names = json.load(fh)
    return {name: {"domid": i + 1, "type": "pvh", "memory": 128 * MIB, "vcpus": 1, "state": "running"}
            for i, name in enumerate(names)}


def _portals(owner, partner):
    import ipaddress
    return [e["portal"] for e in owner["san"]
            if any(ipaddress.ip_address(o["ip"]) in ipaddress.ip_network(e["network"]) for o in partner["san"])]


def report():
    model = _model()
    node = _me(model)
    _log("report " + node)
    deadline = time.time() + 120
    while os.path.exists(os.path.join(_dir(), "hold")) and time.time() < deadline:
        time.sleep(0.05)
    lvs, backstores, targets, sessions, links, configs, n = {}, {}, {}, [], {}, [], 0
    for gname, guest in sorted(model["guests"].items()):
        if node not in guest["nodes"]:
            continue
        configs.append(gname)
        for disk in guest["disks"]:
            partner = next(x for x in disk["nodes"] if x != node)
            for leg in disk["legs"]:
                n += 1
                if leg["node"] == node:
                    lvs[leg["vg"] + "/" + leg["lv"]] = {"vg": leg["vg"], "origin": ""}
                    backstores[leg["backstore"]] = {"dev": leg["device"]}
                    acls = {model["nodes"][partner]["initiator"]: {"mapped_luns": [{"tpg_lun": 0}]}}
                    targets[leg["target"]] = {"tpgs": [{"tag": 1, "enable": True, "generate_node_acls": False,
                                                        "luns": [{"index": 0, "backstore": leg["backstore"]}],
                                                        "acls": acls}]}
                    links[leg["lv"]] = {"path": leg["path"], "target": "/dev/dm-%d" % n, "kind": "lv",
                                        "device": "dm-%d" % n}
                else:
                    device = "/dev/sd%s" % chr(96 + n)
                    for portal in _portals(model["nodes"][leg["node"]], model["nodes"][node]):
                        sessions.append({"target": leg["target"], "portal": portal, "state": "LOGGED_IN",
                                         "devices": [{"lun": leg["lun"], "device": device}]})
                    links[leg["lv"]] = {"path": leg["path"], "target": device, "kind": "iscsi", "device": device[5:]}
    return {"domains": domains(node), "lvm": {"lvs": lvs}, "lio": {"backstores": backstores, "targets": targets},
            "sessions": sessions, "links": links, "configs": configs}
'''

FAKE_XL = '''"""SIMULATED dom0 (integration tier only): xencluster_xl's info, list_domains and migrate, from files."""
import json
import os

__virtualname__ = "xencluster_xl"


def __virtual__():
    return __virtualname__


def _node():
    model = __salt__["xencluster_model.validate"]()
    return next(n for n, spec in model["nodes"].items() if spec["minion"] == __opts__["id"])


def info():
    return {"free_memory": 4096, "xen_major": 4, "xen_minor": 17, "xen_extra": ".7"}


def list_domains():
    return __salt__["xencluster_node.domains"](_node())


def migrate(name, host, transport="ssh", **kwargs):
    me, base = _node(), __opts__["xc_fake_dir"]
    with open(os.path.join(base, "calls.log"), "a", encoding="utf-8") as fh:
        fh.write("migrate %s %s %s\\n" % (name, me, host))
    for node, change in ((me, lambda names: [x for x in names if x != name]), (host, lambda names: names + [name])):
        path = os.path.join(base, node + ".json")
        with open(path, encoding="utf-8") as fh:
            names = json.load(fh)
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(change(names), fh)
        os.replace(path + ".tmp", path)
    return {"argv": ["xl", "migrate", name, host], "migrated": True}
'''


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ops-dom0s")


@pytest.fixture(scope="module")
def ops_file_roots(tmp_path_factory):
    """The real runner and xencluster_model; the SIMULATED xencluster_node and xencluster_xl."""
    base = tmp_path_factory.mktemp("ops-file-roots")
    (base / "_runners").symlink_to(ROOT / "_runners", target_is_directory=True)
    modules = base / "_modules"
    modules.mkdir()
    (modules / "xencluster_model.py").symlink_to(ROOT / "_modules" / "xencluster_model.py")
    (modules / "xencluster_node.py").write_text(FAKE_NODE)
    (modules / "xencluster_xl.py").write_text(FAKE_XL)
    return base


@pytest.fixture(scope="module")
def ops_pillar_roots(tmp_path_factory):
    raw = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())
    raw["xencluster"]["nodes"]["node1"]["minion"] = NODE1
    raw["xencluster"]["nodes"]["node2"]["minion"] = NODE2
    base = tmp_path_factory.mktemp("ops-pillar")
    (base / "top.sls").write_text("base:\n  '*':\n    - xencluster\n")
    (base / "xencluster.sls").write_text(json.dumps(raw))  # JSON is YAML
    return base


@pytest.fixture(scope="module")
def ops_master(salt_factories, ops_file_roots, ops_pillar_roots, fake_dir):
    master = salt_factories.salt_master_daemon(
        "xc-ops-master",
        overrides={"file_roots": {"base": [str(ops_file_roots)]}, "pillar_roots": {"base": [str(ops_pillar_roots)]}},
    )
    with master.started():
        run = master.salt_run_cli(timeout=120)
        for sync in ("saltutil.sync_runners", "saltutil.sync_modules"):
            res = run.run(sync)
            assert res.returncode == 0, res
        minions = [master.salt_minion_daemon(m, overrides={"xc_fake_dir": str(fake_dir)}) for m in (NODE1, NODE2)]
        for minion in minions:
            minion.start()
        try:
            cli = master.salt_cli(timeout=120)
            for m in (NODE1, NODE2):
                res = cli.run("saltutil.sync_modules", minion_tgt=m)
                assert res.returncode == 0, res
            yield master
        finally:
            for minion in minions:
                minion.terminate()


@pytest.fixture
def dom0s(ops_master, fake_dir):
    """web1 on node1, db1 on node2, no hold, an empty call log; the hold removed whatever happens."""
    (fake_dir / "node1.json").write_text(json.dumps(["web1"]))
    (fake_dir / "node2.json").write_text(json.dumps(["db1"]))
    (fake_dir / "calls.log").write_text("")
    hold = fake_dir / "hold"
    hold.unlink(missing_ok=True)
    yield fake_dir
    hold.unlink(missing_ok=True)


def calls(fake_dir):
    return (fake_dir / "calls.log").read_text().splitlines()


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def salt_run(master, *args):
    res = master.salt_run_cli(timeout=180).run(*args, "--out=json")
    return res, json_documents(res.stdout)


def start_salt_run(master, *args):
    """A salt-run of its own (its pid is the runner's: salt-run runs the runner in its own process)."""
    cli = master.salt_run_cli(timeout=180)
    return subprocess.Popen(cli.cmdline(*args, "--out=json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli.environ, cwd=str(ROOT))  # fmt: skip


def lock_of(master, key):
    return salt.cache.factory(master.config).fetch("xencluster/locks", key)


def reports(fake_dir):
    return sum(line.startswith("report ") for line in calls(fake_dir))


def holding(proc, fake_dir, master, before):
    """The salt-run ``proc`` is in its pre-check round (both dom0s asked since ``before``) and holds web1's lock."""
    wait_for(lambda: reports(fake_dir) == before + 2 or proc.poll() is not None, "the pre-check round")
    assert proc.poll() is None, proc.communicate()
    assert lock_of(master, "guest.web1")["pid"] == proc.pid


def test_two_concurrent_migrates_exactly_one_proceeds(ops_master, dom0s):
    (dom0s / "hold").write_text("")
    first = start_salt_run(ops_master, "xencluster.migrate", "web1", "check_timeout=120")
    try:
        holding(first, dom0s, ops_master, 0)
        res, [second] = salt_run(ops_master, "xencluster.migrate", "web1", "check_timeout=120")
        assert res.returncode == 1, res
        assert second["message"].startswith("busy: web1 is locked by migrate web1 (op "), second
        assert f", pid {first.pid} on " in second["message"] and second["busy"]["pid"] == first.pid, second
        assert (second["result"], second["ran"], second["checks"]) == (False, False, []), second
        assert reports(dom0s) == 2  # the busy call published nothing
    finally:
        (dom0s / "hold").unlink()
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, (out, err)
    result = json_documents(out)[-1]
    assert (result["result"], result["ran"], result["where"]) == (True, True, ["node2"]), result
    assert [line for line in calls(dom0s) if line.startswith("migrate ")] == ["migrate web1 node1 node2"]
    assert json.loads((dom0s / "node2.json").read_text()) == ["db1", "web1"]
    assert lock_of(ops_master, "guest.web1") in (None, {})  # released


def test_a_killed_salt_run_is_reported_and_the_rerun_cleans_up(ops_master, dom0s):
    res, [clean] = salt_run(ops_master, "xencluster.status", "guests=False", "timeout=30")
    assert res.returncode == 0 and clean["findings"] == [], clean  # the simulated cluster is converged
    (dom0s / "hold").write_text("")
    before = reports(dom0s)
    killed = start_salt_run(ops_master, "xencluster.migrate", "web1", "check_timeout=120")
    try:
        holding(killed, dom0s, ops_master, before)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        (dom0s / "hold").unlink()
    assert killed.returncode == -signal.SIGKILL
    res, [status] = salt_run(ops_master, "xencluster.status", "guests=False", "timeout=30")
    assert res.returncode == 1, res
    [finding] = status["findings"]
    assert (finding["code"], finding["severity"], finding["guest"]) == ("EOPINTERRUPTED", "error", "web1"), finding
    assert finding["message"].startswith("operation migrate web1 (op "), finding
    assert f", pid {killed.pid} on " in finding["message"] and ", last step started at " in finding["message"]
    assert finding["message"].endswith("re-run `salt-run xencluster.migrate web1` to finish or clean up"), finding
    # the re-run takes the stale lock over, closes the record (nothing had changed) and migrates
    res, docs = salt_run(ops_master, "xencluster.migrate", "web1", "check_timeout=60")
    assert res.returncode == 0, res
    *progress, result = docs
    lines = [p["event"]["message"] for p in progress if p.get("suffix") == "progress"]
    assert lines[0].startswith("found the interrupted migrate web1 (op ") and f", pid {killed.pid} on " in lines[0]
    assert lines[1].endswith("closed: interrupted at started, before xl migrate: nothing had changed; cleaned up")
    assert (result["result"], result["ran"], result["where"]) == (True, True, ["node2"]), result
    assert [e["status"] for e in result["interrupted"]] == ["interrupted"], result
    res, [status] = salt_run(ops_master, "xencluster.status", "guests=False", "timeout=30")
    assert res.returncode == 0 and status["findings"] == [], status
