"""benchmarks.checkpointing on a tiny configuration: both modes measured in their own process, the same loss,
less activation memory with checkpointing; bad arguments are one line."""
import pytest

from benchmarks import checkpointing


def test_checkpointing_benchmark_measures_both_modes(tmp_path, capsys):
    output = tmp_path / 'ckpt.json'
    results = checkpointing.main(['--model', 'hbfp_resnet18', '--img-size', '64', '32', '--batch-size', '2',
                                  '--device', 'cpu', '--output', str(output)])
    assert results['same_loss'] and output.is_file()
    assert results['on']['activation_bytes'] < 0.5 * results['off']['activation_bytes']
    assert all(results[mode]['peak_step_bytes'] > 0 for mode in ('off', 'on'))
    assert results['command'].startswith('python -m benchmarks.checkpointing --model hbfp_resnet18')
    assert '| activations kept for backward (MiB) |' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['--batch-size', '1'], '--batch-size: expected at least 2'),
    (['--output', '{existing}'], 'exists; expected a new file name'),
])
def test_checkpointing_benchmark_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / 'existing.json').write_text('{}')
    argv = [a.format(existing=tmp_path / 'existing.json') for a in argv]
    with pytest.raises(SystemExit) as exc:
        checkpointing.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
