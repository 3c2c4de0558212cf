"""The ```python blocks of README.md and MODEL_CARD.md, read from the files at test time and run as written.

Each block runs in a fresh namespace, statement by statement, in an empty folder where the files it names
(``runs/mine``, ``my_lists/query.csv``, ``resnet50.safetensors``...) are laid out beforehand, and with
huggingface_hub offline on an empty cache (``HF_HUB_OFFLINE=1``, sockets refused): a name it loads from the Hub
(``hf-hub:ORG/...``, timm's ImageNet weights of ``pretrained_backbone=True``) is served from a cache the test fills
with weights it wrote itself, and the shipped model from the package file. The tests then check what the blocks'
comments say. Tracebacks point at the lines of the markdown file.

A block added to either document fails `test_every_python_block_is_run_or_listed_as_not_run` until it is run by
a test here or listed with the reason it is not run.
"""
import ast
import json
import socket
import textwrap
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import hbfp_timm
from hbfp_timm import hub
from hbfp_timm.data import build_test_transform
from hbfp_timm.metrics import compute_distance_matrix, evaluate_rank
from hbfp_timm.models.pretrained import WeightsNotFoundError
from hbfp_timm.models.registry import BUNDLED_WEIGHTS, DEFAULT_REID_MODEL

from hub_fixtures import hub_cache  # noqa: F401  (fixture)
from tiny_models import TINY_ARGS, single_thread, tiny_model, trained_like, write_images, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ('README.md', 'MODEL_CARD.md')


class Block(NamedTuple):
    """One ```python block: a phrase it contains (so that a moved or new block is not run by the wrong test), and
    either the test that runs it or the reason it is not run."""
    marker: str
    test: str = ''
    not_run: str = ''


# Every ```python block of each document, in document order.
BLOCKS = {
    'README.md': [
        Block('emb = model(images)', test='test_use_the_model'),
        Block('backbone_weights=', test='test_any_timm_backbone'),
        Block('GeneralizedPooling(', test='test_layers_on_plain_tensors'),
        Block('forward_intermediates', test='test_timm_conventions'),
        Block('evaluate_features(q_feats', test='test_evaluation_metrics'),
        Block('local-dir:hub/', test='test_loading_published_weights'),
        Block('FeatureExtractor(', test='test_own_images'),
    ],
    'MODEL_CARD.md': [
        Block('descriptors = model(images)', test='test_model_card_usage'),
    ],
}


def python_blocks(document: str) -> List[Tuple[int, str]]:
    """(line of the first code line, source) of every ```python block of `document`, in order."""
    blocks, fence, start, lines = [], None, 0, []
    for number, line in enumerate((ROOT / document).read_text(encoding='utf-8').splitlines(), start=1):
        stripped = line.strip()
        if not stripped.startswith('```'):
            lines.append(line)
        elif fence is None:
            fence, start, lines = stripped[3:].strip().lower(), number + 1, []
        else:
            if fence in ('python', 'py'):
                blocks.append((start, textwrap.dedent('\n'.join(lines)) + '\n'))
            fence = None
    assert fence is None, f'{document}: the ```{fence} block opened on line {start - 1} is never closed'
    return blocks


