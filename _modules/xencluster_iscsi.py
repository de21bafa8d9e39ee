"""
open-iscsi on xencluster dom0s: import the disk legs that peer dom0s export.

* ``sessions`` is ONE ``iscsiadm -m session`` call plus sysfs reads
  (``/sys/class/iscsi_session/session*/``): per session its state (one file)
  and its SCSI disks (one directory listing per level, no glob, no stat); it
  never scrapes ``-P3`` output.
* ``login`` is a no-op when the session is already up; it sets
  ``node.startup=automatic`` so the session comes back after a reboot.
* ``set_replacement_timeout`` sets how long I/O waits for a lost session
  before it fails (the node record for later logins, and sysfs
  ``recovery_tmo`` of the live session: iscsiadm has no way to change it).
* CHAP settings go through ``iscsiadm -m node -o update``; secrets are never
  returned or logged (Salt's command log is redacted for those calls).

Named ``xencluster_iscsi`` so it never shadows Salt's ``iscsi`` module.
"""

import ipaddress
import logging
import os
import re
import time

import salt.utils.path
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_iscsi"

INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"
SYSFS_SESSIONS = "/sys/class/iscsi_session"
DEFAULT_PORT = 3260
SESSION_ARGV = ["iscsiadm", "-m", "session"]
RESCAN_ARGV = ["iscsiadm", "-m", "session", "--rescan"]
DISCOVERY_ARGV = ["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p"]  # + "ip:port"

# iscsiadm exit codes (open-iscsi include/iscsi_err.h)
ISCSI_ERR_TRANS = 4
ISCSI_ERR_LOGIN = 5
ISCSI_ERR_TRANS_TIMEOUT = 8
ISCSI_ERR_PDU_TIMEOUT = 11
ISCSI_ERR_SESS_EXISTS = 15
ISCSI_ERR_FATAL_LOGIN = 19
ISCSI_ERR_NO_OBJS_FOUND = 21
ISCSI_ERR_LOGIN_AUTH_FAILED = 24
# Exit codes of ``--login`` meaning "the target is not (yet) there or does not (yet) let
# us in", which a later attempt may cure without any change on this host: nothing
# listens on the portal (iscsid retries the connect, then 8 "connection timed out"),
# a transport or PDU timeout (4, 11), a target error such as a disabled TPG (5 after
# iscsid's own retries), and the initiator-error login rejections LIO sends for an
# unknown target, a missing ACL or failed CHAP (19 "non-retryable iSCSI login
# failure"; 24 "authorization failure" on open-iscsi releases that tell it apart).
# login() marks such a failure with ``info["retryable"] = True``.
LOGIN_RETRYABLE = (
    ISCSI_ERR_TRANS,
    ISCSI_ERR_LOGIN,
    ISCSI_ERR_TRANS_TIMEOUT,
    ISCSI_ERR_PDU_TIMEOUT,
    ISCSI_ERR_FATAL_LOGIN,
    ISCSI_ERR_LOGIN_AUTH_FAILED,
)

# The same rule as xencluster_lio.valid_iqn (these files share nothing but __salt__).
_IQN_RE = re.compile(
    r"iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])"
    r"\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
    r"(?::[a-z0-9][a-z0-9.:-]{0,190})?"
)
_IQN_MAX = 223
_PORTAL_RE = re.compile(r"(?P<ip>[0-9.]{7,15}|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?")
_CHAP_USER_RE = re.compile(r"[A-Za-z0-9._:@-]{1,255}")
_CHAP_SECRET_RE = re.compile(r"[A-Za-z0-9!#%+,./:=@^_~-]{12,255}")
# "tcp: [1] 192.168.100.1:3260,1 iqn.2025-01.lab.xen:target.node1 (non-flash)"
_SESSION_LINE = re.compile(
    r"(?P<transport>[a-z0-9_]+): \[(?P<sid>[0-9]+)\] (?P<portal>\S+),(?P<tpgt>-?[0-9]+) (?P<target>\S+)(?: \((?P<flash>[a-z-]+)\))?"
)
# "192.168.100.1:3260,1 iqn.2025-01.lab.xen:target.node1"
_DISCOVERY_LINE = re.compile(r"(?P<portal>\S+),(?P<tpgt>-?[0-9]+) (?P<target>\S+)")
_NODE_TIMEOUT_RE = re.compile(r"^node\.session\.timeo\.replacement_timeout = (-?[0-9]+)$", re.M)
REPLACEMENT_TIMEOUT_KEY = "node.session.timeo.replacement_timeout"
MAX_REPLACEMENT_TIMEOUT = 3600
_HCTL = re.compile(r"[0-9]+:[0-9]+:[0-9]+:[0-9]+")
_BLOCK = re.compile(r"[a-z]+[a-z0-9]*")


