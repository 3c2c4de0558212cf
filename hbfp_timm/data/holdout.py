"""A validation split held out of a data set's training identities, for choosing a recipe without the test split.

``python -m hbfp_timm.data.holdout --data-root DATA --num-ids 100 --seed 0 --output VAL`` writes VAL in the
Market-1501 layout, as symbolic links to DATA's files (names unchanged):

* ``bounding_box_train/``: the training images of every identity that is not held out;
* ``query/``: for each held-out identity and camera, its first image (in sorted file-name order);
* ``bounding_box_test/``: the held-out identities' other images.

So every query has a same-identity gallery image in another camera whenever its identity was seen by two
cameras; held-out identities seen by a single camera are left in training (they could not be queried under the
cross-camera protocol). The held-out identities are drawn with `random.Random(seed)` from the sorted eligible
ids, so the split is the same on every machine. Nothing of DATA's query or gallery is read or linked: a recipe
chosen on VAL has not seen the test split.
"""
import argparse
import json
import os
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .datasets import MARKET_PATTERN, MARKET_SPLITS, market_layout

__all__ = ['holdout_split', 'main']

SPLIT_FILE = 'holdout.json'


def _original_pid(path: str) -> int:
    """The identity in a Market-style file name (the reader relabels training identities to 0..N-1)."""
    return int(MARKET_PATTERN.match(Path(path).name)['pid'])


def holdout_split(data_root, output, num_ids: int, seed: int = 0) -> Dict[str, object]:
    """Write a Market-layout validation folder held out of `data_root`'s training identities.

    Args:
        data_root: a folder in the Market-1501 layout (only ``bounding_box_train/`` is read).
        output: the folder to write; must not exist yet, or be empty.
        num_ids: how many training identities to hold out for validation (each seen by at least two cameras).
        seed: seed of the draw.

    Returns:
        A summary (also written to ``output/holdout.json``): the held-out ids and the image counts per split.
    """
    if num_ids < 1:
        raise ValueError(f'num_ids must be at least 1, got {num_ids}')
    output = Path(output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f'{output} exists and is not an empty folder; give a new --output')
    train = market_layout(data_root).train
    by_pid: Dict[int, List[Tuple[str, int]]] = defaultdict(list)
    for path, _, camera in train:
        by_pid[_original_pid(path)].append((path, camera))
    eligible = sorted(pid for pid, images in by_pid.items() if len({c for _, c in images}) >= 2)
    if num_ids >= len(by_pid) or num_ids > len(eligible):
        raise ValueError(f'num_ids={num_ids} leaves no training identities or exceeds the {len(eligible)} '
                         f'identities of {data_root} seen by two cameras')
    held = set(random.Random(seed).sample(eligible, num_ids))
    folders = {split: output / name for split, name in MARKET_SPLITS.items()}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    counts = {split: 0 for split in folders}
    for pid in sorted(by_pid):
        seen_cameras = set()
        for path, camera in sorted(by_pid[pid], key=lambda item: Path(item[0]).name):
            if pid not in held:
                split = 'train'
            elif camera in seen_cameras:
                split = 'gallery'
            else:
                split = 'query'
                seen_cameras.add(camera)
            os.symlink(os.path.abspath(path), folders[split] / Path(path).name)
            counts[split] += 1
    summary = {'data_root': str(Path(data_root).expanduser().resolve()), 'seed': seed, 'num_ids': num_ids,
               'train_ids': len(by_pid) - num_ids, 'held_out_ids': sorted(held), 'images': counts}
    (output / SPLIT_FILE).write_text(json.dumps(summary, indent=2) + '\n')
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.data.holdout', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--data-root', required=True, help='folder in the Market-1501 layout')
    parser.add_argument('--num-ids', type=int, default=100, help='training identities to hold out')
    parser.add_argument('--seed', type=int, default=0, help='seed of the draw')
    parser.add_argument('--output', required=True, help='new folder for the validation split')
    args = parser.parse_args(argv)
    try:
        summary = holdout_split(args.data_root, args.output, args.num_ids, args.seed)
    except (FileExistsError, ValueError) as error:  # what the arguments ask cannot be done: a usage error
        print(f'{parser.prog}: error: {error}', file=sys.stderr)
        return 2
    except OSError as error:
        print(f'{parser.prog}: error: {error}', file=sys.stderr)
        return 1
    images = summary['images']
    print(f"{args.output}: {summary['train_ids']} training identities ({images['train']} images); "
          f"{summary['num_ids']} held out: {images['query']} queries, {images['gallery']} gallery images")
    return 0


if __name__ == '__main__':
    sys.exit(main())
