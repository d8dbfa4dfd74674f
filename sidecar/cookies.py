"""Cookies as RFC 6265 reads them: ``Set-Cookie`` in answers, ``Cookie`` in requests.

One reader for the check and the sessions API (tokens in a cookie) and for the capture
routes (tokens in the auth service's answers).
"""

from __future__ import annotations

from collections.abc import Iterable


def set_cookie_values(headers: Iterable[str]) -> dict[str, list[str]]:
    """Cookie values of ``Set-Cookie`` header values, read as browsers read them.

    RFC 6265 section 5.2: the name and value are what comes before the first ``;``; the
    attributes after it are the browser's business, and a malformed one (the
    ``expires=30 days, 0:00:00`` some apps send) never hides the cookie. A cookie set to an
    empty value (how apps clear one) is left out.
    """
    found: dict[str, list[str]] = {}
    for header in headers:
        pair = header.split(";", 1)[0]
        name, sep, value = pair.partition("=")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not sep or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if value:
            found.setdefault(name, []).append(value)
    return found


def request_cookie_values(headers: Iterable[str]) -> dict[str, list[str]]:
    """Cookie values of ``Cookie`` request headers (RFC 6265 section 5.4: ``a=b; c=d``)."""
    found: dict[str, list[str]] = {}
    for header in headers:
        for pair in header.split(";"):
            name, sep, value = pair.partition("=")
            name, value = name.strip(" \t"), value.strip(" \t")
            if sep and name:
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found.setdefault(name, []).append(value)
    return found
