"""Search a gallery with query images:
``python -m hbfp_timm.search --query Q --gallery G --model M --topk 10 --output OUT``.

``--query`` and ``--gallery`` each name a folder of images, a ``.csv`` / ``.txt`` list, one image, or an
embeddings file of ``python -m hbfp_timm.embed`` (a large gallery is embedded once and searched many times;
``--model`` is then only needed for the side that still has to be described). Query and gallery must be
described alike: descriptors whose files say they were made by another model, another weights file
(``--checkpoint``; the same content under another path is the same), with and without ``--untrained``, with other
``--model-arg`` values, input size or ``--flip`` are refused, as their distances mean nothing together; so are
weights that differ where both files give their digest though the flags agree (two ``--untrained`` runs draw
different random weights; a run folder trained again), while the same weights loaded from two files are the
same. The search is exact (`hbfp_timm.metrics.retrieval.topk`); a query's own file is never among its results (a
folder searched against itself finds each image's nearest *other* images).

Writes ``OUT/ranking.json`` (per query: its path, and its top-k gallery paths with their distances) and
``OUT/ranking.png`` (the ranked lists of a few queries, with a legend of the border colours; left out, with a
warning, when its images are not where the embeddings files name them). When every image's identity is known (list
files with pids, or names in a data set's scheme) the results say whether they are the query's identity, the picture
colours them green / red, and rank-1 and mAP are reported under the Market-1501 protocol (camera-less data:
`hbfp_timm.data.lists`); otherwise borders are a neutral grey. The protocol does not score images of the query's
identity from the query's camera: they stay in the ranking, and the picture draws them dark grey, apart from the
scored matches.

``--same-person [FMR]`` marks each result whose distance is below the "same person" threshold of the model that
made the descriptors (the embeddings files name it; else ``--model``), the one calibrated at that false-match rate
(default 1e-3) and stored with its weights (`hbfp_timm.metrics.verification`), for the input size and flip setting
it was calibrated at; descriptors made with a ``--checkpoint`` file, ``--untrained`` or ``--model-arg`` have none
(those of a registered name are for its own weights, as built without arguments). ``--threshold DISTANCE``
(greater than 0) gives one directly. A threshold holds for the cameras it was calibrated on: re-check it on
labelled data of yours with ``python -m hbfp_timm.evaluate``.
"""
import argparse
import ast
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .commands import USER_ERRORS, add_model_arguments, command_error, extractor_from_args, output_folder, run_command
from .inference.embeddings import Embeddings, embed, load_embeddings, model_args_metadata
from .inference.visualize import draw_ranking
from .metrics.evaluation import score_features
from .metrics.retrieval import topk
from .metrics.verification import select_threshold, stored_thresholds
from .utils.files import atomic_write_text, check_writable_folder

__all__ = ['search', 'check_comparable', 'main']


def _describe(source: str, extractor_factory, args: argparse.Namespace) -> Embeddings:
    if source.endswith('.safetensors'):
        return load_embeddings(source)
    embeddings, _ = embed(source, extractor_factory(), model_name=str(args.model),
                          skip_bad_images=args.skip_bad_images, checkpoint=args.checkpoint, untrained=args.untrained,
                          model_args=dict(args.model_arg))
    return embeddings


def _cameras_differ(query: Embeddings, gallery: Embeddings) -> Optional[str]:
    """Why the cameras of query and gallery do not compare, when their files say they are numbered otherwise (the
    ``cameras`` of the metadata: a list file's ``camid`` as written, or 0-based from the file names); else None."""
    numbered = [(embeddings.metadata or {}).get('cameras') for embeddings in (query, gallery)]
    if None not in numbered and numbered[0] != numbered[1]:
        return f'query cameras numbered by their {numbered[0]}, gallery cameras by their {numbered[1]}'
    return None


def _with_cameras(query: Embeddings, gallery: Embeddings) -> bool:
    """Whether the protocol's same-camera rule applies: both sides give cameras, numbered alike."""
    return query.camids is not None and gallery.camids is not None and _cameras_differ(query, gallery) is None


def _cameras(query: Embeddings, gallery: Embeddings):
    """Cameras for the protocol: as given, else one per image file (only a query's own file is left out)."""
    if _with_cameras(query, gallery):
        return query.camids.numpy(), gallery.camids.numpy()
    camera_of = {path: camera for camera, path in enumerate(sorted(set(query.paths) | set(gallery.paths)))}
    return (np.array([camera_of[p] for p in query.paths]), np.array([camera_of[p] for p in gallery.paths]))


