"""sidecar.client's middlewares (ASGI and aiohttp) in apps with no gateway, against a real `sidecar serve`.

One behaviour suite runs for both: a FastAPI app under uvicorn (tests/apps/middleware_fastapi.py)
and an aiohttp app (tests/apps/middleware_aiohttp.py), each a real process on loopback.
Answers the real sidecar never gives (garbage, redirects, 5xx, silence) come from a small
fake server, a port that never answers, and a port nothing listens on.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from sidecar.client import SidecarAdmin, SidecarUnavailableError, TokenRejectedError
from sidecar.client._check import Identity, PublicPaths, check_headers, interpret, target_of
from sidecar.client.aiohttp_middleware import SIDECAR_IDENTITY, setup_sidecar
from sidecar.client.asgi import Message, Receive, Scope, Send, SidecarAuthMiddleware
from tests.support.ports import blackhole, free_ports
from tests.support.processes import REPO_ON_PATH, log_says, running
from tests.support.sessions import CHROME_WINDOWS
from tests.support.sidecar import run_sidecar
from tests.support.tokens import ADMIN_KEY, bearer, mint

APP_MODULES = {"fastapi": "tests.apps.middleware_fastapi", "aiohttp": "tests.apps.middleware_aiohttp"}
READY = {"fastapi": "Uvicorn running on", "aiohttp": "app: ready"}
CLIENT_IP = "127.0.0.2"  # the test client's source address, told apart from the app's 127.0.0.1


# ---------------------------------------------------------------------- processes


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class App:
    kind: str
    port: int

    def get(self, path: str, headers: dict[str, str] | None = None, *, method: str = "GET") -> Answer:
        """One request to the app, from CLIENT_IP."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(CLIENT_IP, 0))
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def calls(self) -> int:
        """How many times the app's checked handler ran."""
        return int(self.get("/calls").json()["calls"])


@contextmanager
def run_app(kind: str, workdir: Path, sidecar_url: str, timeout: float = 1.0) -> Iterator[App]:
    [port] = free_ports(1)
    env = {"SIDECAR_URL": sidecar_url, "APP_PORT": str(port), "SIDECAR_TIMEOUT": str(timeout), **REPO_ON_PATH}
    argv = [sys.executable, "-m", APP_MODULES[kind]]
    with running(kind, argv, workdir, log_says(READY[kind], port), env=env):
        yield App(kind, port)


