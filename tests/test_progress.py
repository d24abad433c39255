"""Progress bars: live on a terminal, a few plain log lines otherwise (tgr_hub.progress)."""

from __future__ import annotations

import io
import logging

import pytest
import tqdm.std

from tgr_hub.progress import HEARTBEAT_SECONDS, LineProgress, progress_bar, progress_class


class _Clock:
    """A fake ``time.time`` that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(tqdm.std, "time", fake)  # tqdm reads its clock from this module name
    return fake


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tgr_hub.progress"]


def test_the_bar_class_follows_the_stream() -> None:
    assert progress_class(_Terminal()) is tqdm.std.tqdm
    assert progress_class(io.StringIO()) is LineProgress


def test_a_slow_bar_logs_every_tenth_and_a_summary_and_writes_nothing(clock: _Clock, caplog: pytest.LogCaptureFixture
                                                                      ) -> None:
    caplog.set_level(logging.INFO, logger="tgr_hub.progress")
    out = io.StringIO()
    bar = progress_bar(total=100, desc="recover", unit="task", file=out, mininterval=0)
    assert isinstance(bar, LineProgress)
    for _ in range(100):
        clock.now += 1.0  # 1 s a step: each 10% takes 10 s, more than the 5 s between lines
        bar.update(1)
        bar.set_postfix(loss=0.5)
    bar.close()
    lines = _lines(caplog)
    assert out.getvalue() == ""  # nothing at all goes to the stream, so no carriage return either
    assert len(lines) == 10, lines  # 10%, 20%, ..., 90%, then the summary
    assert [line.split(":")[1].split("%")[0].strip() for line in lines[:9]] == [str(10 * k) for k in range(1, 10)]
    assert lines[0].startswith("recover: 10% (10/100)")
    assert lines[-1].startswith("recover: 100/100 done in 01:40 (1.00task/s") and "loss=0.5" in lines[-1]
    assert all("\r" not in line and "\n" not in line for line in lines)


def test_a_fast_bar_logs_only_its_summary(clock: _Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tgr_hub.progress")
    for _ in progress_bar(range(50), desc="embed", file=io.StringIO(), mininterval=0):
        clock.now += 0.01
    assert _lines(caplog) == ["embed: 50/50 done in 00:00 (100.00it/s)"]


def test_a_nested_bar_only_logs_heartbeats(clock: _Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tgr_hub.progress")
    bar = progress_bar(total=20, desc="t00 conv4", leave=False, file=io.StringIO(), mininterval=0)
    for _ in range(20):
        clock.now += 4.0  # 80 s in all: two heartbeats (at 32 s and 64 s), no 10% lines, no summary
        bar.update(1)
    bar.close()
    lines = _lines(caplog)
    assert len(lines) == 2 and HEARTBEAT_SECONDS == 30.0, lines
    assert lines[0].startswith("t00 conv4: 40% (8/20)") and lines[1].startswith("t00 conv4: 80% (16/20)")


def test_a_disabled_bar_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tgr_hub.progress")
    for _ in progress_bar(range(5), desc="quiet", disable=True, file=io.StringIO()):
        pass
    assert _lines(caplog) == []


def test_a_terminal_keeps_its_live_bar() -> None:
    out = _Terminal()
    for _ in progress_bar(range(3), desc="live", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue() and "live: 100%" in out.getvalue()
