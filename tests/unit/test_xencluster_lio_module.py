"""xencluster_lio execution module: the dump parser, validation, idempotent export/unexport.

rtslib is replaced by ``FakeRtslib``: ``RTSRoot().dump()`` answers with a
recorded dump (tests/recordings/lio/) or with a SYNTHETIC one built below,
and every rtslib constructor call that ``export``/``unexport`` make is
recorded, so a test can assert "one read, nothing written".
"""

import copy
import json
import os
import pathlib
import shutil
import sys

import pytest
import rtslib_fb
from rtslib_fb import node as rtslib_node
from rtslib_fb import tcm as rtslib_tcm
from rtslib_fb.utils import RTSLibError
from rtslib_fb.utils import normalize_wwn
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_lio as lio

RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings" / "lio"
EMPTY = "lab-node1-empty"
EXPORTED = "lab-node1-xcl-export"

TARGET = "iqn.2025-01.lab.xen:xcl-node1"
NODE2 = "iqn.2025-01.lab.xen:node2"
NODE3 = "iqn.2025-01.lab.xen:xcl-intruder"

INJECTIONS = [
    "",
    "x; rm -rf /",
    "x && reboot",
    "$(reboot)",
    "`id`",
    "x|cat",
    "x\n",
    "x\nrm",
    "-ff",
    "--force",
    "../../etc",
    "a b",
    "x'",
    'x"',
    "x>/etc/passwd",
    "x\x00",
    "x\u200b",
    "ｘ",
    "a/b",
    "a" * 65,
    None,
    7,
    ["x"],
]
IQN_INJECTIONS = [
    *INJECTIONS,
    "iqn.2025-01.lab:node2",  # NOTES.md pitfall 7: rtslib rejects it
    "iqn.2025-13.lab.xen:x",
    "iqn.2025-00.lab.xen:x",
    "iqn.25-01.lab.xen:x",
    "IQN.2025-01.lab.xen:x",
    "iqn.2025-01.Lab.xen:x",
    "iqn.2025-01.lab.xen:x y",
    "iqn.2025-01.lab.xen:x_y",
    "iqn.2025-01.lab.xen:x;reboot",
    "iqn.2025-01.lab.xen:x\n",
    "iqn.2025-01.lab.xen:$(id)",
    "iqn.2025-01.-lab.xen:x",
    "iqn.2025-01.lab..xen:x",
    "iqn.2025-01.lab.xen:" + "a" * 210,
    "naa.5001405abcdef012",
    "eui.0123456789abcdef",
]
VALID_IQNS = [
    "iqn.2025-01.lab.xen:node2",
    "iqn.2025-01.lab.xen:target.node1",
    "iqn.1993-08.org.debian:01:5d3b4e8a9f1c",
    "iqn.2003-01.org.linux-iscsi.node1.x8664:sn.0123456789ab",
    "iqn.2025-01.lab.xen",
    "iqn.2025-12.com.example:storage:disk-1.a",
]


class FakeRtslib:
    """Stands in for the rtslib_fb module: one dump, every other call recorded."""

    RTSLibError = RTSLibError

    def __init__(self, dump):
        self.dump = dump
        self.dumps = 0
        self.calls = []
        fake = self

        class RTSRoot:
            def dump(self):
                fake.dumps += 1
                return copy.deepcopy(fake.dump)

            def save_to_file(self, path):
                fake.calls.append(("save_to_file", path))

            def restore_from_file(self, path, clear_existing=True):
                fake.calls.append(("restore_from_file", path, clear_existing))
                return []

        self.RTSRoot = RTSRoot
        for name in ("FabricModule", "Target", "TPG", "LUN", "NodeACL", "MappedLUN",
                     "NetworkPortal", "BlockStorageObject"):  # fmt: skip
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        fake = self

        class Obj:
            def __init__(self, *args, **kwargs):
                self.name = name
                fake.calls.append((name, args, kwargs))

            def delete(self):
                fake.calls.append((f"{name}.delete",))

            def set_attribute(self, key, value):
                fake.calls.append((f"{name}.set_attribute", key, value))

            def __setattr__(self, key, value):
                object.__setattr__(self, key, value)
                if key != "name":
                    shown = "<secret>" if "password" in key else value
                    fake.calls.append((f"{name}.{key}", shown))

            def __repr__(self):
                return f"<{name}>"

        return Obj

    def writes(self):
        return [c for c in self.calls if c[0] != "FabricModule"]


def recorded_dump(name):
    return json.loads((RECORDINGS / name / "dump.json").read_text())


def _so(name, dev):
    return {
        "plugin": "block", "name": name, "dev": dev, "readonly": False, "write_back": False,
        "wwn": "0" * 8 + "-" + "1" * 4 + "-" + "2" * 4 + "-" + "3" * 4 + "-" + "4" * 12,
        "alua_tpgs": [], "attributes": {"block_size": 512},
    }  # fmt: skip


def synthetic_many():
    """SYNTHETIC: 2 targets, 6 block backstores, 6 LUNs, 4 ACLs, a fileio backstore, CHAP on one ACL.

    Built from the keys rtslib-fb 2.2.4's dump() writes (root.py, target.py,
    tcm.py); stands in for a busy dom0 until one is recorded.
    """
    sos = [_so(f"xcl-leg{i}", f"/dev/xcvg/leg{i}") for i in range(6)]
    sos.append({"plugin": "fileio", "name": "scratch", "dev": "/var/scratch.img", "size": 1, "wwn": "x"})
    def tpg(luns, acls, portals):
        return {
            "tag": 1, "enable": True, "attributes": {"authentication": 0, "generate_node_acls": 0},
            "parameters": {"AuthMethod": "CHAP,None"},
            "luns": [{"index": i, "storage_object": f"/backstores/block/xcl-leg{s}", "alias": "a",
                      "alua_tg_pt_gp_name": "default_tg_pt_gp"} for i, s in luns],
            "portals": [{"ip_address": ip, "port": 3260, "iser": False, "offload": False} for ip in portals],
            "node_acls": acls,
        }  # fmt: skip

    def acl(wwn, mapped, **chap):
        return {"node_wwn": wwn, "attributes": {}, "mapped_luns": [
            {"index": i, "tpg_lun": t, "write_protect": False, "alias": "m"} for i, t in mapped], **chap}

    return {
        "storage_objects": sos,
        "fabric_modules": [],
        "targets": [
            {"wwn": "iqn.2025-01.lab.xen:xcl-node1", "fabric": "iscsi", "tpgs": [tpg(
                [(0, 0), (1, 1), (2, 2)],
                [acl(NODE2, [(0, 0), (1, 1), (2, 2)]),
                 acl("iqn.2025-01.lab.xen:node3", [(0, 0)],
                     chap_userid="node3", chap_password="very-secret-1234")],
                ["192.168.100.1"])]},
            {"wwn": "iqn.2025-01.lab.xen:xcl-node1b", "fabric": "iscsi", "tpgs": [tpg(
                [(0, 3), (1, 4), (5, 5)],
                [acl(NODE2, [(0, 0), (1, 1)]), acl("iqn.2025-01.lab.xen:node4", [(3, 5)])],
                ["192.168.100.1", "192.168.101.1"])]},
        ],
    }  # fmt: skip


