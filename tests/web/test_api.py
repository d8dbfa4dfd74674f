"""The end-user sessions API (DESIGN.md section 3; SECURITY_CASES C23-C29)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.sessions import Session
from sidecar.sessions.sqlite import SqliteStore
from tests.conftest import CHROME_WINDOWS, Sidecar, bearer, mint
from tests.support.configs import sqlite_url
from tests.support.sessions import stored_session
from tests.support.sidecar import run_sidecar

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


async def register(sidecar: Sidecar, token: str, **headers: str) -> str:
    """Use a token once (auto registration) and return its session id."""
    h = {**bearer(token), **headers}
    async with sidecar.public.get("/introspect", headers=h) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Auth-Session"]


async def status_of(sidecar: Sidecar, method: str, path: str, token: str | None) -> tuple[int, Any]:
    headers = bearer(token) if token is not None else {}
    async with sidecar.public.request(method, path, headers=headers) as resp:
        body = await resp.read()
        return resp.status, body


async def test_list_shows_my_sessions_in_the_envelope(sidecar: Sidecar) -> None:
    """GET /api/v1/sessions/ lists my active sessions with device, IP, location and times."""
    token = mint("alice")
    sid = await register(sidecar, token, **{"User-Agent": CHROME_WINDOWS})
    async with sidecar.public.get("/api/v1/sessions/", headers=bearer(token)) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert body["status"] == "success"
    assert body["status_code"] == 200
    assert body["message"] == "Sessions retrieved successfully"
    [item] = body["data"]
    assert item["id"] == sid and UUID_RE.fullmatch(sid)
    assert item["ip_address"] == "127.0.0.1"
    assert item["location"] == "Private network"
    assert item["device"] == "Chrome on Windows"
    assert item["current"] is True
    for field in ("login_time", "last_seen", "expires_at"):
        assert RFC3339_RE.fullmatch(item[field]), item[field]


async def test_list_works_with_and_without_trailing_slash(sidecar: Sidecar) -> None:
    """Both /api/v1/sessions and /api/v1/sessions/ answer 200 without a redirect."""
    token = mint("alice")
    for path in ("/api/v1/sessions", "/api/v1/sessions/"):
        async with sidecar.public.get(path, headers=bearer(token), allow_redirects=False) as resp:
            assert resp.status == 200


async def test_list_is_newest_first_and_marks_only_the_caller_current(sidecar: Sidecar) -> None:
    """Sessions are listed newest login first and only the caller's own is current."""
    t1, t2, t3 = mint("alice"), mint("alice"), mint("alice")
    ids = [await register(sidecar, t) for t in (t1, t2, t3)]
    sessions = await sidecar.sessions(t2)
    assert [s["id"] for s in sessions] == list(reversed(ids))
    assert [s["current"] for s in sessions] == [False, True, False]


async def test_list_shows_only_my_sessions(sidecar: Sidecar) -> None:
    """Bob's sessions never appear in Alice's list."""
    alice, bob = mint("alice"), mint("bob")
    await register(sidecar, alice)
    await register(sidecar, bob)
    assert {s["current"] for s in await sidecar.sessions(alice)} == {True}
    assert len(await sidecar.sessions(alice)) == 1


async def test_list_leaves_out_revoked_and_expired_sessions(sidecar: Sidecar) -> None:
    """Only active sessions are listed: revoked and expired ones are not."""
    me = mint("alice")
    gone = mint("alice")
    short = mint("alice", ttl=1)
    await register(sidecar, me)
    gone_id = await register(sidecar, gone)
    await register(sidecar, short)
    assert (await status_of(sidecar, "DELETE", f"/api/v1/sessions/{gone_id}/", me))[0] == 204
    await asyncio.sleep(1.1)
    assert [s["current"] for s in await sidecar.sessions(me)] == [True]


async def test_get_one_session(sidecar: Sidecar) -> None:
    """GET /api/v1/sessions/{id}/ returns that session of mine in the envelope."""
    token = mint("alice")
    sid = await register(sidecar, token)
    for path in (f"/api/v1/sessions/{sid}/", f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid.upper()}"):
        async with sidecar.public.get(path, headers=bearer(token)) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["data"]["id"] == sid
        assert body["data"]["current"] is True


