"""Outbound HTTP (the JWKS fetch), on aiohttp, with the limits a security fetch needs."""

from __future__ import annotations

import aiohttp

from sidecar.errors import KeysUnavailableError
from sidecar.tokens.jwks import Fetch

MAX_JWKS_BYTES = 1024 * 1024


def jwks_fetcher(session: aiohttp.ClientSession, timeout_seconds: float = 5.0) -> Fetch:
    """A ``Fetch`` that follows no redirects, reads at most 1 MiB and gives up in time."""

    async def fetch(url: str) -> bytes:
        try:
            async with session.get(
                url,
                allow_redirects=False,  # SECURITY_CASES A5: keys only from the configured URL
                timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise KeysUnavailableError(f"JWKS {url} answered HTTP {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise KeysUnavailableError(f"JWKS {url} is larger than {MAX_JWKS_BYTES} bytes")
                return body
        except (TimeoutError, aiohttp.ClientError) as e:
            raise KeysUnavailableError(f"JWKS {url} unreachable: {e!r}") from e

    return fetch
