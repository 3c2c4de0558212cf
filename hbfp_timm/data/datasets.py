"""Readers for the person re-ID data sets, as plain lists of (path, pid, camid).

Every reader follows the same rules:

* one regular expression per data set parses identity and camera from the file name, whatever the image
  extension (any format Pillow decodes, `IMAGE_EXTENSIONS`: ``.jpg``, ``.png``, ``.bmp``, ``.webp``, ``.tif``...,
  in any case); an image whose name does not match is an error naming the file and the expected pattern, never
  silently skipped (only files that are not images, by extension, such as ``Thumbs.db``, are ignored);
* a split folder holds its images directly: images in its subfolders are not read, and are counted and named in
  one warning line;
* training identities are relabelled to 0..N-1 in sorted order of the original ids; query and gallery keep the
  original ids, so that the protocol in `hbfp_timm.metrics` can tell distractors (0) apart;
* camera ids become 0-based (camera ``c1`` of the names is 0); ``ReIDDataset.camera_name`` gives back the names'
  own (``'c1'``);
* junk images (id -1) are dropped from every split: they are neither identities nor negatives (the Market-1501
  protocol ignores them). Distractors (id 0) stay in the gallery as negatives; they are not identities, so they
  are dropped from train and query (a distractor query would "match" unrelated distractors). MSMT17 is the
  exception: its labels count from 0, so id 0 is a person there;
* an entry named like an image that is not a readable file (a dangling symbolic link, a link loop) is skipped
  with a warning naming it;
* whatever is dropped is counted in ``ReIDDataset.dropped`` and shown by ``summary()``;
* a missing folder or an empty split is an error naming the path;
* ``with_train=False`` (evaluation) reads the query and gallery splits only: the training split may be absent
  and is not read (``train`` is empty); training needs it (the default).
"""
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    'Item', 'ReIDDataset', 'ImageDataset', 'ImageReadError', 'DATASET_NAMES', 'IMAGE_EXTENSIONS', 'build_dataset',
    'market1501', 'dukemtmc', 'cuhk03', 'msmt17', 'market_layout', 'to_rgb',
]

Item = Tuple[str, int, int]
PathLike = Union[str, os.PathLike]

# Pillow formats whose files it only identifies (BUFR, GRIB, HDF5, MPEG; WMF outside Windows) or decodes only with
# an outside program (EPS, PostScript: Ghostscript): not read as images.
_NOT_DECODED = frozenset({'BUFR', 'EPS', 'GRIB', 'HDF5', 'MPEG', 'WMF'})