async def test_delete_one_session_revokes_it_at_once(sidecar: Sidecar) -> None:
    """DELETE of my other session answers 204 with no body and its token is refused next (C27)."""
    me, other = mint("alice"), mint("alice")
    await register(sidecar, me)
    other_id = await register(sidecar, other)
    status, body = await status_of(sidecar, "DELETE", f"/api/v1/sessions/{other_id}/", me)
    assert (status, body) == (204, b"")
    assert await sidecar.check(other) == 401
    assert await sidecar.check(me) == 200


async def test_delete_current_session_logs_me_out(sidecar: Sidecar) -> None:
    """Deleting the caller's own session is allowed and its token stops working, API included (C26)."""
    me = mint("alice")
    sid = await register(sidecar, me)
    assert (await status_of(sidecar, "DELETE", f"/api/v1/sessions/{sid}", me))[0] == 204
    assert await sidecar.check(me) == 401
    async with sidecar.public.get("/api/v1/sessions/", headers=bearer(me)) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert (await resp.json())["status"] == "error"


async def test_delete_is_idempotent(sidecar: Sidecar) -> None:
    """Deleting an already revoked session of mine answers 204 again (C25)."""
    me, other = mint("alice"), mint("alice")
    await register(sidecar, me)
    other_id = await register(sidecar, other)
    for _ in range(2):
        assert (await status_of(sidecar, "DELETE", f"/api/v1/sessions/{other_id}/", me))[0] == 204


async def test_delete_expired_session_is_idempotent(sidecar: Sidecar) -> None:
    """Deleting an expired session of mine answers 204."""
    me, short = mint("alice"), mint("alice", ttl=1)
    await register(sidecar, me)
    short_id = await register(sidecar, short)
    await asyncio.sleep(1.1)
    assert (await status_of(sidecar, "DELETE", f"/api/v1/sessions/{short_id}/", me))[0] == 204


async def test_other_users_session_is_not_found_and_stays_active(sidecar: Sidecar) -> None:
    """Alice reading or deleting Bob's session gets the same 404 as an unknown id; Bob's stays (C23)."""
    alice, bob = mint("alice"), mint("bob")
    await register(sidecar, alice)
    bob_id = await register(sidecar, bob)
    unknown = str(uuid.uuid4())
    answers = []
    for method in ("GET", "DELETE"):
        for sid in (bob_id, unknown):
            answers.append(await status_of(sidecar, method, f"/api/v1/sessions/{sid}/", alice))
    assert {a for a in answers} == {
        (404, b'{"status": "error", "status_code": 404, "message": "Session not found", "data": {}}')
    }
    assert await sidecar.check(bob) == 200


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "1" * 10_000,
        "'%20OR%20'1'='1",
        "%00",
        "%C3%A9t%C3%A9",
        "123e4567-e89b-12d3-a456-42661417400",  # one digit short
        "123e4567e89b12d3a456426614174000",  # no hyphens
        "{123e4567-e89b-12d3-a456-426614174000}",
        "123e4567-e89b-12d3-a456-426614174000%0a",
        "a/b/c",
    ],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_malformed_session_id_is_400(sidecar: Sidecar, raw: str, method: str) -> None:
    """An id that is not a UUID answers 400 "Invalid session id", never 500 (C24)."""
    token = mint("alice")
    await register(sidecar, token)
    async with sidecar.public.request(method, f"/api/v1/sessions/{raw}/", headers=bearer(token)) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body == {"status": "error", "status_code": 400, "message": "Invalid session id", "data": {}}


async def test_delete_all_others_keeps_only_the_current_session(sidecar: Sidecar) -> None:
    """DELETE /api/v1/sessions/ revokes every other session at once; the current one works (C29)."""
    me = mint("alice")
    others = [mint("alice") for _ in range(3)]
    await register(sidecar, me)
    for t in others:
        await register(sidecar, t)
    bob = mint("bob")
    await register(sidecar, bob)
    status, body = await status_of(sidecar, "DELETE", "/api/v1/sessions/", me)
    assert (status, body) == (204, b"")
    assert [await sidecar.check(t) for t in others] == [401, 401, 401]
    assert await sidecar.check(me) == 200
    assert await sidecar.check(bob) == 200
    assert [s["current"] for s in await sidecar.sessions(me)] == [True]


