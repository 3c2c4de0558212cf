"""Where the benchmarks find their data: a ``--data-root``, the default roots (``$REID_DATA_ROOT``, ``~/data``),
or the synthetic Market-layout set of the embedded default, generated on demand."""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hbfp_timm.data import ReIDDataset, build_dataset
from hbfp_timm.paper import DATASET_TITLES

from .cli import BenchmarkError, one_line

__all__ = ['DATA_ROOT_ENV', 'DEFAULT_DATA_ROOTS', 'default_data_roots', 'find_datasets', 'prepare_synthetic',
           'no_data_notice', 'root_of']

DATA_ROOT_ENV = 'REID_DATA_ROOT'
DEFAULT_DATA_ROOTS = (Path('~/data'),)


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
    from hbfp_timm.synthetic import generate_synthetic_dataset

    params = dict(num_ids=spec['num_ids'], num_cams=spec['num_cams'], seed=seed,
                  images_per_id=spec['images_per_id'], height=spec['image_size'][0], width=spec['image_size'][1])
    stamp = folder / 'synthetic_params.json'
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        generate_synthetic_dataset(folder, overwrite=True, **params)
        stamp.write_text(json.dumps(params, indent=1))
    return build_dataset('market_layout', folder)


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
