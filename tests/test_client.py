"""sidecar.client, the auth service's side: both transports against a real `sidecar serve` process.

One behaviour suite runs for the async and the blocking client, and for two token shapes:
OIDC-like (`sub`, `sid`, `iat`) and the bare `{"user_id", "exp", "type": "access"}` of many
auth services. Answers the real server cannot be made to give (pages, 5xx, garbage, a
dropped keep-alive connection) come from a small fake HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast

import jwt
import pytest

from sidecar.client import (
    AdminKeyRefusedError,
    AsyncSidecarAdmin,
    BadRequestError,
    Registration,
    SessionInfo,
    SessionRevokedError,
    SidecarAdmin,
    SidecarClientError,
    SidecarUnavailableError,
    TokenRejectedError,
)
from sidecar.client._protocol import AdminProtocol
from tests.conftest import ADMIN_KEY, CHROME_WINDOWS, REPO, SECRET, geoip_db, mint, write_toml

LONDON_IP = "81.2.69.142"  # "London, United Kingdom" in the MaxMind test database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- a real sidecar


@dataclass
class Served:
    """A running `sidecar serve`: its admin URL, and the gateway check on its public port."""

    kind: str
    admin_url: str
    public_port: int

    def introspect(self, token: str) -> int:
        """The status of the gateway check (GET /introspect) for this token."""
        conn = http.client.HTTPConnection("127.0.0.1", self.public_port, timeout=10)
        try:
            conn.request("GET", "/introspect", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()


JWT_BY_KIND: dict[str, dict[str, Any]] = {
    "sid": {},
    "bare": {"user_claim": "user_id", "token_type_claim": "type", "access_token_type": "access"},
}


@pytest.fixture(scope="module", params=sorted(JWT_BY_KIND))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A `sidecar serve` process in explicit registration mode, shared by the tests of one token shape."""
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(f"client-{kind}")
    port, admin_port = free_port(), free_port()
    config = write_toml(
        tmp / "sidecar.toml",
        {
            "server": {"port": port, "trusted_proxies": ["127.0.0.1/32"], "shutdown_timeout_seconds": 2},
            "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway_seconds": 0, **JWT_BY_KIND[kind]},
            "sessions": {"registration": "explicit", "last_seen_flush_seconds": 0.2},
            "storage": {"url": f"sqlite:///{tmp / 'sidecar.db'}"},
            "geoip": {"database": str(geoip_db())},
            "admin": {"port": admin_port, "api_keys": [ADMIN_KEY]},
        },
    )
    log_path = tmp / "stderr.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("w") as log:  # a file, not a pipe: a pipe nobody reads fills and stalls the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(config)], stderr=log, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while "sidecar: ready" not in log_path.read_text():
            if proc.poll() is not None:
                pytest.fail("sidecar exited before ready:\n" + log_path.read_text())
            if time.monotonic() > deadline:
                pytest.fail("sidecar not ready in 30 s:\n" + log_path.read_text())
            time.sleep(0.05)
        yield Served(kind, f"http://127.0.0.1:{admin_port}", port)
    finally:
        proc.kill()
        proc.wait(timeout=10)


_exp_offsets = itertools.count()


def token_for(served: Served, user: str, *, issued_ago: int = 0) -> str:
    """A fresh login token of ``user`` in the shape the server is configured for."""
    now = int(time.time()) - issued_ago
    if served.kind == "sid":
        return mint(user, now=now)
    # No iat, sid or jti: the session is the hash of the claims, so a distinct exp makes a distinct login.
    payload = {"user_id": user, "exp": now + 3600 + next(_exp_offsets), "type": "access"}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def new_user() -> str:
    return f"user-{uuid.uuid4()}"


# ---------------------------------------------------------------------- both clients, one interface


