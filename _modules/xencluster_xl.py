"""
Xen ``xl`` on xencluster dom0s: which guests run here, and what the host is.

* ``list_domains`` reads the domain configurations with one ``xl list -l``
  (JSON) and the run states with one plain ``xl list``: two calls per host,
  whatever the number of guests.
* ``info`` parses ``xl info``.
* Lifecycle: ``render_config``, ``create``, ``create_degraded`` (an xl.cfg
  minus the disks of a dead node), ``shutdown``, ``destroy``,
  ``migrate``, ``save``, ``restore``, ``mem_set``, ``vcpu_set``,
  ``sched_credit2``; ``block_list`` and ``block_attach`` (a disk
  hot-plugged into a running guest, for ``xencluster.restore``). Every
  argument is validated before it reaches an argument list; nothing goes
  through a shell here (but ``xl migrate`` hands its ssh command and host to
  ``sh -c``, so both are held to strict patterns).
* The ``stream`` migration transport (``migrate transport=stream``): an
  unencrypted TCP stream over the SAN instead of ssh. ``stream_receive``
  starts a one-shot ``socat`` listener on the target (its SAN address, the
  source's address only, one connection, a bounded wait), ``migrate`` on the
  source connects to it through the formula's connector script, and
  ``stream_stop`` removes a listener left behind.

Only loads on a dom0 (``/proc/xen/capabilities`` contains ``control_d``) that
has the ``xl`` binary. Named ``xencluster_xl`` so it never shadows Salt's
``xen``/``virt`` modules.
"""

import datetime
import errno
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import tempfile
import time

import salt.utils.path
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_xl"

CAPABILITIES = "/proc/xen/capabilities"
XL_LIST_LONG = ["xl", "list", "-l"]
XL_LIST = ["xl", "list"]
XL_INFO = ["xl", "info"]
XL_BLOCK_LIST = ["xl", "block-list"]

# `xl info` lines: "key<padding>: value" (tools/xl/xl_info.c prints "%-23s: ").
_INFO_LINE = re.compile(r"^([A-Za-z0-9_]+)\s*:\s?(.*)$")
_INT = re.compile(r"-?[0-9]+")
_UINT = re.compile(r"[0-9]+")
# Plain `xl list` state column: r b p s <shutdown reason: - r s c w S> d.
_FLAGS = re.compile(r"[r-][b-][p-][s-][-rscwS?][d-]")


def is_dom0():
    """
    True if this host is a Xen dom0 (``/proc/xen/capabilities`` contains ``control_d``).

    The ``virtual`` grain is not used: it says ``xen`` for domUs too.

    CLI Example:

    .. code-block:: bash

        salt '*' xencluster_xl.is_dom0
    """
    try:
        with open(CAPABILITIES, encoding="ascii", errors="replace") as fh:
            return "control_d" in fh.read()
    except OSError:
        return False


def __virtual__():
    if not salt.utils.path.which("xl"):
        return (False, "xencluster_xl: the xl binary is not installed")
    if not is_dom0():
        return (False, f"xencluster_xl: not a Xen dom0 (no control_d in {CAPABILITIES})")
    return __virtualname__


def _run(argv):
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed (rc {res['retcode']}): {res['stderr'].strip()}",
            info={"argv": argv, "stderr": res["stderr"], "retcode": res["retcode"]},
        )
    return res["stdout"]


def _state(flags):
    """One word for the six ``xl list`` state flags."""
    if flags[5] == "d":
        return "dying"
    if flags[3] == "s":
        return "crashed" if flags[4] == "c" else "shutdown"
    if flags[2] == "p":
        return "paused"
    if flags[0] == "r":
        return "running"
    if flags[1] == "b":
        return "blocked"
    return "runnable"  # "------": has work, not on a CPU right now


def _parse_list_long(stdout):
    """{domid: config summary} from ``xl list -l`` JSON: [{"domid": n, "config": {...}}]."""
    try:
        entries = json.loads(stdout)
        if not isinstance(entries, list):
            raise ValueError("not a JSON list")
    except ValueError as exc:
        raise CommandExecutionError(
            f"xl list -l did not print JSON ({exc}); is output_format=\"sxp\" set in "
            f"/etc/xen/xl.conf? First bytes: {stdout[:80]!r}"
        )
    domains = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise CommandExecutionError(f"unexpected xl list -l entry: {entry!r:.80}")
        domid = entry.get("domid")
        config = entry.get("config") or {}
        c_info, b_info = config.get("c_info") or {}, config.get("b_info") or {}
        if domid in (None, 0):
            continue
        target_kb = b_info.get("target_memkb")
        domains[domid] = {
            "name": c_info.get("name"),
            "domid": domid,
            "type": c_info.get("type"),
            "memory": target_kb * 1024 if isinstance(target_kb, int) else None,
            "vcpus": b_info.get("max_vcpus"),
        }
    return domains


def _parse_list(stdout):
    """{domid: {name, memory, vcpus, state}} from plain ``xl list`` (one header line)."""
    domains = {}
    lines = stdout.splitlines()
    if not lines or not lines[0].startswith("Name"):
        raise CommandExecutionError(f"unexpected xl list output: {stdout[:120]!r}")
    for line in lines[1:]:
        if not line.strip():
            continue
        # name may in theory contain blanks; the five last columns never do
        parts = line.rsplit(None, 5)
        if len(parts) != 6 or not _FLAGS.fullmatch(parts[4]) or not all(_UINT.fullmatch(p) for p in parts[1:4]):
            raise CommandExecutionError(f"unexpected xl list line: {line!r}")
        name, domid, mem_mib, vcpus, flags, _cpu_time = parts
        domains[int(domid)] = {
            "name": name,
            "memory": int(mem_mib) * 1024 * 1024,
            "vcpus": int(vcpus),
            "state": _state(flags),
        }
    return domains


def list_domains():
    """
    The guests on this dom0 (Domain-0 itself is left out).

    Returns ``{name: {"domid", "type", "memory", "vcpus", "state"}}``:
    ``type`` (``pv``, ``pvh``, ``hvm``) is the config's ``c_info.type``,
    ``memory`` the target memory in bytes (``b_info.target_memkb``),
    ``vcpus`` the configured ``b_info.max_vcpus``, ``state`` one of
    ``running``, ``blocked``, ``runnable``, ``paused``, ``shutdown``,
    ``crashed``, ``dying`` (or ``gone``: destroyed between the two calls).

    Two calls whatever the number of guests: ``xl list -l`` for the
    configurations and ``xl list`` for the run states. A domain whose
    configuration libxl cannot retrieve (``xl list -l`` skips it silently) is
    still listed, from ``xl list``, with ``type`` None: a guest must never go
    unseen.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.list_domains
    """
    configs = _parse_list_long(_run(XL_LIST_LONG))
    states = _parse_list(_run(XL_LIST))
    result = {}
    for domid in sorted(set(configs) | set(states)):
        if domid == 0:
            continue
        cfg, st = configs.get(domid), states.get(domid)
        name = (cfg or {}).get("name") or (st or {}).get("name") or f"domid-{domid}"
        result[name] = {
            "domid": domid,
            "type": cfg["type"] if cfg else None,
            "memory": cfg["memory"] if cfg and cfg["memory"] is not None else (st or {}).get("memory"),
            "vcpus": cfg["vcpus"] if cfg and cfg["vcpus"] is not None else (st or {}).get("vcpus"),
            # a domain gone between the two calls has no state: report it as such
            "state": st["state"] if st else "gone",
        }
    return result


