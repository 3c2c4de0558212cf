"""python -m hbfp_timm.evaluate: a model on labelled data sets, one row each, the protocol's scores."""
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from hbfp_timm import FeatureExtractor
from hbfp_timm import evaluate as evaluate_module
from hbfp_timm.data import market_layout
from hbfp_timm.evaluate import main
from hbfp_timm.inference.embeddings import weights_sha256
from hbfp_timm.metrics import evaluate_features

from hub_fixtures import hub_cache  # noqa: F401  (fixture)
from tiny_models import file_size_limit, single_thread, tiny_model, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')


def test_scores_equal_the_protocol_on_the_models_descriptors_one_row_per_data_root(data_root, tmp_path, capsys):
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    out = tmp_path / 'out'
    assert main(['--data-root', str(data_root), '--data-root', str(data_root), '--model', str(run),
                 '--device', 'cpu', '--workers', '0', '--output', str(out)]) == 0
    record = json.loads((out / 'evaluation.json').read_text())
    assert len(record['results']) == 2 and record['img_size'] == [64, 32]
    dataset = market_layout(data_root)
    extractor = FeatureExtractor(run, device='cpu')
    q = extractor([p for p, _, _ in dataset.query])
    g = extractor([p for p, _, _ in dataset.gallery])
    ids = [np.array([item[k] for item in items]) for k in (1, 2) for items in (dataset.query, dataset.gallery)]
    cmc, mAP = evaluate_features(q, g, ids[0], ids[1], ids[2], ids[3])
    for row in record['results']:
        assert row['mAP'] == pytest.approx(mAP, abs=1e-6) and row['rank1'] == pytest.approx(cmc[0], abs=1e-6)
        assert row['num_query'] == len(dataset.query) and row['num_gallery'] == len(dataset.gallery)
    printed = capsys.readouterr().out
    assert printed.count(f'| {data_root} | {len(dataset.query)} | {len(dataset.gallery)} |') == 2
    assert f'{100 * mAP:.1f} |' in printed
    assert (out / 'evaluation.md').read_text().split('\n\n', 1)[1].strip() in printed  # the same table


def test_test_only_data_are_evaluated_without_a_training_split(data_root, tmp_path, capsys):
    """A folder with only query/ and bounding_box_test/, and lists with only query and gallery, are evaluated:
    evaluation needs no training split."""
    import shutil
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    test_only = tmp_path / 'test_only'
    for split in ('query', 'bounding_box_test'):
        shutil.copytree(data_root / split, test_only / split)
    dataset = market_layout(data_root)
    lists = tmp_path / 'lists'
    lists.mkdir()
    for split, items in (('query', dataset.query), ('gallery', dataset.gallery)):
        (lists / f'{split}.csv').write_text(''.join(f'{path},{pid},{cam}\n' for path, pid, cam in items))
    common = ['--model', str(run), '--device', 'cpu', '--workers', '0', '--output', str(tmp_path / 'out')]
    assert main(['--data-root', str(data_root), '--data-root', str(test_only), '--data-root', str(lists),
                 '--dataset', 'market_layout', '--dataset', 'market_layout', '--dataset', 'image_lists',
                 *common]) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['results']
    assert [(r['num_query'], r['num_gallery']) for r in rows] == [(len(dataset.query), len(dataset.gallery))] * 3
    assert rows[1]['mAP'] == rows[0]['mAP'] and rows[2]['mAP'] == pytest.approx(rows[0]['mAP'], abs=1e-6)


