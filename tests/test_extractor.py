"""hbfp_timm.FeatureExtractor: the evaluation's preprocessing, every input kind, every way of naming the model,
and clear errors."""
import copy
import warnings

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hbfp_timm import FeatureExtractor, embed
from hbfp_timm.data import build_test_transform
from hbfp_timm.hub import WeightsNotFoundError, save_pretrained
from hbfp_timm.models import pretrained

from conftest import DEVICES
from hub_fixtures import hub_cache  # noqa: F401  (fixture)
from tiny_models import TINY_ARGS, TINY_SIZE, single_thread, tiny_model, write_images, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def model():
    return tiny_model()


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path, [f'img{i}.png' for i in range(5)])


def _expected(model, paths):
    transform = build_test_transform(TINY_SIZE)
    batch = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    with torch.no_grad():
        return batch, model(batch)


def test_preprocessing_is_the_evaluations_test_transform_for_every_input_kind(model, images, tmp_path):
    extractor = FeatureExtractor(model, device='cpu')
    expected, _ = _expected(model, images)
    pil_images = [Image.open(p) for p in images]
    arrays = [np.asarray(image.convert('RGB')) for image in pil_images]
    assert extractor.img_size == TINY_SIZE  # from the model's pretrained_cfg
    assert torch.equal(extractor.preprocess([str(p) for p in images]), expected)
    assert torch.equal(extractor.preprocess(images), expected)  # Path objects
    assert torch.equal(extractor.preprocess(pil_images), expected)
    assert torch.equal(extractor.preprocess(arrays), expected)
    assert torch.equal(extractor.preprocess(np.stack(arrays)), expected)  # N x H x W x 3
    assert torch.equal(extractor.preprocess(images[2]), expected[2:3])  # one image
    grey = tmp_path / 'grey.png'
    Image.open(images[0]).convert('L').save(grey)
    assert torch.equal(extractor.preprocess(grey), build_test_transform(TINY_SIZE)(
        Image.open(grey).convert('RGB'))[None])


def test_descriptors_equal_the_model_on_the_preprocessed_batch_in_input_order(model, images):
    batch, expected = _expected(model, images)
    extractor = FeatureExtractor(model, device='cpu', batch_size=2)
    mixed = [str(images[0]), Image.open(images[1]), np.asarray(Image.open(images[2]).convert('RGB')), images[3],
             images[4]]
    features = extractor(mixed)
    assert features.shape == (5, model.num_features) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(extractor(batch), expected, rtol=1e-4, atol=1e-5)  # preprocessed tensor
    torch.testing.assert_close(extractor(batch[3]), expected[3:4], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_descriptors_on_each_device_equal_the_model_on_cpu(model, images, device):
    """On CUDA the extractor's device path: pinned batches, non-blocking copies, descriptors back on the CPU."""
    _, expected = _expected(model, images)
    features = FeatureExtractor(copy.deepcopy(model), device=device, batch_size=2)(images)
    assert features.device.type == 'cpu' and features.shape == expected.shape
    torch.testing.assert_close(features, expected, rtol=1e-2, atol=1e-3)  # cuDNN may convolve in TF32


def test_flip_averages_with_the_mirrored_image(model, images):
    batch, plain = _expected(model, images[:2])
    with torch.no_grad():
        mirrored = model(batch.flip(3))
    features = FeatureExtractor(model, device='cpu', flip=True)(images[:2])
    torch.testing.assert_close(features, (plain + mirrored) / 2, rtol=1e-4, atol=1e-5)


def test_a_run_directory_a_hub_folder_and_a_named_checkpoint_give_the_same_descriptors(model, images, tmp_path):
    _, expected = _expected(model, images[:3])
    run = write_run(tmp_path / 'run', model)
    hub_folder = save_pretrained(model, tmp_path / 'hub')
    weights = tmp_path / 'weights.safetensors'
    save_file(model.state_dict(), str(weights))
    extractors = [
        FeatureExtractor(run, device='cpu'),  # img_size from results.json
        FeatureExtractor(run / 'model.safetensors', device='cpu'),
        FeatureExtractor(hub_folder, device='cpu', img_size=TINY_SIZE),
        FeatureExtractor(f'local-dir:{hub_folder}', device='cpu', img_size=TINY_SIZE),
        FeatureExtractor('hbfp_resnet18', checkpoint=weights, model_args=TINY_ARGS, device='cpu', img_size=TINY_SIZE),
    ]
    for extractor in extractors:
        assert extractor.img_size == TINY_SIZE
        torch.testing.assert_close(extractor(images[:3]), expected, rtol=1e-4, atol=1e-5)


def test_a_module_without_pretrained_cfg_needs_an_image_size(images):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ValueError, match=r'img_size: the model has no pretrained_cfg input_size'):
        FeatureExtractor(net, device='cpu')
    assert FeatureExtractor(net, device='cpu', img_size=(20, 10))(images).shape == (5, 4)


