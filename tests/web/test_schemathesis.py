"""schemathesis against a live ``sidecar serve``: generated requests for every documented operation.

The sidecar is a real process on a free loopback port (HS256, SQLite in a temporary
folder, no rate limit so that the run is not cut short by 429s). schemathesis reads the
document the process serves, generates requests that fit it (positive) and that do not
(negative: missing or mangled ``Authorization``, ids that are not UUIDs...), and checks
every answer against it.

Tokens: each call gets a token minted for it, for a new session of one user, with a
fractional ``iat``. A token shared by the run would be killed by the first generated
``DELETE`` of its own session or of "all others" (whose cut-off refuses every token of
the user issued before it, and a whole-second ``iat`` minted in the same second is such a
token), and every later call would only see 401s.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sidecar.web.openapi import ADMIN_SERVER, DOCUMENT, PATH
from tests.support.sidecar import run_sidecar
from tests.support.tokens import ADMIN, bearer, mint

EXAMPLES_PER_OPERATION = 100
USER = "schemathesis"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# One test per documented operation, listed from the document itself (collecting needs no
# server). schemathesis' pytest loader for fixtures (schemathesis.pytest.from_fixture) sets
# Function._nodeid, which pytest 9.2 no longer has, so each test drives the strategies.
OPERATIONS = [
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method in item
    if method in ("get", "put", "post", "delete", "options", "head", "patch", "trace")
]


def fresh_token() -> str:
    """A token of USER for a session never seen, issued now (after any cut-off already made)."""
    return mint(USER, sid=str(uuid.uuid4()), iat=time.time())


ADMIN_URLS: dict[str, str] = {}  # the live sidecar's base URL -> its admin listener's


@pytest.fixture(scope="module")
def live_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``sidecar serve`` process on loopback (no API rate limit); its base URL."""
    with run_sidecar(tmp_path_factory.mktemp("schemathesis"), server={"api_rate_limit_per_minute": 0}) as sidecar:
        ADMIN_URLS[sidecar.url] = sidecar.admin_url
        yield sidecar.url


class FreshToken:
    """schemathesis auth provider: a token minted for each call."""

    def get(self, case: schemathesis.Case[Any], ctx: schemathesis.AuthContext) -> str:
        return fresh_token()

    def set(self, case: schemathesis.Case[Any], data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers.update(bearer(data))


@pytest.fixture(scope="module")
def api_schema(live_sidecar: str) -> Any:
    """The document as the live sidecar serves it, with FreshToken as its auth."""
    schema = schemathesis.openapi.from_url(live_sidecar + PATH)
    # refresh_interval=None: nothing is cached, get() runs for every call.
    schema.auth(refresh_interval=None)(FreshToken)
    return schema


def session_of_user(base_url: str) -> str:
    """Register one more session of USER through the check; its id."""
    url = base_url + "/introspect"
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, headers=bearer(fresh_token()))  # noqa: S310 -- checked just above
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 -- same
        session_id: str = resp.headers["X-Auth-Session"]
        return session_id


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms_under_generated_requests(
    live_sidecar: str, api_schema: Any, method: str, path: str
) -> None:
    """No generated request gets a 5xx, or a status, media type, header or body the document does not give."""
    operation = api_schema[path][method]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE, auth_storage=api_schema.auth),
        operation.as_strategy(GenerationMode.NEGATIVE, auth_storage=api_schema.auth),
    ]
    if "{id}" in path:
        # Random UUIDs only ever find nothing (404): also aim at a real session of the caller's
        # user, so that 200 and 204 (and the 404 after a DELETE) are generated too.
        known = {"id": session_of_user(live_sidecar)}
        strategies.append(
            operation.as_strategy(GenerationMode.POSITIVE, auth_storage=api_schema.auth, path_parameters=known)
        )

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,  # the examples depend on a server that lives for one run only
        # Generating a whole request takes longer than hypothesis expects of a strategy.
        suppress_health_check=[HealthCheck.too_slow],
    )
    def run(case: schemathesis.Case[Any]) -> None:
        if DOCUMENT["paths"][path].get("servers") == [ADMIN_SERVER]:
            # Described under the admin listener's server: sent there, with the admin key.
            case.call_and_validate(base_url=ADMIN_URLS[live_sidecar], headers=ADMIN, checks=CHECKS, timeout=10)
        else:
            case.call_and_validate(checks=CHECKS, timeout=10)

    run()
