"""xencluster.verify runner: findings (pure) from realistic dom0 reports, one publish per round, retcodes.

The reports are built through the REAL parsers of the execution modules from
the recordings: ``xencluster_xl.list_domains`` over ``xl/lab-node1-probe-pair``
(its running ``probe`` domain renamed to the model's guests), ``xencluster_lvm``
over ``lvm/lab-node1-snapshots`` (the recorded LV rows renamed to the lab
model's leg ids; its two snapshot rows for the snapshot finding),
``xencluster_lio.parse_dump`` over ``lio/lab-node1-xcl-export`` (one copy of
its backstore and target per owned leg), ``xencluster_iscsi`` over
``iscsi/lab-node2-xcl-session`` (session line and sysfs, one per imported
leg) and ``xencluster_md`` over ``md/lab-node2-*``. Renamed copies are
SYNTHETIC in their names only. ``xencluster_disk.links`` has no recording:
its entries are written here in the documented shape (SYNTHETIC).
"""

import copy
import json
import os
import pathlib
from unittest.mock import MagicMock

import pytest
import salt.utils.yaml

from saltext.xencluster.modules import xencluster_iscsi as iscsi_mod
from saltext.xencluster.modules import xencluster_lio as lio_mod
from saltext.xencluster.modules import xencluster_lvm as lvm_mod
from saltext.xencluster.modules import xencluster_md as md_mod
from saltext.xencluster.modules import xencluster_model as model_mod
from saltext.xencluster.modules import xencluster_xl as xl_mod
from saltext.xencluster.runners import xencluster as runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
REC = ROOT / "tests" / "recordings"
RAW = salt.utils.yaml.safe_load((ROOT / "tests" / "unit" / "data" / "two_node_model.sls").read_text())["xencluster"]
LVM_REC = REC / "lvm" / "lab-node1-snapshots"
LV_ROWS = {r["lv_name"]: r for r in json.loads((LVM_REC / "lvs.out").read_text())["report"][0]["lv"]}
LIO_DUMP = json.loads((REC / "lio" / "lab-node1-xcl-export" / "dump.json").read_text())
SESSION_REC = REC / "iscsi" / "lab-node2-xcl-session"
SESSION_LINE = (SESSION_REC / "session.out").read_text().strip()
SESSION_SYSFS = json.loads((SESSION_REC / "sysfs.json").read_text())["session2"]
XL_REC = REC / "xl" / "lab-node1-probe-pair"
BASE = "iqn.2025-01.lab.xen"


def _model(raw=None):
    return model_mod.validate(copy.deepcopy(raw or RAW))


MODEL = _model()


# --- dom0 reports from the recordings -------------------------------------------------------


def xl_domains(monkeypatch, names):
    """list_domains() over the recorded xl output (one running PVH guest), renamed to ``names``."""
    outputs = {tuple(xl_mod.XL_LIST_LONG): (XL_REC / "xl_list_l.out").read_text(),
               tuple(xl_mod.XL_LIST): (XL_REC / "xl_list.out").read_text()}  # fmt: skip
    monkeypatch.setattr(xl_mod, "_run", lambda argv: outputs[tuple(argv)])
    probe = xl_mod.list_domains()["probe"]
    return {name: dict(probe, domid=probe["domid"] + i) for i, name in enumerate(names)}


def lvm_report(legs, extra_rows=()):
    rows = []
    for leg in legs:
        template = LV_ROWS["db1-disk0-a" if leg["stripes"] > 1 else "web1-disk0-a"]
        rows.append(dict(template, lv_name=leg["lv"], lv_path=leg["device"], origin="", lv_attr="-wi-ao----"))
    rows.extend(extra_rows)
    lvs = json.dumps({"report": [{"lv": rows}]})
    return {
        "pvs": lvm_mod._parse_pvs((LVM_REC / "pvs.out").read_text()),
        "vgs": lvm_mod._parse_vgs((LVM_REC / "vgs.out").read_text()),
        "lvs": lvm_mod._parse_lvs(lvs),
    }