@pytest.fixture
def fake(monkeypatch, tmp_path):
    f = FakeRtslib({"storage_objects": [], "targets": [], "fabric_modules": []})
    monkeypatch.setattr(lio, "rtslib_fb", f)
    # No LIO configfs: _dump() lets RTSRoot() set it up and dump it (the fake), even on a host with LIO.
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", str(tmp_path / "no-configfs"))
    monkeypatch.setattr(lio.os.path, "exists", lambda p: True)
    return f


def spec(**kw):
    args = {
        "name": "xcl-web1-disk0-a",
        "device": "/dev/xcvg/web1-disk0-a",
        "target_iqn": TARGET,
        "initiators": [NODE2],
        "portals": ["192.168.100.1"],
    }
    args.update(kw)
    return args


# --- IQNs ------------------------------------------------------------------------


@pytest.mark.parametrize("iqn", VALID_IQNS)
def test_valid_iqns_are_valid_for_rtslib_too(iqn):
    assert lio.valid_iqn(iqn)
    assert normalize_wwn(("iqn", "naa", "eui"), iqn) == (iqn, "iqn")


@pytest.mark.parametrize("iqn", IQN_INJECTIONS)
def test_invalid_iqns(iqn):
    assert not lio.valid_iqn(iqn)


def test_the_rtslib_rule_of_notes_pitfall_7():
    with pytest.raises(RTSLibError):
        normalize_wwn(("iqn",), "iqn.2025-01.lab:node2")
    assert not lio.valid_iqn("iqn.2025-01.lab:node2")
    assert lio.valid_iqn("iqn.2025-01.lab.xen:node2")


# --- validation: nothing reaches rtslib ----------------------------------------------


@pytest.mark.parametrize("bad", INJECTIONS)
def test_bad_backstore_names_never_reach_rtslib(fake, bad):
    with pytest.raises(SaltInvocationError):
        lio.export(**spec(name=bad))
    with pytest.raises(SaltInvocationError):
        lio.unexport(bad, TARGET)
    assert fake.dumps == 0 and fake.calls == []


@pytest.mark.parametrize(
    "bad", [*INJECTIONS, "/dev/../etc/passwd", "/dev/sdb;reboot", "sdb", "/dev/sd b", "/dev/sdb\n", "/etc/shadow"]
)
def test_bad_devices_never_reach_rtslib(fake, bad):
    with pytest.raises(SaltInvocationError):
        lio.export(**spec(device=bad))
    assert fake.dumps == 0 and fake.calls == []


@pytest.mark.parametrize("bad", IQN_INJECTIONS)
def test_bad_iqns_never_reach_rtslib(fake, bad):
    with pytest.raises(SaltInvocationError):
        lio.export(**spec(target_iqn=bad))
    with pytest.raises(SaltInvocationError):
        lio.export(**spec(initiators=[NODE2, bad]))
    with pytest.raises(SaltInvocationError):
        lio.unexport("xcl-a", bad)
    assert fake.dumps == 0 and fake.calls == []


@pytest.mark.parametrize(
    "bad",
    [*INJECTIONS, "192.168.100.1;reboot", "192.168.100.256", "192.168.100.1:0", "192.168.100.1:65536",
     "192.168.100.1:3260:1", "host.example", "::1", "[::1", "[zz::1]:3260", "192.168.100.01", " 192.168.100.1",
     [], ["192.168.100.1", "$(id)"]],
)  # fmt: skip
def test_bad_portals_never_reach_rtslib(fake, bad):
    with pytest.raises(SaltInvocationError):
        lio.export(**spec(portals=bad))
    assert fake.dumps == 0 and fake.calls == []


@pytest.mark.parametrize("bad", [-1, 256, "1a", True, 1.0, "０"])
def test_bad_luns(fake, bad):
    with pytest.raises(SaltInvocationError):
        lio.export(**spec(lun=bad))
    assert fake.calls == []


@pytest.mark.parametrize(
    "chap",
    [
        {"userid": "node2"},
        {"userid": "node2", "password": "short"},
        {"userid": "node2", "password": "has space in it!"},
        {"userid": "node2", "password": "quote'secret-123"},
        {"userid": "no de", "password": "long-enough-secret"},
        {"userid": "node2", "password": "long-enough-secret", "mutual_userid": "node1"},
        {"userid": "node2", "password": "long-enough-secret", "mutual_userid": "n1",
         "mutual_password": "long-enough-secret"},
        {"userid": "node2", "password": "long-enough-secret", "other": "x"},
        "node2:secret",
    ],
)  # fmt: skip
def test_bad_chap_is_refused_without_echoing_the_secret(fake, chap):
    with pytest.raises(SaltInvocationError) as exc:
        lio.export(**spec(chap=chap))
    if isinstance(chap, dict) and chap.get("password"):
        assert chap["password"] not in str(exc.value)
    assert fake.calls == []


def test_export_args_normalises():
    args = lio.export_args(**spec(portals=["192.168.100.1", "192.168.100.1:3260", "[fd00::1]:3261"], lun="3"))
    assert args["portals"] == ["192.168.100.1:3260", "[fd00::1]:3261"]
    assert args["lun"] == 3 and args["chap"] is False


# --- the parser ------------------------------------------------------------------