def search(query: Embeddings, gallery: Embeddings, k: int = 10, metric: str = 'euclidean', backend: str = 'torch',
           device: Optional[str] = None, threshold: Optional[float] = None,
           show_progress: bool = False) -> Dict[str, Any]:
    """Top-k gallery items of every query, the query's own file left out; the content of ``ranking.json``.

    Args:
        query: query embeddings.
        gallery: gallery embeddings.
        k: results per query (fewer where the gallery holds fewer images; ``topk`` says the `k` asked for).
        metric: 'euclidean' or 'cosine'.
        backend: 'torch' or 'faiss' (see `hbfp_timm.metrics.retrieval.topk`).
        device: where to search (default: where the descriptors are).
        threshold: a "same person" distance threshold: each result gets ``same_person`` (distance below it).
        show_progress: show the progress of the search and of the scores on stderr (a bar on a terminal, a line a
            minute in a log).

    Returns:
        ``{'metric', 'topk', 'num_query', 'num_gallery', 'identities_known', 'evaluation', 'threshold', 'queries'}``;
        ``queries`` holds per query ``{'query', 'results': [{'path', 'distance'[, 'pid', 'same_identity']
        [, 'same_person']}]}``.
    """
    if query.features.shape[1] != gallery.features.shape[1]:
        raise ValueError(f'query descriptors are {query.features.shape[1]}-d but gallery descriptors '
                         f'{gallery.features.shape[1]}-d; describe both with the same model')
    gallery_index = {path: index for index, path in enumerate(gallery.paths)}
    own = [gallery_index.get(path, -1) for path in query.paths]
    # One more neighbour where a query's own file is in the gallery, so that k others remain.
    extra = int(any(index >= 0 for index in own))
    distances, indices = topk(query.features, gallery.features, k=k + extra, metric=metric, backend=backend,
                              device=device, show_progress=show_progress)
    distances, indices = distances.cpu().numpy(), indices.cpu().numpy()
    known = query.pids is not None and gallery.pids is not None
    queries = []
    for row, query_path in enumerate(query.paths):
        keep = (indices[row] != own[row]) & (indices[row] >= 0)
        results = []
        for g, distance in zip(indices[row][keep][:k], distances[row][keep][:k]):
            result = {'path': gallery.paths[g], 'distance': float(distance)}
            if known:
                result.update(pid=int(gallery.pids[g]), same_identity=bool(gallery.pids[g] == query.pids[row]))
            if threshold is not None:
                result['same_person'] = bool(distance < threshold)
            results.append(result)
        entry = {'query': query_path, **({'pid': int(query.pids[row])} if known else {}), 'results': results}
        queries.append(entry)
    evaluation = None
    if known:
        q_cams, g_cams = _cameras(query, gallery)
        try:
            scores = score_features(query.features, gallery.features, query.pids.numpy(), gallery.pids.numpy(),
                                    q_cams, g_cams, metric=metric, max_rank=10, show_progress=show_progress)
            differ = _cameras_differ(query, gallery) if query.camids is not None and gallery.camids is not None \
                else None
            protocol = ('Market-1501: same identity and camera left out' if _with_cameras(query, gallery) else
                        'no cameras' + (f' ({differ}, which do not compare)' if differ else '')
                        + ': only the query file itself left out')
            evaluation = {**scores, 'protocol': protocol}
        except ValueError as error:  # e.g. no query has a true match: nothing to score, the search still stands
            evaluation = {'error': str(error)}
    return {'metric': metric, 'topk': k, 'num_query': len(query.paths), 'num_gallery': len(gallery.paths),
            'identities_known': known, 'evaluation': evaluation, 'threshold': threshold, 'queries': queries}


def _same_model(first: str, second: str) -> bool:
    """Whether two ``--model`` values name the same model: the same text, or the same folder or file."""
    if first == second:
        return True
    first, second = (Path(name[len('local-dir:'):] if name.startswith('local-dir:') else name).expanduser()
                     for name in (first, second))
    try:
        return first.exists() and second.exists() and first.samefile(second)
    except OSError:
        return False


