"""xencluster_iscsi execution module: sessions from one iscsiadm call plus sysfs, login/logout, CHAP.

``iscsiadm`` answers come from recordings made on a lab dom0
(tests/recordings/iscsi/); the sysfs files ``sessions`` reads are rebuilt in
a temporary directory from the recording's ``sysfs.json``.
"""

import glob
import json
import os
import pathlib
import sys

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_iscsi as iscsi

RECORDINGS = pathlib.Path(__file__).resolve().parents[1] / "recordings" / "iscsi"
NONE = "lab-node2-no-session"
ONE = "lab-node2-xcl-session"
TARGET = "iqn.2025-01.lab.xen:xcl-node1"
PORTAL = "192.168.100.1:3260"
NODE = ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL]
LEGS = "lab-node1-leg-sessions"  # five leg sessions, FREE (their owner killed), recovery_tmo 120

INJECTIONS = [
    "", "x; rm -rf /", "$(reboot)", "`id`", "x|cat", "x\n", "-ff", "--login", "../../etc", "a b",
    "x'", "x>/etc/passwd", "x\x00", "ｘ", None, 7, ["x"],
    "iqn.2025-01.lab:node2", "iqn.2025-01.lab.xen:x_y", "iqn.2025-01.lab.xen:x;reboot",
    "iqn.2025-01.lab.xen:x\n", "iqn.2025-01.lab.xen:$(id)",
]  # fmt: skip
BAD_PORTALS = [
    *INJECTIONS[:17], "192.168.100.1;reboot", "192.168.100.256", "192.168.100.1:0", "host.example",
    "0.0.0.0", "[::]:3260", "192.168.100.1:3260,1", "--portal=1.2.3.4",
]  # fmt: skip


def rec(name, what):
    return (RECORDINGS / name / what).read_text()


def meta(name):
    return json.loads(rec(name, "meta.json"))


def build_sysfs(root, name):
    """Rebuild the recorded /sys/class/iscsi_session files under ``root``."""
    for session, entry in json.loads(rec(name, "sysfs.json")).items():
        base = root / session
        base.mkdir(parents=True)
        for key in ("targetname", "state", "recovery_tmo"):
            if key in entry:
                (base / key).write_text(entry[key] + "\n")
        for block in entry["block"]:
            (base / block).mkdir(parents=True)
    return root


@pytest.fixture
def configure_loader_modules(run_all):
    return {iscsi: {"__salt__": {"cmd.run_all": run_all}}}


def answer(name, command):
    m = meta(name)["commands"][command]
    return {"retcode": m["rc"], "stdout": rec(name, f"{command}.out"), "stderr": m["stderr"]}


@pytest.fixture
def no_session(run_all, tmp_path, monkeypatch):
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(NONE, "session")
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(build_sysfs(tmp_path / "sys", NONE)))
    return run_all


@pytest.fixture
def one_session(run_all, tmp_path, monkeypatch):
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(ONE, "session")
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(build_sysfs(tmp_path / "sys", ONE)))
    return run_all


# --- sessions ------------------------------------------------------------------------


def test_no_session_is_an_empty_list_not_an_error(no_session):
    assert meta(NONE)["commands"]["session"]["rc"] == 21
    assert "No active sessions" in meta(NONE)["commands"]["session"]["stderr"]
    assert iscsi.sessions() == []
    assert no_session.calls == [iscsi.SESSION_ARGV]


def test_recorded_session_with_its_block_device(one_session):
    (session,) = iscsi.sessions()
    assert one_session.calls == [iscsi.SESSION_ARGV]  # one call, the rest is sysfs
    assert session["target"] == TARGET and session["portal"] == PORTAL
    assert session["transport"] == "tcp" and session["tpgt"] == 1
    assert session["state"] == "LOGGED_IN"
    (dev,) = session["devices"]
    assert dev["lun"] == 0 and dev["device"].startswith("/dev/sd")
    assert dev["hctl"].endswith(":0:0:0")


