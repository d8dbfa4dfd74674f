"""The one sidecar configuration every test and benchmark starts from.

``sidecar_config`` builds it as the parsed TOML document; ``settings_for`` validates it
into Settings (in-process tests), ``write_sidecar_config`` writes it as the file a real
process is started with. A listener, a section or a default that every sidecar the
harness runs should have is added in ``Listeners`` and ``sidecar_config``, nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config import Settings, from_mapping
from tests.support.ports import HOST, free_ports
from tests.support.tokens import ADMIN_KEY, SECRET

# Every client of the harness's sidecars is on loopback: only that hop is trusted.
LOOPBACK_PROXIES = ("127.0.0.1/32", "::1/128")

Section = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


@dataclass(frozen=True)
class Listeners:
    """Where one sidecar process listens: its loopback ports, one per listener."""

    public: int
    admin: int
    check: int

    @classmethod
    def free(cls) -> Listeners:
        """A free loopback port for each listener."""
        public, admin, check = free_ports(3)
        return cls(public, admin, check)

    @property
    def check_url(self) -> str:
        return f"http://{HOST}:{self.check}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.public}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin}"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def sidecar_config(listeners: Listeners | None, storage_url: str, **sections: Section) -> dict[str, Any]:
    """The test configuration: HS256 with SECRET, leeway 0, the admin key, ``storage_url``.

    ``listeners`` puts each listener on its port on loopback (None: in-process, where the
    test server picks the ports). Keyword arguments override or extend whole sections'
    keys, e.g. ``jwt={"user_claim": "user_id"}``; a key set to None is dropped (back to
    the sidecar's default), a section set to None too; a list is an array of tables,
    e.g. ``routes=[{"path": "/login", "policy": "public"}]``.
    """
    raw: dict[str, Any] = {
        "server": {"trusted_proxies": list(LOOPBACK_PROXIES)},
        "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway_seconds": 0},
        "storage": {"url": storage_url},
        "admin": {"api_keys": [ADMIN_KEY]},
        "sessions": {"last_seen_flush_seconds": 0.2},
    }
    if listeners is not None:
        raw["server"] = {"host": HOST, "port": listeners.public, **raw["server"]}
        raw["admin"] = {"host": HOST, "port": listeners.admin, **raw["admin"]}
        raw["check"] = {"host": HOST, "port": listeners.check}
    for name, values in sections.items():
        if values is None:
            raw.pop(name, None)
        elif isinstance(values, Mapping):
            section = raw.setdefault(name, {})
            section.update(values)
            for key in [k for k, v in section.items() if v is None]:
                del section[key]
        else:
            raw[name] = [dict(table) for table in values]  # an array of tables
    return raw


def settings_for(tmp_path: Path, **sections: Section) -> Settings:
    """Settings for an in-process test: ``sidecar_config`` with SQLite in ``tmp_path``."""
    raw = sidecar_config(None, sqlite_url(tmp_path / "sidecar.db"), **sections)
    return from_mapping(raw, environ={}, base_dir=tmp_path)


def write_sidecar_config(
    path: Path, listeners: Listeners, storage_url: str, **sections: Section
) -> Path:
    """``sidecar_config`` written as the TOML file at ``path`` (what a real process is started with)."""
    return write_toml(path, sidecar_config(listeners, storage_url, **sections))


# ---------------------------------------------------------------------------- TOML

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else json.dumps(k)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def write_toml(path: Path, document: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]]) -> Path:
    """Write ``document`` (sections; a list is an array of tables) as a TOML file."""
    lines: list[str] = []
    for name, section in document.items():
        tables = [section] if isinstance(section, Mapping) else list(section)
        header = f"[{name}]" if isinstance(section, Mapping) else f"[[{name}]]"
        for table in tables:
            lines.append(header)
            lines.extend(f"{_key(k)} = {toml_value(v)}" for k, v in table.items())
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
