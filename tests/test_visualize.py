"""Pictures (hbfp_timm.inference.visualize): border colours by identity, a legend that explains them, a CMC legend that
fits inside the image."""
import numpy as np
import pytest
from PIL import Image

from hbfp_timm.inference.visualize import (
    MATCH_COLOUR, MISMATCH_COLOUR, QUERY_COLOUR, SAME_CAMERA_COLOUR, UNKNOWN_COLOUR, draw_cmc_curves, draw_ranked_lists,
    draw_ranking,
)


def _solid_images(tmp_path, colours):
    paths = []
    for index, colour in enumerate(colours):
        paths.append(str(tmp_path / f'{index}.png'))
        Image.new('RGB', (16, 32), colour).save(paths[-1])
    return paths


def _has(pixels: np.ndarray, colour) -> bool:
    return bool((pixels == colour).all(axis=-1).any())


def test_unknown_identities_get_neutral_borders_and_a_legend_saying_so(tmp_path):
    paths = _solid_images(tmp_path, [(0, 0, 0), (255, 255, 0), (0, 255, 255)])
    out = draw_ranking(paths[:1], paths, np.array([[2, 1]]), tmp_path / 'r.png', thumb_size=(16, 32))
    pixels = np.asarray(Image.open(out).convert('RGB'))
    assert not _has(pixels, MATCH_COLOUR) and not _has(pixels, MISMATCH_COLOUR)
    cell_w, gap, label_h = 16 + 8, 12, 16
    assert tuple(pixels[label_h + 1, (cell_w + gap) + gap + 1]) == UNKNOWN_COLOUR
    rows_height = label_h + 32 + 8 + gap
    legend = pixels[rows_height:]  # everything under the one row of images
    assert _has(legend, QUERY_COLOUR) and _has(legend, UNKNOWN_COLOUR)


def test_known_identities_colour_the_borders_and_the_legend_explains_both_colours(tmp_path):
    paths = _solid_images(tmp_path, [(0, 0, 0), (255, 255, 0), (0, 255, 255)])
    out = draw_ranking(paths[:1], paths, np.array([[1, 2]]), tmp_path / 'r.png', query_pids=[5],
                       gallery_pids=[5, 5, 6], distances=np.array([[0.5, 0.75]]), thumb_size=(16, 32))
    pixels = np.asarray(Image.open(out).convert('RGB'))
    cell_w, gap, label_h = 16 + 8, 12, 16
    assert tuple(pixels[label_h + 1, (cell_w + gap) + gap + 1]) == MATCH_COLOUR
    assert tuple(pixels[label_h + 1, 2 * (cell_w + gap) + gap + 1]) == MISMATCH_COLOUR
    legend = pixels[label_h + 32 + 8 + gap:]
    assert _has(legend, QUERY_COLOUR) and _has(legend, MATCH_COLOUR) and _has(legend, MISMATCH_COLOUR)


def test_with_cameras_the_query_identity_from_its_camera_is_drawn_apart_and_explained(tmp_path):
    paths = _solid_images(tmp_path, [(0, 0, 0), (255, 255, 0), (0, 255, 255), (255, 0, 255)])
    out = draw_ranking(paths[:1], paths, np.array([[1, 2, 3]]), tmp_path / 'r.png', query_pids=[5],
                       gallery_pids=[5, 5, 5, 6], query_camids=[0], gallery_camids=[0, 0, 1, 1], thumb_size=(16, 32))
    pixels = np.asarray(Image.open(out).convert('RGB'))
    cell_w, gap, label_h = 16 + 8, 12, 16
    borders = [tuple(pixels[label_h + 1, rank * (cell_w + gap) + gap + 1]) for rank in (1, 2, 3)]
    assert borders == [SAME_CAMERA_COLOUR, MATCH_COLOUR, MISMATCH_COLOUR]
    swatch_edge = (pixels[label_h + 32 + 8 + gap:] == SAME_CAMERA_COLOUR).all(axis=-1).sum(axis=1).max()
    assert swatch_edge >= 13  # the legend has its swatch (a 13-pixel square)
    out = draw_ranking(paths[:1], paths, np.array([[1, 2, 3]]), tmp_path / 'r.png', query_pids=[5],
                       gallery_pids=[5, 5, 5, 6], thumb_size=(16, 32))  # without cameras: every match is green
    pixels = np.asarray(Image.open(out).convert('RGB'))
    borders = [tuple(pixels[label_h + 1, rank * (cell_w + gap) + gap + 1]) for rank in (1, 2, 3)]
    assert borders == [MATCH_COLOUR, MATCH_COLOUR, MISMATCH_COLOUR]
    assert (pixels == SAME_CAMERA_COLOUR).all(axis=-1).sum(axis=1).max() < 13  # and no such legend entry