def _how(embeddings: Embeddings) -> Dict[str, str]:
    """What an embeddings' metadata says about how they were made, where known: model, weights file (``checkpoint``,
    empty when none, with ``checkpoint_sha256``), ``untrained``, ``model_args`` (empty when none), the digest of
    the weights (``weights_sha256``), input size and flip."""
    metadata = embeddings.metadata or {}
    how = {key: metadata[key] for key in ('model', 'img_size', 'flip', 'untrained', 'weights_sha256')
           if metadata.get(key)}
    # Empty says: no weights file (the model's own weights), no constructor arguments; older files do not say.
    how.update({key: metadata[key] for key in ('checkpoint', 'model_args') if key in metadata})
    if 'checkpoint' in metadata and metadata.get('checkpoint_sha256'):
        how['checkpoint_sha256'] = metadata['checkpoint_sha256']
    return how


def _same_checkpoint(first: Dict[str, str], second: Dict[str, str]) -> bool:
    """Whether two `_how` name the same weights: both none; else the same content where both give its SHA-256,
    else the same path or file."""
    if not first['checkpoint'] or not second['checkpoint']:
        return first['checkpoint'] == second['checkpoint']
    if 'checkpoint_sha256' in first and 'checkpoint_sha256' in second:
        return first['checkpoint_sha256'] == second['checkpoint_sha256']
    return _same_model(first['checkpoint'], second['checkpoint'])


def _model_arg_flags(model_args: str) -> str:
    """The ``model_args`` of the metadata as the ``--model-arg`` flags that give them (as written where they do not
    read as a dict)."""
    try:
        values = ast.literal_eval(model_args)
    except (ValueError, SyntaxError):
        values = None
    if not isinstance(values, dict):
        return f'--model-arg {model_args}'
    return ' '.join(f'--model-arg {key}={value!r}' for key, value in values.items())


def _describe_how(how: Dict[str, str], differ: Sequence[str] = (), content: bool = False) -> str:
    """How descriptors were made, in words: the weights file when there is one (`content`: with the start of its
    SHA-256), ``--untrained`` when so, and, where they are among `differ`, the absence of either, the
    ``--model-arg`` values and the start of the weights' digest; input size and flip, where known."""
    text = f"by {how.get('model', 'an unnamed model')}"
    if how.get('checkpoint'):
        text += f" with --checkpoint {how['checkpoint']}"
        text += f" (sha256 {how['checkpoint_sha256'][:12]})" if content and 'checkpoint_sha256' in how else ''
    elif how.get('untrained') == 'True':
        text += ' with --untrained'
    elif 'checkpoint' in how and 'checkpoint' in differ:
        text += ' without --checkpoint'
    elif 'untrained' in differ and how.get('untrained') == 'False':
        text += ' without --untrained'
    if 'model_args' in how and 'model_args' in differ:
        text += f" with {_model_arg_flags(how['model_args'])}" if how['model_args'] else ' without --model-arg'
    text += f" (weights sha256 {how['weights_sha256'][:12]})" if 'weights' in differ and 'weights_sha256' in how else ''
    text += f" at {how['img_size']}" if 'img_size' in how else ''
    return text + ({'True': ' with --flip', 'False': ' without --flip'}.get(how.get('flip'), ''))


FLAGS = {'model': '--model', 'checkpoint': '--checkpoint', 'untrained': '--untrained', 'model_args': '--model-arg',
         'img_size': '--img-size', 'flip': '--flip'}


