"""The OpenAPI document of the public listener is served, valid, complete, and true.

"Complete": every route of the router is documented and every documented operation is
routed. "True": real answers of a running sidecar, one for each documented status that a
test can provoke, match the documented status, headers, media type and body schema.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
from aiohttp import web

from sidecar.web import create_admin_app, create_app, open_services
from sidecar.web.openapi import ADMIN_SERVER, CHECK_METHODS, DOCUMENT, PATH
from tests.conftest import ADMIN, CHROME_WINDOWS, Sidecar, bearer, mint, settings_for

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DIALECT = "https://json-schema.org/draft/2020-12/schema"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow local ``$ref``s (``#/components/...``) to the object they name."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = DOCUMENT
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def schema_errors(schema: Mapping[str, Any], instance: Any) -> list[str]:
    """What is wrong with ``instance`` under a schema of the document (refs resolved in it)."""
    root = {"$schema": DIALECT, "components": DOCUMENT["components"], "allOf": [schema]}
    validator = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
    return [f"{e.message} at {list(e.instance_path)}" for e in validator.iter_errors(instance)]


def normalised(path: str) -> str:
    """A path with every parameter spelled ``{}`` and no trailing slash (both spellings are served)."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def documented_operations(*, admin: bool = False) -> set[tuple[str, str]]:
    """The document's operations on the public listener, or (``admin``) on the admin listener:
    the paths whose ``servers`` name it."""
    return {
        (method, normalised(path))
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in HTTP_METHODS and (item.get("servers") == [ADMIN_SERVER]) == admin
    }


def routed_operations(app: web.Application) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info["formatter"]
        for route in resource:
            methods = HTTP_METHODS if route.method == "*" else (route.method.lower(),)
            out.update((m, normalised(path)) for m in methods)
    return out


