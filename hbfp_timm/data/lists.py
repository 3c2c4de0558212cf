"""Own data as list files: one image per line, ``path,pid,camid`` (camid optional).

A data set is a folder with three list files, ``train``, ``query`` and ``gallery``, each ``.csv`` (comma-
separated, quoting allowed, e.g. for paths with commas) or ``.txt`` (fields separated by white space); evaluation
needs only ``query`` and ``gallery`` (``with_train=False``)::

    # my_data/query.csv: path, identity, camera; '#' lines and blank lines are skipped
    path,pid,camid
    crops/alice_01.jpg,17,0
    crops/alice_02.jpg,17,1

Rules (strict: every problem is an error naming the file and line, nothing is skipped silently):

* the files are UTF-8 text (a spreadsheet's "CSV UTF-8", with its byte-order mark, too); an optional first line
  ``path,pid,camid`` names the columns, in this order (a header of other names or order is an error);
* paths are relative to the list file's folder, or absolute; every file must exist, and no path may be listed
  twice in one file;
* ``pid`` is a non-negative integer identity; training identities are relabelled to 0..N-1, query and gallery
  keep theirs (a gallery identity that no query has is simply a negative, a distractor);
* ``camid`` is a non-negative integer camera; within one file either every line has one or none does, and
  query and gallery must agree.

Evaluation follows the Market-1501 protocol (`hbfp_timm.metrics`): a query's gallery images of the same
identity *and* camera are left out. **Camera-less data** (no camid column in query and gallery): every image
counts as its own camera, so the only gallery image left out of a query's ranking is the query's own file
when it is listed in both; every other image of its identity is a true match. This is the usual protocol for
re-identification data without camera labels (leave-one-out when query and gallery are the same list).
Training never uses cameras; camera-less training images get camera 0.
"""
import csv
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .checks import find_unreadable_images
from .datasets import (
    CUHK03_PATTERN, DUKE_PATTERN, IMAGE_EXTENSIONS, MARKET_PATTERN, MSMT17_PATTERN, Item, ReIDDataset, some_names,
)

__all__ = ['ImageList', 'LIST_SUFFIXES', 'read_image_list', 'image_lists', 'identities_from_names', 'collect_images',
           'skip_unreadable']

PathLike = Union[str, os.PathLike]
LIST_SUFFIXES = ('.csv', '.txt')
HEADER = ('path', 'pid', 'camid')
SPLITS = ('train', 'query', 'gallery')


class ImageList(NamedTuple):
    """The content of one list file.

    Attributes:
        paths: image paths, resolved against the list file's folder, in file order.
        pids: identities, or None when the file gives paths only.
        camids: cameras, or None when the file has no camera column.
        source: the list file.
    """
    paths: List[str]
    pids: Optional[List[int]]
    camids: Optional[List[int]]
    source: Path


def _rows(list_file: Path):
    """(line number, fields) of every line that is not blank or a comment."""
    try:
        text = list_file.read_text(encoding='utf-8-sig')  # a spreadsheet's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as error:
        raise ValueError(f'{list_file}: not a UTF-8 text file ({error})') from None
    is_csv = list_file.suffix.lower() == '.csv'
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith('#'):
            fields = next(csv.reader([line], skipinitialspace=True)) if is_csv else line.split()
            yield line_number, [field.strip() for field in fields]


def _integer(text: str, what: str, where: str) -> int:
    if not text.isdigit():
        raise ValueError(f'{where}: {what} must be a non-negative integer, got {text!r}')
    return int(text)


def _listed_path(field: str, folder: Path) -> Path:
    """The image a list names: an absolute path, or one relative to the list file's folder."""
    path = Path(field).expanduser()
    return path if path.is_absolute() else folder / path


def _looks_like_header(fields: Sequence[str], folder: Path) -> bool:
    """A first line of names rather than data (``pid,path,camid``, ``image,label``): no number after the first
    field, and no file at the first."""
    return (len(fields) >= 2 and not any(field.isdigit() for field in fields[1:])
            and not _listed_path(fields[0], folder).is_file())


