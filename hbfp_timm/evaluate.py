"""Evaluate a model on labelled re-id data: ``python -m hbfp_timm.evaluate --data-root D [--model M] [--output OUT]``.

The model is anything the other commands accept (default: the shipped ``hbfp_mobilenetv2_100.cuhk03``; a
trainer run folder; a Hub folder; ``hf-hub:`` / ``local-dir:`` names; a registered name with its weights or
with ``--checkpoint``, which also takes any timm backbone, e.g. ``--model mobilenetv2_100 --checkpoint
imagenet.safetensors`` for an ImageNet model with no re-id training). The data are any set the readers accept
(``--dataset``: the Table 1 sets, ``market_layout`` for any folder in the Market-1501 layout, ``image_lists``);
several ``--data-root`` give one table, a row each. Scores follow the data set's protocol (Market-1501 single
query: same-identity same-camera gallery images removed, junk ignored), computed block by block, so the
query x gallery distance matrix is never held whole (except for ``--rerank``, which needs it). An image that
cannot be decoded stops the run with an error naming it; with ``--skip-bad-images`` the query and gallery images are
decoded first and those that fail are listed and left out (counted under the table and in ``dropped``).

Beside rank-1/5/10 and mAP, each data set gets:

* the per-camera-pair breakdown: the queries of one camera searched among the gallery images of one other
  camera only, rank-1 and mAP per pair, worst first (which camera pairs fail); cameras are named as the data
  name them (``c1`` of Market-style file names, a list file's ``camid``, the file name of camera-less images,
  or their paths where two share a name);
* the "same person" decision (`hbfp_timm.metrics.verification`): the data's own equal-error rate, and, for every
  threshold stored with the model's weights (or given with ``--threshold``), how many genuine cross-camera
  pairs it accepts and how many impostor pairs it wrongly accepts on these data;
* with ``--calibrate`` (one ``--data-root``, a labelled validation split, never the test split a model is
  reported on): thresholds at false-match rates 1e-2 and 1e-3, written to ``OUT/thresholds.json``, the file
  that a run folder, ``hub save --thresholds`` and ``search --same-person`` read, with the digest of the weights
  they were calibrated on (``weights_sha256``: re-checks and ``search`` refuse other weights); a warning (also
  stored in the file) says when they rest on too few pairs (fewer than 30 impostor pairs below a threshold, i.e.
  fewer than 3,000 / 30,000 impostor pairs, or fewer than 30 genuine pairs: `hbfp_timm.metrics.verification`).
"""
import argparse
import dataclasses
import functools
import json
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .commands import (
    USER_ERRORS, add_model_arguments, command_error, extractor_from_args, one_line, output_folder, run_command,
)
from .data.checks import find_unreadable_images
from .data.datasets import DATASET_NAMES, ReIDDataset, build_dataset
from .data.loader import test_loaders
from .inference.embeddings import weights_sha256
from .inference.features import extract_features
from .metrics import evaluate_features
from .metrics.evaluation import score_features
from .metrics.verification import (
    DEFAULT_FMRS, MIN_PAIRS, THRESHOLDS_NAME, calibrate, calibration_problems, check_threshold, pair_distances,
    save_thresholds, stored_thresholds,
)
from .utils.files import atomic_write_text, check_writable_folder

__all__ = ['camera_pair_scores', 'evaluate_data', 'main', 'read_data', 'without_unreadable_images']

# Camera-less data give each image its own camera: past this many cameras a per-pair table says nothing.
MAX_CAMERAS_FOR_PAIRS = 50


