"""``--model-arg KEY=VALUE``: HBFPNet constructor arguments on the command line (trainer, embed/search, benchmarks)."""
import argparse
import ast
from typing import Any, Tuple

__all__ = ['parse_model_arg']


def parse_model_arg(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` of ``--model-arg``, the value read as a Python literal.

    Args:
        text: The flag value, e.g. ``gep_lambdas=(0, 1)`` or ``global_pool=avg`` (a bare word is a string).

    Returns:
        ``(key, value)``.

    Raises:
        argparse.ArgumentTypeError: Not ``KEY=VALUE`` with ``KEY`` a Python identifier.
    """
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE with KEY a Python identifier, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value
