"""Command-line plumbing shared by the benchmark commands: the user-facing :class:`BenchmarkError`, the guard that
turns it into one line (``hbfp_timm.commands.one_line``) and an exit code, the parser whose errors are one line,
and the recorded command line."""
import argparse
import shlex
import sys
from typing import Any, Callable, NoReturn, Sequence

import torch

from hbfp_timm.commands import one_line
from hbfp_timm.training.interrupts import Interruptions

__all__ = ['BenchmarkError', 'ArgumentParser', 'exact_command', 'guarded']

INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a process ended by SIGINT (128 + 2)
TERMINATED_EXIT_CODE = 143  # ... and by SIGTERM (128 + 15)


class BenchmarkError(Exception):
    """A user-facing error (bad data root, missing weights...): printed on one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (the usage is in ``--help``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {" ".join(message.split())} (see --help)\n')


def exact_command(prog: str, argv: Sequence[str]) -> str:
    """The command line as a user would retype it.

    Args:
        prog: ``python -m benchmarks.<name>``.
        argv: The arguments.

    Returns:
        One shell-quoted line.
    """
    return prog + (' ' + shlex.join(argv) if argv else '')


def guarded(function: Callable[[], Any]) -> int:
    """Run ``function``; a :class:`BenchmarkError` becomes one ``error:`` line on stderr and exit code 2, an
    ``OSError`` (disk full, a file gone) one line and exit code 1, Ctrl-C one line and exit code 130, SIGTERM one
    line and exit code 143 (each training run's last checkpoint stays intact and resumable).

    Args:
        function: The benchmark body.

    Returns:
        The process exit code.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with Interruptions() as interruptions:
        try:
            function()
        except BenchmarkError as error:
            print(f'error: {one_line(error)}', file=sys.stderr, flush=True)
            return 2
        except OSError as error:  # the machine's part (disk full, a file gone): its message names the file
            print(f'error: {one_line(error)}', file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            interruptions.settle()
            name = interruptions.received or 'Ctrl-C'
            print(f'interrupted ({name}); no report written; each train_* folder keeps its last checkpoint.pt: '
                  f'python -m hbfp_timm.train --resume FOLDER continues it', file=sys.stderr, flush=True)
            return TERMINATED_EXIT_CODE if name == 'SIGTERM' else INTERRUPTED_EXIT_CODE
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return 0
