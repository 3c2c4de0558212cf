"""A distance threshold that says "same person", calibrated on labelled pairs at fixed false-match rates.

Ranking (CMC, mAP) says which gallery image is the nearest; tracking and verification also need to decide
whether the nearest one is the same person at all. This module measures that decision on labelled data.

Pairs are query x gallery pairs under the ranking protocol (`hbfp_timm.metrics`):

* genuine: same identity, different camera (same-identity same-camera pairs are left out, as in ranking);
* impostor: different identities (any cameras; distractors, identity 0, included);
* junk (identity -1) is left out.

A pair is accepted as "same person" when its distance is **strictly below** the threshold ``t``.
FMR(t) (false-match rate) is the fraction of impostor pairs accepted, TMR(t) (true-match rate) the fraction of
genuine pairs accepted. The threshold of a target FMR ``f`` is the ``m+1``-th smallest impostor distance with
``m = floor(f * impostors)``: at most ``m`` impostor pairs lie below it (fewer when distances tie). The
equal-error point is the genuine distance at which FMR and 1 - TMR are closest; its rate is their mean.

An estimate needs enough pairs: by the "rule of 30" (Doddington et al., 2000), a rate measured on at least 30
errors is within about +-30% of the true rate (90% confidence). A threshold at FMR ``f`` rests on the
``floor(f * impostors)`` impostor pairs below it, so it needs ``30 / f`` impostor pairs (3,000 at 1e-2, 30,000 at
1e-3), and the true-match rates need 30 genuine pairs; `calibration_problems` says what falls short (``evaluate
--calibrate`` warns with it and stores it in ``thresholds.json``).

A threshold holds for the domain it was calibrated on (cameras, lighting, resolution, the model, its input
size, metric and flip): on other cameras the same distance can mean another false-match rate.
``python -m hbfp_timm.evaluate`` re-checks a stored threshold on any labelled data and calibrates new ones.

The distances are computed block by block (`hbfp_timm.metrics.distance`), never as a whole matrix; what is kept is
every genuine distance and the smallest impostor distances the lowest target FMR needs.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..models.registry import BUNDLED_WEIGHTS
from ..utils.files import atomic_write_text
from .distance import distance_block, gallery_statistic, query_and_gallery
from .rank import check_ids

__all__ = ['DEFAULT_FMRS', 'MIN_PAIRS', 'THRESHOLDS_FORMAT', 'PairDistances', 'pair_distances', 'calibrate',
           'calibration_problems', 'check_threshold', 'select_threshold', 'save_thresholds', 'read_thresholds',
           'stored_thresholds']

ArrayLike = Union[np.ndarray, torch.Tensor]
DEFAULT_FMRS = (1e-2, 1e-3)
THRESHOLDS_FORMAT = 'hbfp_timm.thresholds/1'
THRESHOLDS_NAME = 'thresholds.json'
# The "rule of 30": pairs an estimated rate needs (impostor pairs below a threshold; genuine pairs).
MIN_PAIRS = 30
# Largest block of query-to-gallery distances held at once.
BLOCK_BYTES = 64 * 2 ** 20


@dataclass
class PairDistances:
    """Distances of the genuine and impostor pairs of a labelled query/gallery split.

    Attributes:
        genuine: (num_genuine,) sorted distances of the genuine pairs.
        lowest_impostors: the smallest impostor distances, sorted (as many as the lowest FMR asked for needs).
        num_impostor: number of impostor pairs.
        impostors_below: (num_genuine + len(at),) impostor pairs strictly below each genuine distance, then
            below each threshold of ``at``.
        at: the extra thresholds counted.
        metric: 'euclidean' or 'cosine'.
    """
    genuine: np.ndarray
    lowest_impostors: np.ndarray
    num_impostor: int
    impostors_below: np.ndarray
    at: np.ndarray
    metric: str


@torch.no_grad()
def pair_distances(
        q_feats: ArrayLike,
        g_feats: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        metric: str = 'euclidean',
        fmrs: Sequence[float] = DEFAULT_FMRS,
        at: Sequence[float] = (),
        block_bytes: int = BLOCK_BYTES,
) -> PairDistances:
    """Genuine and impostor pair distances of a query/gallery split (see the module doc for the pairs).

    Args:
        q_feats: (num_query, dim) query descriptors.
        g_feats: (num_gallery, dim) gallery descriptors.
        q_pids, g_pids: identities (-1: junk; 0: distractor, an impostor to every query).
        q_camids, g_camids: cameras.
        metric: 'euclidean' or 'cosine'.
        fmrs: the false-match rates that thresholds will be calibrated at (the smallest impostor distances that
            the largest of them needs are kept).
        at: thresholds at which the impostor pairs below are counted (to re-check stored thresholds).
        block_bytes: size of one block of float32 distances.

    Returns:
        `PairDistances`.

    Raises:
        ValueError: on inconsistent shapes, or when there is no genuine or no impostor pair.
    """
    query, gallery = query_and_gallery(q_feats, g_feats, metric)
    q_pids, g_pids, q_camids, g_camids = check_ids(q_pids, g_pids, q_camids, g_camids, len(query), len(gallery),
                                                   sizes=f'q_feats has {len(query)} rows and g_feats {len(gallery)}')
    if any(not 0 < f < 1 for f in fmrs):
        raise ValueError(f'fmrs: expected false-match rates in (0, 1), got {list(fmrs)}')
    valid_gallery = g_pids != -1
    same_pid = {pid: int(count) for pid, count in zip(*np.unique(g_pids[valid_gallery], return_counts=True))}
    num_impostor = sum(int(valid_gallery.sum()) - same_pid.get(pid, 0) for pid in q_pids if pid != -1)
    keep = min(num_impostor, int(math.floor(max(fmrs, default=0) * num_impostor)) + 1)

    stat = gallery_statistic(gallery, metric)
    rows = max(1, int(block_bytes) // (4 * max(len(gallery), 1)))

    def blocks():
        """(genuine distances, sorted impostor distances) of each block of queries, computed afresh."""
        for start in range(0, len(query), rows):
            stop = min(start + rows, len(query))
            distances = distance_block(query[start:stop], gallery, metric, stat).cpu().numpy()
            same = q_pids[start:stop, None] == g_pids[None, :]
            usable = valid_gallery[None, :] & (q_pids[start:stop, None] != -1)
            yield (distances[usable & same & (q_camids[start:stop, None] != g_camids[None, :])],
                   np.sort(distances[usable & ~same]))

    # Two passes over the blocks, so that memory stays one block: the first keeps the genuine distances and the
    # smallest impostors, the second counts the impostors below every genuine distance.
    genuine, lowest = [], np.empty(0, dtype=np.float32)
    for block_genuine, impostor in blocks():
        genuine.append(block_genuine)
        if keep:
            lowest = np.concatenate([lowest, impostor[:keep]])
            lowest = np.partition(lowest, keep - 1)[:keep] if len(lowest) > keep else lowest
    genuine = np.sort(np.concatenate(genuine)) if genuine else np.empty(0, dtype=np.float32)
    if not len(genuine):
        raise ValueError('no genuine pair (same identity, other camera) between query and gallery: nothing to '
                         'calibrate or check a threshold on')
    if not num_impostor:
        raise ValueError('no impostor pair (different identities) between query and gallery')
    at = np.asarray(list(at), dtype=np.float64)
    candidates = np.concatenate([genuine.astype(np.float64), at])
    below = np.zeros(len(candidates), dtype=np.int64)
    for _, impostor in blocks():
        below += np.searchsorted(impostor, candidates, side='left')
    return PairDistances(genuine, np.sort(lowest), num_impostor, below, at, metric)


def _rates(pairs: PairDistances, threshold: float, impostors_below: int) -> Dict[str, Any]:
    accepted = int(np.searchsorted(pairs.genuine, threshold, side='left'))
    return {'threshold': float(threshold), 'tmr': accepted / len(pairs.genuine),
            'fmr': impostors_below / pairs.num_impostor, 'genuine_accepted': accepted,
            'num_genuine': len(pairs.genuine), 'impostors_accepted': int(impostors_below),
            'num_impostor': pairs.num_impostor}


def calibrate(pairs: PairDistances, fmrs: Sequence[float] = DEFAULT_FMRS) -> Dict[str, Any]:
    """Thresholds at the target false-match rates `fmrs`, and the equal-error point, of `pairs`.

    Returns:
        ``{'metric', 'thresholds': [{'fmr_target', 'threshold', 'fmr', 'tmr', counts...}], 'eer': {'rate', ...}}``;
        a target below one impostor pair (``fmr * impostors < 1``) is reached by accepting none of them.
    """
    thresholds = []
    for target in sorted(fmrs, reverse=True):
        allowed = int(math.floor(target * pairs.num_impostor))
        if allowed >= len(pairs.lowest_impostors):
            raise ValueError(f'fmr {target}: pair_distances kept {len(pairs.lowest_impostors)} impostor distances; '
                             f'pass fmrs including {target} to pair_distances')
        threshold = float(pairs.lowest_impostors[allowed])
        below = int(np.searchsorted(pairs.lowest_impostors, threshold, side='left'))
        thresholds.append({'fmr_target': target, **_rates(pairs, threshold, below)})
    genuine_below = np.searchsorted(pairs.genuine, pairs.genuine, side='left')
    fmr = pairs.impostors_below[:len(pairs.genuine)] / pairs.num_impostor
    fnmr = 1 - genuine_below / len(pairs.genuine)
    best = int(np.argmin(np.abs(fmr - fnmr)))
    eer = _rates(pairs, float(pairs.genuine[best]), int(pairs.impostors_below[best]))
    eer['rate'] = float((fmr[best] + fnmr[best]) / 2)
    return {'metric': pairs.metric, 'thresholds': thresholds, 'eer': eer}


def calibration_problems(calibrated: Dict[str, Any], min_pairs: int = MIN_PAIRS) -> List[str]:
    """What the thresholds of `calibrated` (`calibrate`'s result) rest on too few pairs for (module doc), a phrase
    each; empty when every threshold has `min_pairs` impostor pairs below it and there are `min_pairs` genuine
    pairs."""
    problems = []
    for entry in calibrated['thresholds']:
        below = math.floor(entry['fmr_target'] * entry['num_impostor'])
        if below < min_pairs:
            problems.append(f"FMR {entry['fmr_target']:g} rests on {below:,} impostor pair{'' if below == 1 else 's'} "
                            f"below its threshold ({entry['num_impostor']:,} impostor pairs; "
                            f"{math.ceil(round(min_pairs / entry['fmr_target'], 6)):,} put {min_pairs} below it)")
    num_genuine = calibrated['eer']['num_genuine']
    if num_genuine < min_pairs:
        problems.append(f'{num_genuine:,} genuine pair{"" if num_genuine == 1 else "s"} ({min_pairs} needed for the '
                        'true-match rates)')
    return problems


def check_threshold(pairs: PairDistances, threshold: float) -> Dict[str, Any]:
    """TMR and FMR (with the counts) of a threshold on `pairs`; `threshold` must be among ``pairs.at``."""
    where = np.flatnonzero(pairs.at == threshold)
    if not len(where):
        raise ValueError(f'threshold {threshold}: not counted; pass it in `at` to pair_distances')
    return _rates(pairs, threshold, int(pairs.impostors_below[len(pairs.genuine) + where[0]]))


def select_threshold(stored: Dict[str, Any], fmr: float) -> Dict[str, Any]:
    """The entry of `stored` (a thresholds record) calibrated at target FMR `fmr`."""
    for entry in stored.get('thresholds', []):
        if math.isclose(entry['fmr_target'], fmr, rel_tol=1e-9):
            return entry
    available = ', '.join(f"{entry['fmr_target']:g}" for entry in stored.get('thresholds', [])) or 'none'
    raise ValueError(f'no threshold calibrated at false-match rate {fmr:g} (calibrated at: {available})')


def save_thresholds(path: Union[str, Path], record: Dict[str, Any]) -> Path:
    """Write a thresholds record (`calibrate`'s result plus provenance) as JSON, with its format tag."""
    path = Path(path)
    atomic_write_text(path, json.dumps({'format': THRESHOLDS_FORMAT, **record}, indent=2) + '\n')
    return path


def read_thresholds(path: Union[str, Path]) -> Dict[str, Any]:
    """A thresholds record written by `save_thresholds` (or the ``reid_thresholds`` of a Hub ``config.json``)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: thresholds file not found') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f'{path}: not valid JSON ({error})') from None
    if isinstance(record, dict) and path.name == 'config.json':
        record = record.get('reid_thresholds')
    if not isinstance(record, dict) or record.get('format') != THRESHOLDS_FORMAT or not record.get('thresholds'):
        raise ValueError(f'{path}: not a thresholds file of hbfp_timm (format {THRESHOLDS_FORMAT})')
    return record


def stored_thresholds(model: Optional[str]) -> Optional[Dict[str, Any]]:
    """The thresholds stored with a model's weights, or None when it has none.

    Looked up, by what `model` names (as the commands accept it): a registered tag whose weights ship with the
    package: the ``<tag>.thresholds.json`` beside them; a trainer run folder: its ``thresholds.json``; a Hub
    folder or ``local-dir:``: the ``reid_thresholds`` of its ``config.json``; ``hf-hub:ORG/NAME``: the same, from
    the local Hugging Face cache (where loading the model put it).
    """
    if not model:
        return None
    name = str(model)
    if name in BUNDLED_WEIGHTS:
        candidates = [BUNDLED_WEIGHTS[name].with_suffix('.thresholds.json')]
    elif name.startswith('hf-hub:'):
        from huggingface_hub import try_to_load_from_cache
        repo, _, revision = name[len('hf-hub:'):].partition('@')
        cached = try_to_load_from_cache(repo, 'config.json', revision=revision or None)
        candidates = [Path(cached)] if isinstance(cached, str) else []
    else:
        folder = Path(name[len('local-dir:'):] if name.startswith('local-dir:') else name).expanduser()
        folder = folder.parent if folder.suffix == '.safetensors' else folder
        candidates = [folder / THRESHOLDS_NAME, folder / 'config.json']
    for candidate in candidates:
        if candidate.is_file():
            if candidate.name == 'config.json':
                try:
                    if not json.loads(candidate.read_text(encoding='utf-8')).get('reid_thresholds'):
                        continue
                except (ValueError, AttributeError):
                    continue
            return read_thresholds(candidate)
    return None