def test_many_sessions_are_still_one_call(run_all, tmp_path, monkeypatch):
    """SYNTHETIC: 40 sessions built from the recorded line and sysfs layout."""
    lines, root = [], tmp_path / "sys"
    for sid in range(1, 41):
        target = f"{TARGET}{sid}"
        lines.append(f"tcp: [{sid}] {PORTAL},1 {target} (non-flash)")
        base = root / f"session{sid}"
        base.mkdir(parents=True)
        (base / "state").write_text("LOGGED_IN\n")
        (base / "targetname").write_text(target + "\n")
        for lun in range(3):
            (base / f"device/target{sid}:0:0/{sid}:0:0:{lun}/block/sd{chr(97 + lun)}{sid}").mkdir(parents=True)
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = "\n".join(lines) + "\n"
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(root))
    result = iscsi.sessions()
    assert len(result) == 40 and all(len(s["devices"]) == 3 for s in result)
    assert result[39]["target"] == f"{TARGET}40" and result[39]["devices"][2]["device"] == "/dev/sdc40"
    assert run_all.calls == [iscsi.SESSION_ARGV]


def test_unexpected_session_output_is_an_error(run_all):
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = "something else entirely\n"
    with pytest.raises(CommandExecutionError, match="unexpected"):
        iscsi.sessions()


def test_iscsiadm_failure_carries_its_stderr(run_all):
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = {"retcode": 7, "stdout": "", "stderr": "iscsiadm: boom"}
    with pytest.raises(CommandExecutionError, match="rc 7.*iscsiadm: boom"):
        iscsi.sessions()


# --- discovery ---------------------------------------------------------------------


def test_recorded_discovery(run_all):
    argv = meta(ONE)["commands"]["discovery"]["argv"]
    run_all.outputs[tuple(argv)] = rec(ONE, "discovery.out")
    found = iscsi.discover("192.168.100.1")
    assert run_all.calls == [argv]
    assert {"portal": PORTAL, "tpgt": 1, "target": TARGET} in found


@pytest.mark.parametrize("bad", BAD_PORTALS)
def test_bad_portals_never_reach_iscsiadm(run_all, bad):
    with pytest.raises(SaltInvocationError):
        iscsi.discover(bad)
    with pytest.raises(SaltInvocationError):
        iscsi.login(TARGET, bad)
    with pytest.raises(SaltInvocationError):
        iscsi.logout(TARGET, bad)
    assert run_all.calls == []


@pytest.mark.parametrize("bad", INJECTIONS)
def test_bad_targets_never_reach_iscsiadm(run_all, bad):
    for call in (iscsi.login, iscsi.logout, iscsi.clear_chap):
        with pytest.raises(SaltInvocationError):
            call(bad, PORTAL)
    with pytest.raises(SaltInvocationError):
        iscsi.set_chap(bad, PORTAL, "node2", "long-enough-secret")
    assert run_all.calls == []


# --- login / logout ------------------------------------------------------------------


def test_login_when_the_session_is_up_changes_nothing(one_session):
    one_session.outputs[tuple(NODE)] = "node.name = x\n"
    one_session.outputs[(*NODE, "-o", "show")] = "node.name = x\nnode.startup = automatic\n"
    ret = iscsi.login(TARGET, "192.168.100.1")
    assert ret["changed"] is False and ret["changes"] == []
    assert ret["session"]["devices"][0]["device"].startswith("/dev/sd")
    assert [c for c in one_session.calls if "--login" in c or "update" in c] == []


def test_login_creates_the_record_sets_automatic_and_logs_in(run_all, tmp_path, monkeypatch):
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(build_sysfs(tmp_path / "sys", ONE)))
    run_all.outputs[tuple(NODE)] = {"retcode": 21, "stderr": "iscsiadm: No records found\n"}
    run_all.outputs[(*NODE, "-o", "new")] = "New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] ...] added\n"
    run_all.outputs[(*NODE, "-o", "show")] = "node.startup = manual\n"
    run_all.outputs[(*NODE, "-o", "update", "-n", "node.startup", "-v", "automatic")] = ""
    run_all.outputs[(*NODE, "--login")] = "Login ... successful.\n"
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(NONE, "session")

    def after(argv):
        if "--login" in argv:
            run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(ONE, "session")

    run_all.effects["iscsiadm"] = after
    ret = iscsi.login(TARGET, PORTAL)
    assert ret["changes"] == [
        f"node record {TARGET} {PORTAL} created",
        "node.startup set to automatic",
        f"logged in to {TARGET} on {PORTAL}",
    ]
    assert ret["session"]["state"] == "LOGGED_IN"


