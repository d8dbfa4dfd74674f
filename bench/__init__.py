"""The load harness: ``python -m bench`` measures the check path and prints ratios.

Every number comes from real processes on loopback, measured side by side in one run on
one machine (DESIGN.md section 8): a bare aiohttp handler, ``sidecar serve``, nginx and
Envoy, loaded by ``wrk``. See bench/README.md.
"""