def lio_exports(legs, initiator, portal):
    dump = {"fabric_modules": [], "storage_objects": [], "targets": []}
    for leg in legs:
        so = copy.deepcopy(LIO_DUMP["storage_objects"][0])
        so.update(name=leg["backstore"], dev=leg["device"], wwn=leg["serial"])
        dump["storage_objects"].append(so)
        target = copy.deepcopy(LIO_DUMP["targets"][0])
        target["wwn"] = leg["target"]
        tpg = target["tpgs"][0]
        tpg["luns"][0]["storage_object"] = f"/backstores/block/{leg['backstore']}"
        tpg["node_acls"][0]["node_wwn"] = initiator
        ip, port = portal.rsplit(":", 1)
        tpg["portals"] = [dict(tpg["portals"][0], ip_address=ip, port=int(port))]
        dump["targets"].append(target)
    return lio_mod.parse_dump(dump)


def iscsi_sessions(tmp_path, legs, portal):
    """sessions() of a partner logged in to ``legs``: recorded line and sysfs, one session each."""
    lines, root = [], tmp_path / "sys-iscsi"
    for i, leg in enumerate(legs):
        sid = 10 + i
        lines.append(SESSION_LINE.replace("[2]", f"[{sid}]").replace("192.168.100.1:3260", portal)
                     .replace(f"{BASE}:xcl-node1", leg["target"]))  # fmt: skip
        base = root / f"session{sid}"
        base.mkdir(parents=True)
        (base / "state").write_text(SESSION_SYSFS["state"] + "\n")
        for block in SESSION_SYSFS["block"]:
            (base / block.replace("sda", f"sd{chr(97 + i)}")).mkdir(parents=True)
    out = []
    for session in iscsi_mod._parse_sessions("\n".join(lines)):
        out.append({**session, **iscsi_mod._session_sysfs(session["sid"], root=str(root))})
    return out


def links(owned, sessions, imported):
    out = {leg["lv"]: {"path": leg["path"], "target": f"/dev/dm-{i}", "kind": "lv", "device": f"dm-{i}"}
           for i, leg in enumerate(owned)}  # fmt: skip
    by_target = {s["target"]: s["devices"][0]["device"] for s in sessions}
    for leg in imported:
        dev = by_target[leg["target"]]
        out[leg["lv"]] = {"path": leg["path"], "target": dev, "kind": "iscsi", "device": dev[5:]}
    return out


def _legs_by_node(model):
    owned, imported = {n: [] for n in model["nodes"]}, {n: [] for n in model["nodes"]}
    for guest in model["guests"].values():
        for disk in guest["disks"]:
            for leg in disk["legs"]:
                owned[leg["node"]].append(leg)
                partner = next(n for n in disk["nodes"] if n != leg["node"])
                imported[partner].append(leg)
    return owned, imported


def healthy_reports(monkeypatch, tmp_path, model=MODEL, running=None):
    """{minion: full_return answer} of a converged cluster; ``running``: {node: [guests]}."""
    running = running if running is not None else {"node1": ["web1"], "node2": ["db1"]}
    owned, imported = _legs_by_node(model)
    reports = {}
    for node, spec in model["nodes"].items():
        partner = next(iter(sorted(set(model["nodes"]) - {node})))
        sessions = iscsi_sessions(tmp_path / node, imported[node], model["nodes"][partner]["san"][0]["portal"])
        report = {
            "domains": xl_domains(monkeypatch, running.get(node, [])),
            "lvm": lvm_report(owned[node]),
            "lio": lio_exports(owned[node], model["nodes"][partner]["initiator"], spec["san"][0]["portal"]),
            "sessions": sessions,
            "links": links(owned[node], sessions, imported[node]),
            "configs": sorted(g for g, guest in model["guests"].items() if node in guest["nodes"]),
        }
        reports[spec["minion"]] = {"ret": report, "retcode": 0, "jid": "20260101000000000000"}
    return reports


