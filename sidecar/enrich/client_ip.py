"""Which address is the client: the TCP peer, or what a trusted proxy says it saw.

Forwarded headers are believed only when the peer is one of the configured proxies, and
only as far as a chain of trusted hops vouches for them: ``X-Forwarded-For`` is walked
right to left (each proxy appends the address it received the request from), trusted hops
are skipped, and the first untrusted address is the client. Anything left of an entry we
cannot parse was written by someone we cannot vouch for, so the walk stops there.

A connection on the check listener's Unix domain socket has no address: its peer is
``UNIX_PEER``, which is trusted as a proxy is (only who can open the socket file can
connect), and which no TCP peer can be (``parse_address`` never reads it as an address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is asking: recorded when a session is first registered."""

    ip: IPAddress | None
    user_agent: str | None

# The peer of a connection on a Unix domain socket (never an address: see the module doc).
UNIX_PEER: Final = "unix:"

# Each proxy adds one entry; no real chain is this long, and an attacker can send
# thousands, so entries further left are never looked at.
MAX_FORWARDED_ENTRIES = 64
# Longest sensible entry: a bracketed IPv6 address with an embedded IPv4 part, a zone
# and a port. Anything longer is junk and is refused before it reaches the parser.
_MAX_ENTRY_LENGTH = 100
_MAX_PORT_DIGITS = 5


def client_ip(
    peer: str | None,
    forwarded_for: list[str],
    real_ip: str | None,
    trusted: Sequence[IPNetwork],
) -> IPAddress | None:
    """Return the client's address, or ``None`` when the peer is missing or unparseable.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value as received (each a
    comma-separated list); ``real_ip`` is the ``X-Real-IP`` value. Headers count only when
    the peer is inside ``trusted``, or is ``UNIX_PEER`` (then, with no header, the client
    has no address: ``None``).
    """
    peer_addr: IPAddress | None
    if peer == UNIX_PEER:
        peer_addr = None
    else:
        peer_addr = parse_address(peer) if peer is not None else None
        if peer_addr is None or not _is_trusted(peer_addr, trusted):
            return peer_addr

    nearest_trusted: IPAddress | None = peer_addr
    seen_entry = False
    for entry in _entries_right_to_left(forwarded_for):
        seen_entry = True
        addr = parse_address(entry)
        if addr is None:
            # Never believe anything left of garbage: stop at the trusted hop beside it.
            return nearest_trusted
        if not _is_trusted(addr, trusted):
            return addr
        nearest_trusted = addr
    if seen_entry:
        # Every entry (within the cap) is a trusted proxy: the leftmost is the client.
        return nearest_trusted

    if real_ip is not None and (real := parse_address(real_ip)) is not None:
        return real
    return peer_addr


def parse_address(text: str) -> IPAddress | None:
    """Parse one address as proxies write it, or return ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:80`` with surrounding whitespace. IPv4-mapped IPv6 addresses become
    IPv4 and IPv6 zone identifiers are dropped. Anything else (``unknown``, RFC 7239
    obfuscated identifiers, host names) is refused.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ENTRY_LENGTH:
        return None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or ":" not in host or (port and not (port[:1] == ":" and _is_port(port[1:]))):
            return None  # brackets hold IPv6 only, and may be followed by a port alone
        return _ip(host)
    addr = _ip(text)
    if addr is None and text.count(":") == 1:
        host, _, port = text.partition(":")
        if _is_port(port) and isinstance(v4 := _ip(host), ipaddress.IPv4Address):
            return v4
        return None
    return addr


def _ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return ipaddress.IPv6Address(addr.packed)
    return addr


def _is_port(text: str) -> bool:
    return 0 < len(text) <= _MAX_PORT_DIGITS and text.isascii() and text.isdigit()


def _is_trusted(addr: IPAddress, trusted: Iterable[IPNetwork]) -> bool:
    # An IPv4 address is never inside an IPv6 network (and vice versa): `in` is False.
    return any(addr in network for network in trusted)


def _entries_right_to_left(values: list[str]) -> Iterator[str]:
    """Yield the last ``MAX_FORWARDED_ENTRIES`` list entries, rightmost first.

    Header lines combine in order into one list (RFC 9110 section 5.3). Empty elements
    are skipped, as RFC 9110 section 5.6.1 asks of list recipients, but still count
    towards the cap. Only the tail of each value is split, so a huge header costs
    no more than a short one.
    """
    budget = MAX_FORWARDED_ENTRIES
    for value in reversed(values):
        parts = value.rsplit(",", budget)
        if len(parts) > budget:
            parts = parts[1:]  # the unsplit head lies beyond the cap
        for part in reversed(parts):
            budget -= 1
            if part.strip():
                yield part
            if budget == 0:
                return
