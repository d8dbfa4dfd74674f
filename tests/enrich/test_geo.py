"""Location labels from the real MaxMind test databases."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.enrich.client_ip import IPAddress
from sidecar.enrich.geo import (
    MAX_LOCATION_LENGTH,
    PRIVATE_NETWORK,
    UNKNOWN_LOCATION,
    GeoLocator,
    _label,
)


def geoip_dir() -> Path:
    """The shared MaxMind test databases, which live beside the repository, not in it."""
    folder = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "geoip"
    if not folder.is_dir():
        pytest.fail(f"MaxMind test databases not found: expected the folder {folder}")
    return folder


def database(name: str) -> Path:
    path = geoip_dir() / name
    if not path.is_file():
        pytest.fail(f"MaxMind test database missing: {path}")
    return path


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.fixture
def locator(request: pytest.FixtureRequest) -> Iterator[GeoLocator]:
    geo = GeoLocator(database(request.param))
    yield geo
    geo.close()


CITY_DATABASES = ["GeoIP2-City-Test.mmdb", "GeoLite2-City-Test.mmdb"]
PRIVATE_ADDRESSES = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.1.1",
    "0.0.0.0",  # noqa: S104 (an address to locate, not one to bind)
    "::1",
    "::",
    "fe80::1",
    "fd00::1",
    "fc00::1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
]


@pytest.mark.parametrize("locator", CITY_DATABASES, indirect=True)
@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("81.2.69.142", "London, United Kingdom"),
        ("81.2.69.160", "London, United Kingdom"),
        ("2.125.160.216", "Boxford, United Kingdom"),
        ("89.160.20.112", "Linköping, Sweden"),
        ("216.160.83.56", "Milton, United States"),
        ("175.16.199.0", "Changchun, China"),
        ("2001:218::", "Japan"),
        ("67.43.156.0", "Bhutan"),
        ("202.196.224.0", "Philippines"),
        ("2a02:d300::", "Ukraine"),
        ("::ffff:81.2.69.142", "London, United Kingdom"),
        ("2002:5102:458e::", "London, United Kingdom"),
    ],
)
def test_city_database(locator: GeoLocator, address: str, expected: str) -> None:
    """A City database gives "City, Country", or "Country" where it has no city."""
    assert locator.locate(ip(address)) == expected


@pytest.mark.parametrize(
    ("locator", "address", "expected"),
    [
        ("GeoIP2-City-Test.mmdb", "2001:480::", UNKNOWN_LOCATION),
        ("GeoLite2-City-Test.mmdb", "2001:480::", "San Diego, United States"),
    ],
    indirect=["locator"],
)
def test_city_databases_differ(locator: GeoLocator, address: str, expected: str) -> None:
    """Each City database answers from its own data, including what only one of them has."""
    assert locator.locate(ip(address)) == expected


@pytest.mark.parametrize("locator", ["GeoLite2-Country-Test.mmdb"], indirect=True)
@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("81.2.69.142", "United Kingdom"),
        ("2.125.160.216", "United Kingdom"),
        ("89.160.20.112", "Sweden"),
        ("216.160.83.56", "United States"),
        ("2001:218::", "Japan"),
        ("2001:480::", "United States"),
        ("67.43.156.0", "Bhutan"),
        ("175.16.199.0", UNKNOWN_LOCATION),
    ],
)
def test_country_database(locator: GeoLocator, address: str, expected: str) -> None:
    """A Country database gives the country alone."""
    assert locator.locate(ip(address)) == expected


@pytest.mark.parametrize(
    "locator",
    [*CITY_DATABASES, "GeoLite2-Country-Test.mmdb"],
    indirect=True,
)
@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"])
def test_address_not_in_database_is_unknown(locator: GeoLocator, address: str) -> None:
    """A public address the database does not hold reads "Unknown"."""
    assert locator.locate(ip(address)) == UNKNOWN_LOCATION


@pytest.mark.parametrize("locator", ["GeoIP2-City-Test.mmdb"], indirect=True)
@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_private_addresses_with_database(locator: GeoLocator, address: str) -> None:
    """Private, loopback, link-local, unique-local and unspecified addresses are never looked up."""
    assert locator.locate(ip(address)) == PRIVATE_NETWORK


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_private_addresses_without_database(address: str) -> None:
    """Private addresses read "Private network" even when no database is configured."""
    assert GeoLocator(None).locate(ip(address)) == PRIVATE_NETWORK


@pytest.mark.parametrize("address", ["81.2.69.142", "2001:218::", "8.8.8.8"])
def test_no_database_is_unknown(address: str) -> None:
    """Without a database every public address reads "Unknown"."""
    assert GeoLocator(None).locate(ip(address)) == UNKNOWN_LOCATION


@pytest.mark.parametrize("locator", ["GeoIP2-City-Test.mmdb"], indirect=True)
def test_none_is_unknown(locator: GeoLocator) -> None:
    """A missing address reads "Unknown"."""
    assert locator.locate(None) == UNKNOWN_LOCATION


@pytest.mark.parametrize("locator", ["GeoIP2-City-Test-Broken-Double-Format.mmdb"], indirect=True)
@pytest.mark.parametrize("address", ["81.2.69.142", "2001:218::", "1.1.1.1"])
def test_corrupt_data_is_unknown(locator: GeoLocator, address: str) -> None:
    """A database whose records are corrupt answers "Unknown" instead of raising."""
    assert locator.locate(ip(address)) == UNKNOWN_LOCATION


def test_closed_locator_is_unknown() -> None:
    """After close, lookups read "Unknown" and closing again is harmless."""
    geo = GeoLocator(database("GeoIP2-City-Test.mmdb"))
    assert geo.locate(ip("81.2.69.142")) == "London, United Kingdom"
    geo.close()
    geo.close()
    assert geo.locate(ip("81.2.69.142")) == UNKNOWN_LOCATION
    assert geo.locate(ip("10.0.0.1")) == PRIVATE_NETWORK


def test_close_without_database() -> None:
    """Closing a locator that has no database does nothing."""
    GeoLocator(None).close()


@pytest.mark.parametrize(
    "content",
    [b"", b"not a maxmind database\n", b"\xab\xcd\xefMaxMind.com" + b"\x00" * 64],
    ids=["empty", "text", "truncated-metadata"],
)
def test_non_mmdb_file_is_refused(tmp_path: Path, content: bytes) -> None:
    """A file that is not a MaxMind DB raises ValueError naming the file."""
    path = tmp_path / "GeoLite2-City.mmdb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable MaxMind DB") as excinfo:
        GeoLocator(path)
    assert str(path) in str(excinfo.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A path that does not exist raises ValueError naming the file."""
    path = tmp_path / "absent.mmdb"
    with pytest.raises(ValueError, match=r"absent\.mmdb"):
        GeoLocator(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    """A directory instead of a database file raises ValueError."""
    with pytest.raises(ValueError, match="not a readable MaxMind DB"):
        GeoLocator(tmp_path)


@pytest.mark.parametrize(
    ("city", "country", "expected"),
    [
        ("London", "United Kingdom", "London, United Kingdom"),
        (None, "Japan", "Japan"),
        ("Nowhere", None, "Nowhere"),
        (None, None, UNKNOWN_LOCATION),
        ("", "", UNKNOWN_LOCATION),
        ("Lon\x1bdon", "United\u202e Kingdom\x00", "London, United Kingdom"),
        ("\x00\x07", "\u200b", UNKNOWN_LOCATION),
    ],
)
def test_label(city: str | None, country: str | None, expected: str) -> None:
    """Names are joined as "City, Country" with control and format characters removed."""
    assert _label(city, country) == expected


def test_label_is_capped() -> None:
    """A label never exceeds 100 characters, however long the names in the database."""
    label = _label("C" * 80, "D" * 80)
    assert len(label) <= MAX_LOCATION_LENGTH
    assert label.startswith("C" * 80 + ", D")


@pytest.mark.parametrize("locator", ["GeoIP2-City-Test.mmdb"], indirect=True)
def test_place_gives_country_and_coordinates_from_a_city_database(locator: GeoLocator) -> None:
    """A City database gives the ISO country and the coordinates the travel flag needs."""
    place = locator.place(ipaddress.ip_address("81.2.69.142"))
    assert place.country == "GB" and place.has_coordinates
    assert locator.place(ipaddress.ip_address("::ffff:81.2.69.142")) == place


@pytest.mark.parametrize("locator", ["GeoLite2-Country-Test.mmdb"], indirect=True)
def test_place_from_a_country_database_has_no_coordinates(locator: GeoLocator) -> None:
    """A Country database gives the country only: no travel can be judged from it."""
    place = locator.place(ipaddress.ip_address("81.2.69.142"))
    assert place.country == "GB" and not place.has_coordinates


@pytest.mark.parametrize("locator", ["GeoIP2-City-Test.mmdb"], indirect=True)
@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "8.8.8.8"])
def test_place_of_a_private_or_unknown_address_is_nowhere(locator: GeoLocator, address: str) -> None:
    """Private, loopback and unlisted addresses have no place; neither does a missing address."""
    from sidecar.events.models import NOWHERE

    assert locator.place(ipaddress.ip_address(address)) == NOWHERE
    assert locator.place(None) == NOWHERE