def _parse_info(stdout):
    info = {}
    for line in stdout.splitlines():
        match = _INFO_LINE.match(line)
        if not match:
            continue
        key, value = match.group(1), match.group(2).strip()
        info[key] = int(value) if _INT.fullmatch(value) else value
    return info


def info():
    """
    ``xl info`` as a dict; values that are whole numbers become ints.

    Memory figures (``total_memory``, ``free_memory``...) are in MiB, as ``xl`` prints them.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.info
    """
    return _parse_info(_run(XL_INFO))


# --- lifecycle: validation and rendering (pure) ------------------------------

_GUEST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_RE = re.compile(r"[a-z_][a-z0-9_]*")
_PATH_RE = re.compile(r"/[A-Za-z0-9_.,+=@/-]{0,4095}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
# `xl migrate -s` runs "exec <ssh command> <host> xl migrate-receive" with sh -c:
# plain words only, no shell metacharacters, the first word `ssh` or a path.
_SSH_WORD = r"[A-Za-z0-9_./=:@,+-]+"
_SSH_CMD_RE = re.compile(rf"(?:ssh|/[A-Za-z0-9_./+-]*)(?: {_SSH_WORD}){{0,31}}")
TRANSPORTS = ("ssh", "stream")  # migrate's transports; "stream": see the end of this module
_MEM_RE = re.compile(r"([1-9][0-9]{0,14})([KkMmGgTt])")
_MEM_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}
_MAX_MEMORY = 1 << 46  # 64 TiB
_STOPPED = ("shutdown", "crashed", "dying", "gone")
RUN_DIR = "/run"
POLL_INTERVAL = 2


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(name):
    if not isinstance(name, str) or not _GUEST_RE.fullmatch(name):
        raise SaltInvocationError(f"invalid guest name: {name!r}")
    return name


def _check_path(path, what="path"):
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path) or "/../" in f"{path}/":
        raise SaltInvocationError(f"invalid {what} (absolute, plain characters, no '..'): {path!r}")
    return path


def _check_host(host):
    if isinstance(host, str) and len(host) <= 253 and _HOST_RE.fullmatch(host):
        return host
    if isinstance(host, str) and _IPV6_CHARS.fullmatch(host):
        try:
            ipaddress.IPv6Address(host)
            return host
        except ValueError:
            pass
    raise SaltInvocationError(f"invalid host (a host name or IP address): {host!r}")


def _check_ssh_command(ssh_command):
    if ssh_command is None:
        return None
    if not isinstance(ssh_command, str) or not _SSH_CMD_RE.fullmatch(ssh_command):
        raise SaltInvocationError(
            f"invalid ssh_command: {ssh_command!r} (xl runs it with sh -c: plain words "
            "separated by single blanks, starting with ssh or an absolute path)"
        )
    return ssh_command


def _check_int(value, what, low, high):
    if not _is_int(value) or not low <= value <= high:
        raise SaltInvocationError(f"{what} must be an integer from {low} to {high}: {value!r}")
    return value


def _check_bool(value, what):
    if not isinstance(value, bool):
        raise SaltInvocationError(f"{what} must be True or False: {value!r}")
    return value


