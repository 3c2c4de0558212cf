"""Where the benchmarks find their data: a ``--data-root``, the default roots (``$REID_DATA_ROOT``, ``~/data``),
or the synthetic Market-layout set of the embedded default, generated on demand."""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hbfp_timm.data import ReIDDataset, build_dataset
from hbfp_timm.hub.paper import DATASET_TITLES
from hbfp_timm.commands import one_line

from .cli import BenchmarkError

__all__ = ['DATA_ROOT_ENV', 'DEFAULT_DATA_ROOTS', 'PAPER_IDENTITIES', 'BenchmarkData', 'default_data_roots',
           'find_datasets', 'prepare_synthetic', 'not_the_paper_dataset', 'benchmark_data', 'synthetic_benchmark_data',
           'own_data_note', 'no_data_notice', 'root_of']

DATA_ROOT_ENV = 'REID_DATA_ROOT'
DEFAULT_DATA_ROOTS = (Path('~/data'),)

# (training, query) identities of the paper's data sets under their standard protocols. The Market-style readers
# take any folder in that layout, so these counts are what tells the paper's data set from a user's own.
PAPER_IDENTITIES: Dict[str, Tuple[int, int]] = {
    'market1501': (751, 750), 'dukemtmc': (702, 702), 'cuhk03_labeled': (767, 700), 'cuhk03_detected': (767, 700),
}


@dataclass
class BenchmarkData:
    """A data set as a benchmark uses it.

    Attributes:
        key: The paper's data set it stands in for (``market1501``...), the key of the paper's numbers.
        reader: ``build_dataset`` name the trainer reads it with.
        dataset: The data set.
        root: The root the trainer reads it from.
        title: Its name in the tables.
        own_data: Why it is not the paper's data set (a user's own data in the same layout); None if it is, or
            for the synthetic set.
    """
    key: str
    reader: str
    dataset: ReIDDataset
    root: Path
    title: str
    own_data: Optional[str] = None


def default_data_roots() -> List[Path]:
    """Where a data set is looked for when ``--data-root`` is not given: ``$REID_DATA_ROOT``, then ``~/data``."""
    roots = [Path(os.environ[DATA_ROOT_ENV])] if os.environ.get(DATA_ROOT_ENV) else []
    return roots + [root.expanduser() for root in DEFAULT_DATA_ROOTS]


def find_datasets(names: Sequence[str], data_root: Optional[str]) -> Tuple[Dict[str, ReIDDataset], Dict[str, str]]:
    """Read the named data sets from ``data_root``, or from the default roots when it is None.

    Args:
        names: ``hbfp_timm.data.build_dataset`` names.
        data_root: The ``--data-root`` value.

    Returns:
        ``(found, missing)``: name -> data set, and name -> the reader's error for the data sets not found
        (only when ``data_root`` is None).

    Raises:
        BenchmarkError: ``data_root`` is given and a data set cannot be read from it.
    """
    found: Dict[str, ReIDDataset] = {}
    missing: Dict[str, str] = {}
    for name in names:
        if data_root is not None:
            try:
                found[name] = build_dataset(name, data_root)
            except (FileNotFoundError, ValueError, OSError) as error:
                raise BenchmarkError(f'--data-root {data_root}: {one_line(error)}') from error
            continue
        errors = []
        for root in default_data_roots():
            try:
                found[name] = build_dataset(name, root)
                break
            except (FileNotFoundError, ValueError, OSError) as error:
                errors.append(one_line(error))
        else:
            missing[name] = errors[-1] if len(errors) == 1 else ' / '.join(errors)
    return found, missing


def prepare_synthetic(folder: Path, seed: int, spec: Mapping[str, Any]) -> ReIDDataset:
    """Generate (or reuse) the synthetic Market-layout set of the embedded default and read it.

    The generator is deterministic, so a folder written earlier with the same parameters is reused;
    a parameter file beside the images tells.

    Args:
        folder: Where the images go (``OUTPUT/synthetic``).
        seed: Generator seed.
        spec: ``num_ids``, ``num_cams``, ``images_per_id`` and ``image_size`` (height, width) of the set
            (``Settings.synthetic_data``).

    Returns:
        The data set, read with the ``market_layout`` reader.
    """
    from hbfp_timm.data.synthetic import generate_synthetic_dataset

    params = dict(num_ids=spec['num_ids'], num_cams=spec['num_cams'], seed=seed,
                  images_per_id=spec['images_per_id'], height=spec['image_size'][0], width=spec['image_size'][1])
    stamp = folder / 'synthetic_params.json'
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        generate_synthetic_dataset(folder, overwrite=True, **params)
        stamp.write_text(json.dumps(params, indent=1))
    return build_dataset('market_layout', folder)