def camera_pair_scores(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric: str = 'euclidean',
                       camera_name: Callable[[int], str] = str) -> List[Dict[str, Any]]:
    """Rank-1 and mAP of every (query camera, gallery camera) pair, worst rank-1 first.

    The queries of camera ``a`` are ranked among the gallery images of camera ``b`` (``b != a``) only, under the
    same protocol; a pair where no query has a true match is left out.

    Args:
        camera_name: the data's name of a camera id (`hbfp_timm.data.ReIDDataset.camera_name`; default: the id).

    Returns:
        ``[{'query_camera', 'gallery_camera', 'query_camera_name', 'gallery_camera_name', 'num_query', 'rank1',
        'mAP'}]`` (ids as the readers number cameras, from 0; scores as fractions).
    """
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    rows = []
    for q_cam in np.unique(q_camids):
        queries = q_camids == q_cam
        for g_cam in np.unique(g_camids):
            gallery = g_camids == g_cam
            if g_cam == q_cam or not np.isin(q_pids[queries], g_pids[gallery]).any():
                continue
            result = evaluate_features(q_feats[queries], g_feats[gallery], q_pids[queries], g_pids[gallery],
                                       q_camids[queries], g_camids[gallery], metric=metric, max_rank=1)
            rows.append({'query_camera': int(q_cam), 'gallery_camera': int(g_cam),
                         'query_camera_name': camera_name(int(q_cam)), 'gallery_camera_name': camera_name(int(g_cam)),
                         'num_query': result.num_valid_queries, 'rank1': float(result.cmc[0]),
                         'mAP': float(result.mAP)})
    return sorted(rows, key=lambda row: (row['rank1'], row['mAP']))


def read_data(dataset_name: str, data_root) -> ReIDDataset:
    """The query and gallery splits of `data_root` read by `dataset_name` (no training split needed); what
    cannot be read is an error naming ``--data-root``, of the same kind (exit status)."""
    try:
        return build_dataset(dataset_name, data_root, with_train=False)
    except (OSError, ValueError) as error:
        kind = FileNotFoundError if isinstance(error, FileNotFoundError) else \
            OSError if isinstance(error, OSError) else ValueError
        raise kind(f'--data-root: {one_line(error)}') from error


def without_unreadable_images(dataset: ReIDDataset, report=None) -> ReIDDataset:
    """`dataset` without the query and gallery images that cannot be decoded (``--skip-bad-images``): each is
    reported with its reason, then the count, and counted in ``dropped``; a ValueError when a split is left empty.
    Every image is decoded, with progress shown on stderr (a bar on a terminal, a line a minute in a log)."""
    report = report or (lambda line: print(line, file=sys.stderr))
    bad = dict(find_unreadable_images([path for path, _, _ in dataset.query + dataset.gallery], full=True,
                                      show_progress=True))
    if not bad:
        return dataset
    for path, reason in bad.items():
        report(f'skipped unreadable image {path}: {reason}')
    query, gallery = ([item for item in items if item[0] not in bad] for items in (dataset.query, dataset.gallery))
    report(f'skipped {len(bad)} of {len(dataset.query) + len(dataset.gallery)} query and gallery images '
           '(--skip-bad-images)')
    for split, items in (('query', query), ('gallery', gallery)):
        if not items:
            raise ValueError(f'{dataset.name}: none of its {split} images can be read')
    dropped = {**dataset.dropped, 'unreadable images (--skip-bad-images)': len(bad)}
    return dataclasses.replace(dataset, query=query, gallery=gallery, dropped=dropped)


