"""Keys from a JWKS URL: fetched, cached, selected by ``kid``, refreshed with a cool-down.

The HTTP fetch is injected (``Fetch``) so this module stays free of any HTTP library;
``sidecar.web.outbound`` supplies the aiohttp one (no redirects, bounded size and time).
Only the configured URL is ever fetched: ``jku``/``x5u`` headers are ignored (RFC 8725
section 3.10, SECURITY_CASES A5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.clock import Clock
from sidecar.errors import KeysUnavailableError
from sidecar.tokens.keys import VerificationKey, keys_from_jwks

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[bytes]]


def _identity(key: VerificationKey) -> tuple[str | None, str, bytes]:
    # The key material counts, not just its name: a key replaced under the same kid (or
    # without a kid) is a withdrawal too.
    material = key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return key.kid, key.algorithm, material


class JwksKeys:
    def __init__(
        self,
        url: str,
        fetch: Fetch,
        algorithms: Sequence[str],
        clock: Clock,
        *,
        cache_seconds: float,
        refresh_cooldown_seconds: float,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._algorithms = tuple(algorithms)
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cooldown = refresh_cooldown_seconds
        self._keys: list[VerificationKey] = []
        self._loaded_at: float | None = None  # monotonic time of the last good fetch
        self._attempted_at: float | None = None  # monotonic time of the last attempt
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        # Bumped whenever a key disappears, so caches of verified claims can be dropped.
        self.generation = 0

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    async def refresh(self) -> None:
        """Fetch the document now (one fetch at a time); keep the old keys on failure."""
        async with self._lock:
            self._attempted_at = self._clock.monotonic()
            try:
                body = await self._fetch(self.url)
                document = json.loads(body)
                keys, problems = keys_from_jwks(document, self._algorithms)
            except KeysUnavailableError:
                raise
            except (ValueError, RecursionError) as e:
                raise KeysUnavailableError(f"JWKS at {self.url} is not a usable document: {e}") from e
            for p in problems:
                log.warning("jwks: skipped a key: %s", p)
            old = {_identity(k) for k in self._keys}
            new = {_identity(k) for k in keys}
            if old - new:
                self.generation += 1
            self._keys = keys
            self._loaded_at = self._clock.monotonic()
            log.info("jwks: loaded %d key(s) from %s", len(keys), self.url)

    def _match(self, algorithm: str, kid: str | None) -> list[VerificationKey]:
        keys = [k for k in self._keys if k.algorithm == algorithm]
        if kid is not None:
            return [k for k in keys if k.kid == kid]
        # Without a kid, a lone key for the algorithm is unambiguous; several are tried.
        return keys

    def _cooled_down(self) -> bool:
        return self._attempted_at is None or self._clock.monotonic() - self._attempted_at >= self._cooldown

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except KeysUnavailableError as e:
            log.warning("jwks: refresh failed: %s", e)

    def refresh_if_stale(self) -> None:
        """Start a background refresh when the keys are older than the cache lifetime.

        Also called for tokens served from the verifier's cache, so a withdrawn key is
        noticed even when no uncached token arrives.
        """
        now = self._clock.monotonic()
        stale = self._loaded_at is not None and now - self._loaded_at >= self._cache_seconds
        idle = self._background is None or self._background.done()
        if stale and idle and self._cooled_down():
            # Stale but usable: refresh in the background, serve what we have.
            self._attempted_at = now
            self._background = asyncio.get_running_loop().create_task(self._refresh_quietly())

    async def keys_for(self, algorithm: str, kid: str | None) -> list[VerificationKey]:
        """Keys that may verify a token with this ``alg``/``kid``.

        An unknown ``kid`` triggers at most one fetch per cool-down (SECURITY_CASES A4), so a
        flood of random kids cannot turn the sidecar into a JWKS hammer.
        """
        if self._loaded_at is None:
            if self._cooled_down():
                await self._refresh_quietly()
        else:
            self.refresh_if_stale()
        found = self._match(algorithm, kid)
        if not found and kid is not None and self._cooled_down():
            await self._refresh_quietly()
            found = self._match(algorithm, kid)
        return found

    async def close(self) -> None:
        if self._background is not None and not self._background.done():
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