def test_parse_many_objects_with_exactly_one_read(fake):
    fake.dump = synthetic_many()  # SYNTHETIC
    result = lio.exports()
    assert fake.dumps == 1 and fake.calls == []
    assert sorted(result["backstores"]) == [f"xcl-leg{i}" for i in range(6)]  # fileio left out
    assert result["backstores"]["xcl-leg5"]["luns"] == [
        {"target": "iqn.2025-01.lab.xen:xcl-node1b", "tpg": 1, "index": 5}
    ]
    t1 = result["targets"]["iqn.2025-01.lab.xen:xcl-node1"]["tpgs"][0]
    assert [lun["backstore"] for lun in t1["luns"]] == ["xcl-leg0", "xcl-leg1", "xcl-leg2"]
    assert t1["portals"] == ["192.168.100.1:3260"]
    assert t1["acls"][NODE2]["mapped_luns"][2] == {"index": 2, "tpg_lun": 2, "write_protect": False}
    assert t1["acls"]["iqn.2025-01.lab.xen:node3"]["chap"] is True
    t2 = result["targets"]["iqn.2025-01.lab.xen:xcl-node1b"]["tpgs"][0]
    assert t2["portals"] == ["192.168.100.1:3260", "192.168.101.1:3260"]
    assert sorted(t2["acls"]) == [NODE2, "iqn.2025-01.lab.xen:node4"]


def test_exports_never_returns_a_chap_secret(fake):
    fake.dump = synthetic_many()  # SYNTHETIC
    text = json.dumps(lio.exports())
    assert "very-secret-1234" not in text and '"node3"' not in text


def test_parse_the_recorded_empty_lio():
    assert lio.parse_dump(recorded_dump(EMPTY)) == {"backstores": {}, "targets": {}}


def test_parse_the_recorded_export():
    result = lio.parse_dump(recorded_dump(EXPORTED))
    so = result["backstores"]["xcl-lv0"]
    assert so["dev"] == "/dev/xclio/lv0" and so["luns"] == [{"target": TARGET, "tpg": 1, "index": 0}]
    (tpg,) = result["targets"][TARGET]["tpgs"]
    assert tpg["enable"] is True and tpg["tag"] == 1
    assert tpg["portals"] == ["192.168.100.1:3260"]  # no 0.0.0.0
    assert tpg["luns"] == [{"index": 0, "backstore": "xcl-lv0", "plugin": "block"}]
    assert list(tpg["acls"]) == [NODE2]
    assert tpg["acls"][NODE2]["mapped_luns"] == [{"index": 0, "tpg_lun": 0, "write_protect": False}]
    assert tpg["generate_node_acls"] == 0
    # LIO's default is authentication=1 (refuses a CHAP-less initiator even with an ACL);
    # export without chap turned it off.
    assert tpg["authentication"] == 0


def test_unparseable_dump():
    with pytest.raises(CommandExecutionError):
        lio.parse_dump(["not", "a", "dict"])


def test_rtslib_errors_become_command_execution_errors(fake, monkeypatch):
    class Broken:
        def dump(self):
            raise RTSLibError("configfs is not mounted")

    monkeypatch.setattr(fake, "RTSRoot", Broken)
    with pytest.raises(CommandExecutionError, match="configfs is not mounted"):
        lio.exports()


# --- export / unexport --------------------------------------------------------------


def test_export_on_an_empty_lio_creates_everything_in_order(fake):
    fake.dump = recorded_dump(EMPTY)
    ret = lio.export(**spec(initiators=[NODE2, "iqn.2025-01.lab.xen:node3"]))
    assert ret["changed"] is True and ret["lun"] == 0
    assert ret["changes"] == [
        "backstore block/xcl-web1-disk0-a created on /dev/xcvg/web1-disk0-a",
        f"target {TARGET} created",
        f"tpg 1 of {TARGET} created",
        f"LUN 0 of {TARGET} created for block/xcl-web1-disk0-a",
        f"ACL for {NODE2} on {TARGET} created",
        f"LUN 0 of {TARGET} mapped to {NODE2} as LUN 0",
        f"ACL for iqn.2025-01.lab.xen:node3 on {TARGET} created",
        f"LUN 0 of {TARGET} mapped to iqn.2025-01.lab.xen:node3 as LUN 0",
        f"authentication not required (no CHAP) on {TARGET}",
        f"portal 192.168.100.1:3260 of {TARGET} created",
        f"tpg 1 of {TARGET} enabled",
    ]
    names = [c[0] for c in fake.writes()]
    assert names[:2] == ["BlockStorageObject", "Target"]
    assert ("BlockStorageObject", ("xcl-web1-disk0-a",), {"dev": "/dev/xcvg/web1-disk0-a"}) in fake.calls
    portals = [c for c in fake.calls if c[0] == "NetworkPortal"]
    assert [c[1][1:] for c in portals] == [("192.168.100.1", 3260)]
    assert ("TPG.enable", True) in fake.calls
    assert fake.dumps == 1


def test_export_twice_changes_nothing_the_second_time(fake):
    """The recorded dump is LIO right after the lab's export: exporting the same again is a no-op."""
    fake.dump = recorded_dump(EXPORTED)
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1:3260"])
    assert ret == {"changed": False, "changes": [], "target": TARGET, "backstore": "xcl-lv0", "lun": 0}
    assert fake.dumps == 1 and fake.calls == []


def test_export_adds_only_what_is_missing(fake):
    fake.dump = recorded_dump(EXPORTED)
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2, NODE3], ["192.168.100.1", "192.168.101.1"])
    assert ret["changes"] == [
        f"ACL for {NODE3} on {TARGET} created",
        f"LUN 0 of {TARGET} mapped to {NODE3} as LUN 0",
        f"portal 192.168.101.1:3260 of {TARGET} created",
    ]


def test_export_removes_a_wildcard_portal_it_was_not_asked_for(fake):
    dump = recorded_dump(EXPORTED)
    dump["targets"][0]["tpgs"][0]["portals"].append(
        {"ip_address": "0.0.0.0", "port": 3260, "iser": False, "offload": False}
    )
    fake.dump = dump
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"])
    assert ret["changes"] == [f"portal 0.0.0.0:3260 of {TARGET} deleted (not asked for)"]
    assert ("NetworkPortal.delete",) in fake.calls
    # ... but keeps it when asked for explicitly
    fake.calls.clear()
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1", "0.0.0.0"])
    assert ret["changed"] is False and fake.calls == []


def test_export_test_mode_writes_nothing(fake):
    ret = lio.export(**spec(), test=True)
    assert ret["changed"] is True and fake.writes() == []


def test_export_refuses_conflicts(fake):
    fake.dump = recorded_dump(EXPORTED)
    with pytest.raises(CommandExecutionError, match="already exists on /dev/xclio/lv0"):
        lio.export("xcl-lv0", "/dev/xclio/other", TARGET, [NODE2], ["192.168.100.1"])
    with pytest.raises(CommandExecutionError, match="already exported as backstore block/xcl-lv0"):
        lio.export("xcl-other", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"])
    with pytest.raises(CommandExecutionError, match="already LUN 0"):
        lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], lun=3)
    with pytest.raises(CommandExecutionError, match="LUN 0 of .* already used"):
        lio.export("xcl-lv1", "/dev/xclio/lv1", TARGET, [NODE2], ["192.168.100.1"], lun=0)
    assert fake.writes() == []


