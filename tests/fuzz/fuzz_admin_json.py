"""Fuzz target ``admin_json``: the admin API's JSON body reader, ``json_object_body``.

Contract: the body is a dict (exactly what ``json.loads`` makes of the UTF-8 text), or
``ApiError`` 413 for a body over ``MAX_BODY`` bytes, or ``ApiError`` 400 for anything
else (not UTF-8, not JSON, not an object, nested too deeply, a number too long); nothing
else is raised.
"""

from __future__ import annotations

import contextlib
import json

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.web.admin import MAX_BODY, json_object_body
    from sidecar.web.envelope import ApiError

from tests.fuzz.common import fuzz

PIECES = [
    b'{"token": "a.b.c", "ip_address": "203.0.113.7", "user_agent": "curl/8"}', b"[", b"]", b"{", b"}", b'"k":',
    b"NaN", b"1e400", b"9" * 5000, b'"\\ud800"', b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"null", b",", b" ",
]


def body(fdp: atheris.FuzzedDataProvider) -> bytes:
    how = fdp.ConsumeIntInRange(0, 3)
    if how == 0:
        return fdp.ConsumeBytes(fdp.remaining_bytes())
    if how == 1:  # nested containers, deep enough to reach the recursion limit now and then
        depth = fdp.ConsumeIntInRange(0, 100_000)
        return b'{"a":' + b"[" * depth + b"]" * depth * fdp.ConsumeIntInRange(0, 1) + b"}"
    if how == 2:  # around the size limit
        filler = MAX_BODY - 10 + fdp.ConsumeIntInRange(0, 20)
        return b'{"a":"' + b"x" * filler + b'"}'
    return b"".join(fdp.PickValueInList(PIECES) for _ in range(fdp.ConsumeIntInRange(0, 12)))


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw = body(fdp)
    try:
        decoded = json_object_body(raw)
    except ApiError as e:
        assert e.status in (400, 413), f"{e.status} {e.message}"
        assert (e.status == 413) == (len(raw) > MAX_BODY), f"{e.status} for {len(raw)} bytes"
        return
    assert isinstance(decoded, dict), repr(decoded)[:200]
    assert len(raw) <= MAX_BODY
    # Compared as text (NaN is not equal to itself); nested nearly as deep as the stack
    # allows, a document is too deep to compare, which is not a finding.
    with contextlib.suppress(RecursionError):
        assert json.dumps(decoded) == json.dumps(json.loads(raw.decode("utf-8"))), raw[:200]


if __name__ == "__main__":
    fuzz(test_one_input)
