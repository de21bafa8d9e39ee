"""xencluster_xl: the ``stream`` migration transport.

Source side: ``migrate(transport="stream", stream_address=...)``. Target side:
``stream_receive`` (a one-shot socat listener, started detached) and
``stream_stop``. Everything outside the module is faked here: ``cmd.run_all``
(xl), ``subprocess.Popen`` (socat), the bind probe, the route lookup,
``os.kill`` and ``/proc/<pid>/cmdline`` (a directory of the test). The real
socat, sockets and connector script run in test_xencluster_xl_stream_loopback.py.

A dom0 WITH guests uses SYNTHETIC ``xl list`` output (the minimal part of the
synthetic data of test_xencluster_xl_module.py, built from Xen 4.17's source,
not captured): web1 (pvh, domid 3, blocked), db1 (pv, domid 5), crashed1 (pvh,
crashed).
"""

import json
import os
import pathlib
import signal
import stat
import subprocess

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from saltext.xencluster.modules import xencluster_xl as xl

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONNECTOR = xl.STREAM_CONNECTOR
SAN1, SAN2 = "192.168.100.1", "192.168.100.2"
PORT = 31000
RECEIVE_V4 = ["socat", "-d", "-d",
              "TCP4-LISTEN:31000,bind=192.168.100.2,reuseaddr,accept-timeout=60,range=192.168.100.1/32",
              "EXEC:xl migrate-receive"]  # fmt: skip
RECEIVE_V6 = ["socat", "-d", "-d",
              "TCP6-LISTEN:31000,bind=[fd00::2],reuseaddr,accept-timeout=60,range=[fd00::1]/128",
              "EXEC:xl migrate-receive"]  # fmt: skip


# --- SYNTHETIC: copied (minimal part) from test_xencluster_xl_module.py -------
def _domain(domid, name, dtype, memkb, vcpus):
    return {
        "domid": domid,
        "config": {
            "c_info": {"type": dtype, "name": name},
            "b_info": {"max_vcpus": vcpus, "max_memkb": memkb, "target_memkb": memkb},
        },
    }


_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
_ROW = "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"
XL_LIST_L = json.dumps([_domain(3, "web1", "pvh", 1048576, 2), _domain(5, "db1", "pv", 4194304, 4),
                        _domain(7, "crashed1", "pvh", 131072, 1)])  # fmt: skip
XL_LIST = "\n".join([
    _HEADER,
    _ROW % ("Domain-0", 0, 2048, 2, "r", "-", "-", "-", "-", "-", 812.4),
    _ROW % ("web1", 3, 1024, 2, "-", "b", "-", "-", "-", "-", 42.0),
    _ROW % ("db1", 5, 4096, 4, "r", "-", "-", "-", "-", "-", 1200.5),
    _ROW % ("crashed1", 7, 128, 1, "-", "-", "-", "s", "c", "-", 3.1),
]) + "\n"  # fmt: skip
# -------------------------------------------------------------------------------

LIST_CALLS = [xl.XL_LIST_LONG, xl.XL_LIST]

INJECTIONS = [
    "; rm -rf /", "$(id)", "`id`", "a b", "x\n", "\n", "", "-s", "--help", "192.168.100.2 ", " 192.168.100.2",
    "192.168.100.2;id", "192.168.100.2\n", "192.168.100.2\x00", "192.168.100.2/32", "node2", "localhost",
    "１９２.168.100.2", "192.168.100.02", "1.2.3", "999.1.1.1", "fe80::1%eth0", "[fd00::2]", "fd00::2]",
    None, 3, b"192.168.100.2", ["192.168.100.2"], {"ip": "192.168.100.2"},
]  # fmt: skip
# IP addresses that parse but cannot carry a stream
UNUSABLE = ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "169.254.1.1", "fe80::1", "255.255.255.255", "240.0.0.1",
            "::ffff:192.168.100.2"]  # fmt: skip