# --- replacement_timeout -----------------------------------------------------------------

TIMEOUT_UPDATE = (*NODE, "-o", "update", "-n", "node.session.timeo.replacement_timeout")


RECORD_TEXT = (RECORDINGS / LEGS / "node.2.out").read_text()  # a leg's node record, recorded


def record_with_timeout(seconds):
    """The recorded node record with ``seconds`` as its replacement_timeout."""
    text = RECORD_TEXT
    assert text.count("node.session.timeo.replacement_timeout = 120\n") == 1
    return text.replace("replacement_timeout = 120\n", f"replacement_timeout = {seconds}\n")


@pytest.fixture
def timed_session(one_session, tmp_path):
    """The recorded session, its sysfs recovery_tmo at open-iscsi's default 120, its node record."""
    base = pathlib.Path(iscsi.SYSFS_SESSIONS) / "session2"
    (base / "recovery_tmo").write_text("120\n")
    one_session.outputs[(*NODE, "-o", "show")] = record_with_timeout(120)
    one_session.outputs[(*TIMEOUT_UPDATE, "-v", "20")] = ""
    return base


def test_recorded_leg_sessions_of_a_dead_owner(run_all, tmp_path, monkeypatch):
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(LEGS, "session")
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(build_sysfs(tmp_path / "sys", LEGS)))
    found = iscsi.sessions()
    assert [(s["sid"], s["target"].split(":", 1)[1], s["state"], s["recovery_tmo"]) for s in found] == [
        (2, "web1.root.node2", "FREE", 120), (3, "web1.data.node2", "FREE", 120), (4, "app1.root.node2", "FREE", 120),
        (5, "db1.root.node2", "FREE", 120), (6, "svc1.root.node2", "FREE", 120),
    ]  # fmt: skip
    assert found[4]["devices"] == [{"lun": 0, "hctl": "2:0:0:0", "device": "/dev/sda"}]
    assert run_all.calls == [iscsi.SESSION_ARGV]
    for sid in range(2, 7):  # every recorded record: as login sets it up, with open-iscsi's timeout
        record = (RECORDINGS / LEGS / f"node.{sid}.out").read_text()
        assert iscsi._record_timeout(record) == 120  # pylint: disable=protected-access
        assert "\nnode.startup = automatic\n" in record


def test_the_recorded_record_parses_to_its_timeout():
    assert iscsi._record_timeout(RECORD_TEXT) == 120  # pylint: disable=protected-access
    assert iscsi._record_timeout(RECORD_TEXT.replace("replacement_timeout", "x")) is None  # pylint: disable=protected-access


def test_set_replacement_timeout_changes_the_record_and_the_live_session_once(timed_session, one_session):
    ret = iscsi.set_replacement_timeout(TARGET, PORTAL, 20)
    assert ret == {"changed": True, "changes": [
        "node.session.timeo.replacement_timeout 120 -> 20 (node record)", "recovery_tmo of session 2 120 -> 20",
    ]}  # fmt: skip
    assert (timed_session / "recovery_tmo").read_text() == "20\n"
    assert [c for c in one_session.calls if "update" in c] == [[*TIMEOUT_UPDATE, "-v", "20"]]
    one_session.outputs[(*NODE, "-o", "show")] = record_with_timeout(20)
    one_session.calls.clear()
    assert iscsi.set_replacement_timeout(TARGET, PORTAL, 20) == {"changed": False, "changes": []}
    assert [c for c in one_session.calls if "update" in c] == []


def test_set_replacement_timeout_reports_the_kernels_refusal(timed_session, one_session):
    (timed_session / "recovery_tmo").unlink()
    (timed_session / "recovery_tmo").mkdir()  # an unwritable attribute, as for a session in recovery (EBUSY)
    with pytest.raises(CommandExecutionError) as exc:
        iscsi.set_replacement_timeout(TARGET, PORTAL, 20)
    assert f"cannot set recovery_tmo of session 2 ({TARGET} on {PORTAL}, state LOGGED_IN)" in str(exc.value)
    assert [c for c in one_session.calls if "update" in c] == [[*TIMEOUT_UPDATE, "-v", "20"]]  # the record is set