@dataclass
class Sidecar:
    port: int
    admin_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def my_sessions(self, token: str) -> list[dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/api/v1/sessions/", headers=bearer(token))
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 200, body
            return list(body["data"])
        finally:
            conn.close()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """A real `sidecar serve` (auto registration), shared by the module."""
    # The apps reach the sidecar from 127.0.0.1: that hop, and only it, is trusted.
    with run_sidecar(
        tmp_path_factory.mktemp("mw-sidecar"),
        jwt={"cookie_name": "access_token", "claim_headers": {"email": "X-Auth-Email"}},
        routes=[
            {"path": "/open/*", "policy": "public"},
            {"path": "/maybe/*", "methods": ["GET", "HEAD"], "policy": "optional"},
        ],
    ) as running_sidecar:
        yield Sidecar(running_sidecar.port, running_sidecar.admin_url)


@pytest.fixture(scope="module", params=sorted(APP_MODULES))
def kind(request: pytest.FixtureRequest) -> str:
    """Which app: FastAPI (the ASGI middleware) or aiohttp (the aiohttp middleware)."""
    return str(request.param)


@pytest.fixture(scope="module")
def app(kind: str, sidecar: Sidecar, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app of ``kind`` in front of the real sidecar."""
    with run_app(kind, tmp_path_factory.mktemp(f"mw-{kind}"), sidecar.url) as app:
        yield app


def assert_denied(answer: Answer) -> None:
    assert answer.status == 401, answer.body
    assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.json()["status_code"] == 401


def assert_unavailable(answer: Answer) -> None:
    assert answer.status == 503, answer.body
    assert answer.headers["Retry-After"] == "1"
    assert answer.json()["status_code"] == 503


# ---------------------------------------------------------------------- the real sidecar


def test_valid_token_reaches_the_handler_with_its_user_session_and_claim_headers(app: App) -> None:
    """A valid token's request runs the handler, which sees the user, the session and the claim headers."""
    token = mint("alice", email="alice@example.com")
    answer = app.get("/me", bearer(token))
    assert answer.status == 200, answer.body
    identity = answer.json()["identity"]
    assert identity == {"user": "alice", "session": identity["session"], "headers": {"x-auth-email": "alice@example.com"}}
    uuid.UUID(identity["session"])  # the sidecar's session id
    assert app.get("/me", bearer(token)).json()["identity"] == identity


def test_the_token_cookie_counts_like_the_header(app: App) -> None:
    """The jwt.cookie_name cookie is passed on to the sidecar: its token's request is allowed."""
    answer = app.get("/me", {"Cookie": f"theme=dark; access_token={mint('carol')}"})
    assert answer.status == 200, answer.body
    assert answer.json()["identity"]["user"] == "carol"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("not-a-jwt"),
        bearer(mint("alice", key="another-secret-that-is-long-enough-0123456789")),
        bearer(mint("alice", ttl=-60)),
        {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
        {"X-Auth-User": "alice", "X-Auth-Session": str(uuid.uuid4())},
    ],
    ids=["none", "garbage", "wrong-key", "expired", "basic", "forged-identity-headers"],
)
def test_no_or_invalid_token_is_401_and_the_handler_never_runs(app: App, headers: dict[str, str]) -> None:
    """Without a valid token the middleware answers 401 itself; the handler is not called."""
    before = app.calls()
    assert_denied(app.get("/me", headers))
    assert app.calls() == before


def test_a_revoked_session_is_refused_on_the_next_request(app: App, sidecar: Sidecar) -> None:
    """Revoking the session through the admin API makes the very next request a 401."""
    token = mint("dave")
    allowed = app.get("/me", bearer(token))
    assert allowed.status == 200, allowed.body
    session_id = allowed.json()["identity"]["session"]
    with SidecarAdmin(sidecar.admin_url, ADMIN_KEY) as admin:
        assert admin.revoke_session(session_id) is True
    before = app.calls()
    assert_denied(app.get("/me", bearer(token)))
    assert app.calls() == before


def test_the_middlewares_public_paths_run_without_identity_and_without_a_check(app: App) -> None:
    """A path in ``public`` reaches the handler with no token and an identity of None."""
    answer = app.get("/health")
    assert answer.status == 200, answer.body
    assert answer.json() == {"identity": None}


def test_a_public_route_of_the_sidecar_runs_the_handler_anonymously(app: App) -> None:
    """The sidecar's anonymous allow (a [[routes]] public entry) reaches the handler with identity None."""
    before = app.calls()
    answer = app.get("/open/login?next=/me")
    assert answer.status == 200, answer.body
    assert answer.json() == {"identity": None}
    assert app.calls() == before + 1


def test_the_original_method_decides_an_optional_route(app: App) -> None:
    """The request's method reaches the sidecar: GET of an optional route is anonymous, POST needs a token."""
    assert app.get("/maybe/feed").json() == {"identity": None}
    assert_denied(app.get("/maybe/feed", method="POST"))


def test_the_clients_device_and_address_reach_the_sidecar(app: App, sidecar: Sidecar) -> None:
    """The session the check registers has the client's User-Agent as its device and its address as IP."""
    token = mint(f"erin-{uuid.uuid4()}")
    answer = app.get("/me", {**bearer(token), "User-Agent": CHROME_WINDOWS})
    assert answer.status == 200, answer.body
    [session] = sidecar.my_sessions(token)
    assert session["device"] == "Chrome on Windows"
    assert session["ip_address"] == CLIENT_IP


# ---------------------------------------------------------------------- a sidecar that cannot answer


def test_a_sidecar_that_is_down_gives_503_never_an_allow(kind: str, tmp_path: Path) -> None:
    """Nothing listening at the sidecar's address: 503 with Retry-After, the handler never runs."""
    [port] = free_ports(1)
    with run_app(kind, tmp_path, f"http://127.0.0.1:{port}") as app:
        assert_unavailable(app.get("/me", bearer(mint("alice"))))
        assert_unavailable(app.get("/open/login"))
        assert app.calls() == 0
        assert app.get("/health").status == 200  # public paths need no sidecar


def test_a_hung_sidecar_gives_503_after_the_timeout(kind: str, tmp_path: Path) -> None:
    """A sidecar that accepts connections and never answers: 503 once the timeout is over."""
    with blackhole() as port, run_app(kind, tmp_path, f"http://127.0.0.1:{port}", timeout=0.5) as app:
        assert_unavailable(app.get("/me", bearer(mint("alice"))))
        assert app.calls() == 0


class FakeSidecar(BaseHTTPRequestHandler):
    """Answers GET /introspect with the case named by the first segment of X-Original-URI."""

    CASES: ClassVar[dict[str, tuple[int, list[tuple[str, str]]]]] = {
        "control": (200, [("X-Auth-User", "alice"), ("X-Auth-Session", "s-1")]),
        "no-identity": (200, []),
        "no-store-only": (200, [("Cache-Control", "no-store")]),
        "user-only": (200, [("X-Auth-User", "alice")]),
        "session-only": (200, [("X-Auth-Session", "s-1")]),
        "empty-user": (200, [("X-Auth-User", ""), ("X-Auth-Session", "s-1")]),
        "two-users": (200, [("X-Auth-User", "alice"), ("X-Auth-User", "bob"), ("X-Auth-Session", "s-1")]),
        "anonymous-and-user": (
            200,
            [("X-Auth-Anonymous", "public"), ("X-Auth-User", "alice"), ("X-Auth-Session", "s-1")],
        ),
        "anonymous-unknown": (200, [("X-Auth-Anonymous", "yes")]),
        "redirect": (302, [("Location", "/login")]),
        "no-content": (204, []),
        "forbidden": (403, []),
        "not-found": (404, []),
        "error": (500, []),
        "overloaded": (503, [("Retry-After", "1")]),
    }

    def do_GET(self) -> None:
        case = self.headers.get("X-Original-URI", "/").split("/")[1]
        status, headers = self.CASES.get(case, (500, []))
        body = b"" if status == 204 else b'{"ok": true}'
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fake_sidecar() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSidecar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def garbage_app(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app of ``kind`` in front of the fake sidecar."""
    with fake_sidecar() as port, run_app(kind, tmp_path_factory.mktemp(f"mw-fake-{kind}"), f"http://127.0.0.1:{port}") as app:
        yield app


def test_the_fake_sidecars_real_looking_allow_is_an_allow(garbage_app: App) -> None:
    """The control case: the fake server's 200 with both identity headers reaches the handler."""
    answer = garbage_app.get("/control")
    assert answer.status == 200, answer.body
    assert answer.json()["identity"] == {"user": "alice", "session": "s-1", "headers": {}}


@pytest.mark.parametrize("case", sorted(set(FakeSidecar.CASES) - {"control"}))
def test_any_other_answer_of_the_sidecar_gives_503_never_an_allow(garbage_app: App, case: str) -> None:
    """A 200 without the sidecar's identity (or anonymous allow), a redirect, a 4xx or 5xx: 503, handler untouched."""
    before = garbage_app.calls()
    assert_unavailable(garbage_app.get(f"/{case}/x", bearer(mint("alice"))))
    assert garbage_app.calls() == before


# ---------------------------------------------------------------------- the sans-IO core


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ("/health", True),
        ("/health/", False),
        ("/healthz", False),
        ("/static", True),
        ("/static/", True),
        ("/static/app.js", True),
        ("/staticx", False),
        ("/static/../admin", False),
        ("/static/./app.js", False),
        ("/static//app.js", False),
        ("/static\\..\\admin", False),
        ("/me", False),
        ("", False),
    ],
)
def test_public_paths_match_exactly_or_by_prefix_and_never_an_ambiguous_spelling(path: str, public: bool) -> None:
    """``public`` holds exact paths and ``/*`` prefixes; dot segments, ``//`` and backslashes never match."""
    assert (path in PublicPaths(["/health", "/static/*"])) is public


