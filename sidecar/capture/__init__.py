"""Capture routes: learn tokens as the auth service issues them, with no change to it.

The gateway sends the auth service's login, refresh and logout endpoints to the sidecar
(``[[capture]]`` entries), which forwards each request and returns the answer unchanged
(``sidecar.web.capture`` does the HTTP). On the way it learns the tokens:

- **login**: a 2xx answer's access token registers its session at once (real login time,
  device, address), and the refresh token is bound to that session;
- **refresh**: the presented refresh token's session is looked up first: revoked (or cut
  off) -> 401 without asking the auth service; otherwise the new tokens of a 2xx answer are
  bound to the **same** session, so revoking a device survives its refreshes even when the
  tokens carry no session id;
- **logout**: on a 2xx answer the session of the presented token is revoked.

A bound token maps to its session by the key the check computes for it (``sid``, ``jti`` or
the claims digest), stored in the session store (``SessionStore.bind``), so the binding
survives restarts and reaches every replica. Refresh tokens are never verified here (the
auth service does that); they are keyed by their session claim when they carry one, else by
a digest of their decoded header and payload (so a re-encoded or re-signed copy is the same
key), else, when they are not JWTs at all, by a digest of their text.

This module is framework-free: it parses token places and cookies and decides; the web
layer forwards.
"""
