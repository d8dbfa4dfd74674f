"""The check listener in a real ``sidecar serve``: served by every worker, drained on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.sidecar import run_sidecar
from tests.support.tokens import mint


def _check(port: int, token: str, *, keep_open: bool = False) -> tuple[str, socket.socket | None]:
    """One check on a new connection: the status line (and the open socket with ``keep_open``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET /introspect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    status = data.split(b"\r\n", 1)[0].decode()
    if keep_open:
        return status, sock
    sock.close()
    return status, None


def _children(pid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return out.split()


def test_every_worker_serves_the_check_listener_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    """workers = 2: checks on many new connections are answered (both workers accept on the
    check socket); with one worker killed, the other answers at once, and the replacement
    serves the check listener too."""
    with run_sidecar(tmp_path, name="workers", server={"workers": 2, "shutdown_timeout_seconds": 2}) as node:
        token = mint("wendy")
        assert _check(node.check_port, token)[0] == "HTTP/1.1 200 OK"
        for _ in range(40):
            assert _check(node.check_port, token)[0] == "HTTP/1.1 200 OK"
        children = _children(node.pid)
        assert len(children) == 2, node.service.log_tail()
        os.kill(int(children[0]), signal.SIGKILL)
        for _ in range(20):
            assert _check(node.check_port, token)[0] == "HTTP/1.1 200 OK"
        deadline = time.monotonic() + 15
        while not (len(now := _children(node.pid)) == 2 and children[0] not in now):
            if time.monotonic() > deadline:
                pytest.fail(f"worker not replaced:\n{node.service.log_tail()}")
            time.sleep(0.1)
        for _ in range(40):
            assert _check(node.check_port, token)[0] == "HTTP/1.1 200 OK"


def test_sigterm_closes_idle_check_connections_and_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM: an idle keep-alive connection to the check listener is closed at once (EOF,
    not a reset mid-answer), the port stops accepting, and the process exits 0 well within
    server.shutdown_timeout_seconds."""
    with run_sidecar(tmp_path, name="drain", server={"shutdown_timeout_seconds": 10}) as node:
        status, sock = _check(node.check_port, mint("dora"), keep_open=True)
        assert status == "HTTP/1.1 200 OK" and sock is not None
        started = time.monotonic()
        node.service.proc.send_signal(signal.SIGTERM)
        sock.settimeout(5)
        assert sock.recv(4096) == b""  # closed by the sidecar, nothing more sent
        sock.close()
        assert node.service.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5, "an idle connection held the shutdown"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", node.check_port), timeout=1).close()