@pytest.mark.parametrize("pattern", ["health", "/a*", "/*/x", "/a/*/b"])
def test_a_public_pattern_that_is_not_a_path_or_prefix_is_refused(pattern: str) -> None:
    """A pattern not starting with '/' or with a '*' other than a final '/*' is a ValueError."""
    with pytest.raises(ValueError):
        PublicPaths([pattern])


def test_the_check_request_carries_the_requests_description_and_credentials() -> None:
    """check_headers sends method, raw target, every credential header, the device and the client IP."""
    headers = check_headers(
        "POST",
        target_of(b"/a%2Fb/\xc3\xa9", b"q=1"),
        authorization=["Bearer t"],
        cookies=["a=1", "b=2"],
        user_agent="curl/8",
        client_ip="::1",
    )
    assert headers == [
        ("X-Original-Method", "POST"),
        ("X-Original-URI", "/a%2Fb/%C3%A9?q=1"),
        ("Authorization", "Bearer t"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("User-Agent", "curl/8"),
        ("X-Forwarded-For", "::1"),
    ]
    assert ("X-Forwarded-For", "testclient") not in check_headers("GET", "/", client_ip="testclient")


def test_interpret_reads_identity_anonymous_deny_and_everything_else_as_unavailable() -> None:
    """200 with identity is an Identity, the anonymous allow None, 401 TokenRejectedError, the rest SidecarUnavailableError."""
    identity = interpret(200, [("x-auth-user", "u"), ("X-Auth-Session", "s"), ("X-Auth-Role", "admin")])
    assert identity == Identity("u", "s", {"x-auth-role": "admin"})
    assert interpret(200, [("X-Auth-Anonymous", "optional")]) is None
    with pytest.raises(TokenRejectedError):
        interpret(401, [])
    for status, headers in [(200, []), (302, [("X-Auth-User", "u"), ("X-Auth-Session", "s")]), (500, [])]:
        with pytest.raises(SidecarUnavailableError):
            interpret(status, headers)



# ---------------------------------------------------------------------- in-process wiring


async def test_the_asgi_middleware_closes_its_connections_at_lifespan_shutdown_and_passes_websockets() -> None:
    """A websocket scope reaches the app unchecked; lifespan shutdown closes the session to the sidecar."""
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            assert scope["state"]["sidecar"] == Identity("alice", "s-1")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    lifespan = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive_lifespan() -> Message:
        return next(lifespan)

    with fake_sidecar() as port:
        middleware = SidecarAuthMiddleware(inner, f"http://127.0.0.1:{port}")
        http_scope = {"type": "http", "method": "GET", "path": "/control/x", "raw_path": b"/control/x",
                      "query_string": b"", "headers": [], "client": ("127.0.0.1", 5000)}
        await middleware(http_scope, receive, send)
        assert sent[0]["status"] == 204
        assert middleware.checker.connected
        await middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
        await middleware({"type": "lifespan"}, receive_lifespan, send)
    assert seen == ["http", "websocket", "lifespan"]
    assert not middleware.checker.connected


async def test_setup_sidecar_checks_requests_and_closes_its_connections_at_cleanup(aiohttp_client: AiohttpClient) -> None:
    """setup_sidecar adds the middleware and a cleanup_ctx entry that closes the session to the sidecar."""

    async def handler(request: web.Request) -> web.Response:
        identity = request[SIDECAR_IDENTITY]
        return web.json_response({"user": None if identity is None else identity.user_id})

    with fake_sidecar() as port:
        app = web.Application()
        middleware = setup_sidecar(app, f"http://127.0.0.1:{port}")
        app.router.add_get("/{tail:.*}", handler)
        client = await aiohttp_client(app)
        resp = await client.get("/control/x")
        assert resp.status == 200
        assert await resp.json() == {"user": "alice"}
        assert (await client.get("/error/x")).status == 503
        assert middleware.checker.connected
        await client.close()
    assert not middleware.checker.connected


def test_the_middlewares_import_nothing_of_the_server() -> None:
    """Importing both middlewares loads only sidecar.client modules: no config, web, JWT library or Starlette."""
    code = (
        "import sys, sidecar.client.asgi, sidecar.client.aiohttp_middleware;"
        " print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, **REPO_ON_PATH},
    ).stdout.split()
    ours = {m for m in out if m == "sidecar" or m.startswith("sidecar.")}
    assert all(m == "sidecar" or m.startswith("sidecar.client") for m in ours), ours
    assert "jwt" not in out
    assert "starlette" not in out
