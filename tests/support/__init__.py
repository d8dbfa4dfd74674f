"""The one test and bench harness: ports, binaries, processes, configs, tokens, sessions.

Tests (through the fixtures in the conftest.py files) and ``bench/`` import these
modules; nothing here is a test. Each concern lives in one module:

- ``ports``: free loopback ports, a port that never answers.
- ``binaries``: where nginx, Envoy, Caddy, redis-server, PostgreSQL... are, or what to install.
- ``processes``: start a process, wait until it is ready, always stop it; ``sidecar serve``, redis-server.
- ``configs``: the one sidecar configuration builder, as Settings or as a TOML file.
- ``gateways``: the shipped gateway files with their ports rewritten.
- ``tokens``: the test secret and keys, minted tokens.
- ``sessions``: session rows, claims and stores for the store and service tests.

A harness problem (a binary missing, a process that never got ready) raises
``HarnessError``: tests/conftest.py reports it as a failure with its message only (as
``pytest.fail(..., pytrace=False)`` did), bench/ as a measurement that could not be made.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"


class HarnessError(Exception):
    """What the harness needs is missing or did not start; the message says why and what to do."""
