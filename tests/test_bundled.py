"""The zoo's shipped model: where ``pretrained=True`` finds its weights (package file, Hub cache, Hub), the
half-precision release file, the default model of the commands, and the refusal for names without weights."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm import hub, release
from hbfp_timm.models import pretrained, registry

from hub_fixtures import fake_hub, hub_cache  # noqa: F401  (fixtures)
from tiny_models import trained_like

ROOT = Path(__file__).resolve().parents[1]
TAG = registry.DEFAULT_REID_MODEL
ARCH = TAG.split('.')[0]


def _inputs(seed: int = 0) -> torch.Tensor:
    size = timm.models.get_pretrained_cfg(TAG).input_size[1:]
    return torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(seed))


def _descriptors(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_inputs(seed))


@pytest.fixture(scope='module')
def trained():
    """A model of the tag's architecture with every weight moved away from its initial value."""
    return trained_like(timm.create_model(ARCH, pretrained_backbone=False), seed=5)


@pytest.fixture(scope='module')
def release_file(trained, tmp_path_factory):
    """``trained``'s weights as the release writes them (float16 weight tensors)."""
    path = tmp_path_factory.mktemp('release') / f'{TAG}.safetensors'
    safetensors.torch.save_file(release.half_state_dict(trained.state_dict()), str(path))
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the Hub (probe, metadata request or download) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError('a network request was made')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(pretrained, 'hub_reachable', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)


def _move_bundled(monkeypatch, path: Path) -> None:
    monkeypatch.setitem(registry.BUNDLED_WEIGHTS, TAG, path)


# --- loading order ------------------------------------------------------------------------------------------
def test_the_bundled_file_is_read_first_without_any_network_request(trained, release_file, monkeypatch, no_network):
    _move_bundled(monkeypatch, release_file)
    loaded = timm.create_model(TAG, pretrained=True)
    half_weights = trained_like(timm.create_model(ARCH, pretrained_backbone=False), seed=5)
    half_weights.load_state_dict({k: v.float() if v.is_floating_point() else v
                                  for k, v in safetensors.torch.load_file(str(release_file)).items()})
    assert torch.equal(_descriptors(loaded), _descriptors(half_weights))
    # The untagged name's default tag is the shipped one.
    assert torch.equal(_descriptors(timm.create_model(ARCH, pretrained=True)), _descriptors(half_weights))
    # Not the initialisation: a model without these weights describes the inputs differently.
    assert not torch.allclose(_descriptors(timm.create_model(ARCH)), _descriptors(loaded), atol=1e-3)


def test_without_the_bundled_file_the_hub_cache_is_read_still_without_a_request(
        trained, tmp_path, hub_cache, monkeypatch, no_network):
    _move_bundled(monkeypatch, tmp_path / 'not-installed.safetensors')
    folder = hub.save_pretrained(trained, tmp_path / 'export')
    hub_cache(folder, f'{registry.PROJECT_NAMESPACE}/{TAG}')
    loaded = timm.create_model(TAG, pretrained=True)
    assert torch.equal(_descriptors(loaded), _descriptors(trained))


def test_without_file_and_cache_the_hub_is_asked_and_a_missing_repository_is_one_line(tmp_path, monkeypatch,
                                                                                       fake_hub, hub_cache):
    endpoint, received = fake_hub
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    _move_bundled(monkeypatch, tmp_path / 'not-installed.safetensors')
    with pytest.raises(hub.WeightsNotFoundError) as info:
        timm.create_model(TAG, pretrained=True)
    message = str(info.value)
    assert '\n' not in message and message.startswith(f'{TAG}: no pretrained weights could be loaded because')
    assert f"The package file {tmp_path / 'not-installed.safetensors'} is missing" in message
    assert any(path.startswith(f'/{registry.PROJECT_NAMESPACE}/{TAG}/resolve/main/model.safetensors')
               for _, path, _ in received['requests'])


