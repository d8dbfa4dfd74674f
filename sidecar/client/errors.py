"""What the admin client raises: one small tree, each error with the HTTP status and the server's message.

Messages are the sidecar's own fixed strings or the client's; never a token, an API key or
a request body, so an error can be logged as it is.
"""

from __future__ import annotations


class SidecarClientError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status of the answer (``None`` when there was no answer);
    ``message`` is the server's ``message`` field, or the client's description.
    """

    default_message = "Unexpected answer from the sidecar"

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        self.message = message or self.default_message
        self.status = status
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(message={self.message!r}, status={self.status!r})"


class SidecarUnavailableError(SidecarClientError):
    """No usable answer: connection refused, timeout, a 5xx, or an answer that is not the API's JSON."""

    default_message = "The sidecar admin listener is unavailable"


class AdminKeyRefusedError(SidecarClientError):
    """401: the sidecar refused the admin API key (wrong key, or not in ``admin.api_keys``)."""

    default_message = "The sidecar refused the admin API key"

    def __str__(self) -> str:
        return f"The sidecar refused the admin API key (HTTP {self.status}): {self.message}"


class BadRequestError(SidecarClientError):
    """400: a malformed argument (bad session id, user id, IP address, body), found locally or by the sidecar."""

    default_message = "Bad request"


class TokenRejectedError(SidecarClientError):
    """422: the token given to ``register`` is not valid (signature, expiry, claims, token type);
    401 from the gateway check (the middlewares): no valid token of an active session."""

    default_message = "Token is not valid"


class SessionRevokedError(SidecarClientError):
    """409: the token's session is revoked, or the token was issued before the user's cut-off."""

    default_message = "Session is revoked"
