"""Tests of hbfp_timm.hub, all offline: a huggingface_hub cache laid out in tmp_path (HF_HUB_OFFLINE=1) for
loading, and a local HTTP server speaking the Hub API for uploading (both in hub_fixtures.py), so the real client
code runs end to end."""
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
import yaml
from PIL import Image

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm import FeatureExtractor, hub
from hbfp_timm.hub import cli as hub_cli
from hbfp_timm.models import registry as hbfp_models
from hbfp_timm.utils.files import current_umask

from hub_fixtures import fake_hub, hub_cache  # noqa: F401  (fixtures)
from tiny_models import file_size_limit, trained_like

ROOT = Path(__file__).resolve().parents[1]
ARCH = 'hbfp_mobilenetv2_100'
# Non-default constructor arguments: they must survive every round trip through config.json.
CUSTOM_ARGS = dict(correlation_dim=16, perception_dim=32, gep_learnable=True, gep_lambdas=(0.0, 0.5, 1.0))
RESULTS = {
    'model': ARCH, 'model_args': dict(CUSTOM_ARGS, gep_lambdas=[0.0, 0.5, 1.0]), 'dataset': 'market1501',
    'img_size': [64, 32], 'metrics': {'rank1': 0.8125, 'rank5': 0.9, 'rank10': 0.95, 'mAP': 0.5},
}
INPUT = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(INPUT)


@pytest.fixture(scope='module')
def custom_model():
    return trained_like(timm.create_model(ARCH, **CUSTOM_ARGS), seed=1)


@pytest.fixture(scope='module')
def expected(custom_model):
    """The saved model's descriptors of INPUT, computed once."""
    return _outputs(custom_model)


@pytest.fixture(scope='module')
def saved(custom_model, tmp_path_factory):
    """The custom model saved once with results, as save_pretrained lays it out."""
    return hub.save_pretrained(custom_model, tmp_path_factory.mktemp('saved'), RESULTS)


# --- loading back ------------------------------------------------------------------------------------------
def test_save_pretrained_writes_safetensors_config_and_card_and_no_pickle(saved):
    assert sorted(os.listdir(saved)) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((saved / 'config.json').read_text())
    assert config['architecture'] == ARCH
    assert config['model_args']['correlation_dim'] == 16 and config['model_args']['gep_learnable'] is True
    assert config['model_args']['gep_lambdas'] == [0.0, 0.5, 1.0]
    # The input size the run was trained and evaluated at becomes the exported preprocessing.
    assert config['pretrained_cfg']['input_size'] == [3, 64, 32] and config['pretrained_cfg']['tag'] == 'market1501'


def test_hf_hub_name_rebuilds_the_model_with_its_constructor_args_from_the_offline_cache(
        custom_model, expected, saved, hub_cache):
    hub_cache(saved, 'someteam/hbfp-mobile.market1501')
    loaded = timm.create_model('hf-hub:someteam/hbfp-mobile.market1501', pretrained=True)
    assert (loaded.gep_learnable, loaded.gep_lambdas) == (True, (0.0, 0.5, 1.0))
    assert ({k: v.shape for k, v in loaded.state_dict().items()}
            == {k: v.shape for k, v in custom_model.state_dict().items()})
    assert torch.equal(_outputs(loaded), expected)
    # The comparison can fail: the same architecture without these weights gives other outputs.
    assert not torch.allclose(_outputs(timm.create_model(ARCH, **CUSTOM_ARGS)), expected)


def test_registered_name_with_hub_id_overlay_loads_the_cached_weights(expected, saved, hub_cache):
    hub_cache(saved, 'someteam/my-run')
    loaded = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='someteam/my-run'),
                               **CUSTOM_ARGS)
    assert torch.equal(_outputs(loaded), expected)


