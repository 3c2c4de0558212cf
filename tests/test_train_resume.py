"""Resuming a run: best.safetensors always holds the weights of the evaluation that results.json calls the best."""
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hbfp_timm.train import TrainSetupError, train
from hbfp_timm.training import loop
from hbfp_timm.training.checkpoint import BEST_MODEL_NAME, resume_best_model

pytestmark = pytest.mark.usefixtures('single_thread')


def _best_epoch(path):
    with safe_open(str(path), 'pt') as weights:
        return int(weights.metadata()['epoch'])


def _weights(path, epoch):
    save_file({'w': torch.full((2,), float(epoch))}, str(path), metadata={'epoch': str(epoch)})


def test_resume_into_another_folder_carries_the_best_model(make_config, tmp_path, monkeypatch, capsys):
    """The resumed run's evaluation is worse than the checkpoint's best: the new folder still holds the best
    evaluation's weights, equal to those of the first folder."""
    first = make_config(tmp_path / 'r1', epochs=1)
    train(first, command=['test'])
    real_evaluate = loop.evaluate

    def worse(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), 'mAP': 0.0, 'rank1': 0.0}

    monkeypatch.setattr(loop, 'evaluate', worse)
    capsys.readouterr()
    resumed = train(replace(first, epochs=2, output=str(tmp_path / 'r2'), resume=str(tmp_path / 'r1')),
                    command=['test'])

    assert resumed['best']['epoch'] == 1 and resumed['last']['epoch'] == 2
    copied = tmp_path / 'r2' / BEST_MODEL_NAME
    assert _best_epoch(copied) == 1
    assert copied.read_bytes() == (tmp_path / 'r1' / BEST_MODEL_NAME).read_bytes()
    assert f'copied {tmp_path / "r1" / BEST_MODEL_NAME} (the best evaluation so far, epoch 1) to {tmp_path / "r2"}' \
        in capsys.readouterr().out


def test_a_best_model_past_the_checkpoint_is_removed_in_place(tmp_path, capsys):
    """The best model was written after the checkpoint (epoch 3 vs a checkpoint whose best is epoch 2): those
    epochs are trained again, so the file goes and the best is tracked anew."""
    _weights(tmp_path / BEST_MODEL_NAME, 3)
    assert resume_best_model(tmp_path, tmp_path, {'epoch': 2, 'mAP': 0.5, 'rank1': 0.5}) is None
    assert not (tmp_path / BEST_MODEL_NAME).exists()
    out = capsys.readouterr().out
    assert f'removed {tmp_path / BEST_MODEL_NAME}: it holds epoch 3, not the checkpoint\'s best evaluation' in out
    assert 'note: the weights of the best evaluation so far (epoch 2) are not in' in out


def test_a_checkpoint_without_an_evaluation_drops_a_later_best_model(tmp_path):
    _weights(tmp_path / BEST_MODEL_NAME, 1)
    assert resume_best_model(tmp_path, tmp_path, None) is None
    assert not (tmp_path / BEST_MODEL_NAME).exists()


def test_the_matching_best_model_stays_in_place(tmp_path, capsys):
    _weights(tmp_path / BEST_MODEL_NAME, 2)
    best = {'epoch': 2, 'mAP': 0.5, 'rank1': 0.5}
    assert resume_best_model(tmp_path, tmp_path, best) == best
    assert _best_epoch(tmp_path / BEST_MODEL_NAME) == 2
    assert capsys.readouterr().out == ''


def test_a_missing_best_model_is_said_and_elsewhere_nothing_is_copied(tmp_path, capsys):
    (tmp_path / 'r1').mkdir()
    assert resume_best_model(tmp_path / 'r1', tmp_path / 'r2', {'epoch': 4, 'mAP': 0.5, 'rank1': 0.5}) is None
    assert not (tmp_path / 'r2' / BEST_MODEL_NAME).exists()
    assert f'(epoch 4) are not in {tmp_path / "r1"}' in capsys.readouterr().out


def test_a_best_model_that_cannot_be_copied_names_the_files(tmp_path):
    _weights(tmp_path / BEST_MODEL_NAME, 1)
    (tmp_path / 'blocked').write_text('a file where the output folder should be')
    blocked = f'output: cannot copy {tmp_path / BEST_MODEL_NAME} \\({tmp_path}/blocked/r2/'
    with pytest.raises(TrainSetupError, match=blocked):
        resume_best_model(tmp_path, tmp_path / 'blocked' / 'r2', {'epoch': 1, 'mAP': 0.5, 'rank1': 0.5})
