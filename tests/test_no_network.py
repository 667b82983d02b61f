import socket

import pytest


def test_remote_connections_are_refused_in_tests() -> None:
    with pytest.raises(RuntimeError, match="network connection"), socket.socket() as sock:
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never reached, refused before any packet


def test_loopback_stays_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket() as client:
            client.connect(server.getsockname())