def md_status(monkeypatch, name):
    """xencluster_md's status of the recorded array ``md/<name>`` (md127)."""
    rec = REC / "md" / name
    meta = json.loads((rec / "meta.json").read_text())
    monkeypatch.setattr(md_mod, "_real", lambda p: meta["realpath"].get(p, p))
    entry = md_mod.parse_mdstat((rec / "mdstat.out").read_text())["md127"]
    st = md_mod._array_status("/dev/md127", entry, md_mod.parse_export((rec / "detail_export.mdrec.out").read_text()))
    return {"/dev/md127": dict(st, kernel_name="md127")}


def ok(ret):
    return {"ret": ret, "retcode": 0, "jid": "20260101000000000000"}


@pytest.fixture
def reports(monkeypatch, tmp_path):
    return healthy_reports(monkeypatch, tmp_path)


def ret_of(reports, minion):
    return reports[minion]["ret"]


def codes(found):
    return [f["code"] for f in found]


def only(found, code):
    hits = [f for f in found if f["code"] == code]
    assert hits, f"no {code} in {found}"
    return hits


# --- a healthy cluster -------------------------------------------------------------------


def test_a_converged_cluster_has_no_finding(reports, monkeypatch):
    raid = {"web1": ok(md_status(monkeypatch, "lab-node2-clean")), "db1": ok(md_status(monkeypatch, "lab-node2-clean"))}
    assert runner.findings(MODEL, reports, raid) == []
    assert runner.located_guests(MODEL, reports) == {"db1": ["node2"], "web1": ["node1"]}


def test_every_code_has_a_severity_and_the_table_is_ordered():
    assert set(runner.CODES.values()) == set(runner.SEVERITIES)
    severities = [runner.SEVERITIES.index(s) for s in runner.CODES.values()]
    assert severities == sorted(severities)
    assert all(getattr(runner, code) == code for code in runner.CODES)


# --- one test per code -----------------------------------------------------------------------


def test_double_run_is_critical(reports, monkeypatch):
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1"]))
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ECLUSTERDOUBLERUN")
    assert f["severity"] == "critical" and f["guest"] == "web1" and "node1, node2" in f["message"]
    assert found[0]["code"] == "ECLUSTERDOUBLERUN"


def test_a_migration_is_not_a_double_run(reports, monkeypatch):
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1--incoming"]))
    assert runner.findings(MODEL, reports) == []


def test_guest_outside_its_pair_is_critical(monkeypatch, tmp_path):
    raw = copy.deepcopy(RAW)
    raw["nodes"]["node3"] = copy.deepcopy(raw["nodes"]["node2"])
    raw["nodes"]["node3"]["san"][0]["address"] = "192.168.100.3/24"
    model = _model(raw)
    reports = healthy_reports(monkeypatch, tmp_path, model, running={"node1": ["web1"], "node3": ["db1"]})
    found = runner.findings(model, reports)
    [f] = only(found, "EGUESTOUTSIDEPAIR")
    assert (f["severity"], f["node"], f["guest"]) == ("critical", "node3", "db1")
    assert "outside its pair node2 and node1" in f["message"]


def test_a_dom0_that_does_not_answer(reports):
    del reports["node2"]
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ENODENOANSWER")
    assert (f["severity"], f["node"]) == ("error", "node2")
    # what node2 would have told is not judged (no finding per leg of node2), node1's imports are
    assert not [x for x in found if x["node"] == "node2" and x["code"] != "ENODENOANSWER"]
    # db1 is pinned to node2: it may run there unseen, so "runs nowhere" is not claimed
    assert "EGUESTNOTRUNNING" not in codes(found)


@pytest.mark.parametrize("answer", [False, {"out": "no_return", "ret": "Minion did not return. [No response]"}])
def test_no_return_answers_are_no_answer(reports, answer):
    reports["node1"] = answer
    assert codes(runner.findings(MODEL, reports)) == ["ENODENOANSWER"]


def test_a_minion_without_the_node_module(reports):
    reports["node1"] = {"ret": "'xencluster_node' __virtual__ returned False: xencluster_node: not a Xen dom0 "
                        "(no control_d in /proc/xen/capabilities)", "retcode": 1}  # fmt: skip
    [f] = only(runner.findings(MODEL, reports), "ENODEUNAVAILABLE")
    assert f["node"] == "node1" and "not a Xen dom0" in f["message"]


