"""Fuzz target ``client_ip``: ``client_ip`` and ``parse_address`` on hostile peers and forwarding headers.

Contract: both return an address or None and never raise; the result never carries an
IPv6 zone and is never an IPv4-mapped IPv6 address; with no peer or an unparseable one
the result is None; with an untrusted peer it is the peer; otherwise it is the peer or an
address that literally occurs in ``X-Forwarded-For`` / ``X-Real-IP`` once zone id,
brackets and port are stripped. ``UNIX_PEER`` (a connection on the check listener's Unix
socket: no address, trusted as a proxy) gives None or an address from those headers. ``parse_address`` likewise returns only what literally
occurs in its text.
"""

from __future__ import annotations

import ipaddress

import atheris

with atheris.instrument_imports(include=["sidecar", "ipaddress"]):
    from sidecar.enrich.client_ip import UNIX_PEER, IPAddress, client_ip, parse_address

from tests.fuzz.common import fuzz, text

TRUSTED = (
    ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"),
)
ADDRESSES = [
    "127.0.0.1", "10.1.2.3", "203.0.113.7", "::1", "fd00::5", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:443",
    "203.0.113.7:8080", "fe80::1%eth0", "[fe80::1%25eth0]:80", "::ffff:203.0.113.7", "::ffff:10.0.0.1",
    "[::ffff:127.0.0.1]", "unknown", "_hidden", "", " ", "1.2.3", "01.2.3.4", "1.2.3.4:", "1.2.3.4:99999",
    "[1.2.3.4]", "2001:db8::1:80", UNIX_PEER, "::", "0.0.0.0", "::ffff:0:0",  # noqa: S104  # an address as data, not a bind "[::1]x", "[::1]:0x1", "\uff11.\uff12.\uff13.\uff14",
]


def addresses_in(value: str) -> set[IPAddress]:
    """Every address that literally occurs in a comma-separated header value, read loosely:
    each element, trimmed, with brackets, a port and a zone id taken off where present."""
    found: set[IPAddress] = set()
    for element in value.split(","):
        candidates = {element.strip()}
        for c in list(candidates):
            if c.startswith("[") and "]" in c:
                candidates.add(c[1 : c.index("]")])
            if c.count(":") == 1:
                candidates.add(c.split(":")[0])
        for c in list(candidates):
            if "%" in c:
                candidates.add(c.split("%")[0])
        for c in candidates:
            try:
                addr = ipaddress.ip_address(c)
            except ValueError:
                continue
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                found.add(addr.ipv4_mapped)
            found.add(addr)
    return found


def well_formed(addr: IPAddress | None) -> None:
    assert addr is None or isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address), repr(addr)
    if isinstance(addr, ipaddress.IPv6Address):
        assert addr.scope_id is None, f"zone kept: {addr!r}"
        assert addr.ipv4_mapped is None, f"IPv4-mapped address not unwrapped: {addr!r}"


def header(fdp: atheris.FuzzedDataProvider) -> str:
    entries = [text(fdp, 24, ADDRESSES) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    separators = [fdp.PickValueInList([",", ", ", " ,", ",,", ", \t"]) for _ in entries]
    return "".join(e + s for e, s in zip(entries, separators, strict=True)).rstrip(",")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    peer = None if fdp.ConsumeIntInRange(0, 9) == 0 else text(fdp, 30, ADDRESSES)
    forwarded = [header(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if fdp.ConsumeIntInRange(0, 9) == 0:
        forwarded.append(",".join(["10.0.0.1"] * fdp.ConsumeIntInRange(60, 70)))  # around the entry cap
    real_ip = text(fdp, 30, ADDRESSES) if fdp.ConsumeBool() else None

    for value in [peer or "", real_ip or "", *forwarded]:
        parsed = parse_address(value)
        well_formed(parsed)
        assert parsed is None or parsed in addresses_in(value), f"parse_address({value!r}) = {parsed!r}"

    result = client_ip(peer, forwarded, real_ip, TRUSTED)
    well_formed(result)
    from_headers: set[IPAddress] = set()
    for value in [*forwarded, real_ip or ""]:
        from_headers |= addresses_in(value)
    if peer == UNIX_PEER:
        assert result is None or result in from_headers, f"Unix-socket peer, yet {result!r} is not in the headers"
        return
    peer_addr = parse_address(peer) if peer is not None else None
    if peer_addr is None:
        assert result is None, f"no usable peer ({peer!r}), yet {result!r}"
        return
    if not any(peer_addr in n for n in TRUSTED):
        assert result == peer_addr, f"untrusted peer {peer!r}, yet {result!r} from the headers"
        return
    assert result in from_headers | {peer_addr}, f"{result!r} is neither the peer nor in the headers {forwarded!r} / {real_ip!r}"


if __name__ == "__main__":
    fuzz(test_one_input)
