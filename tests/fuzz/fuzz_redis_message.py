"""Fuzz target ``redis_message``: ``sidecar.revocation.redis_push.decode``.

Contract: a message is either ``(list of Revoked, list of Cutoff)`` with every field of
its type (non-empty strings of at most 300 characters, finite floats, an exempt key that
is such a string or None), or ``ValueError``; never RecursionError, OverflowError,
TypeError or anything else. What ``encode`` writes decodes to the same values.
"""

from __future__ import annotations

import json
import math
from typing import Any

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.revocation.redis_push import decode, encode
    from sidecar.sessions.models import Cutoff, Revoked

from tests.fuzz.common import fuzz

ODD: list[Any] = [
    None, True, False, 0, 1, -1, 1.5, 2**63, 10**400, "", "x", "x" * 300, "x" * 301, "\ud800", [], {}, ["x"],
    float("nan"), float("inf"),
]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.PickValueInList(ODD)
    if kind == 1:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8)) or "k"
    if kind == 2:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeIntInRange(-(2**70), 2**70)
    if kind == 3 and depth < 3:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    if kind == 4 and depth < 3:
        return {fdp.ConsumeUnicode(3): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    return fdp.PickValueInList(["sid:s", "u-1", 1_700_000_000, 1_700_000_000.5])


def message(fdp: atheris.FuzzedDataProvider) -> bytes:
    how = fdp.ConsumeIntInRange(0, 4)
    if how == 0:
        return fdp.ConsumeBytes(fdp.remaining_bytes())
    if how == 1:
        depth = fdp.ConsumeIntInRange(0, 200_000)
        return b'{"v":1,"sessions":' + b"[" * depth + b"]" * depth + b',"cutoffs":[]}'
    doc: dict[str, Any] = {"v": fdp.PickValueInList([1, 1, 1, 2, True, 1.0, "1", None])}
    if fdp.ConsumeIntInRange(0, 9):
        doc["sessions"] = [
            [value(fdp) for _ in range(fdp.PickValueInList([5, 5, 5, 4, 6]))] for _ in range(fdp.ConsumeIntInRange(0, 3))
        ]
    if fdp.ConsumeIntInRange(0, 9):
        doc["cutoffs"] = [
            [value(fdp) for _ in range(fdp.PickValueInList([3, 3, 2, 4]))] for _ in range(fdp.ConsumeIntInRange(0, 2))
        ]
    if how == 2 and fdp.ConsumeBool():
        doc[fdp.ConsumeUnicode(4)] = value(fdp)
    text = json.dumps(doc, ensure_ascii=fdp.ConsumeBool())
    return text.encode("utf-8", "surrogatepass") if how != 4 else text.encode("utf-16", "surrogatepass")


def is_text(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 300


def is_number(v: object) -> bool:
    return type(v) is float and math.isfinite(v)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw = message(fdp)
    try:
        revoked, cutoffs = decode(raw)
    except ValueError:
        return
    assert isinstance(revoked, list) and isinstance(cutoffs, list)
    for r in revoked:
        assert type(r) is Revoked, repr(r)
        assert is_text(r.id) and is_text(r.session_key) and is_text(r.user_id), repr(r)
        assert is_number(r.expires_at) and is_number(r.revoked_at), repr(r)
    for c in cutoffs:
        assert type(c) is Cutoff, repr(c)
        assert is_text(c.user_id) and is_number(c.cutoff_at), repr(c)
        assert c.exempt_session_key is None or is_text(c.exempt_session_key), repr(c)
    again = decode(encode(revoked, cutoffs[0] if cutoffs else None))
    assert again == (revoked, cutoffs[:1]), f"{again!r} != {(revoked, cutoffs[:1])!r}"


if __name__ == "__main__":
    fuzz(test_one_input)