def __virtual__():
    if not salt.utils.path.which("iscsiadm"):
        return (False, "xencluster_iscsi: iscsiadm (open-iscsi) is not installed")
    return __virtualname__


# --- validation and parsing (pure) ---------------------------------------------


def valid_iqn(iqn):
    """
    True if ``iqn`` is an IQN xencluster accepts (the rule of ``xencluster_lio.valid_iqn``).

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_iscsi.valid_iqn iqn.2025-01.lab.xen:node1
    """
    return isinstance(iqn, str) and len(iqn) <= _IQN_MAX and _IQN_RE.fullmatch(iqn) is not None


def _check_iqn(iqn, what="target IQN"):
    if not valid_iqn(iqn):
        raise SaltInvocationError(f"invalid {what}: {iqn!r}")
    return iqn


def _check_portal(portal):
    """'ip', 'ip:port' or '[ipv6]:port' -> 'ip:port' as iscsiadm prints it."""
    m = _PORTAL_RE.fullmatch(portal) if isinstance(portal, str) else None
    if not m:
        raise SaltInvocationError(f"invalid portal address: {portal!r}")
    ip, port = m.group("ip"), int(m.group("port") or DEFAULT_PORT)
    try:
        if ip.startswith("["):
            ip = f"[{ipaddress.IPv6Address(ip[1:-1]).compressed}]"
        else:
            ip = str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise SaltInvocationError(f"invalid portal address: {portal!r}")
    if not 1 <= port <= 65535 or ip in ("0.0.0.0", "[::]"):
        raise SaltInvocationError(f"invalid portal address: {portal!r}")
    return f"{ip}:{port}"


