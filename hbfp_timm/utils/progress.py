"""Progress of long work: a tqdm bar on a terminal, plain periodic lines in log files and pipes.

A tqdm bar redraws itself with carriage returns; written to a log file or a pipe (a cluster job, ``| tee``,
``nohup``) every redraw stays in the file, megabytes of them in a long run. :func:`progress` gives the bar when
its stream is a terminal and otherwise a bar that prints a whole line at most every ``interval`` seconds and
nothing when the work takes less, so a log gets the caller's own line per epoch or per stage and, for long
stages, a heartbeat.
"""
import sys
from typing import Any, Iterable, Optional, TextIO

from tqdm.auto import tqdm

__all__ = ['progress', 'LOG_INTERVAL_S']

# Seconds between two progress lines in a log; short stages print none.
LOG_INTERVAL_S = 60.0
LINE_FORMAT = '{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]'


class _LineProgress(tqdm):
    """tqdm that prints one full line per refresh, at most every ``mininterval`` seconds, instead of redrawing
    the current line."""

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        # tqdm shows the empty bar at the start and clears the line at close(leave=False); neither is news in a log.
        if msg == '' or self.n == 0:
            return True
        self.fp.write(self.format_meter(**self.format_dict) + '\n')
        self.fp.flush()
        return True

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        # A new postfix is shown with the next periodic line, not as a line of its own.
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


class _DropCarriageReturns:
    """A stream that swallows the bare carriage returns tqdm writes to park the cursor."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip('\r'):
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(
        iterable: Optional[Iterable] = None,
        total: Optional[int] = None,
        desc: str = '',
        disable: bool = False,
        interval: float = LOG_INTERVAL_S,
        file: Optional[TextIO] = None,
        **kwargs: Any,
) -> tqdm:
    """A progress bar fit for where it is shown (same interface as ``tqdm``).

    Args:
        iterable: Iterable to wrap, as for ``tqdm``; None for a bar driven by ``update``.
        total: Number of steps, when ``iterable`` has no length (or is None).
        desc: Label printed before the bar or at the start of each line.
        disable: Show nothing (e.g. on every rank but the first).
        interval: Minimum seconds between two lines when ``file`` is not a terminal.
        file: Stream to write to; default ``sys.stderr``.
        **kwargs: Further ``tqdm`` arguments for the terminal bar (``leave``, ``unit``...).

    Returns:
        A ``tqdm`` instance: the usual bar on a terminal, a line printer otherwise.
    """
    file = sys.stderr if file is None else file
    is_terminal = hasattr(file, 'isatty') and file.isatty()
    if disable or is_terminal:
        kwargs.setdefault('dynamic_ncols', True)
        return tqdm(iterable, total=total, desc=desc, disable=disable, file=file, **kwargs)
    return _LineProgress(iterable, total=total, desc=desc, file=_DropCarriageReturns(file), mininterval=interval,
                         miniters=1, bar_format=LINE_FORMAT, leave=False)
