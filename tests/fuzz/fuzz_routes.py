"""Fuzz target ``routes``: ``normalise_path`` and ``RouteTable.policy`` on a site that is public except ``/admin``.

Contract: ``normalise_path`` returns None or a path that starts with "/", has no "//",
no "." or ".." segment, no "%", no control character, and normalises to itself. For the
table ``/admin/*`` required, ``POST /login`` public, ``/*`` public, no request whose path
an app could read as lying under ``/admin`` is ever public: the readings are worked out
here independently (percent-decoded once or twice, ``\\`` and encoded slashes as ``/``,
dot segments, ``;parameters`` dropped, trailing dots dropped, case folded either way).
``policy`` equals a fresh table's answer for the same request (the verdict cache never
changes a verdict) and asking twice gives the same answer.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar.routes import Route, RouteTable, normalise_path

from tests.fuzz.common import fuzz, text

ROUTES = (
    Route("/admin", True, None, "required"),
    Route("/login", False, frozenset({"POST"}), "public"),
    Route("/", True, None, "public"),
)
TABLE = RouteTable(ROUTES)
SEGMENTS = [
    "admin", "ADMIN", "Admin", "admin.", "admin..", "admin;x", "admin;", "%61dmin", "%41DMIN", "adm%69n", "..", ".",
    "%2e", "%2e%2e", "%2E%2E", ".%2e", "%252e%252e", "%2f", "%2F", "%5c", "\\", "", "a", "login", "%00", "%C2%85",
    "adm\u0131n", "\u0430dmin", "ADM\u0130N", "admin%20", "admin%09", "%ff", "x;y=/..", "admin\u200b", "~admin", "*",
]
METHODS = ["GET", "POST", "post", "DELETE", "", "G\u0130T", "OPTIONS"]


def path(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeIntInRange(0, 4) == 0:
        return text(fdp, 120)
    parts = [text(fdp, 8, SEGMENTS) for _ in range(fdp.ConsumeIntInRange(0, 5))]
    joined = "".join(fdp.PickValueInList(["/", "/", "/", "//", "\\", "/./"]) + p for p in parts)
    tail = fdp.PickValueInList(["", "", "/", "?a=/admin", "#x", "?", "/."])
    return joined + tail if joined.startswith("/") else "/" + joined + tail


def dots_removed(p: str) -> str:
    out: list[str] = []
    for segment in p.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
        else:
            out.append(segment)
    return "/" + "/".join(out)


def readings(raw: str) -> set[str]:
    """Paths an app could take ``raw`` to mean, each with dot segments resolved."""
    target = raw.split("?", 1)[0].split("#", 1)[0]
    # Decoded once, and once more (double encoding). Never read undecoded: "%2e" is "."
    # (RFC 3986 section 6.2.2.2), and the module's model is an app that resolves dot
    # segments, as nginx and Envoy do before routing.
    once = unquote(target, errors="replace")
    decoded = {once, unquote(once, errors="replace")}
    found = {p.replace("\\", "/") for p in decoded} | decoded
    for transform in (
        lambda p: "/".join(s.split(";", 1)[0] for s in p.split("/")),
        lambda p: "/".join(s if s in (".", "..") else s.rstrip(".") for s in p.split("/")),
    ):
        found |= {transform(p) for p in found}
    resolved = {dots_removed(p) for p in found}
    return resolved | {p.lower() for p in resolved} | {p.upper().lower() for p in resolved}


def under_admin(p: str) -> bool:
    return p == "/admin" or p.startswith("/admin/")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    paths = [path(fdp) for _ in range(fdp.PickValueInList([1, 1, 1, 2, 3, 0]))]
    methods = [text(fdp, 6, METHODS) for _ in range(fdp.PickValueInList([1, 1, 2, 0]))]

    for raw in paths:
        normal = normalise_path(raw)
        if normal is None:
            continue
        assert normal.startswith("/") and "//" not in normal and "%" not in normal, (raw, normal)
        assert not {".", ".."} & set(normal.split("/")), (raw, normal)
        assert not [c for c in normal if unicodedata.category(c) == "Cc"], f"control character: {raw!r} -> {normal!r}"
        assert normalise_path(normal) == normal, f"not idempotent: {raw!r} -> {normal!r} -> {normalise_path(normal)!r}"

    verdict = TABLE.policy(methods, paths)
    assert verdict == RouteTable(ROUTES).policy(methods, paths) == TABLE.policy(methods, paths), (methods, paths)
    if verdict != "public":
        return
    for raw in paths:
        bad = sorted(r for r in readings(raw) if under_admin(r))
        assert not bad, f"{methods} {raw!r} is public, yet an app can read it as {bad[0]!r}"


if __name__ == "__main__":
    fuzz(test_one_input)
