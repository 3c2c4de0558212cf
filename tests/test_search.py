"""python -m hbfp_timm.search: exact rankings without the query's own file, ranking.json, a picture whose colours
depend on whether identities (and cameras) are known, embeddings files as inputs, refused when made by different
models, weights (files, --untrained, their digest), --model-arg values, input sizes or flip settings, and the "same
person" threshold of the model that made them."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hbfp_timm import FeatureExtractor
from hbfp_timm.embed import main as embed_main
from hbfp_timm.inference.visualize import MATCH_COLOUR, MISMATCH_COLOUR, SAME_CAMERA_COLOUR, UNKNOWN_COLOUR
from hbfp_timm.metrics import evaluate_rank
from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.search import main

from tiny_models import TINY_ARGS, single_thread, tiny_model, trained_like, write_images, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')
MARKET_NAMES = [f'{pid:04d}_c{cam}s1_00{pid}{cam}00_01.jpg' for pid in (1, 2, 3) for cam in (1, 2, 3)]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp('run'), tiny_model())


def _colours(png):
    pixels = np.asarray(Image.open(png).convert('RGB')).reshape(-1, 3)
    return {tuple(p) for p in np.unique(pixels, axis=0)}


def test_a_folder_searched_against_itself_finds_other_images_and_scores_named_identities(run, tmp_path, capsys):
    paths = [str(p) for p in write_images(tmp_path / 'market', MARKET_NAMES)]
    out = tmp_path / 'out'
    assert main(['--query', str(tmp_path / 'market'), '--gallery', str(tmp_path / 'market'), '--model', str(run),
                 '--topk', '4', '--output', str(out), '--device', 'cpu', '--workers', '0']) == 0
    ranking = json.loads((out / 'ranking.json').read_text())
    features = FeatureExtractor(run, device='cpu')(paths)
    distmat = compute_distance_matrix(features, features)
    np.fill_diagonal(distmat, np.inf)  # a query's own file is never a result
    assert ranking['num_query'] == ranking['num_gallery'] == 9 and ranking['identities_known']
    for row, entry in enumerate(ranking['queries']):
        assert entry['query'] == paths[row] and entry['pid'] == row // 3 + 1
        expected = np.argsort(distmat[row], kind='stable')[:4]
        assert [r['path'] for r in entry['results']] == [paths[g] for g in expected]
        assert [r['distance'] for r in entry['results']] == pytest.approx(distmat[row, expected].tolist(), abs=1e-5)
        assert [r['same_identity'] for r in entry['results']] == [g // 3 == row // 3 for g in expected]
    # Scores under the Market-1501 protocol, from the cameras in the names.
    pids, cams = np.repeat([1, 2, 3], 3), np.tile([0, 1, 2], 3)
    cmc, mAP = evaluate_rank(compute_distance_matrix(features, features), pids, pids, cams, cams, max_rank=10)
    assert ranking['evaluation']['rank1'] == pytest.approx(cmc[0])
    assert ranking['evaluation']['mAP'] == pytest.approx(mAP)
    protocol = ranking['evaluation']['protocol']
    assert (f'9 queries x 9 gallery images, top 4; rank-1 {cmc[0]:.1%}, mAP {mAP:.1%} ({protocol}; 0 queries '
            f'without a match)') in capsys.readouterr().out
    colours = _colours(out / 'ranking.png')
    assert MATCH_COLOUR in colours and MISMATCH_COLOUR in colours


def test_the_summary_counts_one_query_in_the_singular(run, tmp_path, capsys):
    # Identity 4 is seen by camera 1 only: its query has no true match under the protocol; identity 5's has one.
    write_images(tmp_path / 'q', ['0004_c1s1_000400_01.jpg', '0005_c1s1_000500_01.jpg'], seed=1)
    write_images(tmp_path / 'g', ['0004_c1s1_000401_01.jpg', '0005_c2s1_000501_01.jpg'], seed=2)
    assert main(['--query', str(tmp_path / 'q'), '--gallery', str(tmp_path / 'g'), '--model', str(run),
                 '--topk', '1', '--output', str(tmp_path / 'out'), '--device', 'cpu', '--workers', '0']) == 0
    summary = capsys.readouterr().out
    assert summary.startswith('2 queries x 2 gallery images, top 1; rank-1 ')
    assert '; 1 query without a match);' in summary


def test_free_names_give_neutral_colours_and_no_scores(run, tmp_path):
    write_images(tmp_path / 'q', ['front door.jpg'], seed=1)
    write_images(tmp_path / 'g', [f'cam_{i}.png' for i in range(5)], seed=2)
    out = tmp_path / 'out'
    assert main(['--query', str(tmp_path / 'q'), '--gallery', str(tmp_path / 'g'), '--model', str(run),
                 '--topk', '3', '--output', str(out), '--device', 'cpu', '--workers', '0']) == 0
    ranking = json.loads((out / 'ranking.json').read_text())
    assert not ranking['identities_known'] and ranking['evaluation'] is None
    (entry,) = ranking['queries']
    assert set(entry) == {'query', 'results'} and len(entry['results']) == 3
    assert all(set(result) == {'path', 'distance'} for result in entry['results'])
    distances = [result['distance'] for result in entry['results']]
    assert distances == sorted(distances)
    colours = _colours(out / 'ranking.png')
    assert UNKNOWN_COLOUR in colours and MATCH_COLOUR not in colours and MISMATCH_COLOUR not in colours


def test_embeddings_files_are_searched_without_describing_again(run, tmp_path):
    write_images(tmp_path / 'g', [f'{i}.png' for i in range(6)], seed=3)
    write_images(tmp_path / 'q', ['q.png'], seed=4)
    (tmp_path / 'q' / 'list.csv').write_text('q.png,5\n')
    assert embed_main([str(tmp_path / 'g'), '--model', str(run), '--output', str(tmp_path / 'g.safetensors'),
                       '--device', 'cpu', '--workers', '0']) == 0
    assert embed_main([str(tmp_path / 'q' / 'list.csv'), '--model', str(run), '--output',
                       str(tmp_path / 'q.safetensors'), '--device', 'cpu', '--workers', '0']) == 0
    from_images, from_files = tmp_path / 'a', tmp_path / 'b'
    assert main(['--query', str(tmp_path / 'q' / 'q.png'), '--gallery', str(tmp_path / 'g.safetensors'),
                 '--model', str(run), '--output', str(from_images), '--device', 'cpu', '--workers', '0']) == 0
    assert main(['--query', str(tmp_path / 'q.safetensors'), '--gallery', str(tmp_path / 'g.safetensors'),
                 '--output', str(from_files), '--num-pictures', '0']) == 0  # no --model needed
    first, second = (json.loads((d / 'ranking.json').read_text()) for d in (from_images, from_files))
    assert [r['path'] for r in first['queries'][0]['results']] == [r['path'] for r in second['queries'][0]['results']]
    assert len(first['queries'][0]['results']) == 6 and not (from_files / 'ranking.png').exists()


def test_bad_input_is_one_line_with_a_nonzero_exit(run, tmp_path, capsys):
    write_images(tmp_path / 'g', ['a.png'])
    assert main(['--query', str(tmp_path / 'g'), '--gallery', str(tmp_path / 'g'), '--output', str(tmp_path / 'o'),
                 '--checkpoint', str(tmp_path / 'w.safetensors')]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'python -m hbfp_timm.search: error: --checkpoint: needs --model naming the architecture ' \
                          '(e.g. --model hbfp_resnet50)'
    from hbfp_timm.inference.embeddings import Embeddings, save_embeddings
    save_embeddings(tmp_path / 'small.safetensors', Embeddings(torch.zeros(2, 3), ['x', 'y']))
    save_embeddings(tmp_path / 'wide.safetensors', Embeddings(torch.zeros(2, 5), ['x', 'y']))
    assert main(['--query', str(tmp_path / 'small.safetensors'), '--gallery', str(tmp_path / 'wide.safetensors'),
                 '--output', str(tmp_path / 'o')]) == 2
    assert 'query descriptors are 3-d but gallery descriptors 5-d' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(['--query', 'q', '--gallery', 'g', '--output', 'o', '--topk', '0'])
    assert exit_info.value.code == 2


def _files(tmp_path, query_how, gallery_how, dim=4):
    """A query and a gallery embeddings file (two images each) whose metadata say how they were made."""
    from hbfp_timm.inference.embeddings import Embeddings, save_embeddings
    files = []
    for name, how in (('q', query_how), ('g', gallery_how)):
        files.append(str(save_embeddings(tmp_path / f'{name}.safetensors', Embeddings(
            torch.arange(2 * dim, dtype=torch.float32).reshape(2, dim), [f'{name}0.png', f'{name}1.png'],
            metadata=how))))
    return files


SHIPPED = {'model': 'hbfp_mobilenetv2_100.cuhk03', 'img_size': '128x64', 'flip': 'False'}


@pytest.mark.parametrize('gallery_how, says', [
    ({**SHIPPED, 'model': 'runs/other'}, 'by runs/other at 128x64 without --flip, --query: .* by '
                                         'hbfp_mobilenetv2_100.cuhk03 at 128x64 without --flip; .* the same --model$'),
    ({**SHIPPED, 'img_size': '256x128'}, 'at 256x128 .* at 128x64 .* the same --img-size$'),
    ({**SHIPPED, 'flip': 'True'}, 'with --flip, --query: .* without --flip; .* the same --flip$'),
])
def test_descriptors_made_differently_are_refused_in_one_line_naming_both_files(tmp_path, capsys, gallery_how,
                                                                                 says):
    query, gallery = _files(tmp_path, SHIPPED, gallery_how)
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'o').exists()
    assert err.startswith(f'python -m hbfp_timm.search: error: --gallery: {gallery} was embedded ')
    assert f'--query: {query} ' in err and re.search(says, err.strip())


def test_the_same_model_named_two_ways_is_the_same_model(tmp_path, monkeypatch):
    (tmp_path / 'runs' / 'mine').mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    query, gallery = _files(tmp_path, {**SHIPPED, 'model': 'runs/mine'},
                            {**SHIPPED, 'model': str(tmp_path / 'runs' / 'mine')})
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o'), '--num-pictures', '0']) == 0


def test_same_person_takes_the_threshold_of_the_model_that_made_the_descriptors(tmp_path, capsys):
    from hbfp_timm.metrics.verification import THRESHOLDS_NAME, save_thresholds
    run = tmp_path / 'mine'
    run.mkdir()
    save_thresholds(run / THRESHOLDS_NAME, {'metric': 'euclidean', 'img_size': [64, 32], 'flip': False,
                                            'thresholds': [{'fmr_target': 1e-3, 'threshold': 2.5}]})
    mine = {'model': str(run), 'img_size': '64x32', 'flip': 'False'}
    query, gallery = _files(tmp_path, mine, mine)
    out = tmp_path / 'o'
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person',
                 '--num-pictures', '0']) == 0
    assert json.loads((out / 'ranking.json').read_text())['threshold'] == 2.5
    assert 'threshold 2.5000' in capsys.readouterr().out
    # Not the shipped model's threshold when the files do not say which model made them: refused.
    query, gallery = _files(tmp_path, {}, {})
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person']) == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m hbfp_timm.search: error: --same-person: --query {query} and --gallery {gallery} do not say which '
        'model made them; pass --model naming it, or --threshold')
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person', '--model', str(run),
                 '--num-pictures', '0']) == 0  # --model names it
    # --model naming another model than the files do, and descriptors of another input size than calibrated.
    query, gallery = _files(tmp_path, mine, mine)
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person',
                 '--model', 'hbfp_mobilenetv2_100.cuhk03']) == 2
    assert f'the descriptors were made by {run}, not --model hbfp_mobilenetv2_100.cuhk03' in capsys.readouterr().err
    query, gallery = _files(tmp_path, {**SHIPPED, 'img_size': '64x32'}, {**SHIPPED, 'img_size': '64x32'})
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert ('the thresholds of hbfp_mobilenetv2_100.cuhk03 were calibrated on descriptors made by '
            'hbfp_mobilenetv2_100.cuhk03 at 128x64 without --flip, these were made by hbfp_mobilenetv2_100.cuhk03 '
            'at 64x32 without --flip') in err


def test_unreadable_files_an_output_that_is_a_file_and_a_threshold_not_above_0_are_one_line(tmp_path, capsys):
    query, gallery = _files(tmp_path, SHIPPED, SHIPPED)
    cut = tmp_path / 'cut.safetensors'
    for length in (100, len(open(gallery, 'rb').read()) - 10):  # the header cut short; the data cut short
        cut.write_bytes(open(gallery, 'rb').read()[:length])
        assert main(['--query', query, '--gallery', str(cut), '--output', str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f'python -m hbfp_timm.search: error: {cut}: cannot read this safetensors file, cut '
                              'short or damaged (')
    (tmp_path / 'taken').write_text('a file')
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'taken')]) == 2
    assert capsys.readouterr().err.strip() == (f'python -m hbfp_timm.search: error: --output: {tmp_path / "taken"} '
                                               'is a file; expected a folder (created if missing)')
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'taken' / 'o')]) == 2
    assert f'--output: {tmp_path / "taken" / "o"} cannot be created: {tmp_path / "taken"} is a file' in \
        capsys.readouterr().err
    for threshold in ('-1', '0', 'nan', 'inf'):  # euclidean distances are >= 0: nothing is below 0
        with pytest.raises(SystemExit) as exit_info:
            main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o'), '--threshold', threshold])
        assert exit_info.value.code == 2
        assert f'--threshold: expected a distance greater than 0, got {float(threshold)}' in capsys.readouterr().err


def test_the_picture_draws_same_camera_matches_apart_as_the_protocol_does_not_score_them(tmp_path):
    from hbfp_timm.inference.embeddings import Embeddings, save_embeddings
    images = [str(p) for p in write_images(tmp_path / 'img', ['q.png', 'a.png', 'b.png', 'c.png'])]
    # Nearest first: the query's identity from its camera, then from another camera, then another identity.
    save_embeddings(tmp_path / 'q.safetensors', Embeddings(torch.zeros(1, 2), images[:1], torch.tensor([1]),
                                                           torch.tensor([0]), SHIPPED))
    save_embeddings(tmp_path / 'g.safetensors', Embeddings(torch.tensor([[1.0, 0], [2, 0], [3, 0]]), images[1:],
                                                           torch.tensor([1, 1, 2]), torch.tensor([0, 1, 1]), SHIPPED))
    out = tmp_path / 'o'
    assert main(['--query', str(tmp_path / 'q.safetensors'), '--gallery', str(tmp_path / 'g.safetensors'),
                 '--output', str(out)]) == 0
    ranking = json.loads((out / 'ranking.json').read_text())
    assert [r['path'] for r in ranking['queries'][0]['results']] == images[1:]  # the ranking keeps it, ...
    assert ranking['evaluation']['rank1'] == 1.0  # ... the evaluation leaves it out
    pixels = np.asarray(Image.open(out / 'ranking.png').convert('RGB'))
    cell_w, gap, label_h = 64 + 8, 12, 16
    borders = [tuple(pixels[label_h + 1, (cell_w + gap) * rank + gap + 1]) for rank in (1, 2, 3)]
    assert borders == [SAME_CAMERA_COLOUR, MATCH_COLOUR, MISMATCH_COLOUR]


TINY = ['--model', 'hbfp_resnet18', *[f'--model-arg={key}={value}' for key, value in TINY_ARGS.items()],
        '--img-size', '64', '32', '--device', 'cpu', '--workers', '0']


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Weights files of hbfp_resnet18: a, a copy of a elsewhere, and b (other weights); images to describe; and
    embeddings files of the images written by embed with a, with b, and without a weights file (untrained)."""
    folder = tmp_path_factory.mktemp('checkpoints')
    (folder / 'elsewhere').mkdir()
    save_file(trained_like(tiny_model(), seed=1).state_dict(), str(folder / 'a.safetensors'))
    shutil.copy(folder / 'a.safetensors', folder / 'elsewhere' / 'copy.safetensors')
    save_file(trained_like(tiny_model(), seed=2).state_dict(), str(folder / 'b.safetensors'))
    write_images(folder / 'photos', ['x.png', 'y.png'])
    for name, flags in (('a', ['--checkpoint', str(folder / 'a.safetensors')]),
                        ('b', ['--checkpoint', str(folder / 'b.safetensors')]), ('none', ['--untrained'])):
        assert embed_main([str(folder / 'photos'), '--output', str(folder / f'{name}.emb.safetensors'), *TINY,
                           *flags]) == 0
    return folder