def test_a_failing_report_part_is_isolated(reports):
    ret_of(reports, "node1")["lio"] = {"error": "xencluster_lio.exports: configfs is not mounted"}
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ENODEREPORT")
    assert f["node"] == "node1" and "lio" in f["message"] and "configfs" in f["message"]
    assert codes(found) == ["ENODEREPORT"]  # no ELEGNOTEXPORTED guessed from a part that failed


def test_a_report_that_raised(reports):
    reports["node2"] = {"ret": "ERROR: something broke", "retcode": 1}
    assert codes(runner.findings(MODEL, reports)) == ["ENODEREPORT"]


def test_owned_lv_missing(reports):
    del ret_of(reports, "node1")["lvm"]["lvs"]["xcvg/web1.root.node1"]
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ELEGLVMISSING")
    assert (f["node"], f["guest"], f["leg"]) == ("node1", "web1", "web1.root.node1")
    assert "ELEGNOTEXPORTED" not in codes(found)  # nothing more is judged on an LV that is not there


def test_leg_not_exported(reports):
    del ret_of(reports, "node2")["lio"]["targets"][f"{BASE}:db1.root.node2"]
    [f] = only(runner.findings(MODEL, reports), "ELEGNOTEXPORTED")
    assert (f["node"], f["leg"]) == ("node2", "db1.root.node2") and "no target" in f["message"]


def test_leg_not_exported_to_the_partner(reports):
    tpg = ret_of(reports, "node1")["lio"]["targets"][f"{BASE}:web1.data.node1"]["tpgs"][0]
    tpg["acls"] = {}
    [f] = only(runner.findings(MODEL, reports), "ELEGNOTEXPORTED")
    assert f["leg"] == "web1.data.node1" and f"{BASE}:node2" in f["message"]


def test_leg_exported_to_the_wrong_initiator(reports):
    tpg = ret_of(reports, "node1")["lio"]["targets"][f"{BASE}:web1.root.node1"]["tpgs"][0]
    tpg["acls"][f"{BASE}:intruder"] = copy.deepcopy(tpg["acls"][f"{BASE}:node2"])
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ELEGWRONGINITIATOR")
    assert f["leg"] == "web1.root.node1" and f"{BASE}:intruder" in f["message"]
    assert "ELEGNOTEXPORTED" not in codes(found)


def test_partner_not_logged_in(reports):
    sessions = ret_of(reports, "node2")["sessions"]
    ret_of(reports, "node2")["sessions"] = [s for s in sessions if s["target"] != f"{BASE}:web1.root.node1"]
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ELEGNOTIMPORTED")
    assert (f["node"], f["leg"]) == ("node2", "web1.root.node1") and "no iSCSI session" in f["message"]
    assert "ELEGPATHMISSING" not in codes(found) and "ELEGPATHWRONG" not in codes(found)


def test_partner_session_not_logged_in(reports):
    for s in ret_of(reports, "node1")["sessions"]:
        if s["target"] == f"{BASE}:db1.root.node2":
            s["state"] = "FAILED"
    [f] = only(runner.findings(MODEL, reports), "ELEGNOTIMPORTED")
    assert f["node"] == "node1" and "FAILED" in f["message"]


def test_a_session_with_another_timeout_than_the_models_is_a_warning(reports):
    for s in ret_of(reports, "node1")["sessions"] + ret_of(reports, "node2")["sessions"]:
        s["recovery_tmo"] = 20  # the model's default replacement_timeout
    assert "ELEGSESSIONTIMEOUT" not in codes(runner.findings(MODEL, reports))
    for s in ret_of(reports, "node1")["sessions"]:
        if s["target"] == f"{BASE}:db1.root.node2":
            s["recovery_tmo"] = 120  # logged in before the model had it, or changed by hand
    found = runner.findings(MODEL, reports)
    [f] = only(found, "ELEGSESSIONTIMEOUT")
    assert (f["severity"], f["node"], f["guest"], f["leg"]) == ("warning", "node1", "db1", "db1.root.node2")
    assert "fails its I/O after 120 s, the model says 20 s (replacement_timeout)" in f["message"]
    for s in ret_of(reports, "node1")["sessions"]:
        if s["target"] == f"{BASE}:db1.root.node2":
            s["state"] = "FAILED"  # in recovery: that is the finding, not its timeout
    found = runner.findings(MODEL, reports)
    assert "ELEGSESSIONTIMEOUT" not in codes(found) and "ELEGNOTIMPORTED" in codes(found)