def run_block(document: str, index: int, **names: Any) -> List[Dict[str, Any]]:
    """Run block `index` of `document` in a namespace holding `names`, one top-level statement at a time.

    Returns:
        The namespace after each statement (shallow copies; the value of an expression statement is under
        ``'_'``), so that a name a later line rebinds can still be checked.
    """
    blocks = python_blocks(document)
    assert index < len(blocks), f'{document} has {len(blocks)} ```python blocks, not {index + 1}'
    line, source = blocks[index]
    marker = BLOCKS[document][index].marker
    assert marker in source, (f'{document}:{line}: ```python block {index} lacks {marker!r}: the blocks moved; '
                              f'update BLOCKS in {Path(__file__).name}')
    filename = str(ROOT / document)
    tree = ast.parse('\n' * (line - 1) + source, filename)  # line numbers of the markdown file
    namespace = dict(names, __name__='__main__')
    states = []
    for statement in tree.body:
        if isinstance(statement, ast.Expr):
            namespace['_'] = eval(compile(ast.Expression(statement.value), filename, 'eval'), namespace)
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), filename, 'exec'), namespace)
        states.append(dict(namespace))
    return states


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_python_block_is_run_or_listed_as_not_run(document):
    found = python_blocks(document)
    listed = BLOCKS[document]
    assert len(found) == len(listed), (
        f'{document} has {len(found)} ```python blocks (from lines {[line for line, _ in found]}), '
        f'{Path(__file__).name} lists {len(listed)}: run a new block in a test, or list it with why it is not run')
    for index, ((line, source), block) in enumerate(zip(found, listed)):
        assert block.marker in source, f'{document}:{line}: block {index} lacks {block.marker!r}; update BLOCKS'
        assert bool(block.test) != bool(block.not_run), f'{document} block {index}: give a test or a reason'
        if block.test:
            assert callable(globals().get(block.test)), f'{document} block {index}: no test {block.test}'


def test_blocks_are_parsed_from_the_fences():
    # A fenced block of another language is skipped, and lines keep their place in the file.
    readme = [line.strip() for line in (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()]
    blocks = python_blocks('README.md')
    assert readme.count('```python') == len(blocks) and readme.count('```bash') > 0
    for line, source in blocks:
        assert readme[line - 2] == '```python' and source.splitlines()[0].strip() == readme[line - 1]
        assert '```' not in source and compile(source, 'README.md', 'exec')


# --- what the blocks find on disk and on the "Hub" --------------------------------------------------------------
@pytest.fixture
def offline(hub_cache, tmp_path, monkeypatch):  # noqa: F811  (hub_cache is hub_fixtures' fixture)
    """An empty working folder, huggingface_hub offline on an empty cache (`hub_fixtures.hub_cache`), and no network
    at all. Returns the function that puts a folder into the cache as a Hub repository."""
    work = tmp_path / 'work'
    work.mkdir()

    def refused(*args, **kwargs):
        raise OSError('test_readme: no network (a block tried to connect)')

    monkeypatch.setattr(socket.socket, 'connect', refused)
    monkeypatch.setattr(socket, 'create_connection', refused)
    monkeypatch.chdir(work)
    return hub_cache


def state_dicts_equal(model: torch.nn.Module, expected: Dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], v.to(state[k])) for k, v in expected.items())


def a_person_crop(seed: int = 0, size=(45, 110)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# --- README.md ------------------------------------------------------------------------------------------------
def test_use_the_model(offline):
    block = run_block('README.md', 0)[-1]
    model, emb, transform = block['model'], block['emb'], block['transform']
    # The shipped weights, read from the package file (the cache is empty and the network refused).
    shipped = load_file(str(BUNDLED_WEIGHTS[DEFAULT_REID_MODEL]))
    assert DEFAULT_REID_MODEL == 'hbfp_mobilenetv2_100.cuhk03' and state_dicts_equal(model, shipped)
    assert not model.training
    assert emb.shape == (8, 480) and emb.dtype == torch.float32
    assert not torch.allclose(emb.norm(dim=1), torch.ones(8), atol=1e-3)  # not L2-normalised
    # 128x64, as it was trained: timm's pipeline stretches any crop to it, exactly as the evaluation does.
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 128, 64)
    crop = a_person_crop()
    assert torch.equal(transform(crop), build_test_transform((128, 64))(crop))
    # The paper's model: the architecture alone; no trained weights exist for it.
    paper = block['paper']
    assert isinstance(paper, hbfp_timm.HBFPNet) and not paper.training
    assert paper.pretrained_cfg['input_size'] == (3, 384, 128)
    with pytest.raises(WeightsNotFoundError):
        timm.create_model('hbfp_resnet50', pretrained=True)