def test_local_file_overlay_loads_the_weights_and_the_size_they_were_trained_at(expected, saved, run_dir):
    loaded = timm.create_model(ARCH, pretrained=True, **CUSTOM_ARGS,
                               pretrained_cfg_overlay=dict(file=str(saved / 'model.safetensors')))
    assert torch.equal(_outputs(loaded), expected)
    # Every route to these weights gives timm's data config the training size (64x32), not the registry's.
    for weights in (saved / 'model.safetensors', run_dir / 'model.safetensors'):  # config.json / results.json
        model = timm.create_model(ARCH, pretrained=True, **CUSTOM_ARGS, pretrained_cfg_overlay=dict(file=str(weights)))
        assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 64, 32)
    assert timm.data.resolve_model_data_config(timm.create_model(f'local-dir:{saved}'))['input_size'] == (3, 64, 32)
    # An explicit size in the overlay wins.
    model = timm.create_model(ARCH, pretrained=True, **CUSTOM_ARGS, pretrained_cfg_overlay=dict(
        file=str(saved / 'model.safetensors'), input_size=(3, 96, 48)))
    assert model.pretrained_cfg['input_size'] == (3, 96, 48)


def test_local_dir_source_round_trip(expected, saved):
    loaded = timm.create_model(f'local-dir:{saved}', pretrained=True)
    assert loaded.gep_lambdas == (0.0, 0.5, 1.0)
    assert torch.equal(_outputs(loaded), expected)


def test_hub_namespace_environment_variable_registers_the_data_set_tags_and_reads_their_repositories(tmp_path):
    """Under HBFP_TIMM_HUB_NAMESPACE=ORG (a team that pushed its own weights), ``hbfp_resnet50.<dataset>`` reads
    ``ORG/hbfp_resnet50.<dataset>`` (constructor args shrink the model for speed; the lookup is under test)."""
    small = dict(backbone='mobilenetv2_100', correlation_dim=16, perception_dim=32)
    source = trained_like(timm.create_model('hbfp_resnet50', **small), seed=2)
    cache = tmp_path / 'hf_cache'
    repo = cache / 'models--myteam--hbfp_resnet50.dukemtmc'
    commit = '0123456789abcdef0123456789abcdef01234567'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    hub.save_pretrained(source, repo / 'snapshots' / commit)
    torch.save(INPUT, tmp_path / 'input.pt')
    code = ("import json, sys, timm, torch, hbfp_timm\n"
            "tags = timm.list_pretrained('hbfp_resnet50*')\n"
            "ids = [timm.models.get_pretrained_cfg(t).hf_hub_id for t in tags]\n"
            f"m = timm.create_model('hbfp_resnet50.dukemtmc', pretrained=True, **{small!r}).eval()\n"
            f"torch.save(m(torch.load({str(tmp_path / 'input.pt')!r})).detach(), {str(tmp_path / 'out.pt')!r})\n"
            f"shipped = timm.models.get_pretrained_cfg({hbfp_models.DEFAULT_REID_MODEL!r}).hf_hub_id\n"
            "print(json.dumps([tags, ids, timm.models.get_pretrained_cfg('hbfp_resnet50').tag, shipped]))")
    env = dict(os.environ, HBFP_TIMM_HUB_NAMESPACE='myteam', HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tags, ids, default_tag, shipped = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(tags) == sorted(f'hbfp_resnet50.{d}' for d in hbfp_models.REID_DATASETS)
    assert sorted(ids) == sorted(f'myteam/hbfp_resnet50.{d}' for d in hbfp_models.REID_DATASETS)
    assert default_tag == 'market1501'
    assert shipped == f'hbfp-timm/{hbfp_models.DEFAULT_REID_MODEL}'  # the shipped weights keep the project's name
    assert torch.equal(torch.load(tmp_path / 'out.pt'), _outputs(source))


# --- errors ------------------------------------------------------------------------------------------------
def test_missing_hub_weights_offline_is_one_clear_error_naming_the_ways_out(hub_cache, tmp_path, monkeypatch):
    tag = hbfp_models.DEFAULT_REID_MODEL
    monkeypatch.setitem(hbfp_models.BUNDLED_WEIGHTS, tag, tmp_path / 'absent.safetensors')
    with pytest.raises(hub.WeightsNotFoundError) as info:
        timm.create_model(tag, pretrained=True)
    message = str(info.value)
    assert '\n' not in message
    assert message.startswith(f'{tag}: ')
    assert f"'{hbfp_models.PROJECT_NAMESPACE}/{tag}' is not in the local Hugging Face cache" in message
    assert 'python -m benchmarks.market --train' in message and 'python -m hbfp_timm.train' in message
    assert "pretrained_cfg_overlay=dict(file='RUN_DIR/model.safetensors')" in message
    # No traceback wall: huggingface_hub's exception is neither the cause nor shown as the context.
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_model_without_weights_and_a_missing_file_say_so(hub_cache):
    with pytest.raises(hub.WeightsNotFoundError, match=r"^hbfp_resnet101: no trained Re-ID weights exist for this "
                                                       r"model yet; they need a training run"):
        timm.create_model('hbfp_resnet101', pretrained=True)
    with pytest.raises(hub.WeightsNotFoundError, match=r"file '.*nowhere\.safetensors' does not exist"):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file='/nowhere.safetensors'))