class Admin(Protocol):
    def register(self, token: str, *, ip_address: str | None = None, user_agent: str | None = None) -> Registration: ...
    def revoke_session(self, session_id: Any) -> bool: ...
    def revoke_user(self, user_id: Any) -> None: ...
    def list_user_sessions(self, user_id: Any) -> list[SessionInfo]: ...
    def close(self) -> None: ...


class AsyncDriven:
    """The async client, driven from a sync test on an event loop of its own."""

    def __init__(self, client: AsyncSidecarAdmin) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()

    def register(self, token: str, *, ip_address: str | None = None, user_agent: str | None = None) -> Registration:
        return self.loop.run_until_complete(self.client.register(token, ip_address=ip_address, user_agent=user_agent))

    def revoke_session(self, session_id: Any) -> bool:
        return self.loop.run_until_complete(self.client.revoke_session(session_id))

    def revoke_user(self, user_id: Any) -> None:
        self.loop.run_until_complete(self.client.revoke_user(user_id))

    def list_user_sessions(self, user_id: Any) -> list[SessionInfo]:
        return self.loop.run_until_complete(self.client.list_user_sessions(user_id))

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()


MakeAdmin = Callable[..., Admin]


@pytest.fixture(params=["async", "blocking"])
def make_admin(request: pytest.FixtureRequest) -> Iterator[MakeAdmin]:
    """Factory ``make_admin(base_url, api_key=ADMIN_KEY, timeout=2.0)`` of the parametrised client kind."""
    made: list[Admin] = []

    def make(base_url: str, api_key: str = ADMIN_KEY, timeout: float = 2.0) -> Admin:
        admin: Admin
        if request.param == "async":
            admin = AsyncDriven(AsyncSidecarAdmin(base_url, api_key, timeout=timeout))
        else:
            admin = SidecarAdmin(base_url, api_key, timeout=timeout)
        made.append(admin)
        return admin

    yield make
    for admin in made:
        admin.close()


@pytest.fixture
def admin(served: Served, make_admin: MakeAdmin) -> Admin:
    """A client of the shared server's admin listener."""
    return make_admin(served.admin_url)


def assert_secret_free(error: BaseException, *secrets: str) -> None:
    """Neither str() nor repr() of the error, nor of what it was raised from, shows the admin key or a secret."""
    seen: BaseException | None = error
    while seen is not None:
        for text in (str(seen), repr(seen)):
            for secret in (ADMIN_KEY, *secrets):
                assert secret not in text
        seen = seen.__cause__ or seen.__context__


@contextmanager
def raises_clean(expected: type[BaseException], *secrets: str) -> Iterator[pytest.ExceptionInfo[Any]]:
    """pytest.raises, and the error raised must not show the admin key or the given secrets."""
    with pytest.raises(expected) as caught:
        yield caught
    assert_secret_free(caught.value, *secrets)


# ---------------------------------------------------------------------- the behaviour, through the real server


def test_register_creates_then_finds_the_session(served: Served, admin: Admin) -> None:
    """The first registration creates the session (created=True), the second finds the same one; its token passes."""
    user = new_user()
    token = token_for(served, user)
    assert served.introspect(token) == 401  # explicit mode: unknown until registered
    first = admin.register(token, ip_address="192.0.2.10", user_agent=CHROME_WINDOWS)
    assert first.created is True
    assert first.session.user_id == user
    assert first.session.revoked_at is None
    assert uuid.UUID(first.session.id)
    session, created = admin.register(token, ip_address="192.0.2.10", user_agent=CHROME_WINDOWS)
    assert created is False
    assert session.id == first.session.id
    assert served.introspect(token) == 200


def test_list_shows_device_ip_and_location_given_at_login(served: Served, admin: Admin) -> None:
    """The user's list holds the registered session with the device, IP and location of the login request."""
    user = new_user()
    registered = admin.register(token_for(served, user), ip_address=LONDON_IP, user_agent=CHROME_WINDOWS)
    [listed] = admin.list_user_sessions(user)
    assert listed == registered.session
    assert listed.device == "Chrome on Windows"
    assert listed.ip_address == LONDON_IP
    assert listed.location == "London, United Kingdom"
    assert listed.login_time is not None and listed.login_time.endswith("Z")
    assert admin.list_user_sessions(new_user()) == []


