"""The progress bar long commands draw on stderr (``telefum demo``)."""

from __future__ import annotations

import io

from telefum.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_terminal_bar_redraws_one_line_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress(1000, "requeue", stream=out, width=10, clock=clock, tty=True)
    clock.t = 2.0
    bar.advance(500)
    assert bar.line() == "requeue [#####.....]  50% 500/1000 250/s ETA 2s"
    assert out.getvalue().startswith("\r\x1b[K") and "\n" not in out.getvalue()
    clock.t = 4.0
    bar.advance(500)
    bar.close()
    assert out.getvalue().endswith("requeue [##########] 100% 1000/1000 250/s in 4s\n")


def test_redraws_are_limited_on_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress(10_000, stream=out, clock=clock, tty=True)
    for _ in range(10_000):
        bar.advance()  # all at the same instant: one redraw, not ten thousand
    assert out.getvalue().count("\r") == 1


def test_in_a_log_file_it_writes_a_plain_line_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(None, "replay", stream=out, clock=clock, tty=False, log_every_s=5) as bar:
        for i in range(1, 13):
            clock.t = float(i)
            bar.advance(100)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # the first advance, then every 5 s, then the closing line
    assert [line.split()[1] for line in lines] == ["100", "600", "1100", "1200"]
    assert lines[-1] == "replay 1200 100/s in 12s"


def test_callback_form_takes_done_and_total() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress(label="requeue", stream=out, clock=clock, tty=False, log_every_s=0)
    clock.t = 1.0
    for done in range(1, 5):
        bar(done, 4)
    assert bar.done == 4 and bar.total == 4
    assert out.getvalue().splitlines()[-1].startswith("requeue [")
    assert "4/4" in out.getvalue().splitlines()[-1]