def _quote(key, value):
    if not isinstance(value, str):
        raise SaltInvocationError(f"config key {key!r}: list items must be strings: {value!r}")
    bad = [ch for ch in value if not ch.isprintable()]
    if bad:
        raise SaltInvocationError(
            f"config key {key!r}: newlines and control characters are refused: {bad[0]!r}"
        )
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render_value(key, value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if _is_int(value):
        if value < 0:  # libxlu's number token has no sign
            raise SaltInvocationError(f"config key {key!r}: negative numbers are refused: {value}")
        return str(value)
    if isinstance(value, str):
        return _quote(key, value)
    if isinstance(value, (list, tuple)):
        return "[ " + ", ".join(_quote(key, item) for item in value) + " ]" if value else "[ ]"
    raise SaltInvocationError(
        f"config key {key!r}: unsupported value type {type(value).__name__} "
        "(use str, int, bool or a list of str)"
    )


def render_config(config):
    """
    Render a dict as an xl.cfg (``key = value`` lines), safely quoted.

    Strings are double-quoted with ``\\`` and ``"`` escaped; newlines and
    other control characters are refused. Ints are bare, bools become 1/0,
    lists of strings become ``[ "a", "b" ]``. Keys must match
    ``^[a-z_][a-z0-9_]*$``. Lines are sorted by key, ``name`` first.
    Nested dicts and other types raise SaltInvocationError naming the key.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.render_config '{"name": "web1", "type": "pvh", "memory": 1024}'
    """
    if not isinstance(config, dict) or not config:
        raise SaltInvocationError(f"config must be a non-empty dict: {config!r:.80}")
    for key in config:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise SaltInvocationError(f"invalid xl.cfg key: {key!r}")
    keys = sorted(config, key=lambda k: (k != "name", k))
    return "".join(f"{key} = {_render_value(key, config[key])}\n" for key in keys)


_NAME_LINE = re.compile(r"""^[ \t]*name[ \t]*=[ \t]*(["'])(.*?)\1[ \t]*(?:[;#].*)?$""", re.M)


def _config_file_name(path):
    """The guest name set in an xl.cfg file (one ``name = "..."`` line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            found = _NAME_LINE.findall(fh.read())
    except OSError as exc:
        raise SaltInvocationError(f"cannot read config_file {path}: {exc}")
    if len(found) != 1:
        raise SaltInvocationError(f"{path}: expected exactly one name = \"...\" line, found {len(found)}")
    return _check_name(found[0][1])


def _parse_memory(memory):
    """Bytes (int) or ``512M``/``2G``/``1048576K`` -> the ``xl mem-set`` argument."""
    if _is_int(memory):
        if memory <= 0 or memory > _MAX_MEMORY or memory % 1024:
            raise SaltInvocationError(f"memory in bytes must be a positive multiple of 1024: {memory!r}")
        return f"{memory >> 20}m" if memory % (1 << 20) == 0 else f"{memory >> 10}k"
    match = _MEM_RE.fullmatch(memory) if isinstance(memory, str) else None
    if not match or int(match.group(1)) << _MEM_SHIFT[match.group(2).lower()] > _MAX_MEMORY:
        raise SaltInvocationError(f"invalid memory: {memory!r} (use bytes or e.g. 512M, 2G)")
    return f"{match.group(1)}{match.group(2).lower()}"


def create_argv(path, paused=False):
    """``xl create [-p] <path>``."""
    return ["xl", "create"] + (["-p"] if paused else []) + [path]


def migrate_argv(name, host, ssh_command=None):
    """``xl migrate [-s <ssh command>] <name> <host>``."""
    return ["xl", "migrate"] + (["-s", ssh_command] if ssh_command else []) + [name, host]


# --- lifecycle: the calls -----------------------------------------------------


def _write_temp_config(text, tmp_dir):
    fd, path = tempfile.mkstemp(prefix="xencluster-xl-", suffix=".cfg", dir=tmp_dir)  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _create_from_file(name, path, paused):
    if name in list_domains():
        raise CommandExecutionError(f"a domain named {name} already exists on this host")
    _run(create_argv(path, paused))
    dom = list_domains().get(name) or {}
    return {"name": name, "domid": dom.get("domid"), "state": dom.get("state", "gone")}


def create(config=None, config_file=None, paused=False, tmp_dir=None):
    """
    Create (start) a guest with ``xl create``, from a dict or an xl.cfg file.

    Exactly one of ``config`` (a dict, rendered by ``render_config`` into a
    0600 temporary file under ``tmp_dir``, default ``/run``, removed
    afterwards) or ``config_file`` (an existing absolute path). ``paused``
    adds ``-p``. Refuses if a domain of that name already exists here.
    Returns ``{"name", "domid", "state"}`` read back with ``list_domains``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.create config_file=/etc/xen/web1.cfg
        salt node1 xencluster_xl.create config='{"name": "web1", "type": "pvh", "memory": 1024}'
    """
    _check_bool(paused, "paused")
    if (config is None) == (config_file is None):
        raise SaltInvocationError("give exactly one of config (a dict) or config_file (a path)")
    if config_file is not None:
        _check_path(config_file, "config_file")
        if not os.path.isfile(config_file):
            raise SaltInvocationError(f"config_file does not exist: {config_file}")
        return _create_from_file(_config_file_name(config_file), config_file, paused)
    text = render_config(config)
    name = _check_name(config.get("name"))
    tmp_dir = _check_path(RUN_DIR if tmp_dir is None else tmp_dir, "tmp_dir")
    if not os.path.isdir(tmp_dir):
        raise SaltInvocationError(f"tmp_dir is not a directory: {tmp_dir}")
    path = _write_temp_config(text, tmp_dir)
    try:
        return _create_from_file(name, path, paused)
    finally:
        os.unlink(path)


def _stopped(domains, name):
    return name not in domains or domains[name]["state"] in _STOPPED


def shutdown(name, timeout=120):
    """
    Ask a guest to shut down (``xl shutdown <name>``) and wait for it to stop.

    Polls ``list_domains`` every few seconds up to ``timeout`` seconds (``xl
    shutdown -w`` would wait without bound). A guest that is absent or
    already shut down is left alone (``changed`` False). On timeout raises
    CommandExecutionError: the guest is still running (a busybox init ignores
    ``xl shutdown`` unless it traps the signals); ``destroy`` stops it hard.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.shutdown web1 timeout=300
    """
    _check_name(name)
    _check_int(timeout, "timeout", 0, 86400)
    domains = list_domains()
    if _stopped(domains, name):
        return {"name": name, "changed": False, "state": domains.get(name, {}).get("state", "absent")}
    _run(["xl", "shutdown", name])
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandExecutionError(
                f"guest {name} is still running {timeout}s after xl shutdown (a guest may "
                f"ignore it, e.g. a busybox init without signal traps); use "
                f"xencluster_xl.destroy {name} to stop it hard"
            )
        time.sleep(min(POLL_INTERVAL, remaining))
        domains = list_domains()
        if _stopped(domains, name):
            return {"name": name, "changed": True, "state": domains.get(name, {}).get("state", "absent")}


def destroy(name):
    """
    Stop a guest at once (``xl destroy <name>``); an absent guest is a no-op.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.destroy web1
    """
    _check_name(name)
    if name not in list_domains():
        return {"name": name, "changed": False}
    _run(["xl", "destroy", name])
    return {"name": name, "changed": True}


def _check_transport(transport, live):
    if not isinstance(transport, str) or transport not in TRANSPORTS:
        raise SaltInvocationError(f"transport must be one of {', '.join(TRANSPORTS)}: {transport!r}")
    if live is not True:
        raise SaltInvocationError(
            "xl migrate always migrates live (live=False is not supported); "
            "for a cold move use save and restore"
        )


def _migrate_checks(name, host, domains):
    dom = domains.get(name)
    if dom is None:
        raise CommandExecutionError(f"no guest named {name} on this host")
    if dom["type"] == "pv":
        raise CommandExecutionError(
            f"{name} is a PV guest: Debian's Xen is built without shadow paging, so a PV "
            "guest cannot be live-migrated (Failed to enable logdirty: 95); use PVH or HVM"
        )
    if dom["type"] not in ("pvh", "hvm"):
        raise CommandExecutionError(f"cannot tell the type of {name} ({dom['type']!r}): not migrating")
    if dom["state"] in _STOPPED:
        raise CommandExecutionError(
            f"{name} is {dom['state']} here, not running: there is nothing to migrate "
            "(destroy it, or restart it where it belongs)"
        )
    return {"name": name, "domid": dom["domid"], "type": dom["type"], "state": dom["state"], "host": host}


def migrate(name, host, transport="ssh", ssh_command=None, live=True, dry_run=False, stream_address=None,
            stream_from=None):  # fmt: skip
    """
    Live-migrate a guest to another dom0 with ``xl migrate``.

    Before anything runs, one ``list_domains`` read refuses an unknown guest,
    a guest that is not running (shut down, crashed, dying), and a PV guest
    (Debian's Xen has no shadow paging, so PV guests cannot be live-migrated;
    use PVH or HVM). ``host`` is the target dom0 (the name in ``checks``).

    ``transport``:

    * ``ssh`` (the default): ``xl migrate [-s <ssh_command>] <name> <host>``;
      xl runs ``<ssh command> <host> xl migrate-receive`` and streams the
      guest's memory through ssh (encrypted, authenticated by the root keys).
      xl passes the ssh command and host to ``sh -c``, so both must be plain
      words.
    * ``stream``: ``xl migrate -s /usr/libexec/xencluster/xl-stream-connect
      <name> <ip>:<port>``: the formula's connector (``socat``) carries the
      stream over plain TCP to the one-shot listener that
      ``stream_receive`` started on the target beforehand, at
      ``stream_address`` (``<IPv4>:<port>`` or ``[<IPv6>]:<port>``, the
      target's SAN address; an IPv6 address reaches the connector without its
      brackets). No ssh cipher in the way (the issue reports ssh several
      times slower than a raw stream), but the guest's memory crosses the
      network UNENCRYPTED and UNAUTHENTICATED: for the SAN only. xl
      migrate-receive's own messages stay in the target's log
      (``stream_stop`` returns its tail), not in this call's stderr.
      ``stream_from``, when given, must be the address this host's routing
      uses towards ``stream_address`` (the only address the listener
      accepts); it is checked before anything starts. The connector and
      ``socat`` must be installed (the xencluster formula does both).

    ``live`` must stay True (xl always migrates live). ``dry_run`` returns the
    argv and the checks without migrating; for ``stream`` also the
    target's listener command (``receive_argv``, with the default
    ``accept_timeout``) for this host's source address.

    Returns ``{"argv", "checks", "migrated"}``, after a migration also
    ``"duration_s"`` (wall time of the ``xl migrate`` call); with ``stream``
    also ``"transport"``, ``"stream_address"``, ``"source_address"`` and
    ``"receive_argv"``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.migrate web1 node2
        salt node1 xencluster_xl.migrate web1 node2 ssh_command='ssh -i /root/.ssh/xc' dry_run=True
        salt node2 xencluster_xl.stream_receive 31000 192.168.100.2 192.168.100.1
        salt node1 xencluster_xl.migrate web1 node2 transport=stream stream_address=192.168.100.2:31000
    """
    _check_name(name)
    _check_host(host)
    _check_transport(transport, live)
    _check_ssh_command(ssh_command)
    stream = _check_stream_args(transport, ssh_command, stream_address, stream_from)
    _check_bool(dry_run, "dry_run")
    checks = _migrate_checks(name, host, list_domains())
    if stream is None:
        result = {"argv": migrate_argv(name, host, ssh_command), "checks": checks}
    else:
        result = dict(_stream_plan(name, *stream), checks=checks)
    if dry_run:
        return dict(result, migrated=False)
    started = time.monotonic()
    try:
        _run(result["argv"])
    except CommandExecutionError as exc:
        if stream is None:
            raise
        raise CommandExecutionError(
            f"{exc} (the target's side: {_stream_log(stream[1])} there; its listener may still wait: "
            f"xencluster_xl.stream_stop {stream[1]} on the target)",
            info=exc.info,
        ) from exc
    return dict(result, migrated=True, duration_s=round(time.monotonic() - started, 3))


def save(name, path, keep_running=False, overwrite=False):
    """
    Save a guest's memory image to ``path`` (``xl save [-c] <name> <path>``).

    ``path`` is absolute, its directory must exist and the file must not,
    unless ``overwrite``. ``keep_running`` (``-c``) leaves the guest running.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.save web1 /var/lib/xen/save/web1.save
    """
    _check_name(name)
    _check_path(path)
    _check_bool(keep_running, "keep_running")
    _check_bool(overwrite, "overwrite")
    if not os.path.isdir(os.path.dirname(path)):
        raise SaltInvocationError(f"directory of {path} does not exist")
    if os.path.lexists(path) and not overwrite:
        raise SaltInvocationError(f"{path} already exists (overwrite=True to replace it)")
    _run(["xl", "save"] + (["-c"] if keep_running else []) + [name, path])
    return {"name": name, "path": path, "running": keep_running}


def restore(path, paused=False):
    """
    Restore a guest saved with ``save`` (``xl restore [-p] <path>``).

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.restore /var/lib/xen/save/web1.save
    """
    _check_path(path)
    _check_bool(paused, "paused")
    if not os.path.isfile(path):
        raise SaltInvocationError(f"no saved image at {path}")
    _run(["xl", "restore"] + (["-p"] if paused else []) + [path])
    return {"path": path, "paused": paused}


def mem_set(name, memory):
    """
    Set a guest's target memory (balloon): ``xl mem-set <name> <memory>``.

    ``memory`` is bytes (int, a multiple of 1024) or a string such as
    ``512M``, ``2G``.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.mem_set web1 512M
    """
    _check_name(name)
    arg = _parse_memory(memory)
    _run(["xl", "mem-set", name, arg])
    return {"name": name, "memory": arg}


def vcpu_set(name, vcpus, allow_overcommit=False):
    """
    Set the number of online vCPUs of a guest: ``xl vcpu-set <name> <vcpus>``.

    xl refuses more vCPUs than the host has physical CPUs ("You are
    overcommitting!"); ``allow_overcommit=True`` passes ``--ignore-host``.
    The guest's ``maxvcpus`` still bounds the number.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.vcpu_set web1 2
        salt node1 xencluster_xl.vcpu_set web1 4 allow_overcommit=True
    """
    _check_name(name)
    _check_int(vcpus, "vcpus", 1, 1024)
    _check_bool(allow_overcommit, "allow_overcommit")
    argv = ["xl", "vcpu-set", *(["--ignore-host"] if allow_overcommit else []), name, str(vcpus)]
    _run(argv)
    return {"name": name, "vcpus": vcpus}


def sched_credit2(name, weight=None, cap=None):
    """
    Set a guest's credit2 weight (1..65535) and/or cap (0..10000, percent of one CPU).

    Runs ``xl sched-credit2 -d <name> [-w <weight>] [-c <cap>]``. Setting only:
    the read output is not parsed here.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.sched_credit2 web1 weight=512 cap=100
    """
    _check_name(name)
    if weight is None and cap is None:
        raise SaltInvocationError("give weight and/or cap")
    argv = ["xl", "sched-credit2", "-d", name]
    if weight is not None:
        argv += ["-w", str(_check_int(weight, "weight", 1, 65535))]
    if cap is not None:
        argv += ["-c", str(_check_int(cap, "cap", 0, 10000))]
    _run(argv)
    return {"name": name, "weight": weight, "cap": cap}


# --- block devices -------------------------------------------------------------------

# xenbus states (xen/include/public/io/xenbus.h)
_XENBUS_STATES = {
    0: "unknown", 1: "initialising", 2: "initwait", 3: "initialised", 4: "connected",
    5: "closing", 6: "closed", 7: "reconfiguring", 8: "reconfigured",
}  # fmt: skip
_VDEV_RE = re.compile(r"(xvd|sd|hd)([a-z]{1,3})")
_BLOCK_LIST_HEAD = ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
_LIVE_KEYS = ("devid", "backend_domid", "frontend_domid", "state", "state_code", "event_channel",
              "ring_ref", "backend_path")  # fmt: skip


def _disk_index(letters):
    """a -> 0, z -> 25, aa -> 26 (Linux's bijective base-26 disk naming)."""
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def vdev_number(vdev):
    """The Xen device number of a whole-disk vdev name (``xvda`` -> 51712), or None."""
    match = _VDEV_RE.fullmatch(vdev or "")
    if not match:
        return None
    kind, index = match.group(1), _disk_index(match.group(2))
    if kind == "xvd":
        return (202 << 8) | (index << 4) if index < 16 else (1 << 28) | (index << 8)
    if kind == "sd" and index < 16:
        return (8 << 8) | (index << 4)
    if kind == "hd" and index < 4:
        return ((3, 22)[index // 2] << 8) | ((index % 2) << 6)
    return None


def _parse_block_list(stdout):
    """Rows of ``xl block-list``: one header, then seven columns (BE-path may be empty)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines or lines[0].split() != _BLOCK_LIST_HEAD:
        raise CommandExecutionError(f"unexpected xl block-list output: {stdout[:120]!r}")
    rows = []
    for line in lines[1:]:
        parts = line.split(None, 6)
        if len(parts) < 6 or not all(_INT.fullmatch(p) for p in parts[:6]):
            raise CommandExecutionError(f"unexpected xl block-list line: {line!r}")
        devid, backend, frontend, state, evtch, ring_ref = (int(p) for p in parts[:6])
        rows.append({
            "devid": devid, "backend_domid": backend, "frontend_domid": frontend,
            "state": _XENBUS_STATES.get(state, str(state)), "state_code": state,
            "event_channel": evtch, "ring_ref": ring_ref,
            "backend_path": parts[6].strip() if len(parts) > 6 else None,
        })  # fmt: skip
    return rows


def _configured_disks(stdout, name):
    """The ``disks`` of ``name``'s configuration in ``xl list -l <name>`` JSON."""
    for entry in json.loads(stdout) if stdout.strip() else []:
        config = entry.get("config") or {}
        if (config.get("c_info") or {}).get("name") == name:
            return config.get("disks") or []
    return []


def block_list(name):
    """
    The block devices of guest ``name``: what each is backed by and its xenbus state.

    Two calls whatever the number of disks: ``xl list -l <name>`` for the
    configured disks (``target`` is the backing path, e.g. the stable leg
    path) and ``xl block-list <name>`` for the live frontend/backend state
    (``connected`` when the guest uses it). Returns a list, one entry per
    device: ``{"vdev", "devid", "target", "format", "mode" ("w"/"r"),
    "backend_domid", "state", "state_code", "event_channel", "ring_ref",
    "backend_path"}``; a device only one side knows has the other side's keys
    as None.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.block_list web1
    """
    _check_name(name)
    try:
        configured = _configured_disks(_run([*XL_LIST_LONG, name]), name)
    except ValueError as exc:
        raise CommandExecutionError(f"xl list -l {name} did not print JSON: {exc}")
    live = {row["devid"]: row for row in _parse_block_list(_run([*XL_BLOCK_LIST, name]))}
    blank_live = dict.fromkeys(_LIVE_KEYS)
    disks = []
    for disk in configured:
        devid = vdev_number(disk.get("vdev"))
        row = live.pop(devid, None) or {**blank_live, "devid": devid}
        disks.append({
            "vdev": disk.get("vdev"),
            "target": disk.get("pdev_path") or disk.get("target"),
            "format": disk.get("format"),
            "mode": "w" if disk.get("readwrite", 1) else "r",
            **row,
        })  # fmt: skip
    for row in live.values():
        disks.append({"vdev": None, "target": None, "format": None, "mode": None, **row})
    return disks


XL_BLOCK_ATTACH = ["xl", "block-attach"]
_ACCESS = ("rw", "ro")
_DISK_FORMATS = ("raw",)  # a leg is a whole block device: no qcow2 (that needs the qdisk backend)


def _check_vdev(vdev):
    if not isinstance(vdev, str) or vdev_number(vdev) is None:
        raise SaltInvocationError(f"invalid vdev (a whole disk such as xvda, sdb or hda): {vdev!r}")
    return vdev


def _is_block_device(path):
    """True when ``path`` (after its symlinks) is a block device."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def disk_spec(target, vdev, access="rw", disk_format="raw"):
    """
    The xl disk spec of one disk, as ``xencluster_guest.defined`` writes it (pure).

    ``format=<format>,vdev=<vdev>,access=<access>,target=<target>``: ``target``
    comes last because xl reads everything after ``target=`` as the path.

    CLI Example:

    .. code-block:: bash

        salt node1 xencluster_xl.disk_spec /dev/xencluster/web1.root.node1 xvda
    """
    _check_path(target, "target")
    _check_vdev(vdev)
    if access not in _ACCESS:
        raise SaltInvocationError(f"access must be one of {', '.join(_ACCESS)}: {access!r}")
    if disk_format not in _DISK_FORMATS:
        raise SaltInvocationError(f"disk_format must be one of {', '.join(_DISK_FORMATS)}: {disk_format!r}")
    return f"format={disk_format},vdev={vdev},access={access},target={target}"


def _attach_problem(name, target, vdev, disks):
    """``(attached entry or None, why not attach)``: the disk there already, or a clash with another."""
    mine = [d for d in disks if d["target"] == target]
    if mine and mine[0]["vdev"] == vdev:
        return mine[0], None
    if mine:
        return None, f"{target} is attached to {name} already, at {mine[0]['vdev']}, not at {vdev}"
    taken = [d for d in disks if d["vdev"] == vdev or (d["vdev"] is None and d["devid"] == vdev_number(vdev))]
    if taken:
        return None, f"{vdev} of {name} is taken by {taken[0]['target'] or 'a device being attached'}"
    return None, None


def block_attach(domain, target, vdev, access="rw", disk_format="raw", dry_run=False):
    """
    Hot-plug the block device ``target`` into the running guest ``domain`` at ``vdev``.

    Runs ``xl block-attach <domain> format=raw,vdev=<vdev>,access=rw,target=<target>``
    (the spec ``disk_spec`` builds, the shape ``xencluster_guest.defined``
    writes). Before that, ``list_domains`` and ``block_list`` read the host:
    the guest must run here (not shut down, crashed or dying), ``target`` must
    be a block device, and ``vdev`` must be free. Idempotent: ``target``
    already attached at ``vdev`` changes nothing; attached at another vdev is
    refused. ``xencluster.restore`` uses it to give a guest that ``recover``
    started degraded its returning legs back.

    Returns ``{"domain", "target", "vdev", "spec", "argv", "changed",
    "disk"}`` (``disk``: the ``block_list`` entry after the attach, None in
    a dry run that would attach). ``dry_run=True`` checks and attaches nothing.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_xl.block_attach web1 /dev/xencluster/web1.root.node1 xvda
        salt node2 xencluster_xl.block_attach web1 /dev/xencluster/web1.root.node1 xvda dry_run=True
    """
    _check_name(domain)
    spec = disk_spec(target, vdev, access, disk_format)
    _check_bool(dry_run, "dry_run")
    dom = list_domains().get(domain)
    if dom is None or dom["state"] in _STOPPED:
        why = "does not exist" if dom is None else f"is {dom['state']}"
        raise CommandExecutionError(f"guest {domain} {why} on this host: nothing to attach {target} to")
    if not _is_block_device(target):
        raise CommandExecutionError(f"{target} is not a block device on this host (is the leg imported?)")
    disks = block_list(domain)
    present, problem = _attach_problem(domain, target, vdev, disks)
    if problem:
        raise CommandExecutionError(problem)
    argv = [*XL_BLOCK_ATTACH, domain, spec]
    result = {"domain": domain, "target": target, "vdev": vdev, "spec": spec, "argv": argv}
    if present is not None or dry_run:
        return dict(result, changed=False, disk=present)
    _run(argv)
    attached = next((d for d in block_list(domain) if d["target"] == target), None)
    return dict(result, changed=True, disk=attached)


# --- a degraded start: an xl.cfg minus the disks of a dead node -----------------------

# the one `disk = [ ... ]` line render_config writes (one line per key)
_DISK_LINE = re.compile(r"^disk = (.*)$", re.M)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_MAX_WITHOUT = 256


def _check_paths(paths, what):
    """A non-empty list of distinct valid absolute paths."""
    if not isinstance(paths, (list, tuple)) or not paths or len(paths) > _MAX_WITHOUT:
        raise SaltInvocationError(f"{what} must be a list of 1 to {_MAX_WITHOUT} paths: {paths!r:.120}")
    for path in paths:
        _check_path(path, what)
    if len(set(paths)) != len(paths):
        raise SaltInvocationError(f"{what} names a path twice: {paths!r:.200}")
    return list(paths)


def _disk_entries(text, where):
    """``(entries, (start, end))``: the disk list of an xl.cfg that ``render_config`` wrote."""
    found = list(_DISK_LINE.finditer(text))
    if len(found) != 1:
        raise SaltInvocationError(f"{where}: expected exactly one 'disk = [ ... ]' line, found {len(found)}")
    value = found[0].group(1)
    entries = [re.sub(r"\\(.)", r"\1", m.group(1)) for m in _QUOTED.finditer(value)]
    # Read back only what render_config itself would write: anything else is not ours to edit.
    if _render_value("disk", entries) != value:
        raise SaltInvocationError(f"{where}: its disk line is not one render_config writes: {value!r:.200}")
    return entries, found[0].span()


def _disk_target(entry):
    """The backing path of an xl disk spec written as ``key=value`` pairs (``target=`` comes last), or None."""
    head, sep, target = entry.rpartition("target=")
    if not sep or (head and not head.endswith(",")):
        return None
    return target


def _without_disks(text, without, where="config"):
    """
    ``text`` (an xl.cfg written by ``render_config``) minus the disks backed by ``without``. Pure.

    Returns ``(new text, kept entries, dropped entries)``: only the ``disk``
    line changes; the kept entries are unchanged, so each keeps its ``vdev``
    (the guest sees the same device names, and its md RAID1 runs degraded).
    Raises SaltInvocationError when a path of ``without`` backs no disk of
    ``text``, or when no disk would remain.
    """
    entries, (start, end) = _disk_entries(text, where)
    targets = [_disk_target(entry) for entry in entries]
    absent = [path for path in without if path not in targets]
    if absent:
        raise SaltInvocationError(f"{where}: no disk is backed by {', '.join(absent)} (disks: {targets})")
    kept = [e for e, t in zip(entries, targets) if t not in without]
    dropped = [e for e, t in zip(entries, targets) if t in without]
    if not kept:
        raise SaltInvocationError(f"{where}: leaving out {', '.join(without)} leaves the guest no disk")
    return f"{text[:start]}disk = {_render_value('disk', kept)}{text[end:]}", kept, dropped


def create_degraded(config_file, without, dry_run=False, tmp_dir=None):
    """
    Start a guest from its xl.cfg without some of its disks: the legs a dead node held.

    ``config_file`` is an xl.cfg written by ``render_config`` (e.g.
    ``/etc/xen/xencluster/<guest>.cfg`` from ``xencluster_guest.defined``);
    ``without`` lists the backing paths (``target=``) of the disks to leave
    out, each of which must be a disk of the file, and at least one disk must
    remain. The file itself is not changed: a 0600 copy with the new ``disk``
    line goes to ``tmp_dir`` (default ``/run``), ``xl create`` runs on it (as
    ``create``: refused if a domain of that name exists here) and it is
    removed. The other disks keep their ``vdev`` names.

    This function does NOT check that the guest runs nowhere else: the
    ``xencluster.recover`` runner does that, on every dom0, just before it
    calls this.

    Returns ``{"name", "config_file", "disk": [kept disk specs], "without":
    [left-out disk specs], "created", "config" (the text used)}`` plus
    ``"domid"`` and ``"state"`` once created. ``dry_run=True`` checks and
    returns the same without starting anything.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_xl.create_degraded /etc/xen/xencluster/web1.cfg '[/dev/xencluster/web1.root.node1]'
    """
    _check_path(config_file, "config_file")
    without = _check_paths(without, "without")
    _check_bool(dry_run, "dry_run")
    if not os.path.isfile(config_file):
        raise SaltInvocationError(f"config_file does not exist: {config_file}")
    name = _config_file_name(config_file)
    with open(config_file, encoding="utf-8", errors="replace") as fh:
        text, kept, dropped = _without_disks(fh.read(), without, config_file)
    result = {"name": name, "config_file": config_file, "disk": kept, "without": dropped, "created": False,
              "config": text}  # fmt: skip
    if dry_run:
        return result
    tmp_dir = _check_path(RUN_DIR if tmp_dir is None else tmp_dir, "tmp_dir")
    if not os.path.isdir(tmp_dir):
        raise SaltInvocationError(f"tmp_dir is not a directory: {tmp_dir}")
    path = _write_temp_config(text, tmp_dir)
    try:
        created = _create_from_file(name, path, False)
    finally:
        os.unlink(path)
    return dict(result, created=True, domid=created["domid"], state=created["state"])


# --- the stream migration transport: plain TCP over the SAN instead of ssh ----------------------
#
# xl migrate -s <command> <domain> <host> runs  sh -c "exec <command> <host> xl migrate-receive [flags]"
# and speaks the migration protocol over that child's stdin/stdout (tools/xl/xl_migrate.c). With
# <command> the formula's connector and <host> "<ip>:<port>", the child is `socat - TCP4:<ip>:<port>`;
# on the target a one-shot `socat TCP-LISTEN:... EXEC:"xl migrate-receive"` (stream_receive) takes
# exactly one connection, from the source's address only, and runs its own fixed receive command:
# the words xl appends for ssh are ignored. socat splits the EXEC string at blanks: no shell there.

STREAM_CONNECTOR = "/usr/libexec/xencluster/xl-stream-connect"  # shipped by salt/xencluster (dom0.sls)
STREAM_RECEIVE = "xl migrate-receive"
STREAM_LOG_DIR = "/var/log/xen"
STREAM_STATE_DIR = "/run/xencluster"
PROC = "/proc"
DEFAULT_ACCEPT_TIMEOUT = 60
MAX_ACCEPT_TIMEOUT = 3600
LISTEN_WAIT = 5  # seconds socat gets to listen
STOP_WAIT = 5  # seconds a listener gets to exit after SIGTERM (then SIGKILL, as long again)
STREAM_POLL = 0.05
LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 65536
_PORT_LOW, _PORT_HIGH = 1024, 65535

_IP_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_IPV4_PORT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3}):([1-9][0-9]{0,4})")
_IPV6_PORT = re.compile(r"\[([0-9A-Fa-f:.]{2,45})\]:([1-9][0-9]{0,4})")
_IN_USE, _NOT_HERE = "in use", "not an address of this host"
_STARTED = {}  # pid -> Popen of the listeners this process started (reaped when stopped)


def _which(command):
    return salt.utils.path.which(command)


def _check_port(port, what="port"):
    return _check_int(port, what, _PORT_LOW, _PORT_HIGH)


def _check_ip(value, what):
    """An IPv4 or IPv6 address a stream may use (no zone index, not IPv4-mapped), as an ipaddress object."""
    ip = None
    if isinstance(value, str) and _IP_CHARS.fullmatch(value):
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            pass
    if ip is None:
        raise SaltInvocationError(f"invalid {what} (an IPv4 or IPv6 address, nothing else): {value!r}")
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or getattr(ip, "ipv4_mapped", None) or (
        ip.is_reserved and not ip.is_loopback
    ):
        raise SaltInvocationError(
            f"{what} {ip} cannot carry a migration stream (unspecified, multicast, link-local, reserved "
            "or IPv4-mapped)"
        )
    return ip


def _same_family(first, second, what):
    if first.version != second.version:
        raise SaltInvocationError(f"{what}: {first} and {second} are not of the same IP version")


def _check_stream_address(value):
    """``(ip, port)`` of ``<IPv4>:<port>`` or ``[<IPv6>]:<port>``."""
    match = None
    if isinstance(value, str):
        match = _IPV4_PORT.fullmatch(value) or _IPV6_PORT.fullmatch(value)
    if match is None:
        raise SaltInvocationError(f"invalid stream_address: {value!r} (<IPv4>:<port> or [<IPv6>]:<port>)")
    ip = _check_ip(match.group(1), "stream_address")
    if (ip.version == 6) != value.startswith("["):
        raise SaltInvocationError(f"invalid stream_address: {value!r} (brackets around an IPv6 address only)")
    return ip, _check_port(int(match.group(2)), "stream_address port")


def _stream_text(ip, port):
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _check_stream_args(transport, ssh_command, stream_address, stream_from):
    """``(ip, port, source ip or None)`` for the stream transport, None for ssh."""
    if transport != "stream":
        if stream_address is not None or stream_from is not None:
            raise SaltInvocationError("stream_address and stream_from are for transport=stream only")
        return None
    if ssh_command is not None:
        raise SaltInvocationError("ssh_command is for transport=ssh only")
    if stream_address is None:
        raise SaltInvocationError("transport=stream needs stream_address (<ip>:<port> of the target's listener)")
    ip, port = _check_stream_address(stream_address)
    source = None
    if stream_from is not None:
        source = _check_ip(stream_from, "stream_from")
        _same_family(ip, source, "stream_address and stream_from")
    return ip, port, source


def _socat_ip(ip):
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _receive_argv(port, bind, allow_from, accept_timeout):
    listen = "TCP6-LISTEN" if bind.version == 6 else "TCP4-LISTEN"
    bits = 128 if bind.version == 6 else 32
    address = (f"{listen}:{port},bind={_socat_ip(bind)},reuseaddr,accept-timeout={accept_timeout},"
               f"range={_socat_ip(allow_from)}/{bits}")  # fmt: skip
    return ["socat", "-d", "-d", address, f"EXEC:{STREAM_RECEIVE}"]


def _check_receive_args(port, bind, allow_from, accept_timeout):
    _check_port(port)
    bind_ip, allow_ip = _check_ip(bind, "bind"), _check_ip(allow_from, "allow_from")
    _same_family(bind_ip, allow_ip, "bind and allow_from")
    _check_int(accept_timeout, "accept_timeout", 1, MAX_ACCEPT_TIMEOUT)
    return bind_ip, allow_ip


def stream_receive_argv(port, bind, allow_from, accept_timeout=DEFAULT_ACCEPT_TIMEOUT):
    """
    The argv of the target's one-shot migration listener (pure): what ``stream_receive`` starts.

    ``socat -d -d TCP4-LISTEN:<port>,bind=<bind>,reuseaddr,accept-timeout=<s>,range=<allow_from>/32
    EXEC:xl migrate-receive`` (``TCP6-LISTEN``, ``[...]`` and ``/128`` for IPv6).

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_xl.stream_receive_argv 31000 192.168.100.2 192.168.100.1
    """
    bind_ip, allow_ip = _check_receive_args(port, bind, allow_from, accept_timeout)
    return _receive_argv(port, bind_ip, allow_ip, accept_timeout)


def _stream_log(port):
    return os.path.join(STREAM_LOG_DIR, f"xencluster-stream-{port}.log")


def _stream_state(port):
    return os.path.join(STREAM_STATE_DIR, f"stream-{port}.json")


def _bind_probe(ip, port):
    """What binding ``ip`` port ``port`` as socat does (SO_REUSEADDR) meets: None (free), _IN_USE or _NOT_HERE."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((str(ip), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # a listening socket holds it (or a socket without SO_REUSEADDR)
                return _IN_USE
            if exc.errno == errno.EADDRNOTAVAIL:
                return _NOT_HERE
            raise CommandExecutionError(f"cannot check {_stream_text(ip, port)}: {exc}")
    return None


def _route_source(ip):
    """The address this host's routing sends from towards ``ip`` (a UDP connect: nothing is sent)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), 9))
            return ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"this host has no route to {ip}: {exc}")


def _stream_plan(name, ip, port, stream_from):
    """The source's side of a stream migration, checked: ``{"argv", "transport", ...}``."""
    if not os.path.isfile(STREAM_CONNECTOR) or not os.access(STREAM_CONNECTOR, os.X_OK):
        raise CommandExecutionError(
            f"{STREAM_CONNECTOR} is missing or not executable on this host: the xencluster formula "
            "installs it (state.apply xencluster.dom0)"
        )
    if not _which("socat"):
        raise CommandExecutionError("socat is not installed on this host (the xencluster formula installs it)")
    source = _route_source(ip)
    if stream_from is not None and source != stream_from:
        raise CommandExecutionError(
            f"this host reaches {ip} from {source}, not from stream_from {stream_from}: the target's "
            f"listener would refuse the connection"
        )
    return {
        "argv": migrate_argv(name, f"{ip}:{port}", STREAM_CONNECTOR),
        "transport": "stream",
        "stream_address": _stream_text(ip, port),
        "source_address": str(source),
        "receive_argv": _receive_argv(port, ip, source, DEFAULT_ACCEPT_TIMEOUT),
    }


def _cmdline(pid):
    try:
        with open(os.path.join(PROC, str(pid), "cmdline"), "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0")[:-1]] if raw else None


def _is_ours(pid, argv):
    """True while ``pid`` is the listener started with ``argv`` (not exited, not a zombie, not a reused pid)."""
    return _is_int(pid) and pid > 1 and _cmdline(pid) == list(argv)


def _reap(pid):
    proc = _STARTED.get(pid)
    if proc is not None and proc.poll() is not None:
        del _STARTED[pid]


def _terminate(pid, argv):
    """SIGTERM the listener, then SIGKILL; returns once it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            _reap(pid)
            return
        deadline = time.monotonic() + STOP_WAIT
        while True:
            _reap(pid)
            if not _is_ours(pid, argv):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(STREAM_POLL, remaining))
    raise CommandExecutionError(f"the stream listener (pid {pid}) is still there after SIGKILL")


def _log_tail(path, offset=0):
    """The last lines ``path`` got after ``offset``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(offset, fh.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            data = fh.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(data.decode("utf-8", "replace").strip().splitlines()[-LOG_TAIL_LINES:])


def _read_state(port):
    """The state file of the listener on ``port``, checked; None when there is none."""
    path = _stream_state(port)
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"unreadable stream listener state {path}: {exc} (remove it)")
    ok = (isinstance(state, dict) and state.get("port") == port and _is_int(state.get("pid"))
          and isinstance(state.get("argv"), list) and all(isinstance(a, str) for a in state["argv"])
          and isinstance(state.get("log"), str) and _is_int(state.get("offset")))  # fmt: skip
    if not ok:
        raise CommandExecutionError(f"unexpected stream listener state in {path}: {state!r:.200} (remove it)")
    try:
        state["bind_ip"] = _check_ip(state.get("bind"), f"bind in {path}")
    except SaltInvocationError as exc:
        raise CommandExecutionError(f"unexpected stream listener state: {exc} (remove it)")
    return state


def _write_state(port, state):
    os.makedirs(STREAM_STATE_DIR, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stream-", dir=STREAM_STATE_DIR)  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, sort_keys=True)
    os.replace(tmp, _stream_state(port))


def _forget(port):
    try:
        os.unlink(_stream_state(port))
    except FileNotFoundError:
        pass


def _start_listener(argv, log_path):
    """Popen of socat, detached (a session of its own: it outlives this job), output to ``log_path``."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(log_path, "ab") as log_fh:
        log_fh.write(f"--- {now} xencluster_xl.stream_receive: {' '.join(argv)}\n".encode())
        log_fh.flush()
        offset = log_fh.tell()
        try:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT, cwd="/",
                close_fds=True, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise CommandExecutionError(f"cannot start {argv[0]}: {exc}", info={"argv": argv})
    _STARTED[proc.pid] = proc
    return proc, offset


def _wait_listening(proc, argv, bind_ip, port, log_path, offset):
    """Returns once socat listens; raises (with its log's tail) if it exits or does not listen in time."""
    deadline = time.monotonic() + LISTEN_WAIT
    where = _stream_text(bind_ip, port)
    while True:
        retcode = proc.poll()
        if retcode is not None:
            _STARTED.pop(proc.pid, None)
            tail = _log_tail(log_path, offset)
            raise CommandExecutionError(
                f"the stream listener on {where} exited at once (rc {retcode}): {tail}",
                info={"argv": argv, "retcode": retcode, "log": log_path, "log_tail": tail},
            )
        if _bind_probe(bind_ip, port) == _IN_USE:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _terminate(proc.pid, argv)
            tail = _log_tail(log_path, offset)
            raise CommandExecutionError(
                f"socat did not listen on {where} within {LISTEN_WAIT} s (stopped): {tail}",
                info={"argv": argv, "log": log_path, "log_tail": tail},
            )
        time.sleep(min(STREAM_POLL, remaining))


def stream_receive(port, bind, allow_from, accept_timeout=DEFAULT_ACCEPT_TIMEOUT, dry_run=False):
    """
    Start the one-shot listener of a ``stream`` migration to this host (the target).

    Runs ``socat -d -d TCP4-LISTEN:<port>,bind=<bind>,reuseaddr,accept-timeout=<accept_timeout>,
    range=<allow_from>/32 EXEC:xl migrate-receive`` (``stream_receive_argv``),
    detached from this job: it listens on ``bind`` only (this host's SAN
    address), accepts the first connection from ``allow_from`` (the
    source's SAN address; socat refuses and logs any other peer), hands it
    to ``xl migrate-receive`` and exits when that migration ends. With no
    connection within ``accept_timeout`` seconds (1-3600) it exits by
    itself; socat restarts that wait after each refused peer, so stop it
    with ``stream_stop`` when the migration is over or did not happen.

    ``port`` is 1024-65535. Refused before anything starts: a ``bind`` that
    is not an address of this host, a port in use on ``bind`` (checked by
    binding it as socat does), a listener of ours still on that port, a
    missing ``socat``. Then it waits up to 5 s for socat to listen; a socat
    that exits at once raises CommandExecutionError with the tail of its
    log. socat's and ``xl migrate-receive``'s messages go to
    ``/var/log/xen/xencluster-stream-<port>.log`` (appended, one header line
    per start); the listener's pid and argv to
    ``/run/xencluster/stream-<port>.json`` for ``stream_stop``.

    Returns ``{"port", "bind", "allow_from", "accept_timeout", "argv",
    "log", "pid", "started"}``; ``dry_run=True`` checks and returns with
    ``pid`` None and ``started`` False.

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_xl.stream_receive 31000 192.168.100.2 192.168.100.1
        salt node2 xencluster_xl.stream_receive 31000 fd00::2 fd00::1 accept_timeout=30 dry_run=True
    """
    bind_ip, allow_ip = _check_receive_args(port, bind, allow_from, accept_timeout)
    _check_bool(dry_run, "dry_run")
    argv = _receive_argv(port, bind_ip, allow_ip, accept_timeout)
    log_path = _stream_log(port)
    result = {"port": port, "bind": str(bind_ip), "allow_from": str(allow_ip), "accept_timeout": accept_timeout,
              "argv": argv, "log": log_path, "pid": None, "started": False}  # fmt: skip
    if not _which("socat"):
        raise CommandExecutionError("socat is not installed on this host (the xencluster formula installs it)")
    held = _read_state(port)
    if held is not None and _is_ours(held["pid"], held["argv"]):
        raise CommandExecutionError(
            f"port {port}: the stream listener pid {held['pid']} is still there "
            f"(xencluster_xl.stream_stop {port} first)"
        )
    problem = _bind_probe(bind_ip, port)
    if problem == _NOT_HERE:
        raise CommandExecutionError(f"bind {bind_ip} is {_NOT_HERE}: cannot listen on it")
    if problem == _IN_USE:
        raise CommandExecutionError(f"{_stream_text(bind_ip, port)} is in use on this host: not listening there")
    if dry_run:
        return result
    proc, offset = _start_listener(argv, log_path)
    _wait_listening(proc, argv, bind_ip, port, log_path, offset)
    _write_state(port, {"port": port, "pid": proc.pid, "argv": argv, "bind": str(bind_ip),
                        "allow_from": str(allow_ip), "log": log_path, "offset": offset})  # fmt: skip
    return dict(result, pid=proc.pid, started=True)


def stream_stop(port, force=False):
    """
    Stop the ``stream_receive`` listener on ``port`` if it is still there; a no-op otherwise.

    A listener still waiting for its connection is stopped (SIGTERM, then
    SIGKILL after 5 s). One that has accepted its connection carries a
    migration: it is left alone unless ``force=True`` (which breaks that
    migration; before xl's final handshake the source resumes the guest).
    The process is only signalled while its command line is still the one
    started (no reused pid is ever hit). The state file goes in any case
    but the refused one.

    Returns ``{"port", "pid", "stopped", "state", "log", "log_tail"}``:
    ``state`` is ``absent`` (no listener recorded), ``exited`` (it had
    ended: after its migration, or its ``accept_timeout``), ``listening``
    or ``streaming`` (what it was doing when stopped); ``log_tail`` the last
    lines of this listener's log (socat and ``xl migrate-receive``).

    CLI Example:

    .. code-block:: bash

        salt node2 xencluster_xl.stream_stop 31000
    """
    _check_port(port)
    _check_bool(force, "force")
    state = _read_state(port)
    result = {"port": port, "pid": None, "stopped": False, "state": "absent", "log": _stream_log(port),
              "log_tail": ""}  # fmt: skip
    if state is None:
        return result
    pid, argv = state["pid"], state["argv"]
    result.update(pid=pid, log=state["log"])
    if not _is_ours(pid, argv):
        _reap(pid)
        _forget(port)
        return dict(result, state="exited", log_tail=_log_tail(state["log"], state["offset"]))
    listening = _bind_probe(state["bind_ip"], port) == _IN_USE
    if not listening and not force:
        raise CommandExecutionError(
            f"the stream listener on port {port} (pid {pid}) has accepted its connection: a migration "
            "is streaming through it; not stopping it (force=True would, and that migration would fail)"
        )
    _terminate(pid, argv)
    _forget(port)
    return dict(result, stopped=True, state="listening" if listening else "streaming",
                log_tail=_log_tail(state["log"], state["offset"]))  # fmt: skip