def read_image_list(list_file: PathLike, require_pids: bool = True, check_files: bool = True) -> ImageList:
    """Read one list file (see the module doc for the format).

    Args:
        list_file: a ``.csv`` or ``.txt`` list.
        require_pids: refuse lines without an identity (the data set reader); False also accepts a list of
            paths alone (the embed and search commands).
        check_files: check that every listed image exists.

    Returns:
        The `ImageList`.

    Raises:
        FileNotFoundError: the list file or a listed image does not exist.
        ValueError: a malformed line, mixed columns, a duplicate path or an empty list.
    """
    list_file = Path(list_file).expanduser()
    if not list_file.is_file():
        raise FileNotFoundError(f'{list_file}: list file not found')
    folder = list_file.parent
    paths, pids, camids = [], [], []
    first_line: Dict[str, int] = {}
    num_fields = None
    for line_number, fields in _rows(list_file):
        where = f'{list_file}:{line_number}'
        if num_fields is None and tuple(f.lower() for f in fields) == HEADER[:len(fields)]:
            num_fields = len(fields)  # a header line names the columns
            continue
        if len(fields) == 1 and list_file.suffix.lower() == '.csv' and ';' in fields[0] and \
                not _listed_path(fields[0], folder).is_file():
            raise ValueError(f'{where}: {fields[0]!r} has its fields separated by ";"; a .csv list separates them by '
                             'commas: "path,pid,camid" (camid optional); save it with commas, or as a .txt list '
                             'separated by spaces')
        if num_fields is None and _looks_like_header(fields, folder):
            raise ValueError(f'{where}: {",".join(fields)!r} reads as a header, but the columns must be '
                             f'"path,pid,camid" in this order (camid optional); rename or reorder them, or remove '
                             f'the line')
        if not 1 <= len(fields) <= 3 or not fields[0]:
            raise ValueError(f'{where}: expected "path,pid,camid" (camid optional), got {len(fields)} fields')
        if num_fields is None:
            num_fields = len(fields)
        if len(fields) != num_fields:
            raise ValueError(f'{where}: {len(fields)} fields, but earlier lines have {num_fields}; every line '
                             'needs the same columns (path, pid, camid)')
        if require_pids and len(fields) == 1:
            raise ValueError(f'{where}: expected "path,pid,camid" (camid optional), got a path without identity')
        path = str(_listed_path(fields[0], folder))
        if path in first_line:
            raise ValueError(f'{where}: {fields[0]} is listed twice (first on line {first_line[path]})')
        if check_files and not os.path.isfile(path):
            raise FileNotFoundError(f'{where}: image {path} not found')
        first_line[path] = line_number
        paths.append(path)
        if len(fields) >= 2:
            pids.append(_integer(fields[1], 'pid', where))
        if len(fields) == 3:
            camids.append(_integer(fields[2], 'camid', where))
    if not paths:
        raise ValueError(f'{list_file}: no images listed')
    return ImageList(paths, pids if num_fields >= 2 else None, camids if num_fields == 3 else None, list_file)


def _find_list(folder: Path, split: str, splits: Sequence[str] = SPLITS) -> Path:
    found = [folder / f'{split}{suffix}' for suffix in LIST_SUFFIXES if (folder / f'{split}{suffix}').is_file()]
    if not found:
        raise FileNotFoundError(
            f'{folder}: missing list file {split}.csv or {split}.txt; expected {", ".join(splits[:-1])} and '
            f'{splits[-1]} lists of "path,pid,camid" lines (camid optional)')
    if len(found) > 1:
        raise ValueError(f'{folder}: both {found[0].name} and {found[1].name} exist; keep one list per split')
    return found[0]


def _file_names(paths: Sequence[str]) -> Dict[str, str]:
    """Short distinct names of `paths`: their file names, or, where two share one, their paths below the folder
    that holds them all (``query/0001.jpg`` and ``gallery/0001.jpg``)."""
    names = {path: Path(path).name for path in paths}
    if len(set(names.values())) < len(names):
        common = os.path.commonpath(paths)
        names = {path: os.path.relpath(path, common) for path in paths}
    return names


def image_lists(root: PathLike, name: str = 'image_lists', with_train: bool = True) -> ReIDDataset:
    """A data set from a folder holding ``train``, ``query`` and ``gallery`` list files (module doc).

    Args:
        root: the folder with ``train.csv`` / ``train.txt``, ``query.*`` and ``gallery.*``.
        name: name given to the data set.
        with_train: also read the ``train`` list (False: query and gallery only, for evaluation; the train list
            may be absent and is not read, ``train`` is empty).

    Returns:
        The data set; camera-less query and gallery images get one camera per image file (module doc), named by
        the file's name, or by its path below the images' common folder where two files share a name
        (``ReIDDataset.camera_name``); a ``camid`` column's cameras are named by their number.
    """
    folder = Path(root).expanduser()
    splits = SPLITS if with_train else SPLITS[1:]
    if not folder.is_dir():
        raise FileNotFoundError(f'missing folder {folder}; expected {", ".join(splits[:-1])} and {splits[-1]} list '
                                'files in it')
    lists = {split: read_image_list(_find_list(folder, split, splits)) for split in splits}
    query, gallery = lists['query'], lists['gallery']
    if (query.camids is None) != (gallery.camids is None):
        with_cams, without = (query, gallery) if query.camids is not None else (gallery, query)
        raise ValueError(f'{with_cams.source} has a camid column but {without.source} has none; query and gallery '
                         'must both give cameras, or neither (then each image counts as its own camera)')
    camera_names = {}
    if query.camids is None:
        # One camera per image file, shared by query and gallery: only a query's own file is left out.
        camera_of = {path: camera for camera, path in enumerate(sorted(set(query.paths) | set(gallery.paths)))}
        query = query._replace(camids=[camera_of[path] for path in query.paths])
        gallery = gallery._replace(camids=[camera_of[path] for path in gallery.paths])
        camera_names = {camera_of[path]: name for path, name in _file_names(list(camera_of)).items()}
    train_items: List[Item] = []
    if with_train:
        train = lists['train']
        relabel = {pid: label for label, pid in enumerate(sorted(set(train.pids)))}
        train_camids = train.camids if train.camids is not None else [0] * len(train.paths)
        train_items = [(path, relabel[pid], camid) for path, pid, camid in zip(train.paths, train.pids, train_camids)]
    return ReIDDataset(name, train_items, list(zip(query.paths, query.pids, query.camids)),
                       list(zip(gallery.paths, gallery.pids, gallery.camids)), camera_names=camera_names)