def test_set_replacement_timeout_needs_a_node_record(run_all):
    run_all.outputs[(*NODE, "-o", "show")] = {"retcode": 21, "stderr": "iscsiadm: No records found\n"}
    with pytest.raises(CommandExecutionError, match=f"no node record for {TARGET} on {PORTAL}"):
        iscsi.set_replacement_timeout(TARGET, PORTAL, 20)


@pytest.mark.parametrize("bad", [0, -1, 3601, "20", "20; reboot", True, 2.5, None])
def test_bad_timeouts_never_reach_iscsiadm(run_all, bad):
    with pytest.raises(SaltInvocationError, match="replacement_timeout must be 1 to 3600 seconds"):
        iscsi.set_replacement_timeout(TARGET, PORTAL, bad)
    with pytest.raises(SaltInvocationError, match="replacement_timeout must be 1 to 3600 seconds"):
        iscsi.login(TARGET, PORTAL, replacement_timeout=bad if bad is not None else "x")
    assert run_all.calls == []
    with pytest.raises(SaltInvocationError, match="replacement_timeout must be 1 to 3600 seconds"):
        iscsi.replacement_timeout_arg(bad)


@pytest.mark.parametrize("good", [1, 20, 3600])
def test_a_good_timeout_is_returned_as_it_is(run_all, good):
    assert iscsi.replacement_timeout_arg(good) == good and run_all.calls == []


def test_login_sets_the_timeout_on_the_record_before_it_logs_in(run_all, tmp_path, monkeypatch):
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(build_sysfs(tmp_path / "sys", ONE)))
    run_all.outputs[tuple(NODE)] = "node.name = x\n"
    run_all.outputs[(*NODE, "-o", "show")] = record_with_timeout(120)  # node.startup automatic already
    run_all.outputs[(*TIMEOUT_UPDATE, "-v", "20")] = ""
    run_all.outputs[(*NODE, "--login")] = "Login ... successful.\n"
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(NONE, "session")
    run_all.effects["iscsiadm"] = lambda argv: "--login" in argv and run_all.outputs.update(
        {tuple(iscsi.SESSION_ARGV): answer(ONE, "session")})
    ret = iscsi.login(TARGET, PORTAL, replacement_timeout=20)
    assert ret["changes"] == ["node.session.timeo.replacement_timeout 120 -> 20 (node record)",
                              f"logged in to {TARGET} on {PORTAL}"]  # fmt: skip
    updates = [i for i, c in enumerate(run_all.calls) if "update" in c]
    assert updates and updates[-1] < run_all.calls.index([*NODE, "--login"])


def test_login_race_with_an_existing_session_is_not_an_error(no_session):
    no_session.outputs[tuple(NODE)] = "node.name = x\n"
    no_session.outputs[(*NODE, "-o", "show")] = "node.startup = automatic\n"
    no_session.outputs[(*NODE, "--login")] = {"retcode": 15, "stderr": "iscsiadm: session exists\n"}
    assert iscsi.login(TARGET, PORTAL)["changed"] is False


def test_login_failure_carries_iscsiadm_stderr(no_session):
    no_session.outputs[tuple(NODE)] = "node.name = x\n"
    no_session.outputs[(*NODE, "-o", "show")] = "node.startup = automatic\n"
    no_session.outputs[(*NODE, "--login")] = {
        "retcode": 24, "stderr": "iscsiadm: initiator reported error (24 - iSCSI login failed due to authorization failure)\n"
    }  # fmt: skip
    with pytest.raises(CommandExecutionError, match="rc 24.*authorization failure"):
        iscsi.login(TARGET, PORTAL)


def _login_failure(retcode, reason):
    return {"retcode": retcode, "stderr": (
        f"iscsiadm: Could not login to [iface: default, target: {TARGET}, portal: 192.168.100.1,3260].\n"
        f"iscsiadm: initiator reported error ({retcode} - {reason})\niscsiadm: Could not log into all portals\n"
    )}  # fmt: skip


