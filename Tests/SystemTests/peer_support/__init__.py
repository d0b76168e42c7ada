"""Stand-ins for upstream peers that misbehave, shared by the proxy tests."""
import socket
import threading


def closed_port():
    """A loopback port nothing listens on (bound, then released): connects to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HangingBackend:
    """Accepts connections, reads what comes and never answers; counts the connections it accepted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()