def _unmatched_keys(backbone_state: Dict[str, torch.Tensor], net: torch.nn.Module) -> List[str]:
    """The keys of a backbone file that are not in `net` (as ``backbone.KEY``) with the same values."""
    state = net.state_dict()
    return sorted(key for key, value in backbone_state.items()
                  if not ('backbone.' + key in state and torch.equal(state['backbone.' + key], value)))


def test_any_timm_backbone(offline, tmp_path):
    # timm's ImageNet weights of regnety_008, as the Hub would serve them: here weights this test wrote.
    cfg = timm.models.get_pretrained_cfg('regnety_008')
    torch.manual_seed(1)
    imagenet = {k: v.contiguous() for k, v in timm.create_model('regnety_008').state_dict().items()}
    (tmp_path / 'regnety').mkdir()
    save_file(imagenet, str(tmp_path / 'regnety' / 'model.safetensors'))
    offline(tmp_path / 'regnety', cfg.hf_hub_id)
    # The local file of the second line, in the working folder.
    torch.manual_seed(2)
    resnet50 = timm.create_model('resnet50').state_dict()
    save_file(resnet50, 'resnet50.safetensors')

    states = run_block('README.md', 1, hbfp_timm=hbfp_timm)  # continues the block above (import hbfp_timm)
    regnet, resnet = states[0]['net'], states[1]['net']
    assert isinstance(regnet, hbfp_timm.HBFPNet) and isinstance(resnet, hbfp_timm.HBFPNet)
    # Every backbone weight comes from the file; only the ImageNet classifier, which HBFP-Net drops, is left out.
    assert _unmatched_keys(imagenet, regnet) == sorted(k for k in imagenet if k.startswith(cfg.classifier + '.'))
    assert _unmatched_keys(resnet50, resnet) == ['fc.bias', 'fc.weight']


def test_layers_on_plain_tensors():
    block = run_block('README.md', 2)[-1]
    q_aug, pooled = block['q_aug'], block['pooled']
    assert block['p_aug'].shape == (2, 1024, 24, 8) and q_aug.shape == (2, 2048, 12, 4)
    assert pooled.shape == (2, 2048)
    # lambda 0 is average pooling, 1 max pooling; the mean over the thresholds lies between the two.
    average, maximum = q_aug.mean(dim=(2, 3)), q_aug.amax(dim=(2, 3))
    pooling = block['GeneralizedPooling']
    assert torch.allclose(pooling(lambdas=(0.,))(q_aug), average, atol=1e-5)
    assert torch.allclose(pooling(lambdas=(1.,))(q_aug), maximum, atol=1e-5)
    assert bool((pooled >= average - 1e-5).all()) and bool((pooled <= maximum + 1e-5).all())
    assert not torch.allclose(pooled, average, atol=1e-3) and not torch.allclose(pooled, maximum, atol=1e-3)


