"""Evaluate a model on labelled re-id data: ``python -m hbfp_timm.evaluate --data-root D [--model M] [--output OUT]``.

The model is anything the other commands accept (default: the shipped ``hbfp_mobilenetv2_100.cuhk03``; a
trainer run folder; a Hub folder; ``hf-hub:`` / ``local-dir:`` names; a registered name with its weights or
with ``--checkpoint``, which also takes any timm backbone, e.g. ``--model mobilenetv2_100 --checkpoint
imagenet.safetensors`` for an ImageNet model with no re-id training). The data are any set the readers accept
(``--dataset``: the Table 1 sets, ``market_layout`` for any folder in the Market-1501 layout, ``image_lists``);
several ``--data-root`` give one table, a row each. Scores follow the data set's protocol (Market-1501 single
query: same-identity same-camera gallery images removed, junk ignored), computed block by block, so the
query x gallery distance matrix is never held whole (except for ``--rerank``, which needs it).
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from .data.datasets import DATASET_NAMES, ImageDataset, build_dataset
from .embed import USER_ERRORS, add_model_arguments, exit_code, extractor_from_args, one_line, run_command
from .engine import evaluate

__all__ = ['evaluate_data', 'main']


def evaluate_data(extractor, dataset_name: str, data_root, metric: str = 'euclidean', rerank: bool = False,
                  workers: int = 0) -> Dict[str, Any]:
    """Scores of `extractor`'s model on the query/gallery split of one data set (`hbfp_timm.engine.evaluate`)."""
    dataset = build_dataset(dataset_name, data_root)

    def loader(items):
        return DataLoader(ImageDataset(items, extractor.transform), batch_size=extractor.batch_size,
                          num_workers=workers, pin_memory=extractor.device.type == 'cuda')

    start = time.perf_counter()
    scores = evaluate(extractor.model, loader(dataset.query), loader(dataset.gallery), extractor.device,
                      metric=metric, rerank=rerank, flip=extractor.flip, amp=extractor.amp)
    scores.pop('cmc', None)
    if 'reranked' in scores:
        scores['reranked'].pop('cmc', None)
    return {'data_root': str(data_root), 'dataset': dataset.name,
            'query_ids': len({pid for _, pid, _ in dataset.query}),
            'gallery_ids': len({pid for _, pid, _ in dataset.gallery}),
            'seconds': round(time.perf_counter() - start, 1), **scores}


def _table(rows: List[Dict[str, Any]]) -> str:
    lines = ['| data | queries | gallery | Rank-1 | Rank-5 | Rank-10 | mAP |', '|---|---:|---:|---:|---:|---:|---:|']
    for row in rows:
        for label, scores in (('', row), (' (re-ranked)', row.get('reranked'))):
            if scores:
                lines.append(f"| {row['data_root']}{label} | {row['num_query']} | {row['num_gallery']} | "
                             + ' | '.join(f'{100 * scores[k]:.1f}' for k in ('rank1', 'rank5', 'rank10', 'mAP'))
                             + ' |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.evaluate``; see ``--help``."""
    parser = argparse.ArgumentParser(prog='python -m hbfp_timm.evaluate', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', action='append', required=True, metavar='DIR',
                        help='folder of a labelled data set (repeatable: one row each)')
    parser.add_argument('--dataset', choices=DATASET_NAMES, default='market_layout',
                        help='reader of the data (%(default)s: any folder in the Market-1501 layout)')
    parser.add_argument('--metric', choices=('euclidean', 'cosine'), default='euclidean',
                        help='descriptor distance (%(default)s)')
    parser.add_argument('--rerank', action='store_true', help='also k-reciprocal re-ranked scores')
    parser.add_argument('--output', metavar='OUT', help='folder for evaluation.json and evaluation.md')
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        extractor = extractor_from_args(args)
        rows = [evaluate_data(extractor, args.dataset, root, args.metric, args.rerank, args.workers)
                for root in args.data_root]
    except USER_ERRORS as error:
        print(f'{parser.prog}: error: {one_line(error)}', file=sys.stderr)
        return exit_code(error)
    table = _table(rows)
    header = (f'model {args.model}, input {extractor.img_size[0]}x{extractor.img_size[1]}, '
              f'{args.metric} distance, flip {extractor.flip}; percent')
    print(f'{header}\n{table}')
    if args.output:
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        record = {'model': str(args.model), 'checkpoint': args.checkpoint, 'img_size': list(extractor.img_size),
                  'metric': args.metric, 'flip': extractor.flip, 'command': sys.argv if argv is None else
                  ['python', '-m', 'hbfp_timm.evaluate', *argv], 'torch': torch.__version__, 'results': rows}
        (output / 'evaluation.json').write_text(json.dumps(record, indent=2) + '\n', encoding='utf-8')
        (output / 'evaluation.md').write_text(f'{header}\n\n{table}\n', encoding='utf-8')
    return 0


if __name__ == '__main__':
    run_command(main)