@pytest.mark.parametrize(
    "retcode, reason",
    [
        (8, "connection timed out"),  # nothing listens on the portal yet
        (19, "encountered non-retryable iSCSI login failure"),  # LIO: target not found / no ACL
        (24, "iSCSI login failed due to authorization failure"),  # no ACL / CHAP on older open-iscsi
        (5, "encountered iSCSI login failure"),  # target error (e.g. TPG not enabled yet)
        (4, "iSCSI transport error"),
        (11, "iSCSI PDU timed out"),
    ],
)
def test_a_login_the_target_refuses_for_now_is_marked_retryable(no_session, retcode, reason):
    no_session.outputs[tuple(NODE)] = "node.name = x\n"
    no_session.outputs[(*NODE, "-o", "show")] = "node.startup = automatic\n"
    no_session.outputs[(*NODE, "--login")] = _login_failure(retcode, reason)
    with pytest.raises(CommandExecutionError, match=f"--login failed \\(rc {retcode}\\)") as err:
        iscsi.login(TARGET, PORTAL)
    assert err.value.info["retryable"] is True
    assert err.value.info["retcode"] == retcode and reason in err.value.info["stderr"]
    assert reason in err.value.error


@pytest.mark.parametrize(
    "retcode, reason",
    [
        (20, "could not connect to iscsid"),
        (12, "iSCSI driver not found. Please make sure it is loaded, and retry the operation"),
        (7, "invalid parameter"),
        (6, "iSCSI database failure"),
    ],
)
def test_a_local_login_failure_is_not_retryable(no_session, retcode, reason):
    no_session.outputs[tuple(NODE)] = "node.name = x\n"
    no_session.outputs[(*NODE, "-o", "show")] = "node.startup = automatic\n"
    no_session.outputs[(*NODE, "--login")] = _login_failure(retcode, reason)
    with pytest.raises(CommandExecutionError, match=f"rc {retcode}") as err:
        iscsi.login(TARGET, PORTAL)
    assert "retryable" not in err.value.info


def test_only_the_login_call_is_marked_retryable(no_session):
    """The same exit code from a node record call (local) is not a partner that is not ready."""
    no_session.outputs[tuple(NODE)] = "node.name = x\n"
    no_session.outputs[(*NODE, "-o", "show")] = {"retcode": 8, "stderr": "iscsiadm: odd\n"}
    with pytest.raises(CommandExecutionError, match="-o show failed") as err:
        iscsi.login(TARGET, PORTAL)
    assert "retryable" not in err.value.info
    with pytest.raises(SaltInvocationError):
        iscsi.login("iqn.2025-01.lab:bad", PORTAL)


def test_logout_and_delete_are_idempotent(run_all):
    run_all.outputs[(*NODE, "--logout")] = {"retcode": 21, "stderr": "iscsiadm: No matching sessions found\n"}
    run_all.outputs[(*NODE, "-o", "delete")] = {"retcode": 21, "stderr": "iscsiadm: No records found\n"}
    assert iscsi.logout(TARGET, PORTAL, delete=True) == {"changed": False, "changes": []}
    run_all.outputs[(*NODE, "--logout")] = "Logout of [sid: 1, ...] successful.\n"
    run_all.outputs[(*NODE, "-o", "delete")] = ""
    assert iscsi.logout(TARGET, PORTAL, delete=True)["changes"] == [
        f"logged out of {TARGET} on {PORTAL}",
        f"node record {TARGET} {PORTAL} deleted",
    ]


def test_rescan(no_session, run_all):
    run_all.outputs[tuple(iscsi.RESCAN_ARGV)] = {"retcode": 21, "stderr": "iscsiadm: No session found.\n"}
    assert iscsi.rescan() == []


# --- CHAP ------------------------------------------------------------------------------