def test_a_callers_own_hub_id_or_file_wins_over_the_bundled_file(trained, release_file, tmp_path, hub_cache,
                                                                  monkeypatch):
    _move_bundled(monkeypatch, release_file)
    other = trained_like(timm.create_model(ARCH, pretrained_backbone=False), seed=9)
    hub_cache(hub.save_pretrained(other, tmp_path / 'other'), 'someteam/other')
    from_hub = timm.create_model(TAG, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='someteam/other'))
    assert torch.equal(_descriptors(from_hub), _descriptors(other))
    from_file = timm.create_model(TAG, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(tmp_path / 'other' / 'model.safetensors')))
    assert torch.equal(_descriptors(from_file), _descriptors(other))


def test_pretrained_with_other_input_channels_adapts_the_first_convolution_as_timm_does(release_file, monkeypatch,
                                                                                        no_network):
    """timm's in_chans convention: the stem's weight is adapted (summed for 1 channel, repeated and rescaled for
    more) by timm's adapt_input_conv; every other weight is the file's."""
    _move_bundled(monkeypatch, release_file)
    file = safetensors.torch.load_file(str(release_file))
    first_conv = f"{timm.models.get_pretrained_cfg(TAG).first_conv}.weight"
    for in_chans in (1, 4):
        model = timm.create_model(TAG, pretrained=True, in_chans=in_chans)
        state = model.state_dict()
        expected = timm.models.adapt_input_conv(in_chans, file[first_conv]).float()
        assert state[first_conv].shape[1] == in_chans
        torch.testing.assert_close(state[first_conv], expected)
        assert all(torch.equal(state[k], v.float() if v.is_floating_point() else v)
                   for k, v in file.items() if k != first_conv)
        with torch.no_grad():
            assert model.eval()(torch.randn(2, in_chans, *_inputs().shape[2:])).shape == (2, model.num_features)


def test_pointing_the_shipped_tag_at_another_hub_repository_names_the_package_file_as_the_way_back(
        release_file, monkeypatch, hub_cache, tmp_path):
    _move_bundled(monkeypatch, release_file)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(hub.WeightsNotFoundError) as info:
        timm.create_model(TAG, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='someteam/absent'))
    message = str(info.value)
    assert '\n' not in message and "'someteam/absent' is not in the local Hugging Face cache" in message
    assert f'{TAG} ships in the package ({release_file.name}): without an hf_hub_id overlay' in message
    assert 'reinstall' not in message


# --- what is advertised, and the refusal ---------------------------------------------------------------------
def test_only_tags_with_weights_are_advertised():
    for name in timm.list_pretrained('hbfp*'):
        assert name in registry.BUNDLED_WEIGHTS, f'{name} is advertised but has no weights'
    assert TAG in timm.list_pretrained('hbfp*')


def test_a_name_without_weights_is_refused_in_one_line_at_once_naming_the_model_that_has_them(no_network):
    with pytest.raises(hub.WeightsNotFoundError) as info:
        timm.create_model('hbfp_resnet50', pretrained=True)
    message = str(info.value)
    assert '\n' not in message and message.startswith('hbfp_resnet50: no trained Re-ID weights exist')
    assert 'GPU training run on Market-1501' in message and TAG in message
    assert '--checkpoint FILE' in message and "pretrained_cfg_overlay=dict(file='RUN_DIR/model.safetensors')" in message


# --- the release file ---------------------------------------------------------------------------------------
def test_half_precision_keeps_descriptors_within_the_tolerance_and_halves_the_size(trained, release_file, tmp_path):
    loaded = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(release_file)))
    worst = release.descriptor_fidelity(trained, loaded, _inputs(1))
    assert 1 - release.DEFAULT_TOLERANCE <= worst < 1.0  # float16 changed the weights, within the tolerance
    safetensors.torch.save_file(trained.state_dict(), str(tmp_path / 'full.safetensors'))
    assert release_file.stat().st_size < 0.55 * (tmp_path / 'full.safetensors').stat().st_size
    tensors = safetensors.torch.load_file(str(release_file))
    assert {v.dtype for v in tensors.values() if v.is_floating_point() and v.ndim >= 2} == {torch.float16}
    assert {v.dtype for v in tensors.values() if v.is_floating_point() and v.ndim < 2} == {torch.float32}