def test_a_second_leg_on_the_same_target_gets_the_next_lun(fake):
    fake.dump = recorded_dump(EXPORTED)
    ret = lio.export("xcl-lv1", "/dev/xclio/lv1", TARGET, [NODE2], ["192.168.100.1"])
    assert ret["lun"] == 1
    assert ret["changes"] == [
        "backstore block/xcl-lv1 created on /dev/xclio/lv1",
        f"LUN 1 of {TARGET} created for block/xcl-lv1",
        f"LUN 1 of {TARGET} mapped to {NODE2} as LUN 1",
    ]


def test_export_with_mutual_chap_sets_secrets_and_never_returns_them(fake, caplog):
    fake.dump = recorded_dump(EXPORTED)
    chap = {"userid": "node2", "password": "initiator-secret-1",
            "mutual_userid": "node1", "mutual_password": "target-secret-22"}  # fmt: skip
    caplog.set_level("DEBUG")
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], chap=chap)
    assert ret["changes"] == [
        f"CHAP credentials of {NODE2} on {TARGET} set",
        f"authentication required on {TARGET}",
    ]
    assert ("NodeACL.chap_userid", "node2") in fake.calls
    assert ("NodeACL.chap_mutual_password", "<secret>") in fake.calls
    assert ("TPG.set_attribute", "authentication", "1") in fake.calls
    text = json.dumps(ret) + caplog.text
    assert "initiator-secret-1" not in text and "target-secret-22" not in text
    # With the secrets in place (as a dump then shows them) nothing changes.
    acl = fake.dump["targets"][0]["tpgs"][0]["node_acls"][0]
    acl.update({f"chap_{k}": v for k, v in chap.items()})
    fake.dump["targets"][0]["tpgs"][0]["attributes"]["authentication"] = 1
    fake.calls.clear()
    assert lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], chap=chap)["changed"] is False


def test_export_refuses_a_missing_device(fake, monkeypatch):
    monkeypatch.setattr(lio.os.path, "exists", lambda p: False)
    with pytest.raises(CommandExecutionError, match="does not exist"):
        lio.export(**spec())
    assert fake.writes() == []


def test_rtslib_failure_during_export_names_the_step(fake, monkeypatch):
    def boom(*args, **kwargs):
        raise RTSLibError("Cannot configure StorageObject because device is already in use")

    monkeypatch.setattr(fake, "BlockStorageObject", boom)
    with pytest.raises(CommandExecutionError, match="backstore block/xcl-web1-disk0-a created .* failed: .*in use"):
        lio.export(**spec())


def test_unexport_of_the_only_lun_deletes_target_and_backstore(fake):
    fake.dump = recorded_dump(EXPORTED)
    ret = lio.unexport("xcl-lv0", TARGET)
    assert ret["changes"] == [f"target {TARGET} deleted", "backstore block/xcl-lv0 deleted"]
    assert [c[0] for c in fake.writes()] == ["Target", "Target.delete", "BlockStorageObject", "BlockStorageObject.delete"]
    assert fake.dumps == 1


def test_unexport_is_idempotent(fake):
    fake.dump = recorded_dump(EMPTY)
    assert lio.unexport("xcl-lv0", TARGET) == {"changed": False, "changes": []}
    assert fake.writes() == []


def test_unexport_of_one_lun_among_many_keeps_the_target(fake):
    fake.dump = synthetic_many()  # SYNTHETIC
    ret = lio.unexport("xcl-leg5", "iqn.2025-01.lab.xen:xcl-node1b")
    assert ret["changes"] == [
        "LUN 5 of iqn.2025-01.lab.xen:xcl-node1b deleted",
        "ACL for iqn.2025-01.lab.xen:node4 on iqn.2025-01.lab.xen:xcl-node1b deleted",
        "backstore block/xcl-leg5 deleted",
    ]


def test_unexport_refuses_a_backstore_still_exported_elsewhere(fake):
    dump = synthetic_many()  # SYNTHETIC
    dump["targets"][1]["tpgs"][0]["luns"].append(
        {"index": 9, "storage_object": "/backstores/block/xcl-leg0", "alias": "b"}
    )
    fake.dump = dump
    with pytest.raises(CommandExecutionError, match="also exported by"):
        lio.unexport("xcl-leg0", "iqn.2025-01.lab.xen:xcl-node1")


def test_save_and_restore_use_the_file_targetctl_restores_at_boot(fake, monkeypatch, tmp_path):
    assert lio.SAVE_FILE == "/etc/rtslib-fb-target/saveconfig.json"
    monkeypatch.setattr(lio.os, "makedirs", lambda *a, **k: None)
    assert lio.save() == {"saved": lio.SAVE_FILE}
    assert fake.calls == [("save_to_file", lio.SAVE_FILE)]
    saved = tmp_path / "saveconfig.json"
    saved.write_text("{}")
    assert lio.restore(str(saved)) == {"restored": str(saved), "errors": []}
    assert fake.calls[-1] == ("restore_from_file", str(saved), True)
    with pytest.raises(SaltInvocationError):
        lio.save("/etc/x;reboot.json")
    with pytest.raises(CommandExecutionError, match="no saved LIO configuration"):
        lio.restore(str(tmp_path / "missing.json"))


def test_virtual_without_rtslib(monkeypatch):
    monkeypatch.setattr(lio, "HAS_RTSLIB", False)
    ok, reason = lio.__virtual__()
    assert ok is False and "rtslib_fb" in reason


def test_every_public_function_has_a_cli_example():
    for name in ("exports", "export", "unexport", "save", "restore", "valid_iqn", "export_args", "parse_dump"):
        assert "CLI Example:" in getattr(lio, name).__doc__, name


# --- the unit serial (wwn) of a backstore: the leg id the initiators link by ------------

