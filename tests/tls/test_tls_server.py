"""The tests' own TLS server stops cleanly, whatever its clients are doing.

A server that leaves a socket for the garbage collector fails whichever test
happens to be running when the collector next runs (the suite turns every
warning into an error), so a leak here shows up as a flaky test elsewhere.
"""

from __future__ import annotations

import gc
import socket
import warnings

from tests.tls.pki import Workload
from tests.tls.tls_server import server_context, tls_server


def test_stopping_with_connections_just_accepted_leaves_nothing_unclosed(workloads: dict[str, Workload]) -> None:
    """Connections that arrive as the server stops never start a handshake; none is left for the collector."""
    workload = workloads["reviews"]
    context = server_context(workload.cert, workload.key, None)
    for _ in range(20):  # the race is in the server's last turns: each round hits it often, not always
        clients: list[socket.socket] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            try:
                with tls_server(context) as server:
                    port = int(server.url.rsplit(":", 1)[1])
                    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            finally:
                for client in clients:
                    client.close()
            gc.collect()
        assert [str(w.message) for w in caught] == []
