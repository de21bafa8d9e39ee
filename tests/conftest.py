"""Configuration shared by every test tier.

Network rule: tests only talk to 127.0.0.1. pytest-salt-factories 1.0.5 binds
its log server and its event listener on 0.0.0.0 by default; both are moved to
127.0.0.1 here (the salt daemons it starts already use 127.0.0.1), and
tests/integration/test_loopback_only.py checks every listening socket of the
test process and its children.
"""

import shutil
import tempfile

import psutil
import pytest
import salt._logging
from saltfactories.plugins.event_listener import EventListener

LOCALHOST = "127.0.0.1"


@pytest.hookimpl(wrapper=True)
def pytest_sessionstart(session):
    # A wrapper runs before saltfactories' own (tryfirst) hook, which starts
    # the log server on LogServer.log_host: set the host before that happens.
    log_server = session.config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None:
        log_server.log_host = LOCALHOST
    # Salt's import-time deferred stderr handler would flush into pytest's
    # closed capture stream at exit ("Logging error"); pytest's handlers suffice.
    salt._logging.shutdown_temp_handler()
    return (yield)


@pytest.fixture(scope="session")
def event_listener():
    """saltfactories' event listener, bound to 127.0.0.1 instead of 0.0.0.0."""
    listener = EventListener()
    listener.host = LOCALHOST
    listener.address = f"tcp://{LOCALHOST}:{listener.port}"
    with listener:
        yield listener


@pytest.fixture(scope="session")
def salt_factories_config():
    """A short root_dir (AF_UNIX socket paths must stay under 108 bytes)."""
    root_dir = tempfile.mkdtemp(prefix="xc-", dir="/tmp")
    yield {"root_dir": root_dir}
    shutil.rmtree(root_dir, ignore_errors=True)


def _listening_sockets(process):
    """[(pid, proto, ip, port)]: listening TCP and bound UDP sockets of a process tree."""
    found = []
    for proc in [process, *process.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in conns:
            tcp_listen = conn.type.name == "SOCK_STREAM" and conn.status == psutil.CONN_LISTEN
            udp_bound = conn.type.name == "SOCK_DGRAM" and not conn.raddr
            if tcp_listen or udp_bound:
                found.append((proc.pid, "tcp" if tcp_listen else "udp", conn.laddr.ip, conn.laddr.port))
    return found


@pytest.fixture
def listening_sockets():
    """Callable: the listening sockets of this test process and all its children."""
    return lambda: _listening_sockets(psutil.Process())
