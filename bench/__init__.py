"""Benchmarks (``make bench``): scripts that print figures and write them to JSON.

Not timed tests: each module has ``main(argv) -> dict`` (called by ``bench.run_all``) and
runs on its own as ``python -m bench.<name>``, writing ``bench/results-<name>.json``.
"""
