"""hbfp_timm.utils.devices.check_device: the one rule for a device name a user gives, and the trainer's use of it
(one GPU per process), on a simulated machine (the CUDA queries are replaced, so every case runs on any
machine)."""
import pytest
import torch

from hbfp_timm.train import TrainSetupError, train
from hbfp_timm.utils.devices import check_device


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: this machine has n CUDA devices (0: no CUDA)."""
    def set_count(count):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    return set_count


@pytest.mark.parametrize('count, expected', [(0, 'cpu'), (2, 'cuda')])
def test_auto_and_none_take_cuda_when_there_is_one(gpus, count, expected):
    gpus(count)
    assert check_device('auto') == check_device(None) == torch.device(expected)


def test_cpu_and_visible_gpus_are_taken_as_named(gpus):
    gpus(2)
    assert check_device('cpu') == torch.device('cpu')
    assert check_device('cuda:1') == torch.device('cuda', 1)
    assert check_device(torch.device('cuda', 0)) == torch.device('cuda', 0)
    assert check_device('cuda') == torch.device('cuda')  # bare: torch's current GPU


def test_a_bare_cuda_is_the_process_gpu_when_given(gpus):
    gpus(2)
    assert check_device('cuda', default_index=1) == torch.device('cuda', 1)
    assert check_device('cuda:0', default_index=1) == torch.device('cuda', 0)  # an index given is kept


def test_an_unknown_name_is_one_line_naming_the_argument(gpus):
    gpus(0)
    with pytest.raises(ValueError, match=r"^--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu9'$"):
        check_device('gpu9', argument='--device')


def test_cuda_without_cuda_says_so(gpus):
    gpus(0)
    with pytest.raises(ValueError, match=r'^device: cuda:0 requested but CUDA is not available on this machine; '
                                         r'use cpu$'):
        check_device('cuda:0')


def test_a_gpu_index_past_the_visible_ones_names_the_count(gpus):
    gpus(2)
    with pytest.raises(ValueError, match=r'^device: cuda:2 requested but 2 CUDA devices are visible \(check '
                                         r'CUDA_VISIBLE_DEVICES\); use cuda:N with N below 2, or cpu$'):
        check_device('cuda:2')
    gpus(1)  # torchrun's second process on a one-GPU machine
    with pytest.raises(ValueError, match=r'^device: cuda \(cuda:1 for this process\) requested but 1 CUDA device '
                                         r'is visible'):
        check_device('cuda', default_index=1)


# -- the trainer: one GPU per process ------------------------------------------------------------------------------

def test_more_processes_than_gpus_is_one_error_in_every_process(make_config, tmp_path, monkeypatch):
    """torchrun --nproc-per-node 2 on a machine with one GPU (simulated): refused before joining the group."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda *a, **k: pytest.fail('joined the group'))
    for rank in (0, 1):  # both processes stop alike, so neither waits for the other
        monkeypatch.setenv('WORLD_SIZE', '2')
        monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
        monkeypatch.setenv('RANK', str(rank))
        monkeypatch.setenv('LOCAL_RANK', str(rank))
        with pytest.raises(TrainSetupError, match=r'device: 2 training processes run on this machine .* but 1 CUDA '
                                                  r'device is visible; start one process per GPU \(torchrun '
                                                  r'--nproc-per-node 1\), or train on CPU with --device cpu'):
            train(make_config(tmp_path / 'out', device='auto'), command=['test'])


def test_a_gpu_index_that_is_not_visible_is_refused(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    with pytest.raises(TrainSetupError, match=r'^device: cuda:1 requested but 1 CUDA device is visible \(check '
                                              r'CUDA_VISIBLE_DEVICES\); use cuda:N with N below 1, or cpu$'):
        train(make_config(tmp_path / 'out', device='cuda:1'), command=['test'])
