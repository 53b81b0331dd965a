"""The benchmarks run end to end on small sizes and report every figure (``--quick``).

Not a performance test: the figures of a quick run mean little; this pins that
``bench.run_all`` gets the figures it reads, all present and positive."""

from __future__ import annotations

import importlib.util

from bench import memory_bench, tracker_bench


def _has_cacofonisk() -> bool:
    return importlib.util.find_spec("cacofonisk") is not None


def test_tracker_bench_reports_rates_and_ratios() -> None:
    argv = ["--quick", "--no-write"]
    if not _has_cacofonisk():  # the bench extra is not part of `make test`
        argv.append("--no-cacofonisk")
    f = tracker_bench.main(argv)
    assert f["stream"]["events"] > 10_000
    for part in ("ours", "ours_decode_all", "split_only"):
        assert f[part]["events_per_s"] > 0, part
    assert f["ours"]["calls_per_s"] > 0
    assert f["ours"]["calls"] == f["stream"]["calls"]  # every call of the mix reported
    assert f["ours_vs_split_only"] > 0
    assert f["machine"]["cores"] >= 1 and f["machine"]["python"]
    if _has_cacofonisk():
        assert f["cacofonisk"]["events_per_s"] > 0
        assert f["cacofonisk"]["calls"] > 0
        assert f["ours_vs_cacofonisk"] > 0


def test_memory_bench_reports_memory_per_call_and_comes_back_down() -> None:
    f = memory_bench.main(["--quick", "--no-write"])
    assert f["active_calls"] > 100
    assert f["bytes_per_active_call"] > 0
    assert 0 < f["rss_before"] <= f["rss_peak"]
    assert f["rss_after"] > 0
    assert f["finished_calls"] >= 600
    assert f["active_after"] == 0
    assert all(n == 0 for n in f["tables_after"].values())
