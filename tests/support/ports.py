"""Loopback ports: free ones, whether one listens, and one that never answers; a folder
for Unix domain sockets."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def unix_socket_dir() -> Iterator[Path]:
    """A new private folder under /tmp for Unix domain sockets, removed afterwards: pytest's
    tmp_path can be longer than the 107 bytes a socket path may have."""
    folder = Path(tempfile.mkdtemp(prefix="sidecar-uds-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def gateway_socket_dir() -> Iterator[Path]:
    """``unix_socket_dir`` set up as a deployment would for a gateway run by root, whose
    workers are nobody: the folder belongs to nobody's group with the setgid bit, so a
    socket file made in it inherits that group and mode 0o660 lets the workers connect."""
    with unix_socket_dir() as folder:
        if os.geteuid() == 0:
            os.chown(folder, -1, pwd.getpwnam("nobody").pw_gid)
            os.chmod(folder, 0o2750)  # noqa: S103 (group-readable on purpose: the workers must reach the socket)
        yield folder


def unix_socket_answers(path: Path | str) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True
