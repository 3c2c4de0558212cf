"""Activation maps before and after BFP (hbfp_timm.activations): what each map is made of, and the command."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from hbfp_timm.activations import activation_energy, bfp_activation_maps, main
from hbfp_timm.models.backbone import run_modules

from tiny_models import TINY_ARGS, single_thread, tiny_model, write_images, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('hbfp_resnet18', **TINY_ARGS, **kwargs).eval()


def test_energy_is_the_sum_over_channels_of_squared_activations():
    feature_map = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # (1, 2 channels, 1, 2)
    assert activation_energy(feature_map).tolist() == [[[10.0, 4.25]]]


def test_before_maps_are_the_backbone_levels_and_untrained_bfp_changes_only_the_refed_high_map():
    model = _model()
    images = torch.randn(2, 3, 64, 32)
    maps = bfp_activation_maps(model, images)
    with torch.no_grad():
        low = run_modules(model.backbone, model._cuts.stem, images)
        mid = run_modules(model.backbone, model._cuts.block3, low)
        high = run_modules(model.backbone, model._cuts.block4, mid)
        refed_high = model.forward_levels(images)[2]
    for level, backbone_map in (('low', low), ('mid', mid), ('high', high)):
        torch.testing.assert_close(maps.before[level], activation_energy(backbone_map))
    # Residual BFP starts as the identity (zero-initialised projections): low and middle maps are unchanged.
    assert torch.equal(maps.after['low'], maps.before['low']) and torch.equal(maps.after['mid'], maps.before['mid'])
    torch.testing.assert_close(maps.after['high'], activation_energy(refed_high))
    assert not torch.allclose(maps.after['high'], maps.before['high'])


def test_trained_looking_bfp_changes_the_low_and_middle_maps():
    model = _model()
    for bfp in (model.bfp_low_mid, model.bfp_mid_high):
        for projection in (bfp.p_projection, bfp.q_projection):
            torch.nn.init.constant_(projection.bn.weight, 0.5)
    images = torch.randn(1, 3, 64, 32)
    maps = bfp_activation_maps(model, images)
    with torch.no_grad():
        levels = model.forward_levels(images)
    for level, augmented in zip(('low', 'mid', 'high'), levels):
        torch.testing.assert_close(maps.after[level], activation_energy(augmented))
        assert not torch.allclose(maps.after[level], maps.before[level])


def test_without_the_refeed_the_untrained_high_map_is_unchanged():
    maps = bfp_activation_maps(_model(hierarchical=False), torch.randn(1, 3, 64, 32))
    assert torch.equal(maps.after['high'], maps.before['high'])


def test_levels_without_a_branch_have_no_after_map():
    maps = bfp_activation_maps(_model(branches=('high',)), torch.randn(1, 3, 64, 32))
    assert maps.after['low'] is None and maps.after['mid'] is None and maps.after['high'] is not None


def test_a_model_without_bfp_is_refused():
    with pytest.raises(ValueError, match='need an HBFP model with both BFP modules'):
        bfp_activation_maps(_model(bfp_pairs=('low_mid',)), torch.randn(1, 3, 64, 32))


def test_command_draws_one_picture_per_image(tmp_path, capsys):
    run = write_run(tmp_path / 'run', tiny_model())
    write_images(tmp_path / 'crops', [f'{i}.png' for i in range(4)])
    assert main([str(tmp_path / 'crops'), '--model', str(run), '--output', str(tmp_path / 'maps'),
                 '--max-images', '3', '--device', 'cpu']) == 0
    pictures = sorted((tmp_path / 'maps').iterdir())
    assert [p.name for p in pictures] == ['000_0.png', '001_1.png', '002_2.png']
    width, height = Image.open(pictures[0]).size
    # 64x32 inputs are enlarged 3x for display: two rows of 192-pixel panels, four 96-pixel columns.
    assert height >= 2 * 192 and width >= 4 * 96
    pixels = np.asarray(Image.open(pictures[0]).convert('RGB'))
    assert (pixels[..., 2] > 200).any() and (pixels[..., 0] > 200).any()  # the jet colour bar and overlays
    assert 'wrote 3 activation map pictures' in capsys.readouterr().out
    assert main([str(tmp_path / 'crops'), '--model', str(run), '--output', str(tmp_path / 'one'),
                 '--max-images', '1', '--device', 'cpu']) == 0
    assert f'wrote 1 activation map picture to {tmp_path / "one"}' in capsys.readouterr().out


@pytest.mark.parametrize('flag', [['--flip'], ['--amp'], ['--workers', '2'], ['--batch-size', '4']])
def test_command_has_no_flags_that_would_change_nothing(tmp_path, capsys, flag):
    """The maps are drawn in one float32 pass over the images, unmirrored: the descriptor options of embed and
    evaluate are not accepted (they would be ignored)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), '--output', str(tmp_path / 'maps'), *flag])
    assert exit_info.value.code == 2 and f'unrecognized arguments: {" ".join(flag)}' in capsys.readouterr().err


def test_command_errors_are_one_line(tmp_path, capsys):
    weights = tmp_path / 'w.safetensors'
    save_file(_model(bfp_pairs=()).state_dict(), str(weights))
    write_images(tmp_path / 'crops', ['a.png'])
    assert main([str(tmp_path / 'crops'), '--model', 'hbfp_resnet18', '--checkpoint', str(weights),
                 '--model-arg', 'correlation_dim=8', '--model-arg', 'perception_dim=16', '--model-arg', 'bfp_pairs=()',
                 '--img-size', '64', '32', '--output', str(tmp_path / 'maps'), '--device', 'cpu']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'need an HBFP model with both BFP modules' in err
    (tmp_path / 'taken').write_text('a file')
    assert main([str(tmp_path / 'crops'), '--output', str(tmp_path / 'taken' / 'maps'), '--device', 'cpu']) == 2
    taken = tmp_path / 'taken'
    assert capsys.readouterr().err == (f'python -m hbfp_timm.activations: error: --output: {taken / "maps"} cannot be '
                                       f'created: {taken} is a file; expected a folder\n')