def test_revoke_session_refuses_its_token_at_once(served: Served, admin: Admin) -> None:
    """After revoke_session returns, the gateway check refuses the token, the list drops it, and revoking again is True."""
    user = new_user()
    token = token_for(served, user)
    session = admin.register(token).session
    assert served.introspect(token) == 200
    assert admin.revoke_session(session.id) is True
    assert served.introspect(token) == 401
    assert admin.list_user_sessions(user) == []
    assert admin.revoke_session(uuid.UUID(session.id)) is True  # idempotent, and a UUID object works


def test_revoke_unknown_session_is_false(admin: Admin) -> None:
    """revoke_session of an id the sidecar does not know answers False (nothing to revoke), not an error."""
    assert admin.revoke_session(str(uuid.uuid4())) is False


def test_revoke_user_ends_every_session(served: Served, admin: Admin) -> None:
    """revoke_user empties the user's list and every token of theirs is refused by the check."""
    user = new_user()
    tokens = [token_for(served, user) for _ in range(3)]
    for token in tokens:
        admin.register(token, user_agent=CHROME_WINDOWS)
    assert len(admin.list_user_sessions(user)) == 3
    admin.revoke_user(user)
    assert admin.list_user_sessions(user) == []
    assert [served.introspect(t) for t in tokens] == [401, 401, 401]


def test_register_after_revoke_is_refused(served: Served, admin: Admin) -> None:
    """Registering a revoked session, or a token known older than the user's cut-off, raises SessionRevokedError (409)."""
    user = new_user()
    token = token_for(served, user)
    assert admin.revoke_session(admin.register(token).session.id)
    with raises_clean(SessionRevokedError, token) as caught:
        admin.register(token)
    assert caught.value.status == 409

    older = token_for(served, user, issued_ago=10)  # issued before the cut-off, never seen
    admin.revoke_user(user)
    if served.kind == "sid":
        with raises_clean(SessionRevokedError, older) as caught:
            admin.register(older)
    else:
        # No iat and no jwt.token_lifetime_seconds: its age cannot be told, so it is never
        # guessed older (SECURITY_CASES E40); it registers.
        assert admin.register(older).created


@pytest.mark.parametrize("forge", ["wrong_key", "expired", "garbage"])
def test_invalid_token_is_rejected_and_not_repeated(served: Served, admin: Admin, forge: str) -> None:
    """An invalid token raises TokenRejectedError (422) whose str() and repr() do not contain the token."""
    user = new_user()
    if forge == "wrong_key":
        token = jwt.encode({"sub": user, "user_id": user, "exp": int(time.time()) + 60, "type": "access"},
                           "another-secret-that-is-long-enough-0123456789", algorithm="HS256")
    elif forge == "expired":
        token = token_for(served, user, issued_ago=7200)
    else:
        token = "not.a.jwt-" + uuid.uuid4().hex
    with raises_clean(TokenRejectedError, token) as caught:
        admin.register(token)
    assert caught.value.status == 422
    assert caught.value.message == "Token is not valid"


@pytest.mark.parametrize("served", ["bare"], indirect=True)
def test_refresh_token_is_rejected(served: Served, admin: Admin) -> None:
    """With a token type configured, a refresh token cannot register a session."""
    token = jwt.encode({"user_id": new_user(), "exp": int(time.time()) + 60, "type": "refresh"}, SECRET, "HS256")
    with raises_clean(TokenRejectedError, token):
        admin.register(token)


