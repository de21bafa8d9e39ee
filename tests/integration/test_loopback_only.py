"""Network rule: everything the test session starts listens on 127.0.0.1 only."""

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_nothing_listens_beyond_loopback(
    request, event_listener, salt_master, salt_minion, listening_sockets
):
    log_server = request.config.pluginmanager.get_plugin("saltfactories-log-server")
    assert log_server.log_host == "127.0.0.1"
    assert event_listener.host == "127.0.0.1"
    assert salt_master.config["interface"] == "127.0.0.1"

    sockets = listening_sockets()
    ports = {port for _pid, _proto, _ip, port in sockets}
    # not vacuous: the log server, the event listener and the master are in the list
    expected = {
        log_server.log_port,
        event_listener.port,
        salt_master.config["ret_port"],
        salt_master.config["publish_port"],
    }
    assert expected <= ports, (expected, sockets)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert {salt_master.pid, salt_minion.pid} <= children  # the daemons are in the tree checked

    wild = [s for s in sockets if s[2] not in ("127.0.0.1", "::1")]
    assert not wild, f"listening beyond loopback: {wild}"