def test_timm_conventions():
    block = run_block('README.md', 3)[-1]
    maps, model, final, every_map = block['maps'], block['model'], block['final'], block['every_map']
    # features_only: the three learned maps, at stride 16 of the 384x128 input.
    assert len(maps) == 3 and all(m.shape[0] == 2 and m.shape[-2:] == (24, 8) for m in maps)
    # forward_intermediates: every map feature_info lists, and the three learned maps concatenated.
    info = model.feature_info
    assert [m.shape[1] for m in every_map] == [i['num_chs'] for i in info]
    assert [384 // m.shape[2] for m in every_map] == [i['reduction'] for i in info]
    assert [i['module'] for i in info][-3:] == ['low_map', 'mid_map', 'high_map']
    assert [m.shape[1] for m in maps] == [m.shape[1] for m in every_map[-3:]]
    assert torch.equal(final, torch.cat(every_map[-3:], dim=1))
    assert model.num_classes == 751 and model.drop_rate == 0.1 and model.grad_checkpointing
    # layer_decay: one learning-rate scale per depth, 0.75 apart, from the stem (smallest) to the head (1).
    groups = block['optimizer'].param_groups
    scales = sorted({group['lr_scale'] for group in groups})
    assert len(scales) > 2 and all(group['lr'] == 3.5e-4 for group in groups)
    assert scales == pytest.approx([0.75 ** k for k in range(len(scales) - 1, -1, -1)], rel=1e-3)
    params = [p for group in groups for p in group['params']]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    scale_of = {id(p): group['lr_scale'] for group in groups for p in group['params']}
    named = dict(model.named_parameters())
    assert scale_of[id(named['backbone.conv1.weight'])] == scales[0]
    assert scale_of[id(named['classifier.weight'])] == 1.0
    # timm's data pipeline of the model is the evaluation's test transform (384x128, stretched).
    crop = a_person_crop()
    assert torch.equal(block['transform'](crop), build_test_transform((384, 128))(crop))


def test_evaluation_metrics():
    # Two queries with matches in other cameras, one whose only match is in its own camera (skipped).
    q_feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0]])
    g_feats = torch.tensor([[0.1, 0.0], [0.5, 0.0], [1.0, 0.0], [9.0, 0.0], [10.2, 0.0], [12.0, 0.0], [5.0, 0.0]])
    q_pids, q_camids = np.array([1, 2, 5]), np.array([0, 0, 0])
    g_pids, g_camids = np.array([1, 3, 1, 2, 4, 2, 5]), np.array([0, 1, 1, 1, 1, 2, 0])
    states = run_block('README.md', 4, q_feats=q_feats, g_feats=g_feats, q_pids=q_pids, g_pids=g_pids,
                       q_camids=q_camids, g_camids=g_camids)
    block = states[-1]
    cmc, mAP, result = block['cmc'], block['mAP'], block['result']
    # Query 0: its own-camera match is left out, a negative ranks first, the match second: AP 1/2. Query 1:
    # matches at ranks 2 and 3: AP (1/2 + 2/3) / 2.
    assert mAP == pytest.approx((1 / 2 + 7 / 12) / 2) and cmc[0] == 0 and cmc[1] == 1 and len(cmc) == 50
    assert result.mAP == mAP and np.array_equal(result.cmc, cmc)  # the same, without the Q x G matrix
    assert block['_'] == (result.mAP, 0.0, result.all_AP, 1)
    assert result.all_AP == pytest.approx([1 / 2, 7 / 12]) and list(result.valid_mask) == [True, True, False]
    assert isinstance(result, hbfp_timm.metrics.RankResult)
    unpacked_cmc, unpacked_map = result
    assert unpacked_map == mAP and np.array_equal(unpacked_cmc, cmc)


def test_loading_published_weights(offline, tmp_path):
    # A run of the paper's model (trained at 256x128) and its Hub layout, as `hub save` / `hub push` make them.
    torch.manual_seed(3)
    trained = trained_like(timm.create_model('hbfp_resnet50'), seed=3)
    expected = trained.state_dict()
    results = dict(model='hbfp_resnet50', model_args={}, dataset='market1501', img_size=[256, 128], metrics=None)
    Path('runs/m').mkdir(parents=True)
    save_file(expected, 'runs/m/model.safetensors')
    Path('runs/m/results.json').write_text(json.dumps(results))
    hub.save_pretrained(trained, 'hub/hbfp_resnet50.market1501', results)
    offline(Path('hub/hbfp_resnet50.market1501'), 'ORG/hbfp_resnet50.market1501')  # hf-hub: from the cache
    del trained

    states = run_block('README.md', 5, timm=timm, hbfp_timm=hbfp_timm)  # "after `import hbfp_timm`"
    for state in states:  # hf-hub:, local-dir:, a file overlay
        model = state['model']
        assert isinstance(model, hbfp_timm.HBFPNet) and state_dicts_equal(model, expected)
        # A weights file brings the input size it was trained at (the text after the block).
        assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 256, 128)
    assert len(states) == 3