def evaluate_data(extractor, dataset_name: str, data_root, metric: str = 'euclidean', rerank: bool = False,
                  workers: int = 0, thresholds: Sequence[Dict[str, Any]] = (),
                  fmrs: Sequence[float] = (), dataset: Optional[ReIDDataset] = None) -> Dict[str, Any]:
    """Scores of `extractor`'s model on the query/gallery split of one data set.

    Args:
        extractor: a `hbfp_timm.FeatureExtractor` (its model, preprocessing, device, flip and amp).
        dataset_name: reader of `data_root` (`hbfp_timm.data.datasets.DATASET_NAMES`).
        data_root: the data set's folder; its query and gallery splits are read, a training split is not needed.
        metric: 'euclidean' or 'cosine'.
        rerank: also the k-reciprocal re-ranked scores.
        workers: image decoding processes.
        thresholds: ``[{'label', 'threshold'}]`` to re-check: the genuine and impostor pairs each accepts.
        fmrs: false-match rates to calibrate thresholds at on these data (empty: none).
        dataset: the data already read from `data_root` (`read_data`); None reads them.

    Returns:
        ``{'data_root', 'dataset', 'query_ids', 'gallery_ids', 'dropped', 'seconds', 'rank1', 'rank5', 'rank10',
        'mAP', 'num_query', 'num_gallery', 'num_skipped_queries', 'metric'[, 'reranked'], 'camera_pairs',
        'verification'}``; ``num_query`` counts every query, the scores are over those with a true match in the
        gallery (``num_skipped_queries`` have none: the protocol skips them); ``dropped`` is what the reader left out
        (`hbfp_timm.data.ReIDDataset.dropped`, reasons with a count); ``verification`` holds ``'eer'``,
        ``'checked'`` (one entry per threshold) and, with `fmrs`, ``'calibrated'``.
    """
    dataset = dataset if dataset is not None else read_data(dataset_name, data_root)

    loaders = test_loaders(dataset, extractor.transform, extractor.batch_size, workers,
                           pin_memory=extractor.device.type == 'cuda')
    start = time.perf_counter()
    (q_feats, q_pids, q_cams), (g_feats, g_pids, g_cams) = (
        extract_features(extractor.model, loader, extractor.device, flip=extractor.flip, amp=extractor.amp,
                         desc=split) for split, loader in zip(('query', 'gallery'), loaders))
    scores = score_features(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric=metric, rerank=rerank,
                            show_progress=True)
    for entry in (scores, scores.get('reranked') or {}):
        entry.pop('cmc', None)
    num_cameras = len(np.union1d(q_cams, g_cams))
    pairs = (camera_pair_scores(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric, dataset.camera_name)
             if num_cameras <= MAX_CAMERAS_FOR_PAIRS else None)
    distances = pair_distances(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric=metric,
                               fmrs=tuple(fmrs) or DEFAULT_FMRS, at=[t['threshold'] for t in thresholds])
    calibrated = calibrate(distances, tuple(fmrs) or DEFAULT_FMRS)
    verification = {'eer': calibrated['eer'],
                    'checked': [{'label': t['label'], **check_threshold(distances, t['threshold'])}
                                for t in thresholds]}
    if fmrs:
        verification['calibrated'] = calibrated['thresholds']
    return {'data_root': str(data_root), 'dataset': dataset.name, 'query_ids': len(set(q_pids.tolist())),
            'gallery_ids': len(set(g_pids.tolist())),
            'dropped': {reason: count for reason, count in dataset.dropped.items() if count},
            'seconds': round(time.perf_counter() - start, 1), **scores,
            'camera_pairs': pairs, 'verification': verification}


def _percent(value: float) -> str:
    return f'{100 * value:.1f}'


def _left_out(row: Dict[str, Any]) -> List[str]:
    """What the scores of `row` leave out, a line each: queries without a true match, and the images dropped (by the
    reader, and by ``--skip-bad-images``)."""
    lines = []
    skipped = row['num_skipped_queries']
    if skipped:
        lines.append(f"{row['data_root']}: {row['num_query'] - skipped} of {row['num_query']} queries scored; "
                     f"{skipped} {'query' if skipped == 1 else 'queries'} without a match in the gallery (no image "
                     f"of {'its' if skipped == 1 else 'their'} identity from another camera) "
                     f"{'was' if skipped == 1 else 'were'} skipped")
    if row.get('dropped'):
        lines.append(f"{row['data_root']}: left out: "
                     + '; '.join(f'{reason}: {count}' for reason, count in row['dropped'].items()))
    return lines


