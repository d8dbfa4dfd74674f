"""The command line, run as a user runs it: real processes, real files, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY, CHROME_WINDOWS, REPO, SECRET
from tests.support.configs import Listeners, Section, sqlite_url, write_sidecar_config

PYTHON = sys.executable


def sidecar(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_JWT_SECRET": SECRET}
    return subprocess.run(
        [PYTHON, "-m", "sidecar", *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False, env=env
    )


def write_config(tmp_path: Path, listeners: Listeners, **sections: Section) -> Path:
    """The test config with the secret read from TEST_JWT_SECRET, as an operator would set it."""
    return write_sidecar_config(
        tmp_path / "sidecar.toml", listeners, sqlite_url(tmp_path / "cli.db"),
        server={"shutdown_timeout_seconds": 5}, jwt={"secret": None, "secret_env": "TEST_JWT_SECRET"}, **sections,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int, int]]:
    """A `sidecar serve` process on free ports, stopped at teardown."""
    listeners = Listeners.free()
    port, admin_port = listeners.public, listeners.admin
    config = write_config(tmp_path, listeners)
    env = {**os.environ, "TEST_JWT_SECRET": SECRET}
    proc = subprocess.Popen(
        [PYTHON, "-m", "sidecar", "serve", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "sidecar: ready" in line:
            break
        if not line and proc.poll() is not None:
            pytest.fail("sidecar exited before ready:\n" + "".join(lines))
    else:
        proc.kill()
        pytest.fail("sidecar not ready in 30 s:\n" + "".join(lines))
    try:
        yield proc, config, port, admin_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


async def test_readme_walkthrough(served: tuple[subprocess.Popen[str], Path, int, int]) -> None:
    """mint-token, check (200), list the session, delete it, check again (401): the README's walkthrough."""
    _, config, port, _ = served
    minted = sidecar("mint-token", "--config", str(config), "--sub", "alice")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}", "User-Agent": CHROME_WINDOWS}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/introspect", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["X-Auth-User"] == "alice"
        async with http.get(f"{base}/api/v1/sessions/", headers=headers) as resp:
            [session] = (await resp.json())["data"]
        assert session["device"] == "Chrome on Windows"
        assert session["ip_address"] == "127.0.0.1"
        assert session["location"] == "Private network"
        async with http.delete(f"{base}/api/v1/sessions/{session['id']}/", headers=headers) as resp:
            assert resp.status == 204
        async with http.get(f"{base}/introspect", headers=headers) as resp:
            assert resp.status == 401


async def test_sigterm_drains_and_exits_zero(served: tuple[subprocess.Popen[str], Path, int, int]) -> None:
    """SIGTERM: the process stops accepting and exits 0; a revocation made before is durable."""
    proc, config, port, _ = served
    token = sidecar("mint-token", "--config", str(config), "--sub", "bob").stdout.strip()
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"http://127.0.0.1:{port}/introspect", headers=headers) as resp:
            sid = resp.headers["X-Auth-Session"]
        async with http.delete(f"http://127.0.0.1:{port}/api/v1/sessions/{sid}", headers=headers) as resp:
            assert resp.status == 204
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0
    with sqlite3.connect(config.parent / "cli.db") as db:
        revoked = db.execute("SELECT revoked_at FROM sessions WHERE id = ?", (sid,)).fetchone()[0]
    assert revoked is not None