def some_names(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` of `names`, and how many more there are: ``'a, b, c and 4 more'``."""
    return ', '.join(names[:limit]) + (f' and {len(names) - limit} more' if len(names) > limit else '')


def _image_extensions() -> Tuple[str, ...]:
    """The file extensions of every image format this Pillow decodes (lower case, sorted): ``.jpg``, ``.png``,
    ``.bmp``, ``.webp``, ``.tif``, ``.gif``..., whatever its build supports."""
    Image.init()  # registers every plugin, not only the common formats
    return tuple(sorted(extension for extension, image_format in Image.registered_extensions().items()
                        if image_format in Image.OPEN and image_format not in _NOT_DECODED))


# The one definition of an image file, by its extension in any case: the data set readers and folder input read
# these and nothing else.
IMAGE_EXTENSIONS = _image_extensions()
# The end of every reader's file name pattern: any image extension, in any case (0002_c1s1_000451_03.JPG, .png).
_IMAGE_SUFFIX = r'\.(?i:' + '|'.join(extension[1:] for extension in IMAGE_EXTENSIONS) + r')$'
JUNK_PID = -1
DISTRACTOR_PID = 0

# Market-1501: 0002_c1s1_000451_03.jpg = person, camera, sequence, frame, box; junk is -1_c1s1_...
MARKET_PATTERN = re.compile(r'^(?P<pid>-1|\d+)_c(?P<camid>\d+)s\d+_\d+_\d+' + _IMAGE_SUFFIX)
# DukeMTMC-reID: 0001_c2_f0046182.jpg = person, camera, frame.
DUKE_PATTERN = re.compile(r'^(?P<pid>-1|\d+)_c(?P<camid>\d+)_f\d+' + _IMAGE_SUFFIX)
# CUHK03-NP (Zhong et al. 2017): 0001_c1_1.png = person, camera, image; some copies are re-encoded as jpg.
CUHK03_PATTERN = re.compile(r'^(?P<pid>-1|\d+)_c(?P<camid>\d+)_\d+' + _IMAGE_SUFFIX)
# MSMT17: 0000_000_01_0303morning_0015_0.jpg = person, index, camera (1-based), date + time of day, frame, box.
MSMT17_PATTERN = re.compile(r'^(?P<pid>\d+)_\d+_(?P<camid>\d+)_\w+?_\d+_\d+' + _IMAGE_SUFFIX)

MARKET_SPLITS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
MARKET_NAME_EXAMPLE = '0002_c1s1_000451_03.jpg'


@dataclass
class ReIDDataset:
    """A re-ID data set: three lists of (path, pid, camid).

    Attributes:
        name: data set name.
        train: training items, pids relabelled to 0..num_train_pids-1 (empty when read with ``with_train=False``).
        query: query items, original pids.
        gallery: gallery items, original pids (0 = distractor).
        dropped: what the reader left out, by reason (e.g. ``'junk (id -1)'``), as image counts.
        camera_names: how the data name each 0-based camera id, where the name is not the id itself: ``'c1'`` for
            camera 0 of file names like ``0002_c1s1_000451_03.jpg``; read with `camera_name`.
    """
    name: str
    train: List[Item]
    query: List[Item]
    gallery: List[Item]
    dropped: Dict[str, int] = field(default_factory=dict)
    camera_names: Dict[int, str] = field(default_factory=dict)

    def camera_name(self, camid: int) -> str:
        """The data's own name of camera `camid` (e.g. ``'c1'`` for 0 from Market-style names; else the id)."""
        return self.camera_names.get(int(camid), str(int(camid)))

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (the classifier size)."""
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of cameras seen in training."""
        return len({camid for _, _, camid in self.train})

    def summary(self) -> str:
        """A short table of identities, images and cameras per split."""
        lines = [f'{self.name}', f'  {"split":<8}{"ids":>7}{"images":>9}{"cameras":>9}']
        for split in ('train', 'query', 'gallery'):
            items = getattr(self, split)
            lines.append(f'  {split:<8}{len({p for _, p, _ in items}):>7}{len(items):>9}'
                         f'{len({c for _, _, c in items}):>9}')
        dropped = [(reason, count) for reason, count in self.dropped.items() if count]
        if dropped:
            lines.append('  dropped: ' + '; '.join(f'{reason}: {count}' for reason, count in dropped))
        return '\n'.join(lines)

    def __str__(self) -> str:
        return self.summary()


def _resolve_root(root: PathLike, candidates: Sequence[str], marker: str, layout: str) -> Path:
    """First root/candidate holding `marker` (folder or file); else FileNotFoundError listing the tries."""
    root = Path(root).expanduser()
    tried = [root / candidate for candidate in candidates]
    for path in tried:
        if (path / marker).exists():
            return path
    raise FileNotFoundError(
        f'no data set found under {root}; tried {", ".join(str(p) for p in tried)}; expected {layout}')


def _images_in_subfolders(folder: Path) -> int:
    """How many images lie in the subfolders of `folder` (which are not read); warned about, naming them."""
    counts = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.suffix.lower() not in IMAGE_EXTENSIONS):
        count = sum(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in sub.rglob('*'))
        if count:
            counts[sub.name] = count
    total = sum(counts.values())
    if total:
        names = some_names([f'{name}/' for name in counts])
        warnings.warn(f'{folder}: skipped {total} image{"" if total == 1 else "s"} in subfolders ({names}); a split '
                      'folder of the Market-1501 layout holds its images directly: move them up to read them',
                      stacklevel=4)
    return total


def _image_files(folder: Path, example: str) -> Tuple[List[Path], int, int]:
    """The image files of a folder, how many entries named like images are not readable files, and how many
    images its subfolders hold (not read)."""
    if not folder.is_dir():
        raise FileNotFoundError(f'missing folder {folder}; expected it to hold images named like {example}')
    named = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = [p for p in named if p.is_file()]  # False for dangling links and link loops
    unreadable = [p.name for p in named if not p.is_file()]
    if unreadable:
        shown = some_names(unreadable)
        what = 'entry' if len(unreadable) == 1 else 'entries'
        warnings.warn(f'{folder}: skipped {len(unreadable)} {what} named like images but not readable files '
                      f'(dangling symbolic links, link loops or folders): {shown}', stacklevel=3)
    return files, len(unreadable), _images_in_subfolders(folder)


def _parse_name(path: Path, pattern: re.Pattern, example: str) -> Tuple[int, int]:
    match = pattern.match(path.name)
    if match is None:
        raise ValueError(f'cannot parse {path}: expected a name matching {pattern.pattern} (e.g. {example})')
    pid, camid = int(match['pid']), int(match['camid'])
    if camid < 1:
        raise ValueError(f'cannot parse {path}: camera numbers start at 1, got {camid}')
    return pid, camid - 1


def _finalise(name: str, train: List[Item], query: List[Item], gallery: List[Item],
              sources: Dict[str, object], has_distractors: bool = True, unreadable: int = 0,
              in_subfolders: int = 0) -> ReIDDataset:
    """Apply the junk / distractor rules, relabel train, refuse empty splits (of those read: the splits named in
    `sources`) and count what was dropped."""
    not_identities = (JUNK_PID, DISTRACTOR_PID) if has_distractors else (JUNK_PID,)

    def identities(items):
        return [item for item in items if item[1] not in not_identities]

    dropped = {
        'junk (id -1)': sum(pid == JUNK_PID for items in (train, query, gallery) for _, pid, _ in items),
        'distractors (id 0) in train or query': sum(
            has_distractors and pid == DISTRACTOR_PID for items in (train, query) for _, pid, _ in items),
        'entries that are not readable files': unreadable,
        'images in subfolders': in_subfolders,
    }
    train, query = identities(train), identities(query)
    gallery = [item for item in gallery if item[1] != JUNK_PID]
    for split, items in (('train', train), ('query', query), ('gallery', gallery)):
        if split in sources and not items:
            raise ValueError(f'{name}: split {split!r} read from {sources[split]} has no usable images')
    relabel = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in train}))}
    train = [(path, relabel[pid], camid) for path, pid, camid in train]
    # The file names number cameras from 1 (c1, or MSMT17's 01), the items from 0 (`_parse_name`).
    cameras = {camid for items in (train, query, gallery) for _, _, camid in items}
    return ReIDDataset(name, train, query, gallery, dropped, {camid: f'c{camid + 1}' for camid in sorted(cameras)})


def _read_market_style(name: str, root: Path, pattern: re.Pattern, example: str,
                       with_train: bool = True) -> ReIDDataset:
    splits, sources, unreadable, in_subfolders = {'train': []}, {}, 0, 0
    for split, folder in MARKET_SPLITS.items():
        if split == 'train' and not with_train:
            continue
        sources[split] = root / folder
        files, num_unreadable, num_in_subfolders = _image_files(root / folder, example)
        unreadable, in_subfolders = unreadable + num_unreadable, in_subfolders + num_in_subfolders
        splits[split] = [(str(path), *_parse_name(path, pattern, example)) for path in files]
    return _finalise(name, splits['train'], splits['query'], splits['gallery'], sources, unreadable=unreadable,
                     in_subfolders=in_subfolders)


def _market_layout_description(example: str, with_train: bool = True) -> str:
    folders = 'bounding_box_train/, query/, bounding_box_test/' if with_train else 'query/ and bounding_box_test/'
    return f'folders {folders} holding images named like {example}'


def _split_marker(with_train: bool) -> str:
    """The folder that `_resolve_root` looks for: the training split, or for test-only reading the query split."""
    return MARKET_SPLITS['train'] if with_train else MARKET_SPLITS['query']


def market1501(root: PathLike, with_train: bool = True) -> ReIDDataset:
    """Market-1501 (Zheng et al. 2015): 751 + 750 identities, 6 cameras.

    Args:
        root: the folder ``Market-1501-v15.09.15`` itself, or a data root holding it directly or as
            ``market1501/Market-1501-v15.09.15``.
        with_train: also read the training split (False: query and gallery only, for evaluation).

    Returns:
        The data set.
    """
    folder = _resolve_root(
        root, ['.', 'Market-1501-v15.09.15', 'market1501/Market-1501-v15.09.15', 'market1501'],
        _split_marker(with_train), _market_layout_description(MARKET_NAME_EXAMPLE, with_train))
    return _read_market_style('market1501', folder, MARKET_PATTERN, MARKET_NAME_EXAMPLE, with_train)


def dukemtmc(root: PathLike, with_train: bool = True) -> ReIDDataset:
    """DukeMTMC-reID (Zheng et al. 2017): 702 + 702 identities (+ 408 gallery distractors), 8 cameras.

    Args:
        root: the folder ``DukeMTMC-reID`` itself, or a data root holding it directly or as
            ``dukemtmc-reid/DukeMTMC-reID``.
        with_train: also read the training split (False: query and gallery only, for evaluation).

    Returns:
        The data set.
    """
    example = '0001_c2_f0046182.jpg'
    folder = _resolve_root(root, ['.', 'DukeMTMC-reID', 'dukemtmc-reid/DukeMTMC-reID', 'dukemtmc/DukeMTMC-reID'],
                           _split_marker(with_train), _market_layout_description(example, with_train))
    return _read_market_style('dukemtmc', folder, DUKE_PATTERN, example, with_train)


def cuhk03(root: PathLike, variant: str = 'labeled', with_train: bool = True) -> ReIDDataset:
    """CUHK03-NP, the new protocol of Zhong et al. 2017: 767 training and 700 test identities.

    Args:
        root: a data root holding ``cuhk03-np/<variant>/``, or ``cuhk03-np`` itself, or the variant folder.
        variant: 'labeled' (hand-drawn boxes) or 'detected' (DPM boxes).
        with_train: also read the training split (False: query and gallery only, for evaluation).

    Returns:
        The data set, named ``cuhk03_<variant>``.
    """
    if variant not in ('labeled', 'detected'):
        raise ValueError(f"variant must be 'labeled' or 'detected', got {variant!r}")
    example = '0001_c1_1.png'
    folder = _resolve_root(root, [f'cuhk03-np/{variant}', variant, '.'], _split_marker(with_train),
                           f'cuhk03-np/{variant}/ with ' + _market_layout_description(example, with_train))
    return _read_market_style(f'cuhk03_{variant}', folder, CUHK03_PATTERN, example, with_train)


def _read_msmt17_list(list_file: Path, image_root: Path) -> List[Item]:
    example = '0000_000_01_0303morning_0015_0.jpg'
    if not list_file.is_file():
        raise FileNotFoundError(f'missing list file {list_file}')
    items = []
    for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
            raise ValueError(f'{list_file}:{line_number}: expected "<relative path> <label>", got {line!r}')
        path = image_root / fields[0]
        _, camid = _parse_name(path, MSMT17_PATTERN, example)
        items.append((str(path), int(fields[1]), camid))
    return items


def msmt17(root: PathLike, with_train: bool = True) -> ReIDDataset:
    """MSMT17 (Wei et al. 2018): 1,041 + 3,060 identities, 15 cameras.

    Train is ``list_train.txt`` plus ``list_val.txt`` (the validation images belong to training identities),
    as is customary. Identities come from the list files, cameras from the file names.

    Args:
        root: the folder ``MSMT17_V1`` / ``MSMT17_V2`` itself, or a data root holding it (optionally under
            ``msmt17/``). V1 keeps images in ``train/`` and ``test/``, V2 in ``mask_train_v2/`` and
            ``mask_test_v2/``.
        with_train: also read the training lists and images (False: query and gallery only, for evaluation:
            ``list_query.txt``, ``list_gallery.txt`` and ``test/``).

    Returns:
        The data set.
    """
    lists = 'list_train.txt, list_val.txt, list_query.txt, list_gallery.txt' if with_train else \
        'list_query.txt, list_gallery.txt'
    images = 'train/ + test/ (V1) or mask_train_v2/ + mask_test_v2/ (V2)' if with_train else \
        'test/ (V1) or mask_test_v2/ (V2)'
    folder = _resolve_root(
        root, ['.', 'MSMT17_V1', 'MSMT17_V2', 'msmt17/MSMT17_V1', 'msmt17/MSMT17_V2'],
        'list_train.txt' if with_train else 'list_query.txt',
        f'a folder with {lists} (lines "<path> <label>") and {images}')
    train_dir, test_dir = folder / 'train', folder / 'test'
    if not test_dir.is_dir() and (folder / 'mask_test_v2').is_dir():
        train_dir, test_dir = folder / 'mask_train_v2', folder / 'mask_test_v2'
    for directory in (train_dir, test_dir) if with_train else (test_dir,):
        if not directory.is_dir():
            raise FileNotFoundError(f'missing folder {directory} (MSMT17 expects train/ and test/ image folders)')
    train = _read_msmt17_list(folder / 'list_train.txt', train_dir) + \
        _read_msmt17_list(folder / 'list_val.txt', train_dir) if with_train else []
    query = _read_msmt17_list(folder / 'list_query.txt', test_dir)
    gallery = _read_msmt17_list(folder / 'list_gallery.txt', test_dir)
    sources = {'train': folder / 'list_train.txt', 'query': folder / 'list_query.txt',
               'gallery': folder / 'list_gallery.txt'}
    if not with_train:
        del sources['train']
    # MSMT17 labels count from 0: id 0 is a person there, not a distractor.
    return _finalise('msmt17', train, query, gallery, sources, has_distractors=False)


def market_layout(root: PathLike, name: str = 'market_layout', with_train: bool = True) -> ReIDDataset:
    """Any folder in the Market-1501 layout and naming (e.g. the output of `python -m hbfp_timm.data.synthetic`).

    Args:
        root: the folder holding ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``.
        name: name given to the data set.
        with_train: also read ``bounding_box_train/`` (False: query and gallery only, for evaluation; the folder
            may be absent).

    Returns:
        The data set.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f'missing folder {folder}; expected {_market_layout_description(MARKET_NAME_EXAMPLE, with_train)}')
    return _read_market_style(name, folder, MARKET_PATTERN, MARKET_NAME_EXAMPLE, with_train)


def _image_lists(root: PathLike, **kwargs) -> ReIDDataset:
    from .lists import image_lists  # lists.py builds on this module's ReIDDataset
    return image_lists(root, **kwargs)


_FACTORIES: Dict[str, Callable[..., ReIDDataset]] = {
    'market1501': market1501,
    'dukemtmc': dukemtmc,
    'cuhk03_labeled': lambda root, **kw: cuhk03(root, variant='labeled', **kw),
    'cuhk03_detected': lambda root, **kw: cuhk03(root, variant='detected', **kw),
    'msmt17': msmt17,
    'market_layout': market_layout,
    'image_lists': _image_lists,
}
DATASET_NAMES = tuple(_FACTORIES)


def build_dataset(name: str, root: PathLike, **kwargs) -> ReIDDataset:
    """Read a data set by name.

    Args:
        name: one of `DATASET_NAMES`: market1501, dukemtmc, cuhk03_labeled, cuhk03_detected, msmt17,
            market_layout, image_lists (train/query/gallery list files, `hbfp_timm.data.lists`).
        root: data root (see each reader for the accepted layouts).
        **kwargs: passed to the reader (e.g. ``name=`` for market_layout; ``with_train=False``, which every
            reader takes, reads the query and gallery splits only, for evaluation).

    Returns:
        The data set.
    """
    if name not in _FACTORIES:
        raise ValueError(f'unknown data set {name!r}; valid names: {", ".join(DATASET_NAMES)}')
    return _FACTORIES[name](root, **kwargs)


class ImageReadError(OSError):
    """An image that cannot be opened or decoded; the message starts with ``cannot read image <path>``."""


# 16-bit and 32-bit integer grey modes: PIL's convert('RGB') clips their values at 255 (a 16-bit PNG turns white).
_WIDE_GREY_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB; wide grey images are scaled to 8 bits first, rather than clipped at 255 as PIL's
    ``convert('RGB')`` does: 16-bit ones (``I;16``, and ``I`` with values up to 65535) divided by 257, and
    floating-point ones (``F``, e.g. a 32-bit float TIFF) taken as [0, 1] when no value is above 1, else as
    [0, 255] when none is above 255, else divided by their maximum over 255 (non-finite values count as 0)."""
    if image.mode in _WIDE_GREY_MODES:
        values = np.asarray(image, dtype=np.int64)
        scale = 257 if values.size == 0 or values.max() <= 65535 else max(1, int(values.max()) // 255 + 1)
        image = Image.fromarray((np.clip(values, 0, None) // scale).astype(np.uint8), 'L')
    elif image.mode == 'F':
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = values.max() if values.size else 0.0
        values = values * 255 if top <= 1 else values if top <= 255 else values * (255 / top)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), 'L')
    return image.convert('RGB')


class ImageDataset(Dataset):
    """Torch dataset over (image, pid, camid) items; yields (image, pid, camid, path).

    An item's image is a file path, or an image already in memory (a PIL image or an HxWx3 uint8 RGB array, as
    :class:`hbfp_timm.FeatureExtractor` takes them; its path is then ``''``).

    Args:
        items: list of (path or image, pid, camid).
        transform: applied to the RGB PIL image (e.g. from `hbfp_timm.data.transforms`); None keeps the image.
    """

    def __init__(self, items: Sequence[Item], transform: Optional[Callable] = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[Union[torch.Tensor, Image.Image], int, int, str]:
        path, pid, camid = self.items[index]
        if isinstance(path, (Image.Image, np.ndarray)):
            image, path = to_rgb(Image.fromarray(path) if isinstance(path, np.ndarray) else path), ''
        else:
            try:
                with Image.open(path) as image:
                    image = to_rgb(image)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise ImageReadError(f'cannot read image {path}: {error}') from error
            path = str(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, camid, path
