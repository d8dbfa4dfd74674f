"""The Celery app: beat schedules the cleanup, a worker runs it.

    SIDECAR_CONFIG=/etc/sidecar/config.toml celery -A sidecar.tasks worker --beat

Importing this module creates the app and reads nothing. The TOML file named by
``SIDECAR_CONFIG`` is read the first time Celery needs its configuration (when a worker or
beat starts), through ``app.add_defaults(callable)``: Celery's documented hook for lazy
configuration. So importing ``sidecar.tasks`` (a test, a linter, a sidecar that someday
sends a task) never touches the environment or a file, while the worker still gets the
broker, the queue and the schedule from the same file ``sidecar serve`` reads. A bad or
missing config stops the worker (or beat) with one ``sidecar: error: KEY: ...`` line and exit
status 2, like ``sidecar`` itself.

The tasks are thin: ``cleanup`` runs ``sidecar.cleanup.run_cleanup``, exactly what
``sidecar cleanup`` runs, which logs one line with the counts; the task returns them too.
``deliver_webhooks`` (scheduled only when ``[[webhooks]]`` are configured) runs
``sidecar.events.delivery.run_delivery``: the outbox in the store is the queue, the task
only says "now".
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

import click
from celery import Celery

from sidecar.cleanup import run_cleanup
from sidecar.config import Settings, load
from sidecar.errors import ConfigError
from sidecar.events.delivery import run_delivery

CONFIG_ENV = "SIDECAR_CONFIG"
CLEANUP_TASK = "sidecar.cleanup"
DELIVERY_TASK = "sidecar.deliver_webhooks"
EXIT_CONFIG = 2  # as ``sidecar`` itself exits on a configuration problem


class WorkerConfigError(ConfigError, click.ClickException):
    """A ``ConfigError`` that Celery's command line shows as one line and exit status 2.

    Celery first reads its configuration while click parses the worker's options, where
    any other exception would print a long traceback burying the one line that matters.
    Outside the command line it is an ordinary ``ConfigError``.
    """

    exit_code = EXIT_CONFIG

    def show(self, file: IO[Any] | None = None) -> None:
        print(f"sidecar: error: {self.message}", file=file or sys.stderr, flush=True)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Load the config named by ``SIDECAR_CONFIG``; it must name a broker."""
    env = os.environ if environ is None else environ
    path = env.get(CONFIG_ENV, "")
    if not path:
        raise ConfigError(f"{CONFIG_ENV}: not set; point it at the sidecar TOML config file")
    settings = load(path, env)
    if settings.celery.broker_url is None:
        raise ConfigError(
            "celery.broker_url: not set; the worker needs a Redis broker, "
            "e.g. redis://127.0.0.1:6379/0"
        )
    return settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings derived from the sidecar config."""
    c = settings.celery
    schedule: dict[str, Any] = {
        "sidecar-cleanup": {
            "task": CLEANUP_TASK,
            "schedule": c.cleanup_interval_seconds,
            # With beat and workers apart, a worker that was down does not run a
            # backlog of stale runs when it comes back: one fresh run is enough.
            "options": {"expires": c.cleanup_interval_seconds},
        },
    }
    if settings.webhooks and settings.events.enabled:
        interval = settings.events.delivery_interval_seconds
        # The outbox is the queue: a run that expired unrun loses nothing, the next one
        # claims what is due.
        schedule["sidecar-webhooks"] = {"task": DELIVERY_TASK, "schedule": interval, "options": {"expires": interval}}
    return {
        "broker_url": c.broker_url,
        # A broker that is down (at start or later) is retried for ever, with back-off,
        # and logged each time; the sidecar itself never talks to the broker.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "task_default_queue": c.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        # The count goes to the log (and the task-succeeded line); nobody polls for it.
        "task_ignore_result": True,
        "enable_utc": True,
        "timezone": "UTC",
        "beat_schedule": schedule,
    }


class SidecarCelery(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app whose configuration comes from ``SIDECAR_CONFIG``, read on first use."""

    def __init__(self) -> None:
        super().__init__("sidecar")
        self._sidecar_settings: Settings | None = None
        self.add_defaults(self._configuration)

    @property
    def sidecar_settings(self) -> Settings:
        if self._sidecar_settings is None:
            self._sidecar_settings = settings_from_env()
        return self._sidecar_settings

    def _configuration(self) -> dict[str, Any]:
        try:
            return celery_config(self.sidecar_settings)
        except ConfigError as e:
            raise WorkerConfigError(str(e)) from e


app = SidecarCelery()


@app.task(name=CLEANUP_TASK)  # type: ignore[untyped-decorator]
def cleanup() -> dict[str, int]:
    """Delete expired sessions and old cut-offs once; return the counts."""
    report = asyncio.run(run_cleanup(app.sidecar_settings))
    return report.as_dict()


@app.task(name=DELIVERY_TASK)  # type: ignore[untyped-decorator]
def deliver_webhooks() -> dict[str, int]:
    """Deliver the due webhook outbox rows (claimed in batches); return the counts."""
    report = asyncio.run(run_delivery(app.sidecar_settings))
    return report.as_dict()
