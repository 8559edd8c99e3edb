"""Benchmarks of skill-router, reported in ``docs/benchmarks.md``.

Every benchmark measures the sidecar as a ratio against a baseline measured
in the same run (the development machine is shared and noisy), sends traffic
only to 127.0.0.1, and is bounded in time::

    .venv/bin/python -m bench.route_overhead   [--quick] [--json]
    .venv/bin/python -m bench.execute_overhead [--quick] [--json]
    .venv/bin/python -m bench.run_all          [--quick] [--json] [--write-docs]

``--quick`` is a smoke check of a few seconds; a full run takes well under
two minutes per benchmark.
"""