LEG = "web1.disk0.node1"
RECORDED_SERIAL = "3c00792c-4558-4800-923d-abe0850e4d32"  # lab-node1-xcl-export, made up by rtslib
SERIAL_INJECTIONS = [
    *(bad for bad in INJECTIONS if bad is not None),  # None means "no serial"
    "a;b", "../x", "-x", ".x", "_x", "x\n", "x\r", "a/b", "a b", "a\tb", "a:b", "a*b", "a?b",
    "web1.disk0.node1\n", "web1.disk0.node1 ", "web1.disk0.node1/../../x", "Web1.disk0.node1.x" + "y" * 60,
    "a" * 32 + ".disk0.node1" + "x" * 30, ".".join(["a" * 31] * 3) + "x", True, 1.5,
]  # fmt: skip


def test_rtslib_takes_the_serial_as_wwn_at_creation():
    import inspect

    from rtslib_fb import BlockStorageObject

    assert "wwn" in inspect.signature(BlockStorageObject.__init__).parameters


@pytest.mark.parametrize("bad", SERIAL_INJECTIONS)
def test_bad_serials_never_reach_rtslib(fake, bad):
    with pytest.raises(SaltInvocationError, match="invalid unit serial"):
        lio.export(**spec(serial=bad))
    with pytest.raises(SaltInvocationError, match="invalid unit serial"):
        lio.export_args(**spec(serial=bad))
    assert fake.dumps == 0 and fake.calls == []


@pytest.mark.parametrize(
    "good", [LEG, "t1.disk0.node1", ".".join(["a" * 31] * 3), "a-1.b-2.c-3", RECORDED_SERIAL, "X", "a" * 64, "LEG_01.x"]
)
def test_good_serials(good):
    assert lio.export_args(**spec(serial=good))["serial"] == good


def test_export_args_without_serial():
    assert lio.export_args(**spec())["serial"] is None


def test_export_with_a_serial_creates_the_backstore_with_it(fake):
    fake.dump = recorded_dump(EMPTY)
    ret = lio.export(**spec(name="xcl-" + LEG, device=f"/dev/xcvg/{LEG}"), serial=LEG)
    assert ret["serial"] == LEG and ret["lun"] == 0
    assert ret["changes"][0] == f"backstore block/xcl-{LEG} created on /dev/xcvg/{LEG} with unit serial {LEG}"
    assert ("BlockStorageObject", (f"xcl-{LEG}",), {"dev": f"/dev/xcvg/{LEG}", "wwn": LEG}) in fake.calls
    # The backstore is created before its LUN: LIO refuses a new serial once a LUN exists.
    names = [c[0] for c in fake.writes()]
    assert names.index("BlockStorageObject") < names.index("LUN")


def test_export_test_mode_with_a_serial_plans_it_and_writes_nothing(fake):
    ret = lio.export(**spec(), serial=LEG, test=True)
    assert ret["changed"] is True and ret["serial"] == LEG
    assert ret["changes"][0].endswith(f"with unit serial {LEG}")
    assert fake.writes() == []


def test_export_with_the_same_serial_again_changes_nothing(fake):
    fake.dump = recorded_dump(EXPORTED)
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], serial=RECORDED_SERIAL)
    assert ret == {"changed": False, "changes": [], "target": TARGET, "backstore": "xcl-lv0", "lun": 0,
                   "serial": RECORDED_SERIAL}  # fmt: skip
    assert fake.calls == []


@pytest.mark.parametrize("test", [False, True])
def test_export_refuses_to_change_the_serial_of_an_existing_backstore(fake, test):
    """Recreating the backstore would change the disk's identity under a running guest."""
    fake.dump = recorded_dump(EXPORTED)
    with pytest.raises(CommandExecutionError) as exc:
        lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], serial=LEG, test=test)
    msg = str(exc.value)
    assert f"unit serial {RECORDED_SERIAL!r}, not {LEG!r}" in msg and "unexport" in msg
    assert fake.writes() == []
    # A serial differing only in case or by a suffix is a mismatch too.
    with pytest.raises(CommandExecutionError, match="unit serial"):
        lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], serial=RECORDED_SERIAL.upper())
    assert fake.writes() == []


def test_export_refuses_a_serial_another_backstore_has(fake):
    fake.dump = recorded_dump(EXPORTED)
    with pytest.raises(CommandExecutionError, match="already used by backstore block/xcl-lv0"):
        lio.export("xcl-lv1", "/dev/xclio/lv1", TARGET, [NODE2], ["192.168.100.1"], serial=RECORDED_SERIAL)
    assert fake.writes() == []


def test_exports_shows_the_serial_as_wwn():
    assert lio.parse_dump(recorded_dump(EXPORTED))["backstores"]["xcl-lv0"]["wwn"] == RECORDED_SERIAL


# --- the lean configfs read: the part of RTSRoot().dump() parse_dump and the planners use ----------
#
# ``build_configfs`` lays a dump out as LIO's configfs: every file rtslib-fb's
# dump() reads (attributes, parameters, ALUA groups, info, CHAP files, the
# LUN and mapped-LUN symlinks) plus some it does not. The REAL rtslib dump
# code then runs on that tree (``rtslib_dump``: RTSRoot.dump()'s body with
# rtslib's configfs root pointed at it) next to ``_read_configfs``: same
# tree, same directory order, so the lean read must be a sub-dict of the
# full one and parse the same. ``io_counts`` counts the files opened and the
# directories listed (Python audit events) and the symlinks read.

_HBA = {"block": "iblock", "fileio": "fileio", "pscsi": "pscsi", "ramdisk": "rd_mcp", "user": "user"}
_ALUA_TYPES = ["None", "Implicit", "Explicit", "Implicit and Explicit"]
_ALUA_STATUSES = ["None", "Altered by Explicit STPG", "Altered by Implicit ALUA"]


