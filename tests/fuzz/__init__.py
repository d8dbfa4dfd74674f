"""Coverage-guided fuzz targets (atheris/libFuzzer), one module per parser an attacker reaches.

Each ``fuzz_<target>.py`` asserts its parser's contract on every input, not only that it
does not crash; ``python -m tests.fuzz TARGET --seconds N`` runs one (tests/README.md,
"Fuzzing"). Targets run in their own processes: atheris instruments the ``sidecar``
modules as it imports them, which must not happen inside pytest.
"""