def test_mismatched_checkpoint_lists_missing_unexpected_and_shape_mismatched_keys(saved, tmp_path):
    default_model = timm.create_model(ARCH)
    with pytest.raises(hub.CheckpointMismatchError) as info:
        hub.load_checkpoint(default_model, saved / 'model.safetensors')
    message = str(info.value)
    assert '\n' not in message and message.startswith(str(saved / 'model.safetensors'))
    # gep_learnable=True adds the GeP weights; L=16 vs the default L=128 changes the correlation convs.
    assert 'unexpected keys (1): global_pool.weight' in message
    assert 'shape mismatches (46): bfp_low_mid.bilinear_weight checkpoint (16,) vs model (128,), ' in message
    assert 'bfp_low_mid.p_correlation.bn.running_mean checkpoint (16,) vs model (128,), ... and 43 more' in message
    assert message.endswith('... and 43 more')  # long lists are cut to keep the error one readable line
    assert 'missing keys' not in message and len(message) < 700
    # What the file holds comes first: the architecture its metadata names (the trainer's files carry it).
    held = timm.create_model('hbfp_resnet18', correlation_dim=8, perception_dim=16)
    safetensors.torch.save_file(held.state_dict(), str(tmp_path / 'r18.safetensors'),
                                metadata={'architecture': 'hbfp_resnet18'})
    with pytest.raises(hub.CheckpointMismatchError) as info:
        hub.load_checkpoint(default_model, tmp_path / 'r18.safetensors')
    assert str(info.value).startswith(
        f"{tmp_path / 'r18.safetensors'}: holds hbfp_resnet18 weights ({len(held.state_dict())} tensors) that do not "
        f"match hbfp_mobilenetv2_100 as built ({len(default_model.state_dict())} tensors; check the model name")
    # A .pt state dict read with weights_only=True, missing one key.
    state = timm.create_model(ARCH).state_dict()
    removed = sorted(state)[0]
    del state[removed]
    torch.save(state, tmp_path / 'partial.pt')
    with pytest.raises(hub.CheckpointMismatchError, match=rf'missing keys \(1\): {re.escape(removed)}$'):
        hub.load_checkpoint(timm.create_model(ARCH), tmp_path / 'partial.pt')


def test_mismatched_hub_checkpoint_is_refused_before_loading(saved, hub_cache):
    hub_cache(saved, 'someteam/my-run')
    with pytest.raises(hub.CheckpointMismatchError,
                       match=r'^someteam/my-run: holds a checkpoint \(\d+ tensors\) that '
                             r'do not match hbfp_mobilenetv2_100.*unexpected keys \(1\): global_pool.weight'):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='someteam/my-run'))


class _NotATensor:
    """An arbitrary object in a pickle: weights_only loading must refuse to rebuild it."""


def test_load_checkpoint_refuses_arbitrary_pickles_and_unknown_files(tmp_path):
    model = timm.create_model(ARCH)
    torch.save({'state_dict': model.state_dict(), 'payload': _NotATensor()}, tmp_path / 'unsafe.pth')
    with pytest.raises(RuntimeError, match='weights_only'):
        hub.load_checkpoint(model, tmp_path / 'unsafe.pth')
    with pytest.raises(ValueError, match=r'weights\.npz: expected a checkpoint file ending in \.safetensors'):
        hub.load_checkpoint(model, tmp_path / 'weights.npz')
    with pytest.raises(FileNotFoundError, match='absent.safetensors: checkpoint file not found'):
        hub.load_checkpoint(model, tmp_path / 'absent.safetensors')


# --- model card --------------------------------------------------------------------------------------------
def _front_matter(card: str) -> dict:
    match = re.match(r'^---\n(.*?)\n---\n', card, flags=re.S)
    assert match, 'the card must start with YAML front matter'
    return yaml.safe_load(match.group(1))