def test_kill_9_after_revoke_keeps_it(served: tuple[subprocess.Popen[str], Path, int, int]) -> None:
    """kill -9 right after a revoke returned: the revocation is on disk (D36)."""
    proc, config, port, admin_port = served
    token = sidecar("mint-token", "--config", str(config), "--sub", "carol").stdout.strip()

    async def go() -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://127.0.0.1:{port}/introspect", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                sid = resp.headers["X-Auth-Session"]
            async with http.delete(
                f"http://127.0.0.1:{admin_port}/admin/v1/sessions/{sid}",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as resp:
                assert resp.status == 204
            return sid

    sid = asyncio.run(go())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with sqlite3.connect(config.parent / "cli.db") as db:
        assert db.execute("SELECT revoked_at FROM sessions WHERE id = ?", (sid,)).fetchone()[0] is not None


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    """check-config prints a summary for a good file and one line + exit 2 for a bad one."""
    ok = sidecar("check-config", "--config", str(REPO / "config.example.toml"))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[jwt]\nalgorithms = ["HS256"]\nsecret = "short"\n')
    result = sidecar("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == "sidecar: error: jwt.secret: HS256 needs a secret of at least 32 bytes (got 5)"


def test_check_config_says_what_the_token_shape_costs(tmp_path: Path) -> None:
    """check-config warns without a token-type rule and says how sessions are keyed and dated."""
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\nuser_claim = "user_id"\n')
    out = sidecar("check-config", "--config", str(bare)).stdout
    assert "token type  WARNING: no rule" in out
    assert "refresh token signed with the same key passes" in out
    assert "keyed by claim 'sid', else 'jti', else a hash of the token's claims" in out
    assert "a revoked device comes back with its next refreshed token" in out
    assert "a never-seen token without iat is let through" in out
    assert "routes      none" in out
    typed = tmp_path / "typed.toml"
    typed.write_text(
        f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\ntoken_type_claim = "type"\n'
        'access_token_type = "access"\ntoken_lifetime_seconds = 1800\n'
        '[[routes]]\npath = "/api/v1/auth/*"\npolicy = "public"\n'
        '[[routes]]\npath = "/api/v1/posts"\nmethods = ["GET", "HEAD"]\npolicy = "optional"\n'
    )
    out = sidecar("check-config", "--config", str(typed)).stdout
    assert "only tokens whose 'type' is 'access' pass (refresh tokens are refused)" in out
    assert "iat, else exp - 1800 s" in out
    assert "public    *            /api/v1/auth/*" in out
    assert "optional  GET,HEAD     /api/v1/posts" in out
    assert "  cookie" not in out and "  capture" not in out
    cookies = tmp_path / "cookies.toml"
    cookies.write_text(
        f'[server]\nallowed_origins = ["https://app.example.com"]\n'
        f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\ncookie_name = "access_token"\n'
        '[[capture]]\npath = "/auth/login"\nevent = "login"\nupstream = "http://127.0.0.1:8001"\n'
        'access_token = "body:access_token"\nrefresh_token = "cookie:refresh_token"\n'
    )
    out = sidecar("check-config", "--config", str(cookies)).stdout
    assert "tokens also from the 'access_token' cookie" in out
    assert "allowed origins: https://app.example.com" in out
    assert "login    /auth/login -> http://127.0.0.1:8001 (access body:access_token, refresh cookie:refresh_token)" in out
    assert "policies    none" in out


def test_check_config_prints_the_session_policies(tmp_path: Path) -> None:
    """check-config prints each session policy with its bound."""
    cfg = tmp_path / "policies.toml"
    cfg.write_text(
        f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\n'
        "[sessions]\nidle_timeout_seconds = 900\nmax_lifetime_seconds = 86400\nmax_sessions_per_user = 3\n"
        'on_session_limit = "revoke_oldest"\n'
    )
    result = sidecar("check-config", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "  policies    idle timeout 900 s: refused 900-906 s after the last allowed check on any process" in out
    assert "lifetime 86400 s from login, however fresh the token" in out
    assert "at most 3 active session(s) per user; beyond: revoke_oldest" in out

def test_check_config_names_the_check_listeners_unix_socket(tmp_path: Path) -> None:
    """With check.unix_socket, check-config names the socket and its mode instead of host/port."""
    cfg = tmp_path / "unix.toml"
    cfg.write_text(
        f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\n'
        '[check]\nunix_socket = "/run/sidecar/check.sock"\nunix_socket_mode = 0o600\n'
    )
    result = sidecar("check-config", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    [line] = [x for x in result.stdout.splitlines() if x.startswith("  check ")]
    assert line.startswith("  check       unix:/run/sidecar/check.sock (mode 0600) /introspect")
    assert "8082" not in line


def test_check_config_warns_when_no_proxy_is_trusted(tmp_path: Path) -> None:
    """check-config warns that the API rate limit is one shared bucket when server.trusted_proxies is empty."""
    warning = (
        "sidecar: warning: server.trusted_proxies is empty: the sessions API rate limit is per client IP; "
        "behind a gateway with no trusted proxy every user shares one bucket"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\n')
    result = sidecar("check-config", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert warning in result.stderr.splitlines()
    trusted = sidecar("check-config", "--config", str(write_config(tmp_path, Listeners.free())))
    assert trusted.returncode == 0, trusted.stderr
    assert "warning" not in trusted.stderr


def test_serve_refuses_bad_config_with_one_line(tmp_path: Path) -> None:
    """serve with an unknown key exits 2 with one line and never listens."""
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\nsecert = "x"\n')
    result = sidecar("serve", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == "sidecar: error: jwt.secert: unknown key"


def test_mint_token_refuses_non_hmac_configs(tmp_path: Path) -> None:
    """mint-token only runs on an HS* development config."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pem").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cfg = tmp_path / "es.toml"
    cfg.write_text('[jwt]\nalgorithms = ["ES256"]\npublic_key_file = "ec.pem"\n')
    result = sidecar("mint-token", "--config", str(cfg), "--sub", "alice")
    assert result.returncode == 2
    assert "only works with an HS* development config" in result.stderr
    assert result.stdout == ""


def test_mint_token_follows_the_claims_settings(tmp_path: Path) -> None:
    """mint-token uses the configured user/type claims, issuer and audience."""
    import jwt as pyjwt

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[jwt]\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\nuser_claim = "user_id"\n'
        'token_type_claim = "type"\naccess_token_type = "access"\nissuer = "https://auth"\naudience = ["api"]\n'
    )
    token = sidecar("mint-token", "--config", str(cfg), "--sub", "7", "--ttl", "60").stdout.strip()
    claims = pyjwt.decode(token, SECRET, algorithms=["HS256"], audience="api", issuer="https://auth")
    assert claims["user_id"] == "7" and claims["type"] == "access" and claims["exp"] - claims["iat"] == 60
    assert "sid" in claims


def test_cleanup_command_deletes_expired_sessions_only(tmp_path: Path) -> None:
    """`sidecar cleanup` deletes sessions long expired and keeps live and revoked-unexpired ones."""
    cfg = write_config(tmp_path, Listeners.free(), celery={"cleanup_grace_seconds": 0})
    env_cfg = cfg.read_text().replace('secret_env = "TEST_JWT_SECRET"', f'secret = "{SECRET}"')
    cfg.write_text(env_cfg)
    first = sidecar("cleanup", "--config", str(cfg))  # creates the schema
    assert first.returncode == 0, first.stderr
    now = time.time()
    with sqlite3.connect(tmp_path / "cli.db") as db:
        rows = [
            ("00000000-0000-4000-8000-000000000001", "sid:old", "u", now - 100, now - 100, now - 50, None),
            ("00000000-0000-4000-8000-000000000002", "sid:live", "u", now, now, now + 3600, None),
            ("00000000-0000-4000-8000-000000000003", "sid:revoked", "u", now, now, now + 3600, now),
        ]
        db.executemany(
            "INSERT INTO sessions (id, session_key, user_id, created_at, last_seen, expires_at, revoked_at,"
            " ip_address, device, location) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'd', 'l')",
            rows,
        )
    result = sidecar("cleanup", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "deleted 1 expired session(s)" in result.stdout
    with sqlite3.connect(tmp_path / "cli.db") as db:
        left = {r[0] for r in db.execute("SELECT session_key FROM sessions")}
    assert left == {"sid:live", "sid:revoked"}


async def test_json_logs_carry_the_request_id_and_never_a_token(tmp_path: Path) -> None:
    """logging.format = "json": one JSON object per line, the gateway's X-Request-Id, no token."""
    listeners = Listeners.free()
    port = listeners.public
    config = write_config(tmp_path, listeners, logging={"format": "json"})
    env = {**os.environ, "TEST_JWT_SECRET": SECRET}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "sidecar", "serve", "--config", str(config)], stderr=out, stdout=out, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while "sidecar: ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        expired = sidecar("mint-token", "--config", str(config), "--sub", "eve", "--ttl", "-60").stdout.strip()
        async with aiohttp.ClientSession() as http:
            for rid in ("req-123", "bad id <with> spaces"):
                headers = {"Authorization": f"Bearer {expired}", "X-Request-Id": rid}
                async with http.get(f"http://127.0.0.1:{port}/introspect", headers=headers) as resp:
                    assert resp.status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    denies = [e for e in entries if e["message"].startswith("check: deny expired")]
    assert [e.get("request_id") for e in denies] == ["req-123", "invalid"]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert expired not in log.read_text()


async def test_json_logs_write_the_audit_record_as_fields(tmp_path: Path) -> None:
    """logging.format = "json": a revocation's audit line carries its fields as fields of the line,
    not as a JSON string inside message."""
    from tests.support.sidecar import run_sidecar
    from tests.support.tokens import bearer, mint

    with run_sidecar(tmp_path, logging={"format": "json"}) as process:
        token = mint("alice")
        async with aiohttp.ClientSession() as http:
            async with http.get(process.check_url + "/introspect", headers=bearer(token)) as resp:
                session = resp.headers["X-Auth-Session"]
            async with http.delete(f"{process.url}/api/v1/sessions/{session}/", headers=bearer(token)) as resp:
                assert resp.status == 204
        deadline = time.monotonic() + 10
        while '"sidecar.audit"' not in process.service.log.read_text():
            assert time.monotonic() < deadline, process.service.log_tail()
            await asyncio.sleep(0.05)
    entries = [json.loads(line) for line in process.service.log.read_text().splitlines() if line.startswith("{")]
    [audit] = [e for e in entries if e["logger"] == "sidecar.audit"]
    assert audit["audit"] == "session.revoked" and audit["api"] == "sessions" and audit["reason"] == "user"
    assert audit["user"] == "alice" and audit["session"] == session and audit["actor_session"] == session
    assert audit["message"].startswith("audit session.revoked ") and not audit["message"].startswith("{")
    assert token not in process.service.log.read_text()