def _put(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def _link(link, target):
    link.symlink_to(os.path.relpath(target, link.parent))


def build_configfs(root, dump, unset="NULL"):
    """Lay ``dump`` (an RTSRoot().dump()) out under ``root`` as LIO's configfs would; returns ``root``."""
    _put(root / "version", "Target Engine Core ConfigFS Infrastructure v5.0")
    _put(root / "dbroot", "/etc/target")
    (root / "core" / "alua" / "lu_gps" / "default_lu_gp").mkdir(parents=True)
    backstores = {}
    for i, so in enumerate(dump["storage_objects"]):
        hba = root / "core" / f"{_HBA[so['plugin']]}_{i}"
        _put(hba / "hba_info", f"HBA Index: {i} plugin: {so['plugin']} version: v5.0")
        _put(hba / "hba_mode", "0")
        path = hba / so["name"]
        path.mkdir(parents=True)
        dev = so.get("dev", "")
        _put(path / "enable", "1")
        _put(path / "udev_path", dev)
        _put(path / "wwn" / "vpd_unit_serial", f"T10 VPD Unit Serial Number: {so.get('wwn', '')}")
        if so["plugin"] == "block":
            info = (f"Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 8192\n"
                    f"        iBlock device: dm-{i}  UDEV PATH: {dev}  readonly: {int(so.get('readonly', False))}\n"
                    f"        Major: 254 Minor: {i}  CLAIMED: IBLOCK")  # fmt: skip
        else:
            info = (f"Status: DEACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 16384\n"
                    f"        TCM FILEIO ID: {i}        File: {dev}  Size: {so.get('size', 0)}  Mode: O_DSYNC Async: 0")  # fmt: skip
        _put(path / "info", info)
        attributes = {"emulate_write_cache": int(so.get("write_back", False)), **so.get("attributes", {})}
        for key, value in attributes.items():
            _put(path / "attrib" / key, value)
        (path / "alua").mkdir()
        for group in so.get("alua_tpgs", []):
            for key, value in group.items():
                if key == "alua_access_type":
                    value = _ALUA_TYPES[value]
                elif key == "alua_access_status":
                    value = _ALUA_STATUSES[value]
                if key != "name":
                    _put(path / "alua" / group["name"] / key, value)
            _put(path / "alua" / group["name"] / "members", "")
        (path / "pr").mkdir()
        (path / "statistics" / "scsi_dev").mkdir(parents=True)
        backstores[f"/backstores/{so['plugin']}/{so['name']}"] = path
    for t in dump["targets"]:
        fabric = root / t["fabric"]
        _put(fabric / "lio_version", "Datera Inc. iSCSI Target v4.1.0")
        _put(fabric / "discovery_auth" / "enforce_discovery_auth", "0")
        for tpg in t.get("tpgs", []):
            path = fabric / t["wwn"] / f"tpgt_{tpg['tag']}"
            _put(path / "enable", int(tpg.get("enable", False)))
            for key, value in tpg.get("attributes", {}).items():
                _put(path / "attrib" / key, value)
            for key, value in tpg.get("parameters", {}).items():
                _put(path / "param" / key, value)
            for key in ("userid", "password", "userid_mutual", "password_mutual"):
                _put(path / "auth" / key, unset)
            _put(path / "auth" / "authenticate_target", "0")
            for sub in ("lun", "np", "acls"):
                (path / sub).mkdir(exist_ok=True)
            for lun in tpg.get("luns", []):
                lun_dir = path / "lun" / f"lun_{lun['index']}"
                lun_dir.mkdir()
                _link(lun_dir / lun.get("alias", f"alias{lun['index']}"), backstores[lun["storage_object"]])
                _put(lun_dir / "alua_tg_pt_gp", "TG Port Alias: default_tg_pt_gp\nTG Port Group ID: 0")
                _put(lun_dir / "alua_tg_pt_offline", "0")
                (lun_dir / "statistics").mkdir()
            for portal in tpg.get("portals", []):
                _put(path / "np" / f"{portal['ip_address']}:{portal['port']}" / "iser", int(portal.get("iser", False)))
            for acl in tpg.get("node_acls", []):
                acl_dir = path / "acls" / acl["node_wwn"]
                acl_dir.mkdir()
                for key, value in acl.get("attributes", {}).items():
                    _put(acl_dir / "attrib" / key, value)
                for key, name in lio._CHAP_FILES.items():  # pylint: disable=protected-access
                    _put(acl_dir / name, acl.get(f"chap_{key}") or unset)
                _put(acl_dir / "info", "No active iSCSI Session for Initiator Endpoint: " + acl["node_wwn"])
                _put(acl_dir / "cmdsn_depth", "64")
                for mapped in acl.get("mapped_luns", []):
                    mapped_dir = acl_dir / f"lun_{mapped['index']}"
                    mapped_dir.mkdir()
                    _link(mapped_dir / mapped.get("alias", "m"), path / "lun" / f"lun_{mapped['tpg_lun']}")
                    _put(mapped_dir / "write_protect", int(mapped.get("write_protect", False)))
    return root


def rtslib_dump(root, monkeypatch):
    """RTSRoot.dump()'s storage objects and targets, by the real rtslib-fb code, from the tree at ``root``."""
    monkeypatch.setattr(rtslib_node.CFSNode, "configfs_dir", str(root))
    monkeypatch.setattr(rtslib_tcm, "bs_cache", {})
    return {
        "storage_objects": [so.dump() for so in rtslib_tcm.StorageObject.all()],
        "targets": [t.dump() for fm in rtslib_fb.FabricModule.all() for t in fm.targets],
    }


class IOCount:
    """Files opened and directories listed (audit events), symlinks read and stats (os.*), while active."""

    hooked = False
    active = None

    def __init__(self):
        self.opened, self.listings, self.readlinks, self.stats = [], 0, 0, 0

    @classmethod
    def _audit(cls, event, args):
        if cls.active is not None:
            if event == "open":
                cls.active.opened.append(str(args[0]))
            elif event in ("os.scandir", "os.listdir"):
                cls.active.listings += 1

    @property
    def opens(self):
        return len(self.opened)

    def costs(self):
        return (self.opens, self.listings, self.readlinks, self.stats)


def io_counts(monkeypatch, func, *args, **kwargs):
    """(func's result, IOCount) for one call."""
    if not IOCount.hooked:
        sys.addaudithook(IOCount._audit)  # pylint: disable=protected-access
        IOCount.hooked = True
    count = IOCount()
    originals = {name: getattr(os, name) for name in ("readlink", "stat", "lstat")}

    def counting(name):
        def call(*a, **k):
            if name == "readlink":
                count.readlinks += 1
            else:
                count.stats += 1
            return originals[name](*a, **k)

        return call

    for name in originals:
        monkeypatch.setattr(os, name, counting(name))
    IOCount.active = count
    try:
        result = func(*args, **kwargs)
    finally:
        IOCount.active = None
        for name, original in originals.items():
            monkeypatch.setattr(os, name, original)
    return result, count


def assert_part_of(lean, full, where="dump"):
    """Every key of ``lean`` is in ``full`` with the same value; lists element by element."""
    if isinstance(lean, dict):
        assert isinstance(full, dict), where
        for key, value in lean.items():
            assert key in full, f"{where}.{key} is not in rtslib's dump"
            assert_part_of(value, full[key], f"{where}.{key}")
    elif isinstance(lean, list):
        assert isinstance(full, list) and len(lean) == len(full), where
        for i, (a, b) in enumerate(zip(lean, full)):
            assert_part_of(a, b, f"{where}[{i}]")
    else:
        assert lean == full and type(lean) is type(full), f"{where}: {lean!r} != {full!r}"


def _sorted_portals(parsed):
    for t in parsed["targets"].values():
        for tpg in t["tpgs"]:
            tpg["portals"] = sorted(tpg["portals"])
    return parsed


def bench_dump(n, chap=False):
    """SYNTHETIC: n exports as benchmarks/report_scaling.py makes them, copies of the recorded one."""
    recorded = recorded_dump(EXPORTED)
    dump = {"storage_objects": [], "targets": [], "fabric_modules": []}
    for i in range(1, n + 1):
        name = f"xcbench-b{i:03d}"
        so = copy.deepcopy(recorded["storage_objects"][0])
        so.update(name=name, dev=f"/dev/xcbench/b{i:03d}", wwn=f"b{i:03d}-serial")
        t = copy.deepcopy(recorded["targets"][0])
        t["wwn"] = f"iqn.2025-01.lab.xen:bench.b{i:03d}"
        t["tpgs"][0]["luns"][0]["storage_object"] = f"/backstores/block/{name}"
        if chap:
            t["tpgs"][0]["node_acls"][0].update(chap_userid="node2", chap_password="very-secret-1234")
        dump["storage_objects"].append(so)
        dump["targets"].append(t)
    return dump


DUMPS = {
    EMPTY: lambda: recorded_dump(EMPTY),
    EXPORTED: lambda: recorded_dump(EXPORTED),
    "synthetic-many": synthetic_many,  # SYNTHETIC
    "bench-3-chap": lambda: bench_dump(3, chap=True),  # SYNTHETIC
}


@pytest.fixture
def cfs_root(tmp_path):
    return tmp_path.resolve() / "target"


@pytest.mark.filterwarnings("ignore:Will be removed in 1.0:DeprecationWarning")  # rtslib's fileio size (pyudev)
@pytest.mark.parametrize("secrets", [True, False])
@pytest.mark.parametrize("unset", ["NULL", ""])
@pytest.mark.parametrize("name", sorted(DUMPS))
def test_the_lean_read_is_the_part_of_rtslibs_dump_that_parse_dump_uses(name, unset, secrets, cfs_root, monkeypatch):
    original = DUMPS[name]()
    root = build_configfs(cfs_root, original, unset=unset)
    full = rtslib_dump(root, monkeypatch)
    lean = lio._read_configfs(str(root), secrets=secrets)  # pylint: disable=protected-access
    assert_part_of(lean, full)
    assert lio.parse_dump(lean) == lio.parse_dump(full)
    # ... and the parse of the recorded (or synthetic) dump itself (portals are in directory order)
    assert _sorted_portals(lio.parse_dump(lean)) == _sorted_portals(lio.parse_dump(original))
    if secrets:  # what export() with CHAP compares
        assert lio._secrets(lean) == lio._secrets(full)  # pylint: disable=protected-access


def test_the_lean_read_of_the_recorded_export_keeps_what_the_planners_compare(cfs_root):
    root = build_configfs(cfs_root, recorded_dump(EXPORTED))
    lean = lio._read_configfs(str(root))  # pylint: disable=protected-access
    assert lean == {
        "storage_objects": [{"name": "xcl-lv0", "plugin": "block", "dev": "/dev/xclio/lv0",
                             "wwn": RECORDED_SERIAL, "readonly": False, "write_back": False}],
        "targets": [{"wwn": TARGET, "fabric": "iscsi", "tpgs": [{
            "tag": 1, "enable": True, "attributes": {"authentication": 0, "generate_node_acls": 0},
            "luns": [{"index": 0, "storage_object": "/backstores/block/xcl-lv0"}],
            "portals": [{"ip_address": "192.168.100.1", "port": 3260}],
            "node_acls": [{"node_wwn": NODE2, "mapped_luns": [{"index": 0, "tpg_lun": 0, "write_protect": False}]}],
        }]}],
    }  # fmt: skip


def test_reads_per_export_lean_and_full(cfs_root, monkeypatch):
    """What one more export (backstore, target, TPG, LUN, portal, ACL, mapped LUN) costs each read."""

    roots = {n: build_configfs(cfs_root / f"n{n}", bench_dump(n)) for n in (1, 3)}

    def per_export(read):
        one, three = (io_counts(monkeypatch, read, roots[n])[1].costs() for n in (1, 3))
        return [(b - a) / 2 for a, b in zip(one, three)]

    lean = per_export(lambda root: lio._read_configfs(str(root), secrets=False))  # pylint: disable=protected-access
    full = per_export(lambda root: rtslib_dump(root, monkeypatch))
    # [files opened, directories listed, symlinks read, stats]. Opened: backstore enable, info, udev_path,
    # vpd_unit_serial, emulate_write_cache; TPG enable, authentication, generate_node_acls; mapped LUN
    # write_protect; ACL without CHAP userid, userid_mutual. Listed: the backstore's core/iblock_N, the
    # target, its lun/, lun_0, np/, acls/, the ACL, its lun_0. Read: the 2 LUN links.
    assert lean == [11, 8, 2, 0], lean
    # rtslib-fb 2.2.4: [109, 18, 4, 516]: every attribute, parameter and ALUA file, stats before each read
    assert full[0] >= 9 * lean[0] and full[3] >= 100, (full, lean)


def test_exports_reads_configfs_without_rtsroot_or_any_rtslib_object(fake, cfs_root, monkeypatch):
    build_configfs(cfs_root, synthetic_many())  # SYNTHETIC
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", str(cfs_root))
    monkeypatch.setattr(fake, "FabricModule", rtslib_fb.FabricModule)  # rtslib's fabric table (names, features)

    class NoRoot:
        def __init__(self):
            raise AssertionError("RTSRoot() built")

    monkeypatch.setattr(fake, "RTSRoot", NoRoot)
    result = lio.exports()
    assert fake.calls == []
    assert _sorted_portals(result) == _sorted_portals(lio.parse_dump(synthetic_many()))
    assert "very-secret-1234" not in json.dumps(result)
    assert result["targets"][TARGET]["tpgs"][0]["acls"]["iqn.2025-01.lab.xen:node3"]["chap"] is True


@pytest.fixture
def lean(fake, cfs_root, monkeypatch):
    """The FakeRtslib writes, but reads go to a configfs tree under tmp_path (rebuilt by ``lean.build``)."""
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", str(cfs_root))
    recorder = fake.FabricModule

    class FabricModule(recorder):
        all = staticmethod(rtslib_fb.FabricModule.all)

    monkeypatch.setattr(fake, "FabricModule", FabricModule)

    def no_dump(self):
        raise AssertionError("RTSRoot().dump() called")

    fake.RTSRoot.dump = no_dump  # a class of this FakeRtslib only

    def build(dump):
        shutil.rmtree(cfs_root, ignore_errors=True)
        build_configfs(cfs_root, dump)

    fake.build = build
    return fake


def test_export_twice_on_the_lean_read_changes_nothing(lean):
    lean.build(recorded_dump(EXPORTED))
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1:3260"], serial=RECORDED_SERIAL)
    assert ret["changed"] is False and lean.calls == []
    assert lio.exports() == lio.parse_dump(recorded_dump(EXPORTED))


def test_export_with_chap_on_the_lean_read_compares_the_secrets(lean):
    chap = {"userid": "node2", "password": "initiator-secret-1",
            "mutual_userid": "node1", "mutual_password": "target-secret-22"}  # fmt: skip
    dump = recorded_dump(EXPORTED)
    dump["targets"][0]["tpgs"][0]["attributes"]["authentication"] = 1
    dump["targets"][0]["tpgs"][0]["node_acls"][0].update({f"chap_{k}": v for k, v in chap.items()})
    lean.build(dump)
    assert lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], chap=chap)["changed"] is False
    other = dict(chap, password="another-secret-3")
    ret = lio.export("xcl-lv0", "/dev/xclio/lv0", TARGET, [NODE2], ["192.168.100.1"], chap=other)
    assert ret["changes"] == [f"CHAP credentials of {NODE2} on {TARGET} set"]


