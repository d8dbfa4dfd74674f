"""What the fuzz targets share: the libFuzzer entry point and small helpers."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import atheris

T = TypeVar("T")

# Characters no label, header value or path may carry: controls (C0, DEL, C1), format
# characters (bidi overrides, zero-width), surrogates, line and paragraph separators.
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def unprintable(text: str) -> list[str]:
    """The characters of ``text`` in ``UNPRINTABLE`` categories."""
    return [ch for ch in text if unicodedata.category(ch) in UNPRINTABLE]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (no I/O: a verifier without JWKS) to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the coroutine suspended: it was expected to need no I/O")


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Hand ``test_one_input`` to libFuzzer with this process's command line (libFuzzer flags, corpus dirs)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def text(fdp: atheris.FuzzedDataProvider, max_chars: int, pool: list[str] | None = None) -> str:
    """A string: one of ``pool`` (when given, half the time) or fuzz text of up to ``max_chars``."""
    if pool and fdp.ConsumeBool():
        return str(fdp.PickValueInList(pool))
    return str(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, max_chars)))
