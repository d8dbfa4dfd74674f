"""Fuzz target ``device_geo``: ``DeviceParser.describe`` and ``GeoLocator.locate`` on hostile input.

Contract: both always answer a string (never raise), of 1 to 100 characters, without
control, format, surrogate or line-separator characters and without surrounding
whitespace; the same input always gets the same answer (the User-Agent cache changes
nothing). User-Agents are fuzz text (lone surrogates, bidi overrides, huge strings) or
real ones with fuzz spliced in; addresses are IPv4, IPv6 (zones, IPv4-mapped) and the
networks of the MaxMind test database with fuzzed host bits.
"""

from __future__ import annotations

import ipaddress

import atheris
import maxminddb

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.enrich.client_ip import IPAddress
    from sidecar.enrich.device import DeviceParser
    from sidecar.enrich.geo import GeoLocator

from tests.conftest import GEOIP_DIR
from tests.fuzz.common import fuzz, text, unprintable

DATABASE = GEOIP_DIR / "GeoIP2-City-Test.mmdb"
with maxminddb.open_database(str(DATABASE)) as _reader:
    NETWORKS = [network for network, _ in _reader]
LOCATOR = GeoLocator(DATABASE)
NO_DATABASE = GeoLocator(None)
PARSER = DeviceParser(cache_size=256)
UNCACHED = DeviceParser(cache_size=0)
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0", "okhttp/4.12.0", "python-requests/2.32.3", "Dalvik/2.1.0 (Linux; U; Android 14)",
    "MyApp/1.0 CFNetwork/1494.0.7 Darwin/23.4.0", "\u202eevil\u202c/1.0 CFNetwork/1 Darwin/1", "Mozilla/5.0",
]


def checked(answer: object, what: str) -> str:
    assert isinstance(answer, str), f"{what}: {answer!r} is not a string"
    assert 1 <= len(answer) <= 100, f"{what}: {len(answer)} characters: {answer!r:.300}"
    assert not unprintable(answer), f"{what}: unprintable {unprintable(answer)!r} in {answer!r}"
    assert answer == answer.strip(), f"{what}: surrounding whitespace in {answer!r}"
    return answer


def user_agent(fdp: atheris.FuzzedDataProvider) -> str:
    how = fdp.ConsumeIntInRange(0, 3)
    if how == 0:
        return text(fdp, 2000)
    base = str(fdp.PickValueInList(USER_AGENTS))
    at = fdp.ConsumeIntInRange(0, len(base))
    if how == 1:
        return base[:at] + fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 60)) + base[at:]
    if how == 2:  # a family or OS name made of what the fuzzer chooses
        return f"{fdp.ConsumeUnicode(40)}/1.0 CFNetwork/1494.0.7 Darwin/{fdp.ConsumeUnicode(8)}"
    return base * fdp.ConsumeIntInRange(1, 8)


def address(fdp: atheris.FuzzedDataProvider) -> IPAddress | None:
    how = fdp.ConsumeIntInRange(0, 5)
    if how == 0:
        return None
    if how == 1:
        return ipaddress.IPv4Address(fdp.ConsumeIntInRange(0, 2**32 - 1))
    if how == 2:
        return ipaddress.IPv6Address(fdp.ConsumeIntInRange(0, 2**128 - 1))
    network = fdp.PickValueInList(NETWORKS)
    host = network[fdp.ConsumeIntInRange(0, min(network.num_addresses, 2**62) - 1)]
    if how == 4 and isinstance(host, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{host}")
    if how == 5 and isinstance(host, ipaddress.IPv6Address):
        return ipaddress.IPv6Address(f"{host}%{fdp.ConsumeUnicode(6) or 'eth0'}".replace("/", ""))
    return host


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ua = user_agent(fdp) if fdp.ConsumeIntInRange(0, 20) else None
    described = checked(PARSER.describe(ua), f"describe({ua!r:.200})")
    assert PARSER.describe(ua) == described == checked(UNCACHED.describe(ua), "uncached"), ua
    try:
        ip = address(fdp)
    except ValueError:  # a fuzzed zone id ipaddress itself refuses
        return
    located = checked(LOCATOR.locate(ip), f"locate({ip!r})")
    assert LOCATOR.locate(ip) == located
    checked(NO_DATABASE.locate(ip), f"locate({ip!r}) without a database")


if __name__ == "__main__":
    fuzz(test_one_input)