def test_own_images(offline):
    # A trainer run of a tiny model, and list files of query and gallery crops (paths relative to the lists).
    tiny = trained_like(tiny_model(), seed=4)
    run = write_run(Path('runs/mine'), tiny)
    names = [f'crops/{i:02d}.png' for i in range(15)]
    write_images(Path('my_lists'), names, seed=4)
    pids = [1, 2, 3] + [1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    camids = [0, 0, 0] + [1, 2, 1, 2, 0, 1, 1, 1, 1, 1, 1, 1]
    rows = [f'{name},{pid},{camid}' for name, pid, camid in zip(names, pids, camids)]
    Path('my_lists/query.csv').write_text('\n'.join(['path,pid,camid'] + rows[:3]) + '\n')
    Path('my_lists/gallery.csv').write_text('\n'.join(['path,pid,camid'] + rows[3:]) + '\n')

    block = run_block('README.md', 6)[-1]
    extractor, query, gallery = block['extractor'], block['query'], block['gallery']
    q_feats, g_feats, dist, idx = block['q_feats'], block['g_feats'], block['dist'], block['idx']
    assert query.pids == pids[:3] and gallery.camids == camids[3:]
    assert all(Path(path).samefile(Path('my_lists', name)) for path, name in zip(query.paths, names[:3]))
    assert q_feats.shape == (3, extractor.num_features) and g_feats.shape == (12, extractor.num_features)
    assert extractor.img_size == (64, 32)  # the run's training size
    # topk is exact: the 10 nearest of the whole distance matrix, in order.
    distances = compute_distance_matrix(q_feats, g_feats)
    assert dist.shape == idx.shape == (3, 10)
    assert np.array_equal(idx.cpu().numpy(), np.argsort(distances, axis=1, kind='stable')[:, :10])
    assert np.allclose(dist.cpu().numpy(), np.sort(distances, axis=1)[:, :10], rtol=1e-5, atol=1e-4)
    expected_cmc, expected_map = evaluate_rank(distances, pids[:3], pids[3:], camids[:3], camids[3:])
    assert block['mAP'] == pytest.approx(expected_map) and np.allclose(block['cmc'], expected_cmc)
    # Also PIL images and uint8 arrays; and the other sources the comment names give the same descriptors.
    pictures = [Image.open(path).convert('RGB') for path in query.paths]
    assert torch.allclose(extractor(pictures), q_feats, rtol=1e-4, atol=1e-4)
    assert torch.allclose(extractor([np.asarray(p) for p in pictures]), q_feats, rtol=1e-4, atol=1e-4)
    hub.save_pretrained(tiny, 'hub_folder', json.loads((run / 'results.json').read_text()))
    named = hbfp_timm.FeatureExtractor('hbfp_resnet18', checkpoint='runs/mine/model.safetensors', model_args=TINY_ARGS)
    for other in (hbfp_timm.FeatureExtractor('hub_folder'), hbfp_timm.FeatureExtractor('local-dir:hub_folder'), named):
        assert other.img_size == (64, 32) and torch.allclose(other(query.paths), q_feats, rtol=1e-4, atol=1e-4)


# --- MODEL_CARD.md ----------------------------------------------------------------------------------------------
def test_model_card_usage(offline, tmp_path):
    # Weights pushed with hbfp_timm.hub, as the cache holds them after a download.
    pushed = trained_like(tiny_model(), seed=5)
    hub.save_pretrained(pushed, tmp_path / 'pushed')
    offline(tmp_path / 'pushed', 'ORG/NAME')

    images = torch.randn(4, 3, 128, 64)  # the card's `images`: a preprocessed batch
    states = run_block('MODEL_CARD.md', 0, images=images)
    shipped, descriptors = states[-2]['model'], states[-2]['descriptors']
    assert state_dicts_equal(shipped, load_file(str(BUNDLED_WEIGHTS['hbfp_mobilenetv2_100.cuhk03'])))
    assert shipped.num_classes == 0 and descriptors.shape == (4, 480)
    assert timm.data.resolve_model_data_config(shipped)['input_size'] == (3, 128, 64)
    assert states[-2]['transform'](a_person_crop()).shape == (3, 128, 64)
    loaded = states[-1]['model']
    assert state_dicts_equal(loaded, pushed.state_dict()) and not loaded.training
