"""benchmarks.gpu: the prepared GPU check, exercised through its CPU dry run and hand-made sections."""
import json
import os
import sys
from pathlib import Path

import pytest
import timm
import torch

from benchmarks import gpu


def test_dry_run_writes_the_report_and_raw_json_of_each_section(tmp_path):
    out = tmp_path / 'out'
    code = gpu.main(['--dry-run', '--only', 'suite,memory_format', '--output', str(out)])
    assert code == 0
    raw = json.loads((out / 'gpu_raw.json').read_text())
    # In the order of SECTIONS: the suite runs last, after the measurements.
    assert [s['name'] for s in raw['sections']] == ['memory_format', 'suite'] and raw['dry_run'] is True
    assert all(s['status'] == 'ok' and s['seconds'] > 0 for s in raw['sections'])
    assert 'passed' in raw['sections'][1]['tail']
    assert raw['sections'][0]['result'] is not None  # the probe's own JSON, read back
    assert 'passed' in raw['sections'][1]['output'] and 'Device cpu' in raw['sections'][0]['output']
    report = (out / 'gpu_report.md').read_text()
    assert report.startswith('# GPU check (DRY RUN on CPU') and '| memory_format | ok |' in report
    # The versions a device image may not share with the test path's pins, as installed here.
    assert raw['environment']['libraries']['timm'] == timm.__version__
    assert f'Libraries: timm {timm.__version__}, ' in report
    assert sorted(path.name for path in out.rglob('*')) == ['gpu_raw.json', 'gpu_report.md']  # nothing else in OUT


def test_every_device_section_has_a_dry_run_or_is_a_repeat_of_one():
    names = [section.name for section in gpu.SECTIONS]
    assert set(gpu.DRY_RUN) == set(names)
    dry = gpu.sections_for(dry_run=True)
    assert all('cuda' not in ' '.join(section.command) for section in dry)
    suite = next(section for section in gpu.SECTIONS if section.name == 'suite')
    assert gpu.SECTIONS[-1] is suite and suite.command.index('tests') > max(map(suite.command.index, gpu.DEVICE_TESTS))
    assert all(Path(path).is_file() for path in gpu.DEVICE_TESTS)  # the device tests it runs first exist
    assert sum(section.budget_s for section in gpu.SECTIONS) <= 7 * 60  # the device run fits ~7 minutes
    with pytest.raises(ValueError, match='unknown section nope'):
        gpu.sections_for(dry_run=False, only=['nope'])


@pytest.mark.parametrize('xdist', [True, False])
def test_the_suite_shares_the_cores_among_workers_where_pytest_xdist_is_installed(monkeypatch, xdist):
    real_find_spec = gpu.importlib.util.find_spec
    monkeypatch.setattr(gpu.importlib.util, 'find_spec',
                        lambda name, *args: (real_find_spec('json') if xdist else None) if name == 'xdist'
                        else real_find_spec(name, *args))
    monkeypatch.setattr(gpu.os, 'cpu_count', lambda: 16)
    command, env = gpu.suite_command(workers=4)
    tests = [*gpu.DEVICE_TESTS, 'tests']
    assert command[1:3] == ['-m', 'pytest'] and command[-len(tests):] == tests
    if xdist:  # 4 processes of 4 threads on 16 cores, a test file to a worker
        assert command[command.index('-n'):][:4] == ['-n', '4', '--dist', 'loadfile']
        assert env == (('OMP_NUM_THREADS', '4'),)
    else:
        assert '-n' not in command and env == ()
    assert '-n' not in gpu.suite_command(workers=1)[0]


def test_a_sections_environment_reaches_its_command_and_the_report(tmp_path, monkeypatch):
    section = gpu.Section('env', 'prints a variable', [sys.executable, '-c', 'import os; print(os.environ["GPU_X"])'],
                          30, env=(('GPU_X', 'seven'),))
    raw = gpu.run_sections([section], tmp_path, ['python', '-m', 'benchmarks.gpu'], dry_run=True)
    assert raw['sections'][0]['tail'] == 'seven' and raw['sections'][0]['env'] == {'GPU_X': 'seven'}
    assert f'`GPU_X=seven {sys.executable} -c ' in (tmp_path / 'gpu_report.md').read_text()
    # From any folder, the children import this checkout's packages first (the device's copy is not installed).
    probe = gpu.Section('path', 'imports', [sys.executable, '-c', 'import benchmarks; print(benchmarks.__file__)'], 30)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv('PYTHONPATH', str(elsewhere))
    raw = gpu.run_sections([probe], tmp_path / 'out', ['python'], dry_run=True)
    assert raw['sections'][0]['tail'] == str(Path(gpu.__file__).parent / '__init__.py')
    assert gpu._child_environment(probe)['PYTHONPATH'] == os.pathsep.join([str(gpu.ROOT), str(elsewhere)])
    # A dry run runs the suite in this process, with no environment of its own.
    suite, = gpu.sections_for(dry_run=True, only=['suite'])
    assert suite.env == () and '-n' not in suite.command


def test_a_failing_or_overrunning_section_is_recorded_and_the_others_still_run(tmp_path):
    sections = [gpu.Section('fails', 'exits 3', [sys.executable, '-c', 'import sys; print("bad"); sys.exit(3)'], 30),
                gpu.Section('slow', 'sleeps', [sys.executable, '-c', 'import time; time.sleep(30)'], 1),
                gpu.Section('works', 'prints', [sys.executable, '-c', 'print("fine")'], 30)]
    raw = gpu.run_sections(sections, tmp_path, ['python', '-m', 'benchmarks.gpu'], dry_run=True)
    assert [s['status'] for s in raw['sections']] == ['failed (exit 3)', 'timed out after 1 s', 'ok']
    assert raw['sections'][0]['tail'] == 'bad' and raw['sections'][2]['tail'] == 'fine'
    report = (tmp_path / 'gpu_report.md').read_text()
    assert '| slow | timed out after 1 s |' in report and '| works | ok |' in report


def test_targets_say_by_how_much_they_are_missed():
    raw = {'command': ['python'], 'dry_run': False, 'started': 'now', 'seconds': 1.0,
           'environment': {'torch': 't', 'cuda': 'c', 'cpu_count': 1, 'device': 'H200'},
           'sections': [{'name': 'speed_bf16', 'what': '', 'status': 'ok', 'seconds': 1, 'budget_s': 2,
                         'command': ['x'], 'tail': '', 'result': {'targets': {
                             'gep_share_of_forward': {'value': 0.06, 'max': 0.03, 'met': False},
                             'amp': {'value': 2.0, 'min': 1.8, 'met': True}}}}]}
    report = gpu.render_report(raw)
    assert '| speed_bf16 | gep_share_of_forward | 0.06 | <= 0.03 | NO (missed by 100%) |' in report
    assert '| speed_bf16 | amp | 2 | >= 1.8 | yes |' in report


def test_without_cuda_and_without_dry_run_it_stops_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert gpu.main(['--output', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no CUDA device here' in err and not (tmp_path / 'out').exists()