def _tables(rows: List[Dict[str, Any]]) -> str:
    lines = ['| data | queries | gallery | Rank-1 | Rank-5 | Rank-10 | mAP |', '|---|---:|---:|---:|---:|---:|---:|']
    for row in rows:
        for label, scores in (('', row), (' (re-ranked)', row.get('reranked'))):
            if scores:
                lines.append(f"| {row['data_root']}{label} | {row['num_query']} | {row['num_gallery']} | "
                             + ' | '.join(_percent(scores[k]) for k in ('rank1', 'rank5', 'rank10', 'mAP')) + ' |')
    notes = [note for row in rows for note in _left_out(row)]
    if notes:
        lines += [''] + notes
    lines += ['', 'Same person (distance below the threshold): genuine = same identity, other camera; impostor = '
              'different identities; query x gallery pairs.', '',
              '| data | threshold | distance | genuine accepted (TMR) | impostors accepted (FMR) |',
              '|---|---|---:|---:|---:|']
    for row in rows:
        verification = row['verification']
        entries = [('equal-error point of these data', verification['eer'])]
        entries += [(entry['label'], entry) for entry in verification['checked']]
        entries += [(f"calibrated here at FMR {entry['fmr_target']:g}", entry)
                    for entry in verification.get('calibrated', [])]
        for label, entry in entries:
            lines.append(f"| {row['data_root']} | {label} | {entry['threshold']:.4f} | "
                         f"{entry['genuine_accepted']:,} / {entry['num_genuine']:,} ({_percent(entry['tmr'])}%) | "
                         f"{entry['impostors_accepted']:,} / {entry['num_impostor']:,} ({100 * entry['fmr']:.3f}%) |")
    for row in rows:
        pairs = row['camera_pairs']
        lines += ['', f"Camera pairs of {row['data_root']} (queries of one camera among the gallery images of "
                  f"another only; worst rank-1 first):", '']
        if pairs is None:
            lines.append(f'not computed: more than {MAX_CAMERAS_FOR_PAIRS} cameras (camera-less data give each image '
                         'its own)')
            continue
        lines += ['| query camera | gallery camera | queries | Rank-1 | mAP |', '|---|---|---:|---:|---:|']
        lines += [f"| {p['query_camera_name']} | {p['gallery_camera_name']} | {p['num_query']} | "
                  f"{_percent(p['rank1'])} | {_percent(p['mAP'])} |" for p in pairs]
    return '\n'.join(lines)