def test_release_writes_the_file_from_a_run_and_refuses_a_poor_copy(trained, tmp_path, monkeypatch):
    run = tmp_path / 'run'
    run.mkdir()
    size = list(timm.models.get_pretrained_cfg(TAG).input_size[1:])
    (run / 'results.json').write_text(json.dumps({
        'model': ARCH, 'model_args': {}, 'dataset': 'market_layout', 'img_size': size, 'metrics': None}))
    safetensors.torch.save_file(trained.state_dict(), str(run / 'model.safetensors'))
    summary = release.release(run, TAG, output=tmp_path / 'out.safetensors')
    assert summary['min_cosine'] >= 1 - release.DEFAULT_TOLERANCE and summary['compared'] == 64
    metadata = safetensors.safe_open(str(tmp_path / 'out.safetensors'), 'pt').metadata()
    assert metadata['architecture'] == ARCH and json.loads(metadata['img_size']) == size
    with pytest.raises(ValueError, match=r'below 1 - 1e-12; file not written'):
        release.release(run, TAG, output=tmp_path / 'strict.safetensors', tolerance=1e-12)
    assert not (tmp_path / 'strict.safetensors').exists()
    with pytest.raises(ValueError, match=r"--tag: 'hbfp_resnet50.market1501' has no bundled weights file"):
        release.release(run, 'hbfp_resnet50.market1501')


# --- the package as installed ---------------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)


def test_the_shipped_file_loads_strictly_offline_and_its_transform_is_the_training_size():
    code = f'''
import socket
def refuse(*a, **k): raise AssertionError("network")
socket.socket.connect = refuse
import json, timm, torch, safetensors
import hbfp_timm
m = timm.create_model("{TAG}", pretrained=True)
meta = safetensors.safe_open(str(hbfp_timm.models.registry.BUNDLED_WEIGHTS["{TAG}"]), "pt").metadata()
cfg = timm.data.resolve_model_data_config(m)
t = timm.data.create_transform(**cfg)
print(json.dumps({{"size": json.loads(meta["img_size"]), "cfg": list(cfg["input_size"][1:]),
                   "resize": list(t.transforms[0].size), "dim": m.num_features}}))
'''
    done = _python(code)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out['cfg'] == out['size'] == out['resize']


# --- the commands' default model ------------------------------------------------------------------------------
def test_embed_and_search_run_on_the_shipped_model_when_no_model_is_named(trained, release_file, tmp_path,
                                                                           monkeypatch, no_network, capsys):
    from hbfp_timm import FeatureExtractor
    from hbfp_timm.embed import main as embed_main
    from hbfp_timm.inference.embeddings import load_embeddings
    from hbfp_timm.search import main as search_main

    from tiny_models import write_images
    _move_bundled(monkeypatch, release_file)
    paths = write_images(tmp_path / 'photos', ['0001_c1s1_000001_01.jpg', '0001_c2s1_000002_01.jpg',
                                               '0002_c1s1_000003_01.jpg', '0002_c2s1_000004_01.jpg'])
    common = ['--device', 'cpu', '--workers', '0']
    assert embed_main([str(tmp_path / 'photos'), '--output', str(tmp_path / 'e.safetensors'), *common]) == 0
    embeddings = load_embeddings(tmp_path / 'e.safetensors')
    assert embeddings.metadata['model'] == TAG
    expected = FeatureExtractor(timm.create_model(TAG, pretrained=True), device='cpu')([str(p) for p in paths])
    torch.testing.assert_close(embeddings.features, expected, rtol=1e-4, atol=1e-5)
    assert search_main(['--query', str(tmp_path / 'photos'), '--gallery', str(tmp_path / 'photos'),
                        '--output', str(tmp_path / 'ranking'), '--num-pictures', '0', *common]) == 0
    assert '4 queries x 4 gallery images' in capsys.readouterr().out
    assert embed_main([str(tmp_path / 'photos'), '--output', str(tmp_path / 'x.safetensors'),
                       '--checkpoint', str(release_file)]) == 2
    assert '--checkpoint: needs --model naming the architecture' in capsys.readouterr().err