def test_stable_path_missing(reports):
    del ret_of(reports, "node1")["links"]["db1.root.node2"]
    [f] = only(runner.findings(MODEL, reports), "ELEGPATHMISSING")
    assert (f["node"], f["leg"]) == ("node1", "db1.root.node2")


def test_stable_path_pointing_elsewhere(reports):
    node2_links = ret_of(reports, "node2")["links"]
    node2_links["web1.root.node1"] = dict(node2_links["web1.root.node1"], target="/dev/sdz", device="sdz")
    ret_of(reports, "node1")["links"]["web1.data.node1"]["kind"] = "iscsi"
    found = only(runner.findings(MODEL, reports), "ELEGPATHWRONG")
    assert [(f["node"], f["leg"]) for f in found] == [("node1", "web1.data.node1"), ("node2", "web1.root.node1")]
    assert "/dev/sdz" in found[1]["message"]


def test_guest_raid_degraded_and_recovering(reports, monkeypatch):
    raid = {"web1": ok(md_status(monkeypatch, "lab-node2-degraded")),
            "db1": ok(md_status(monkeypatch, "lab-node2-bitmap-recovery"))}  # fmt: skip
    found = runner.findings(MODEL, reports, raid)
    assert codes(found) == ["EGUESTRAIDDEGRADED", "EGUESTRAIDDEGRADED"]
    assert [f["guest"] for f in found] == ["db1", "web1"]
    assert "recovery 2.1%" in found[0]["message"] and "1/2 legs active" in found[1]["message"]


def test_guest_raid_faulty_leg_is_degraded(reports, monkeypatch):
    raid = {"web1": ok(md_status(monkeypatch, "lab-node2-leg1-faulty"))}
    assert codes(runner.findings(MODEL, reports, raid)) == ["EGUESTRAIDDEGRADED"]


def test_guest_raid_resyncing_is_a_warning(reports, monkeypatch):
    raid = {"web1": ok(md_status(monkeypatch, "lab-node2-initial-resync"))}
    [f] = runner.findings(MODEL, reports, raid)
    assert (f["code"], f["severity"], f["guest"]) == ("EGUESTRAIDRESYNC", "warning", "web1")
    assert "resync 1.9%" in f["message"]


def test_snapshots_left_behind(reports):
    snaps = [dict(LV_ROWS[name], origin="web1.root.node1") for name in ("web1-disk0-a-snap", "web1-disk0-a-tiny")]
    lvs = ret_of(reports, "node1")["lvm"]["lvs"]
    lvs.update(lvm_mod._parse_lvs(json.dumps({"report": [{"lv": snaps}]})))
    found = runner.findings(MODEL, reports)
    assert codes(found) == ["ELEGSNAPSHOT", "ELEGSNAPSHOT"]
    assert {f["leg"] for f in found} == {"web1.root.node1"} and {f["guest"] for f in found} == {"web1"}
    assert "37.66% full" in found[0]["message"] and "100.00% full" in found[1]["message"]


def test_pinned_guest_not_running(reports):
    ret_of(reports, "node2")["domains"] = {}
    [f] = runner.findings(MODEL, reports)
    assert (f["code"], f["severity"], f["node"], f["guest"]) == ("EGUESTNOTRUNNING", "warning", "node2", "db1")


def test_running_domain_not_in_the_model(reports, monkeypatch):
    ret_of(reports, "node1")["domains"].update(xl_domains(monkeypatch, ["stray7"]))
    [f] = runner.findings(MODEL, reports)
    assert (f["code"], f["node"], f["guest"]) == ("EGUESTUNKNOWN", "node1", "stray7")


