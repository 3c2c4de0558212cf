"""The list-file reader (hbfp_timm.data.lists): formats, the camera-less protocol, strict errors, and training
through ``--dataset image_lists``."""
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from hbfp_timm.data import build_dataset, image_lists, read_image_list
from hbfp_timm.data.lists import collect_images, skip_unreadable
from hbfp_timm.metrics import evaluate_rank


def _images(folder: Path, names, size=(16, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', size, (index * 20 % 256, 90, 160)).save(folder / name)
    return [folder / name for name in names]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_with_header_and_cameras(tmp_path):
    _images(tmp_path / 'crops', ['a1.jpg', 'a2.jpg', 'b1.jpg', 'b2.jpg', 'c1.jpg', 'c2.jpg'])
    absolute = _images(tmp_path / 'elsewhere', ['z.png'])[0]
    _write(tmp_path / 'data' / 'train.csv', 'path,pid,camid\n../crops/a1.jpg,40,0\n../crops/a2.jpg,40,1\n'
                                           '# a comment line\n\n../crops/b1.jpg,7,0\n../crops/b2.jpg,7,2\n')
    _write(tmp_path / 'data' / 'query.csv', '../crops/c1.jpg, 3, 1\n')
    _write(tmp_path / 'data' / 'gallery.csv', f'../crops/c2.jpg,3,0\n"{absolute}",9,0\n')
    dataset = build_dataset('image_lists', tmp_path / 'data')
    crops = tmp_path / 'data' / '..' / 'crops'
    # Training identities relabelled in sorted order of the originals (7 -> 0, 40 -> 1).
    assert dataset.train == [(str(crops / 'a1.jpg'), 1, 0), (str(crops / 'a2.jpg'), 1, 1),
                             (str(crops / 'b1.jpg'), 0, 0), (str(crops / 'b2.jpg'), 0, 2)]
    assert dataset.query == [(str(crops / 'c1.jpg'), 3, 1)]
    assert dataset.gallery == [(str(crops / 'c2.jpg'), 3, 0), (str(absolute), 9, 0)]
    assert dataset.name == 'image_lists' and dataset.num_train_pids == 2


def test_query_and_gallery_lists_alone_are_read_for_evaluation_and_training_needs_train(tmp_path):
    _images(tmp_path, ['a1.jpg', 'a2.jpg', 'b1.jpg'])
    _write(tmp_path / 'query.csv', 'a1.jpg,1,0\n')
    _write(tmp_path / 'gallery.csv', 'a2.jpg,1,1\nb1.jpg,2,1\n')
    dataset = build_dataset('image_lists', tmp_path, with_train=False)
    assert dataset.train == [] and len(dataset.query) == 1 and len(dataset.gallery) == 2
    _write(tmp_path / 'train.csv', 'missing.jpg,1,0\n')  # not read for evaluation
    assert image_lists(tmp_path, with_train=False).gallery == dataset.gallery
    (tmp_path / 'train.csv').unlink()
    with pytest.raises(FileNotFoundError, match='missing list file train.csv or train.txt'):
        image_lists(tmp_path)


def test_whitespace_list_without_cameras_leaves_out_only_the_query_file_itself(tmp_path):
    paths = _images(tmp_path, ['p1_a.jpg', 'p1_b.jpg', 'p2_a.jpg', 'p1_c.jpg'])
    _write(tmp_path / 'train.txt', 'p1_a.jpg 1\np2_a.jpg 2\n')
    _write(tmp_path / 'query.txt', 'p1_a.jpg 1\n')
    _write(tmp_path / 'gallery.txt', 'p1_a.jpg 1\np1_b.jpg 1\np2_a.jpg 2\np1_c.jpg 1\n')
    dataset = image_lists(tmp_path)
    assert dataset.train == [(str(paths[0]), 0, 0), (str(paths[2]), 1, 0)]  # training cameras are not used
    (_, q_pid, q_cam), = dataset.query
    g_cams = [cam for _, _, cam in dataset.gallery]
    assert g_cams[0] == q_cam and len(set(g_cams)) == 4  # same file, same camera; every file its own camera

    # Ranked: the query's own file (left out), p2 (wrong), p1_b (match), p1_c (match):
    # the matches sit at ranks 2 and 3 of the kept list, AP = (1/2 + 2/3) / 2.
    distmat = np.array([[0.0, 0.5, 0.4, 0.6]])
    cmc, mAP = evaluate_rank(distmat, [q_pid], [pid for _, pid, _ in dataset.gallery], [q_cam], g_cams, max_rank=3)
    assert cmc.tolist() == [0.0, 1.0, 1.0]
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_camera_less_images_name_their_cameras_by_file_or_by_path_where_two_files_share_a_name(tmp_path):
    _images(tmp_path / 'q', ['0001.jpg'])
    _images(tmp_path / 'g', ['0001.jpg', '0002.jpg'])
    _write(tmp_path / 'query.csv', 'q/0001.jpg,1\n')
    _write(tmp_path / 'gallery.csv', 'g/0001.jpg,1\ng/0002.jpg,2\n')
    dataset = image_lists(tmp_path, with_train=False)
    names = [dataset.camera_name(cam) for _, _, cam in dataset.query + dataset.gallery]
    assert names == [str(Path('q') / '0001.jpg'), str(Path('g') / '0001.jpg'), str(Path('g') / '0002.jpg')]
    _write(tmp_path / 'query.csv', 'g/0002.jpg,2\n')  # no two files share a name: the file names alone
    dataset = image_lists(tmp_path, with_train=False)
    assert [dataset.camera_name(cam) for _, _, cam in dataset.gallery] == ['0001.jpg', '0002.jpg']


def test_a_list_of_paths_alone_is_read_when_identities_are_optional(tmp_path):
    _images(tmp_path, ['x.jpg', 'y.jpg'])
    listing = read_image_list(_write(tmp_path / 'all.txt', 'x.jpg\ny.jpg\n'), require_pids=False)
    assert listing.paths == [str(tmp_path / 'x.jpg'), str(tmp_path / 'y.jpg')]
    assert listing.pids is None and listing.camids is None


@pytest.mark.parametrize('content, message', [
    ('a.jpg,1,0\nb.jpg,x,0\n', r'query.csv:2: pid must be a non-negative integer, got \'x\''),
    ('a.jpg,1,0\nb.jpg,-2,0\n', r'query.csv:2: pid must be a non-negative integer'),
    ('a.jpg,1,0\nb.jpg,2\n', r'query.csv:2: 2 fields, but earlier lines have 3'),
    ('a.jpg,1,0,5\n', r'query.csv:1: expected "path,pid,camid" \(camid optional\), got 4 fields'),
    ('a.jpg\n', r'query.csv:1: expected "path,pid,camid" \(camid optional\), got a path without identity'),
    ('a.jpg,1,0\nb.jpg,1,0\na.jpg,2,1\n', r'query.csv:3: a.jpg is listed twice \(first on line 1\)'),
    ('a.jpg,1,0\nmissing.jpg,1,0\n', r'query.csv:2: image .*missing.jpg not found'),
    ('# nothing\n\n', r'query.csv: no images listed'),
])
def test_malformed_list_names_file_and_line(tmp_path, content, message):
    _images(tmp_path, ['a.jpg', 'b.jpg'])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_image_list(_write(tmp_path / 'query.csv', content))


@pytest.mark.parametrize('content', ['path;pid;camid\na.jpg;1;0\n', 'a.jpg;1;0\n'])
def test_a_csv_separated_by_semicolons_says_so_not_that_an_image_is_missing(tmp_path, content):
    """A spreadsheet's "CSV" in a locale whose decimal mark is a comma separates by ';': read_image_list said
    "image .../path;pid;camid not found" (embed, search) or "got a path without identity" (the trainer)."""
    _images(tmp_path, ['a.jpg'])
    line = content.splitlines()[0]
    for require_pids in (True, False):
        with pytest.raises(ValueError, match=rf'^{tmp_path / "query.csv"}:1: \'{line}\' has its fields separated by '
                                             r'";"; a \.csv list separates them by commas: "path,pid,camid"'):
            read_image_list(_write(tmp_path / 'query.csv', content), require_pids=require_pids)


def test_a_spreadsheet_csv_with_a_byte_order_mark_is_read_with_its_header(tmp_path):
    _images(tmp_path, ['a.jpg', 'b.jpg'])
    list_file = tmp_path / 'query.csv'
    list_file.write_bytes('path,pid,camid\r\na.jpg,1,0\r\nb.jpg,2,1\r\n'.encode('utf-8-sig'))
    listing = read_image_list(list_file)
    assert listing.paths == [str(tmp_path / 'a.jpg'), str(tmp_path / 'b.jpg')]
    assert listing.pids == [1, 2] and listing.camids == [0, 1]


@pytest.mark.parametrize('header', ['pid,path,camid', 'image,label,cam', 'filename,id'])
def test_a_header_of_other_columns_is_named_as_a_header_not_a_missing_image(tmp_path, header):
    _images(tmp_path, ['a.jpg'])
    with pytest.raises(ValueError, match=rf'query.csv:1: \'{header}\' reads as a header, but the columns must be '
                                         r'"path,pid,camid" in this order'):
        read_image_list(_write(tmp_path / 'query.csv', f'{header}\na.jpg,1{",0" * (header.count(",") == 2)}\n'))


def test_query_and_gallery_must_agree_on_cameras(tmp_path):
    _images(tmp_path, ['a.jpg', 'b.jpg'])
    _write(tmp_path / 'train.csv', 'a.jpg,1\n')
    _write(tmp_path / 'query.csv', 'a.jpg,1,0\n')
    _write(tmp_path / 'gallery.csv', 'b.jpg,1\n')
    with pytest.raises(ValueError, match='query.csv has a camid column but .*gallery.csv has none'):
        image_lists(tmp_path)


def test_missing_or_ambiguous_split_files_are_named(tmp_path):
    _images(tmp_path, ['a.jpg'])
    _write(tmp_path / 'train.csv', 'a.jpg,1\n')
    _write(tmp_path / 'query.csv', 'a.jpg,1\n')
    with pytest.raises(FileNotFoundError, match='missing list file gallery.csv or gallery.txt'):
        image_lists(tmp_path)
    _write(tmp_path / 'gallery.csv', 'a.jpg,1\n')
    _write(tmp_path / 'gallery.txt', 'a.jpg 1\n')
    with pytest.raises(ValueError, match='both gallery.csv and gallery.txt exist'):
        image_lists(tmp_path)
    with pytest.raises(FileNotFoundError, match='missing folder'):
        image_lists(tmp_path / 'nowhere')


def test_the_trainer_trains_and_evaluates_on_list_files(tmp_path):
    from hbfp_timm.train import main

    names = [f'id{pid}_{n}.png' for pid in range(4) for n in range(4)]
    _images(tmp_path / 'images', names, size=(32, 64))
    rows = [f'images/{name},{name[2]}' for name in names]
    _write(tmp_path / 'train.csv', '\n'.join(rows[:8]) + '\n')  # identities 0 and 1
    _write(tmp_path / 'query.csv', '\n'.join(rows[8::4]) + '\n')  # the first image of identities 2 and 3
    _write(tmp_path / 'gallery.csv', '\n'.join(rows[8:]) + '\n')  # all of them, the queries included
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = main(['--dataset', 'image_lists', '--data-root', str(tmp_path), '--model', 'hbfp_resnet18',
                        '--img-size', '64', '32', '--batch-size', '4', '--num-instances', '2', '--epochs', '1',
                        '--max-steps-per-epoch', '1', '--no-pretrained-backbone', '--workers', '0',
                        '--output', str(tmp_path / 'run')])
    finally:
        torch.set_num_threads(threads)
    assert results['num_train_pids'] == 2
    # Each query's own file is left out of its gallery; its 3 other images are the matches, so none is skipped.
    assert results['evaluations'][-1]['num_skipped_queries'] == 0
    assert 0.0 <= results['metrics']['mAP'] <= 1.0


@pytest.mark.skipif(not features.check('webp'), reason='this Pillow build decodes no WebP')
def test_a_folder_reads_every_image_format_pillow_decodes_and_names_the_files_it_does_not_read(tmp_path):
    """Folder input (embed, search, activations) read .jpg, .jpeg, .png and .bmp files only, and skipped .webp and
    .tif photos without a word."""
    images = _images(tmp_path / 'photos', ['a.webp', 'b.TIF', 'c.tiff', 'd.jpg', 'sub/e.gif'])
    _write(tmp_path / 'photos' / 'notes.txt', 'not an image')
    _write(tmp_path / 'photos' / 'sub' / 'poses.json', '{}')
    for metadata in ('.DS_Store', 'sub/Thumbs.db', 'desktop.ini'):  # what file managers leave: no one's data
        _write(tmp_path / 'photos' / metadata, '')
    with pytest.warns(UserWarning) as warned:
        listing = collect_images(tmp_path / 'photos')
    assert listing.paths == [str(path) for path in images]
    assert [str(w.message) for w in warned] == [
        f"{tmp_path / 'photos'}: not read: 2 files without the extension of an image format Pillow decodes "
        f"(notes.txt, {Path('sub', 'poses.json')})"]
    _write(tmp_path / 'docs' / 'notes.txt', 'not an image')
    with pytest.raises(ValueError, match=r'docs: no images in this folder or below \(.*\); not read: 1 file '
                                         r'without the extension of an image format Pillow decodes \(notes\.txt\)$'):
        collect_images(tmp_path / 'docs')


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_leaving_out_unreadable_images_shows_the_progress_of_decoding_them(tmp_path, monkeypatch):
    """--skip-bad-images decodes every image first, and showed nothing while it did, however long it took."""
    good = _images(tmp_path / 'photos', ['a.png', 'c.png'])
    _write(tmp_path / 'photos' / 'b.png', 'not a picture')
    monkeypatch.setattr(sys, 'stderr', _Terminal())
    reported = []
    assert skip_unreadable(collect_images(tmp_path / 'photos'), report=reported.append).paths == [
        str(path) for path in good]
    assert len(reported) == 2 and reported[-1].startswith('skipped 1 of 3 images')
    assert 'decoding images: ' in sys.stderr.getvalue() and '/3 ' in sys.stderr.getvalue()
