"""
Xen ``xl`` on xencluster dom0s: which guests run here, and what the host is.

* ``list_domains`` reads the domain configurations with one ``xl list -l``
  (JSON) and the run states with one plain ``xl list``: two calls per host,
  whatever the number of guests.
* ``info`` parses ``xl info``.

Only loads on a dom0 (``/proc/xen/capabilities`` contains ``control_d``) that
has the ``xl`` binary. Named ``xencluster_xl`` so it never shadows Salt's
``xen``/``virt`` modules.
"""

import json
import logging
import re

import salt.utils.path
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "xencluster_xl"

CAPABILITIES = "/proc/xen/capabilities"
XL_LIST_LONG = ["xl", "list", "-l"]
XL_LIST = ["xl", "list"]
XL_INFO = ["xl", "info"]

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