def test_export_and_unexport_plan_on_the_lean_read(lean):
    lean.build(synthetic_many())  # SYNTHETIC
    ret = lio.export("xcl-leg9", "/dev/xcvg/leg9", "iqn.2025-01.lab.xen:xcl-node1b", [NODE2], ["192.168.100.1"],
                     test=True)  # fmt: skip
    assert ret["lun"] == 2 and ret["changes"][:2] == [
        "backstore block/xcl-leg9 created on /dev/xcvg/leg9",
        "LUN 2 of iqn.2025-01.lab.xen:xcl-node1b created for block/xcl-leg9",
    ]
    assert lio.unexport("xcl-leg5", "iqn.2025-01.lab.xen:xcl-node1b", test=True)["changes"] == [
        "LUN 5 of iqn.2025-01.lab.xen:xcl-node1b deleted",
        "ACL for iqn.2025-01.lab.xen:node4 on iqn.2025-01.lab.xen:xcl-node1b deleted",
        "backstore block/xcl-leg5 deleted",
    ]
    assert lean.writes() == []


def test_reports_read_no_chap_secret_of_an_acl_without_chap_user(cfs_root, monkeypatch):
    root = build_configfs(cfs_root, synthetic_many())  # SYNTHETIC: node3 has CHAP, the others not
    read = lio._read_configfs  # pylint: disable=protected-access
    _, report = io_counts(monkeypatch, read, str(root), secrets=False)
    _, planning = io_counts(monkeypatch, read, str(root), secrets=True)
    secrets_read = [p for p in report.opened if p.endswith(("/auth/password", "/auth/password_mutual"))]
    assert secrets_read == [p for p in planning.opened if p.endswith("node3/auth/password")]
    assert len(secrets_read) == 1
    assert len([p for p in planning.opened if "/acls/" in p and "/auth/" in p]) == 4 * 4  # 4 ACLs
    assert len([p for p in report.opened if "/acls/" in p and "/auth/" in p]) == 2 * 4 + 1


