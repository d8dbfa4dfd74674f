"""The check listener in a real ``sidecar serve``: served by every worker, drained on SIGTERM;
on a Unix domain socket: bound by the parent, shared by the workers, removed on exit."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.configs import Listeners, sqlite_url, write_sidecar_config
from tests.support.ports import port_open, unix_socket_answers, unix_socket_dir
from tests.support.processes import REPO_ON_PATH, sidecar_argv
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


# ---------------------------------------------------------------------- on a Unix domain socket


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private folder for the socket (tmp_path can pass sun_path's 107 bytes)."""
    with unix_socket_dir() as folder:
        yield folder


def _check_unix(path: Path, token: str | None) -> str:
    """One check on a new connection to the Unix socket at ``path``: the status line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(path))
        auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
        sock.sendall(f"GET /introspect HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    return data.split(b"\r\n", 1)[0].decode()


def _serve_refused(tmp_path: Path, check: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """``sidecar serve`` with ``check`` added to [check], expected to stop at start-up."""
    config = write_sidecar_config(
        tmp_path / "refused.toml", Listeners.free(), sqlite_url(tmp_path / "refused.db"), check=check
    )
    return subprocess.run(
        sidecar_argv(config), capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, **REPO_ON_PATH}, cwd=tmp_path,
    )


def test_check_listener_on_a_unix_socket_answers_with_its_mode_and_sigterm_removes_it(
    tmp_path: Path, socket_dir: Path
) -> None:
    """check.unix_socket: the check answers there (200 with a token, 401 without), the file
    is a socket with exactly unix_socket_mode, nothing listens on check.port, and SIGTERM
    exits 0 and removes the socket file."""
    path = socket_dir / "check.sock"
    check = {"unix_socket": str(path), "unix_socket_mode": 0o640}
    with run_sidecar(tmp_path, name="unix", check=check) as node:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert _check_unix(path, mint("ursula")) == "HTTP/1.1 200 OK"
        assert _check_unix(path, None) == "HTTP/1.1 401 Unauthorized"
        assert not port_open(node.check_port)
        assert node.service.says(f"check listener on unix:{path}")
        node.service.proc.send_signal(signal.SIGTERM)
        assert node.service.proc.wait(timeout=10) == 0
    assert not path.exists()


def test_every_worker_answers_on_the_unix_socket_and_sigterm_removes_it(tmp_path: Path, socket_dir: Path) -> None:
    """workers = 2 share the parent's socket: with either worker stopped, the other answers
    every new connection; SIGTERM stops both, exits 0 and removes the socket file."""
    path = socket_dir / "check.sock"
    with run_sidecar(
        tmp_path, name="unix-workers", server={"workers": 2}, check={"unix_socket": str(path)}
    ) as node:
        token = mint("wanda")
        deadline = time.monotonic() + 15
        while len(children := _children(node.pid)) != 2:
            assert time.monotonic() < deadline, node.service.log_tail()
            time.sleep(0.1)
        assert _check_unix(path, token) == "HTTP/1.1 200 OK"
        # Each worker must be ready (it says so) before the other is stopped.
        deadline = time.monotonic() + 15
        while node.service.log.read_text().count("sidecar: ready (worker") < 2:
            assert time.monotonic() < deadline, node.service.log_tail()
            time.sleep(0.1)
        for stopped in children:
            os.kill(int(stopped), signal.SIGSTOP)
            try:
                for _ in range(10):
                    assert _check_unix(path, token) == "HTTP/1.1 200 OK"
            finally:
                os.kill(int(stopped), signal.SIGCONT)
        node.service.proc.send_signal(signal.SIGTERM)
        assert node.service.proc.wait(timeout=15) == 0
    assert not path.exists()


def test_a_stale_socket_file_is_replaced(tmp_path: Path, socket_dir: Path) -> None:
    """A socket file left by a process that died (nobody listens: connecting is refused) is
    removed and the check listener binds the path anew."""
    path = socket_dir / "check.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, with nobody behind it
    assert stat.S_ISSOCK(path.lstat().st_mode) and not unix_socket_answers(path)
    with run_sidecar(tmp_path, name="stale", check={"unix_socket": str(path)}) as node:
        assert _check_unix(path, mint("stella")) == "HTTP/1.1 200 OK"
        assert node.service.says("removing the stale socket")


def test_a_live_socket_at_the_path_stops_start_up(tmp_path: Path, socket_dir: Path) -> None:
    """Another process listening on the path: exit 1 with a clear line; its socket stays."""
    path = socket_dir / "check.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(8)
    try:
        done = _serve_refused(tmp_path, {"unix_socket": str(path)})
        assert done.returncode == 1
        assert f"sidecar: error: check.unix_socket: {path} is in use" in done.stderr
        assert unix_socket_answers(path)
    finally:
        live.close()


def test_a_regular_file_at_the_path_stops_start_up_and_is_left_untouched(tmp_path: Path, socket_dir: Path) -> None:
    """A path that exists and is not a socket: exit 1 with a clear line, the file as it was."""
    path = socket_dir / "check.sock"
    path.write_bytes(b"not a socket\n")
    done = _serve_refused(tmp_path, {"unix_socket": str(path)})
    assert done.returncode == 1
    assert f"sidecar: error: check.unix_socket: {path} exists and is not a socket" in done.stderr
    assert path.read_bytes() == b"not a socket\n"


def test_a_missing_socket_directory_stops_start_up(tmp_path: Path, socket_dir: Path) -> None:
    """The socket's directory must exist: exit 1 naming it."""
    path = socket_dir / "nowhere" / "check.sock"
    done = _serve_refused(tmp_path, {"unix_socket": str(path)})
    assert done.returncode == 1
    assert f"sidecar: error: check.unix_socket: the directory {path.parent} does not exist" in done.stderr
