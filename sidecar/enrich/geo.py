"""Where an address is, as a short label: "London, United Kingdom", "Japan", "Unknown".

Reads a MaxMind City or Country database (GeoIP2 or GeoLite2) with ``geoip2``, which uses
the ``maxminddb`` C extension when it is available. A lookup never raises: a missing
entry, a missing database or corrupt data all read "Unknown", because the location is a
courtesy shown next to a session, never a reason to fail a request.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Callable
from pathlib import Path

import geoip2.database
import geoip2.models
import maxminddb

from sidecar.enrich.client_ip import IPAddress
from sidecar.events.models import NOWHERE, Place

UNKNOWN_LOCATION = "Unknown"
PRIVATE_NETWORK = "Private network"
MAX_LOCATION_LENGTH = 100

_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs"})

_Lookup = Callable[[IPAddress], geoip2.models.Country]


class GeoLocator:
    """Locate addresses in an optional MaxMind database; close it on shutdown."""

    def __init__(self, database: Path | None) -> None:
        """Open ``database``; raise ``ValueError`` if it is not a City or Country MaxMind DB."""
        self._reader: geoip2.database.Reader | None = None
        self._lookup: _Lookup | None = None
        if database is None:
            return
        try:
            reader = geoip2.database.Reader(database, locales=["en"])
        except (maxminddb.InvalidDatabaseError, OSError, ValueError) as e:
            raise ValueError(
                f"{database} is not a readable MaxMind DB (GeoIP2/GeoLite2 City or Country): {e}"
            ) from e
        database_type = reader.metadata().database_type
        lookup: _Lookup
        # geoip2 itself matches the database type by substring: "GeoLite2-City" is a City.
        if "City" in database_type:
            lookup = reader.city
        elif "Enterprise" in database_type:
            lookup = reader.enterprise
        elif "Country" in database_type:
            lookup = reader.country
        else:
            reader.close()
            raise ValueError(
                f"{database} is a {database_type} database; a City or Country database is needed"
            )
        self._reader = reader
        self._lookup = lookup

    def locate(self, ip: IPAddress | None) -> str:
        """Return "City, Country", "Country", "Private network" or "Unknown"; never raises."""
        if ip is None:
            return UNKNOWN_LOCATION
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            return PRIVATE_NETWORK
        if self._lookup is None:
            return UNKNOWN_LOCATION
        try:
            record = self._lookup(ip)
        except Exception:  # not found, corrupt data, closed reader: all just "Unknown"
            return UNKNOWN_LOCATION
        city = record.city.name if isinstance(record, geoip2.models.City) else None
        country = record.country.name
        return _label(city, country)

    def place(self, ip: IPAddress | None) -> Place:
        """The country code and coordinates of a public address, as far as the database
        knows (what the login flags compare); ``NOWHERE`` otherwise. Never raises."""
        if ip is None or self._lookup is None:
            return NOWHERE
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            return NOWHERE
        try:
            record = self._lookup(ip)
        except Exception:  # not found, corrupt data, closed reader
            return NOWHERE
        country = record.country.iso_code
        lat = lon = None
        if isinstance(record, geoip2.models.City):
            lat, lon = record.location.latitude, record.location.longitude
        return Place(country if isinstance(country, str) else None, lat, lon)

    def close(self) -> None:
        """Close the database; later lookups answer "Unknown". Safe to call twice."""
        reader, self._reader, self._lookup = self._reader, None, None
        if reader is not None:
            reader.close()


def _label(city: str | None, country: str | None) -> str:
    city = _clean(city or "")
    country = _clean(country or "")
    text = f"{city}, {country}" if city and country else country or city
    return text[:MAX_LOCATION_LENGTH].strip() or UNKNOWN_LOCATION


def _clean(text: str) -> str:
    """Drop control, format (bidi overrides) and surrogate characters."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in _UNPRINTABLE).strip()
