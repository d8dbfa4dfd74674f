"""Loopback ports: free ones, whether one listens, and one that never answers."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

HOST = "127.0.0.1"

# Ports handed out lately: two calls in one process never hand out the same port, even
# when the first caller has not bound it yet.
_recent: deque[int] = deque(maxlen=4096)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on right now."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)  # held open until all are chosen: the kernel hands out each once
            port: int = s.getsockname()[1]
            if port not in _recent:
                ports.append(port)
                _recent.append(port)
        return ports
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """One loopback port that nothing listens on right now."""
    [port] = free_ports(1)
    return port


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def blackhole() -> Iterator[int]:
    """A port that accepts connections (into the backlog) and never answers: a hung sidecar."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen(128)
        yield s.getsockname()[1]