def _parse_sessions(stdout):
    """[{sid, transport, portal, tpgt, target}] from ``iscsiadm -m session``."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _SESSION_LINE.fullmatch(line)
        if not m:
            raise CommandExecutionError(f"unexpected iscsiadm -m session line: {line!r}")
        out.append(
            {
                "sid": int(m["sid"]),
                "transport": m["transport"],
                "portal": m["portal"],
                "tpgt": int(m["tpgt"]),
                "target": m["target"],
            }
        )
    return out


def _parse_discovery(stdout):
    """[{portal, tpgt, target}] from ``iscsiadm -m discovery -t sendtargets``."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _DISCOVERY_LINE.fullmatch(line)
        if not m:
            raise CommandExecutionError(f"unexpected iscsiadm discovery line: {line!r}")
        out.append({"portal": m["portal"], "tpgt": int(m["tpgt"]), "target": m["target"]})
    return out


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _scandir(path):
    """The entries of directory ``path`` (one ``scandir``); none if it is missing."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _session_devices(base):
    """
    [{lun, hctl, device}] of session directory ``base``: ``device/target*/<H:C:T:L>/block/<name>``.

    One ``scandir`` per level and no ``stat``: ``device``, each ``target*``
    directory in it (one per iSCSI session), and ``block`` of each LUN (a
    SCSI device without a block device, e.g. before ``sd`` binds, has none).
    Sorted by LUN, ties by path, as the glob this replaces sorted them.
    """
    found = []
    for target in _scandir(os.path.join(base, "device")):
        if not target.name.startswith("target") or not target.is_dir():
            continue
        for lun in _scandir(target.path):
            if not _HCTL.fullmatch(lun.name):
                continue
            for block in _scandir(os.path.join(lun.path, "block")):
                if _BLOCK.fullmatch(block.name):
                    key = (int(lun.name.rsplit(":", 1)[1]), f"{target.name}/{lun.name}/block/{block.name}")
                    found.append((key, {"lun": key[0], "hctl": lun.name, "device": f"/dev/{block.name}"}))
    return [device for _, device in sorted(found, key=lambda item: item[0])]


def _int_or_none(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _session_sysfs(sid, root=None):
    """State, recovery timeout and SCSI disks of session ``sid`` from sysfs: two reads and ~3 listings."""
    base = os.path.join(root or SYSFS_SESSIONS, f"session{sid}")
    return {
        "state": _read(os.path.join(base, "state")),
        "recovery_tmo": _int_or_none(_read(os.path.join(base, "recovery_tmo"))),
        "devices": _session_devices(base),
    }


# --- running iscsiadm ----------------------------------------------------------


def _redactor(secrets):
    def _cb(msg):
        for secret in secrets:
            msg = msg.replace(secret, "XXX-REDACTED-XXX")
        return msg

    return _cb


def _run(argv, ok=(0,), secrets=()):
    """Run iscsiadm; returns the result dict; raises on a return code not in ``ok``."""
    kwargs = {"python_shell": False, "ignore_retcode": True}
    if secrets:
        kwargs.update(log_callback=_redactor(secrets), output_loglevel="quiet")
    res = __salt__["cmd.run_all"](argv, **kwargs)
    if res["retcode"] not in ok:
        shown = _redactor(secrets)(" ".join(argv)) if secrets else " ".join(argv)
        stderr = _redactor(secrets)(res.get("stderr", "")) if secrets else res.get("stderr", "")
        raise CommandExecutionError(
            f"{shown} failed (rc {res['retcode']}): {stderr.strip()}",
            info={"stderr": stderr, "retcode": res["retcode"]},
        )
    return res


def _node(target, portal):
    return ["iscsiadm", "-m", "node", "-T", target, "-p", portal]


# --- public --------------------------------------------------------------------


def initiator_name():
    """
    This host's iSCSI initiator name (``InitiatorName=`` in /etc/iscsi/initiatorname.iscsi).

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_iscsi.initiator_name
    """
    text = _read(INITIATOR_FILE)
    if text is None:
        raise CommandExecutionError(f"cannot read {INITIATOR_FILE}")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("InitiatorName="):
            return line.split("=", 1)[1].strip()
    raise CommandExecutionError(f"no InitiatorName= in {INITIATOR_FILE}")


def sessions():
    """
    The iSCSI sessions of this host: ONE ``iscsiadm -m session`` call plus sysfs reads.

    Returns a list of ``{sid, transport, target, portal, tpgt, state,
    recovery_tmo, devices: [{lun, hctl, device}]}``; ``state`` is the
    kernel's session state (``LOGGED_IN``, ``FAILED``, ``FREE``),
    ``recovery_tmo`` the seconds its I/O waits for a lost connection before
    it fails (None if unreadable), and ``device`` the SCSI disk
    (``/dev/sdX``) of each LUN. No session is an empty list, not an error.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_iscsi.sessions
    """
    res = _run(SESSION_ARGV, ok=(0, ISCSI_ERR_NO_OBJS_FOUND))
    if res["retcode"] == ISCSI_ERR_NO_OBJS_FOUND:
        return []
    out = []
    for session in _parse_sessions(res["stdout"]):
        info = _session_sysfs(session["sid"])
        session.update(info)
        out.append(session)
    return out


def discover(portal):
    """
    SendTargets discovery on ``portal`` (``ip`` or ``ip:port``); creates the node records.

    Returns ``[{portal, tpgt, target}]``.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.discover 192.168.100.1
    """
    portal = _check_portal(portal)
    res = _run([*DISCOVERY_ARGV, portal])
    return _parse_discovery(res["stdout"])


def _ensure_node(target, portal):
    """Create the node record if discovery did not; True if it was created."""
    res = _run(_node(target, portal), ok=(0, ISCSI_ERR_NO_OBJS_FOUND))
    if res["retcode"] == 0:
        return False
    _run([*_node(target, portal), "-o", "new"])
    return True


def login(target, portal, wait=15, replacement_timeout=None):
    """
    Log in to ``target`` on ``portal``; a no-op when that session is already up.

    Creates the node record if needed and sets ``node.startup=automatic`` so
    the session is restored at boot. ``replacement_timeout`` (seconds, 1 to
    3600; default: leave the record's) is set on the node record before a
    new login, so the new session has it (an existing session is left as is:
    ``set_replacement_timeout`` changes a live one). After a new login it waits up to
    ``wait`` seconds (sysfs polling only) for the kernel to attach the LUNs'
    block devices. Returns ``{"changed", "changes", "session"}`` (the session
    as ``sessions`` shows it).

    A failed ``--login`` raises ``CommandExecutionError`` with ``info``
    ``{"stderr", "retcode"}``; when its exit code says the target is not (yet)
    reachable or does not (yet) let this initiator in (``LOGIN_RETRYABLE``:
    no portal listening, target not found, no ACL, authentication failure),
    ``info`` also has ``"retryable": True``: the caller may try again later
    (``xencluster_leg`` does while the partner dom0 is still converging).

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.login iqn.2025-01.lab.xen:node1 192.168.100.1
    """
    target, portal = _check_iqn(target), _check_portal(portal)
    if replacement_timeout is not None:
        replacement_timeout = replacement_timeout_arg(replacement_timeout)
    changes = []
    if _ensure_node(target, portal):
        changes.append(f"node record {target} {portal} created")
    record = _run([*_node(target, portal), "-o", "show"])["stdout"]
    if not re.search(r"^node\.startup = automatic$", record, re.M):
        _run([*_node(target, portal), "-o", "update", "-n", "node.startup", "-v", "automatic"])
        changes.append("node.startup set to automatic")
    if replacement_timeout is not None:
        changes.extend(_update_record_timeout(target, portal, record, replacement_timeout))
    current = _find(sessions(), target, portal)
    if current is None:
        # A session the kernel is recovering (state FAILED) is left to the kernel.
        try:
            res = _run([*_node(target, portal), "--login"], ok=(0, ISCSI_ERR_SESS_EXISTS))
        except CommandExecutionError as exc:
            info = exc.info if isinstance(exc.info, dict) else {}
            if info.get("retcode") not in LOGIN_RETRYABLE:
                raise
            raise CommandExecutionError(exc.error, info={**info, "retryable": True}) from exc
        if res["retcode"] == 0:
            changes.append(f"logged in to {target} on {portal}")
        current = _find(sessions(), target, portal)
        current = _wait_for_devices(current, wait)
    return {"changed": bool(changes), "changes": changes, "session": current}


def replacement_timeout_arg(seconds):
    """
    ``seconds`` if it is a valid ``replacement_timeout`` (a whole number from 1 to 3600), else
    ``SaltInvocationError`` saying why: the check of ``login`` and ``set_replacement_timeout``,
    for states that refuse a bad argument before anything runs.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.replacement_timeout_arg 20
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= MAX_REPLACEMENT_TIMEOUT:
        raise SaltInvocationError(f"replacement_timeout must be 1 to {MAX_REPLACEMENT_TIMEOUT} seconds: {seconds!r}")
    return seconds


def _record_timeout(record):
    """The replacement_timeout of a node record (``-o show`` text), or None."""
    found = _NODE_TIMEOUT_RE.search(record)
    return int(found.group(1)) if found else None


def _update_record_timeout(target, portal, record, seconds):
    """Set the record's replacement_timeout unless it has it; the change lines."""
    old = _record_timeout(record)
    if old == seconds:
        return []
    _run([*_node(target, portal), "-o", "update", "-n", REPLACEMENT_TIMEOUT_KEY, "-v", str(seconds)])
    return [f"{REPLACEMENT_TIMEOUT_KEY} {old} -> {seconds} (node record)"]


def _write_recovery_tmo(session, seconds):
    """Write a live session's sysfs ``recovery_tmo`` (the kernel refuses it while the session recovers)."""
    path = os.path.join(SYSFS_SESSIONS, f"session{session['sid']}", "recovery_tmo")
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(f"{seconds}\n")
    except OSError as exc:
        raise CommandExecutionError(
            f"cannot set recovery_tmo of session {session['sid']} ({session['target']} on {session['portal']}, "
            f"state {session.get('state')}): {path}: {exc.strerror or exc}",
            info={"stderr": str(exc)},
        ) from exc


def set_replacement_timeout(target, portal, seconds):
    """
    Set how long I/O to ``target`` on ``portal`` waits for a lost session before it fails.

    ``seconds`` (1 to 3600) goes to the node record's
    ``node.session.timeo.replacement_timeout`` (the next login and every boot
    use it) and to the live session's sysfs ``recovery_tmo`` (iscsiadm
    cannot change a running session). Both are written only when they differ:
    a second call changes nothing. The node record must exist. The kernel
    refuses the sysfs write while the session is recovering (state
    ``FAILED``): that is an error, and the record is still updated. Returns
    ``{"changed", "changes"}``.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.set_replacement_timeout iqn.2025-01.lab.xen:node1 192.168.100.1 20
    """
    target, portal = _check_iqn(target), _check_portal(portal)
    seconds = replacement_timeout_arg(seconds)
    res = _run([*_node(target, portal), "-o", "show"], ok=(0, ISCSI_ERR_NO_OBJS_FOUND))
    if res["retcode"] == ISCSI_ERR_NO_OBJS_FOUND:
        raise CommandExecutionError(f"no node record for {target} on {portal}", info={"stderr": res.get("stderr", "")})
    changes = _update_record_timeout(target, portal, res["stdout"], seconds)
    session = _find(sessions(), target, portal)
    if session is not None and session.get("recovery_tmo") != seconds:
        _write_recovery_tmo(session, seconds)
        changes.append(f"recovery_tmo of session {session['sid']} {session.get('recovery_tmo')} -> {seconds}")
    return {"changed": bool(changes), "changes": changes}


def _wait_for_devices(session, wait):
    """The kernel scans the LUNs of a new session asynchronously: poll sysfs (only) for them."""
    deadline = time.monotonic() + max(0, float(wait))
    while session is not None and not session["devices"] and time.monotonic() < deadline:
        time.sleep(0.5)
        session = {**session, **_session_sysfs(session["sid"])}
    return session


def _find(all_sessions, target, portal):
    for session in all_sessions:
        if session["target"] == target and session["portal"] == portal:
            return session
    return None


def logout(target, portal, delete=False):
    """
    Log out of ``target`` on ``portal``; a no-op when there is no such session.

    ``delete=True`` also deletes the node record, so the session is not
    restored at boot. Returns ``{"changed", "changes"}``.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.logout iqn.2025-01.lab.xen:node1 192.168.100.1 delete=True
    """
    target, portal = _check_iqn(target), _check_portal(portal)
    changes = []
    res = _run([*_node(target, portal), "--logout"], ok=(0, ISCSI_ERR_NO_OBJS_FOUND))
    if res["retcode"] == 0:
        changes.append(f"logged out of {target} on {portal}")
    if delete:
        res = _run([*_node(target, portal), "-o", "delete"], ok=(0, ISCSI_ERR_NO_OBJS_FOUND))
        if res["retcode"] == 0:
            changes.append(f"node record {target} {portal} deleted")
    return {"changed": bool(changes), "changes": changes}


def rescan():
    """
    Rescan every iSCSI session for new or resized LUNs; nothing to do without sessions.

    Returns the sessions as ``sessions`` shows them afterwards.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_iscsi.rescan
    """
    res = _run(RESCAN_ARGV, ok=(0, ISCSI_ERR_NO_OBJS_FOUND))
    if res["retcode"] == ISCSI_ERR_NO_OBJS_FOUND:
        return []
    return sessions()


def set_chap(target, portal, username, password, username_in=None, password_in=None):
    """
    Set CHAP credentials on the node record of ``target`` on ``portal``.

    ``username``/``password`` authenticate this initiator to the target;
    ``username_in``/``password_in`` (both or neither) make it mutual CHAP (the
    target authenticates to us). Takes effect at the next login. Secrets are
    redacted from Salt's command log and from errors, and never returned
    (note they are on iscsiadm's command line for a moment, as iscsiadm has no
    other way to take them).

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.set_chap iqn.2025-01.lab.xen:node1 192.168.100.1 node2 'secret-of-12+chars'
    """
    target, portal = _check_iqn(target), _check_portal(portal)
    settings = [("node.session.auth.authmethod", "CHAP")]
    for key, value, regex in (
        ("username", username, _CHAP_USER_RE),
        ("password", password, _CHAP_SECRET_RE),
        ("username_in", username_in, _CHAP_USER_RE),
        ("password_in", password_in, _CHAP_SECRET_RE),
    ):
        if value is None and key.endswith("_in"):
            continue
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise SaltInvocationError(f"invalid CHAP {key}" + ("" if "password" in key else f": {value!r}"))
        settings.append((f"node.session.auth.{key}", value))
    if (username_in is None) != (password_in is None):
        raise SaltInvocationError("mutual CHAP needs both username_in and password_in")
    secrets = [v for k, v in settings if k.endswith(("password", "password_in"))]
    _ensure_node(target, portal)
    for name, value in settings:
        _run([*_node(target, portal), "-o", "update", "-n", name, "-v", value], secrets=secrets)
    return {"target": target, "portal": portal, "chap": True, "mutual": username_in is not None}


def clear_chap(target, portal):
    """
    Turn CHAP off on the node record of ``target`` on ``portal`` (authmethod None, credentials emptied).

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_iscsi.clear_chap iqn.2025-01.lab.xen:node1 192.168.100.1
    """
    target, portal = _check_iqn(target), _check_portal(portal)
    _run([*_node(target, portal), "-o", "update", "-n", "node.session.auth.authmethod", "-v", "None"])
    for key in ("username", "password", "username_in", "password_in"):
        _run([*_node(target, portal), "-o", "update", "-n", f"node.session.auth.{key}", "-v", ""])
    return {"target": target, "portal": portal, "chap": False}
