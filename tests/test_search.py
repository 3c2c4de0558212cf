"""python -m hbfp_timm.search: exact rankings without the query's own file, ranking.json, the summary line, a
picture whose colours depend on whether identities (and cameras) are known, embeddings files as inputs, and bad
input in one line (which descriptors compare: test_search_comparable.py)."""
import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hbfp_timm import FeatureExtractor
from hbfp_timm.embed import main as embed_main
from hbfp_timm.inference.embeddings import Embeddings, load_embeddings, save_embeddings
from hbfp_timm.inference.visualize import MATCH_COLOUR, MISMATCH_COLOUR, SAME_CAMERA_COLOUR, UNKNOWN_COLOUR
from hbfp_timm.metrics import evaluate_rank
from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.metrics.retrieval import faiss_available
from hbfp_timm.search import main

from tiny_models import (  # noqa: F401  (single_thread is a fixture)
    SHIPPED_HOW, file_size_limit, single_thread, tiny_model, write_embeddings, write_images, write_run,
)

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


def test_a_topk_beyond_the_gallery_is_said_with_the_number_of_results_there_are(tmp_path, capsys):
    """--topk 10 over a gallery of 2 printed 'top 10', though each query had 2 results (1 searched against itself)."""
    query, gallery = write_embeddings(tmp_path, SHIPPED_HOW, SHIPPED_HOW)
    num_gallery = len(load_embeddings(gallery).paths)
    asked = num_gallery + 8
    for name, source, results, note in (('other', query, num_gallery, ''),
                                        ('itself', gallery, num_gallery - 1, ", a query's own file left out")):
        out, num_query = tmp_path / name, len(load_embeddings(source).paths)
        assert main(['--query', source, '--gallery', gallery, '--topk', str(asked), '--output', str(out),
                     '--num-pictures', '0']) == 0
        ranking = json.loads((out / 'ranking.json').read_text())
        assert [len(entry['results']) for entry in ranking['queries']] == [results] * num_query
        assert capsys.readouterr().out.startswith(
            f'{num_query} queries x {num_gallery} gallery images, top {results} (--topk {asked}, but the gallery '
            f'holds only {num_gallery} images{note}); wrote ')


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
    # A negative count was taken as 0: no picture, and nothing said.
    with pytest.raises(SystemExit) as exit_info:
        main(['--query', 'q', '--gallery', 'g', '--output', 'o', '--num-pictures', '-3'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith('error: --num-pictures: expected 0 (no picture) or a positive integer, '
                                            'got -3\n')


def test_unreadable_files_an_output_that_is_a_file_and_a_threshold_not_above_0_are_one_line(tmp_path, capsys):
    query, gallery = write_embeddings(tmp_path, SHIPPED_HOW, SHIPPED_HOW)
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
                                                           torch.tensor([0]), SHIPPED_HOW))
    save_embeddings(tmp_path / 'g.safetensors', Embeddings(torch.tensor([[1.0, 0], [2, 0], [3, 0]]), images[1:],
                                                           torch.tensor([1, 1, 2]), torch.tensor([0, 1, 1]),
                                                           SHIPPED_HOW))
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


def test_an_embeddings_file_is_searched_from_another_folder_and_own_files_are_left_out_however_spelt(
        run, tmp_path, monkeypatch, capsys):
    """Embedded with a relative folder, the file kept relative paths: searched from another working folder, drawing
    ranking.png failed on '[Errno 2] No such file or directory'; the same folder spelt otherwise on the other side
    found each query itself at distance 0."""
    paths = write_images(tmp_path / 'photos', [f'{i}.png' for i in range(4)], seed=5)
    monkeypatch.chdir(tmp_path)
    assert embed_main(['photos', '--model', str(run), '--output', 'g.safetensors', '--device', 'cpu',
                       '--workers', '0']) == 0
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert main(['--query', str(tmp_path / 'photos'), '--gallery', '../g.safetensors', '--model', str(run),
                 '--output', 'out', '--device', 'cpu', '--workers', '0']) == 0, capsys.readouterr().err
    ranking = json.loads((tmp_path / 'elsewhere' / 'out' / 'ranking.json').read_text())
    for entry, path in zip(ranking['queries'], paths):
        assert entry['query'] == str(path)
        assert sorted(r['path'] for r in entry['results']) == sorted(str(p) for p in paths if p != path)
    assert (tmp_path / 'elsewhere' / 'out' / 'ranking.png').is_file()


def test_a_ranking_that_cannot_be_written_is_one_line_naming_it_and_the_previous_one_stays(tmp_path, capsys):
    """A disk that filled up while ranking.json was written left a torn file and said only "[Errno 28] No space
    left on device", naming no file."""
    query, gallery = write_embeddings(tmp_path, SHIPPED_HOW, SHIPPED_HOW)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'ranking.json').write_text('{"previous": "ranking"}')
    with file_size_limit(100):  # the new ranking.json is longer
        code = main(['--query', query, '--gallery', gallery, '--output', str(out), '--num-pictures', '0'])
    assert code == 1
    assert capsys.readouterr().err == (f'python -m hbfp_timm.search: error: {out / "ranking.json"}: cannot write (File '
                                       'too large)\n')
    assert [p.name for p in out.iterdir()] == ['ranking.json']
    assert json.loads((out / 'ranking.json').read_text()) == {'previous': 'ranking'}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize('backend', ['torch', pytest.param('faiss', marks=pytest.mark.skipif(
    not faiss_available(), reason='faiss is an optional extra, not installed here'))])
