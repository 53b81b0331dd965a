"""The listener's append-only spool on disk (worker/spool.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from worker.spool import CURSOR, REJECTED, Spool


def items(start: int, n: int) -> list[dict[str, int]]:
    return [{"n": i} for i in range(start, start + n)]


def drain(spool: Spool, batch: int = 7) -> list[int]:
    out: list[int] = []
    while True:
        got, pos = spool.read(batch)
        if not got and pos == spool.cursor:
            return out
        out += [it["n"] for it in got]
        spool.commit(pos, len(got))


def test_items_come_back_in_order_and_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(items(0, 10))
    spool.append(items(10, 5))
    assert spool.pending == 15
    assert drain(spool) == list(range(15))
    assert spool.pending == 0
    assert spool.read(10)[0] == []


def test_a_reopened_spool_resumes_after_what_was_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(items(0, 10))
    got, pos = spool.read(4)
    spool.commit(pos, len(got))
    got, _ = spool.read(3)  # read but never committed: a crash before Redis took them
    spool.close()

    again = Spool(tmp_path)
    assert again.pending == 6
    assert drain(again) == list(range(4, 10))


def test_a_line_torn_by_a_crash_is_set_aside_and_the_rest_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(items(0, 3))
    spool.close()
    segment = sorted(tmp_path.glob("*.jsonl"))[0]
    with open(segment, "ab") as f:
        f.write(b'{"n": 3, "half')  # no newline: the write never finished

    again = Spool(tmp_path)
    assert drain(again) == [0, 1, 2]
    rejected = [json.loads(x) for x in (tmp_path / REJECTED).read_text().splitlines()]
    assert rejected[0]["line"] == '{"n": 3, "half'
    assert "torn" in rejected[0]["why"]
    again.append(items(4, 1))  # and writing goes on after the cut
    assert drain(again) == [4]


def test_unreadable_lines_are_set_aside_not_lost_and_do_not_block_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(items(0, 2))
    spool.close()
    segment = sorted(tmp_path.glob("*.jsonl"))[0]
    with open(segment, "ab") as f:
        f.write(b"not json at all\n[1, 2]\n")
    again = Spool(tmp_path)
    again.append(items(2, 1))
    assert drain(again) == [0, 1, 2]
    assert again.rejected == 2
    assert again.pending == 0
    why = [json.loads(x)["line"] for x in (tmp_path / REJECTED).read_text().splitlines()]
    assert why == ["not json at all", "[1, 2]"]


def test_fully_handed_over_segments_are_deleted_and_order_holds_across_them(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, rotate_bytes=200)
    seen: list[int] = []
    for round_ in range(10):
        spool.append(items(round_ * 5, 5))
        seen += drain(spool, batch=3)
    assert seen == list(range(50))
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    assert spool.pending == 0


def test_a_spool_left_in_several_segments_is_replayed_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path, rotate_bytes=50)
    spool.append(items(0, 4))
    got, pos = spool.read(4)
    spool.commit(pos, len(got))  # rotates: segment 1 gone, 2 active
    spool.append(items(4, 3))
    spool.close()
    again = Spool(tmp_path, rotate_bytes=50)
    assert again.pending == 3
    assert drain(again) == [4, 5, 6]


def test_a_lost_cursor_means_everything_is_handed_over_again_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(items(0, 3))
    got, pos = spool.read(2)
    spool.commit(pos, len(got))
    spool.close()
    (tmp_path / "cursor.json").write_text("{garbage")
    assert drain(Spool(tmp_path)) == [0, 1, 2]


def test_the_spool_is_0700_and_every_file_in_it_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        directory = tmp_path / "spool"
        directory.mkdir(mode=0o755)
        (directory / CURSOR).write_text('{"segment": 1, "offset": 0}')  # left by an old version
        spool = Spool(directory, rotate_bytes=64)
        spool.append(items(0, 5))
        spool.reject_line(b"not json", "a test")
        assert drain(spool) == list(range(5))  # commits, rotates: new segment and cursor
        spool.append(items(5, 1))
        spool.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert {CURSOR, REJECTED} < set(modes) and set(modes.values()) == {0o600}, modes
