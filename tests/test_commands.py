"""The command-line pieces every command shares (hbfp_timm.commands): ``--model-arg KEY=VALUE``."""
import argparse
import re

import pytest

from hbfp_timm.commands import parse_model_arg
from hbfp_timm.train import main


@pytest.mark.parametrize('text, expected', [
    ('gep_lambdas=(0, 0.5, 1)', ('gep_lambdas', (0, 0.5, 1))), ('drop_rate=.25', ('drop_rate', 0.25)),
    ('bfp_pairs=()', ('bfp_pairs', ())), ('neck=None', ('neck', None)), ('global_pool=avg', ('global_pool', 'avg')),
    ("global_pool='max'", ('global_pool', 'max')), ('act_layer=hard swish', ('act_layer', 'hard swish')),
])
def test_values_are_python_literals_and_bare_words_are_strings(text, expected):
    assert parse_model_arg(text) == expected


@pytest.mark.parametrize('text', ['gep_lambdas=(0, 1', 'drop_rate=0.5.1', "global_pool='max", 'bfp_pairs=[(0, 1)',
                                  'scale=-'])
def test_a_value_that_starts_like_a_literal_and_does_not_parse_is_refused(text):
    """Taken as a string, '(0, 1' would reach the model as text (a GeP with lambdas '(', '0', ...)."""
    key, _, value = text.partition('=')
    with pytest.raises(argparse.ArgumentTypeError, match=rf'^{key}={re.escape(value)} does not parse'):
        parse_model_arg(text)


def test_the_trainer_says_which_model_arg_does_not_parse(capsys):
    with pytest.raises(SystemExit) as stop:
        main(['--model-arg', 'gep_lambdas=(0, 1', '--device', 'cpu'])
    assert stop.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]  # Python words the reason in the parenthesis its own way
    assert line.startswith('python -m hbfp_timm.train: error: argument --model-arg: gep_lambdas=(0, 1 does not parse (')
    assert line.endswith("); expected a Python literal such as (0, 1), 0.5 or 'text', or a bare word (a string)")
