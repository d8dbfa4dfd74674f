"""Fuzz target ``cookies``: where capture routes find tokens, and the key a refresh token is bound by.

Contract: ``set_cookie_values`` and ``request_cookie_values`` never raise; every name they
return is a non-empty, trimmed substring of one header and every value a substring of
that header (``Set-Cookie``: never empty). ``token_in_answer`` / ``token_in_request`` raise
nothing but ``AmbiguousTokenError`` and return None or one non-empty ASCII token of at most
``MAX_TOKEN_CHARS``, found literally in a header of its place (or, for a body place, the
top-level JSON string under its key). ``refresh_key`` never raises, answers ``sid:...`` or
``rt:<sha256>``, and gives a JWT the same key however its segments are "="-padded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.capture.learn import refresh_key
    from sidecar.capture.places import (
        MAX_TOKEN_CHARS,
        AmbiguousTokenError,
        TokenPlace,
        token_in_answer,
        token_in_request,
    )
    from sidecar.cookies import request_cookie_values, set_cookie_values
    from sidecar.errors import InvalidTokenError
    from sidecar.tokens.parse import parse_compact

from tests.fuzz.common import fuzz, text

SET_COOKIES = [
    "rt=abc.def.ghi; Path=/; HttpOnly", "rt=; Max-Age=0", 'rt="quoted"; Secure', "rt=x; expires=30 days, 0:00:00",
    " rt = spaced ; x", "=novalue", "noequals", "rt=a=b=c", "other=1", "rt=\u00e9", "", ";", 'rt=""', "rt=\x00",
]
COOKIES = ["rt=abc; other=1", "rt=a; rt=b", "rt=a; rt=a", 'rt="q"', "rt", "; ;", "=x", "rt=" + "x" * 20_000]
PLACES = [TokenPlace("body", "token"), TokenPlace("header", "X-Token"), TokenPlace("header", "Authorization"),
          TokenPlace("cookie", "rt"), TokenPlace("cookie", "other")]
AUTHS = ["Bearer abc", "bearer  abc ", "Basic x", "abc", "Bearer", "Bearer ", " Bearer a b"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def headers(fdp: atheris.FuzzedDataProvider, pool: list[str]) -> list[str]:
    return [text(fdp, 60, pool) for _ in range(fdp.ConsumeIntInRange(0, 3))]


def check_cookies(found: dict[str, list[str]], sources: Sequence[str], *, non_empty: bool) -> None:
    for name, values in found.items():
        homes = [h for h in sources if name in h]
        assert name and name == name.strip(" \t") and homes, f"name {name!r} not in {sources!r}"
        for v in values:
            assert not (non_empty and not v), f"empty value of {name!r} from {sources!r}"
            assert any(v in h for h in homes), f"value {v!r} of {name!r} not in {sources!r}"


def check_token(token: str | None, place: TokenPlace, sources: Sequence[str], body: bytes | None) -> None:
    if token is None:
        return
    assert token and token.isascii() and len(token) <= MAX_TOKEN_CHARS, repr(token)[:200]
    if place.kind == "body":
        assert body is not None and json.loads(body)[place.name] == token
    else:
        assert any(token in h for h in sources), f"{token!r} is in none of {sources!r}"


def jwt(fdp: atheris.FuzzedDataProvider) -> str:
    header = {"alg": fdp.PickValueInList(["HS256", "none"]), "typ": "JWT"}
    payload = {"sub": text(fdp, 6, ["alice"]), "exp": fdp.ConsumeIntInRange(0, 2**40)}
    if fdp.ConsumeBool():
        payload["sid"] = text(fdp, 12, ["s-1", "", " ", "x" * 256])
    raw_payload = json.dumps(payload, ensure_ascii=fdp.ConsumeBool()).encode("utf-8", "surrogatepass")
    return ".".join([b64(json.dumps(header).encode()), b64(raw_payload), b64(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))])


def repadded(fdp: atheris.FuzzedDataProvider, token: str) -> str:
    return ".".join(p.rstrip("=") + "=" * fdp.ConsumeIntInRange(0, 2) for p in token.split("."))


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    answer_cookies = headers(fdp, SET_COOKIES)
    request_cookies = headers(fdp, COOKIES)
    check_cookies(set_cookie_values(answer_cookies), answer_cookies, non_empty=True)
    check_cookies(request_cookie_values(request_cookies), request_cookies, non_empty=False)

    place = fdp.PickValueInList(PLACES)
    named = headers(fdp, AUTHS)
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)) if fdp.ConsumeBool() else json.dumps({"token": text(fdp, 20)}).encode("utf-8", "surrogatepass")
    answer_headers = {"set-cookie": answer_cookies, place.name.lower(): named} if place.kind != "cookie" else {"set-cookie": answer_cookies}
    request_headers = {"cookie": request_cookies, place.name.lower(): named} if place.kind != "cookie" else {"cookie": request_cookies}
    for find, heads, sources in (
        (token_in_answer, answer_headers, answer_cookies if place.kind == "cookie" else named),
        (token_in_request, request_headers, request_cookies if place.kind == "cookie" else named),
    ):
        given_body = None if find is token_in_answer and fdp.ConsumeIntInRange(0, 5) == 0 else body  # None: unreadable
        try:
            token = find(place, heads, given_body)  # type: ignore[arg-type]  # None: an unreadable answer body
        except AmbiguousTokenError:
            continue
        check_token(token, place, sources, given_body)

    token = jwt(fdp) if fdp.ConsumeBool() else text(fdp, 100)
    key = refresh_key(token, "sid")
    assert key.startswith("sid:") or (key.startswith("rt:") and len(key) == 3 + 64), key
    assert refresh_key(token, "sid") == key
    other = repadded(fdp, token)
    try:
        parse_compact(token), parse_compact(other)
    except InvalidTokenError:
        return
    assert refresh_key(other, "sid") == key, f"{token!r} and {other!r} differ only in padding, not in key"


if __name__ == "__main__":
    fuzz(test_one_input)