def test_without_lio_configfs_rtsroot_sets_it_up_and_dumps(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", str(tmp_path / "no-configfs"))
    fake.dump = recorded_dump(EXPORTED)
    assert lio.exports() == lio.parse_dump(recorded_dump(EXPORTED))
    assert fake.dumps == 1


def test_the_lean_read_fails_where_rtslibs_dump_fails(lean, cfs_root):
    lean.build(recorded_dump(EXPORTED))
    backstore = cfs_root / "core" / "iblock_0" / "xcl-lv0"
    (backstore / "enable").write_text("0\n")  # unconfigured: rtslib refuses to read its serial
    with pytest.raises(CommandExecutionError, match="cannot read the LIO configuration: backstore xcl-lv0 is not"):
        lio.exports()
    (backstore / "enable").write_text("1\n")
    lun = cfs_root / "iscsi" / TARGET / "tpgt_1" / "lun" / "lun_0"
    next(p for p in lun.iterdir() if p.is_symlink()).unlink()
    with pytest.raises(CommandExecutionError, match="broken LUN"):
        lio.exports()
    (lun / "alias0").symlink_to(backstore)
    assert lio.exports() == lio.parse_dump(recorded_dump(EXPORTED))
    # an attribute this kernel does not have is left out, as CFSNode.dump() leaves it out
    (cfs_root / "iscsi" / TARGET / "tpgt_1" / "attrib" / "authentication").unlink()
    assert lio.exports()["targets"][TARGET]["tpgs"][0]["authentication"] is None


def test_targets_of_other_fabrics_are_read_with_that_fabrics_features(cfs_root):
    """SYNTHETIC: a loopback target (no portals, no ACLs, no enable file) next to the recorded export."""
    root = build_configfs(cfs_root, recorded_dump(EXPORTED))
    tpg = root / "loopback" / "naa.5001405abcdef012" / "tpgt_1"
    (tpg / "lun" / "lun_3").mkdir(parents=True)
    _link(tpg / "lun" / "lun_3" / "a1", root / "core" / "iblock_0" / "xcl-lv0")
    _put(tpg / "nexus", "naa.5001405fedcba987")
    (tpg / "np").mkdir()  # never listed: loopback has no portals
    result = lio.parse_dump(lio._read_configfs(str(root)))  # pylint: disable=protected-access
    assert result["targets"]["naa.5001405abcdef012"] == {"fabric": "loopback", "tpgs": [{
        "tag": 1, "enable": True, "authentication": None, "generate_node_acls": None,
        "luns": [{"index": 3, "backstore": "xcl-lv0", "plugin": "block"}], "portals": [], "acls": {}}]}  # fmt: skip
    assert result["backstores"]["xcl-lv0"]["luns"] == [
        {"target": TARGET, "tpg": 1, "index": 0}, {"target": "naa.5001405abcdef012", "tpg": 1, "index": 3}
    ]