BAD_ADDRESSES = [
    "192.168.100.2:31000; id", "192.168.100.2:31000 xl", "192.168.100.2:31000\n", "192.168.100.2\n:31000",
    "$(id):31000", "`id`:31000", "192.168.100.2:$(id)", "192.168.100.2", "192.168.100.2:", ":31000", "[]:31000",
    "192.168.100.2:1023", "192.168.100.2:0", "192.168.100.2:65536", "192.168.100.2:031000", "192.168.100.2:+31000",
    "192.168.100.02:31000", "node2:31000", "fd00::2:31000", "[192.168.100.2]:31000", "[fe80::1%eth0]:31000",
    "[fd00::2]31000", "[[fd00::2]]:31000", "[fd00::2]:31000\n", "192.168.100.2:３１０００", "１９２.168.100.2:31000",
    "192.168.100.2:31000:31001", "tcp://192.168.100.2:31000", "192.168.100.2,fork:31000", None, 31000,
    b"1.2.3.4:31000", ["192.168.100.2:31000"],
    *[f"[{ip}]:31000" if ":" in ip else f"{ip}:31000" for ip in UNUSABLE],
]  # fmt: skip


class FakeClock:
    """Stands in for the module's ``time``: sleep() advances monotonic()."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class Host:
    """The faked host: /proc, the listening sockets, the processes started and signalled."""

    def __init__(self, proc_dir):
        self.proc_dir = proc_dir
        self.listening = set()  # (ip, port) held by a listening socket
        self.foreign = set()  # addresses this host does not have
        self.popens = []
        self.kills = []
        self.next_pid = 4242
        self.ignore = set()  # signals the process ignores
        self.behaviour = {"listens_after": 2, "exits": None, "output": b""}
        self.route = {}  # destination ip -> source ip
        self.probes = []

    def set_cmdline(self, pid, argv):
        (self.proc_dir / str(pid)).mkdir(exist_ok=True)
        (self.proc_dir / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))

    def gone(self, pid):
        cmdline = self.proc_dir / str(pid) / "cmdline"
        if cmdline.exists():
            cmdline.unlink()

    def probe(self, ip, port):
        self.probes.append((str(ip), port))
        if str(ip) in self.foreign:
            return xl._NOT_HERE
        return xl._IN_USE if (str(ip), port) in self.listening else None

    def kill(self, pid, sig):
        self.kills.append((pid, sig))
        if not (self.proc_dir / str(pid) / "cmdline").exists():
            raise ProcessLookupError(pid)
        if sig not in self.ignore:
            self.gone(pid)
            self.listening = {a for a in self.listening if a[1] != getattr(self, "port_of", {}).get(pid)}
            for proc in self.popens:
                if proc.pid == pid:
                    proc.returncode = -sig


class FakePopen:
    """Stands in for ``subprocess.Popen`` of socat: listens after a few polls, or exits at once."""

    host = None

    def __init__(self, argv, **kwargs):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        assert "shell" not in kwargs
        host = self.host
        self.argv, self.kwargs = argv, kwargs
        self.pid = host.next_pid
        host.next_pid += 1
        host.popens.append(self)
        host.set_cmdline(self.pid, argv)
        kwargs["stdout"].write(host.behaviour["output"])
        kwargs["stdout"].flush()
        self.polls = 0
        self.returncode = None
        self.bind, self.port = _listen_address(argv)
        host.port_of = {**getattr(host, "port_of", {}), self.pid: self.port}

    def poll(self):
        self.polls += 1
        host = self.host
        if self.returncode is None and host.behaviour["exits"] is not None:
            self.returncode = host.behaviour["exits"]
            host.gone(self.pid)
        elif self.returncode is None and host.behaviour["listens_after"] is not None:
            if self.polls >= host.behaviour["listens_after"]:
                host.listening.add((self.bind, self.port))
        return self.returncode


def _listen_address(argv):
    """(bind ip, port) of a socat TCPx-LISTEN argv."""
    spec = argv[3]
    port = int(spec.split(":", 1)[1].split(",", 1)[0])
    bind = next(o for o in spec.split(",") if o.startswith("bind=")).split("=", 1)[1].strip("[]")
    return bind, port


@pytest.fixture
def configure_loader_modules(run_all):
    return {xl: {"__salt__": {"cmd.run_all": run_all}}}


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(xl, "time", fake)
    return fake


@pytest.fixture
def host(monkeypatch, tmp_path, clock):
    """A faked dom0: connector installed, socat present, dirs under tmp_path, Popen/kill/probe/route faked."""
    proc_dir = tmp_path / "proc"
    proc_dir.mkdir()
    fake = Host(proc_dir)
    connector = tmp_path / "xl-stream-connect"
    connector.write_text("#!/bin/sh\n")
    connector.chmod(0o755)
    monkeypatch.setattr(xl, "STREAM_CONNECTOR", str(connector))
    monkeypatch.setattr(xl, "STREAM_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setattr(xl, "STREAM_STATE_DIR", str(tmp_path / "run" / "xencluster"))
    monkeypatch.setattr(xl, "PROC", str(proc_dir))
    monkeypatch.setattr(xl, "_which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr(xl, "_bind_probe", fake.probe)

    def route(ip):
        return xl.ipaddress.ip_address(fake.route.get(str(ip), SAN1 if ip.version == 4 else "fd00::1"))

    monkeypatch.setattr(xl, "_route_source", route)
    monkeypatch.setattr(xl.os, "kill", fake.kill)
    monkeypatch.setattr(FakePopen, "host", fake)
    monkeypatch.setattr(xl.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(xl, "_STARTED", {})
    fake.tmp = tmp_path
    fake.connector = str(connector)
    return fake


@pytest.fixture
def guests(run_all):
    run_all.outputs[tuple(xl.XL_LIST_LONG)] = XL_LIST_L
    run_all.outputs[tuple(xl.XL_LIST)] = XL_LIST
    return run_all


def _state_file(host, port=PORT):
    return host.tmp / "run" / "xencluster" / f"stream-{port}.json"


def _log_file(host, port=PORT):
    return host.tmp / "log" / f"xencluster-stream-{port}.log"


# --- source side: migrate transport=stream ------------------------------------------


def test_migrate_stream_runs_xl_with_the_connector(guests, host, clock):
    guests.outputs["xl"] = ""
    guests.effects["xl"] = lambda argv: clock.sleep(12.5) if argv[1] == "migrate" else None
    result = xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}")
    argv = ["xl", "migrate", "-s", host.connector, "web1", "192.168.100.2:31000"]
    assert guests.calls == LIST_CALLS + [argv]
    assert result == {
        "argv": argv,
        "checks": {"name": "web1", "domid": 3, "type": "pvh", "state": "blocked", "host": "node2"},
        "migrated": True,
        "duration_s": 12.5,
        "transport": "stream",
        "stream_address": "192.168.100.2:31000",
        "source_address": SAN1,
        "receive_argv": RECEIVE_V4,
    }
    assert host.popens == [] and host.kills == []  # the source starts nothing itself


def test_migrate_stream_dry_run_gives_both_sides_and_runs_only_the_checks(guests, host):
    result = xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}", stream_from=SAN1,
                        dry_run=True)  # fmt: skip
    assert result == {
        "argv": ["xl", "migrate", "-s", host.connector, "web1", "192.168.100.2:31000"],
        "checks": {"name": "web1", "domid": 3, "type": "pvh", "state": "blocked", "host": "node2"},
        "migrated": False,
        "transport": "stream",
        "stream_address": "192.168.100.2:31000",
        "source_address": SAN1,
        "receive_argv": RECEIVE_V4,
    }
    assert result["receive_argv"] == xl.stream_receive_argv(PORT, SAN2, SAN1)
    assert guests.calls == LIST_CALLS
    assert host.popens == [] and not (host.tmp / "log").exists()


@pytest.mark.parametrize(
    "address,word,shown",
    [
        ("[fd00::2]:31000", "fd00::2:31000", "[fd00::2]:31000"),
        ("[FD00:0:0::2]:31000", "fd00::2:31000", "[fd00::2]:31000"),  # canonical form
    ],
)
def test_migrate_stream_ipv6_reaches_the_connector_without_brackets(guests, host, address, word, shown):
    result = xl.migrate("web1", "node2", transport="stream", stream_address=address, dry_run=True)
    assert result["argv"] == ["xl", "migrate", "-s", host.connector, "web1", word]
    assert result["stream_address"] == shown and result["source_address"] == "fd00::1"
    assert result["receive_argv"] == RECEIVE_V6


@pytest.mark.parametrize("address", ["127.0.0.1:1024", "10.0.0.2:65535", "[::1]:40000", "[2001:db8::7]:31000"])
def test_migrate_stream_accepts_addresses(guests, host, address):
    host.route = {"127.0.0.1": "127.0.0.1", "10.0.0.2": "10.0.0.1", "::1": "::1", "2001:db8::7": "2001:db8::1"}
    result = xl.migrate("web1", "node2", transport="stream", stream_address=address, dry_run=True)
    assert result["stream_address"] == address


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_migrate_stream_refuses_bad_addresses_before_any_command(run_all, host, address):
    with pytest.raises(SaltInvocationError, match="stream_address"):
        xl.migrate("web1", "node2", transport="stream", stream_address=address)
    assert run_all.calls == []


@pytest.mark.parametrize("stream_from", [v for v in INJECTIONS if v is not None] + UNUSABLE + ["fd00::1"])
def test_migrate_stream_refuses_bad_stream_from(run_all, host, stream_from):
    with pytest.raises(SaltInvocationError, match="stream_from"):
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}", stream_from=stream_from)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"transport": "stream"}, "needs stream_address"),
        ({"transport": "stream", "stream_address": f"{SAN2}:{PORT}", "ssh_command": "ssh"}, "ssh_command is for"),
        ({"stream_address": f"{SAN2}:{PORT}"}, "for transport=stream only"),
        ({"transport": "ssh", "stream_from": SAN1}, "for transport=stream only"),
        ({"transport": "stream", "stream_address": f"{SAN2}:{PORT}", "live": False}, "always migrates live"),
        ({"transport": "stream", "stream_address": f"{SAN2}:{PORT}", "dry_run": "yes"}, "dry_run"),
        ({"transport": "stream ", "stream_address": f"{SAN2}:{PORT}"}, "transport must be one of"),
        ({"transport": ["stream"], "stream_address": f"{SAN2}:{PORT}"}, "transport must be one of"),
    ],
)
def test_migrate_stream_argument_combinations(run_all, host, kwargs, match):
    with pytest.raises(SaltInvocationError, match=match):
        xl.migrate("web1", "node2", **kwargs)
    assert run_all.calls == []


@pytest.mark.parametrize(
    "name,match",
    [
        ("db1", "db1 is a PV guest.*shadow paging"),
        ("crashed1", "crashed1 is crashed here, not running"),
        ("absent1", "no guest named absent1"),
    ],
)
def test_migrate_stream_guest_checks_come_first(guests, host, monkeypatch, name, match):
    monkeypatch.setattr(xl, "STREAM_CONNECTOR", str(host.tmp / "missing"))  # not reached
    with pytest.raises(CommandExecutionError, match=match):
        xl.migrate(name, "node2", transport="stream", stream_address=f"{SAN2}:{PORT}")
    assert guests.calls == LIST_CALLS


def test_migrate_stream_needs_the_connector(guests, host, monkeypatch):
    monkeypatch.setattr(xl, "STREAM_CONNECTOR", str(host.tmp / "missing"))
    with pytest.raises(CommandExecutionError, match="missing or not executable.*formula installs it"):
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}", dry_run=True)
    os.chmod(host.connector, 0o644)
    monkeypatch.setattr(xl, "STREAM_CONNECTOR", host.connector)
    with pytest.raises(CommandExecutionError, match="missing or not executable"):
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}")
    assert guests.calls == LIST_CALLS * 2  # never xl migrate


def test_migrate_stream_needs_socat(guests, host, monkeypatch):
    monkeypatch.setattr(xl, "_which", lambda cmd: None)
    with pytest.raises(CommandExecutionError, match="socat is not installed"):
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}")
    assert guests.calls == LIST_CALLS


def test_migrate_stream_from_must_be_the_routed_source(guests, host):
    host.route = {SAN2: "192.168.100.9"}
    with pytest.raises(CommandExecutionError, match="reaches 192.168.100.2 from 192.168.100.9, not from stream_from "
                                                    "192.168.100.1.*would refuse"):  # fmt: skip
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}", stream_from=SAN1)
    assert guests.calls == LIST_CALLS


def test_migrate_stream_no_route(guests, host, monkeypatch):
    def no_route(ip):
        raise CommandExecutionError(f"this host has no route to {ip}: [Errno 101] Network is unreachable")

    monkeypatch.setattr(xl, "_route_source", no_route)
    with pytest.raises(CommandExecutionError, match="no route to 192.168.100.2"):
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}")
    assert guests.calls == LIST_CALLS


def test_migrate_stream_failure_carries_stderr_and_points_at_the_target(guests, host):
    argv = ("xl", "migrate", "-s", host.connector, "web1", "192.168.100.2:31000")
    guests.outputs[argv] = {
        "retcode": 1,
        "stderr": "2026/11/24 13:16:46 socat[6478] E connect(5, AF=2 192.168.100.2:31000, 16): Connection refused\n"
                  "migration receiver stream: read: End of file\n",
    }  # fmt: skip
    with pytest.raises(CommandExecutionError) as err:
        xl.migrate("web1", "node2", transport="stream", stream_address=f"{SAN2}:{PORT}")
    message = str(err.value)
    assert "Connection refused" in message and "End of file" in message
    assert f"xencluster-stream-{PORT}.log" in message and f"xencluster_xl.stream_stop {PORT}" in message
    assert err.value.info["retcode"] == 1


def test_migrate_ssh_result_keeps_its_keys_and_gains_the_duration(guests, host, clock):
    guests.outputs["xl"] = ""
    guests.effects["xl"] = lambda argv: clock.sleep(3.25)
    result = xl.migrate("web1", "node2")
    assert set(result) == {"argv", "checks", "migrated", "duration_s"}
    assert result["argv"] == ["xl", "migrate", "web1", "node2"] and result["duration_s"] == 3.25
    assert set(xl.migrate("web1", "node2", dry_run=True)) == {"argv", "checks", "migrated"}


# --- target side: stream_receive -------------------------------------------------------


def test_stream_receive_argv_is_pure_and_exact():
    assert xl.stream_receive_argv(PORT, SAN2, SAN1) == RECEIVE_V4
    assert xl.stream_receive_argv(PORT, "fd00::2", "fd00::1") == RECEIVE_V6
    assert xl.stream_receive_argv(1024, "127.0.0.1", "127.0.0.1", accept_timeout=5)[3] == (
        "TCP4-LISTEN:1024,bind=127.0.0.1,reuseaddr,accept-timeout=5,range=127.0.0.1/32"
    )


def test_stream_receive_starts_a_detached_listener(run_all, host):
    host.behaviour["output"] = b"2026/11/24 13:20:00 socat[4242] N listening on AF=2 192.168.100.2:31000\n"
    result = xl.stream_receive(PORT, SAN2, SAN1)
    log = _log_file(host)
    assert result == {"port": PORT, "bind": SAN2, "allow_from": SAN1, "accept_timeout": 60, "argv": RECEIVE_V4,
                      "log": str(log), "pid": 4242, "started": True}  # fmt: skip
    (proc,) = host.popens
    assert proc.argv == RECEIVE_V4
    kw = proc.kwargs
    assert kw["start_new_session"] is True and kw["close_fds"] is True and kw["cwd"] == "/"
    assert kw["stdin"] is subprocess.DEVNULL and kw["stderr"] is subprocess.STDOUT
    assert kw["stdout"].name == str(log) and kw["stdout"].closed  # the parent's copy is closed
    lines = log.read_text().splitlines()
    assert lines[0].endswith("xencluster_xl.stream_receive: " + " ".join(RECEIVE_V4)) and lines[0].startswith("--- ")
    assert "N listening on" in lines[1]
    state = json.loads(_state_file(host).read_text())
    assert state == {"port": PORT, "pid": 4242, "argv": RECEIVE_V4, "bind": SAN2, "allow_from": SAN1,
                     "log": str(log), "offset": len(lines[0]) + 1}  # fmt: skip
    assert stat.S_IMODE(_state_file(host).stat().st_mode) == 0o600
    assert stat.S_IMODE(_state_file(host).parent.stat().st_mode) == 0o700
    assert host.probes[0] == (SAN2, PORT) and (SAN2, PORT) in host.listening
    assert run_all.calls == []  # no xl call on the target: socat runs xl migrate-receive itself
    assert xl._STARTED == {4242: proc}


def test_stream_receive_ipv6(host):
    result = xl.stream_receive(PORT, "fd00::2", "fd00::1", accept_timeout=30)
    assert result["argv"][3] == "TCP6-LISTEN:31000,bind=[fd00::2],reuseaddr,accept-timeout=30,range=[fd00::1]/128"
    assert host.popens[0].argv == result["argv"] and result["started"] is True


def test_stream_receive_dry_run_starts_nothing(host):
    result = xl.stream_receive(PORT, SAN2, SAN1, dry_run=True)
    assert result == {"port": PORT, "bind": SAN2, "allow_from": SAN1, "accept_timeout": 60, "argv": RECEIVE_V4,
                      "log": str(_log_file(host)), "pid": None, "started": False}  # fmt: skip
    assert host.popens == [] and not _state_file(host).exists() and not _log_file(host).exists()


def test_stream_receive_refuses_a_port_in_use(host):
    host.listening.add((SAN2, PORT))
    with pytest.raises(CommandExecutionError, match=r"192.168.100.2:31000 is in use on this host"):
        xl.stream_receive(PORT, SAN2, SAN1)
    with pytest.raises(CommandExecutionError, match="in use"):
        xl.stream_receive(PORT, SAN2, SAN1, dry_run=True)
    assert host.popens == [] and not _state_file(host).exists()


def test_stream_receive_refuses_an_address_this_host_does_not_have(host):
    host.foreign.add(SAN2)
    with pytest.raises(CommandExecutionError, match="bind 192.168.100.2 is not an address of this host"):
        xl.stream_receive(PORT, SAN2, SAN1)
    assert host.popens == []


def test_stream_receive_refuses_while_its_listener_is_still_there(host):
    xl.stream_receive(PORT, SAN2, SAN1)
    host.listening.clear()  # it accepted its connection: the port looks free, the process streams
    with pytest.raises(CommandExecutionError, match="pid 4242 is still there.*stream_stop 31000 first"):
        xl.stream_receive(PORT, SAN2, SAN1)
    assert len(host.popens) == 1


def test_stream_receive_after_an_exited_listener(host):
    xl.stream_receive(PORT, SAN2, SAN1)
    host.gone(4242)
    host.listening.clear()
    assert xl.stream_receive(PORT, SAN2, SAN1)["pid"] == 4243
    assert json.loads(_state_file(host).read_text())["pid"] == 4243


def test_stream_receive_listener_that_exits_at_once_raises_with_its_log(host):
    old = b"--- 2026-11-24T10:00:00Z an earlier start\n2026/11/24 10:00:01 socat[17] N exiting with status 0\n"
    _log_file(host).parent.mkdir()
    _log_file(host).write_bytes(old)
    host.behaviour.update(exits=1, output=b"2026/11/24 13:20:00 socat[4242] E bind(5, {AF=2 192.168.100.2:31000}, "
                                          b"16): Address already in use\n")  # fmt: skip
    with pytest.raises(CommandExecutionError) as err:
        xl.stream_receive(PORT, SAN2, SAN1)
    message = str(err.value)
    assert "exited at once (rc 1)" in message and "Address already in use" in message
    assert "earlier start" not in message  # only this start's part of the log
    assert err.value.info["retcode"] == 1 and err.value.info["argv"] == RECEIVE_V4
    assert not _state_file(host).exists() and xl._STARTED == {}
    assert _log_file(host).read_bytes().startswith(old)  # appended, not truncated


def test_stream_receive_listener_that_never_listens_is_stopped(host, clock):
    host.behaviour.update(listens_after=None, output=b"socat[4242] W something odd\n")
    with pytest.raises(CommandExecutionError, match=r"did not listen on 192.168.100.2:31000 within 5 s.*something odd"):
        xl.stream_receive(PORT, SAN2, SAN1)
    assert host.kills == [(4242, signal.SIGTERM)]
    assert not _state_file(host).exists()
    assert round(sum(clock.sleeps), 6) == xl.LISTEN_WAIT


def test_stream_receive_cannot_start_socat(host, monkeypatch):
    def missing(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "socat")

    monkeypatch.setattr(xl.subprocess, "Popen", missing)
    with pytest.raises(CommandExecutionError, match="cannot start socat"):
        xl.stream_receive(PORT, SAN2, SAN1)


def test_stream_receive_needs_socat(host, monkeypatch):
    monkeypatch.setattr(xl, "_which", lambda cmd: None)
    with pytest.raises(CommandExecutionError, match="socat is not installed"):
        xl.stream_receive(PORT, SAN2, SAN1)
    assert host.popens == []


@pytest.mark.parametrize("what", ["bind", "allow_from"])
@pytest.mark.parametrize("value", INJECTIONS + UNUSABLE)
def test_stream_receive_refuses_bad_addresses(host, what, value):
    kwargs = {"port": PORT, "bind": SAN2, "allow_from": SAN1, what: value}
    with pytest.raises(SaltInvocationError, match=what):
        xl.stream_receive(**kwargs)
    with pytest.raises(SaltInvocationError, match=what):
        xl.stream_receive_argv(**kwargs)
    assert host.popens == [] and host.probes == []


@pytest.mark.parametrize("port", [0, 1023, 65536, -1, "31000", "31000 ", 31000.0, True, None, [31000]])
def test_stream_receive_refuses_bad_ports(host, port):
    with pytest.raises(SaltInvocationError, match="port must be an integer from 1024 to 65535"):
        xl.stream_receive(port, SAN2, SAN1)
    assert host.popens == []


@pytest.mark.parametrize("timeout", [0, -1, 3601, "60", 1.5, True, None])
def test_stream_receive_refuses_bad_accept_timeouts(host, timeout):
    with pytest.raises(SaltInvocationError, match="accept_timeout"):
        xl.stream_receive(PORT, SAN2, SAN1, accept_timeout=timeout)
    assert host.popens == []


def test_stream_receive_refuses_mixed_ip_versions(host):
    with pytest.raises(SaltInvocationError, match="not of the same IP version"):
        xl.stream_receive(PORT, SAN2, "fd00::1")
    with pytest.raises(SaltInvocationError, match="dry_run"):
        xl.stream_receive(PORT, SAN2, SAN1, dry_run="no")
    assert host.popens == []


# --- stream_stop -------------------------------------------------------------------------


def test_stream_stop_without_a_listener(host):
    assert xl.stream_stop(PORT) == {"port": PORT, "pid": None, "stopped": False, "state": "absent",
                                    "log": str(_log_file(host)), "log_tail": ""}  # fmt: skip
    assert host.kills == []


def test_stream_stop_a_listening_listener(host):
    host.behaviour["output"] = b"socat[4242] N listening on AF=2 192.168.100.2:31000\n"
    xl.stream_receive(PORT, SAN2, SAN1)
    result = xl.stream_stop(PORT)
    assert result == {"port": PORT, "pid": 4242, "stopped": True, "state": "listening", "log": str(_log_file(host)),
                      "log_tail": "socat[4242] N listening on AF=2 192.168.100.2:31000"}  # fmt: skip
    assert host.kills == [(4242, signal.SIGTERM)]
    assert not _state_file(host).exists() and xl._STARTED == {}  # reaped


def test_stream_stop_after_the_listener_exited(host):
    xl.stream_receive(PORT, SAN2, SAN1)
    with open(_log_file(host), "ab") as fh:
        fh.write(b"migration target: Domain started successsfully.\nsocat[4242] N exiting with status 0\n")
    host.gone(4242)
    host.listening.clear()
    result = xl.stream_stop(PORT)
    assert (result["stopped"], result["state"], result["pid"]) == (False, "exited", 4242)
    assert result["log_tail"].splitlines()[-2:] == ["migration target: Domain started successsfully.",
                                                    "socat[4242] N exiting with status 0"]  # fmt: skip
    assert host.kills == [] and not _state_file(host).exists()
    assert xl.stream_stop(PORT)["state"] == "absent"


def test_stream_stop_leaves_a_streaming_migration_alone_unless_forced(host):
    xl.stream_receive(PORT, SAN2, SAN1)
    host.listening.clear()  # accepted: socat closed its listening socket
    with pytest.raises(CommandExecutionError, match="pid 4242.*accepted its connection.*not stopping it"):
        xl.stream_stop(PORT)
    assert host.kills == [] and _state_file(host).exists()
    result = xl.stream_stop(PORT, force=True)
    assert (result["stopped"], result["state"]) == (True, "streaming")
    assert host.kills == [(4242, signal.SIGTERM)] and not _state_file(host).exists()


def test_stream_stop_escalates_to_sigkill(host, clock):
    xl.stream_receive(PORT, SAN2, SAN1)
    host.ignore.add(signal.SIGTERM)
    clock.sleeps.clear()
    assert xl.stream_stop(PORT)["stopped"] is True
    assert host.kills == [(4242, signal.SIGTERM), (4242, signal.SIGKILL)]
    assert round(sum(clock.sleeps), 6) == xl.STOP_WAIT


def test_stream_stop_raises_when_even_sigkill_fails(host):
    xl.stream_receive(PORT, SAN2, SAN1)
    host.ignore.update({signal.SIGTERM, signal.SIGKILL})
    with pytest.raises(CommandExecutionError, match="pid 4242.*still there after SIGKILL"):
        xl.stream_stop(PORT)
    assert _state_file(host).exists()


def test_stream_stop_never_signals_a_reused_pid(host):
    xl.stream_receive(PORT, SAN2, SAN1)
    host.set_cmdline(4242, ["/usr/sbin/sshd", "-D"])  # 4242 is someone else now
    result = xl.stream_stop(PORT)
    assert (result["stopped"], result["state"]) == (False, "exited")
    assert host.kills == []


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", json.dumps({"port": PORT, "pid": "4242", "argv": [], "bind": SAN2, "log": "/x", "offset": 0}),
     json.dumps({"port": 31001, "pid": 4242, "argv": [], "bind": SAN2, "log": "/x", "offset": 0}),
     json.dumps({"port": PORT, "pid": 4242, "argv": [], "bind": "$(id)", "log": "/x", "offset": 0})],
)  # fmt: skip
def test_stream_stop_refuses_a_state_file_it_cannot_trust(host, content):
    _state_file(host).parent.mkdir(parents=True)
    _state_file(host).write_text(content)
    with pytest.raises(CommandExecutionError, match="stream listener state"):
        xl.stream_stop(PORT)
    assert host.kills == []


@pytest.mark.parametrize("port", [0, 80, 70000, "31000", None])
def test_stream_stop_refuses_bad_ports(host, port):
    with pytest.raises(SaltInvocationError, match="port"):
        xl.stream_stop(port)
    with pytest.raises(SaltInvocationError, match="force"):
        xl.stream_stop(PORT, force="yes")


# --- the formula ships the connector and socat ---------------------------------------------


def test_the_formula_installs_the_connector_the_module_runs():
    dom0 = (ROOT / "salt" / "xencluster" / "dom0.sls").read_text()
    state = dom0[dom0.index("xencluster-xl-stream-connect:"):]
    assert f"- name: {xl.STREAM_CONNECTOR}\n" in state
    assert "- source: salt://xencluster/files/xl-stream-connect\n" in state
    assert '- mode: "0755"\n' in state and "- pkg: xencluster-packages" in state
    script = ROOT / "salt" / "xencluster" / "files" / "xl-stream-connect"
    assert script.read_text().startswith("#!/bin/sh\n")
    packages = (ROOT / "salt" / "xencluster" / "map.jinja").read_text()
    defaults = packages[packages.index("DEFAULT_PACKAGES = ["):]
    assert "'socat'" in defaults[: defaults.index("]")]


def test_every_stream_function_has_a_cli_example():
    for func in (xl.migrate, xl.stream_receive, xl.stream_stop, xl.stream_receive_argv):
        assert "CLI Example:" in func.__doc__, func.__name__
