"""xencluster_xl stream transport with the real pieces, on 127.0.0.1 only.

The real bind probe and route lookup, the formula's connector script under
``sh`` (with a fake ``socat`` that prints its arguments), and a whole stream:
``stream_receive`` starts the real socat (its log and state under tmp_path),
the real connector connects to it, and a fake ``xl`` (first in PATH) plays
``xl migrate-receive``: it writes a banner, copies its stdin to a file and
logs its arguments. No Xen, no QEMU lab.
"""

import ipaddress
import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest
from salt.exceptions import CommandExecutionError

from saltext.xencluster.modules import xencluster_xl as xl

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "salt" / "xencluster" / "files" / "xl-stream-connect"
LO = ipaddress.ip_address("127.0.0.1")
needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")


@pytest.fixture
def configure_loader_modules():
    return {xl: {"__salt__": {}}}


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the bind probe and the route lookup ------------------------------------------------------


def test_bind_probe_tells_free_in_use_and_not_here():
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert xl._bind_probe(LO, port) is None  # bound, not listening: socat could still take it
        holder.listen()
        assert xl._bind_probe(LO, port) == xl._IN_USE
    assert xl._bind_probe(LO, port) is None
    assert xl._bind_probe(ipaddress.ip_address("192.0.2.1"), port) == xl._NOT_HERE  # TEST-NET-1


def test_route_source_of_loopback():
    assert xl._route_source(LO) == LO


# --- the connector script ---------------------------------------------------------------------------


@pytest.fixture
def fake_socat(tmp_path):
    """A PATH whose socat prints its arguments, one per line."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    socat = bindir / "socat"
    socat.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    socat.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}


def _connect(env, *args):
    return subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=10,
                          check=False)  # fmt: skip


def test_the_connector_is_executable_sh():
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["sh", "-n", str(SCRIPT)], check=False).returncode == 0


@pytest.mark.parametrize(
    "word,target",
    [
        ("192.168.100.2:31000", "TCP4:192.168.100.2:31000,connect-timeout=10"),
        ("fd00::2:31000", "TCP6:[fd00::2]:31000,connect-timeout=10"),
    ],
)
def test_the_connector_ignores_the_words_xl_appends(fake_socat, word, target):
    # what xl runs: exec <connector> <host> xl [-t] migrate-receive [-e] [-d] [-p]
    done = _connect(fake_socat, word, "xl", "-t", "migrate-receive", "-e", "-d", "-p")
    assert (done.returncode, done.stdout.splitlines(), done.stderr) == (0, ["-", target], "")


@pytest.mark.parametrize(
    "args",
    [(), ("192.168.100.2",), ("192.168.100.2:",), ("192.168.100.2:31000;id",), ("192.168.100.2:$(id)",),
     ("$(id):31000",), ("node2:31000",), ("192.168.100.2,fork:31000",), ("[fd00::2]:31000",), (":31000",)],
)  # fmt: skip
def test_the_connector_refuses_what_is_not_address_and_port(fake_socat, args):
    done = _connect(fake_socat, *args)
    assert done.returncode == 2 and done.stdout == "", done
    assert "xl-stream-connect" in done.stderr


# --- a whole stream over 127.0.0.1 --------------------------------------------------------------


@pytest.fixture
def stream_host(tmp_path, monkeypatch):
    """Log and state under tmp_path, a fake ``xl`` first in PATH (socat's EXEC finds it there)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_xl = bindir / "xl"
    fake_xl.write_text(
        "#!/bin/sh\n"
        'echo "fake xl: $*" >&2\n'
        "printf 'banner\\n'\n"
        f"cat > {tmp_path}/received\n"
        "printf 'done\\n'\n"
    )
    fake_xl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(xl, "STREAM_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setattr(xl, "STREAM_STATE_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(xl, "_STARTED", {})
    started = []
    yield tmp_path, started
    for port in started:  # never leave a listener behind
        try:
            xl.stream_stop(port, force=True)
        except CommandExecutionError:
            pass


@needs_socat
def test_a_stream_from_the_connector_to_the_listener(stream_host):
    tmp_path, started = stream_host
    port = _free_port()
    res = xl.stream_receive(port, "127.0.0.1", "127.0.0.1", accept_timeout=10)
    started.append(port)
    assert res["started"] is True and xl._bind_probe(LO, port) == xl._IN_USE
    payload = os.urandom(3 * 1024 * 1024)
    done = subprocess.run(["sh", str(SCRIPT), f"127.0.0.1:{port}", "xl", "migrate-receive"], input=payload,
                          capture_output=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"banner\ndone\n"
    assert (tmp_path / "received").read_bytes() == payload
    deadline = time.monotonic() + 10
    while xl._is_ours(res["pid"], res["argv"]) and time.monotonic() < deadline:
        xl._reap(res["pid"])
        time.sleep(0.05)
    stopped = xl.stream_stop(port)
    assert (stopped["state"], stopped["stopped"]) == ("exited", False), stopped
    assert "fake xl: migrate-receive" in stopped["log_tail"]  # its own fixed command, not xl's words
    assert "accepting connection from AF=2 127.0.0.1" in stopped["log_tail"]
    assert xl._bind_probe(LO, port) is None


@needs_socat
def test_the_listener_refuses_another_peer_and_stream_stop_ends_it(stream_host):
    tmp_path, started = stream_host
    port = _free_port()
    xl.stream_receive(port, "127.0.0.1", "127.0.0.2", accept_timeout=30)  # only 127.0.0.2 may connect
    started.append(port)
    with pytest.raises(CommandExecutionError, match=f"pid .* is still there .*stream_stop {port} first"):
        xl.stream_receive(port, "127.0.0.1", "127.0.0.2")
    done = subprocess.run(["sh", str(SCRIPT), f"127.0.0.1:{port}"], input=b"x" * 1000, capture_output=True,
                          timeout=30, check=False)  # fmt: skip
    assert done.stdout == b""  # refused: no banner
    assert not (tmp_path / "received").exists()
    assert xl._bind_probe(LO, port) == xl._IN_USE  # still listening for its one peer
    stopped = xl.stream_stop(port)
    assert (stopped["state"], stopped["stopped"]) == ("listening", True), stopped
    assert "refusing connection from AF=2 127.0.0.1" in stopped["log_tail"]
    assert xl._bind_probe(LO, port) is None and xl._STARTED == {}
    assert xl.stream_stop(port)["state"] == "absent"


@needs_socat
def test_a_listener_that_cannot_bind_raises_with_its_log(stream_host, monkeypatch):
    port = _free_port()
    with socket.socket() as holder:  # taken between the probe and socat's bind (the probe is told it is free)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        monkeypatch.setattr(xl, "_bind_probe", lambda ip, port: None)
        with pytest.raises(CommandExecutionError, match=r"exited at once \(rc 1\).*Address already in use"):
            xl.stream_receive(port, "127.0.0.1", "127.0.0.1")
    assert xl._STARTED == {}
    assert not (stream_host[0] / "run" / f"stream-{port}.json").exists()
