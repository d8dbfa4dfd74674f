"""Every fuzz target, briefly: each runs 20,000 inputs in its own process and keeps its contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fuzz.__main__ import TARGETS

RUNS = 20_000


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_keeps_its_contract(target: str, tmp_path: Path) -> None:
    """The target runs its seeds and 20,000 generated inputs with no crash and no broken contract."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", target, "--runs", str(RUNS), "--work", str(tmp_path), "--", "-max_total_time=60"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False,
    )
    output = done.stdout + done.stderr
    tail = "\n".join(output.splitlines()[-40:])
    assert done.returncode == 0, f"{target} failed (exit {done.returncode}); reproducers in {tmp_path}:\n{tail}"
    assert "DONE" in output, f"{target} did not finish its runs:\n{tail}"
    assert not list(tmp_path.glob("crash-*")), tail