def _thresholds_to_check(args, extractor, digest: Callable[[], str]) -> List[Dict[str, Any]]:
    """The thresholds `evaluate` re-checks: those stored with the model (for its metric) and ``--threshold``;
    ``digest()`` gives the digest of the extractor's weights."""
    checks = [{'label': f'--threshold {value:g}', 'threshold': value} for value in args.threshold]
    stored = stored_thresholds(args.model)
    if stored is None:
        return checks
    other_weights = [flag for flag, given in (('--checkpoint', args.checkpoint), ('--untrained', args.untrained),
                                              ('--model-arg', args.model_arg)) if given]
    if other_weights:  # the stored thresholds belong to the weights that --model names, not to these
        warnings.warn(f"the thresholds stored with {args.model} belong to its own weights, not to the model made "
                      f"with {' and '.join(other_weights)}; not re-checked", UserWarning)
        return checks
    if stored.get('metric') != args.metric:
        warnings.warn(f"the thresholds stored with {args.model} are for {stored.get('metric')} distances, not "
                      f"--metric {args.metric}; not re-checked", UserWarning)
        return checks
    if stored.get('weights_sha256') and stored['weights_sha256'] != digest():
        warnings.warn(f"the thresholds stored with {args.model} were calibrated on other weights than those it holds "
                      f"now (weights sha256 {stored['weights_sha256'][:12]}); not re-checked", UserWarning)
        return checks
    if bool(stored.get('flip')) != extractor.flip:
        warnings.warn(f"the thresholds stored with {args.model} were calibrated with flip {bool(stored.get('flip'))}"
                      f", this run has flip {extractor.flip}: distances differ", UserWarning)
    where = (stored.get('calibrated_on') or {}).get('data_root', 'its calibration data')
    return [{'label': f"stored, FMR {entry['fmr_target']:g} on {where}", 'threshold': entry['threshold']}
            for entry in stored['thresholds']] + checks


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.evaluate``; see ``--help``."""
    parser = argparse.ArgumentParser(prog='python -m hbfp_timm.evaluate', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', action='append', required=True, metavar='DIR',
                        help='folder of a labelled data set (repeatable: one row each)')
    parser.add_argument('--dataset', choices=DATASET_NAMES, action='append', default=[],
                        help='reader of the data (default market_layout: any folder in the Market-1501 layout); '
                             'once for every --data-root, or once per --data-root in their order')
    parser.add_argument('--metric', choices=('euclidean', 'cosine'), default='euclidean',
                        help='descriptor distance (%(default)s)')
    parser.add_argument('--rerank', action='store_true', help='also k-reciprocal re-ranked scores')
    parser.add_argument('--threshold', type=float, action='append', default=[], metavar='DISTANCE',
                        help='also re-check this "same person" distance threshold (repeatable)')
    parser.add_argument('--calibrate', action='store_true',
                        help=f'calibrate thresholds at false-match rates {", ".join(map(str, DEFAULT_FMRS))} on the '
                             f'(one) --data-root, a validation split, and write OUT/{THRESHOLDS_NAME}')
    parser.add_argument('--output', metavar='OUT', help='folder for evaluation.json and evaluation.md')
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    readers = args.dataset or ['market_layout']
    if len(readers) not in (1, len(args.data_root)):
        parser.error(f'--dataset: give one for every --data-root or one per --data-root ({len(args.data_root)}), '
                     f'got {len(readers)}')
    readers = readers * len(args.data_root) if len(readers) == 1 else readers
    if args.calibrate and (len(args.data_root) != 1 or not args.output):
        parser.error('--calibrate: needs exactly one --data-root (the calibration split) and --output')
    try:
        output = output_folder('--output', args.output) if args.output else None  # before any work
        datasets = [read_data(reader, root) for reader, root in zip(readers, args.data_root)]  # before the model
        if args.skip_bad_images:
            datasets = [without_unreadable_images(dataset) for dataset in datasets]
        extractor = extractor_from_args(args)
        digest = functools.lru_cache(maxsize=1)(lambda: weights_sha256(extractor.model))  # taken at most once
        checks = _thresholds_to_check(args, extractor, digest)
        rows = [evaluate_data(extractor, reader, root, args.metric, args.rerank, args.workers, checks,
                              DEFAULT_FMRS if args.calibrate else (), dataset)
                for reader, root, dataset in zip(readers, args.data_root, datasets)]
    except USER_ERRORS as error:
        return command_error(parser, error)
    tables = _tables(rows)
    header = (f'model {args.model}, input {extractor.img_size[0]}x{extractor.img_size[1]}, '
              f'{args.metric} distance, flip {extractor.flip}; percent')
    print(f'{header}\n{tables}')
    if output is not None:
        try:  # a read-only folder, a full disk: one line naming the file
            check_writable_folder(output)
            command = sys.argv if argv is None else ['python', '-m', 'hbfp_timm.evaluate', *argv]
            record = {'model': str(args.model), 'checkpoint': args.checkpoint, 'img_size': list(extractor.img_size),
                      'metric': args.metric, 'flip': extractor.flip, 'command': command, 'torch': torch.__version__,
                      'results': rows}
            atomic_write_text(output / 'evaluation.json', json.dumps(record, indent=2) + '\n')
            atomic_write_text(output / 'evaluation.md', f'{header}\n\n{tables}\n')
            if args.calibrate:
                row = rows[0]
                problems = calibration_problems({'thresholds': row['verification']['calibrated'],
                                                 'eer': row['verification']['eer']})
                warning = {}
                if problems:
                    warning['warning'] = (f"--calibrate: the thresholds calibrated on {row['data_root']} rest on too "
                                          f"few pairs (at least {MIN_PAIRS} needed, the 'rule of 30'): "
                                          f"{'; '.join(problems)}; calibrate on more queries and gallery images")
                    warnings.warn(warning['warning'], UserWarning)
                path = save_thresholds(output / THRESHOLDS_NAME, {
                    'metric': args.metric, 'flip': extractor.flip, 'img_size': list(extractor.img_size),
                    'model': str(args.model), 'weights_sha256': digest(), 'command': command,
                    'calibrated_on': {'data_root': row['data_root'], 'dataset': row['dataset'],
                                      'query_ids': row['query_ids'], 'num_query': row['num_query'],
                                      'num_gallery': row['num_gallery']},
                    'note': 'A threshold holds for the cameras it was calibrated on; re-check it on other data with '
                            'python -m hbfp_timm.evaluate.',
                    'thresholds': row['verification']['calibrated'], 'eer': row['verification']['eer'], **warning})
                print(f'wrote {path}')
        except USER_ERRORS as error:
            return command_error(parser, error)
    return 0


if __name__ == '__main__':
    run_command(main)