def documented_response(method: str, path: str, status: int) -> Mapping[str, Any]:
    """The response object the document gives for this operation and status (fails if none)."""
    operation = DOCUMENT["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}; documented: {sorted(responses)}"
    return resolve(responses[str(status)])


def assert_conforms(
    response: Mapping[str, Any], method: str, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    """Status-independent part: headers, media type and body as the response object says."""
    for name, declared in response.get("headers", {}).items():
        header = resolve(declared)
        value = headers.get(name)
        if value is None:
            assert not header.get("required"), f"{status}: required header {name} missing"
            continue
        assert not schema_errors(header["schema"], value), (name, value, schema_errors(header["schema"], value))
    content = response.get("content")
    if not content:
        assert body == b"", f"{status}: undocumented body {body[:200]!r}"
        return
    media_type = headers.get("Content-Type", "").split(";")[0].strip()
    assert media_type in content, f"{status}: Content-Type {media_type!r}, documented {sorted(content)}"
    if method.upper() == "HEAD":
        assert body == b""
        return
    errors = schema_errors(content[media_type]["schema"], json.loads(body))
    assert not errors, (status, body[:300], errors)


async def call(
    sidecar: Sidecar, method: str, url: str, doc_path: str, token: str | None = None, **headers: str
) -> int:
    """Send one request and assert that its answer is one the document gives for it."""
    if token is not None:
        headers.update(bearer(token))
    async with sidecar.public.request(method, url, headers=headers, allow_redirects=False) as resp:
        body = await resp.read()
        documented = documented_response(method, doc_path, resp.status)
        assert_conforms(documented, method, resp.status, resp.headers, body)
        return resp.status


async def call_admin(sidecar: Sidecar, url: str, doc_path: str, headers: Mapping[str, str] | None = None) -> int:
    """One GET on the admin listener, its answer checked against the document."""
    async with sidecar.admin.get(url, headers=ADMIN if headers is None else headers, allow_redirects=False) as resp:
        body = await resp.read()
        documented = documented_response("GET", doc_path, resp.status)
        assert_conforms(documented, "GET", resp.status, resp.headers, body)
        return resp.status


async def call_unrouted(sidecar: Sidecar, method: str, url: str, component: str, expected: int) -> None:
    """A request the listener does not serve answers the listener-wide response ``component``."""
    async with sidecar.public.request(method, url, allow_redirects=False) as resp:
        assert resp.status == expected
        body = await resp.read()
        assert_conforms(resolve(DOCUMENT["components"]["responses"][component]), method, resp.status, resp.headers, body)


async def session_of(sidecar: Sidecar, token: str, **headers: str) -> str:
    """Use ``token`` once at the check (auto registration); its session id."""
    async with sidecar.public.get("/introspect", headers={**bearer(token), **headers}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Auth-Session"]


# --------------------------------------------------------------------- the document itself


def test_document_is_valid_openapi_3_1() -> None:
    """The document validates against the OpenAPI 3.1 meta-schema."""
    assert DOCUMENT["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(DOCUMENT).validate()


def test_document_is_plain_json_and_every_reference_resolves() -> None:
    """The document survives a JSON round trip and every $ref in it names an existing component."""
    assert json.loads(json.dumps(DOCUMENT)) == DOCUMENT
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOCUMENT)
    assert refs
    for ref in refs:
        resolve({"$ref": ref})


async def test_every_route_is_documented_and_every_documented_operation_is_routed(tmp_path: Path) -> None:
    """The router of create_app and the document's paths describe the same operations, method by method."""
    settings = settings_for(tmp_path)
    async with open_services(settings) as services:
        routed = routed_operations(create_app(settings, services))
        admin_routed = routed_operations(create_admin_app(settings, services))
    documented = documented_operations()
    assert routed - documented == set(), "routes missing from the document"
    assert documented - routed == set(), "documented operations that are not routed"
    admin = documented_operations(admin=True)
    assert admin == {("get", "/admin/v1/users/{}/events")}
    assert admin <= admin_routed, "documented admin operations that the admin listener does not route"
    assert {m for m, p in documented if p == "/introspect"} == set(CHECK_METHODS) == set(HTTP_METHODS)


def test_every_operation_has_an_id_a_summary_and_security_stated() -> None:
    """Each operation has a unique operationId, a summary and an explicit security requirement."""
    operations = [
        op for item in DOCUMENT["paths"].values() for method, op in item.items() if method in HTTP_METHODS
    ]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    for op in operations:
        assert op["summary"]
        assert op["security"] in ([], [{"bearer": []}, {"cookie": []}], [{"adminKey": []}]), op["operationId"]


async def test_document_is_served_at_its_path_with_and_without_trailing_slash(sidecar: Sidecar) -> None:
    """GET /api/v1/openapi.json (and with a trailing slash) answers the document as JSON, without a token."""
    for url in (PATH, PATH + "/"):
        async with sidecar.public.get(url, allow_redirects=False) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert await resp.json() == DOCUMENT
            assert_conforms(documented_response("GET", PATH, 200), "GET", 200, resp.headers, await resp.read())


# --------------------------------------------------------------------- real answers match it


async def test_check_answers_conform_for_every_method_and_sub_path(sidecar: Sidecar) -> None:
    """The check's 200 and 401, for every method with and without a sub-path, are as documented."""
    token = mint("alice")
    for method in CHECK_METHODS:
        for url, doc_path in (("/introspect", "/introspect"), ("/introspect/app/v1/x?y=1", "/introspect/{tail}")):
            assert await call(sidecar, method, url, doc_path, token) == 200
            assert await call(sidecar, method, url, doc_path) == 401
            assert await call(sidecar, method, url, doc_path, "not.a.token") == 401
            assert await call(sidecar, method, url, doc_path, token, **{"X-Auth-User": "mallory"}) == 200


async def test_check_overload_answer_conforms(tmp_path: Path, start_sidecar: Any) -> None:
    """The check's 503 past server.max_concurrent_checks is as documented."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, server={"max_concurrent_checks": 1}))
    gate = asyncio.Event()
    real_check = sidecar.services.sessions.check

    async def held_check(*args: Any, **kwargs: Any) -> str:
        await gate.wait()
        return await real_check(*args, **kwargs)

    sidecar.services.sessions.check = held_check  # type: ignore[method-assign]
    held = asyncio.create_task(sidecar.check(mint("alice")))
    await asyncio.sleep(0.2)
    try:
        assert await call(sidecar, "GET", "/introspect", "/introspect", mint("alice")) == 503
    finally:
        gate.set()
    assert await held == 200


async def test_sessions_api_answers_conform(sidecar: Sidecar) -> None:
    """200, 204, 400, 401 and 404 of every sessions operation, with and without trailing slash, are as documented."""
    token = mint("alice")
    mine = await session_of(sidecar, token, **{"User-Agent": CHROME_WINDOWS})
    other = await session_of(sidecar, mint("alice"), **{"User-Agent": "curl/8.5.0"})
    bobs = await session_of(sidecar, mint("bob"))
    listed, one = "/api/v1/sessions/", "/api/v1/sessions/{id}/"

    for url in ("/api/v1/sessions/", "/api/v1/sessions"):
        assert await call(sidecar, "GET", url, listed, token) == 200
        assert await call(sidecar, "GET", url, listed) == 401
        assert await call(sidecar, "DELETE", url, listed, "not.a.token") == 401
    for url in (f"/api/v1/sessions/{mine}/", f"/api/v1/sessions/{other}", f"/api/v1/sessions/{other.upper()}/"):
        assert await call(sidecar, "GET", url, one, token) == 200
    for method in ("GET", "DELETE"):
        for bad in ("abc", "' OR '1'='1", "%00", "%C3%A9", "x" * 1000, f"{mine}x"):
            assert await call(sidecar, method, f"/api/v1/sessions/{bad}/", one, token) == 400
        for absent in (UNKNOWN_ID, bobs):
            assert await call(sidecar, method, f"/api/v1/sessions/{absent}/", one, token) == 404
        assert await call(sidecar, method, f"/api/v1/sessions/{mine}/", one) == 401
    assert await call(sidecar, "DELETE", f"/api/v1/sessions/{other}/", one, token) == 204
    assert await call(sidecar, "DELETE", f"/api/v1/sessions/{other}", one, token) == 204  # idempotent
    assert await call(sidecar, "GET", f"/api/v1/sessions/{other}/", one, token) == 404
    assert await call(sidecar, "DELETE", listed, listed, token) == 204
    assert await call(sidecar, "DELETE", f"/api/v1/sessions/{mine}/", one, token) == 204
    assert await call(sidecar, "GET", listed, listed, token) == 401  # my own session is gone


async def test_cross_site_cookie_deletes_answer_conform(tmp_path: Path, start_sidecar: Any) -> None:
    """The 403 of a cross-site DELETE with the cookie credential, on both DELETE operations, is as documented."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, jwt={"cookie_name": "at"}))
    token = mint("alice")
    mine = await session_of(sidecar, token)
    cookie = {"Cookie": f"at={token}", "Origin": "https://evil.example"}
    assert await call(sidecar, "DELETE", "/api/v1/sessions/", "/api/v1/sessions/", **cookie) == 403
    assert await call(sidecar, "DELETE", f"/api/v1/sessions/{mine}/", "/api/v1/sessions/{id}/", **cookie) == 403
    assert await call(sidecar, "GET", "/api/v1/sessions/", "/api/v1/sessions/", **cookie) == 200
    assert await call(sidecar, "GET", "/introspect", "/introspect", Cookie=f"at={token}") == 200


async def test_rate_limited_answers_conform(tmp_path: Path, start_sidecar: Any) -> None:
    """The sessions API's 429 past server.api_rate_limit_per_minute is as documented, for every operation."""
    sidecar: Sidecar = await start_sidecar(settings_for(tmp_path, server={"api_rate_limit_per_minute": 1}))
    token = mint("alice")
    assert await call(sidecar, "GET", "/api/v1/sessions/", "/api/v1/sessions/", token) == 200
    for method in ("GET", "DELETE"):
        assert await call(sidecar, method, "/api/v1/sessions/", "/api/v1/sessions/", token) == 429
        assert await call(sidecar, method, f"/api/v1/sessions/{UNKNOWN_ID}/", "/api/v1/sessions/{id}/", token) == 429


async def test_store_unavailable_answers_conform(sidecar: Sidecar) -> None:
    """The sessions API's 503 and /readyz's 503, with the store gone, are as documented."""
    token = mint("alice")
    mine = await session_of(sidecar, token)
    assert await call(sidecar, "GET", "/readyz", "/readyz") == 200
    await sidecar.services.store.close()
    assert await call(sidecar, "GET", "/api/v1/sessions/", "/api/v1/sessions/", token) == 503
    assert await call(sidecar, "DELETE", "/api/v1/sessions/", "/api/v1/sessions/", token) == 503
    assert await call(sidecar, "GET", f"/api/v1/sessions/{mine}/", "/api/v1/sessions/{id}/", token) == 503
    assert await call(sidecar, "DELETE", f"/api/v1/sessions/{mine}/", "/api/v1/sessions/{id}/", token) == 503
    assert await call(sidecar, "GET", "/readyz", "/readyz") == 503
    assert await call(sidecar, "HEAD", "/readyz", "/readyz") == 503


async def test_health_answers_conform(sidecar: Sidecar) -> None:
    """/healthz and /readyz answer GET and HEAD as documented, without a token."""
    for method in ("GET", "HEAD"):
        assert await call(sidecar, method, "/healthz", "/healthz") == 200
        assert await call(sidecar, method, "/readyz", "/readyz") == 200


async def test_listener_wide_errors_conform(sidecar: Sidecar) -> None:
    """An unknown path answers the documented NotFound, a sessions path with another method MethodNotAllowed."""
    await call_unrouted(sidecar, "GET", "/nope", "NotFound", 404)
    await call_unrouted(sidecar, "GET", "/api/v2/sessions/", "NotFound", 404)
    for method in ("POST", "PUT", "PATCH", "HEAD"):
        await call_unrouted(sidecar, method, "/api/v1/sessions/", "MethodNotAllowed", 405)
        await call_unrouted(sidecar, method, f"/api/v1/sessions/{UNKNOWN_ID}/", "MethodNotAllowed", 405)
    await call_unrouted(sidecar, "POST", PATH, "MethodNotAllowed", 405)


async def test_paged_listing_answers_conform(sidecar: Sidecar) -> None:
    """The listing's pages (next a cursor, then null) and its 400s for a bad limit or cursor are as documented."""
    token = mint("alice")
    for _ in range(3):
        await session_of(sidecar, mint("alice"))
    await session_of(sidecar, token)
    listed = "/api/v1/sessions/"
    assert await call(sidecar, "GET", "/api/v1/sessions/?limit=2", listed, token) == 200
    async with sidecar.public.get("/api/v1/sessions/?limit=2", headers=bearer(token)) as resp:
        cursor = (await resp.json())["next"]
    assert isinstance(cursor, str)
    assert await call(sidecar, "GET", f"/api/v1/sessions/?limit=2&before={cursor}", listed, token) == 200
    for query in ("?limit=0", "?limit=1001", "?limit=x", "?before=%21", "?before=WzEsMl0", "?limit=1&limit=1"):
        assert await call(sidecar, "GET", f"/api/v1/sessions/{query}", listed, token) == 400
    # What the document says about the parameters matches what the API accepts.
    parameters = {p["name"]: p for p in DOCUMENT["paths"][listed]["get"]["parameters"]}
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert not schema_errors(parameters["before"]["schema"], cursor)


async def test_listing_with_session_policies_conforms(tmp_path: Path, start_sidecar: Any) -> None:
    """With the idle and lifetime policies on, listed sessions carry idle_expires_at and
    lifetime_expires_at, and the answers still conform to the document."""
    settings = settings_for(tmp_path, sessions={"idle_timeout_seconds": 600, "max_lifetime_seconds": 86400})
    sidecar = await start_sidecar(settings)
    token = mint("alice")
    mine = await session_of(sidecar, token)
    assert await call(sidecar, "GET", "/api/v1/sessions/", "/api/v1/sessions/", token) == 200
    assert await call(sidecar, "GET", f"/api/v1/sessions/{mine}/", "/api/v1/sessions/{id}/", token) == 200
    listed = (await sidecar.sessions(token))[0]
    assert {"idle_expires_at", "lifetime_expires_at"} <= listed.keys()
    assert "idle_expires_at" in DOCUMENT["components"]["schemas"]["Session"]["properties"]


async def test_history_answers_conform(sidecar: Sidecar) -> None:
    """The history's pages and 400/401, and the admin events listing's 200/400/401, are as documented."""
    token = mint("alice")
    mine = await session_of(sidecar, token, **{"User-Agent": CHROME_WINDOWS})
    other = await session_of(sidecar, mint("alice"), **{"User-Agent": "curl/8.5.0"})
    await sidecar.revoke(token, other)
    async with sidecar.public.delete("/api/v1/sessions/", headers=bearer(token)) as resp:
        assert resp.status == 204
    history = "/api/v1/sessions/history/"
    for url in (history, "/api/v1/sessions/history", history + "?limit=1"):
        assert await call(sidecar, "GET", url, history, token) == 200
    async with sidecar.public.get(history + "?limit=2", headers=bearer(token)) as resp:
        cursor = (await resp.json())["next"]
    assert isinstance(cursor, str)
    assert await call(sidecar, "GET", f"{history}?limit=2&before={cursor}", history, token) == 200
    for query in ("?limit=0", "?before=%21", "?before=WzEsMl0"):
        assert await call(sidecar, "GET", history + query, history, token) == 400
    assert await call(sidecar, "GET", history, history) == 401
    events = "/admin/v1/users/{user_id}/events"
    assert await call_admin(sidecar, "/admin/v1/users/alice/events", events) == 200
    assert await call_admin(sidecar, "/admin/v1/users/alice/events/?limit=1", events) == 200
    assert await call_admin(sidecar, "/admin/v1/users/alice/events?limit=0", events) == 400
    assert await call_admin(sidecar, "/admin/v1/users/alice/events", events, {}) == 401
    assert mine
