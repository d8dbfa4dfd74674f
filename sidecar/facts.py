"""What a request says, as plain facts: method, target, headers, the TCP peer.

The check core (``sidecar.check``) decides on these and nothing else, so that each way in
(the aiohttp listener, the httptools check listener) only has to say what it received:
aiohttp's ``CIMultiDictProxy`` is a ``Headers`` as it is, the check listener collects its
headers in a ``HeaderLists``. The client's address and device are worked out from the
facts only when a session is registered (``client_info``), never on a known token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.enrich.client_ip import ClientInfo, IPNetwork, client_ip


class Headers(Protocol):
    """Every value of a header by its lower-case name, and the first one."""

    def getall(self, key: str, default: list[str], /) -> list[str]: ...

    def get(self, key: str, /) -> str | None: ...


class HeaderLists:
    """Headers as received: lower-case name -> every value, in order."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {}

    def add(self, name: str, value: str) -> None:
        found = self.values.get(name)
        if found is None:
            self.values[name] = [value]
        else:
            found.append(value)

    def getall(self, key: str, default: list[str], /) -> list[str]:
        return self.values.get(key, default)

    def get(self, key: str, /) -> str | None:
        found = self.values.get(key)
        return found[0] if found else None


class RequestFacts:
    """One request to be checked. ``target`` is the request target exactly as sent."""

    __slots__ = ("authorization", "headers", "method", "peer", "target")

    def __init__(
        self, method: str, target: str, headers: Headers, peer: str | None, authorization: bytes | None = None
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.peer = peer
        # The one Authorization header exactly as received, when a way in has it as bytes
        # (the check listener); None: read ``headers``.
        self.authorization = authorization

    def client_info(self, trusted_proxies: Sequence[IPNetwork]) -> ClientInfo:
        """Who is asking: the client address (forwarded headers believed only from a
        trusted proxy) and the User-Agent."""
        headers = self.headers
        ip = client_ip(self.peer, headers.getall("x-forwarded-for", []), headers.get("x-real-ip"), trusted_proxies)
        return ClientInfo(ip=ip, user_agent=headers.get("user-agent"))

    def describe(self) -> str:
        """Which request a deny was about, for the log: the gateway's X-Original-* when sent.

        Values are client-controlled, so they are cut short and logged with repr().
        """
        method = (self.headers.get("x-original-method") or self.method)[:16]
        uri = (self.headers.get("x-original-uri") or self.target)[:200]
        return f"{method!r} {uri!r} from {self.peer!r}"
