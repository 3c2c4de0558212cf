"""Tests of hbfp_timm.data: readers on tiny on-disk layouts, the PK sampler, transforms and loaders."""
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbfp_timm.data import (
    DATASET_NAMES, Cutout, ImageDataset, ImageReadError, RandomIdentitySampler, build_dataset, build_test_transform,
    build_train_transform, cuhk03, dukemtmc, make_dataloaders, market1501, market_layout, msmt17,
)
from hbfp_timm.data.checks import find_unreadable_images, image_problem
from hbfp_timm.data.loader import interruptions_deferred


def _write_images(folder: Path, names, size=(8, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new('RGB', size, (index * 37 % 256, 90, 160)).save(folder / name)


MARKET_TRAIN = ['0015_c1s1_000151_01.jpg', '0002_c2s1_000301_01.jpg', '0007_c1s2_000451_02.jpg',
                '0007_c3s1_000551_01.jpg']
MARKET_QUERY = ['0003_c1s1_000101_00.jpg', '0004_c2s1_000101_00.jpg', '-1_c1s1_000401_03.jpg']
MARKET_GALLERY = ['0003_c2s1_000201_01.jpg', '0004_c1s1_000201_01.jpg', '0000_c3s1_000001_01.jpg',
                  '-1_c4s1_000401_03.jpg']


def _market_tree(folder: Path):
    _write_images(folder / 'bounding_box_train', MARKET_TRAIN)
    _write_images(folder / 'query', MARKET_QUERY)
    _write_images(folder / 'bounding_box_test', MARKET_GALLERY)
    return folder


def test_market1501_relabels_train_and_makes_cameras_zero_based(tmp_path):
    dataset = market1501(_market_tree(tmp_path / 'Market-1501-v15.09.15'))
    by_name = {Path(path).name: (pid, camid) for path, pid, camid in dataset.train}
    # Original ids 2, 7, 15 become 0, 1, 2 in sorted order.
    assert by_name == {'0002_c2s1_000301_01.jpg': (0, 1), '0007_c1s2_000451_02.jpg': (1, 0),
                       '0007_c3s1_000551_01.jpg': (1, 2), '0015_c1s1_000151_01.jpg': (2, 0)}
    assert dataset.num_train_pids == 3
    assert dataset.num_train_cams == 3
    assert [dataset.camera_name(camid) for camid in (0, 1, 2)] == ['c1', 'c2', 'c3']  # the names' own cameras


def test_market1501_drops_junk_keeps_distractors_in_gallery(tmp_path):
    dataset = market1501(_market_tree(tmp_path))
    assert sorted(pid for _, pid, _ in dataset.query) == [3, 4]          # the junk query is gone
    assert sorted(pid for _, pid, _ in dataset.gallery) == [0, 3, 4]     # distractor kept, junk gone
    assert 'query' in dataset.summary() and 'market1501' in str(dataset)


@pytest.mark.parametrize('nested', ['.', 'Market-1501-v15.09.15', 'market1501/Market-1501-v15.09.15'])
def test_market1501_finds_the_folder_under_the_data_root(tmp_path, nested):
    _market_tree(tmp_path / nested)
    assert len(market1501(tmp_path).train) == len(MARKET_TRAIN)


def test_market1501_missing_root_lists_tried_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        market1501(tmp_path / 'nowhere')
    message = str(error.value)
    assert 'Market-1501-v15.09.15' in message and 'bounding_box_train/' in message
    assert '0002_c1s1_000451_03.jpg' in message


def test_missing_split_folder_is_named(tmp_path):
    _write_images(tmp_path / 'bounding_box_train', MARKET_TRAIN)
    _write_images(tmp_path / 'query', MARKET_QUERY)
    with pytest.raises(FileNotFoundError, match='bounding_box_test'):
        market1501(tmp_path)


def test_malformed_name_is_an_error_naming_file_and_pattern(tmp_path):
    _market_tree(tmp_path)
    _write_images(tmp_path / 'query', ['person3_cam1.jpg'])
    with pytest.raises(ValueError, match=r'person3_cam1\.jpg.*expected a name matching'):
        market1501(tmp_path)


def test_camera_zero_is_rejected(tmp_path):
    _market_tree(tmp_path)
    _write_images(tmp_path / 'query', ['0003_c0s1_000101_00.jpg'])
    with pytest.raises(ValueError, match='camera numbers start at 1'):
        market1501(tmp_path)


def test_dropped_images_are_counted_by_reason_and_shown_in_the_summary(tmp_path):
    _market_tree(tmp_path)
    _write_images(tmp_path / 'bounding_box_train', ['0000_c1s1_000001_01.jpg', '-1_c2s1_000001_01.jpg'])
    _write_images(tmp_path / 'query', ['0000_c2s1_000002_01.jpg'])
    dataset = market1501(tmp_path)
    # Junk: one each in train, query (MARKET_QUERY) and gallery (MARKET_GALLERY); distractors: one in train, one in
    # query (the gallery's distractor is kept).
    assert dataset.dropped == {'junk (id -1)': 3, 'distractors (id 0) in train or query': 2,
                               'entries that are not readable files': 0, 'images in subfolders': 0}
    assert dataset.summary().splitlines()[-1] == '  dropped: junk (id -1): 3; distractors (id 0) in train or query: 2'


def test_dangling_links_and_link_loops_named_like_images_are_skipped_with_a_counted_warning(tmp_path):
    _market_tree(tmp_path)
    (tmp_path / 'query' / '0003_c2s1_000102_00.jpg').symlink_to(tmp_path / 'deleted.jpg')
    loop = tmp_path / 'query' / '0004_c1s1_000102_00.jpg'
    loop.symlink_to(loop)
    with pytest.warns(UserWarning, match=r'skipped 2 entries named like images but not readable files.*'
                                         r'0003_c2s1_000102_00\.jpg, '
                                         r'0004_c1s1_000102_00\.jpg'):
        dataset = market1501(tmp_path)
    assert len(dataset.query) == 2 and dataset.dropped['entries that are not readable files'] == 2
    assert 'entries that are not readable files: 2' in dataset.summary()


def test_images_in_subfolders_are_skipped_with_one_counted_warning_line(tmp_path):
    """A split folder holds its images directly; images below it are not read, and that is said (never silently)."""
    _market_tree(tmp_path)
    _write_images(tmp_path / 'bounding_box_train' / 'extra', ['0015_c1s1_000999_01.jpg', 'notes.png'])
    _write_images(tmp_path / 'bounding_box_train' / 'extra' / 'deeper', ['0015_c2s1_000999_01.jpg'])
    (tmp_path / 'query' / 'empty').mkdir()
    (tmp_path / 'query' / 'docs').mkdir()
    (tmp_path / 'query' / 'docs' / 'readme.txt').write_text('no images here')
    with pytest.warns(UserWarning) as warned:
        dataset = market1501(tmp_path)
    (message,) = [str(w.message) for w in warned]
    assert message == (f"{tmp_path / 'bounding_box_train'}: skipped 3 images in subfolders (extra/); a split folder "
                       'of the Market-1501 layout holds its images directly: move them up to read them')
    assert len(dataset.train) == len(MARKET_TRAIN) and dataset.dropped['images in subfolders'] == 3
    assert 'images in subfolders: 3' in dataset.summary()


def test_image_extensions_are_read_in_any_case_and_format(tmp_path):
    """The names carry identity and camera; files of any format Pillow decodes named like them are read (.gif
    and .tif files were ignored: only .jpg, .jpeg, .png and .bmp were images)."""
    _market_tree(tmp_path)
    _write_images(tmp_path / 'bounding_box_train', ['0015_c2s1_000152_01.JPG', '0015_c3s1_000153_01.png'])
    _write_images(tmp_path / 'query', ['0004_c3s1_000102_00.jpeg', '0003_c3s1_000102_00.BMP'])
    dataset = market1501(tmp_path)
    assert len(dataset.train) == len(MARKET_TRAIN) + 2 and len(dataset.query) == 4
    assert {Path(path).name for path, _, _ in dataset.query} >= {'0004_c3s1_000102_00.jpeg', '0003_c3s1_000102_00.BMP'}
    _write_images(tmp_path / 'query', ['0003_c1s1_000103_00.gif', '0004_c1s1_000104_00.TIF'])
    names = {Path(path).name for path, _, _ in market1501(tmp_path).query}
    assert names >= {'0003_c1s1_000103_00.gif', '0004_c1s1_000104_00.TIF'}


def test_non_image_files_are_ignored(tmp_path):
    _market_tree(tmp_path)
    (tmp_path / 'query' / 'Thumbs.db').write_bytes(b'\x00')
    (tmp_path / 'query' / 'readme.txt').write_text('not an image')
    assert len(market1501(tmp_path).query) == 2


def test_empty_split_is_an_error(tmp_path):
    _market_tree(tmp_path)
    for path in (tmp_path / 'query').iterdir():
        path.unlink()
    _write_images(tmp_path / 'query', ['-1_c1s1_000401_03.jpg'])  # only junk: nothing usable
    with pytest.raises(ValueError, match="split 'query'.*no usable images"):
        market1501(tmp_path)


@pytest.mark.parametrize('reader', ['market1501', 'market_layout', 'dukemtmc', 'cuhk03_labeled', 'msmt17'])
def test_with_train_false_reads_test_only_data_and_training_still_needs_the_train_split(tmp_path, reader):
    """Evaluation needs no training split: ``with_train=False`` reads query and gallery alone (train is empty,
    not read); the default, for training, still refuses data without one, naming what is missing."""
    if reader == 'msmt17':
        root = _msmt17_tree(tmp_path / 'MSMT17_V1')
        for name in ('list_train.txt', 'list_val.txt'):
            (root / name).unlink()
        shutil.rmtree(root / 'train')
    else:
        root = tmp_path / {'dukemtmc': 'DukeMTMC-reID', 'cuhk03_labeled': 'cuhk03-np/labeled'}.get(reader, 'market1501')
        names = {'dukemtmc': (['0010_c1_f0000100.jpg'], ['0010_c5_f0000200.jpg']),
                 'cuhk03_labeled': (['0800_c1_1.png'], ['0800_c2_7.png'])}.get(reader, (MARKET_QUERY, MARKET_GALLERY))
        _write_images(root / 'query', names[0])
        _write_images(root / 'bounding_box_test', names[1])
    data_root = tmp_path if reader != 'market_layout' else root
    dataset = build_dataset(reader, data_root, with_train=False)
    assert dataset.train == [] and dataset.query and dataset.gallery
    with pytest.raises(FileNotFoundError, match='bounding_box_train|list_train|train'):
        build_dataset(reader, data_root)


def test_with_train_false_does_not_read_the_train_split_at_all(tmp_path):
    _market_tree(tmp_path)
    _write_images(tmp_path / 'bounding_box_train', ['not_a_market_name.jpg'])  # an error for training only
    assert len(market_layout(tmp_path, with_train=False).query) == 2
    with pytest.raises(ValueError, match='not_a_market_name'):
        market_layout(tmp_path)


def test_market_layout_reads_any_folder(tmp_path):
    dataset = market_layout(_market_tree(tmp_path / 'anything'), name='mine')
    assert dataset.name == 'mine' and len(dataset.gallery) == 3
    with pytest.raises(FileNotFoundError, match='missing folder'):
        market_layout(tmp_path / 'absent')


def test_dukemtmc_names(tmp_path):
    root = tmp_path / 'DukeMTMC-reID'
    _write_images(root / 'bounding_box_train', ['0005_c2_f0046182.jpg', '0001_c8_f0000001.jpg'])
    _write_images(root / 'query', ['0010_c1_f0000100.jpg'])
    _write_images(root / 'bounding_box_test', ['0010_c5_f0000200.jpg'])
    dataset = dukemtmc(tmp_path)
    assert sorted((pid, camid) for _, pid, camid in dataset.train) == [(0, 7), (1, 1)]
    _write_images(root / 'query', ['0011_c1s1_000100_01.jpg'])  # a Market name is not a Duke name
    with pytest.raises(ValueError, match='0001_c2_f0046182.jpg'):
        dukemtmc(tmp_path)


@pytest.mark.parametrize('variant', ['labeled', 'detected'])
def test_cuhk03_np_variants(tmp_path, variant):
    root = tmp_path / 'cuhk03-np' / variant
    _write_images(root / 'bounding_box_train', ['0003_c1_1.png', '0003_c2_6.png', '0009_c1_2.png'])
    _write_images(root / 'query', ['0800_c1_1.png'])
    _write_images(root / 'bounding_box_test', ['0800_c2_7.png'])
    other = 'detected' if variant == 'labeled' else 'labeled'
    dataset = build_dataset(f'cuhk03_{variant}', tmp_path)
    assert dataset.name == f'cuhk03_{variant}'
    assert dataset.num_train_pids == 2 and dataset.num_train_cams == 2
    with pytest.raises(FileNotFoundError, match=f'cuhk03-np/{other}'):
        build_dataset(f'cuhk03_{other}', tmp_path)
    with pytest.raises(ValueError, match="variant must be 'labeled' or 'detected'"):
        cuhk03(tmp_path, variant='both')


def _msmt17_tree(root: Path):
    train = ['0000/0000_000_01_0303morning_0015_0.jpg', '0000/0000_001_05_0303noon_0100_1.jpg',
             '0001/0001_000_15_0303afternoon_0020_0.jpg']
    val = ['0001/0001_003_02_0303noon_0300_0.jpg']
    query = ['0005/0005_000_03_0303morning_0010_0.jpg']
    gallery = ['0005/0005_001_07_0303noon_0011_0.jpg', '0006/0006_000_07_0303noon_0012_0.jpg']
    for folder, names in (('train', train + val), ('test', query + gallery)):
        for name in names:
            _write_images(root / folder / Path(name).parent, [Path(name).name])
    (root / 'list_train.txt').write_text(''.join(f'{n} {int(n[:4])}\n' for n in train))
    (root / 'list_val.txt').write_text(''.join(f'{n} {int(n[:4])}\n' for n in val))
    (root / 'list_query.txt').write_text(''.join(f'{n} {int(n[:4])}\n' for n in query))
    (root / 'list_gallery.txt').write_text(''.join(f'{n} {int(n[:4])}\n' for n in gallery))
    return root


def test_msmt17_combines_train_and_val_and_reads_cameras_from_names(tmp_path):
    _msmt17_tree(tmp_path / 'MSMT17_V1')
    dataset = msmt17(tmp_path)
    assert len(dataset.train) == 4 and dataset.num_train_pids == 2
    assert sorted(camid for _, _, camid in dataset.train) == [0, 1, 4, 14]
    assert [(pid, camid) for _, pid, camid in dataset.query] == [(5, 2)]
    assert dataset.camera_name(2) == 'c3' and dataset.camera_name(14) == 'c15'  # ..._03_... and ..._15_...
    assert all(Path(path).is_file() for path, _, _ in dataset.train + dataset.query + dataset.gallery)


def test_msmt17_malformed_list_line_names_file_and_line(tmp_path):
    root = _msmt17_tree(tmp_path / 'MSMT17_V1')
    (root / 'list_query.txt').write_text('0005/0005_000_03_0303morning_0010_0.jpg\n')
    with pytest.raises(ValueError, match=r'list_query\.txt:1: expected "<relative path> <label>"'):
        msmt17(tmp_path)


def test_build_dataset_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match='market1501, dukemtmc, cuhk03_labeled, cuhk03_detected, msmt17'):
        build_dataset('viper', tmp_path)
    assert set(DATASET_NAMES) == {'market1501', 'dukemtmc', 'cuhk03_labeled', 'cuhk03_detected', 'msmt17',
                                  'market_layout', 'image_lists'}


def test_image_dataset_returns_tensor_ids_and_path(tmp_path):
    dataset = market1501(_market_tree(tmp_path))
    images = ImageDataset(dataset.query, build_test_transform((32, 16)))
    image, pid, camid, path = images[0]
    assert image.shape == (3, 32, 16) and (path, pid, camid) == dataset.query[0]


def test_image_dataset_unreadable_image_names_the_path(tmp_path):
    broken = tmp_path / '0001_c1s1_000001_01.jpg'
    broken.write_bytes(b'not a jpeg')
    with pytest.raises(ImageReadError, match='cannot read image .*0001_c1s1_000001_01.jpg'):
        ImageDataset([(str(broken), 1, 0)])[0]


def test_image_dataset_names_a_decompression_bomb(tmp_path, monkeypatch):
    # A 64x32 image stands for a 10000x20000 one: PIL refuses images above twice MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    _write_images(tmp_path, ['0001_c1s1_000001_01.jpg'], size=(32, 64))
    with pytest.raises(ImageReadError, match=r'cannot read image .*0001_c1s1_000001_01\.jpg: .*decompression bomb'):
        ImageDataset([(str(tmp_path / '0001_c1s1_000001_01.jpg'), 1, 0)])[0]


@pytest.fixture
def image_files(tmp_path):
    """Good and broken images, by name."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8))
    picture.save(tmp_path / 'good.jpg', quality=90)
    picture.save(tmp_path / 'good.png')
    jpeg, png = (tmp_path / 'good.jpg').read_bytes(), (tmp_path / 'good.png').read_bytes()
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2:len(png) // 2 + 64] = bytes(64)  # damaged pixel data, intact end marker
    contents = {
        'trailing.jpg': jpeg + bytes(5000),  # valid: some writers pad after the end marker
        'truncated.jpg': jpeg[:len(jpeg) // 2],
        'truncated.png': png[:len(png) // 2],
        'empty.jpg': b'',
        'text.jpg': b'not an image at all',
        'corrupt.png': bytes(corrupt_png),
    }
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return {name: str(tmp_path / name) for name in ['good.jpg', 'good.png', *contents, 'missing.jpg']}


def test_cheap_image_check_finds_empty_truncated_undecodable_and_missing_files(image_files):
    problems = {name: image_problem(path) for name, path in image_files.items()}
    assert problems['good.jpg'] is problems['good.png'] is problems['trailing.jpg'] is None
    assert 'truncated' in problems['truncated.jpg'] and 'truncated' in problems['truncated.png']
    assert problems['empty.jpg'] == 'empty file (0 bytes)'
    assert 'cannot identify image file' in problems['text.jpg']
    assert 'No such file' in problems['missing.jpg']
    assert problems['corrupt.png'] is None  # intact header and end marker: only decoding finds it


def test_full_image_check_also_finds_damaged_pixel_data(image_files):
    assert image_problem(image_files['corrupt.png'], full=True) is not None
    assert image_problem(image_files['trailing.jpg'], full=True) is None
    paths = list(image_files.values())
    cheap = [path for path, _ in find_unreadable_images(paths)]
    full = [path for path, _ in find_unreadable_images(paths, full=True)]
    assert cheap == [image_files[n] for n in ('truncated.jpg', 'truncated.png', 'empty.jpg', 'text.jpg',
                                              'missing.jpg')]
    assert full == [image_files[n] for n in ('truncated.jpg', 'truncated.png', 'empty.jpg', 'text.jpg',
                                             'corrupt.png', 'missing.jpg')]


def test_cheap_image_check_finds_a_decompression_bomb_without_decoding_it(image_files, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    assert 'too large to decode safely' in image_problem(image_files['good.png'])


def _pids_with_sizes(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def _batches(sampler):
    indices = list(sampler)
    return [indices[i:i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_sampler_batches_hold_p_identities_with_k_images_each():
    pids = _pids_with_sizes([2, 9, 4, 4, 7, 1, 12, 5, 6, 3])
    sampler = RandomIdentitySampler(pids, num_instances=4, batch_size=12, seed=0)
    batches = _batches(sampler)
    assert len(batches) >= 1 and len(sampler) == sum(len(b) for b in batches)
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(pids[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}


def test_sampler_samples_small_identities_with_replacement():
    pids = _pids_with_sizes([1, 2, 1, 2])
    batches = _batches(RandomIdentitySampler(pids, num_instances=4, batch_size=8, seed=0))
    for batch in batches:
        for pid, count in Counter(pids[batch].tolist()).items():
            assert count == 4 and set(np.asarray(batch)[pids[batch] == pid]) <= set(np.flatnonzero(pids == pid))


def test_sampler_is_deterministic_for_seed_and_epoch():
    pids = _pids_with_sizes([8] * 20)
    first, second = (RandomIdentitySampler(pids, 4, 16, seed=3) for _ in range(2))
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0
    assert list(RandomIdentitySampler(pids, 4, 16, seed=4)) != epoch0


def test_sampler_distributed_split_keeps_whole_batches():
    pids = _pids_with_sizes([8] * 21)
    whole = _batches(RandomIdentitySampler(pids, 4, 16, seed=1, num_replicas=1, rank=0))
    ranks = [RandomIdentitySampler(pids, 4, 16, seed=1, num_replicas=2, rank=r) for r in range(2)]
    per_rank = [_batches(sampler) for sampler in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) // 2 * 16
    assert per_rank[0] == whole[0::2][:len(whole) // 2]
    assert per_rank[1] == whole[1::2][:len(whole) // 2]


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_instances=4, batch_size=10), 'multiple of num_instances'),
    (dict(num_instances=4, batch_size=32), 'cannot fill a batch of P=8'),
    (dict(num_instances=4, batch_size=8, num_replicas=2, rank=2), 'rank 2 must be in'),
])
def test_sampler_rejects_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomIdentitySampler(_pids_with_sizes([4] * 5), **kwargs)


def test_train_transform_output_shape_and_augmentation():
    image = Image.new('RGB', (40, 90), (200, 30, 30))
    torch.manual_seed(0)
    output = build_train_transform((64, 32), random_erasing_prob=1.0, cutout_prob=1.0, cutout_size=8)(image)
    assert output.shape == (3, 64, 32) and output.dtype == torch.float32
    plain = build_test_transform((64, 32))(image)
    assert not torch.equal(output, plain)  # erasing and cutout changed it


def test_cutout_zeroes_a_square_of_the_given_size():
    torch.manual_seed(0)
    image = torch.ones(3, 40, 40)
    found_interior = False
    for _ in range(30):
        out = Cutout(size=6, probability=1.0)(image)
        zero_rows, zero_cols = torch.nonzero(out[0] == 0, as_tuple=True)
        height = int(zero_rows.max() - zero_rows.min() + 1)
        width = int(zero_cols.max() - zero_cols.min() + 1)
        assert height <= 6 and width <= 6 and int((out == 0).sum()) == 3 * height * width
        found_interior |= height == width == 6
    assert found_interior
    assert torch.equal(Cutout(size=6, probability=0.0)(image), image)


def test_make_dataloaders_batches(tmp_path):
    names = [f'{pid:04d}_c{cam}s1_{pid * 10 + cam:06d}_01.jpg' for pid in range(1, 7) for cam in (1, 2, 3)]
    _write_images(tmp_path / 'bounding_box_train', names)
    _write_images(tmp_path / 'query', ['0010_c1s1_000001_01.jpg'])
    _write_images(tmp_path / 'bounding_box_test', ['0010_c2s1_000001_01.jpg', '0000_c1s1_000001_01.jpg'])
    loaders = make_dataloaders(market_layout(tmp_path), img_size=(32, 16), p=2, k=2, batch_size_test=2, workers=0)
    train, query, gallery = loaders
    images, pids, camids, paths = next(iter(train))
    assert images.shape == (4, 3, 32, 16) and len(set(pids.tolist())) == 2
    assert len(train) == len(train.sampler) // 4
    assert next(iter(gallery))[0].shape == (2, 3, 32, 16) and len(query.dataset) == 1


def test_an_interruption_while_workers_start_is_delivered_after_they_have_started(python_sigint):
    delivered_inside, handler = [], signal.getsignal(signal.SIGINT)
    assert handler is signal.default_int_handler  # Python's own, which raises KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with interruptions_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # time enough for Python to run a handler, had the signal come through
            delivered_inside.append(False)
    assert delivered_inside == [False]
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is back


def test_image_dataset_reads_a_file_a_pil_image_and_an_array_alike(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / 'a.png')
    transform = build_test_transform((16, 8))
    dataset = ImageDataset([(tmp_path / 'a.png', 3, 1), (Image.fromarray(pixels), 4, 2), (pixels, -1, -1)], transform)
    (from_file, pid, camid, path), (from_pil, *_, no_path), (from_array, *_) = (dataset[i] for i in range(3))
    assert (pid, camid, path, no_path) == (3, 1, str(tmp_path / 'a.png'), '')
    assert torch.equal(from_file, from_pil) and torch.equal(from_file, from_array)


def test_sixteen_bit_grey_images_are_scaled_to_eight_bits_not_clipped(tmp_path):
    """PIL's convert('RGB') clips 16-bit values at 255: a 16-bit PNG read that way is white wherever it is not
    near black. Read by the dataset (files and images in memory) and drawn in pictures, it is scaled by 1/257."""
    from hbfp_timm.data.datasets import to_rgb
    values = np.array([[0, 257, 514], [30000, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / 'grey16.png')
    expected = np.repeat((values // 257).astype(np.uint8)[..., None], 3, axis=2)
    with Image.open(tmp_path / 'grey16.png') as image:
        assert image.mode == 'I;16'
        in_memory = image.copy()
    for item in (str(tmp_path / 'grey16.png'), in_memory):
        image, _, _, _ = ImageDataset([(item, 1, 0)])[0]
        assert image.mode == 'RGB' and np.array_equal(np.asarray(image), expected)
    # 32-bit integer grey holding 16-bit values, and 8-bit images, as PIL reads them.
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(values.astype(np.int32), 'I'))), expected)
    rgb = Image.new('RGB', (3, 2), (10, 200, 30))
    assert np.array_equal(np.asarray(to_rgb(rgb)), np.asarray(rgb))


@pytest.mark.parametrize('values, expected', [
    ([[0.0, 0.5, 1.0]], [[0, 128, 255]]),  # [0, 1]
    ([[0.0, 100.4, 255.0]], [[0, 100, 255]]),  # [0, 255]
    ([[0.0, 500.0, 1000.0]], [[0, 128, 255]]),  # wider: divided by its maximum over 255
    ([[float('nan'), -3.0, 0.25]], [[0, 0, 64]]),  # non-finite and negative values are black
])
def test_float_grey_images_are_scaled_to_eight_bits_not_clipped(tmp_path, values, expected):
    """A 32-bit float TIFF (mode F) holding [0, 1] values was black, one holding [0, 1000] white where above 255."""
    from hbfp_timm.data.datasets import to_rgb
    Image.fromarray(np.array(values, dtype=np.float32), 'F').save(tmp_path / 'grey.tif')
    image, _, _, _ = ImageDataset([(str(tmp_path / 'grey.tif'), 1, 0)])[0]
    assert image.mode == 'RGB'
    assert np.array_equal(np.asarray(image), np.repeat(np.array(expected, dtype=np.uint8)[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(np.array(values, dtype=np.float32), 'F'))),
                          np.asarray(image))
