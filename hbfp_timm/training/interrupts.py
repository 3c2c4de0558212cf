"""Ctrl-C and SIGTERM as one catchable interruption, for the trainer and the benchmark commands."""
import _thread
import signal
import sys
import threading
from typing import Any, Dict, Optional

__all__ = ['Interruptions']


class Interruptions:
    """Ctrl-C (SIGINT) and SIGTERM end the run as a KeyboardInterrupt, delivered until it is handled.

    Python loses a KeyboardInterrupt that a signal raises while the process forks: the exception is raised inside
    a fork hook, printed as "Exception ignored" and dropped, and the run goes on. The training loop holds the
    signals back while it starts its workers (``hbfp_timm.data.loader.interruptions_deferred``); for forks
    elsewhere (the evaluation's loaders) the signal is remembered and raised again every ``REDELIVER_S`` seconds
    until :meth:`settle` says it was handled, and the "Exception ignored" report of the lost one is left out.
    """

    NAMES = {signal.SIGINT: 'Ctrl-C', signal.SIGTERM: 'SIGTERM'}
    REDELIVER_S = 5.0  # longer than unwinding takes (stopping DataLoader workers waits up to 5 s)

    def __init__(self):
        self.received: Optional[str] = None
        self._previous: Dict[int, Any] = {}
        self._redelivery: Optional[threading.Timer] = None
        self._unraisablehook = sys.unraisablehook

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.NAMES[signum]
        if self._redelivery is None:
            self._schedule(signum)
        raise KeyboardInterrupt(self.received)

    def _schedule(self, signum: int) -> None:
        self._redelivery = threading.Timer(self.REDELIVER_S, self._redeliver, args=(signum,))
        self._redelivery.daemon = True
        self._redelivery.start()

    def _redeliver(self, signum: int) -> None:
        if self._previous:  # not settled yet
            _thread.interrupt_main(signum)
            self._schedule(signum)

    def _drop_lost_interrupt(self, unraisable: Any) -> None:
        if not (self.received and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self._unraisablehook(unraisable)

    def __enter__(self) -> 'Interruptions':
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.NAMES:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. nohup: the user asked to ignore it
                    self._previous[signum] = signal.signal(signum, self._handle)
            sys.unraisablehook = self._drop_lost_interrupt
        return self

    def settle(self) -> None:
        """Stop raising: restore the previous handlers."""
        previous, self._previous = self._previous, {}
        if self._redelivery is not None:
            self._redelivery.cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._unraisablehook

    def __exit__(self, *exc_info: Any) -> None:
        self.settle()