def test_xl_config_missing(reports):
    ret_of(reports, "node2")["configs"] = ["db1"]
    [f] = runner.findings(MODEL, reports)
    assert (f["code"], f["node"], f["guest"]) == ("EGUESTNOCONFIG", "node2", "web1")


def test_guest_minion_did_not_answer_is_a_warning(reports):
    found = runner.findings(MODEL, reports, {"web1": None, "db1": False})
    assert codes(found) == ["EGUESTNOANSWER", "EGUESTNOANSWER"]
    assert {f["severity"] for f in found} == {"warning"} and runner.retcode(found) == 0


def test_guest_minion_without_md(reports):
    raid = {"web1": {"ret": "'xencluster_md' __virtual__ returned False: no mdadm", "retcode": 1}, "db1": ok({})}
    found = runner.findings(MODEL, reports, raid)
    assert codes(found) == ["EGUESTRAIDUNKNOWN", "EGUESTRAIDUNKNOWN"]
    assert "no md array" in found[0]["message"] and "no mdadm" in found[1]["message"]


# --- ordering and retcode -------------------------------------------------------------------


def test_findings_are_sorted_by_severity(reports, monkeypatch):
    ret_of(reports, "node2")["configs"] = []  # warnings
    del ret_of(reports, "node1")["lvm"]["lvs"]["xcvg/web1.root.node1"]  # error
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1"]))  # critical
    found = runner.findings(MODEL, reports)
    severities = [f["severity"] for f in found]
    assert severities[0] == "critical" and severities[-1] == "warning"
    assert severities == sorted(severities, key=runner.SEVERITIES.index)
    assert runner.retcode(found) == 2
    assert runner.retcode([f for f in found if f["severity"] != "critical"]) == 1
    assert runner.retcode([f for f in found if f["severity"] == "warning"]) == 0


# --- the runner: one publish per round ---------------------------------------------------------


@pytest.fixture
def client():
    return MagicMock()


@pytest.fixture
def context():
    return {}


@pytest.fixture
def configure_loader_modules(context, tmp_path):
    # verify keeps where it saw the guests in the master's cache: a private one per test
    opts = {"conf_file": "/etc/salt/master", "timeout": 5, "cachedir": str(tmp_path / "cache")}
    return {runner: {"__opts__": opts, "__context__": context}}


@pytest.fixture
def master(monkeypatch, client):
    monkeypatch.setattr(runner.salt.client, "LocalClient", MagicMock(return_value=client))
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", copy.deepcopy(RAW)))
    monkeypatch.setattr(runner, "_validate", _model)
    monkeypatch.setattr(runner, "_accepted", set)  # every guest minion asked has an accepted key
    return client


def _answers(dom0s, guests=None):
    def cmd(tgt, fun, **kwargs):
        assert kwargs["tgt_type"] == "list" and kwargs["full_return"] is True
        return {m: a for m, a in (dom0s if fun == "xencluster_node.report" else guests or {}).items() if m in tgt}

    return cmd


def test_verify_one_publish_to_the_dom0s_and_one_to_the_guests(master, reports, monkeypatch, context):
    clean = ok(md_status(monkeypatch, "lab-node2-clean"))
    master.cmd.side_effect = _answers(reports, {"web1": clean})
    monkeypatch.setattr(runner, "_accepted", lambda minions: {"web1"} & set(minions))  # db1 has no key
    result = runner.verify(timeout=20)
    calls = [(c.args, c.kwargs) for c in master.cmd.call_args_list]
    assert calls == [
        ((["node1", "node2"], "xencluster_node.report"), {"timeout": 20, "tgt_type": "list", "full_return": True}),
        ((["web1"], "xencluster_md.status"), {"timeout": 20, "tgt_type": "list", "full_return": True}),
    ]
    assert [(f["code"], f["guest"]) for f in result["findings"]] == [("EGUESTNOANSWER", "db1")]
    assert result["ok"] is True and result["retcode"] == 0 and "retcode" not in context
    assert result["guests"] == {"db1": ["node2"], "web1": ["node1"]}
    assert result["summary"]["warning"] == 1 and result["summary"]["codes"] == {"EGUESTNOANSWER": 1}
    assert result["summary"]["model_from"] == "node1"
    json.dumps(result)  # plain data for --out=json