def test_the_search_and_its_scores_show_their_progress(tmp_path, monkeypatch, backend):
    """20,000 queries in 300,000 gallery descriptors took 7 min 42 s on a 2-core CPU, with nothing shown."""
    files = []
    for name, count in (('q', 3), ('g', 40)):
        files.append(str(save_embeddings(tmp_path / f'{name}.safetensors', Embeddings(
            torch.randn(count, 8, generator=torch.Generator().manual_seed(count)),
            [f'{name}{i}.png' for i in range(count)], torch.arange(count) % 3, torch.arange(count) % 2,
            metadata=SHIPPED_HOW))))
    monkeypatch.setattr(sys, 'stderr', _Terminal())
    assert main(['--query', files[0], '--gallery', files[1], '--output', str(tmp_path / 'out'), '--backend', backend,
                 '--num-pictures', '0']) == 0
    bars = sys.stderr.getvalue().split('\r')
    searched = '/40 ' if backend == 'torch' else '/3 '  # gallery images, or queries for faiss
    assert any(bar.startswith('searching: ') and searched in bar for bar in bars)
    assert any(bar.startswith('scoring: ') and '/3 ' in bar for bar in bars)  # queries


def test_images_gone_since_they_were_embedded_leave_the_ranking_and_no_picture_with_a_warning(tmp_path, capsys):
    """An embeddings file made on another machine named images that are not here: after the whole search the
    command stopped with exit status 2 on '[Errno 2] No such file or directory', its ranking.json written."""
    query, gallery = write_embeddings(tmp_path, SHIPPED_HOW, SHIPPED_HOW)  # images q0.png, g0.png...: not here
    out = tmp_path / 'out'
    with pytest.warns(UserWarning, match=r'^ranking\.png not drawn: image \S+0\.png not found \(the embeddings files '
                                         r'name their images where they were described\); --num-pictures 0 draws no '
                                         r'picture$'):
        assert main(['--query', query, '--gallery', gallery, '--output', str(out)]) == 0
    assert capsys.readouterr().out.endswith(f'; wrote {out / "ranking.json"}\n')
    assert [p.name for p in out.iterdir()] == ['ranking.json']
    assert len(json.loads((out / 'ranking.json').read_text())['queries']) == 2


def test_cameras_numbered_otherwise_on_the_two_sides_are_not_compared(run, tmp_path, capsys):
    """A list file's camid as written (c1 written 1) beside the 0-based cameras of Market names (c1 is 0): the
    protocol compared camera 1 of the list with c2 of the names, left true matches out and kept same-camera ones,
    and printed the numbers as Market-1501's."""
    paths = [str(p) for p in write_images(tmp_path / 'market', MARKET_NAMES)]
    queries = [0, 4, 8]  # 0001_c1, 0002_c2, 0003_c3: also in the gallery folder
    (tmp_path / 'query.csv').write_text(''.join(f'{paths[i]},{i // 3 + 1},{i % 3 + 1}\n' for i in queries))
    out = tmp_path / 'out'
    assert main(['--query', str(tmp_path / 'query.csv'), '--gallery', str(tmp_path / 'market'), '--model', str(run),
                 '--output', str(out), '--device', 'cpu', '--workers', '0', '--num-pictures', '0']) == 0
    evaluation = json.loads((out / 'ranking.json').read_text())['evaluation']
    assert evaluation['protocol'] == ('no cameras (query cameras numbered by their list file, gallery cameras by '
                                      'their file names, which do not compare): only the query file itself left out')
    features = FeatureExtractor(run, device='cpu')(paths)
    pids = np.repeat([1, 2, 3], 3)
    own_file = np.arange(9)  # every file its own camera: only a query's own file is left out
    cmc, mAP = evaluate_rank(compute_distance_matrix(features[queries], features), pids[queries], pids,
                             own_file[queries], own_file, max_rank=10)
    assert evaluation['rank1'] == pytest.approx(cmc[0]) and evaluation['mAP'] == pytest.approx(mAP)
    assert f'rank-1 {cmc[0]:.1%}, mAP {mAP:.1%} (no cameras (' in capsys.readouterr().out


def test_identities_that_cannot_be_scored_are_said_in_the_summary(tmp_path, capsys):
    """A gallery holding none of the queries' identities: the summary line said nothing of rank-1 or mAP, and why
    was only in ranking.json."""
    files = []
    for name, pids in (('q', [1, 2]), ('g', [3, 4, 5])):
        files.append(str(save_embeddings(tmp_path / f'{name}.safetensors', Embeddings(
            torch.randn(len(pids), 4, generator=torch.Generator().manual_seed(len(pids))),
            [f'{name}{i}.png' for i in range(len(pids))], torch.tensor(pids), metadata=SHIPPED_HOW))))
    out = tmp_path / 'out'
    assert main(['--query', files[0], '--gallery', files[1], '--output', str(out), '--num-pictures', '0']) == 0
    error = json.loads((out / 'ranking.json').read_text())['evaluation']['error']
    assert error.startswith('none of the 2 queries has a true match in the gallery')
    assert capsys.readouterr().out == (f'2 queries x 3 gallery images, top 3 (--topk 10, but the gallery holds only 3 '
                                       f'images); not scored: {error}; wrote {out / "ranking.json"}\n')