async def test_delete_all_others_kills_never_seen_older_tokens(sidecar: Sidecar) -> None:
    """A token of mine issued before "log out others" and never seen is refused too (C29)."""
    stolen = mint("alice", now=time.time() - 5)
    me = mint("alice", now=time.time() - 5)
    await register(sidecar, me)
    assert (await status_of(sidecar, "DELETE", "/api/v1/sessions/", me))[0] == 204
    assert await sidecar.check(stolen) == 401
    # The current session keeps working, with old and newly issued tokens alike.
    assert await sidecar.check(me) == 200


async def test_current_session_survives_with_refreshed_token(sidecar: Sidecar) -> None:
    """After "log out others", a new access token of the current session (same sid) works."""
    me = mint("alice", sid="session-1", now=time.time() - 5)
    await register(sidecar, me)
    assert (await status_of(sidecar, "DELETE", "/api/v1/sessions", me))[0] == 204
    refreshed = mint("alice", sid="session-1", now=time.time() - 2)
    assert await sidecar.check(refreshed) == 200


async def test_new_login_after_log_out_others_works(sidecar: Sidecar) -> None:
    """A token issued after the cut-off is a new login and is allowed."""
    me = mint("alice", now=time.time() - 5)
    await register(sidecar, me)
    assert (await status_of(sidecar, "DELETE", "/api/v1/sessions/", me))[0] == 204
    await asyncio.sleep(1.05)  # iat has whole-second resolution
    assert await sidecar.check(mint("alice")) == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/sessions/"),
        ("DELETE", "/api/v1/sessions/"),
        ("GET", f"/api/v1/sessions/{uuid.uuid4()}/"),
        ("DELETE", f"/api/v1/sessions/{uuid.uuid4()}/"),
    ],
)
@pytest.mark.parametrize("token", [None, "garbage", "a.b.c"])
async def test_api_needs_a_valid_token(sidecar: Sidecar, method: str, path: str, token: str | None) -> None:
    """Every API route answers 401 with WWW-Authenticate for a missing or invalid token."""
    headers = bearer(token) if token else {}
    async with sidecar.public.request(method, path, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        body = await resp.json()
    assert body == {"status": "error", "status_code": 401, "message": "Invalid or missing token", "data": {}}


async def test_wrong_method_is_405_in_the_envelope(sidecar: Sidecar) -> None:
    """A method the route does not take answers 405 in the error envelope, not 500."""
    async with sidecar.public.post("/api/v1/sessions/", headers=bearer(mint())) as resp:
        assert resp.status == 405
        assert (await resp.json())["status_code"] == 405


async def test_unknown_path_is_404_in_the_envelope(sidecar: Sidecar) -> None:
    """An unknown path answers 404 in the error envelope."""
    async with sidecar.public.get("/api/v2/whatever") as resp:
        assert resp.status == 404
        assert (await resp.json())["message"] == "Not found"


async def test_last_seen_moves_without_a_write_per_request(sidecar: Sidecar) -> None:
    """last_seen advances with use (batched), and the listing shows the newest value."""
    token = mint("alice")
    await register(sidecar, token)
    first = (await sidecar.sessions(token))[0]["last_seen"]
    await asyncio.sleep(1.1)
    assert await sidecar.check(token) == 200
    listed = (await sidecar.sessions(token))[0]
    assert listed["last_seen"] > first
    await asyncio.sleep(0.5)  # the test settings flush every 0.2 s
    stored = await sidecar.services.store.get(listed["id"])
    assert stored is not None and stored.last_seen >= time.time() - 2


# ---------------------------------------------------------------- pages (OWASP API4)


def api_session(user: str, created_at: float) -> Session:
    """A session row as registration writes it (inserted straight into the store: many, fast)."""
    return stored_session(user, created=created_at, expires=time.time() + 3600, ip_address="203.0.113.7", device="curl")


async def add_sessions(sidecar: Sidecar, user: str, count: int, *, newest: float | None = None) -> list[str]:
    """Insert ``count`` sessions of ``user``, one second apart and older than ``newest``; their ids, newest first."""
    top = newest if newest is not None else time.time() - 60
    ids = []
    for i in range(count):
        row, _ = await sidecar.services.store.insert(api_session(user, top - i))
        ids.append(row.id)
    return ids


async def listing(sidecar: Sidecar, token: str, query: str = "") -> dict[str, Any]:
    async with sidecar.public.get(f"/api/v1/sessions/{query}", headers=bearer(token)) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_list_pages_cover_every_session_once_and_the_last_says_so(sidecar: Sidecar) -> None:
    """?limit=3 pages through 7 sessions by following "next": every session once, in order, next null at the end."""
    token = mint("alice")
    mine = await register(sidecar, token)
    older = await add_sessions(sidecar, "alice", 6)
    first = await listing(sidecar, token)
    assert [s["id"] for s in first["data"]] == [mine, *older]
    assert first["next"] is None
    seen, query, sizes = [], "?limit=3", []
    for _ in range(10):
        body = await listing(sidecar, token, query)
        sizes.append(len(body["data"]))
        seen += [s["id"] for s in body["data"]]
        if body["next"] is None:
            break
        assert isinstance(body["next"], str) and re.fullmatch(r"[A-Za-z0-9_-]+", body["next"])
        query = f"?limit=3&before={body['next']}"
    assert sizes == [3, 3, 1]
    assert seen == [mine, *older]


async def test_list_pages_survive_logins_and_revocations_between_reads(sidecar: Sidecar) -> None:
    """A new login and a revocation between two page reads make no other session skip or repeat."""
    token = mint("alice")
    mine = await register(sidecar, token)
    older = await add_sessions(sidecar, "alice", 8)
    page1 = await listing(sidecar, token, "?limit=4")
    assert [s["id"] for s in page1["data"]] == [mine, *older[:3]]
    await register(sidecar, mint("alice"))  # newest: it belongs on page one
    assert (await status_of(sidecar, "DELETE", f"/api/v1/sessions/{older[1]}/", token))[0] == 204  # listed
    assert (await status_of(sidecar, "DELETE", f"/api/v1/sessions/{older[5]}/", token))[0] == 204  # not yet
    page2 = await listing(sidecar, token, f"?limit=4&before={page1['next']}")
    assert [s["id"] for s in page2["data"]] == [older[3], older[4], older[6], older[7]]
    assert page2["next"] is None


async def test_default_page_is_100_and_limit_goes_up_to_1000(sidecar: Sidecar) -> None:
    """Without ?limit a page holds 100 sessions; ?limit=1000 holds 1000; the rest follow via next."""
    token = mint("alice")
    mine = await register(sidecar, token)
    older = await add_sessions(sidecar, "alice", 1100)
    default = await listing(sidecar, token)
    assert [s["id"] for s in default["data"]] == [mine, *older[:99]]
    assert default["next"] is not None
    biggest = await listing(sidecar, token, "?limit=1000")
    assert [s["id"] for s in biggest["data"]] == [mine, *older[:999]]
    rest = await listing(sidecar, token, f"?limit=1000&before={biggest['next']}")
    assert [s["id"] for s in rest["data"]] == older[999:]
    assert rest["next"] is None


BAD_LIMITS = ["0", "1001", "-1", "abc", "", "1.5", "1e3", " 5", "+5", "٣", "99999999999999999999", "0x10"]


@pytest.mark.parametrize("limit", BAD_LIMITS)
async def test_limit_out_of_range_or_not_an_integer_is_400(sidecar: Sidecar, limit: str) -> None:
    """A limit that is not an integer from 1 to 1000 is a 400 in the error envelope, saying so."""
    token = mint("alice")
    await register(sidecar, token)
    async with sidecar.public.get("/api/v1/sessions/", params={"limit": limit}, headers=bearer(token)) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body == {
        "status": "error", "status_code": 400, "message": "Parameter 'limit' must be an integer from 1 to 1000", "data": {},
    }


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


BAD_CURSORS = {
    "empty": "",
    "not-base64url": "abc+/==",
    "junk": "!!!",
    "base64-of-junk": b64(b"\xff\xfe not json"),
    "not-a-pair": b64(b"[1]"),
    "object": b64(b'{"created_at": 1, "id": "x"}'),
    "time-a-string": b64(b'["1700000000", "9b2f"]'),
    "time-a-bool": b64(b'[true, "9b2f"]'),
    "time-nan": b64(b'[NaN, "9b2f"]'),
    "time-1e400": b64(b'[1e400, "9b2f"]'),
    "time-huge-int": b64(b"[1" + b"0" * 400 + b', "9b2f"]'),
    "id-a-number": b64(b"[1700000000, 7]"),
    "id-empty": b64(b'[1700000000, ""]'),
    "id-too-long": b64(b'[1700000000, "' + b"x" * 101 + b'"]'),
    "too-long": "A" * 201,
    "nested": b64(b"[" * 100 + b"]" * 100),
    "sql": "' OR '1'='1",
}


@pytest.mark.parametrize("cursor", BAD_CURSORS.values(), ids=BAD_CURSORS.keys())
async def test_malformed_cursor_is_400(sidecar: Sidecar, cursor: str) -> None:
    """A ?before= that is not a cursor this API gives is a 400 "Invalid cursor", never a 500."""
    token = mint("alice")
    await register(sidecar, token)
    async with sidecar.public.get("/api/v1/sessions/", params={"before": cursor}, headers=bearer(token)) as resp:
        assert resp.status == 400
        assert await resp.json() == {"status": "error", "status_code": 400, "message": "Invalid cursor", "data": {}}


async def test_page_parameters_given_twice_are_400(sidecar: Sidecar) -> None:
    """limit or before given twice is a 400, not one of the two picked."""
    token = mint("alice")
    await register(sidecar, token)
    cursor = b64(b'[1700000000, "9b2f"]')
    for query, message in (
        ("?limit=1&limit=2", "Parameter 'limit' must be an integer from 1 to 1000"),
        (f"?before={cursor}&before={cursor}", "Invalid cursor"),
    ):
        async with sidecar.public.get(f"/api/v1/sessions/{query}", headers=bearer(token)) as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == message


async def test_a_cursor_only_ever_pages_through_my_own_sessions(sidecar: Sidecar) -> None:
    """A cursor taken from another user's listing lists my sessions after that position, never theirs."""
    alice, bob = mint("alice"), mint("bob")
    await register(sidecar, alice)
    await add_sessions(sidecar, "alice", 3)
    await register(sidecar, bob)
    bobs = await add_sessions(sidecar, "bob", 3, newest=time.time() - 30)
    bob_page = await listing(sidecar, bob, "?limit=1")
    body = await listing(sidecar, alice, f"?before={bob_page['next']}")
    listed = {s["id"] for s in body["data"]}
    assert listed and listed <= {s["id"] for s in (await listing(sidecar, alice))["data"]}
    assert not listed & set(bobs)


async def test_a_real_process_answers_thousands_of_sessions_a_bounded_page_at_a_time(tmp_path: Path) -> None:
    """`sidecar serve` with 3,000 sessions of one user answers the default listing with 100 of
    them (a small body, not the whole set) and the rest page by page, each exactly once."""
    database = tmp_path / "many.db"
    store = SqliteStore(database)
    await store.open()
    try:
        older = []
        top = time.time() - 60
        for i in range(3000):
            row, _ = await store.insert(api_session("alice", top - i * 0.001))
            older.append(row.id)
    finally:
        await store.close()
    token = mint("alice")
    with run_sidecar(tmp_path, sqlite_url(database)) as sidecar:
        base = sidecar.url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/introspect", headers=bearer(token)) as resp:
                assert resp.status == 200
                mine = resp.headers["X-Auth-Session"]
            async with http.get(f"{base}/api/v1/sessions/", headers=bearer(token)) as resp:
                assert resp.status == 200
                raw = await resp.read()
            first = json.loads(raw)
            assert [s["id"] for s in first["data"]] == [mine, *older[:99]]
            assert len(raw) < 40_000  # ~250 bytes a session: the whole set would be ~750 KB
            seen, cursor = [s["id"] for s in first["data"]], first["next"]
            while cursor is not None:
                async with http.get(f"{base}/api/v1/sessions/?limit=1000&before={cursor}", headers=bearer(token)) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                assert len(body["data"]) <= 1000
                seen += [s["id"] for s in body["data"]]
                cursor = body["next"]
    assert seen == [mine, *older]