def test_descriptors_of_one_registered_name_with_other_checkpoints_are_refused(checkpoints, tmp_path, capsys):
    a, b, none = (str(checkpoints / f'{name}.emb.safetensors') for name in ('a', 'b', 'none'))
    for query, gallery, says, flags in (
            (b, a, f"with --checkpoint {checkpoints / 'b.safetensors'}", '--checkpoint'),
            (none, a, 'with --untrained', '--checkpoint and --untrained')):
        assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and not (tmp_path / 'o').exists()
        assert err == (f'python -m hbfp_timm.search: error: --gallery: {gallery} was embedded by hbfp_resnet18 '
                       f"with --checkpoint {checkpoints / 'a.safetensors'} at 64x32 without --flip, --query: "
                       f'{query} by hbfp_resnet18 {says} at 64x32 without --flip; their distances cannot be '
                       f'compared: describe both with the same {flags}')
    # A side that search describes itself says which weights file described it too.
    common = ['--gallery', a, '--output', str(tmp_path / 'o'), '--num-pictures', '0', *TINY]
    assert main(['--query', str(checkpoints / 'photos'), *common, '--checkpoint',
                 str(checkpoints / 'b.safetensors')]) == 2
    assert f"--query: {checkpoints / 'photos'} by hbfp_resnet18 with --checkpoint {checkpoints / 'b.safetensors'}" \
        in capsys.readouterr().err
    # The same file by another path, or the same content in another file, is the same weights.
    assert main(['--query', str(checkpoints / 'photos'), *common, '--checkpoint',
                 str(checkpoints / 'elsewhere' / '..' / 'a.safetensors')]) == 0
    assert main(['--query', str(checkpoints / 'photos'), *common, '--checkpoint',
                 str(checkpoints / 'elsewhere' / 'copy.safetensors')]) == 0