def test_model_card_metadata_and_metrics_come_from_the_results(saved):
    card = (saved / 'README.md').read_text()
    meta = _front_matter(card)
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert {'person-reid', 're-identification', 'hbfp'} <= set(meta['tags'])
    assert meta['datasets'] == ['market1501']
    (entry,) = meta['model-index'][0]['results']
    assert entry['dataset']['type'] == 'market1501' and entry['dataset']['name'] == 'Market-1501'
    metrics = {m['name']: m['value'] for m in entry['metrics']}
    # 0.8125 -> 81.25 %, 0.5 -> 50 %: the card reports percent, as the paper does.
    assert metrics == {'Rank-1': 81.25, 'Rank-5': 90.0, 'Rank-10': 95.0, 'mAP': 50.0}
    assert '| these weights | 81.25 | 90 | 95 | 50 |' in card
    assert "| the paper's Table 1 (ResNet-50, 384x128; not these weights) | 95.8 | n/a | n/a | 89.8 |" in card
    usage = card[card.index('```python'):]
    assert usage.index('import hbfp_timm') < usage.index('timm.create_model(')


def test_model_card_without_results_has_no_model_index():
    card = hub.render_model_card(timm.create_model(ARCH))
    meta = _front_matter(card)
    assert 'model-index' not in meta and 'datasets' not in meta
    assert 'no metrics were given' in card
    # A trainer run that was never evaluated records metrics: null; the card names the data set, no scores.
    meta = _front_matter(hub.render_model_card(timm.create_model(ARCH), dict(RESULTS, metrics=None)))
    assert meta['datasets'] == ['market1501'] and 'model-index' not in meta