def test_wrong_admin_key_is_refused(served: Served, make_admin: MakeAdmin) -> None:
    """A key the sidecar does not know raises AdminKeyRefusedError (401) saying so, without the key or the token."""
    wrong_key = "wrong-admin-key-" + uuid.uuid4().hex
    admin = make_admin(served.admin_url, api_key=wrong_key)
    token = token_for(served, new_user())
    calls: list[Callable[[], object]] = [
        lambda: admin.register(token),
        lambda: admin.revoke_session(uuid.uuid4()),
        lambda: admin.revoke_user("alice"),
        lambda: admin.list_user_sessions("alice"),
    ]
    for call in calls:
        with raises_clean(AdminKeyRefusedError, wrong_key, token) as caught:
            call()
        assert caught.value.status == 401
        assert "admin API key" in str(caught.value)
    assert served.introspect(token) == 401  # nothing was registered


def test_user_id_is_percent_encoded_in_the_path(served: Served, admin: Admin) -> None:
    """User ids with '/', '?', '#', '%' and '+' reach the sidecar as one path segment, unchanged."""
    user = f"a/b?c#d%2F+e&{uuid.uuid4().hex}"
    token = token_for(served, user)
    admin.register(token)
    [listed] = admin.list_user_sessions(user)
    assert listed.user_id == user
    admin.revoke_user(user)
    assert served.introspect(token) == 401


def test_blocking_client_is_shared_safely_between_threads(served: Served) -> None:
    """One SidecarAdmin used by eight threads at once answers every call correctly, on at most eight connections."""
    user = new_user()
    with SidecarAdmin(served.admin_url, ADMIN_KEY) as admin:
        ids = {admin.register(token_for(served, user)).session.id for _ in range(3)}
        results: list[set[str]] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(10):
                    results.append({s.id for s in admin.list_user_sessions(user)})
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert results == [ids] * 80
        assert len(admin._idle) <= 8


# ---------------------------------------------------------------------- local checks and faults, no server needed


@pytest.mark.parametrize("session_id", ["not-a-uuid", "", "../users/alice/sessions", "12345678-1234-1234-1234-12345678901"])
def test_bad_session_id_fails_before_any_request(make_admin: MakeAdmin, session_id: str) -> None:
    """A session id that is not a UUID raises BadRequestError locally: against a dead port it never gets to fail the connection."""
    admin = make_admin(f"http://127.0.0.1:{free_port()}")
    with raises_clean(BadRequestError) as caught:
        admin.revoke_session(session_id)
    assert caught.value.status is None


@pytest.mark.parametrize("user_id", ["", "with space", "é", "x" * 256, "tab\t", ".", ".."])
def test_bad_user_id_fails_before_any_request(make_admin: MakeAdmin, user_id: str) -> None:
    """A user id that is not 1..255 visible ASCII (or is a dot segment) raises BadRequestError without a request."""
    admin = make_admin(f"http://127.0.0.1:{free_port()}")
    with raises_clean(BadRequestError):
        admin.revoke_user(user_id)
    with raises_clean(BadRequestError):
        admin.list_user_sessions(user_id)


def test_bad_ip_address_fails_before_any_request(make_admin: MakeAdmin) -> None:
    """An ip_address that is not an IP address raises BadRequestError without a request, and without the token."""
    admin = make_admin(f"http://127.0.0.1:{free_port()}")
    token = mint("alice")
    with raises_clean(BadRequestError, token):
        admin.register(token, ip_address="not-an-ip")


def test_sidecar_down_is_unavailable(make_admin: MakeAdmin) -> None:
    """Nothing listening on the port: SidecarUnavailableError, with no status and without the token or the key."""
    admin = make_admin(f"http://127.0.0.1:{free_port()}")
    token = mint("alice")
    with raises_clean(SidecarUnavailableError, token) as caught:
        admin.register(token)
    assert caught.value.status is None
    with raises_clean(SidecarUnavailableError):
        admin.list_user_sessions("alice")


