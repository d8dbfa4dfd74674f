"""The small exception tree every layer speaks.

Library errors (PyJWT, sqlite3, asyncpg, aiohttp client) are converted into these at
the edge of the module that calls the library, with ``raise ... from e``. The web layer
maps them to HTTP in one place (``sidecar.web.envelope.error_middleware``).
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SidecarError):
    """The configuration cannot be used; the message names the key."""

    def __init__(self, message: str) -> None:
        # One line, whatever a key name or a path in it holds ("a\nb" is a valid TOML
        # key): line breaks are shown escaped, as \n, \x0c, \u2028.
        super().__init__("".join(_escaped(ch) if len(f"{ch}x".splitlines()) > 1 else ch for ch in message))


def _escaped(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


class InvalidTokenError(SidecarError):
    """A token was refused. ``reason`` is a short machine code for logs and metrics.

    The reason is never sent to the client: a deny says nothing about why.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SessionRejectedError(InvalidTokenError):
    """The token verified, but its session is not active (revoked, unknown, cut off)."""


class StoreUnavailableError(SidecarError):
    """The session store could not answer (down, locked past the timeout, I/O error).

    On the check path this denies; on a write path it is a 503, never a success.
    """


class KeysUnavailableError(SidecarError):
    """No verification key could be obtained (JWKS endpoint unreachable, bad document)."""
