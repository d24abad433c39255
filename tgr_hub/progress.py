"""Progress bars that suit where the output goes: live bars on a terminal, a few plain lines in a log.

Every long loop of tgr-hub makes its bar with :func:`progress_bar` (same arguments as ``tqdm``).
On a terminal that is a plain ``tqdm`` bar, redrawn in place. When stderr is not a terminal (CI,
``nohup``, a cluster job, a file redirect), carriage-return redraws would fill the log with
thousands of bar updates, so the bar becomes a :class:`LineProgress` instead: it writes nothing
itself and logs (``logging``, logger ``tgr_hub.progress``, level INFO) a few whole lines:

- a line each time another 10% of the total is done, at most one every
  :data:`MIN_SECONDS_BETWEEN_LINES` seconds (a fast bar gives no intermediate lines);
- a line every :data:`HEARTBEAT_SECONDS` seconds while a slow bar moves (also for unknown totals);
- one summary line when the bar closes (count, time, rate and its postfix).

Nested bars (``leave=False``, e.g. the steps of one teacher) only give the heartbeat lines, so
a log shows the stages and not every inner loop. In a Jupyter notebook ``tqdm.auto`` keeps
its widget. (``huggingface_hub``'s download bars already switch themselves off when stderr is
not a terminal.)
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.autonotebook import tqdm as _notebook_or_std_tqdm
from tqdm.std import tqdm as _std_tqdm

__all__ = ["LineProgress", "progress_bar", "progress_class", "HEARTBEAT_SECONDS", "MIN_SECONDS_BETWEEN_LINES"]

logger = logging.getLogger(__name__)

#: fraction of the total between two progress lines of a bar
LINE_FRACTION = 0.1
#: a bar's 10% lines are at least this many seconds apart (a short bar logs only its summary)
MIN_SECONDS_BETWEEN_LINES = 5.0
#: a bar that moves logs at least once in this many seconds, whatever its fraction
HEARTBEAT_SECONDS = 30.0

_PLAIN = "{desc}: {percentage:.0f}% ({n_fmt}/{total_fmt}) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_PLAIN_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
_SUMMARY = "{desc}: {n_fmt}/{total_fmt} done in {elapsed} ({rate_fmt}{postfix})"
_SUMMARY_NO_TOTAL = "{desc}: {n_fmt} done in {elapsed} ({rate_fmt}{postfix})"


class LineProgress(_std_tqdm):
    """A ``tqdm`` that logs a few whole lines instead of redrawing a bar (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # gui=True: tqdm then makes no status printer and writes nothing to the file; display() logs
        kwargs["gui"] = True
        kwargs["dynamic_ncols"] = False
        super().__init__(*args, **kwargs)
        if not self.disable:
            self._line_t = self.start_t
            self._line_n = self.n

    def _leaves(self) -> bool:
        return bool(self.leave) if self.leave is not None else abs(getattr(self, "pos", 0)) == 0

    def _text(self, summary: bool) -> str:
        info = dict(self.format_dict)
        info["prefix"] = info.get("prefix") or "progress"
        if summary:
            info["rate"] = None  # format_meter then gives the average rate over the whole run
        has_total = bool(info.get("total"))
        info["bar_format"] = (
            (_SUMMARY if has_total else _SUMMARY_NO_TOTAL) if summary else (_PLAIN if has_total else _PLAIN_NO_TOTAL)
        )
        # tqdm pads the rate to a fixed width for a redrawn bar; a log line needs no padding
        return re.sub(r", {2,}", ", ", re.sub(r"([(\[]) +", r"\1", self.format_meter(**info)))

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Log one line when another 10% is done (not sooner than 5 s after the last) or 30 s passed."""
        if self.disable or msg is not None:  # msg is tqdm's own clearing; a log has nothing to clear
            return False
        now = self._time()
        since = now - self._line_t
        total = self.total
        milestone = (
            bool(total)
            and self._leaves()
            and self.n < total
            and (int(self.n / (total * LINE_FRACTION)) > int(self._line_n / (total * LINE_FRACTION)))
        )
        moved = self.n != self._line_n
        if (milestone and since >= MIN_SECONDS_BETWEEN_LINES) or (moved and since >= HEARTBEAT_SECONDS):
            logger.info("%s", self._text(summary=False))
            self._line_t, self._line_n = now, self.n
            return True
        return False

    def clear(self, nolock: bool = False) -> None:
        """Nothing was drawn, so nothing is cleared (``tqdm.write`` calls this on every bar)."""

    def close(self) -> None:
        """Log the summary line (for bars that stay, ``leave`` True) and close."""
        if not getattr(self, "disable", True) and self._leaves():
            logger.info("%s", self._text(summary=True))
        super().close()


def _is_terminal(stream: TextIO | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def progress_class(file: TextIO | None = None) -> type[_std_tqdm]:
    """The bar class for output to ``file`` (default stderr).

    Returns:
        ``tqdm.auto.tqdm`` in a notebook, the plain ``tqdm`` on a terminal, :class:`LineProgress` otherwise.
    """
    if _notebook_or_std_tqdm is not _std_tqdm:  # a notebook front end: its widget writes no carriage returns
        return _auto_tqdm
    return _std_tqdm if _is_terminal(file if file is not None else sys.stderr) else LineProgress


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> _std_tqdm:
    """A progress bar, like ``tqdm(iterable, **kwargs)``, that suits stderr (see the module docstring)."""
    return progress_class(kwargs.get("file"))(iterable, **kwargs)