def test_model_card_usage_snippet_runs_and_gives_the_saved_model_descriptor(
        custom_model, tmp_path, hub_cache, monkeypatch):
    folder = hub.save_pretrained(custom_model, tmp_path / 'card', RESULTS, repo_id='someteam/card-run')
    hub_cache(folder, 'someteam/card-run')
    card = (folder / 'README.md').read_text()
    snippet = re.search(r'```python\n(.*?)```', card, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    image = Image.new('RGB', (40, 90), (200, 30, 90))
    image.save(tmp_path / 'person.jpg')
    namespace = {}
    exec(compile(snippet, 'README.md', 'exec'), namespace)
    expected_input = hbfp_timm.data.build_test_transform((64, 32))(Image.open(tmp_path / 'person.jpg').convert('RGB'))
    with torch.no_grad():
        assert torch.equal(namespace['descriptor'], custom_model(expected_input.unsqueeze(0)))


def test_model_card_thresholds_carry_the_warning_of_a_calibration_on_too_few_pairs(custom_model):
    record = {'format': 'hbfp_timm.thresholds/1', 'metric': 'euclidean', 'flip': False,
              'thresholds': [{'fmr_target': 0.01, 'threshold': 1.5, 'fmr': 0.0, 'tmr': 0.5}]}
    card = hub.render_model_card(custom_model, dict(RESULTS, thresholds=record))
    assert '| 0.01 | 1.5000 | 0.000% | 50.0% |' in card and 'too few pairs' not in card
    warning = '--calibrate: the thresholds calibrated on val rest on too few pairs (...): 16 genuine pairs (...)'
    card = hub.render_model_card(custom_model, dict(RESULTS, thresholds=dict(record, warning=warning)))
    assert f'**Warning**: {warning}.\n' in card


def test_model_card_of_a_run_on_synthetic_data_says_so(custom_model):
    synthetic = {'generator': 'python -m hbfp_timm.data.synthetic', 'seed': 3, 'num_ids': 12}
    card = hub.render_model_card(custom_model, dict(RESULTS, dataset='market_layout', synthetic_data=synthetic))
    meta = _front_matter(card)
    assert 'synthetic-data' in meta['tags']
    assert meta['model-index'][0]['results'][0]['dataset']['name'].startswith('synthetic pedestrians')
    assert '**Trained on synthetic data.**' in card
    assert '- Training data: synthetic pedestrians (python -m hbfp_timm.data.synthetic, seed 3, 12 identities).' in card
    real = hub.render_model_card(custom_model, RESULTS)
    assert 'synthetic' not in real and '- Training data: Market-1501.' in real


def test_results_are_validated_with_clear_errors(custom_model, tmp_path):
    with pytest.raises(ValueError, match=r"results: metrics\['mAP'\] must be a fraction in \[0, 1\], got 89.8"):
        hub.save_pretrained(custom_model, tmp_path, dict(RESULTS, metrics={'rank1': 0.9, 'mAP': 89.8}))
    with pytest.raises(ValueError, match=r"results: 'model' is 'hbfp_resnet50' but the model being saved is"):
        hub.save_pretrained(custom_model, tmp_path, dict(RESULTS, model='hbfp_resnet50'))
    with pytest.raises(ValueError, match=r'model: expected an HBFP model built with timm.create_model'):
        hub.save_pretrained(hbfp_timm.HBFPNet('mobilenetv2_100'), tmp_path)


# --- upload ------------------------------------------------------------------------------------------------
def test_push_to_hub_uploads_the_saved_layout_through_the_real_client(custom_model, saved, fake_hub):
    endpoint, received = fake_hub
    url = hub.push_to_hub(custom_model, 'someteam/hbfp-mobile.market1501', RESULTS, private=True,
                          token='hf_fake_token', commit_message='Add run 7')
    assert url == f'{endpoint}/someteam/hbfp-mobile.market1501/commit/abc123'
    assert received['create'] == [{'name': 'hbfp-mobile.market1501', 'organization': 'someteam',
                                   'visibility': 'private'}]
    assert received['message'] == ['Add run 7']
    assert sorted(received['files']) == ['README.md', 'config.json', 'model.safetensors']
    assert received['files']['model.safetensors'] == (saved / 'model.safetensors').read_bytes()
    assert json.loads(received['files']['config.json']) == json.loads((saved / 'config.json').read_text())
    card = received['files']['README.md'].decode()
    assert card == hub.render_model_card(custom_model, RESULTS, repo_id='someteam/hbfp-mobile.market1501')
    assert 'timm.create_model("hf-hub:someteam/hbfp-mobile.market1501", pretrained=True)' in card
    posts = [(path, auth) for method, path, auth in received['requests'] if method == 'POST']
    repo_api = '/api/models/someteam/hbfp-mobile.market1501'
    assert [path for path, _ in posts] == ['/api/repos/create', '/api/validate-yaml', f'{repo_api}/preupload/main',
                                           f'{repo_api}/commit/main']
    assert all(auth == 'Bearer hf_fake_token' for _, auth in posts)


# --- CLI ---------------------------------------------------------------------------------------------------
@pytest.fixture
def run_dir(custom_model, tmp_path):
    """A run directory as the trainer writes it: results.json + model.safetensors (classifier dropped)."""
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'results.json').write_text(json.dumps(dict(RESULTS, model_args=dict(RESULTS['model_args'],
                                                                               pretrained_backbone=True))))
    safetensors.torch.save_file(custom_model.state_dict(), run / 'model.safetensors')
    return run


def test_cli_save_writes_a_loadable_hub_layout_from_a_run_directory(expected, run_dir, tmp_path):
    out = tmp_path / 'export'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-m', 'hbfp_timm.hub', 'save', str(run_dir), str(out)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    # The trainer's ImageNet initialisation is not replayed when the export is loaded.
    assert config['model_args']['pretrained_backbone'] is False
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_outputs(loaded), expected)
    assert _front_matter((out / 'README.md').read_text())['datasets'] == ['market1501']
    # The export is as readable as any file the user writes (safetensors alone would make it owner-only).
    umask = current_umask()
    assert {name: stat.S_IMODE((out / name).stat().st_mode) for name in os.listdir(out)} == {
        name: 0o666 & ~umask for name in os.listdir(out)}