@pytest.mark.parametrize('bad, error, message', [
    (lambda tmp: tmp / 'missing.jpg', FileNotFoundError, r'images: image file .*missing.jpg not found'),
    (lambda tmp: [tmp / 'img0.png', tmp / 'notes.jpg'], OSError, r'cannot read image .*notes.jpg'),
    (lambda tmp: np.zeros((8, 4), dtype=np.uint8), ValueError,
     r'images: expected an HxWx3 uint8 RGB array, got shape \(8, 4\) dtype uint8'),
    (lambda tmp: [np.zeros((8, 4, 3), dtype=np.float32)], ValueError, r'got shape \(8, 4, 3\) dtype float32'),
    (lambda tmp: torch.zeros(2, 3, 8, 4, dtype=torch.uint8), ValueError, r'a tensor is taken as preprocessed'),
    (lambda tmp: [], ValueError, r'nothing to describe'),
    (lambda tmp: 3.5, TypeError, r'images: expected a path, a PIL image'),
])
def test_bad_images_are_a_clear_error(model, images, tmp_path, bad, error, message):
    (tmp_path / 'notes.jpg').write_text('not an image')
    with pytest.raises(error, match=message):
        FeatureExtractor(model, device='cpu')(bad(tmp_path))


def test_bad_models_are_a_clear_error(model, tmp_path):
    run = write_run(tmp_path / 'run', model)
    with pytest.raises(ValueError, match="'no_such_model' is neither a registered timm model"):
        FeatureExtractor('no_such_model', device='cpu')
    with pytest.raises(ValueError, match='is a trainer run, which brings its own weights'):
        FeatureExtractor(run, checkpoint=run / 'model.safetensors', device='cpu')
    with pytest.raises(ValueError, match='batch_size'):
        FeatureExtractor(model, device='cpu', batch_size=0)


def test_a_device_that_does_not_exist_is_one_line_naming_device(model, images, tmp_path, capsys):
    """--device foo, or a GPU this machine does not have, was torch's RuntimeError as a traceback."""
    with pytest.raises(ValueError, match=r"^device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'foo'$"):
        FeatureExtractor(model, device='foo')
    # Past every machine's GPU count: no CUDA at all, or too few devices; either way before any work.
    with pytest.raises(ValueError, match=r'^device: cuda:99 requested but (CUDA is not available|\d+ CUDA device)'):
        FeatureExtractor(model, device='cuda:99')
    run = write_run(tmp_path / 'run', model)
    assert embed.main([str(images[0]), '--model', str(run), '--output', str(tmp_path / 'e.safetensors'),
                       '--device', 'foo']) == 2
    # The command names the flag the user typed, the Python API its argument.
    assert capsys.readouterr().err == ("python -m hbfp_timm.embed: error: --device: expected 'auto', 'cpu', 'cuda' "
                                       "or 'cuda:N', got 'foo'\n")


def test_a_constructor_argument_the_model_does_not_take_is_one_line_naming_model_args():
    """--model-arg nonsense=3 was 'HBFPNet.__init__() got an unexpected keyword argument' without the flag; the
    line is the trainer's: the key, the names close to it, and what the model's own constructor takes."""
    message = r"^model_args: hbfp_resnet18 takes no argument 'nonsense'; HBFPNet takes backbone, num_classes, "
    with pytest.raises(ValueError, match=message):
        FeatureExtractor('hbfp_resnet18', device='cpu', pretrained=False, model_args=dict(TINY_ARGS, nonsense=3))
    # A plain timm model names its own class and arguments, not HBFPNet's.
    with pytest.raises(ValueError, match=r"^model_args: resnet18 takes no argument 'drop_rat' \(did you mean "
                                         r"drop_rate\?\); ResNet takes block, layers, .*drop_rate"):
        FeatureExtractor('resnet18', device='cpu', pretrained=False, model_args={'drop_rat': 0.1})