def check_comparable(query: Embeddings, gallery: Embeddings, query_source: str, gallery_source: str) -> None:
    """Refuse query and gallery descriptors made by different models, weights files (``--checkpoint``: the same
    content is the same file), with and without ``--untrained``, with other ``--model-arg`` values, input sizes or
    flip settings (as their metadata says; what one side does not say is not compared): their distances mean
    nothing together. Where both sides give the digest of their weights (``weights_sha256``), it decides whether
    the weights are the same: the same weights from two files, or a checkpoint holding an untrained model's
    weights, are the same; two ``--untrained`` runs (other random weights) or weights changed under the same name
    are not."""
    q_how, g_how = _how(query), _how(gallery)
    same_weights = (q_how['weights_sha256'] == g_how['weights_sha256'] if 'weights_sha256' in q_how
                    and 'weights_sha256' in g_how else None)

    def same(key: str) -> bool:
        if key == 'model':
            return _same_model(q_how[key], g_how[key])
        if key in ('checkpoint', 'untrained') and same_weights:
            return True  # whatever file they came from, the weights are the same
        return _same_checkpoint(q_how, g_how) if key == 'checkpoint' else q_how[key] == g_how[key]

    differ = [key for key in FLAGS if key in q_how and key in g_how and not same(key)]
    if same_weights is False and not {'model', 'checkpoint', 'untrained', 'model_args'} & set(differ):
        differ.append('weights')  # no flag tells them apart: the weights themselves differ
    if differ:
        # The same path on both sides with another content: the file changed between the two embeddings.
        changed = 'checkpoint' in differ and q_how['checkpoint'] == g_how['checkpoint']
        g_text, q_text = (_describe_how(how, differ, changed) for how in (g_how, q_how))
        remedies = []
        if set(differ) - {'weights'}:
            remedies.append('describe both with the same ' + ' and '.join(FLAGS[key] for key in differ
                                                                          if key != 'weights'))
        if 'weights' in differ and q_how.get('untrained') == g_how.get('untrained') == 'True':
            remedies.append('--untrained draws new random weights on each run: describe query and gallery from their '
                            'images in one run of search')
        elif 'weights' in differ:
            remedies.append(f"the weights of {q_how.get('model', 'the model')} changed between the two (trained "
                            'again, or another version): embed both again with the same weights')
        raise ValueError(f'--gallery: {gallery_source} was embedded {g_text}, --query: {query_source} {q_text}; '
                         'their distances cannot be compared: ' + '; '.join(remedies))


def _threshold(args: argparse.Namespace, query: Embeddings, gallery: Embeddings) -> float:
    """The threshold that ``--same-person FMR`` names, stored with the model that made the descriptors (their
    metadata, else ``--model``), checked against the metric, the input size, the flip setting and, where both record
    it, the digest of the weights they were calibrated on (``weights_sha256``). Descriptors made
    with a weights file (``--checkpoint``), random weights (``--untrained``) or constructor arguments
    (``--model-arg``), as their metadata, else the options, say, have none: what is stored with a registered name
    is for its own weights, as built without arguments."""
    how = {**_how(gallery), **_how(query)}  # the same on both sides where both say (check_comparable)
    model = how.get('model')
    if model is None and args.model is None:
        raise ValueError(f'--same-person: --query {args.query} and --gallery {args.gallery} do not say which model '
                         'made them; pass --model naming it, or --threshold')
    if model is not None and args.model is not None and not _same_model(model, str(args.model)):
        raise ValueError(f'--same-person: the descriptors were made by {model}, not --model {args.model}; leave '
                         '--model out to use the thresholds of the model that made them')
    model = model or str(args.model)
    if how.get('checkpoint') == '' and args.checkpoint:
        raise ValueError(f'--same-person: the descriptors were made by {model} without --checkpoint, not with '
                         f'--checkpoint {args.checkpoint}; leave --checkpoint out to use the thresholds of the weights '
                         'that made them')
    if how.get('untrained') == 'False' and args.untrained:
        raise ValueError(f'--same-person: the descriptors were made by {model} without --untrained, not with '
                         '--untrained; leave --untrained out to use the thresholds of the weights that made them')
    given_args = model_args_metadata(dict(args.model_arg))
    if how.get('model_args') == '' and given_args:
        raise ValueError(f'--same-person: the descriptors were made by {model} without --model-arg, not with '
                         f'{_model_arg_flags(given_args)}; leave --model-arg out to use the thresholds of the model '
                         'that made them')
    checkpoint = how.get('checkpoint') or args.checkpoint
    if checkpoint:
        raise ValueError(f'--same-person: the descriptors were made by {model} with --checkpoint {checkpoint}, a '
                         f'weights file with no calibrated threshold stored with it (those of {model} are for its '
                         'own weights); calibrate one with python -m hbfp_timm.evaluate --calibrate on labelled data '
                         'and pass it as --threshold, or describe the images with --model naming the run or Hub '
                         'folder of these weights')
    if how.get('untrained') == 'True' or args.untrained:
        raise ValueError(f'--same-person: the descriptors were made by {model} with --untrained, random weights that '
                         f'no calibrated threshold holds for (those of {model} are for its own weights); describe '
                         'the images without --untrained, or pass --threshold')
    model_args = how.get('model_args') or given_args
    if model_args:
        raise ValueError(f'--same-person: the descriptors were made by {model} with {_model_arg_flags(model_args)}, '
                         f'another model than the one its thresholds were calibrated for (those of {model} are for '
                         'its own weights, built without --model-arg); describe the images without --model-arg, or '
                         'calibrate one with python -m hbfp_timm.evaluate --calibrate with the same --model-arg on '
                         'labelled data and pass it as --threshold')
    stored = stored_thresholds(model)
    if stored is None:
        raise ValueError(f'--same-person: {model} has no calibrated threshold stored with its weights; calibrate one '
                         'with python -m hbfp_timm.evaluate --calibrate on labelled data, or pass --threshold')
    if stored.get('weights_sha256') and how.get('weights_sha256') not in (None, stored['weights_sha256']):
        raise ValueError(f"--same-person: the thresholds of {model} were calibrated on other weights (sha256 "
                         f"{stored['weights_sha256'][:12]}) than the descriptors were made with (sha256 "
                         f"{how['weights_sha256'][:12]}); describe the images again with {model}, or calibrate one "
                         'with python -m hbfp_timm.evaluate --calibrate and pass it as --threshold')
    if stored.get('metric') != args.metric:
        raise ValueError(f"--same-person: the thresholds of {model} are for {stored.get('metric')} distances, "
                         f'not --metric {args.metric}')
    calibrated = {}
    if stored.get('img_size'):
        calibrated['img_size'] = 'x'.join(str(side) for side in stored['img_size'])
    if stored.get('flip') is not None:
        calibrated['flip'] = str(bool(stored['flip']))
    if any(key in how and how[key] != value for key, value in calibrated.items()):
        raise ValueError(f'--same-person: the thresholds of {model} were calibrated on descriptors made '
                         f'{_describe_how({"model": model, **calibrated})}, these were made '
                         f'{_describe_how({"model": model, **how})}; describe the images as calibrated, or pass '
                         '--threshold')
    return float(select_threshold(stored, args.same_person)['threshold'])