@pytest.mark.timeout(30)
def test_hung_server_is_unavailable_within_the_timeout(make_admin: MakeAdmin) -> None:
    """A socket that listens but never answers makes the call fail with SidecarUnavailableError, not hang."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        admin = make_admin(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout=0.5)
        token = mint("alice")
        with raises_clean(SidecarUnavailableError, token):
            admin.register(token)
        with raises_clean(SidecarUnavailableError):
            admin.revoke_user("alice")
        admin.close()


def test_repr_of_clients_and_requests_hides_the_key_and_token() -> None:
    """repr() of both clients and of a built request shows the URL but never the admin key or the token."""
    token = mint("alice")
    blocking = SidecarAdmin("http://127.0.0.1:8081", ADMIN_KEY)
    aio = AsyncSidecarAdmin("http://127.0.0.1:8081", ADMIN_KEY)
    request = next(AdminProtocol("http://127.0.0.1:8081", ADMIN_KEY).register(token, "192.0.2.1", "ua"))
    for obj in (blocking, aio, request):
        assert "127.0.0.1" in repr(obj) or "/admin/v1/sessions" in repr(obj)
        assert ADMIN_KEY not in repr(obj)
        assert token not in repr(obj)
    assert request.body is not None and token.encode() in request.body
    blocking.close()


@pytest.mark.parametrize(
    "base_url", ["ftp://127.0.0.1", "127.0.0.1:8081", "http://user:pw@127.0.0.1:8081", "http://127.0.0.1:8081/?x=1"]
)
def test_bad_base_url_is_refused_at_construction(base_url: str) -> None:
    """A base URL that is not plain http(s) with a host (no credentials, no query) is a ValueError at once."""
    for client in (SidecarAdmin, AsyncSidecarAdmin):
        with pytest.raises(ValueError, match="base_url") as caught:
            client(base_url, ADMIN_KEY)
        assert_secret_free(caught.value, "pw")


def test_client_imports_nothing_of_the_server() -> None:
    """Importing sidecar.client loads only the client modules: no config, web, sessions or JWT library."""
    code = "import sys, sidecar.client; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout.split()
    ours = {m for m in out if m == "sidecar" or m.startswith("sidecar.")}
    assert ours == {"sidecar", "sidecar.client", "sidecar.client._check", "sidecar.client._protocol", "sidecar.client.aio",
                    "sidecar.client.blocking", "sidecar.client.errors"}
    assert "jwt" not in out


# ---------------------------------------------------------------------- answers only a fake can give


@dataclass
class Fake:
    """A loopback HTTP/1.1 server answering from ``answer(method, target) -> (status, body, drop)``.

    ``drop`` closes the connection after the answer without saying so (a stale keep-alive).
    """

    answer: Callable[[str, str], tuple[int, bytes, bool]]
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # method, target, client port
    url: str = ""


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[str, str], tuple[int, bytes, bool]]], Fake]]:
    """Factory: start a Fake on a free port; stopped at teardown."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str, str], tuple[int, bytes, bool]]) -> Fake:
        state = Fake(answer)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                state.seen.append((self.command, self.path, self.client_address[1]))
                status, body, drop = state.answer(self.command, self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if drop:
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _any

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def envelope(data: Any, status: int = 200, message: str = "ok", **top: Any) -> bytes:
    return json.dumps({"status": "success", "status_code": status, "message": message, "data": data, **top}).encode()


def session_json(n: int, user: str = "alice") -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=n)), "user_id": user, "ip_address": "192.0.2.1", "location": "Unknown",
        "device": "curl", "login_time": "2025-02-27T10:00:00Z", "last_seen": "2025-02-27T10:05:00Z",
        "expires_at": "2025-02-27T11:00:00Z", "revoked_at": None, "added_later": {"ignored": True},
    }


