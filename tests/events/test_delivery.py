"""Webhook delivery in-process: a real SQLite store with its outbox, a real aiohttp receiver
on loopback that verifies each request with the ``standardwebhooks`` library, and the
delivery loop the Celery task runs."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from sidecar.config import EventSettings, Settings, from_mapping
from sidecar.events.delivery import backoff, deliver_due, signed_headers
from sidecar.events.models import Delivery, options_from_settings
from sidecar.sessions.models import USER
from sidecar.sessions.sqlite import SqliteStore
from tests.events.receiver import Receiver
from tests.support.configs import sidecar_config, sqlite_url
from tests.support.sessions import opened, stored_session

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NOW = 1_700_000_000.0


def settings_with(tmp_path: Path, url: str, **hook: Any) -> Settings:
    raw = sidecar_config(None, sqlite_url(tmp_path / "sidecar.db"))
    raw["webhooks"] = [{"url": url, "secret_env": "HOOK_SECRET", **hook}]
    raw["events"] = {"retry_base_seconds": 10, "retry_max_seconds": 100}
    return from_mapping(raw, environ={"HOOK_SECRET": SECRET}, base_dir=tmp_path)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver(SECRET)
    server = TestServer(r.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield r, str(server.make_url("/hooks/sidecar"))
    finally:
        await server.close()


def test_signature_matches_the_specs_example() -> None:
    """The signing used is the Standard Webhooks one: the spec's documented example vector."""
    secret = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    d = Delivery(1, "msg_p5jXN8AQM9LWM0D4loKWxJek", "http://x/", '{"test": 2432232314}', 1, "c")
    hook: Any = type("Hook", (), {"secret": secret})()
    headers = signed_headers(hook, d, 1614265330)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek" and headers["webhook-timestamp"] == "1614265330"
    assert Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, tz=UTC), '{"test": 2432232314}'
    ) == headers["webhook-signature"]


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    """The wait after n failures lies in [d/2, d] for d = base * 2^(n-1), capped at the maximum."""
    events = EventSettings(retry_base_seconds=5, retry_max_seconds=60)
    assert [backoff(n, events, lambda: 0.0) for n in (1, 2, 3, 4, 5, 9)] == [2.5, 5, 10, 20, 30, 30]
    assert [backoff(n, events, lambda: 1.0) for n in (1, 2, 3, 4, 5, 9)] == [5, 10, 20, 40, 60, 60]


async def test_events_arrive_signed_with_the_spec_body(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """A created and a revoked session reach the receiver as {type, timestamp, data}, verified by standardwebhooks."""
    r, url = receiver
    settings = settings_with(tmp_path, url)
    async with opened(SqliteStore(tmp_path / "sidecar.db", events=options_from_settings(settings))) as store:
        s = stored_session(created=NOW)
        await store.insert(s)
        await store.revoke(s.id, NOW + 1, reason=USER, actor="user:alice")
        async with aiohttp.ClientSession() as http:
            report = await deliver_due(store, settings, http, budget_seconds=10)
        assert report.delivered == 2
        bodies = [x.body for x in r.accepted]
        assert [b["type"] for b in bodies if b] == ["session.created", "session.revoked"]
        assert all(b is not None and set(b) == {"type", "timestamp", "data"} for b in bodies)
        events = await store.list_events("alice", limit=10)
        assert sorted(x.webhook_id for x in r.accepted) == sorted(e.id for e in events)
        async with aiohttp.ClientSession() as http:
            assert (await deliver_due(store, settings, http, budget_seconds=10)).delivered == 0


async def test_a_failure_is_retried_later_with_the_same_id(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """A 500 is retried after the back-off, not before, with the same webhook-id, and then delivered."""
    r, url = receiver
    r.statuses = [500, 200]
    settings = settings_with(tmp_path, url, events=["session.created"])
    clock = Clock()
    async with opened(SqliteStore(tmp_path / "sidecar.db", events=options_from_settings(settings))) as store:
        await store.insert(stored_session(created=NOW))
        async with aiohttp.ClientSession() as http:
            assert (await deliver_due(store, settings, http, budget_seconds=10, clock=clock)).retried == 1
            clock.now += 4.9  # the first retry waits 5-10 s
            assert (await deliver_due(store, settings, http, budget_seconds=10, clock=clock)).retried == 0
            clock.now += 5.2
            assert (await deliver_due(store, settings, http, budget_seconds=10, clock=clock)).delivered == 1
        assert [x.status for x in r.received] == [500, 200]
        assert r.received[0].webhook_id == r.received[1].webhook_id


async def test_after_max_attempts_the_event_is_dead_and_counted(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """A receiver that always fails gets max_attempts tries, then the row is dead and counted as such."""
    r, url = receiver
    r.statuses = [503]
    settings = settings_with(tmp_path, url, max_attempts=3, events=["session.created"])
    clock = Clock()
    async with opened(SqliteStore(tmp_path / "sidecar.db", events=options_from_settings(settings))) as store:
        await store.insert(stored_session(created=NOW))
        dead = 0
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                dead += (await deliver_due(store, settings, http, budget_seconds=10, clock=clock)).dead
                clock.now += 1000
        assert len(r.received) == 3 and dead == 1
        counts = await store.outbox_counts()
        assert (counts.pending, counts.dead) == (0, 1)


async def test_a_wrong_secret_never_verifies(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """Signed with another secret, the receiver's standardwebhooks refuses the request (and it is retried)."""
    r, url = receiver
    r.secret = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
    settings = settings_with(tmp_path, url, events=["session.created"])
    async with opened(SqliteStore(tmp_path / "sidecar.db", events=options_from_settings(settings))) as store:
        await store.insert(stored_session(created=NOW))
        async with aiohttp.ClientSession() as http:
            report = await deliver_due(store, settings, http, budget_seconds=10)
    assert report.retried == 1 and r.received[0].body is None and r.received[0].status == 401


async def test_a_receiver_that_cannot_be_reached_is_retried(tmp_path: Path) -> None:
    """Connection refused is a failed attempt, retried, never an exception out of the run."""
    from tests.support.ports import free_port

    settings = settings_with(tmp_path, f"http://127.0.0.1:{free_port()}/", events=["session.created"])
    async with opened(SqliteStore(tmp_path / "sidecar.db", events=options_from_settings(settings))) as store:
        await store.insert(stored_session(created=NOW))
        async with aiohttp.ClientSession() as http:
            report = await deliver_due(store, settings, http, budget_seconds=10)
        assert report.retried == 1
        assert (await store.outbox_counts()).pending == 1
    assert json.dumps(report.as_dict())


async def test_the_sidecar_counts_pending_and_dead_rows_in_its_metrics(tmp_path: Path) -> None:
    """sidecar_webhook_outbox{state} shows the store's pending and dead rows (what any worker left)."""
    from sidecar.web.services import count_sessions, open_services

    settings = settings_with(tmp_path, "http://127.0.0.1:9/", max_attempts=1, events=["session.created"])
    async with open_services(settings) as services:
        store = services.store
        await store.insert(stored_session(created=NOW))
        await store.insert(stored_session(user="bob", created=NOW))
        [d, _] = await store.claim_deliveries(NOW + 1, limit=10, lease_seconds=60, claim="w")
        await store.delivery_failed(d.id, "w", NOW + 2, retry_at=None, error="HTTP 500")
        await count_sessions(services)
        text = services.metrics.render().decode()
    assert 'sidecar_webhook_outbox{state="dead"} 1.0' in text
    assert 'sidecar_webhook_outbox{state="pending"} 1.0' in text