def _picture(ranking: Dict[str, Any], query: Embeddings, gallery: Embeddings, path: Path, num_rows: int) -> Path:
    rows = np.unique(np.linspace(0, len(query.paths) - 1, num=min(num_rows, len(query.paths))).round().astype(int))
    gallery_index = {p: i for i, p in enumerate(gallery.paths)}
    k = max(1, max(len(ranking['queries'][r]['results']) for r in rows))
    indices = np.full((len(rows), k), -1)
    distances = np.full((len(rows), k), np.nan)
    for row, q in enumerate(rows):
        for rank, result in enumerate(ranking['queries'][q]['results']):
            indices[row, rank] = gallery_index[result['path']]
            distances[row, rank] = result['distance']
    known = ranking['identities_known']
    cameras = known and _with_cameras(query, gallery)
    labels = [(f'id {int(query.pids[q])}: ' if known else '') + Path(query.paths[q]).name for q in rows]
    return draw_ranking([query.paths[q] for q in rows], gallery.paths, indices, path, distances=distances,
                        query_pids=[int(query.pids[q]) for q in rows] if known else None,
                        gallery_pids=gallery.pids.numpy() if known else None, query_labels=labels,
                        query_camids=[int(query.camids[q]) for q in rows] if cameras else None,
                        gallery_camids=gallery.camids.numpy() if cameras else None,
                        note="a query's own file is never among its results")


