"""benchmarks.memory_format on a tiny configuration: both formats timed on the same weights, the same outputs,
the speed-up as the median of paired ratios; bad arguments are one line."""
import json
import statistics

import pytest
import torch

from benchmarks import memory_format


def test_both_formats_give_the_same_outputs_and_the_speedup_is_the_median_paired_ratio():
    rows = memory_format.compare_formats('hbfp_resnet18', (64, 32), batch_size=2, repeats=3,
                                         device=torch.device('cpu'))
    assert [row['mode'] for row in rows] == ['train', 'eval']
    for row in rows:
        contiguous, channels_last = row['times']['contiguous'], row['times']['channels_last']
        assert len(contiguous) == len(channels_last) == 3
        ratios = sorted(c / n for c, n in zip(contiguous, channels_last))
        assert row['speedup'] == pytest.approx(ratios[1])
        assert row['seconds']['channels_last'] == pytest.approx(statistics.median(channels_last))
        # Only the kernels' summation order may differ between the formats.
        assert 0 < row['output_scale'] and row['max_abs_difference'] <= 1e-4 * row['output_scale']


def test_command_prints_the_table_and_writes_json(tmp_path, capsys):
    output = tmp_path / 'formats.json'
    code = memory_format.main(['--models', 'hbfp_resnet18', '--img-size', '64', '32', '--batch-size', '2',
                               '--repeats', '1', '--modes', 'eval', '--device', 'cpu', '--output', str(output)])
    results = json.loads(output.read_text())
    assert code == 0 and [row['mode'] for row in results['rows']] == ['eval']
    assert results['command'].startswith('python -m benchmarks.memory_format --models hbfp_resnet18')
    assert '| hbfp_resnet18 | eval | 2 |' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['--batch-size', '1'], '--batch-size: expected at least 2'),
    (['--repeats', '0'], '--repeats: expected at least 1'),
    (['--img-size', '16', '8'], '--img-size: expected at least 32x32'),
    (['--output', '{existing}'], 'exists; expected a new file name'),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / 'existing.json').write_text('{}')
    argv = [a.format(existing=tmp_path / 'existing.json') for a in argv]
    with pytest.raises(SystemExit) as exc:
        memory_format.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count('\n') == 1


@pytest.mark.parametrize('argv, message', [
    (['--models', 'no_such_model', '--device', 'cpu'], 'error: --models no_such_model: Unknown model (no_such_model)'),
    (['--models', 'hbfp_resnet18', '--device', 'gpu9'], "error: --device gpu9: expected 'cpu', 'cuda' or 'cuda:N'"),
])
def test_unknown_model_or_device_is_one_line_error(capsys, argv, message):
    code = memory_format.main(argv + ['--img-size', '64', '32', '--batch-size', '2', '--repeats', '1'])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count('\n') == 1
