"""Facts about a request shown next to its session: client address, device, location.

Framework-free: every function here takes plain strings and ``ipaddress`` objects.
"""

from __future__ import annotations

from sidecar.enrich.client_ip import IPAddress, IPNetwork, client_ip
from sidecar.enrich.device import DeviceParser
from sidecar.enrich.geo import GeoLocator

__all__ = ["DeviceParser", "GeoLocator", "IPAddress", "IPNetwork", "client_ip"]