def _top(ranking: Dict[str, Any]) -> str:
    """``top K`` with the number of results the queries got: the ``--topk`` asked for, or fewer where the gallery
    holds fewer images, said with the gallery's size."""
    k, num_gallery = ranking['topk'], ranking['num_gallery']
    counts = sorted({len(entry['results']) for entry in ranking['queries']})
    if counts == [k]:
        return f'top {k}'
    own_left_out = counts[0] < min(k, num_gallery)
    return (f'top {" or ".join(str(count) for count in counts)} (--topk {k}, but the gallery holds only '
            f'{num_gallery} image{"" if num_gallery == 1 else "s"}'
            + (", a query's own file left out" if own_left_out else '') + ')')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.search``; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.search',
        description='Find the nearest gallery images of each query image with a Re-ID model; write '
                    'OUT/ranking.json and a picture of the ranked lists, OUT/ranking.png.')
    parser.add_argument('--query', required=True,
                        help='folder, .csv/.txt list, image, or embeddings file (.safetensors from hbfp_timm.embed)')
    parser.add_argument('--gallery', required=True, help='same kinds as --query')
    parser.add_argument('--output', required=True, metavar='OUT', help='folder for ranking.json and ranking.png')
    parser.add_argument('--topk', type=int, default=10, help='results per query (%(default)s)')
    parser.add_argument('--metric', choices=('euclidean', 'cosine'), default='euclidean',
                        help='descriptor distance (%(default)s)')
    parser.add_argument('--backend', choices=('torch', 'faiss'), default='torch',
                        help='exact search in blocks with torch, or a faiss flat index (%(default)s)')
    parser.add_argument('--num-pictures', type=int, default=8, metavar='N',
                        help='queries drawn in ranking.png, spread over the query list (%(default)s; 0: none)')
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument('--same-person', type=float, nargs='?', const=1e-3, metavar='FMR',
                          help="mark results below the model's stored threshold calibrated at this false-match rate "
                               '(%(const)s when no value is given)')
    decision.add_argument('--threshold', type=float, metavar='DISTANCE',
                          help='mark results whose distance is below DISTANCE as the same person')
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f'--topk: expected a positive integer, got {args.topk}')
    if args.num_pictures < 0:
        parser.error(f'--num-pictures: expected 0 (no picture) or a positive integer, got {args.num_pictures}')
    if args.threshold is not None and not 0 < args.threshold < float('inf'):
        parser.error(f'--threshold: expected a distance greater than 0, got {args.threshold}')
    extractor = None

    def extractor_factory():
        nonlocal extractor
        extractor = extractor or extractor_from_args(args)
        return extractor

    try:
        output = output_folder('--output', args.output)
        query = _describe(args.query, extractor_factory, args)
        gallery = _describe(args.gallery, extractor_factory, args)
        check_comparable(query, gallery, args.query, args.gallery)
        threshold = _threshold(args, query, gallery) if args.same_person is not None else args.threshold
        ranking = search(query, gallery, k=args.topk, metric=args.metric, backend=args.backend,
                         device=extractor.device if extractor is not None else None, threshold=threshold,
                         show_progress=True)
        check_writable_folder(output)
        atomic_write_text(output / 'ranking.json', json.dumps(ranking, indent=1))
        picture = None
        if args.num_pictures > 0:
            try:
                picture = _picture(ranking, query, gallery, output / 'ranking.png', args.num_pictures)
            except FileNotFoundError as error:  # e.g. embeddings made on another machine: the results stand
                warnings.warn(f'ranking.png not drawn: image {error.filename} not found (the embeddings files name '
                              'their images where they were described); --num-pictures 0 draws no picture',
                              UserWarning)
    except USER_ERRORS as error:
        return command_error(parser, error)
    num_query, num_gallery = ranking['num_query'], ranking['num_gallery']
    summary = (f'{num_query} {"query" if num_query == 1 else "queries"} x {num_gallery} gallery '
               f'image{"" if num_gallery == 1 else "s"}, {_top(ranking)}')
    evaluation = ranking['evaluation']
    if evaluation and 'rank1' in evaluation:
        skipped = evaluation['num_skipped_queries']
        summary += (f'; rank-1 {evaluation["rank1"]:.1%}, mAP {evaluation["mAP"]:.1%} '
                    f'({evaluation["protocol"]}; {skipped} {"query" if skipped == 1 else "queries"} '
                    f'without a match)')
    elif evaluation:  # identities known, but nothing to score: said, not left to ranking.json alone
        summary += f'; not scored: {evaluation["error"]}'
    if threshold is not None:
        marked = [r for entry in ranking['queries'] for r in entry['results'] if r['same_person']]
        wrong = sum(not r['same_identity'] for r in marked) if ranking['identities_known'] else None
        summary += (f'; {len(marked)} results below the same-person threshold {threshold:.4f}'
                    + (f' ({wrong} of them another identity)' if wrong is not None else ''))
    print(f'{summary}; wrote {output / "ranking.json"}' + (f' and {picture}' if picture else ''))
    return 0


if __name__ == '__main__':
    run_command(main)