def test_ranked_lists_of_an_evaluation_leave_out_same_camera_matches(tmp_path):
    paths = _solid_images(tmp_path, [(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)])
    query = [(paths[0], 1, 0)]
    gallery = [(paths[1], 1, 0), (paths[2], 2, 1), (paths[3], 1, 1)]  # nearest: same id + camera, wrong, match
    out = draw_ranked_lists(np.array([[0.1, 0.2, 0.3]]), query, gallery, tmp_path / 'r.png', top_k=3,
                            thumb_size=(16, 32))
    pixels = np.asarray(Image.open(out).convert('RGB'))
    cell_w, gap, label_h = 16 + 8, 12, 16
    centre = label_h + 4 + 16
    assert tuple(pixels[centre, (cell_w + gap) + gap + cell_w // 2]) == (0, 0, 200)
    assert tuple(pixels[centre, 2 * (cell_w + gap) + gap + cell_w // 2]) == (90, 90, 90)
    assert tuple(pixels[centre, 3 * (cell_w + gap) + gap + cell_w // 2]) == (255, 255, 255)
    assert not _has(pixels[:label_h + 40], (0, 200, 0))  # the removed same-camera image is not drawn


def test_cmc_legend_stays_inside_the_image_for_long_labels(tmp_path):
    curves = {'HBFP-Net, hbfp_resnet50, trained 500 epochs on Market-1501 with the paper recipe': [0.5] * 20,
              'BoT': [0.3] * 20}
    out = draw_cmc_curves(curves, tmp_path / 'cmc.png', 'CMC', size=(320, 300))
    pixels = np.asarray(Image.open(out).convert('RGB'))
    assert pixels.shape[1] > 320  # widened to fit the legend
    ink_columns = np.flatnonzero((pixels != 255).any(axis=2).any(axis=0))
    assert ink_columns.max() < pixels.shape[1] - 10  # nothing touches the right edge


def test_drawing_errors():
    with pytest.raises(ValueError, match='curves'):
        draw_cmc_curves({}, 'x.png', 'CMC')
    with pytest.raises(ValueError, match=r'indices: expected shape \(2, k\)'):
        draw_ranking(['a', 'b'], ['c'], np.zeros((1, 3), dtype=int), 'x.png')
    with pytest.raises(ValueError, match='distmat: expected shape'):
        draw_ranked_lists(np.zeros((2, 2)), [('a', 1, 0)], [('b', 1, 1)], 'x.png')


def test_a_picture_cut_short_by_a_full_disk_leaves_the_previous_one_and_names_the_file(tmp_path):
    """canvas.save wrote in place: a full disk left a torn PNG where the last good picture was."""
    from hbfp_timm.utils.files import OutputWriteError

    from tiny_models import file_size_limit
    curves = {'HBFP': [0.5] * 20}
    first = draw_cmc_curves(curves, tmp_path / 'cmc.jpeg', 'CMC', size=(320, 300))
    before = first.read_bytes()
    assert Image.open(first).format == 'JPEG'  # the format follows the extension, as canvas.save(path) did
    with file_size_limit(len(before) // 4), pytest.raises(OutputWriteError, match='cmc.jpeg'):
        draw_cmc_curves({**curves, 'BoT': [0.3] * 20}, first, 'CMC', size=(320, 300))
    assert first.read_bytes() == before and [path.name for path in tmp_path.iterdir()] == ['cmc.jpeg']
    with pytest.raises(ValueError, match=r"cmc\.pictures: expected a picture file name \(\.png, \.jpg\.\.\.\)"):
        draw_cmc_curves(curves, tmp_path / 'cmc.pictures', 'CMC')
