"""Which address is the client: forwarded headers count only through trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from sidecar.enrich.client_ip import (
    MAX_FORWARDED_ENTRIES,
    UNIX_PEER,
    IPAddress,
    IPNetwork,
    client_ip,
    parse_address,
)

TRUSTED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fd00::/8"),
)
CLIENT = "198.51.100.7"
ATTACKER_CLAIM = "1.1.1.1"
# "1.2.3.4" in Arabic-Indic digits: str.isdigit() says yes, an address it is not.
ARABIC_INDIC_1234 = "\u0661.\u0662.\u0663.\u0664"


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# (peer, X-Forwarded-For header values, X-Real-IP, expected client address or None)
CASES: dict[str, tuple[str | None, list[str], str | None, str | None]] = {
    # The peer is not a proxy we trust: whatever the headers say is ignored.
    "untrusted-peer-alone": ("203.0.113.5", [], None, "203.0.113.5"),
    "untrusted-peer-spoofed-xff": ("203.0.113.5", [ATTACKER_CLAIM], None, "203.0.113.5"),
    "untrusted-peer-spoofed-real-ip": ("203.0.113.5", [], ATTACKER_CLAIM, "203.0.113.5"),
    "untrusted-peer-spoofed-both": (
        "203.0.113.5", [f"{ATTACKER_CLAIM}, 10.0.0.2"], ATTACKER_CLAIM, "203.0.113.5",
    ),
    "untrusted-peer-claims-trusted-hops": ("203.0.113.5", ["10.0.0.1"], "127.0.0.1", "203.0.113.5"),
    "untrusted-ipv6-peer": ("2001:db8::5", [ATTACKER_CLAIM], ATTACKER_CLAIM, "2001:db8::5"),
    "untrusted-mapped-peer-becomes-ipv4": (
        "::ffff:203.0.113.5", [ATTACKER_CLAIM], None, "203.0.113.5",
    ),
    "untrusted-peer-scope-dropped": ("fe80::1%eth0", [ATTACKER_CLAIM], None, "fe80::1"),
    "untrusted-peer-whitespace": (" 203.0.113.5 ", [ATTACKER_CLAIM], None, "203.0.113.5"),
    # Missing or unparseable peer: nothing can be trusted, so there is no answer.
    "no-peer": (None, [CLIENT], CLIENT, None),
    "empty-peer": ("", [CLIENT], CLIENT, None),
    "garbage-peer": ("not-an-ip", [CLIENT], CLIENT, None),
    "unix-socket-peer": ("/run/sidecar.sock", [CLIENT], None, None),
    # Trusted peer, X-Forwarded-For chains walked right to left.
    "trusted-peer-one-entry": ("10.0.0.1", [CLIENT], None, CLIENT),
    "trusted-peer-skips-trusted-hops": (
        "10.0.0.1", [f"{CLIENT}, 10.0.0.3, 10.0.0.2"], None, CLIENT,
    ),
    "client-spoof-left-of-client-ignored": (
        "10.0.0.1", [f"{ATTACKER_CLAIM}, {CLIENT}, 10.0.0.2"], None, CLIENT,
    ),
    "client-spoofs-trusted-address-left": (
        "10.0.0.1", [f"10.0.0.9, {CLIENT}, 10.0.0.2"], None, CLIENT,
    ),
    "all-trusted-leftmost-wins": ("10.0.0.1", ["10.0.0.5, 10.0.0.4"], None, "10.0.0.5"),
    "single-trusted-entry": ("127.0.0.1", ["10.0.0.5"], None, "10.0.0.5"),
    "xff-wins-over-real-ip": ("10.0.0.1", [CLIENT], ATTACKER_CLAIM, CLIENT),
    "loopback-proxy": ("127.0.0.1", [CLIENT], None, CLIENT),
    # Several header lines combine, in order, into one list.
    "many-header-lines": (
        "10.0.0.1", [ATTACKER_CLAIM, f"{CLIENT}, 10.0.0.3", "10.0.0.2"], None, CLIENT,
    ),
    "many-header-lines-client-in-last": ("10.0.0.1", [ATTACKER_CLAIM, CLIENT], None, CLIENT),
    "many-header-lines-all-trusted": ("10.0.0.1", ["10.0.0.9", "10.0.0.8"], None, "10.0.0.9"),
    "header-line-boundary-is-a-separator": ("10.0.0.1", ["10.0.0.9, ", CLIENT], None, CLIENT),
    # Whitespace and empty list elements (RFC 9110 section 5.6.1).
    "spaces-around-entries": ("10.0.0.1", [f"   {CLIENT}   ,10.0.0.2 "], None, CLIENT),
    "tabs-around-entries": ("10.0.0.1", [f"\t{CLIENT}\t,\t10.0.0.2"], None, CLIENT),
    "no-spaces": ("10.0.0.1", [f"{ATTACKER_CLAIM},{CLIENT},10.0.0.2"], None, CLIENT),
    "empty-element-skipped": ("10.0.0.1", [f"{CLIENT}, , 10.0.0.3"], None, CLIENT),
    "leading-trailing-commas": ("10.0.0.1", [f",,{CLIENT},"], None, CLIENT),
    "empty-xff-uses-real-ip": ("10.0.0.1", [""], CLIENT, CLIENT),
    "blank-xff-uses-real-ip": ("10.0.0.1", [" , ,", "  "], CLIENT, CLIENT),
    "empty-xff-no-real-ip-uses-peer": ("10.0.0.1", ["", " "], None, "10.0.0.1"),
    # X-Real-IP only when there is no X-Forwarded-For.
    "real-ip-used": ("10.0.0.1", [], CLIENT, CLIENT),
    "real-ip-whitespace": ("10.0.0.1", [], f"  {CLIENT} ", CLIENT),
    "real-ip-with-port": ("10.0.0.1", [], f"{CLIENT}:4711", CLIENT),
    "real-ip-ipv6": ("10.0.0.1", [], "2001:db8::7", "2001:db8::7"),
    "real-ip-mapped": ("10.0.0.1", [], f"::ffff:{CLIENT}", CLIENT),
    "real-ip-trusted-address-still-used": ("10.0.0.1", [], "10.0.0.7", "10.0.0.7"),
    "real-ip-junk-uses-peer": ("10.0.0.1", [], "unknown", "10.0.0.1"),
    "real-ip-empty-uses-peer": ("10.0.0.1", [], "", "10.0.0.1"),
    "real-ip-list-is-junk": ("10.0.0.1", [], f"{CLIENT}, 10.0.0.2", "10.0.0.1"),
    "no-headers-uses-peer": ("10.0.0.1", [], None, "10.0.0.1"),
    # IPv6 and IPv4-mapped addresses.
    "ipv6-proxy-ipv6-client": ("::1", ["2001:db8::7, fd00::2"], None, "2001:db8::7"),
    "ipv6-proxy-ipv4-client": ("::1", [CLIENT], None, CLIENT),
    "ipv4-proxy-ipv6-client": ("10.0.0.1", ["2001:db8::7"], None, "2001:db8::7"),
    "ipv6-client-bracketed": ("10.0.0.1", ["[2001:db8::7]"], None, "2001:db8::7"),
    "ipv6-client-bracketed-port": ("10.0.0.1", ["[2001:db8::7]:4711"], None, "2001:db8::7"),
    "ipv6-trusted-hop-bracketed-port": ("::1", [f"{CLIENT}, [fd00::2]:80"], None, CLIENT),
    "ipv6-uppercase": ("10.0.0.1", ["2001:DB8::7"], None, "2001:db8::7"),
    "ipv6-client-with-scope": ("10.0.0.1", ["fe80::7%eth0"], None, "fe80::7"),
    "mapped-peer-trusted": ("::ffff:127.0.0.1", [CLIENT], None, CLIENT),
    "mapped-peer-trusted-no-headers": ("::ffff:10.0.0.1", [], None, "10.0.0.1"),
    "mapped-client-becomes-ipv4": ("10.0.0.1", [f"::ffff:{CLIENT}"], None, CLIENT),
    "mapped-trusted-hop-skipped": ("10.0.0.1", [f"{CLIENT}, ::ffff:10.0.0.2"], None, CLIENT),
    "mapped-bracketed-client": ("10.0.0.1", [f"[::ffff:{CLIENT}]:80"], None, CLIENT),
    # Ports on IPv4 entries.
    "ipv4-client-with-port": ("10.0.0.1", [f"{CLIENT}:4711, 10.0.0.2:80"], None, CLIENT),
    "ipv4-trusted-hop-with-port": ("10.0.0.1", [f"{CLIENT}, 10.0.0.2:443"], None, CLIENT),
    # Junk stops the walk: the trusted hop right of it (or the peer) is the answer.
    "junk-rightmost-uses-peer": ("10.0.0.1", [f"{CLIENT}, garbage"], None, "10.0.0.1"),
    "junk-only-uses-peer-not-real-ip": ("10.0.0.1", ["unknown"], CLIENT, "10.0.0.1"),
    "junk-between-trusted-hops": (
        "10.0.0.1", [f"{ATTACKER_CLAIM}, unknown, 10.0.0.3"], None, "10.0.0.3",
    ),
    "obfuscated-identifier": ("10.0.0.1", [f"{CLIENT}, _hidden, 10.0.0.3"], None, "10.0.0.3"),
    "host-name-is-junk": ("10.0.0.1", ["client.example.com, 10.0.0.3"], None, "10.0.0.3"),
    "junk-left-of-client-never-reached": ("10.0.0.1", [f"garbage, {CLIENT}"], None, CLIENT),
    "junk-in-earlier-header-line": (
        "10.0.0.1", ["garbage", "10.0.0.4", "10.0.0.3"], None, "10.0.0.4",
    ),
    "bad-port-is-junk": ("10.0.0.1", [f"{CLIENT}:http, 10.0.0.3"], None, "10.0.0.3"),
    "leading-zero-is-junk": ("10.0.0.1", ["010.0.0.9, 10.0.0.3"], None, "10.0.0.3"),
    "network-is-junk": ("10.0.0.1", [f"{CLIENT}/32, 10.0.0.3"], None, "10.0.0.3"),
    "quoted-is-junk": ("10.0.0.1", [f'"{CLIENT}", 10.0.0.3'], None, "10.0.0.3"),
    "rfc7239-syntax-is-junk": ("10.0.0.1", [f"for={CLIENT}, 10.0.0.3"], None, "10.0.0.3"),
    "non-ascii-digits-are-junk": ("10.0.0.1", [f"{ARABIC_INDIC_1234}, 10.0.0.3"], None, "10.0.0.3"),
    "nul-is-junk": ("10.0.0.1", [f"{CLIENT}\x00, 10.0.0.3"], None, "10.0.0.3"),
}


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "expected"),
    [pytest.param(*case, id=name) for name, case in CASES.items()],
)
def test_client_ip_table(
    peer: str | None, forwarded_for: list[str], real_ip: str | None, expected: str | None
) -> None:
    """The client address follows the trusted-proxy rules in every case of the table."""
    result = client_ip(peer, forwarded_for, real_ip, TRUSTED)
    assert result == (ip(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("forwarded_for", "real_ip", "expected"),
    [
        pytest.param([CLIENT], None, CLIENT, id="forwarded-for"),
        pytest.param([], CLIENT, CLIENT, id="real-ip"),
        pytest.param([f"{ATTACKER_CLAIM}, {CLIENT}"], None, CLIENT, id="rightmost-untrusted-wins"),
        pytest.param([f"{ATTACKER_CLAIM}, {CLIENT}, 10.0.0.3"], None, CLIENT, id="trusted-hops-skipped"),
        pytest.param(["10.0.0.2, 10.0.0.3"], None, "10.0.0.2", id="all-trusted-leftmost"),
        pytest.param([f"{CLIENT}, junk"], None, None, id="junk-beside-the-socket-is-no-address"),
        pytest.param([], None, None, id="no-header-no-address"),
    ],
)
def test_unix_socket_peer_is_a_trusted_proxy(
    forwarded_for: list[str], real_ip: str | None, expected: str | None
) -> None:
    """A connection on the Unix socket counts as a trusted proxy: its forwarded headers are
    believed by the same right-to-left rule, and with none the client has no address."""
    result = client_ip(UNIX_PEER, forwarded_for, real_ip, TRUSTED)
    assert result == (ip(expected) if expected is not None else None)


def test_unix_peer_marker_is_no_address_and_a_tcp_peer_outside_trusted_is_not_believed() -> None:
    """The Unix marker cannot be an address a TCP peer has, and a TCP peer outside
    trusted_proxies is still the client whatever its headers say."""
    assert parse_address(UNIX_PEER) is None
    assert client_ip(UNIX_PEER, [CLIENT], None, ()) == ip(CLIENT)  # with no trusted_proxies too
    assert client_ip("192.0.2.9", [CLIENT], CLIENT, TRUSTED) == ip("192.0.2.9")


def test_no_trusted_networks_ignores_headers() -> None:
    """With no trusted proxies configured, the peer is the client whatever the headers say."""
    assert client_ip("10.0.0.1", [CLIENT], CLIENT, ()) == ip("10.0.0.1")


def test_ipv4_network_does_not_trust_ipv6_peer() -> None:
    """An IPv6 peer is never inside an IPv4 trusted network, so its headers are ignored."""
    trusted = (ipaddress.ip_network("0.0.0.0/0"),)
    assert client_ip("2001:db8::5", [CLIENT], CLIENT, trusted) == ip("2001:db8::5")


def test_mapped_peer_matches_ipv4_network() -> None:
    """An IPv4-mapped peer is matched against IPv4 networks and returned as IPv4."""
    result = client_ip("::ffff:10.1.2.3", [], None, TRUSTED)
    assert result == ip("10.1.2.3")
    assert isinstance(result, ipaddress.IPv4Address)


def test_chain_within_cap_finds_client() -> None:
    """A chain of exactly the cap (client plus trusted hops) still reaches the client."""
    hops = ["10.0.0.2"] * (MAX_FORWARDED_ENTRIES - 1)
    header = ", ".join([ATTACKER_CLAIM, CLIENT, *hops])
    assert client_ip("10.0.0.1", [header], None, TRUSTED) == ip(CLIENT)


def test_entries_beyond_cap_are_ignored() -> None:
    """Past the last 64 entries nothing is read: the leftmost trusted hop examined is the answer."""
    hops = [f"10.0.0.{n % 250 + 2}" for n in range(MAX_FORWARDED_ENTRIES)]
    header = ", ".join([CLIENT, *hops])
    assert client_ip("10.0.0.1", [header], None, TRUSTED) == ip(hops[0])


def test_cap_counts_across_header_lines() -> None:
    """The cap applies to the combined list, however it is split into header lines."""
    lines = [CLIENT] + [f"10.0.0.{n % 250 + 2}" for n in range(MAX_FORWARDED_ENTRIES)]
    assert client_ip("10.0.0.1", lines, None, TRUSTED) == ip(lines[1])


def test_huge_spoofed_header_is_harmless() -> None:
    """Thousands of attacker entries left of the client change nothing."""
    junk = ", ".join(["garbage"] * 5000 + ["10.0.0.9"] * 5000)
    assert client_ip("10.0.0.1", [junk, f"{CLIENT}, 10.0.0.2"], None, TRUSTED) == ip(CLIENT)


def test_many_header_lines_are_harmless() -> None:
    """Thousands of header lines cost no more than the cap and the client is still found."""
    lines = [ATTACKER_CLAIM] * 10_000 + [CLIENT, "10.0.0.2"]
    assert client_ip("10.0.0.1", lines, None, TRUSTED) == ip(CLIENT)


def test_result_has_no_scope_id() -> None:
    """An IPv6 zone identifier is dropped from the result."""
    result = client_ip("fe80::1%eth0", [], None, TRUSTED)
    assert isinstance(result, ipaddress.IPv6Address)
    assert result.scope_id is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("1.2.3.4:65535", "1.2.3.4"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::1", "::1"),
        ("[::1]:80", "::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::ffff:0102:0304", "1.2.3.4"),
        ("fe80::1%eth0", "fe80::1"),
        ("::", "::"),
        ("0.0.0.0", "0.0.0.0"),  # noqa: S104 (parsed, not bound)
    ],
)
def test_parse_address_accepts(text: str, expected: str) -> None:
    """Addresses in the forms proxies write them parse, with ports and brackets removed."""
    assert parse_address(text) == ip(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "unknown",
        "_hidden",
        "_SEVKISEK",
        "localhost",
        "client.example.com",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:http",
        "1.2.3.4:123456",
        "1.2.3.4:-1",
        "1.2.3.4:80:90",
        "1.2.3.4:\u0668\u0660",  # Arabic-Indic "80"
        "1.2.3.4/32",
        "1.2.3.4 5.6.7.8",
        "[1.2.3.4]",
        "[1.2.3.4]:80",
        "[2001:db8::1",
        "2001:db8::1]",
        "[2001:db8::1]80",
        "[2001:db8::1]:",
        "[2001:db8::1]:http",
        "[[2001:db8::1]]",
        "[]",
        "[]:80",
        "2001:db8::1::2",
        "gggg::1",
        '"1.2.3.4"',
        "for=1.2.3.4",
        "1.2.3.4\x00",
        ARABIC_INDIC_1234,
        "1" * 200,
    ],
)
def test_parse_address_rejects(text: str) -> None:
    """Anything but an address, optionally with a port or in brackets, is refused."""
    assert parse_address(text) is None