def test_queries_without_a_match_in_the_gallery_are_counted_and_said(data_root, tmp_path, capsys):
    """A query whose identity has no gallery image from another camera is left out of the scores, as the protocol
    says; the output says how many were scored and how many were left out, and why."""
    import shutil
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    data = tmp_path / 'data'
    for split in ('query', 'bounding_box_test'):
        shutil.copytree(data_root / split, data / split)
    first = sorted((data / 'query').iterdir())[0]
    shutil.copy(first, data / 'query' / ('0999' + first.name[first.name.index('_'):]))  # nobody in the gallery
    num_query = len(list((data / 'query').iterdir()))
    assert main(['--data-root', str(data), '--model', str(run), '--device', 'cpu', '--workers', '0',
                 '--output', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out
    line = (f'{data}: {num_query - 1} of {num_query} queries scored; 1 query without a match in the gallery (no image '
            'of its identity from another camera) was skipped')
    assert line in printed and line in (tmp_path / 'out' / 'evaluation.md').read_text()
    row = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['results'][0]
    assert row['num_query'] == num_query and row['num_skipped_queries'] == 1
    assert f'{data}: left out: junk (id -1): ' in printed  # the synthetic gallery's junk images


def test_an_undecodable_image_is_an_error_or_with_skip_bad_images_left_out_and_counted(data_root, tmp_path, capsys):
    import shutil
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    data = tmp_path / 'data'
    for split in ('query', 'bounding_box_test'):
        shutil.copytree(data_root / split, data / split)
    broken = sorted((data / 'bounding_box_test').glob('0*.jpg'))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated file
    common = ['--data-root', str(data), '--model', str(run), '--device', 'cpu', '--workers', '0']
    assert main(common) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(broken) in err
    assert main([*common, '--skip-bad-images', '--output', str(tmp_path / 'out')]) == 0
    captured = capsys.readouterr()
    assert f'skipped unreadable image {broken}: ' in captured.err
    assert 'skipped 1 of ' in captured.err and 'query and gallery images (--skip-bad-images)' in captured.err
    row = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['results'][0]
    dataset = market_layout(data_root)
    assert row['num_gallery'] == len(dataset.gallery) - 1 and row['num_query'] == len(dataset.query)
    assert row['dropped']['unreadable images (--skip-bad-images)'] == 1
    assert 'unreadable images (--skip-bad-images): 1' in captured.out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_skip_bad_images_shows_the_progress_of_decoding_every_image(data_root, monkeypatch):
    """Decoding every query and gallery image showed nothing, however long it took."""
    dataset = market_layout(data_root)
    monkeypatch.setattr(sys, 'stderr', _Terminal())
    assert evaluate_module.without_unreadable_images(dataset, report=pytest.fail) is dataset
    total = len(dataset.query) + len(dataset.gallery)
    assert 'decoding images: ' in sys.stderr.getvalue() and f'/{total} ' in sys.stderr.getvalue()


def test_scoring_the_queries_shows_its_progress(data_root, tmp_path, monkeypatch):
    """Describing the images showed progress, then scoring (about 30 s at 10k x 100k) showed nothing."""
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    monkeypatch.setattr(sys, 'stderr', _Terminal())
    assert main(['--data-root', str(data_root), '--model', str(run), '--device', 'cpu', '--workers', '0']) == 0
    assert 'scoring: ' in sys.stderr.getvalue() and f'/{len(market_layout(data_root).query)} ' in sys.stderr.getvalue()


def test_a_missing_data_root_is_one_line_and_exit_2(tmp_path, capsys):
    run = write_run(tmp_path / 'run', tiny_model())
    assert main(['--data-root', str(tmp_path / 'nowhere'), '--model', str(run), '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(
        f'python -m hbfp_timm.evaluate: error: --data-root: missing folder {tmp_path / "nowhere"}; expected folders '
        'query/ and bounding_box_test/')
    (tmp_path / 'lists').mkdir()
    (tmp_path / 'lists' / 'query.csv').write_text('a.jpg,1,0\n')
    assert main(['--data-root', str(tmp_path / 'lists'), '--dataset', 'image_lists', '--model', str(run),
                 '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('python -m hbfp_timm.evaluate: error: --data-root: ') and \
        f"{tmp_path / 'lists' / 'query.csv'}:1: image {tmp_path / 'lists' / 'a.jpg'} not found" in err
    (tmp_path / 'taken').write_text('a file')  # --output in the way: said before any reading (was errno text)
    assert main(['--data-root', str(tmp_path / 'nowhere'), '--model', str(run), '--device', 'cpu',
                 '--output', str(tmp_path / 'taken')]) == 2
    assert capsys.readouterr().err == (f'python -m hbfp_timm.evaluate: error: --output: {tmp_path / "taken"} is a '
                                       'file; expected a folder (created if missing)\n')


def test_the_trainers_checkpoint_pt_as_checkpoint_says_what_to_give_instead(data_root, tmp_path, capsys):
    from hbfp_timm.training.checkpoint import save_checkpoint

    from tiny_models import TINY_ARGS
    run = write_run(tmp_path / 'run', tiny_model())
    full = timm.create_model('hbfp_resnet18', num_classes=6, **TINY_ARGS)  # with its ID classifier, as trained
    save_checkpoint(run / 'checkpoint.pt', {'model_name': 'hbfp_resnet18', 'model': full.state_dict(), 'epoch': 1,
                                            'optimizer': torch.optim.SGD(full.parameters(), lr=0.1).state_dict()})
    assert 'classifier.weight' in full.state_dict()
    assert main(['--data-root', str(data_root), '--model', 'hbfp_resnet18',
                 '--checkpoint', str(run / 'checkpoint.pt'),
                 *[a for k, v in TINY_ARGS.items() for a in ('--model-arg', f'{k}={v}')], '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'classifier' not in err
    assert f"resumable training state (for --resume), not a weights file; give its run folder {run} or the " \
           f"weights file {run / 'model.safetensors'} instead" in err


def _direct_camera_pairs(q, g, q_pids, g_pids, q_cams, g_cams):
    """Per (query camera, gallery camera): rank-1 and AP by sorting each query's row of that camera's gallery."""
    rows = {}
    for qc in np.unique(q_cams):
        for gc in np.unique(g_cams):
            if qc == gc:
                continue
            hits, aps = [], []
            for i in np.flatnonzero(q_cams == qc):
                columns = np.flatnonzero((g_cams == gc) & (g_pids != -1))
                matches = g_pids[columns] == q_pids[i]
                if not matches.any():
                    continue
                order = np.argsort(np.linalg.norm(g[columns] - q[i], axis=1), kind='stable')
                ranked = matches[order]
                hits.append(bool(ranked[0]))
                positions = np.flatnonzero(ranked) + 1
                aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
            if hits:
                rows[(int(qc), int(gc))] = (len(hits), np.mean(hits), np.mean(aps))
    return rows


def test_camera_pairs_equal_a_direct_loop_worst_first():
    from hbfp_timm.evaluate import camera_pair_scores
    generator = np.random.default_rng(1)
    q_pids, g_pids = np.repeat(np.arange(6), 3), np.concatenate([np.repeat(np.arange(6), 6), [0, -1]])
    centres = generator.normal(size=(6, 5))
    q = centres[q_pids] + generator.normal(size=(len(q_pids), 5))
    g = centres[np.clip(g_pids, 0, None)] + generator.normal(size=(len(g_pids), 5))
    q_cams, g_cams = generator.integers(0, 3, len(q_pids)), generator.integers(0, 3, len(g_pids))
    rows = camera_pair_scores(torch.tensor(q), torch.tensor(g), q_pids, g_pids, q_cams, g_cams)
    expected = _direct_camera_pairs(q, g, q_pids, g_pids, q_cams, g_cams)
    assert {(r['query_camera'], r['gallery_camera']) for r in rows} == set(expected) and len(rows) == 6
    for row in rows:
        count, rank1, ap = expected[(row['query_camera'], row['gallery_camera'])]
        assert row['num_query'] == count and row['rank1'] == pytest.approx(rank1) and row['mAP'] == pytest.approx(ap)
    assert [r['rank1'] for r in rows] == sorted(r['rank1'] for r in rows)


def test_camera_pairs_are_named_as_the_data_name_their_cameras(data_root, tmp_path, capsys):
    """Market-style file names number cameras from 1 (c1 is the readers' camera 0): the pairs say c1, c2, ...; a
    list file's camid is printed as written, and camera-less lists name each image's camera by its file."""
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    dataset = market_layout(data_root)
    lists, no_cams = tmp_path / 'lists', tmp_path / 'no_cams'
    for folder in (lists, no_cams):
        folder.mkdir()
    for split, items in (('query', dataset.query), ('gallery', dataset.gallery)):
        (lists / f'{split}.csv').write_text(''.join(f'{path},{pid},{cam + 7}\n' for path, pid, cam in items))
    two_ids = sorted({pid for _, pid, _ in dataset.query})[:2]
    queries = [next(item for item in dataset.query if item[1] == pid) for pid in two_ids]
    few = queries + [next(item for item in dataset.gallery if item[1] == pid) for _, pid, _ in queries]
    for split, items in (('query', queries), ('gallery', few)):  # each query is listed in the gallery too
        (no_cams / f'{split}.csv').write_text(''.join(f'{path},{pid}\n' for path, pid, _ in items))
    out = tmp_path / 'out'
    assert main(['--data-root', str(data_root), '--data-root', str(lists), '--data-root', str(no_cams),
                 '--dataset', 'market_layout', '--dataset', 'image_lists', '--dataset', 'image_lists',
                 '--model', str(run), '--device', 'cpu', '--workers', '0', '--output', str(out)]) == 0
    rows = json.loads((out / 'evaluation.json').read_text())['results']
    market, listed, camera_less = (row['camera_pairs'] for row in rows)
    cameras = sorted({cam for _, _, cam in dataset.query + dataset.gallery})
    assert {p['query_camera_name'] for p in market} == {f'c{cam + 1}' for cam in cameras}
    assert [(p['query_camera'], p['gallery_camera']) for p in market] == \
        [(p['query_camera'] - 7, p['gallery_camera'] - 7) for p in listed]  # the same pairs, in the same order
    assert all(p['query_camera_name'] == str(p['query_camera']) for p in listed)
    names = {p['query_camera_name'] for p in camera_less} | {p['gallery_camera_name'] for p in camera_less}
    assert names <= {Path(path).name for path, _, _ in few} and len(names) >= 2
    printed = capsys.readouterr().out
    first, second = market[0]['query_camera_name'], market[0]['gallery_camera_name']
    assert f'| {first} | {second} | {market[0]["num_query"]} |' in printed
    assert f'| {listed[0]["query_camera"]} | {listed[0]["gallery_camera"]} | {listed[0]["num_query"]} |' in printed


def test_calibrate_then_the_stored_threshold_is_rechecked_and_marks_search_results(data_root, tmp_path, capsys):
    """evaluate --calibrate writes thresholds.json; in the run folder, evaluate re-checks it (on the same data:
    the calibrated rates again) and search --same-person marks the results below it."""
    from hbfp_timm.search import main as search_main
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    out = tmp_path / 'calibration'
    common = ['--model', str(run), '--device', 'cpu', '--workers', '0']
    with pytest.warns(UserWarning) as warned:
        assert main(['--data-root', str(data_root), '--calibrate', '--output', str(out), *common]) == 0
    calibrated = json.loads((out / 'thresholds.json').read_text())
    # The synthetic split is small: the warning (and the file) say that the thresholds rest on too few pairs.
    message, = [str(w.message) for w in warned if 'too few pairs' in str(w.message)]
    assert message.startswith(f'--calibrate: the thresholds calibrated on {data_root} rest on too few pairs (at least '
                              "30 needed, the 'rule of 30'): FMR 0.01 rests on ") and message == calibrated['warning']
    impostors = calibrated['thresholds'][0]['num_impostor']
    assert f'impostor pairs below its threshold ({impostors:,} impostor pairs; 3,000 put 30 below it)' in message
    assert [t['fmr_target'] for t in calibrated['thresholds']] == [1e-2, 1e-3]
    assert calibrated['calibrated_on']['data_root'] == str(data_root) and calibrated['metric'] == 'euclidean'
    assert all(t['fmr'] <= t['fmr_target'] for t in calibrated['thresholds'])
    assert calibrated['weights_sha256'] == weights_sha256(tiny_model(seed=3))  # the weights it was calibrated on
    (run / 'thresholds.json').write_text((out / 'thresholds.json').read_text())
    capsys.readouterr()
    assert main(['--data-root', str(data_root), '--output', str(tmp_path / 'check'), *common]) == 0
    checked = json.loads((tmp_path / 'check' / 'evaluation.json').read_text())['results'][0]['verification']
    assert [c['label'].split(',')[0] for c in checked['checked']] == ['stored'] * 2
    for entry, check in zip(calibrated['thresholds'], checked['checked']):
        assert check['threshold'] == entry['threshold'] and check['fmr'] == entry['fmr']
        assert check['impostors_accepted'] == entry['impostors_accepted'] and check['tmr'] == entry['tmr']
    assert 'genuine accepted (TMR)' in capsys.readouterr().out

    threshold = calibrated['thresholds'][0]['threshold']
    dataset = market_layout(data_root)
    assert search_main(['--query', str(data_root / 'query'), '--gallery', str(data_root / 'bounding_box_test'),
                        '--output', str(tmp_path / 'search'), '--same-person', '0.01', '--num-pictures', '0',
                        *common]) == 0
    ranking = json.loads((tmp_path / 'search' / 'ranking.json').read_text())
    assert ranking['threshold'] == threshold and len(ranking['queries']) == len(dataset.query)
    results = [r for q in ranking['queries'] for r in q['results']]
    assert all(r['same_person'] == (r['distance'] < threshold) for r in results)
    assert f"{sum(r['same_person'] for r in results)} results below the same-person threshold" in \
        capsys.readouterr().out

    # The same file beside other weights: evaluate does not re-check it, search --same-person refuses it.
    other = write_run(tmp_path / 'other', tiny_model(seed=4))
    (other / 'thresholds.json').write_text((out / 'thresholds.json').read_text())
    others = ['--model', str(other), *common[2:]]
    digest = calibrated['weights_sha256'][:12]
    with pytest.warns(UserWarning, match=f'the thresholds stored with {other} were calibrated on other weights than '
                                         f'those it holds now \\(weights sha256 {digest}\\); not re-checked'):
        assert main(['--data-root', str(data_root), '--output', str(tmp_path / 'check-other'), *others]) == 0
    assert not json.loads((tmp_path / 'check-other' / 'evaluation.json').read_text())['results'][0][
        'verification']['checked']
    capsys.readouterr()
    assert search_main(['--query', str(data_root / 'query'), '--gallery', str(data_root / 'bounding_box_test'),
                        '--output', str(tmp_path / 'search-other'), '--same-person', '0.01', *others]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'search-other').exists()
    assert (f"--same-person: the thresholds of {other} were calibrated on other weights (sha256 "
            f"{calibrated['weights_sha256'][:12]}) than the descriptors were made with (sha256 "
            f"{weights_sha256(tiny_model(seed=4))[:12]})") in err


def test_same_person_without_a_stored_threshold_is_one_line(data_root, tmp_path, capsys):
    from hbfp_timm.search import main as search_main
    run = write_run(tmp_path / 'run', tiny_model())
    assert search_main(['--query', str(data_root / 'query'), '--gallery', str(data_root / 'query'), '--output',
                        str(tmp_path / 'out'), '--same-person', '--model', str(run), '--device', 'cpu',
                        '--workers', '0']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'has no calibrated threshold' in err and '--threshold' in err


def test_calibrating_a_run_whose_thresholds_carry_a_digest_takes_the_digest_once(data_root, tmp_path, monkeypatch):
    """The re-check of the stored thresholds and the new thresholds file both need the digest of the weights."""
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    common = ['--data-root', str(data_root), '--calibrate', '--model', str(run), '--device', 'cpu', '--workers', '0']
    with pytest.warns(UserWarning, match='too few pairs'):
        assert main([*common, '--output', str(run)]) == 0  # the run's own thresholds, with their digest
    digest = json.loads((run / 'thresholds.json').read_text())['weights_sha256']
    calls = []
    monkeypatch.setattr(evaluate_module, 'weights_sha256', lambda model: calls.append(model) or weights_sha256(model))
    with pytest.warns(UserWarning, match='too few pairs'):
        assert main([*common, '--output', str(tmp_path / 'out')]) == 0
    assert len(calls) == 1
    assert json.loads((tmp_path / 'out' / 'thresholds.json').read_text())['weights_sha256'] == digest


def test_an_output_that_cannot_be_written_is_one_line_naming_the_file_after_the_printed_table(data_root, tmp_path,
                                                                                              capsys):
    """A full disk or a read-only --output was a traceback after the whole evaluation, and a torn evaluation.json."""
    run = write_run(tmp_path / 'run', tiny_model())
    out = tmp_path / 'out'
    with file_size_limit(200):  # evaluation.json is longer: the disk fills up while it is written
        code = main(['--data-root', str(data_root), '--model', str(run), '--device', 'cpu', '--workers', '0',
                     '--output', str(out)])
    captured = capsys.readouterr()
    assert code == 1 and f'| {data_root} | ' in captured.out  # the scores were printed before
    assert captured.err == (f'python -m hbfp_timm.evaluate: error: {out / "evaluation.json"}: cannot write (File too '
                            'large)\n')
    assert list(out.iterdir()) == []


def test_calibrate_needs_one_data_root_and_an_output(data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--data-root', str(data_root), '--data-root', str(data_root), '--calibrate', '--output', 'x'])
    assert exit_info.value.code == 2 and '--calibrate: needs exactly one --data-root' in capsys.readouterr().err


def test_every_model_source_gives_the_same_scores_and_hub_copies_carry_the_thresholds(data_root, tmp_path,
                                                                                       hub_cache, capsys):
    """A run folder, its Hub folder (by path and as local-dir:), the same published to a Hub cache (hf-hub:,
    offline) and the registered name with --checkpoint are one model: one score; the thresholds of the run travel
    into config.json and are re-checked from each Hub source."""
    from hbfp_timm.hub.cli import main as hub_main

    from tiny_models import TINY_ARGS
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    (run / 'thresholds.json').write_text(json.dumps({'format': 'hbfp_timm.thresholds/1', 'metric': 'euclidean',
                                                     'flip': False, 'thresholds': [{'fmr_target': 0.01,
                                                                                    'threshold': 1.5}]}))
    assert hub_main(['save', str(run), str(tmp_path / 'hub')]) == 0
    assert json.loads((tmp_path / 'hub' / 'config.json').read_text())['reid_thresholds']['thresholds'][0][
        'threshold'] == 1.5
    hub_cache(tmp_path / 'hub', 'org/tiny-reid')
    sources = [[str(run)], [str(tmp_path / 'hub')], [f'local-dir:{tmp_path / "hub"}'], ['hf-hub:org/tiny-reid'],
               ['hbfp_resnet18', '--checkpoint', str(run / 'model.safetensors'), '--img-size', '64', '32',
                *[a for k, v in TINY_ARGS.items() for a in ('--model-arg', f'{k}={v}')]]]
    scores = []
    for index, source in enumerate(sources):
        out = tmp_path / f'out{index}'
        assert main(['--data-root', str(data_root), '--device', 'cpu', '--workers', '0', '--output', str(out),
                     '--model', *source]) == 0, source
        row = json.loads((out / 'evaluation.json').read_text())['results'][0]
        scores.append((row['rank1'], row['mAP']))
        checked = [c['threshold'] for c in row['verification']['checked']]
        assert checked == ([] if source[0] == 'hbfp_resnet18' else [1.5]), source
    assert all(s == pytest.approx(scores[0], abs=1e-6) for s in scores)


def test_the_shipped_model_is_the_default(data_root, tmp_path, capsys):
    assert main(['--data-root', str(data_root), '--device', 'cpu', '--workers', '0']) == 0
    assert capsys.readouterr().out.startswith('model hbfp_mobilenetv2_100.cuhk03, input 128x64')


@pytest.mark.parametrize('other', ['--untrained', '--checkpoint'])
def test_stored_thresholds_are_not_rechecked_for_other_weights_of_the_same_name(data_root, tmp_path, other):
    """The shipped name's thresholds are re-checked for its own weights only: with --untrained or a --checkpoint
    the model is another one, and a warning says why they are left out."""
    from safetensors.torch import save_file
    name = 'hbfp_mobilenetv2_100.cuhk03'
    common = ['--data-root', str(data_root), '--model', name, '--device', 'cpu', '--workers', '0']
    out = tmp_path / 'own'
    assert main([*common, '--output', str(out)]) == 0
    assert [e['label'] for e in json.loads((out / 'evaluation.json').read_text())['results'][0]['verification'][
        'checked']][0].startswith('stored, FMR')
    extra = ['--untrained']
    if other == '--checkpoint':
        weights = tmp_path / 'other.safetensors'
        save_file(timm.create_model('hbfp_mobilenetv2_100', pretrained=False).state_dict(), str(weights))
        extra = ['--checkpoint', str(weights)]
    with pytest.warns(UserWarning, match=f'thresholds stored with {name} belong to its own weights, not to the '
                                         f'model made with {other}; not re-checked'):
        assert main([*common, *extra, '--output', str(tmp_path / 'other')]) == 0
    record = json.loads((tmp_path / 'other' / 'evaluation.json').read_text())
    assert record['results'][0]['verification']['checked'] == []


def test_one_reader_per_data_root_or_one_for_all(data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--data-root', str(data_root), '--data-root', str(data_root), '--data-root', str(data_root),
              '--dataset', 'market_layout', '--dataset', 'image_lists'])
    assert exit_info.value.code == 2 and '--dataset: give one for every --data-root' in capsys.readouterr().err