def identities_from_names(paths: Sequence[str]) -> Optional[Tuple[List[int], List[int]]]:
    """Identities and cameras read from file names, when every name follows one data set's naming scheme.

    The schemes are those of the data set readers: Market-1501 (``0002_c1s1_000451_03.jpg``), DukeMTMC-reID
    (``0001_c2_f0046182.jpg``), CUHK03-NP (``0001_c1_1.png``) and MSMT17 (``0000_000_01_0303morning_0015_0.jpg``,
    whose identity comes from the name here). Cameras become 0-based.

    Args:
        paths: image paths.

    Returns:
        ``(pids, camids)``, or None when some name follows none of the schemes (identities unknown).
    """
    for pattern in (MARKET_PATTERN, DUKE_PATTERN, CUHK03_PATTERN, MSMT17_PATTERN):
        matches = [pattern.match(Path(path).name) for path in paths]
        if paths and all(matches):
            return [int(m['pid']) for m in matches], [max(int(m['camid']) - 1, 0) for m in matches]
    return None


# Files that file managers put in folders of photos (Windows' thumbnail cache and folder settings); hidden files
# (macOS's .DS_Store, ._* resource forks) are left alike.
FOLDER_METADATA = frozenset({'thumbs.db', 'desktop.ini'})


def _is_folder_metadata(name: str) -> bool:
    return name.startswith('.') or name.lower() in FOLDER_METADATA


def collect_images(source: PathLike) -> ImageList:
    """The images a user points at: a folder (recursively), a list file, or one image file.

    A folder's images are its files of any format Pillow decodes (by extension, in any case:
    ``hbfp_timm.data.datasets.IMAGE_EXTENSIONS``); its other files are counted and named in one warning line,
    except hidden files and the folder metadata of file managers (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``),
    which are no one's data. Identities and cameras come from the list file, else from the file names when they all
    follow one data set's naming scheme (see `hbfp_timm.data.identities_from_names`), else they are unknown (None).

    Args:
        source: folder, ``.csv`` / ``.txt`` list, or image.

    Returns:
        An `ImageList`.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob('*') if p.is_file())
        paths = [p for p in files if Path(p).suffix.lower() in IMAGE_EXTENSIONS]
        others = [os.path.relpath(p, path) for p in files if Path(p).suffix.lower() not in IMAGE_EXTENSIONS
                  and not _is_folder_metadata(Path(p).name)]
        not_images = (f'{len(others)} file{"" if len(others) == 1 else "s"} without the extension of an image '
                      f'format Pillow decodes ({some_names(others)})')
        if not paths:
            raise ValueError(f'{path}: no images in this folder or below (any format Pillow decodes: .jpg, .png, '
                             '.webp, .tif...)' + (f'; not read: {not_images}' if others else ''))
        if others:
            warnings.warn(f'{path}: not read: {not_images}', stacklevel=2)
        listing = ImageList(paths, None, None, path)
    elif path.suffix.lower() in LIST_SUFFIXES:
        listing = read_image_list(path, require_pids=False)
    elif path.is_file():
        listing = ImageList([str(path)], None, None, path)
    else:
        raise FileNotFoundError(f'{path}: not found; expected a folder of images, a .csv/.txt list or an image')
    if listing.pids is None:
        named = identities_from_names(listing.paths)
        if named is not None:
            listing = listing._replace(pids=named[0], camids=named[1])
    return listing


def skip_unreadable(listing: ImageList, report=None) -> ImageList:
    """`listing` without the images that cannot be decoded; each one skipped is reported with its reason.

    Every image is decoded, with progress shown on stderr (a bar on a terminal, a line a minute in a log).

    Args:
        listing: images (with their identities and cameras, when known).
        report: called with one line per skipped image, then a line with the count (default: print to stderr).

    Returns:
        The readable images, in order; a ValueError when none is left.
    """
    report = report or (lambda line: print(line, file=sys.stderr))
    bad = dict(find_unreadable_images(listing.paths, full=True, show_progress=True))
    if not bad:
        return listing
    for path, reason in bad.items():
        report(f'skipped unreadable image {path}: {reason}')
    keep = [i for i, path in enumerate(listing.paths) if path not in bad]
    report(f'skipped {len(bad)} of {len(listing.paths)} images of {listing.source} (--skip-bad-images)')
    if not keep:
        raise ValueError(f'{listing.source}: none of its {len(listing.paths)} images can be read')
    pick = (lambda values: [values[i] for i in keep] if values is not None else None)
    return ImageList(pick(listing.paths), pick(listing.pids), pick(listing.camids), listing.source)
