"""The admin API without I/O: build requests, read answers (sans-IO).

Each operation is a generator: it yields a :class:`Request`, is sent back the
:class:`Answer`, and returns the result or raises a typed error. Both clients drive the
same generators, so validation, paths, pagination and error mapping live only here.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, urlsplit

from sidecar import __version__
from sidecar.client.errors import (
    AdminKeyRefusedError,
    BadRequestError,
    SessionRevokedError,
    SidecarClientError,
    SidecarUnavailableError,
    TokenRejectedError,
)

T = TypeVar("T")

# The most an answer may weigh; beyond it the answer is refused, not buffered.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SESSION_NOT_FOUND = "Session not found"  # the sidecar's 404 body for an unknown session


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request to send. Headers and body hold secrets: they stay out of repr()."""

    method: str
    target: str  # path and query, already percent-encoded
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: the status and the whole body."""

    status: int
    body: bytes = field(repr=False)


Exchange = Generator[Request, Answer, T]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the admin listener is: from a base URL such as ``http://127.0.0.1:8081``."""

    scheme: str
    host: str
    port: int
    prefix: str  # path before /admin/v1, without the trailing slash (a reverse proxy's mount point)

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not carry credentials; pass api_key")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or a fragment")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError("base_url has an invalid port") from e
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port or default, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + self.prefix


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the admin API describes it; timestamps are RFC 3339 UTC strings (``...Z``)."""

    id: str
    user_id: str
    ip_address: str | None
    location: str | None
    device: str | None
    login_time: str | None
    last_seen: str | None
    expires_at: str | None
    revoked_at: str | None


class Registration(NamedTuple):
    """What ``register`` returns: the session, and whether this call created it."""

    session: SessionInfo
    created: bool


@dataclass(frozen=True, slots=True)
class _Page:
    sessions: list[SessionInfo]
    next: str | None


class AdminProtocol:
    """The admin API's requests and answers, for one endpoint and API key."""

    def __init__(self, base_url: str, api_key: str) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        if any(not 0x21 <= ord(c) <= 0x7E for c in api_key):
            raise ValueError("api_key must be visible ASCII")  # it goes into a header as it is
        self.endpoint = Endpoint.parse(base_url)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"sidecar-client/{__version__}",
        }

    def __repr__(self) -> str:
        return f"AdminProtocol({self.endpoint.url!r})"

    def _request(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Request:
        headers = dict(self._headers)
        body = None
        if payload is not None:
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        return Request(method, self.endpoint.prefix + path, headers, body)

    # ------------------------------------------------------------------ operations

    def register(
        self,
        token: str,
        ip_address: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
        user_agent: str | None = None,
    ) -> Exchange[Registration]:
        """``POST /admin/v1/sessions``: 201 created, 200 already registered, 409, 422."""
        if not isinstance(token, str) or not token:
            raise BadRequestError("token must be a non-empty string")
        payload: dict[str, Any] = {"token": token}
        if ip_address is not None:
            try:
                payload["ip_address"] = str(ipaddress.ip_address(ip_address))
            except ValueError as e:
                raise BadRequestError("ip_address must be an IP address") from e
        if user_agent is not None:
            if not isinstance(user_agent, str):
                raise BadRequestError("user_agent must be a string")
            payload["user_agent"] = user_agent
        answer = yield self._request("POST", "/admin/v1/sessions", payload)
        if answer.status not in (200, 201):
            raise _error(answer)
        return Registration(_session(_data(answer), answer.status), answer.status == 201)

    def revoke_session(self, session_id: str | uuid.UUID) -> Exchange[bool]:
        """``DELETE /admin/v1/sessions/{id}``: True when revoked (or already), False when unknown."""
        sid = _session_id(session_id)
        answer = yield self._request("DELETE", f"/admin/v1/sessions/{sid}")
        if answer.status == 204:
            return True
        if answer.status == 404 and _message(answer) == _SESSION_NOT_FOUND:
            return False
        raise _error(answer)

    def revoke_user(self, user_id: str | int) -> Exchange[None]:
        """``DELETE /admin/v1/users/{user_id}/sessions``: every session, and every older token."""
        answer = yield self._request("DELETE", f"/admin/v1/users/{_user_path(user_id)}/sessions")
        if answer.status != 204:
            raise _error(answer)

    def list_user_sessions(self, user_id: str | int) -> Exchange[list[SessionInfo]]:
        """``GET /admin/v1/users/{user_id}/sessions``, every page (``next`` cursor, ``?before=``)."""
        path = f"/admin/v1/users/{_user_path(user_id)}/sessions"
        sessions: list[SessionInfo] = []
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            target = path if cursor is None else f"{path}?before={quote(cursor, safe='')}"
            answer = yield self._request("GET", target)
            if answer.status != 200:
                raise _error(answer)
            page = _page(answer)
            sessions.extend(page.sessions)
            if page.next is None:
                return sessions
            if page.next in seen:  # a cursor that does not advance would loop forever
                raise SidecarUnavailableError("The sidecar repeated a pagination cursor", status=answer.status)
            seen.add(page.next)
            cursor = page.next


# ---------------------------------------------------------------------- arguments


def _session_id(value: str | uuid.UUID) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise BadRequestError("Invalid session id: must be a UUID")
    return value.lower()


def _user_path(value: str | int) -> str:
    """The user id as one percent-encoded path segment, checked as the sidecar checks it."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # integer ids are the decimal strings the sidecar keys them by
    if not isinstance(value, str) or not 0 < len(value) <= 255 or any(not 0x21 <= ord(c) <= 0x7E for c in value):
        raise BadRequestError("Invalid user id: must be 1 to 255 visible ASCII characters")
    if value in (".", ".."):
        # Dot segments are removed by URL normalisation on the way, even percent-encoded.
        raise BadRequestError("Invalid user id: '.' and '..' cannot be sent in a path")
    return quote(value, safe="")


# ---------------------------------------------------------------------- answers


def _envelope(answer: Answer) -> dict[str, Any] | None:
    """The JSON envelope, or None for a body that is not one."""
    try:
        body = json.loads(answer.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _message(answer: Answer) -> str | None:
    envelope = _envelope(answer)
    message = envelope.get("message") if envelope is not None else None
    # The sidecar's messages are short fixed strings; anything else is not repeated.
    return message if isinstance(message, str) and len(message) <= 200 else None


def _error(answer: Answer) -> SidecarClientError:
    """The typed error for an answer that is not the operation's success."""
    status = answer.status
    message = _message(answer)
    if status == 401:
        return AdminKeyRefusedError(message, status=status)
    if status == 400:
        return BadRequestError(message, status=status)
    if status == 409:
        return SessionRevokedError(message, status=status)
    if status == 422:
        return TokenRejectedError(message, status=status)
    if status >= 500:
        return SidecarUnavailableError(message, status=status)
    if message is None and 200 <= status < 300:
        return SidecarUnavailableError("Malformed answer from the sidecar", status=status)
    return SidecarClientError(message, status=status)


def _malformed(answer: Answer, what: str) -> SidecarUnavailableError:
    return SidecarUnavailableError(f"Malformed answer from the sidecar: {what}", status=answer.status)


def _data(answer: Answer) -> Any:
    envelope = _envelope(answer)
    if envelope is None or "data" not in envelope:
        raise _malformed(answer, "not the JSON envelope")
    return envelope["data"]


def _page(answer: Answer) -> _Page:
    envelope = _envelope(answer)
    if envelope is None or not isinstance(envelope.get("data"), list):
        raise _malformed(answer, "no list of sessions")
    cursor = envelope.get("next")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise _malformed(answer, "'next' is not a cursor")
    return _Page([_session(item, answer.status) for item in envelope["data"]], cursor)


_OPTIONAL = ("ip_address", "location", "device", "login_time", "last_seen", "expires_at", "revoked_at")


def _session(item: Any, status: int) -> SessionInfo:
    """A session object of the API; extra fields (added by newer sidecars) are ignored."""
    bad = SidecarUnavailableError("Malformed answer from the sidecar: not a session", status=status)
    if not isinstance(item, dict):
        raise bad
    sid, user_id = item.get("id"), item.get("user_id")
    if not isinstance(sid, str) or not isinstance(user_id, str):
        raise bad
    values = {name: item.get(name) for name in _OPTIONAL}
    if any(v is not None and not isinstance(v, str) for v in values.values()):
        raise bad
    return SessionInfo(id=sid, user_id=user_id, **values)