def test_cli_save_with_notes_dataset_and_licence_writes_them_on_the_card(run_dir, tmp_path):
    (tmp_path / 'notes.md').write_text('**Seeds 0 and 1**: a comparison table would go here.\n')
    (run_dir / 'results.json').write_text(json.dumps(dict(
        json.loads((run_dir / 'results.json').read_text()), dataset='market_layout',
        config={'epochs': 12, 'lr': 0.001, 'seed': 3}, command=['python', '-m', 'hbfp_timm.train', '--seed', '3'],
        num_train_pids=743)))
    assert hub_cli.main(['save', str(run_dir), str(tmp_path / 'out'), '--notes', str(tmp_path / 'notes.md'),
                     '--license', 'other', '--dataset', 'cuhk03']) == 0
    card = (tmp_path / 'out' / 'README.md').read_text()
    meta = _front_matter(card)
    assert meta['license'] == 'other' and meta['datasets'] == ['cuhk03']
    assert '## About these weights\n\n**Seeds 0 and 1**: a comparison table would go here.' in card
    assert "- Recipe (the trainer's settings): epochs 12, lr 0.001, seed 3." in card
    assert '- Training identities: 743.' in card and 'python -m hbfp_timm.train --seed 3' in card
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['pretrained_cfg']['tag'] == 'cuhk03' and config['pretrained_cfg']['license'] == 'other'
    # The licence given is the config's too, whatever the registered variant's (the shipped weights' 'other').
    assert hub_cli.main(['save', str(run_dir), str(tmp_path / 'mit'), '--license', 'mit']) == 0
    assert json.loads((tmp_path / 'mit' / 'config.json').read_text())['pretrained_cfg']['license'] == 'mit'
    assert _front_matter((tmp_path / 'mit' / 'README.md').read_text())['license'] == 'mit'
    assert hub_cli.main(['save', str(run_dir), str(tmp_path / 'out2'), '--notes', str(tmp_path / 'absent.md')]) == 2


def test_cli_notes_and_thresholds_that_cannot_be_read_are_one_line_naming_the_flag(run_dir, tmp_path, capsys):
    out = tmp_path / 'out'
    for flag, value, expected in (
            ('--notes', tmp_path / 'missing.md', f"--notes: {tmp_path / 'missing.md'}: file not found; expected a "
                                                 'markdown file for the model card'),
            ('--notes', tmp_path, f'--notes: {tmp_path}: a folder; expected a markdown file for the model card'),
            ('--notes', tmp_path / 'latin1.md', f"--notes: {tmp_path / 'latin1.md'}: not a UTF-8 text file"),
            ('--thresholds', tmp_path / 'missing.json', f"--thresholds: {tmp_path / 'missing.json'}: thresholds file "
                                                        'not found')):
        (tmp_path / 'latin1.md').write_bytes('caf\xe9'.encode('latin-1'))
        assert hub_cli.main(['save', str(run_dir), str(out), flag, str(value)]) == 2, flag
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith(f'python -m hbfp_timm.hub: error: {expected}'), err
        assert 'Errno' not in err and not out.exists()


def test_cli_save_to_a_file_is_one_line_naming_the_output_folder(run_dir, tmp_path, capsys):
    """An output folder that is a file, or lies under one, was '[Errno 17] File exists' with exit status 1."""
    (tmp_path / 'taken.jpg').write_bytes(b'an image')
    for out, expected in (
            (tmp_path / 'taken.jpg',
             f"out: {tmp_path / 'taken.jpg'} is a file; expected a folder (created if missing)"),
            (tmp_path / 'taken.jpg' / 'hub', f"out: {tmp_path / 'taken.jpg' / 'hub'} cannot be created: "
                                             f"{tmp_path / 'taken.jpg'} is a file; expected a folder")):
        assert hub_cli.main(['save', str(run_dir), str(out)]) == 2
        assert capsys.readouterr().err == f'python -m hbfp_timm.hub: error: {expected}\n'
    assert (tmp_path / 'taken.jpg').read_bytes() == b'an image'


