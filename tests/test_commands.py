"""The command-line pieces every command shares (hbfp_timm.commands): ``--model-arg KEY=VALUE``."""
import argparse
import re
import subprocess
import sys

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


@pytest.mark.parametrize('signal_name, code, name', [('SIGINT', 130, 'Ctrl-C'), ('SIGTERM', 143, 'SIGTERM')])
def test_a_command_stopped_by_ctrl_c_or_sigterm_says_so_in_one_line(tmp_path, signal_name, code, name):
    """python -m hbfp_timm.embed|search|evaluate|activations printed a KeyboardInterrupt traceback on Ctrl-C."""
    (tmp_path / 'long_command.py').write_text(
        'import os, signal, time\n'
        'from hbfp_timm.commands import run_command\n'
        'def main():\n'
        f'    os.kill(os.getpid(), signal.{signal_name})  # as a Ctrl-C or a kill in the middle of the work\n'
        '    time.sleep(30)\n'
        '    return 0\n'
        'run_command(main)\n')
    done = subprocess.run([sys.executable, '-m', 'long_command'], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (code, '', f'python -m long_command: interrupted ({name})\n')


def test_the_commands_name_the_flags_a_user_typed_and_leave_the_model_arguments(tmp_path, capsys):
    """FeatureExtractor says 'model_args: ...' and 'batch_size: ...' (its arguments); embed, search, evaluate and
    activations say the flags, and the constructor arguments listed stay as they are."""
    from PIL import Image

    from hbfp_timm import embed
    Image.new('RGB', (32, 64), (120, 60, 30)).save(tmp_path / 'a.jpg')
    common = [str(tmp_path / 'a.jpg'), '--model', 'hbfp_resnet18', '--untrained', '--device', 'cpu',
              '--output', str(tmp_path / 'e.safetensors')]
    assert embed.main([*common, '--model-arg', 'nonsense=1']) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("python -m hbfp_timm.embed: error: --model-arg: hbfp_resnet18 takes no argument 'nonsense'")
    assert line.endswith(', pretrained_backbone, backbone_weights')
    assert embed.main([*common, '--batch-size', '0']) == 2
    assert capsys.readouterr().err == ('python -m hbfp_timm.embed: error: --batch-size: expected a positive integer, '
                                       'got 0\n')
