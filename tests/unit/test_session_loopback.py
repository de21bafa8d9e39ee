"""Network rule, unit tier: the log server and event listener of pytest-salt-factories bind 127.0.0.1."""


def test_saltfactories_servers_bind_loopback(request, event_listener, listening_sockets):
    log_server = request.config.pluginmanager.get_plugin("saltfactories-log-server")
    assert log_server.log_host == "127.0.0.1"
    assert event_listener.host == "127.0.0.1"
    assert event_listener.address == f"tcp://127.0.0.1:{event_listener.port}"

    sockets = listening_sockets()
    ports = {port for _pid, _proto, _ip, port in sockets}
    assert {log_server.log_port, event_listener.port} <= ports, sockets
    wild = [s for s in sockets if s[2] not in ("127.0.0.1", "::1")]
    assert not wild, f"listening beyond loopback: {wild}"
