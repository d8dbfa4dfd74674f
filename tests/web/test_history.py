"""The history (``GET /api/v1/sessions/history/``) and the admin events listing, through a
real sidecar on loopback: sign-ins with their flags from the MaxMind test City database,
ended sessions with why and by whom in words, newest first, a page at a time, and only
the caller's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import ADMIN, CHROME_WINDOWS, GEOIP_DIR, Sidecar, bearer, mint, settings_for

LONDON = "81.2.69.142"
BOXFORD = "2.125.160.216"  # 100 km from London
LINKOPING = "89.160.20.112"
MILTON = "216.160.83.56"  # Washington state: 7,700 km from London
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def history(sidecar: Sidecar, token: str, query: str = "") -> dict[str, Any]:
    async with sidecar.public.get(f"/api/v1/sessions/history/{query}", headers=bearer(token)) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def sign_in(sidecar: Sidecar, token: str, ip: str, user_agent: str = CHROME_WINDOWS) -> str:
    async with sidecar.public.get(
        "/introspect", headers={**bearer(token), "X-Forwarded-For": ip, "User-Agent": user_agent}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Auth-Session"]


async def geo_sidecar(tmp_path: Path, start_sidecar: Any, **sections: Any) -> Sidecar:
    settings = settings_for(
        tmp_path,
        server={"trusted_proxies": ["127.0.0.1/32"]},
        geoip={"database": str(GEOIP_DIR / "GeoIP2-City-Test.mmdb")},
        **sections,
    )
    sidecar: Sidecar = await start_sidecar(settings)
    return sidecar


async def test_sign_ins_carry_new_device_new_country_and_unusual_travel(tmp_path: Path, start_sidecar: Any) -> None:
    """With the City test database: a first sign-in is new, the same device and country again is not,
    Sweden is a new country, another browser a new device, and London -> Washington in seconds unusual travel."""
    sidecar = await geo_sidecar(tmp_path, start_sidecar)
    token = mint("alice")
    await sign_in(sidecar, token, LONDON)
    await sign_in(sidecar, mint("alice"), BOXFORD)
    await sign_in(sidecar, mint("alice"), LINKOPING, FIREFOX_LINUX)
    await sign_in(sidecar, mint("alice"), MILTON)
    items = (await history(sidecar, token))["data"]
    flags = [(i["location"], i["new_device"], i["new_country"], i["unusual_travel"]) for i in items]
    assert flags == [
        ("Milton, United States", False, True, True),
        ("Linköping, Sweden", True, True, True),  # 1,300 km in well under a second
        ("Boxford, United Kingdom", False, False, True),
        ("London, United Kingdom", True, True, False),
    ]
    assert {i["event"] for i in items} == {"session.created"} and items[0]["summary"] == "New sign-in"
    assert items[-1]["device"] == "Chrome on Windows" and items[-1]["ip_address"] == LONDON


async def test_travel_within_the_limit_is_not_unusual(tmp_path: Path, start_sidecar: Any) -> None:
    """London then Boxford is unusual only when the speed limit is below what that takes."""
    sidecar = await geo_sidecar(tmp_path, start_sidecar, events={"max_travel_kmh": 1_000_000})
    token = mint("alice")
    await sign_in(sidecar, token, LONDON)
    await sign_in(sidecar, mint("alice"), BOXFORD)
    assert [i["unusual_travel"] for i in (await history(sidecar, token))["data"]] == [False, False]


async def test_ended_sessions_say_why_and_by_whom_in_words(sidecar: Sidecar) -> None:
    """Logging one out, logging out the others and an admin revocation read as a user would say them."""
    token = mint("alice")
    mine = await sidecar.session_id(token)
    async with sidecar.public.get("/introspect", headers={**bearer(token), "User-Agent": CHROME_WINDOWS}):
        pass
    one = await sidecar.session_id(mint("alice"))
    two = await sidecar.session_id(mint("alice"))
    three = await sidecar.session_id(mint("alice"))
    await sidecar.revoke(token, one)
    async with sidecar.admin.delete(f"/admin/v1/sessions/{two}", headers=ADMIN) as resp:
        assert resp.status == 204
    async with sidecar.public.delete("/api/v1/sessions/", headers=bearer(token)) as resp:
        assert resp.status == 204
    items = (await history(sidecar, token))["data"]
    ended = [(i["event"], i["session_id"], i["reason"], i["actor"], i["count"]) for i in items if i["event"] != "session.created"]
    device = (await sidecar.sessions(token))[0]["device"]
    assert sorted(ended, key=str) == sorted([
        ("session.revoked", one, "logged out", f"you, from {device}", None),
        ("session.revoked", two, "ended by an administrator", "an administrator", None),
        ("session.revoked", three, "logged out from another session", f"you, from {device}", None),
        ("user.sessions_revoked", mine, "logged out from another session", f"you, from {device}", 1),
    ], key=str)
    assert [i["event"] for i in items[:2]] != ["session.created", "session.created"]  # newest first


async def test_history_pages_and_is_the_callers_own(sidecar: Sidecar) -> None:
    """Pages of two follow each other through next until null; bob sees none of alice's events."""
    token = mint("alice")
    for _ in range(4):
        await sidecar.session_id(mint("alice"))
    await sidecar.session_id(token)
    bob = mint("bob")
    await sidecar.session_id(bob)
    seen: list[str] = []
    query = "?limit=2"
    while True:
        page = await history(sidecar, token, query)
        seen += [i["id"] for i in page["data"]]
        if page["next"] is None:
            break
        query = f"?limit=2&before={page['next']}"
    assert len(seen) == len(set(seen)) == 5
    assert [i["id"] for i in (await history(sidecar, token))["data"]] == seen
    assert len((await history(sidecar, bob))["data"]) == 1


async def test_admin_lists_a_users_events_with_the_codes(sidecar: Sidecar) -> None:
    """GET /admin/v1/users/{id}/events lists the user's events with user id, reason and actor codes."""
    token = mint("alice")
    other = await sidecar.session_id(mint("alice"))
    await sidecar.session_id(token)
    await sidecar.revoke(token, other)
    async with sidecar.admin.get("/admin/v1/users/alice/events", headers=ADMIN) as resp:
        assert resp.status == 200
        body = await resp.json()
    newest = body["data"][0]
    assert newest["event"] == "session.revoked" and newest["reason_code"] == "user"
    assert newest["actor_code"] == "user:alice" and newest["user_id"] == "alice"
    assert body["next"] is None
    async with sidecar.admin.get("/admin/v1/users/alice/events") as resp:
        assert resp.status == 401


async def test_events_off_leave_the_history_empty(tmp_path: Path, start_sidecar: Any) -> None:
    """With events.enabled = false sign-ins and logouts record nothing; the history answers an empty page."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, events={"enabled": False}))
    token = mint("alice")
    other = await sidecar.session_id(mint("alice"))
    await sidecar.session_id(token)
    await sidecar.revoke(token, other)
    body = await history(sidecar, token)
    assert body["data"] == [] and body["next"] is None