def test_cli_save_on_a_full_disk_is_one_line_naming_the_folder_and_keeps_the_previous_files(run_dir, tmp_path,
                                                                                              capsys):
    """The weights file that did not fit was a SafetensorError traceback, after config.json had been replaced."""
    out = tmp_path / 'out'
    assert hub_cli.main(['save', str(run_dir), str(out)]) == 0
    previous = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    with file_size_limit(len(previous['model.safetensors']) // 2):  # the disk fills up halfway through the weights
        code = hub_cli.main(['save', str(run_dir), str(out), '--dataset', 'other_data'])
    err = capsys.readouterr().err
    assert code == 1 and err.count('\n') == 1
    assert err.startswith(f'python -m hbfp_timm.hub: error: {out}: cannot write (')
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == previous


def test_cli_push_uploads_a_run_directory(run_dir, fake_hub, capsys):
    endpoint, received = fake_hub
    assert hub_cli.main(['push', str(run_dir), '--repo-id', 'someteam/run7', '--token', 'hf_fake_token']) == 0
    assert sorted(received['files']) == ['README.md', 'config.json', 'model.safetensors']
    assert received['files']['model.safetensors'] == (run_dir / 'model.safetensors').read_bytes()
    config = json.loads(received['files']['config.json'])
    assert config['architecture'] == ARCH and config['model_args']['pretrained_backbone'] is False
    assert 'value: 81.25' in received['files']['README.md'].decode()
    assert f'{endpoint}/someteam/run7/commit/abc123' in capsys.readouterr().out


def test_cli_push_without_a_network_is_one_line_saying_the_hub_cannot_be_reached(run_dir, monkeypatch, capsys):
    """No network (not HF_HUB_OFFLINE): the HTTP client's connection error was a traceback."""
    with socket.socket() as closed:  # a port that nothing listens on: the connection is refused at once
        closed.bind(('127.0.0.1', 0))
        endpoint = f'http://127.0.0.1:{closed.getsockname()[1]}'
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    assert hub_cli.main(['push', str(run_dir), '--repo-id', 'someteam/run7', '--token', 'hf_fake_token']) == 1
    assert capsys.readouterr().err == (
        f'python -m hbfp_timm.hub: error: someteam/run7: cannot reach the Hugging Face Hub at {endpoint} (no network, '
        'or a proxy or firewall in the way); nothing was uploaded. python -m hbfp_timm.hub save writes the same files '
        'to a folder, to upload later\n')


def _training_checkpoint(run: Path) -> Path:
    """The trainer's resumable checkpoint.pt beside model.safetensors: the whole model (its ID classifier too), the
    optimizer and the epoch, as `hbfp_timm.training.checkpoint.save_checkpoint` writes them."""
    from hbfp_timm.training.checkpoint import CHECKPOINT_NAME, save_checkpoint
    model = timm.create_model(ARCH, num_classes=7, **CUSTOM_ARGS)
    save_checkpoint(run / CHECKPOINT_NAME, {
        'model_name': ARCH, 'model': model.state_dict(),
        'optimizer': torch.optim.Adam(model.parameters()).state_dict(), 'epoch': 3, 'config': '{}', 'results': '{}'})
    return run / CHECKPOINT_NAME


def test_the_trainers_checkpoint_pt_is_refused_in_one_line_naming_the_run_folder_and_its_weights(
        run_dir, tmp_path, capsys):
    """checkpoint.pt is the resumable training state, not a weights file: given as a checkpoint or as the run,
    one line says what to give instead (it said 'unexpected keys: classifier.weight' or 'run directory not found')."""
    checkpoint = _training_checkpoint(run_dir)
    expected = (f"{checkpoint}: the trainer's resumable training state (for --resume), not a weights file; give its "
                f"run folder {run_dir} or the weights file {run_dir / 'model.safetensors'} instead")
    with pytest.raises(ValueError) as info:
        hub.load_checkpoint(timm.create_model(ARCH, **CUSTOM_ARGS), checkpoint)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:
        hub.load_run(checkpoint)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:  # --model of embed, search, evaluate, activations
        FeatureExtractor(checkpoint, device='cpu')
    assert str(info.value) == expected
    assert hub_cli.main(['save', str(checkpoint), str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err == f'python -m hbfp_timm.hub: error: {expected}\n'
    assert not (tmp_path / 'out').exists()
    other = tmp_path / 'weights.pt'
    torch.save(timm.create_model(ARCH, **CUSTOM_ARGS).state_dict(), other)
    with pytest.raises(ValueError, match=r"weights\.pt: not a run folder; expected the trainer's --output folder or "
                                         r"the model\.safetensors in it"):
        hub.load_run(other)


def test_cli_reports_a_missing_run_file_in_one_line(run_dir, tmp_path, capsys):
    (run_dir / 'results.json').unlink()
    assert hub_cli.main(['save', str(run_dir), str(tmp_path / 'out')]) == 2
    error = capsys.readouterr().err.strip()
    assert '\n' not in error
    assert error.startswith('python -m hbfp_timm.hub: error: ') and f"{run_dir / 'results.json'}: not found" in error
    assert not (tmp_path / 'out').exists()