def test_set_chap_updates_the_record_and_keeps_secrets_out_of_logs_and_returns(run_all, monkeypatch):
    seen = []
    run_all.outputs[tuple(NODE)] = "node.name = x\n"
    run_all.outputs["iscsiadm"] = ""
    original = run_all.__call__

    def call(argv, **kwargs):
        seen.append(kwargs)
        return original(argv, **kwargs)

    monkeypatch.setitem(iscsi.__salt__, "cmd.run_all", call)
    ret = iscsi.set_chap(TARGET, PORTAL, "node2", "initiator-secret-1", "node1", "target-secret-22")
    updates = [c[c.index("-n") + 1:] for c in run_all.calls if "update" in c]
    assert updates == [
        ["node.session.auth.authmethod", "-v", "CHAP"],
        ["node.session.auth.username", "-v", "node2"],
        ["node.session.auth.password", "-v", "initiator-secret-1"],
        ["node.session.auth.username_in", "-v", "node1"],
        ["node.session.auth.password_in", "-v", "target-secret-22"],
    ]
    for kwargs in seen[1:]:
        assert kwargs["output_loglevel"] == "quiet"
        redacted = kwargs["log_callback"]("iscsiadm ... -v initiator-secret-1 target-secret-22")
        assert "secret-1" not in redacted and "secret-22" not in redacted
    assert "secret" not in json.dumps(ret)


def test_set_chap_failure_does_not_echo_the_secret(run_all):
    run_all.outputs[tuple(NODE)] = "node.name = x\n"
    run_all.outputs["iscsiadm"] = {"retcode": 6, "stderr": "iscsiadm: cannot set initiator-secret-1\n"}
    with pytest.raises(CommandExecutionError) as exc:
        iscsi.set_chap(TARGET, PORTAL, "node2", "initiator-secret-1")
    assert "initiator-secret-1" not in str(exc.value) and "initiator-secret-1" not in json.dumps(exc.value.info)


@pytest.mark.parametrize(
    "args",
    [("node2", "short"), ("no de", "long-enough-secret"), ("node2", "has space secret"),
     ("node2", "long-enough-secret", "node1"), ("node2", "$(id)-long-secret")],
)  # fmt: skip
def test_bad_chap_never_reaches_iscsiadm(run_all, args):
    with pytest.raises(SaltInvocationError) as exc:
        iscsi.set_chap(TARGET, PORTAL, *args)
    assert "secret" not in str(exc.value)
    assert run_all.calls == []


# --- misc --------------------------------------------------------------------------------


def test_initiator_name(tmp_path, monkeypatch):
    f = tmp_path / "initiatorname.iscsi"
    f.write_text("## DO NOT EDIT\nInitiatorName=iqn.2025-01.lab.xen:node2\n")
    monkeypatch.setattr(iscsi, "INITIATOR_FILE", str(f))
    assert iscsi.initiator_name() == "iqn.2025-01.lab.xen:node2"
    f.write_text("# nothing\n")
    with pytest.raises(CommandExecutionError):
        iscsi.initiator_name()


def test_virtual_without_iscsiadm(monkeypatch):
    monkeypatch.setattr(iscsi.salt.utils.path, "which", lambda name: None)
    ok, reason = iscsi.__virtual__()
    assert ok is False and "iscsiadm" in reason


def test_every_public_function_has_a_cli_example():
    for name in ("initiator_name", "discover", "login", "logout", "sessions", "rescan", "set_chap",
                 "clear_chap", "valid_iqn"):  # fmt: skip
        assert "CLI Example:" in getattr(iscsi, name).__doc__, name


# --- sysfs reads per session -------------------------------------------------------------


def _glob_devices(base):
    """The glob ``sessions`` used before (reference): device/target*/*/block/*, sorted, then by LUN."""
    devices = []
    for path in sorted(glob.glob(os.path.join(base, "device", "target*", "*", "block", "*"))):
        parts = path.split(os.sep)
        hctl, name = parts[-3], parts[-1]
        if iscsi._HCTL.fullmatch(hctl) and iscsi._BLOCK.fullmatch(name):  # pylint: disable=protected-access
            devices.append({"lun": int(hctl.rsplit(":", 1)[1]), "hctl": hctl, "device": f"/dev/{name}"})
    devices.sort(key=lambda d: d["lun"])
    return devices