def test_list_follows_the_next_cursor(fake: Any, make_admin: MakeAdmin) -> None:
    """When the envelope carries a non-null "next", the list asks ?before=<cursor> until it is null, and returns every page."""
    pages = {
        "/admin/v1/users/alice/sessions": envelope([session_json(1), session_json(2)], next="c/1 2"),
        "/admin/v1/users/alice/sessions?before=c%2F1%202": envelope([session_json(3)], next=None),
    }
    server = fake(lambda method, target: (200, pages[target], False))
    sessions = make_admin(server.url).list_user_sessions("alice")
    assert [s.id for s in sessions] == [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    assert [t for _, t, _ in server.seen] == list(pages)


def test_a_cursor_that_does_not_advance_is_unavailable(fake: Any, make_admin: MakeAdmin) -> None:
    """A sidecar that hands back a cursor it gave before makes the list fail instead of looping forever."""
    server = fake(lambda method, target: (200, envelope([session_json(1)], next="same"), False))
    with raises_clean(SidecarUnavailableError):
        make_admin(server.url).list_user_sessions("alice")
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (502, b"<html>Bad Gateway</html>", SidecarUnavailableError, "The sidecar admin listener is unavailable"),
        (503, envelope({}, 503, "Session store unavailable, try again"), SidecarUnavailableError,
         "Session store unavailable, try again"),
        (200, b"not json", SidecarUnavailableError, None),
        (200, envelope({"id": 7}), SidecarUnavailableError, None),
        (200, envelope("not a list"), SidecarUnavailableError, None),
        (200, envelope([], next=5), SidecarUnavailableError, None),
        (429, envelope({}, 429, "Too many requests"), SidecarClientError, "Too many requests"),
        (404, envelope({}, 404, "Not found"), SidecarClientError, "Not found"),
    ],
)
def test_unusable_answers_become_typed_errors(
    fake: Any, make_admin: MakeAdmin, status: int, body: bytes, *, error: type[Exception], message: str | None
) -> None:
    """5xx, non-JSON and malformed answers raise SidecarUnavailableError; other statuses the base error, with the server's message."""
    server = fake(lambda method, target: (status, body, False))
    admin = make_admin(server.url)
    token = mint("alice")
    for call in (lambda: admin.register(token), lambda: admin.list_user_sessions("alice")):
        with raises_clean(error, token) as caught:
            call()
        assert type(caught.value) is error
        raised = cast(SidecarClientError, caught.value)
        assert raised.status == status
        if message is not None:
            assert raised.message == message


def test_unknown_route_404_on_revoke_session_is_an_error_not_false(fake: Any, make_admin: MakeAdmin) -> None:
    """Only the sidecar's own "Session not found" makes revoke_session False; a 404 from a wrong base path raises."""
    server = fake(lambda method, target: (404, envelope({}, 404, "Not found"), False))
    with raises_clean(SidecarClientError) as caught:
        make_admin(server.url).revoke_session(uuid.uuid4())
    assert caught.value.status == 404


def test_connections_are_reused_and_reopened_when_the_server_dropped_one(fake: Any, make_admin: MakeAdmin) -> None:
    """Calls share one kept-alive connection; one the server closed silently is re-opened and the call succeeds."""
    drops = iter([False, True, False, False])
    server = fake(lambda method, target: (200, envelope([]), next(drops)))
    admin = make_admin(server.url + "/")
    for _ in range(4):
        assert admin.list_user_sessions("alice") == []
    ports = [port for _, _, port in server.seen]
    assert ports[0] == ports[1]  # reused
    assert ports[2] == ports[3] != ports[1]  # a new connection after the drop, reused again


def test_base_url_path_prefix_is_kept(fake: Any, make_admin: MakeAdmin) -> None:
    """A base URL with a path (a reverse proxy's mount point) prefixes every request."""
    server = fake(lambda method, target: (204, b"", False))
    make_admin(server.url + "/sidecar/").revoke_user(42)
    assert server.seen[0][:2] == ("DELETE", "/sidecar/admin/v1/users/42/sessions")