def test_verify_without_guests_publishes_once(master, reports):
    master.cmd.side_effect = _answers(reports)
    result = runner.status(guests=False)
    assert master.cmd.call_count == 1 and result["findings"] == [] and result["retcode"] == 0


def test_verify_a_dom0_that_does_not_answer(master, reports, context):
    del reports["node2"]
    master.cmd.side_effect = _answers(reports, {"web1": ok({})})
    result = runner.verify()
    assert result["findings"][0]["code"] == "ENODENOANSWER" and result["ok"] is False
    assert result["retcode"] == 1 and context["retcode"] == 1
    # only the guest seen running is asked
    assert master.cmd.call_args_list[1].args[0] == ["web1"]


def test_verify_double_run_exits_2(master, reports, monkeypatch, context):
    ret_of(reports, "node2")["domains"].update(xl_domains(monkeypatch, ["web1"]))
    master.cmd.side_effect = _answers(reports)
    result = runner.verify(guests=False)
    assert result["retcode"] == 2 and context["retcode"] == 2


def test_verify_nothing_running_asks_no_guest(master, reports):
    for answer in reports.values():
        answer["ret"]["domains"] = {}
    master.cmd.side_effect = _answers(reports)
    result = runner.verify()
    assert master.cmd.call_count == 1
    assert codes(result["findings"]) == ["EGUESTNOTRUNNING", "EGUESTNOTRUNNING"]


def test_verify_highstate_shape(master, reports):
    del reports["node2"]
    master.cmd.side_effect = _answers(reports)
    result = runner.verify(guests=False, out="highstate")
    assert set(result) == {"data", "outputter", "retcode"} and result["outputter"] == "highstate"
    states = result["data"]["xencluster.verify"]
    assert all(len(k.split("_|-")) == 4 for k in states)
    assert sorted(s["__run_num__"] for s in states.values()) == list(range(len(states)))
    assert result["retcode"] == 1


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": "x"}, {"guests": "yes"}, {"out": "nested"}])
def test_verify_bad_arguments_publish_nothing(master, kwargs):
    result = runner.verify(**kwargs)
    assert (result["ok"], result["retcode"], result["findings"]) == (False, 1, [])
    assert next(iter(kwargs)) in result["error"]
    master.cmd.assert_not_called()


def test_verify_bad_model_publishes_nothing(master, monkeypatch):
    raw = copy.deepcopy(RAW)
    raw["guests"]["web1"]["disks"][0]["nodes"] = ["node1", "node1"]
    monkeypatch.setattr(runner, "_pillar_model", lambda tgt, tgt_type: ("node1", raw))
    result = runner.verify()
    assert (result["ok"], result["retcode"]) == (False, 1)
    assert "xencluster.guests.web1.disks.root.nodes: both legs on node1" in result["error"]
    master.cmd.assert_not_called()


def _to_provision(model):
    """MODEL with db1 (pinned to node2) given provision settings."""
    model = copy.deepcopy(model)
    model["guests"]["db1"]["provision"] = {"source": "image", "image": "/srv/x.tar", "debootstrap": None,
                                           "address": None, "gateway": None, "dns": [], "master": "salt",
                                           "highstate": True, "final_backup": False}  # fmt: skip
    return model


def test_a_guest_to_provision_that_is_not_yet_says_so_instead_of_not_running(reports):
    ret_of(reports, "node2")["domains"] = {}
    [f] = runner.findings(_to_provision(MODEL), reports)
    assert (f["code"], f["severity"], f["node"], f["guest"]) == ("EGUESTNOTPROVISIONED", "warning", "node2", "db1")
    assert f["message"].endswith("salt-run xencluster.provision db1"), f
    # once its leg carries the tag, not running is not running
    lv = ret_of(reports, "node2")["lvm"]["lvs"]["xcvg/db1.root.node2"]
    lv["tags"] = [*lv.get("tags", []), "xencluster.provisioned"]
    [f] = runner.findings(_to_provision(MODEL), reports)
    assert f["code"] == "EGUESTNOTRUNNING", f