def build_busy_session(base, sid=3):
    """SYNTHETIC: a session's sysfs with what a real one holds besides its disks, LUNs out of order."""
    device = base / "device"
    target = device / f"target{sid}:0:0"
    for lun, name in ((10, "sdk"), (2, "sdc"), (0, "sda"), (1, "sdb"), (3, "sr0")):
        (target / f"{sid}:0:0:{lun}" / "block" / name).mkdir(parents=True)
        (target / f"{sid}:0:0:{lun}" / "power").mkdir(exist_ok=True)
    (target / f"{sid}:0:0:4").mkdir()  # a LUN the sd driver has not bound yet: no block/
    (target / f"{sid}:0:0:5" / "block").mkdir(parents=True)  # ... or bound without a disk yet
    (target / f"{sid}:0:0:6" / "block" / ".hidden").mkdir(parents=True)
    (target / f"{sid}:0:0:7" / "block" / "SDX").mkdir(parents=True)  # not a kernel block name
    (target / "power").mkdir()
    (target / "uevent").write_text("DEVTYPE=scsi_target\n")
    (target / "subsystem").symlink_to(base)
    (device / f"connection{sid}:0").mkdir()
    (device / "iscsi_session" / f"session{sid}").mkdir(parents=True)
    (device / "targetx").write_text("a file named target*\n")
    (base / "state").write_text("LOGGED_IN\n")
    (base / "targetname").write_text(f"{TARGET}\n")
    return base


def test_session_devices_are_what_the_glob_found(tmp_path):
    base = build_busy_session(tmp_path / "session3")
    read = iscsi._session_sysfs  # pylint: disable=protected-access
    devices = read(3, root=str(tmp_path))["devices"]
    assert devices == _glob_devices(str(base))
    assert [d["device"] for d in devices] == ["/dev/sda", "/dev/sdb", "/dev/sdc", "/dev/sr0", "/dev/sdk"]
    assert read(9, root=str(tmp_path)) == {"state": None, "recovery_tmo": None, "devices": []}


@pytest.mark.parametrize("name", [NONE, ONE])
def test_recorded_sessions_are_unchanged(name, run_all, tmp_path, monkeypatch):
    root = build_sysfs(tmp_path / "sys", name)
    run_all.outputs[tuple(iscsi.SESSION_ARGV)] = answer(name, "session")
    monkeypatch.setattr(iscsi, "SYSFS_SESSIONS", str(root))
    expected = []
    for session in iscsi._parse_sessions(rec(name, "session.out")):  # pylint: disable=protected-access
        base = root / f"session{session['sid']}"
        state = (base / "state").read_text().strip()
        tmo = int((base / "recovery_tmo").read_text()) if (base / "recovery_tmo").exists() else None
        expected.append({**session, "state": state, "recovery_tmo": tmo, "devices": _glob_devices(str(base))})
    assert iscsi.sessions() == expected
    if name == ONE:
        assert expected == [{"sid": 2, "transport": "tcp", "portal": PORTAL, "tpgt": 1, "target": TARGET,
                             "state": "LOGGED_IN", "recovery_tmo": None,  # recorded before it was read
                             "devices": [{"lun": 0, "hctl": "2:0:0:0", "device": "/dev/sda"}]}]  # fmt: skip


class _IO:
    active = None
    hooked = False

    @classmethod
    def audit(cls, event, args):
        if cls.active is not None and event in ("open", "os.scandir", "os.listdir"):
            cls.active.append((event, str(args[0])))


def test_one_session_costs_one_read_and_a_listing_per_level(tmp_path, monkeypatch):
    """Per session: its state and recovery_tmo files, and device/, target*/ and each LUN's block/ listed once; no stat."""
    if not _IO.hooked:
        sys.addaudithook(_IO.audit)
        _IO.hooked = True
    build_sysfs(tmp_path / "sys", ONE)
    stats = []
    for name in ("stat", "lstat"):
        original = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _o=original, **k: stats.append(a[0]) or _o(*a, **k))
    events = _IO.active = []
    try:
        info = iscsi._session_sysfs(2, root=str(tmp_path / "sys"))  # pylint: disable=protected-access
    finally:
        _IO.active = None
    assert info["devices"] == [{"lun": 0, "hctl": "2:0:0:0", "device": "/dev/sda"}]
    base = str(tmp_path / "sys" / "session2")
    assert [(e, os.path.relpath(p, base)) for e, p in events] == [
        ("open", "state"),
        ("open", "recovery_tmo"),
        ("os.scandir", "device"),
        ("os.scandir", "device/target2:0:0"),
        ("os.scandir", "device/target2:0:0/2:0:0:0/block"),
    ]
    assert stats == []  # the glob stat-ed every entry of the target directory; targetname is not read