LATER_KEYS = ('untrained', 'model_args', 'weights_sha256')  # recorded after checkpoint and checkpoint_sha256


def test_files_that_do_not_say_which_weights_file_are_compared_on_the_rest(checkpoints, tmp_path, capsys):
    from hbfp_timm.inference.embeddings import load_embeddings, save_embeddings
    embeddings = load_embeddings(checkpoints / 'a.emb.safetensors')
    a, b, none = (str(checkpoints / f'{name}.emb.safetensors') for name in ('a', 'b', 'none'))
    # Written before any of the weights were recorded: compared on the model, input size and flip.
    older = {key: value for key, value in embeddings.metadata.items()
             if not key.startswith('checkpoint') and key not in LATER_KEYS}
    save_embeddings(tmp_path / 'older.safetensors', embeddings._replace(metadata=older))
    for gallery in (b, none):
        assert main(['--query', str(tmp_path / 'older.safetensors'), '--gallery', gallery,
                     '--output', str(tmp_path / 'o'), '--num-pictures', '0']) == 0
    # Written when only the weights file was recorded: compared on it too, as then.
    older = {key: value for key, value in embeddings.metadata.items() if key not in LATER_KEYS}
    save_embeddings(tmp_path / 'older.safetensors', embeddings._replace(metadata=older))
    for gallery, status in ((a, 0), (b, 2), (none, 2)):
        assert main(['--query', str(tmp_path / 'older.safetensors'), '--gallery', gallery,
                     '--output', str(tmp_path / 'o'), '--num-pictures', '0']) == status
        assert capsys.readouterr().err.strip().endswith('' if status == 0 else
                                                        'describe both with the same --checkpoint')


