"""Progress bars that suit where stderr goes. On a terminal (or in a notebook): tqdm's live bar. Into a file or a
pipe (a batch job's log, `2> extract.log`, `| tee`): a live bar is a stream of carriage returns that fills the log
with one redrawn line per refresh, so there it is one plain line at most every `LOG_INTERVAL_S` seconds, and a last
line when the work ends. `enabled=False` (-q) prints nothing either way.

Every progress bar of the package comes from `progress_bar(...)`, so that this choice is made in one place."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm as auto_tqdm

LOG_INTERVAL_S = 30.0  # at most one progress line this often in a log file or a pipe

LOG_FORMAT = ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left, "
              "{rate_fmt}{postfix}")
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit}, {elapsed} elapsed, {rate_fmt}{postfix}"


def interactive(stream=None) -> bool:
    """Whether progress on `stream` (default: stderr) is seen live: a terminal, or a notebook's widget."""
    if any(cls.__module__ == "tqdm.notebook" for cls in auto_tqdm.__mro__):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a test runner's buffer, a closed stream
        return False


class LogLines(plain_tqdm):
    """A tqdm whose output is whole lines ("\\n"-ended, never "\\r"): one when `interval` seconds have passed since
    the last (or the start), and a last one at `close` (for a transient bar, `leave=False`, only if it printed any).
    tqdm's own drawing is switched off (`display` draws nothing), so no carriage return or erase reaches the file."""

    def __init__(self, *args, interval: float = LOG_INTERVAL_S, leave: bool = True, **kwargs):
        self._interval, self._keep, self._lines, self._shown = interval, leave, 0, None
        self._last_line = time.monotonic()
        # tqdm gates its own refreshes by mininterval; ours follow the same clock. leave=False: tqdm's close would
        # otherwise write "\n" after a last redraw; our close writes the last line itself.
        super().__init__(*args, leave=False, mininterval=interval, **kwargs)

    def display(self, msg=None, pos=None):
        return False  # tqdm's redraws (with "\r") are replaced by `_line`

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ""  # tqdm's adds ": ", which the line's format already has

    def _line(self) -> None:
        self.fp.write(" ".join(str(self).split()) + "\n")  # tqdm pads its rates with spaces
        self.fp.flush()
        self._lines, self._shown, self._last_line = self._lines + 1, self.n, time.monotonic()

    def update(self, n=1):
        shown = super().update(n)
        if not self.disable and time.monotonic() - self._last_line >= self._interval:
            self._line()
        return shown

    def close(self):
        if not self.disable and (self._keep or self._lines) and self._shown != self.n:
            self._line()
        super().close()


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
             leave: bool = True, stream=None, interval: float = LOG_INTERVAL_S, **kwargs):
    """A tqdm over `iterable` (or updated by hand up to `total`): a live bar where someone watches (`interactive`),
    plain lines at most every `interval` seconds in a file or a pipe, nothing when not `enabled` (-q)."""
    if not enabled:
        return plain_tqdm(iterable, total=total, disable=True)
    if interactive(stream):
        return auto_tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, **kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    fmt = LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL
    kwargs.pop("smoothing", None)  # a log line reports the overall rate
    return LogLines(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, bar_format=fmt,
                    interval=interval, smoothing=0, **kwargs)
