"""What every gateway configuration in contrib/ must do, run against nginx and Envoy alike.

Issue 3 "Done means" 1-6 and SECURITY_CASES B17-B22, end to end: a client (aiohttp)
talks to the real gateway, which asks the real sidecar and forwards to the echo upstream.
"Never reached the upstream" is read from the upstream's own record of what it received.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from tests.gateways.conftest import OTHER_CLIENT_ADDRESS
from tests.gateways.support import APP_ORIGIN, Gateway, Upstream, mint, probe_path
from tests.support.sessions import CHROME_WINDOWS
from tests.support.sidecar import SidecarProcess
from tests.support.tokens import bearer

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CHALLENGE = 'Bearer error="invalid_token"'

Headers = dict[str, str] | list[tuple[str, str]]


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    method: str,
    path: str,
    headers: Headers | None = None,
    *,
    data: bytes | io.BytesIO | None = None,
) -> Reply:
    # encoded=True: the path goes out exactly as written (no client-side dot removal).
    url = URL(gateway.url + path, encoded=True)
    async with http.request(
        method, url, headers=headers, data=data, allow_redirects=False
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


def headers_of(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in record["headers"]]


def values(record: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in headers_of(record) if n.lower() == name.lower()]


def only_request(upstream: Upstream, path: str) -> dict[str, Any]:
    received = upstream.received(path)
    assert len(received) == 1, f"upstream received {len(received)} requests for {path}"
    return received[0]


def assert_refused_401(reply: Reply) -> None:
    assert reply.status == 401, reply.body
    assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]
    assert reply.headers.get("Cache-Control") == "no-store"


async def sessions_of(http: aiohttp.ClientSession, gateway: Gateway, token: str) -> list[Any]:
    reply = await send(http, gateway, "GET", "/api/v1/sessions/", bearer(token))
    assert reply.status == 200, reply.body
    assert reply.headers.get("Cache-Control") == "no-store"
    data: list[Any] = reply.json()["data"]
    return data


def reached(upstream: Upstream, marker: str) -> bool:
    """Whether any request the upstream received had ``marker`` in its path."""
    if not upstream.record.exists():
        return False
    return any(marker in line for line in upstream.record.read_text().splitlines())


class GatewayContract:
    """Tests shared by test_nginx.py and test_envoy.py; subclasses set the statuses."""

    # What the client gets when the check cannot be answered (down, hung, 5xx).
    refused_on_sidecar_failure: ClassVar[int]

    # ------------------------------------------------------------ 0. route policies (E41)

    async def test_public_route_reaches_the_app_without_a_token_and_without_identity(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A public route is answered by the app with no token, and forged identity never arrives."""
        path = "/public/" + uuid.uuid4().hex
        reply = await send(http, gateway, "POST", path, {"X-Auth-User": "mallory"})
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        assert values(seen, "X-Auth-User") == []
        assert values(seen, "X-Auth-Session") == []

    async def test_public_route_ignores_a_bad_token(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """On a public route credentials are not looked at: an expired token still reaches the app."""
        path = "/public/" + uuid.uuid4().hex
        reply = await send(http, gateway, "GET", path, bearer(mint("pia", ttl=-60)))
        assert reply.status == 200
        assert values(only_request(upstream, path), "X-Auth-User") == []

    async def test_optional_route_is_anonymous_without_a_token(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """GET on an optional route without a token reaches the app anonymously; with one, with identity."""
        anonymous = "/optional/" + uuid.uuid4().hex
        assert (await send(http, gateway, "GET", anonymous)).status == 200
        assert values(only_request(upstream, anonymous), "X-Auth-User") == []
        known = "/optional/" + uuid.uuid4().hex
        assert (await send(http, gateway, "GET", known, bearer(mint("quinn")))).status == 200
        assert values(only_request(upstream, known), "X-Auth-User") == ["quinn"]

    async def test_optional_route_refuses_a_bad_token_and_other_methods(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A bad token on an optional route, or a POST to it without one, is refused before the app."""
        bad = "/optional/" + uuid.uuid4().hex
        assert_refused_401(await send(http, gateway, "GET", bad, bearer(mint("rosa", ttl=-60))))
        post = "/optional/" + uuid.uuid4().hex
        assert_refused_401(await send(http, gateway, "POST", post))
        assert upstream.received(bad) == [] and upstream.received(post) == []

    @pytest.mark.parametrize(
        "spelling",
        [
            "/public/../probe/{m}",
            "/public/%2e%2e/probe/{m}",
            "/public/%2E%2E/probe/{m}",
            "/public/.%2e/probe/{m}",
            "/public%2f..%2fprobe/{m}",
            "/public/..%2fprobe/{m}",
            "/public;x/../probe/{m}",
            "/public/..;/probe/{m}",
            "//public/../probe/{m}",
            "/public/%252e%252e/probe/{m}",
            "/PUBLIC/../probe/{m}",
            "/optional/../probe/{m}",
        ],
    )
    async def test_path_confusion_never_turns_a_protected_path_public(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream, spelling: str
    ) -> None:
        """Spellings that lead from a public prefix to a protected path never reach the app without a token."""
        marker = uuid.uuid4().hex
        reply = await send(http, gateway, "GET", spelling.format(m=marker))
        assert not 200 <= reply.status < 300, (reply.status, reply.body[:200])
        assert not reached(upstream, marker)

    # ------------------------------------------------------------ 1. identity from the sidecar

    async def test_valid_token_reaches_upstream_with_sidecar_identity(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A valid token reaches the upstream with X-Auth-User and X-Auth-Session set by the sidecar."""
        path = probe_path()
        reply = await send(http, gateway, "GET", path + "?q=1", bearer(mint("alice")))
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        assert seen["method"] == "GET"
        assert seen["query"] == "q=1"
        assert values(seen, "X-Auth-User") == ["alice"]
        [session_id] = values(seen, "X-Auth-Session")
        assert UUID_RE.fullmatch(session_id)
        # Identity is for the upstream only, never echoed to the client by the gateway.
        assert "X-Auth-User" not in reply.headers

    async def test_forged_identity_headers_are_replaced(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """Client-sent X-Auth-User/X-Auth-Session (any case, repeated) never reach the upstream."""
        path = probe_path()
        forged = [
            ("X-Auth-User", "mallory"),
            ("x-auth-user", "root"),
            ("X-AUTH-SESSION", "00000000-0000-4000-8000-000000000000"),
            ("X-Auth-Session", "forged"),
        ]
        reply = await send(
            http, gateway, "GET", path, [*bearer(mint("alice")).items(), *forged]
        )
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        assert values(seen, "X-Auth-User") == ["alice"]
        [session_id] = values(seen, "X-Auth-Session")
        assert UUID_RE.fullmatch(session_id) and session_id != forged[2][1]

    async def test_underscore_identity_headers_never_reach_upstream(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """Underscore spellings (X_Auth_User, x_auth_session) are dropped, not passed on."""
        path = probe_path()
        forged = [("X_Auth_User", "mallory"), ("x_auth_session", "forged"), ("X-Auth_User", "eve")]
        reply = await send(
            http, gateway, "GET", path, [*bearer(mint("alice")).items(), *forged]
        )
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        names = [name for name, _ in headers_of(seen)]
        assert not [n for n in names if "_" in n], names
        assert values(seen, "X-Auth-User") == ["alice"]

    async def test_forged_identity_without_token_is_refused(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """X-Auth-* headers sent by a client authenticate nothing: without a token it is 401."""
        path = probe_path()
        forged = {"X-Auth-User": "alice", "X-Auth-Session": "00000000-0000-4000-8000-000000000000"}
        assert_refused_401(await send(http, gateway, "GET", path, forged))
        assert upstream.received(path) == []

    # ------------------------------------------------------------ 2. refused tokens

    @pytest.mark.parametrize(
        "authorization",
        [
            pytest.param(None, id="no-token"),
            pytest.param("Bearer not-a-jwt", id="garbage"),
            pytest.param(
                "Bearer " + mint(key="another-secret-that-is-also-long-enough-000000"),
                id="wrong-key",
            ),
            pytest.param("Bearer " + mint(ttl=-10), id="expired"),
            pytest.param("Bearer " + mint(typ="refresh"), id="refresh"),
            pytest.param("Basic YWxpY2U6c2VjcmV0", id="basic-scheme"),
        ],
    )
    async def test_refused_token_is_401_and_never_forwarded(
        self,
        http: aiohttp.ClientSession,
        gateway: Gateway,
        upstream: Upstream,
        authorization: str | None,
    ) -> None:
        """No, bad, expired or refresh token: 401 with WWW-Authenticate, upstream untouched."""
        path = probe_path()
        headers = {"Authorization": authorization} if authorization else {}
        reply = await send(http, gateway, "GET", path, headers)
        assert_refused_401(reply)
        # The sidecar's deny body: says that, not why.
        assert reply.json() == {
            "status": "error", "status_code": 401, "message": "Unauthorized", "data": {},
        }
        assert upstream.received(path) == []

    async def test_check_answers_are_never_cacheable(
        self, http: aiohttp.ClientSession, sidecar_process: SidecarProcess
    ) -> None:
        """Both answers the gateway gets from the check carry Cache-Control: no-store."""
        for token, status in ((mint("alice"), 200), ("junk", 401)):
            async with http.get(sidecar_process.url + "/introspect/probe", headers=bearer(token)) as resp:
                assert resp.status == status
                assert resp.headers.get("Cache-Control") == "no-store"

    # ------------------------------------------------------------ 3. revocation

    async def test_revoked_session_is_refused_on_the_very_next_request(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """Logging a device out through the gateway's sessions API refuses its next request."""
        laptop, phone = mint("carol"), mint("carol")
        first = probe_path()
        assert (await send(http, gateway, "GET", first, bearer(laptop))).status == 200
        [laptop_session] = values(only_request(upstream, first), "X-Auth-Session")
        assert (await send(http, gateway, "GET", probe_path(), bearer(phone))).status == 200

        listed = await sessions_of(http, gateway, phone)
        assert laptop_session in {s["id"] for s in listed}

        # From the phone, log the laptop out; no trailing-slash redirect, no sleep after.
        revoke = await send(
            http, gateway, "DELETE", f"/api/v1/sessions/{laptop_session}/", bearer(phone)
        )
        assert revoke.status == 204, revoke.body
        refused = probe_path()
        assert_refused_401(await send(http, gateway, "GET", refused, bearer(laptop)))
        assert upstream.received(refused) == []
        # The other session of the same user is untouched.
        assert (await send(http, gateway, "GET", probe_path(), bearer(phone))).status == 200

    async def test_revoking_own_session_refuses_it(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A session that logs itself out (DELETE its own id, no slash) is refused right after."""
        token = mint("dave")
        [mine] = await sessions_of(http, gateway, token)
        assert mine["current"] is True
        reply = await send(http, gateway, "DELETE", f"/api/v1/sessions/{mine['id']}", bearer(token))
        assert reply.status == 204, reply.body
        path = probe_path()
        assert_refused_401(await send(http, gateway, "POST", path, bearer(token), data=b"{}"))
        assert upstream.received(path) == []

    async def test_log_out_all_other_sessions_through_the_gateway(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """DELETE /api/v1/sessions/ refuses the user's other sessions at once; the caller's works."""
        current, other = mint("ruth"), mint("ruth")
        for token in (current, other):
            assert (await send(http, gateway, "GET", probe_path(), bearer(token))).status == 200
        reply = await send(http, gateway, "DELETE", "/api/v1/sessions/", bearer(current))
        assert reply.status == 204, reply.body
        refused = probe_path()
        assert_refused_401(await send(http, gateway, "GET", refused, bearer(other)))
        assert upstream.received(refused) == []
        assert (await send(http, gateway, "GET", probe_path(), bearer(current))).status == 200

    async def test_a_token_in_the_cookie_passes_and_cross_site_logouts_are_refused(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """The jwt.cookie_name cookie reaches the check and the API; a cross-site DELETE with it is 403, a same-origin one 204 (E45)."""
        token = mint("uma")
        cookie = {"Cookie": f"theme=dark; access_token={token}"}
        path = probe_path()
        assert (await send(http, gateway, "GET", path, cookie)).status == 200
        assert values(only_request(upstream, path), "X-Auth-User") == ["uma"]
        listed = await send(http, gateway, "GET", "/api/v1/sessions/", cookie)
        assert listed.status == 200, listed.body
        [mine] = listed.json()["data"]
        one = f"/api/v1/sessions/{mine['id']}/"
        refused = await send(http, gateway, "DELETE", one, {**cookie, "Origin": "https://evil.example"})
        assert refused.status == 403 and refused.json()["message"] == "Cross-site request refused"
        assert (await send(http, gateway, "GET", probe_path(), cookie)).status == 200
        assert (await send(http, gateway, "DELETE", one, {**cookie, "Origin": APP_ORIGIN})).status == 204
        assert_refused_401(await send(http, gateway, "GET", probe_path(), cookie))

    async def test_a_cookie_that_disagrees_with_the_header_is_refused(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A bearer header and a cookie holding another token are refused at the gateway, never forwarded."""
        path = probe_path()
        headers = {**bearer(mint("vera")), "Cookie": f"access_token={mint('vera')}"}
        assert_refused_401(await send(http, gateway, "GET", path, headers))
        assert upstream.received(path) == []

    # ------------------------------------------------------------ 4. who the client is

    async def test_session_records_client_address_and_user_agent(
        self, http_elsewhere: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """The session has the client's address and User-Agent, not the gateway's or forged ones."""
        token = mint("erin")
        headers = {
            **bearer(token),
            "User-Agent": CHROME_WINDOWS,
            "X-Forwarded-For": "203.0.113.7",
            "X-Real-IP": "203.0.113.8",
        }
        path = probe_path()
        assert (await send(http_elsewhere, gateway, "GET", path, headers)).status == 200
        seen = only_request(upstream, path)
        # The upstream, too, is told the address the gateway saw, and only that.
        assert values(seen, "X-Forwarded-For") == [OTHER_CLIENT_ADDRESS]
        assert values(seen, "X-Real-IP") == [OTHER_CLIENT_ADDRESS]
        assert values(seen, "User-Agent") == [CHROME_WINDOWS]

        [session] = await sessions_of(http_elsewhere, gateway, token)
        assert session["ip_address"] == OTHER_CLIENT_ADDRESS
        assert session["device"] == "Chrome on Windows"
        assert session["location"] == "Private network"

    async def test_session_first_seen_on_sessions_api_records_client(
        self, http_elsewhere: aiohttp.ClientSession, gateway: Gateway
    ) -> None:
        """A token first used on the sessions API registers the client's address and device too."""
        token = mint("frank")
        headers = {**bearer(token), "User-Agent": CHROME_WINDOWS, "X-Forwarded-For": "198.51.100.1"}
        reply = await send(http_elsewhere, gateway, "GET", "/api/v1/sessions/", headers)
        assert reply.status == 200, reply.body
        [session] = reply.json()["data"]
        assert session["ip_address"] == OTHER_CLIENT_ADDRESS
        assert session["device"] == "Chrome on Windows"

    async def test_forwarded_headers_from_a_loopback_client_are_not_believed(
        self, http: aiohttp.ClientSession, gateway: Gateway
    ) -> None:
        """A client on the gateway's own address cannot claim another address with X-Forwarded-For."""
        token = mint("grace")
        headers = {**bearer(token), "X-Forwarded-For": "203.0.113.7, 198.51.100.2"}
        assert (await send(http, gateway, "GET", probe_path(), headers)).status == 200
        [session] = await sessions_of(http, gateway, token)
        # The gateway replaces the client's X-Forwarded-For with what it saw (127.0.0.1).
        assert session["ip_address"] == "127.0.0.1"

    # ------------------------------------------------------------ 5. every method

    @pytest.mark.parametrize("method", METHODS)
    async def test_every_method_without_token_is_refused(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream, method: str
    ) -> None:
        """No method bypasses the check: each one without a token is 401 and never forwarded."""
        path = probe_path()
        reply = await send(http, gateway, method, path, data=b"payload" if method != "HEAD" else None)
        assert reply.status == 401
        assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]
        assert upstream.received(path) == []

    @pytest.mark.parametrize("method", METHODS)
    async def test_every_method_with_token_is_forwarded_as_sent(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream, method: str
    ) -> None:
        """Each method with a valid token reaches the upstream unchanged, with its body."""
        path = probe_path()
        body = None if method == "HEAD" else b"x" * 100
        reply = await send(http, gateway, method, path, bearer(mint("heidi")), data=body)
        assert reply.status == 200, reply.body
        seen = only_request(upstream, path)
        assert seen["method"] == method
        assert seen["body_bytes"] == (0 if body is None else len(body))
        assert values(seen, "X-Auth-User") == ["heidi"]

    async def test_large_body_streams_through_to_upstream(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A 4 MiB upload passes intact (the check never needs the body; no temp-file spooling)."""
        path = probe_path()
        body = b"\x00\xff" * (2 * 1024 * 1024)
        reply = await send(http, gateway, "PUT", path, bearer(mint("ivan")), data=io.BytesIO(body))
        assert reply.status == 200, reply.body
        assert only_request(upstream, path)["body_bytes"] == len(body)

    async def test_large_response_streams_back_to_client(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A 4 MiB answer from the upstream reaches the client whole."""
        path = probe_path()
        size = 4 * 1024 * 1024
        reply = await send(http, gateway, "GET", f"{path}?pad={size}", bearer(mint("ivan")))
        assert reply.status == 200
        assert len(reply.json()["pad"]) == size

    # ------------------------------------------------------------ routing

    async def test_sessions_api_answers_with_its_own_auth(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """The sessions API is the sidecar's: without a token its 401 envelope, upstream untouched."""
        for path in ("/api/v1/sessions/", "/api/v1/sessions"):
            reply = await send(http, gateway, "GET", path)
            assert_refused_401(reply)
            assert reply.json()["status"] == "error"
            assert upstream.received(path) == []

    async def test_introspect_path_is_checked_like_any_other(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """A client's /introspect is an app path behind the check, never the sidecar's check."""
        assert_refused_401(await send(http, gateway, "GET", "/introspect"))
        assert upstream.received("/introspect") == []
        reply = await send(http, gateway, "GET", "/introspect", bearer(mint("judy")))
        assert reply.status == 200
        assert values(only_request(upstream, "/introspect"), "X-Auth-User") == ["judy"]

    async def test_dot_segments_cannot_slip_past_the_check(
        self, http: aiohttp.ClientSession, gateway: Gateway, upstream: Upstream
    ) -> None:
        """/api/v1/sessions/../../x is normalised to the app path /api/x and checked."""
        target = probe_path()
        reply = await send(http, gateway, "GET", "/api/v1/sessions/../.." + target)
        assert reply.status == 401
        assert upstream.received(target) == []
        assert upstream.received("/api" + target) == []

    # ------------------------------------------------------------ 6. sidecar failure

    @pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
    async def test_sidecar_down_refuses_and_never_forwards(
        self,
        http: aiohttp.ClientSession,
        gateway_without_sidecar: Gateway,
        upstream: Upstream,
        method: str,
    ) -> None:
        """With nothing listening for the check, even a valid token is refused, never forwarded."""
        path = probe_path()
        reply = await send(http, gateway_without_sidecar, method, path, bearer(mint("kim")))
        assert reply.status == self.refused_on_sidecar_failure
        assert upstream.received(path) == []

    async def test_hung_sidecar_refuses_after_the_timeout(
        self, http: aiohttp.ClientSession, gateway_with_hung_sidecar: Gateway, upstream: Upstream
    ) -> None:
        """A sidecar that never answers makes the gateway give up and refuse, never forward."""
        path = probe_path()
        reply = await send(http, gateway_with_hung_sidecar, "GET", path, bearer(mint("leo")))
        assert reply.status == self.refused_on_sidecar_failure
        assert upstream.received(path) == []

    async def test_sidecar_error_refuses(
        self, http: aiohttp.ClientSession, gateway_with_broken_sidecar: Gateway, upstream: Upstream
    ) -> None:
        """A 5xx from the check is an error for the gateway, never an allow."""
        path = probe_path()
        reply = await send(http, gateway_with_broken_sidecar, "GET", path, bearer(mint("mia")))
        assert reply.status == self.refused_on_sidecar_failure
        assert upstream.received(path) == []
