"""``sidecar serve`` as a real process on free loopback ports, with the harness's config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.configs import Listeners, Section, sqlite_url, write_sidecar_config
from tests.support.processes import Service, run_sidecar_file


@dataclass
class SidecarProcess:
    """One running ``sidecar serve``: its listeners, its config file and the process."""

    name: str
    listeners: Listeners
    config: Path
    service: Service

    @property
    def port(self) -> int:
        return self.listeners.public

    @property
    def admin_port(self) -> int:
        return self.listeners.admin

    @property
    def url(self) -> str:
        return self.listeners.url

    @property
    def admin_url(self) -> str:
        return self.listeners.admin_url

    @property
    def check_port(self) -> int:
        return self.listeners.check

    @property
    def check_url(self) -> str:
        return self.listeners.check_url

    @property
    def pid(self) -> int:
        return self.service.pid


@contextmanager
def run_sidecar(
    workdir: Path,
    storage_url: str | None = None,
    *,
    name: str = "sidecar",
    listeners: Listeners | None = None,
    env: Mapping[str, str] | None = None,
    **sections: Section,
) -> Iterator[SidecarProcess]:
    """``sidecar serve`` with ``sidecar_config(listeners, storage_url, **sections)`` written to
    ``workdir/<name>.toml``; free ports unless ``listeners`` is given, SQLite
    ``workdir/<name>.db`` unless ``storage_url`` is. Ready once it says so; always stopped."""
    listeners = listeners or Listeners.free()
    url = storage_url or sqlite_url(workdir / f"{name}.db")
    config = write_sidecar_config(workdir / f"{name}.toml", listeners, url, **sections)
    with run_sidecar_file(workdir, config, listeners.public, name=name, env=env) as service:
        yield SidecarProcess(name, listeners, config, service)