def test_weights_of_a_plain_timm_model_that_the_hub_cannot_give_are_one_line_naming_the_model(hub_cache):
    """--model resnet18 offline and not cached was huggingface_hub's 'An error happened while trying to locate the
    file on the Hub ...', naming neither the model nor a way out."""
    with pytest.raises(WeightsNotFoundError) as info:
        FeatureExtractor('resnet18', device='cpu')
    assert str(info.value) == (
        "model: resnet18: timm's pretrained weights of this model cannot be loaded: they are not in the local Hugging "
        'Face cache and the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network); load them once with a network, '
        'give a local weights file (checkpoint, --checkpoint in the commands), or build it untrained '
        '(pretrained=False, --untrained)')


def test_a_hub_repository_that_cannot_be_reached_is_one_line_naming_it_after_one_probe(hub_cache, monkeypatch):
    """--model hf-hub:ORG/NAME without a network retried for about 25 s, printing a line per retry, then said
    huggingface_hub's 'An error happened while trying to locate the file on the Hub ...', naming no model."""
    expected = ('model: hf-hub:someone/absent: the config and weights of this Hub repository cannot be loaded: they '
                'are not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE=1 or no '
                'network); load them once with a network, or give a local copy (a run folder, or local-dir:PATH of a '
                'Hub folder)')
    with pytest.raises(WeightsNotFoundError) as info:  # HF_HUB_OFFLINE=1
        FeatureExtractor('hf-hub:someone/absent', device='cpu')
    assert str(info.value) == expected
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)  # no network: the probe says so
    probes = []
    monkeypatch.setattr(pretrained, 'hub_reachable', lambda timeout: probes.append(timeout) or False)
    with pytest.raises(WeightsNotFoundError) as info:
        FeatureExtractor('hf-hub:someone/absent', device='cpu')
    assert str(info.value) == expected and len(probes) == 1


def test_an_input_size_too_small_for_the_model_is_one_line_naming_img_size(model, images):
    """--img-size 8 4 was the model's own 'x: input 8x4 is too small', naming its forward's argument, once the images
    had been read."""
    with pytest.raises(ValueError, match=r'^img_size: 8x4 is too small for this model, whose backbone downsamples '
                                         r'by 16; expected at least 16x16$'):
        FeatureExtractor(model, device='cpu', img_size=(8, 4))


def test_a_misspelt_model_name_gets_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"'hbfp_resnet5' is neither .*; did you mean 'hbfp_resnet50'"):
        FeatureExtractor('hbfp_resnet5', device='cpu')


def test_an_input_size_unlike_the_training_size_is_warned_about(model, tmp_path):
    run = write_run(tmp_path / 'run', model)  # trained at 64x32
    with pytest.warns(UserWarning, match=r'img_size 32x64 differs from the 64x32 these weights were trained at '
                                         r'\(height and width swapped\?\)'):
        FeatureExtractor(run, device='cpu', img_size=(32, 64))
    with pytest.warns(UserWarning, match=r'img_size 96x48 differs from the 64x32 .*trained at; descriptors'):
        FeatureExtractor('hbfp_resnet18', checkpoint=run / 'model.safetensors', model_args=TINY_ARGS,
                         device='cpu', img_size=(96, 48))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert FeatureExtractor(run, device='cpu').img_size == (64, 32)
        # A bare checkpoint's training size comes from its run folder: the default is that size, no warning.
        assert FeatureExtractor('hbfp_resnet18', checkpoint=run / 'model.safetensors', model_args=TINY_ARGS,
                                device='cpu').img_size == (64, 32)


def test_an_untrained_model_runs_from_its_name_and_only_from_it(tmp_path):
    extractor = FeatureExtractor('hbfp_resnet18', model_args=TINY_ARGS, device='cpu', pretrained=False,
                                 img_size=(64, 32))
    assert extractor(torch.zeros(1, 3, 64, 32)).shape == (1, extractor.num_features)
    with pytest.raises(ValueError, match='an untrained model is built from a registered name only'):
        FeatureExtractor('hbfp_resnet18', checkpoint=tmp_path / 'w.safetensors', pretrained=False, device='cpu')
    # A run folder brings its trained weights: asking for random ones there is an error, not silently ignored.
    run = write_run(tmp_path / 'run', tiny_model())
    for source in (run, run / 'model.safetensors'):
        with pytest.raises(ValueError, match=f'model: {source} is a trainer run, which brings its own trained weights'):
            FeatureExtractor(source, pretrained=False, device='cpu')