def test_a_checkpoint_whose_content_changed_between_the_two_embeddings_is_refused(tmp_path, capsys):
    weights = {**SHIPPED, 'checkpoint': str(tmp_path / 'w.safetensors')}
    query, gallery = _files(tmp_path, {**weights, 'checkpoint_sha256': '1' * 64},
                            {**weights, 'checkpoint_sha256': '2' * 64})
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith('describe both with the same --checkpoint')
    assert f"with --checkpoint {tmp_path / 'w.safetensors'} (sha256 222222222222) at 128x64" in err
    assert f"with --checkpoint {tmp_path / 'w.safetensors'} (sha256 111111111111) at 128x64" in err


def test_same_person_does_not_take_the_thresholds_of_a_registered_name_for_a_checkpoint(checkpoints, tmp_path,
                                                                                         capsys):
    out = str(tmp_path / 'o')
    # The shipped model's name with another weights file: its stored thresholds are not these weights'.
    weights = {**SHIPPED, 'checkpoint': str(tmp_path / 'w.safetensors'), 'checkpoint_sha256': '1' * 64}
    query, gallery = _files(tmp_path, weights, weights)
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person']) == 2
    assert capsys.readouterr().err.strip() == (
        'python -m hbfp_timm.search: error: --same-person: the descriptors were made by hbfp_mobilenetv2_100.cuhk03 '
        f"with --checkpoint {tmp_path / 'w.safetensors'}, a weights file with no calibrated threshold stored with it "
        '(those of hbfp_mobilenetv2_100.cuhk03 are for its own weights); calibrate one with python -m '
        'hbfp_timm.evaluate --calibrate on labelled data and pass it as --threshold, or describe the images with '
        '--model naming the run or Hub folder of these weights')
    assert not (tmp_path / 'o').exists()
    # Files that do not say, with --checkpoint given; files that say none, with --checkpoint given.
    query, gallery = _files(tmp_path, SHIPPED, SHIPPED)
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person', '--checkpoint',
                 'w.safetensors']) == 2
    assert 'made by hbfp_mobilenetv2_100.cuhk03 with --checkpoint w.safetensors, a weights file with no ' in \
        capsys.readouterr().err
    query, gallery = _files(tmp_path, {**SHIPPED, 'checkpoint': ''}, {**SHIPPED, 'checkpoint': ''})
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person', '--checkpoint',
                 'w.safetensors']) == 2
    assert capsys.readouterr().err.strip().endswith(
        'the descriptors were made by hbfp_mobilenetv2_100.cuhk03 without --checkpoint, not with --checkpoint '
        'w.safetensors; leave --checkpoint out to use the thresholds of the weights that made them')
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person', '--num-pictures', '0']) == 0
    assert json.loads((tmp_path / 'o' / 'ranking.json').read_text())['threshold'] > 0  # the shipped model's
    # Real files embedded with a checkpoint, and a side that search describes itself with one.
    a = str(checkpoints / 'a.emb.safetensors')
    for query in (a, str(checkpoints / 'photos')):
        assert main(['--query', query, '--gallery', a, '--output', out, '--same-person', *TINY,
                     '--checkpoint', str(checkpoints / 'a.safetensors')]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"made by hbfp_resnet18 with --checkpoint {checkpoints / 'a.safetensors'}, a weights file with no" in err


def test_same_person_takes_the_thresholds_of_a_run_folder_that_embed_named(tmp_path, capsys):
    from hbfp_timm.metrics.verification import THRESHOLDS_NAME, save_thresholds
    run = write_run(tmp_path / 'run', tiny_model())
    save_thresholds(run / THRESHOLDS_NAME, {'metric': 'euclidean', 'img_size': [64, 32], 'flip': False,
                                            'thresholds': [{'fmr_target': 1e-3, 'threshold': 2.5}]})
    write_images(tmp_path / 'photos', ['x.png', 'y.png'])
    assert embed_main([str(tmp_path / 'photos'), '--model', str(run), '--output', str(tmp_path / 'e.safetensors'),
                       '--device', 'cpu', '--workers', '0']) == 0
    assert main(['--query', str(tmp_path / 'e.safetensors'), '--gallery', str(tmp_path / 'e.safetensors'),
                 '--output', str(tmp_path / 'o'), '--same-person', '--num-pictures', '0']) == 0
    assert json.loads((tmp_path / 'o' / 'ranking.json').read_text())['threshold'] == 2.5


def _digest(path) -> str:
    from hbfp_timm.inference.embeddings import load_embeddings
    return load_embeddings(path).metadata['weights_sha256'][:12]


def test_untrained_descriptors_compare_only_with_the_same_random_weights(checkpoints, tmp_path, capsys):
    none, photos, again = (checkpoints / 'none.emb.safetensors', checkpoints / 'photos',
                           tmp_path / 'again.safetensors')
    common = ['--output', str(tmp_path / 'o'), '--num-pictures', '0']
    # Another run of embed --untrained draws other random weights: the same flags, other weights. (Each process
    # starts from another random state; in this one, seeds stand for that.)
    torch.manual_seed(1)
    assert embed_main([str(photos), '--output', str(again), *TINY, '--untrained']) == 0
    assert main(['--query', str(again), '--gallery', str(none), *common]) == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m hbfp_timm.search: error: --gallery: {none} was embedded by hbfp_resnet18 with --untrained '
        f'(weights sha256 {_digest(none)}) at 64x32 without --flip, --query: {again} by hbfp_resnet18 with '
        f'--untrained (weights sha256 {_digest(again)}) at 64x32 without --flip; their distances cannot be compared: '
        '--untrained draws new random weights on each run: describe query and gallery from their images in one run '
        'of search')
    torch.manual_seed(2)
    assert main(['--query', str(photos), '--gallery', str(none), *common, *TINY, '--untrained']) == 2
    assert '--untrained draws new random weights on each run' in capsys.readouterr().err
    # Both sides described in one run of search: the same random weights.
    assert main(['--query', str(photos), '--gallery', str(photos), *common, *TINY, '--untrained']) == 0
    # Two runs seeded alike draw the same weights: the same digest.
    for name in ('s1', 's2'):
        torch.manual_seed(7)
        assert embed_main([str(photos), '--output', str(tmp_path / f'{name}.safetensors'), *TINY, '--untrained']) == 0
    assert main(['--query', str(tmp_path / 's1.safetensors'), '--gallery', str(tmp_path / 's2.safetensors'),
                 *common]) == 0


