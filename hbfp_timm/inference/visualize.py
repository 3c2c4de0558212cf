"""Pictures, drawn with PIL only: ranked lists of gallery images per query, and CMC curves.

Every picture explains itself: ranked lists carry a legend of their border colours (green / red only when the
identities are known, a neutral grey otherwise; dark grey for the query's identity seen by the query's camera,
which the Market-1501 protocol does not score), CMC curves a legend that always fits inside the image.
"""
import io
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.datasets import to_rgb
from ..utils.files import atomic_write

__all__ = [
    'MATCH_COLOUR', 'MISMATCH_COLOUR', 'QUERY_COLOUR', 'SAME_CAMERA_COLOUR', 'UNKNOWN_COLOUR', 'draw_ranking',
    'draw_ranked_lists', 'draw_cmc_curves', 'save_picture',
]

Item = Tuple[str, int, int]  # (path, pid, camid), as hbfp_timm.data readers give them

MATCH_COLOUR = (20, 160, 60)
MISMATCH_COLOUR = (210, 30, 30)
QUERY_COLOUR = (40, 90, 200)
UNKNOWN_COLOUR = (150, 150, 150)
SAME_CAMERA_COLOUR = (70, 70, 70)  # the query's identity from the query's camera: not scored by the protocol
CURVE_COLOURS = ((40, 90, 200), (220, 120, 20), (20, 160, 60), (170, 40, 160), (110, 110, 110), (210, 30, 30))
BORDER, GAP, LABEL_HEIGHT, LEGEND_HEIGHT = 4, 12, 16, 22


def save_picture(canvas: Image.Image, path) -> Path:
    """Write a picture atomically (:func:`~hbfp_timm.utils.files.atomic_write`): a full disk or an interruption
    leaves the previous file, never a torn one, and a failure is an ``OutputWriteError`` naming the file. The format
    follows the extension (``.png``, ``.jpg``...); one Pillow does not know is a ValueError naming the path."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f'{path}: expected a picture file name (.png, .jpg...), got the extension {path.suffix!r}')
    encoded = io.BytesIO()  # encoded in memory first: Pillow's JPEG encoder does not report a failed file write
    canvas.save(encoded, format=image_format)
    atomic_write(path, lambda tmp_name: Path(tmp_name).write_bytes(encoded.getvalue()))
    return path


def _thumbnail(path: str, size: Tuple[int, int], colour: Tuple[int, int, int]) -> Image.Image:
    with Image.open(path) as image:
        image = to_rgb(image).resize(size, Image.BILINEAR)
    framed = Image.new('RGB', (size[0] + 2 * BORDER, size[1] + 2 * BORDER), colour)
    framed.paste(image, (BORDER, BORDER))
    return framed


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """`text`, cut at the end with an ellipsis so that it is at most `width` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + '…', font=font) > width:
        text = text[:-1]
    return text + '…'


def _legend(draw: ImageDraw.ImageDraw, top: int, entries: Sequence[Tuple[Tuple[int, int, int], str]],
            font) -> int:
    """Colour swatches with their meaning on one line from the left; returns the line's right end."""
    x = GAP
    for colour, text in entries:
        draw.rectangle([x, top + 3, x + 12, top + 15], outline=colour, width=3)
        x += 18
        draw.text((x, top + 3), text, fill='black', font=font)
        x += int(draw.textlength(text, font=font)) + 16
    return x