def not_the_paper_dataset(name: str, dataset: ReIDDataset) -> Optional[str]:
    """Why a data set read by the ``name`` reader is not the paper's ``name`` data set, if it is not.

    Args:
        name: ``build_dataset`` name of a data set in the paper (:data:`PAPER_IDENTITIES`).
        dataset: The data set read.

    Returns:
        None when its training and query identities are the paper's; else a phrase saying how they differ.
    """
    expected = PAPER_IDENTITIES[name]
    found = (dataset.num_train_pids, len({pid for _, pid, _ in dataset.query}))
    if found == expected:
        return None
    return (f'{found[0]} training and {found[1]} query identities, not the {expected[0]} and {expected[1]} of '
            f'{DATASET_TITLES[name]}')


def benchmark_data(key: str, dataset: ReIDDataset, data_root: Optional[str]) -> BenchmarkData:
    """A found data set as the benchmark uses it: the paper's data set, or the user's own in its layout.

    A Market-style folder whose identity counts are not the paper's data set's is the user's own: it is named
    after its folder (never "Market-1501"), the trainer reads it under a neutral reader name, and the tables set
    it beside the paper's numbers without differences.

    Args:
        key: The ``build_dataset`` name it was read with.
        dataset: The data set.
        data_root: The ``--data-root`` value (None: found under the default roots).

    Returns:
        The benchmark's view of it.
    """
    root = Path(data_root).expanduser() if data_root else root_of(dataset)
    reason = not_the_paper_dataset(key, dataset)
    if reason is None:
        return BenchmarkData(key, key, dataset, root, DATASET_TITLES[key])
    # The market_layout reader is the Market-1501 reader without the name, so the trainer's outputs (and a model
    # card made from them) do not call the user's data Market-1501.
    reader = 'market_layout' if key == 'market1501' else key
    return BenchmarkData(key, reader, dataset, root_of(dataset) if reader == 'market_layout' else root,
                         root_of(dataset).name, own_data=reason)


def synthetic_benchmark_data(dataset: ReIDDataset, folder: Path) -> BenchmarkData:
    """The synthetic set of the embedded default (:func:`prepare_synthetic`), standing in for Market-1501."""
    return BenchmarkData('market1501', 'market_layout', dataset, folder, 'synthetic Market layout')


def own_data_note(data: Sequence[BenchmarkData]) -> Optional[str]:
    """What the run says (printed, and under the report's heading) about the user's own data sets among ``data``.

    Args:
        data: The benchmark's data sets.

    Returns:
        One sentence per own data set, or None when there is none.
    """
    notes = [f'{item.root}: {item.own_data}; benchmarked as your own data set "{item.title}", beside the paper\'s '
             f'{DATASET_TITLES[item.key]} numbers without differences.' for item in data if item.own_data]
    return ' '.join(notes) or None


def no_data_notice(missing: Dict[str, str], prog: str,
                   modes: str = " add --train to train with the paper's recipe or --checkpoint FILE to evaluate "
                                "weights.") -> str:
    """The lines printed when no data set was found: where each was looked for, and how to point at one.

    Args:
        missing: Data set name -> the reader's error (from :func:`find_datasets`).
        prog: ``python -m benchmarks.<name>``.
        modes: End of the last line: what to add to the command.

    Returns:
        The notice, lines joined by newlines.
    """
    lines = []
    for name, error in missing.items():
        lines.append(f'No {DATASET_TITLES.get(name, name)} data set found (no --data-root given; looked under '
                     f'${DATA_ROOT_ENV} and ~/data): {error}')
    lines.append(f'To benchmark the real data set: {prog} --data-root DIR (or set ${DATA_ROOT_ENV});{modes}')
    return '\n'.join(lines)


def root_of(dataset: ReIDDataset) -> Path:
    """The data root a found data set was read from (the folder above its split folders)."""
    return Path(dataset.train[0][0]).parent.parent
