"""hbfp_timm.utils.files: atomic writes that follow the umask, a clear line on a full disk, stale temporaries
removed."""
import errno
import os
import stat
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from safetensors.torch import save_file

from hbfp_timm.utils import files
from hbfp_timm.utils.files import (
    OutputWriteError, atomic_write, check_writable_folder, format_size, remove_stale_temporaries,
)


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it after."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('mask', [0o022, 0o027, 0o077])
def test_atomic_write_follows_the_umask_even_for_writers_that_make_private_files(tmp_path, umask, mask):
    umask(mask)
    atomic_write(tmp_path / 'a.txt', lambda name: open(name, 'w').write('x'))
    atomic_write(tmp_path / 'b.safetensors', lambda name: save_file({'w': torch.zeros(2)}, name))
    assert _mode(tmp_path / 'a.txt') == _mode(tmp_path / 'b.safetensors') == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt', 'b.safetensors']


def _failing_writer(exc: BaseException):
    def write(name):
        with open(name, 'wb') as handle:
            handle.write(b'partial')
        raise exc
    return write


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_previous_version(tmp_path):
    target = tmp_path / 'checkpoint.pt'
    target.write_bytes(b'previous')
    with pytest.raises(OutputWriteError) as error:
        atomic_write(target, _failing_writer(OSError(errno.ENOSPC, 'No space left on device')))
    message = error.value.strerror
    assert 'no space left on device' in message and str(target) in message and '\n' not in message
    assert error.value.errno == errno.ENOSPC
    assert target.read_bytes() == b'previous' and [p.name for p in tmp_path.iterdir()] == ['checkpoint.pt']


def test_torch_save_on_a_full_disk_says_no_space_left(tmp_path, monkeypatch):
    # torch.save reports a full disk without an errno; the nearly empty disk tells it apart.
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(files.shutil, 'disk_usage', lambda path: usage(10 ** 9, 10 ** 9, 0))
    torch_message = ('[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: '
                     'file write failed')
    with pytest.raises(OutputWriteError, match='no space left on device') as error:
        atomic_write(tmp_path / 'checkpoint.pt', _failing_writer(RuntimeError(torch_message)))
    assert str(tmp_path / 'checkpoint.pt') in error.value.strerror
    assert list(tmp_path.iterdir()) == []


def test_other_write_failures_name_the_file_and_an_interruption_leaves_no_temporary(tmp_path):
    with pytest.raises(OutputWriteError, match=r'results\.json: cannot write \(Permission denied\)'):
        atomic_write(tmp_path / 'results.json', _failing_writer(PermissionError(errno.EACCES, 'Permission denied')))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / 'results.json', _failing_writer(KeyboardInterrupt()))
    assert list(tmp_path.iterdir()) == []


def test_check_writable_folder_refuses_a_file_and_an_unwritable_folder(tmp_path, monkeypatch):
    a_file = tmp_path / 'taken'
    a_file.write_text('')
    with pytest.raises(OutputWriteError, match='is a file; expected a folder'):
        check_writable_folder(a_file)
    with pytest.raises(OutputWriteError, match='cannot write in this folder'):
        check_writable_folder(a_file / 'run')  # a folder inside a file cannot be created
    assert check_writable_folder(tmp_path / 'new' / 'run').is_dir()

    real_open = os.open

    def read_only(path, flags, mode=0o777):  # the effect of a read-only folder, also when the tests run as root
        if str(path).startswith(str(tmp_path / 'readonly')):
            raise PermissionError(errno.EACCES, 'Permission denied')
        return real_open(path, flags, mode)

    (tmp_path / 'readonly').mkdir()
    monkeypatch.setattr(files.os, 'open', read_only)
    with pytest.raises(OutputWriteError, match=r'readonly: cannot write in this folder \(Permission denied\)'):
        check_writable_folder(tmp_path / 'readonly')


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    stale = [f'.checkpoint.pt.{dead_pid}.0123abcd.tmp', '.checkpoint.pt.k3x_9qzw.tmp']  # ours, and mkstemp's
    kept = [f'.checkpoint.pt.{os.getppid()}.0123abcd.tmp',  # a running writer
            '.notes.txt.k3x_9qzw.tmp', 'checkpoint.pt']  # not one of the names asked for; the output itself
    for name in stale + kept:
        (tmp_path / name).write_bytes(b'x' * 10)
    removed, size = remove_stale_temporaries(tmp_path, ['checkpoint.pt', 'results.json'])
    assert sorted(p.name for p in removed) == sorted(stale) and size == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_format_size_uses_decimal_units():
    assert [format_size(n) for n in (0, 999, 1000, 1_234_567, 267_242_591, 1.5e9)] == [
        '0 B', '999 B', '1.0 kB', '1.2 MB', '267.2 MB', '1.5 GB']