def draw_ranking(
        query_paths: Sequence[str],
        gallery_paths: Sequence[str],
        indices: np.ndarray,
        path: Path,
        distances: Optional[np.ndarray] = None,
        query_pids: Optional[Sequence[int]] = None,
        gallery_pids: Optional[Sequence[int]] = None,
        query_labels: Optional[Sequence[str]] = None,
        thumb_size: Tuple[int, int] = (64, 128),
        note: Optional[str] = None,
        query_camids: Optional[Sequence[int]] = None,
        gallery_camids: Optional[Sequence[int]] = None,
) -> Path:
    """One row per query: the query, then its ranked gallery images, with a legend of the colours below.

    Borders: blue for the query; green for the query's identity and red for another one when both identity
    lists are given; neutral grey (rank order only) otherwise. With both camera lists as well, an image of the
    query's identity from the query's camera is dark grey: ranked, but not a match the Market-1501 protocol
    scores (`hbfp_timm.metrics.evaluate_rank` leaves it out).

    Args:
        query_paths: image file of each row's query.
        gallery_paths: image files the indices point into.
        indices: (num_rows, k) gallery indices in rank order; -1 leaves a cell empty.
        path: PNG file to write.
        distances: (num_rows, k) distances, written above the thumbnails when given.
        query_pids: identity of each row's query (with `gallery_pids`: correct / incorrect colours).
        gallery_pids: identity of each gallery image.
        query_camids: camera of each row's query (with `gallery_camids` and the identities: same-camera matches
            drawn apart).
        gallery_camids: camera of each gallery image.
        query_labels: text above each query (default its file name).
        thumb_size: (width, height) of each thumbnail.
        note: a sentence added to the caption under the legend.

    Returns:
        ``path``.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or len(indices) != len(query_paths):
        raise ValueError(f'indices: expected shape ({len(query_paths)}, k), got {indices.shape}')
    if distances is not None and np.shape(distances) != indices.shape:
        raise ValueError(f'distances: expected shape {indices.shape}, got {np.shape(distances)}')
    known = query_pids is not None and gallery_pids is not None
    cameras = known and query_camids is not None and gallery_camids is not None
    font = ImageFont.load_default()
    cell_w, cell_h = thumb_size[0] + 2 * BORDER, thumb_size[1] + 2 * BORDER
    row_h = cell_h + LABEL_HEIGHT + GAP
    top_k = indices.shape[1]
    width = (cell_w + GAP) * (top_k + 1)
    legend = [(QUERY_COLOUR, 'query')]
    legend += ([(MATCH_COLOUR, 'same identity as the query'), (MISMATCH_COLOUR, 'other identity')] if known else
               [(UNKNOWN_COLOUR, 'ranked gallery image (identities unknown)')])
    legend += [(SAME_CAMERA_COLOUR, "same identity, query's camera (not scored)")] if cameras else []
    caption = 'left to right: nearest first' + (', distance above each image' if distances is not None else '')
    caption += f'; {note}' if note else ''
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    legend_width = _legend(probe, 0, legend, font) + GAP
    width = max(width, legend_width, int(probe.textlength(caption, font=font)) + 2 * GAP)
    canvas = Image.new('RGB', (width, len(indices) * row_h + 2 * LEGEND_HEIGHT), 'white')
    draw = ImageDraw.Draw(canvas)
    for row, gallery_row in enumerate(indices):
        top = row * row_h
        label = query_labels[row] if query_labels is not None else Path(query_paths[row]).name
        draw.text((2, top), _fit(draw, label, cell_w + GAP - 4, font), fill='black', font=font)
        canvas.paste(_thumbnail(query_paths[row], thumb_size, QUERY_COLOUR), (0, top + LABEL_HEIGHT))
        for rank, g in enumerate(gallery_row, start=1):
            if g < 0:
                continue
            if known and gallery_pids[g] == query_pids[row]:
                colour = SAME_CAMERA_COLOUR if cameras and gallery_camids[g] == query_camids[row] else MATCH_COLOUR
            elif known:
                colour = MISMATCH_COLOUR
            else:
                colour = UNKNOWN_COLOUR
            left = (cell_w + GAP) * rank + GAP
            text = f'#{rank}' + (f' {float(distances[row][rank - 1]):#.3g}' if distances is not None else '')
            draw.text((left + 2, top), _fit(draw, text, cell_w + GAP - 4, font), fill=colour if known else 'black',
                      font=font)
            canvas.paste(_thumbnail(gallery_paths[g], thumb_size, colour), (left, top + LABEL_HEIGHT))
    legend_top = len(indices) * row_h
    _legend(draw, legend_top, legend, font)
    draw.text((GAP, legend_top + LEGEND_HEIGHT), caption, fill='black', font=font)
    return save_picture(canvas, path)


def draw_ranked_lists(
        distmat: np.ndarray,
        query: Sequence[Item],
        gallery: Sequence[Item],
        path: Path,
        num_queries: int = 4,
        top_k: int = 10,
        thumb_size: Tuple[int, int] = (64, 128),
) -> Path:
    """Ranked lists of an evaluated split, under the evaluation protocol.

    Gallery images of the query's identity seen by the query's camera are left out, as the protocol removes
    them. Queries are spread evenly over the query list (deterministic). See `draw_ranking` for the picture.

    Args:
        distmat: (num_query, num_gallery) distances.
        query: Query items (path, pid, camid) in distmat row order.
        gallery: Gallery items in distmat column order.
        path: PNG file to write.
        num_queries: Rows to draw.
        top_k: Gallery images per row.
        thumb_size: (width, height) of each thumbnail.

    Returns:
        ``path``.
    """
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f'distmat: expected shape {(len(query), len(gallery))}, got {distmat.shape}')
    rows = np.unique(np.linspace(0, len(query) - 1, num=min(num_queries, len(query))).round().astype(int))
    g_pids = np.array([pid for _, pid, _ in gallery])
    g_cams = np.array([cam for _, _, cam in gallery])
    indices = np.full((len(rows), top_k), -1, dtype=np.int64)
    distances = np.full((len(rows), top_k), np.nan)
    labels: List[str] = []
    for row, q in enumerate(rows):
        _, q_pid, q_cam = query[q]
        order = np.argsort(distmat[q], kind='stable')
        kept = order[~((g_pids[order] == q_pid) & (g_cams[order] == q_cam))][:top_k]
        indices[row, :len(kept)] = kept
        distances[row, :len(kept)] = distmat[q, kept]
        labels.append(f'query {q_pid}/c{q_cam + 1}')
    return draw_ranking([query[q][0] for q in rows], [item[0] for item in gallery], indices, path,
                        distances=distances, query_pids=[query[q][1] for q in rows], gallery_pids=g_pids,
                        query_labels=labels, thumb_size=thumb_size,
                        note="images of the query's identity from its camera are left out")


def draw_cmc_curves(
        curves: Mapping[str, Sequence[float]],
        path: Path,
        title: str,
        size: Tuple[int, int] = (640, 440),
) -> Path:
    """CMC curves (matching rate against rank) of one or more runs, with axes, ticks, labels and a legend.

    The legend sits in the lower right corner of the plot, in a framed box sized to its longest label; the
    image is widened when a label would not fit otherwise.

    Args:
        curves: Legend label -> CMC values as fractions in [0, 1], index 0 being Rank-1.
        path: PNG file to write.
        title: Title drawn above the plot.
        size: (width, height) of the image (at least; see above).

    Returns:
        ``path``.
    """
    if not curves or any(len(values) == 0 for values in curves.values()):
        raise ValueError('curves: expected at least one non-empty CMC curve')
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    labels = [f'{label}: R1 {100 * values[0]:.1f}%' for label, values in curves.items()]
    swatch, pad, line_h = 24, 6, 18
    legend_w = swatch + pad + max(int(probe.textlength(text, font=font)) for text in labels) + 2 * pad
    left, right, top, bottom = 64, 20, 36, 56
    width = max(size[0], left + right + legend_w + 2 * pad)
    height = size[1]
    plot_w, plot_h = width - left - right, height - top - bottom
    max_rank = max(len(values) for values in curves.values())
    canvas = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(canvas)

    def x_of(rank: float) -> float:
        return left + (rank - 1) / max(max_rank - 1, 1) * plot_w

    def y_of(rate: float) -> float:
        return top + (1.0 - rate) * plot_h

    for percent in range(0, 101, 20):
        y = y_of(percent / 100)
        draw.line([(left, y), (left + plot_w, y)], fill=(225, 225, 225))
        draw.text((left - 30, y - 6), f'{percent:>3d}', fill='black', font=font)
    step = 5 if max_rank <= 20 else 10
    ticks = sorted({1, max_rank, *range(step, max_rank + 1, step)} | ({5} if max_rank >= 5 else set()))
    for rank in ticks:
        x = x_of(rank)
        draw.line([(x, top + plot_h), (x, top + plot_h + 5)], fill='black')
        draw.text((x - 6, top + plot_h + 8), str(rank), fill='black', font=font)
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill='black', width=2)
    draw.text((left + plot_w // 2 - 14, height - 22), 'Rank', fill='black', font=font)
    draw.text((6, top - 24), 'Matching rate (%)', fill='black', font=font)
    draw.text((left + (plot_w - probe.textlength(title, font=font)) / 2, 8), title, fill='black', font=font)

    for index, values in enumerate(curves.values()):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        points = [(x_of(rank), y_of(float(rate))) for rank, rate in enumerate(values, start=1)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        x, y = points[0]
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    box_right, box_bottom = left + plot_w - pad, top + plot_h - pad
    box_left, box_top = box_right - legend_w, box_bottom - line_h * len(labels) - pad
    draw.rectangle([box_left, box_top, box_right, box_bottom], fill='white', outline=(160, 160, 160))
    for index, text in enumerate(labels):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        y = box_top + pad + line_h * index
        draw.line([(box_left + pad, y + 6), (box_left + pad + swatch, y + 6)], fill=colour, width=3)
        draw.text((box_left + pad + swatch + pad, y), text, fill='black', font=font)
    return save_picture(canvas, path)