def test_weights_changed_under_one_name_are_refused_and_the_same_weights_from_two_files_are_the_same(
        checkpoints, tmp_path, capsys):
    photos, before, after = checkpoints / 'photos', tmp_path / 'before.safetensors', tmp_path / 'after.safetensors'
    run = write_run(tmp_path / 'run', tiny_model())
    common = ['--device', 'cpu', '--workers', '0']
    assert embed_main([str(photos), '--model', str(run), '--output', str(before), *common]) == 0
    write_run(run, trained_like(tiny_model(), seed=5))  # the run folder trained again
    assert embed_main([str(photos), '--model', str(run), '--output', str(after), *common]) == 0
    assert main(['--query', str(after), '--gallery', str(before), '--output', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m hbfp_timm.search: error: --gallery: {before} was embedded by {run} (weights sha256 '
        f'{_digest(before)}) at 64x32 without --flip, --query: {after} by {run} (weights sha256 {_digest(after)}) at '
        f'64x32 without --flip; their distances cannot be compared: the weights of {run} changed between the two '
        '(trained again, or another version): embed both again with the same weights')
    # The weights of a.safetensors saved as a .pt file: another file, the same weights.
    torch.save(trained_like(tiny_model(), seed=1).state_dict(), tmp_path / 'a.pt')
    assert main(['--query', str(photos), '--gallery', str(checkpoints / 'a.emb.safetensors'), '--output',
                 str(tmp_path / 'o'), '--num-pictures', '0', *TINY, '--checkpoint', str(tmp_path / 'a.pt')]) == 0


def test_other_model_args_are_another_model_in_any_order(checkpoints, tmp_path, capsys):
    a, photos = checkpoints / 'a.emb.safetensors', checkpoints / 'photos'
    common = ['--gallery', str(a), '--output', str(tmp_path / 'o'), '--num-pictures', '0', '--model', 'hbfp_resnet18',
              '--img-size', '64', '32', '--device', 'cpu', '--workers', '0', '--checkpoint',
              str(checkpoints / 'a.safetensors')]
    tiny = [f'--model-arg={key}={value}' for key, value in TINY_ARGS.items()]
    # The same weights pooled otherwise: the weights' digest is the same, the descriptors are not.
    assert main(['--query', str(photos), *common, *tiny, '--model-arg', 'gep_combine=sum']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith('; their distances cannot be compared: describe both with '
                                                       'the same --model-arg')
    assert (f"was embedded by hbfp_resnet18 with --checkpoint {checkpoints / 'a.safetensors'} with --model-arg "
            'correlation_dim=8 --model-arg perception_dim=16 at 64x32 without --flip, --query: ') in err
    assert ("with --model-arg correlation_dim=8 --model-arg gep_combine='sum' --model-arg perception_dim=16 at "
            '64x32 without --flip;') in err
    assert main(['--query', str(photos), *common, *reversed(tiny)]) == 0


@pytest.fixture(scope='module')
def shipped(tmp_path_factory):
    """Embeddings files of images by the shipped model's name: with its weights (own), with --untrained, and with
    its weights pooled otherwise (--model-arg gep_combine=sum)."""
    folder = tmp_path_factory.mktemp('shipped')
    write_images(folder / 'photos', ['x.png', 'y.png'])
    for name, flags in (('own', []), ('untrained', ['--untrained']), ('sum', ['--model-arg', 'gep_combine=sum'])):
        assert embed_main([str(folder / 'photos'), '--output', str(folder / f'{name}.safetensors'), '--model',
                           SHIPPED['model'], '--device', 'cpu', '--workers', '0', *flags]) == 0
    return folder


def test_the_shipped_name_untrained_or_with_model_args_is_another_model(shipped, tmp_path, capsys):
    own = shipped / 'own.safetensors'
    for name, says, flag in (('untrained', 'with --untrained', '--untrained'),
                             ('sum', "with --model-arg gep_combine='sum'", '--model-arg')):
        query = shipped / f'{name}.safetensors'
        assert main(['--query', str(query), '--gallery', str(own), '--output', str(tmp_path / 'o')]) == 2
        assert capsys.readouterr().err.strip() == (
            f'python -m hbfp_timm.search: error: --gallery: {own} was embedded by {SHIPPED["model"]} without {flag} '
            f'at 128x64 without --flip, --query: {query} by {SHIPPED["model"]} {says} at 128x64 without --flip; '
            f'their distances cannot be compared: describe both with the same {flag}')


def test_same_person_does_not_take_the_thresholds_of_a_registered_name_untrained_or_with_model_args(
        shipped, tmp_path, capsys):
    model = SHIPPED['model']
    out = ['--output', str(tmp_path / 'o'), '--num-pictures', '0', '--same-person']
    untrained = (f'python -m hbfp_timm.search: error: --same-person: the descriptors were made by {model} with '
                 f'--untrained, random weights that no calibrated threshold holds for (those of {model} are for its '
                 'own weights); describe the images without --untrained, or pass --threshold')
    model_arg = (f"python -m hbfp_timm.search: error: --same-person: the descriptors were made by {model} with "
                 f"--model-arg gep_combine='sum', another model than the one its thresholds were calibrated for "
                 f'(those of {model} are for its own weights, built without --model-arg); describe the images '
                 'without --model-arg, or calibrate one with python -m hbfp_timm.evaluate --calibrate with the same '
                 '--model-arg on labelled data and pass it as --threshold')
    own = str(shipped / 'own.safetensors')
    assert main(['--query', own, '--gallery', own, *out]) == 0  # its own weights: its thresholds
    assert json.loads((tmp_path / 'o' / 'ranking.json').read_text())['threshold'] > 0
    for name, message in (('untrained', untrained), ('sum', model_arg)):
        file = str(shipped / f'{name}.safetensors')
        assert main(['--query', file, '--gallery', file, *out]) == 2
        assert capsys.readouterr().err.strip() == message
    # A side that search describes itself with the flag.
    photos = str(shipped / 'photos')
    common = ['--model', model, '--device', 'cpu', '--workers', '0']
    assert main(['--query', photos, '--gallery', own, *out, *common, '--model-arg', 'gep_combine=sum']) == 2
    assert 'describe both with the same --model-arg' in capsys.readouterr().err
    assert main(['--query', photos, '--gallery', photos, *out, *common, '--untrained']) == 2
    assert capsys.readouterr().err.strip() == untrained
    # Files that do not say, with the flag given; files that say neither was given, with it given.
    for how in (SHIPPED, {**SHIPPED, 'checkpoint': '', 'untrained': 'False', 'model_args': ''}):
        query, gallery = _files(tmp_path, how, how)
        for flags, message in ((['--untrained'], untrained), (['--model-arg', 'gep_combine=sum'], model_arg)):
            assert main(['--query', query, '--gallery', gallery, *out, *flags]) == 2
            err = capsys.readouterr().err.strip()
            if how is SHIPPED:
                assert err == message
            else:
                flag = flags[0]
                given = "--model-arg gep_combine='sum'" if flag == '--model-arg' else flag
                assert err.endswith(f'--same-person: the descriptors were made by {model} without {flag}, not with '
                                    f'{given}; leave {flag} out to use the thresholds of the '
                                    f"{'weights' if flag == '--untrained' else 'model'} that made them")
