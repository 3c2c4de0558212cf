"""Pictures of an evaluated run, drawn with PIL only: ranked lists and CMC curves."""
from pathlib import Path
from typing import Mapping, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ['draw_ranked_lists', 'draw_cmc_curves']

Item = Tuple[str, int, int]  # (path, pid, camid), as hbfp_timm.data readers give them

MATCH_COLOUR = (20, 160, 60)
MISMATCH_COLOUR = (210, 30, 30)
QUERY_COLOUR = (40, 90, 200)
CURVE_COLOURS = ((40, 90, 200), (220, 120, 20), (20, 160, 60), (170, 40, 160), (110, 110, 110), (210, 30, 30))


def _thumbnail(path: str, size: Tuple[int, int], border: int, colour: Tuple[int, int, int]) -> Image.Image:
    with Image.open(path) as image:
        image = image.convert('RGB').resize(size, Image.BILINEAR)
    framed = Image.new('RGB', (size[0] + 2 * border, size[1] + 2 * border), colour)
    framed.paste(image, (border, border))
    return framed


def draw_ranked_lists(
        distmat: np.ndarray,
        query: Sequence[Item],
        gallery: Sequence[Item],
        path: Path,
        num_queries: int = 4,
        top_k: int = 10,
        thumb_size: Tuple[int, int] = (64, 128),
) -> Path:
    """One row per query: the query, then its ``top_k`` nearest gallery images.

    Gallery images of the query's identity seen by the query's camera are left out, as the evaluation
    protocol removes them. Borders: blue for the query, green for a right identity, red for a wrong one.
    Queries are spread evenly over the query list (deterministic).

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
    border, gap, label_height = 4, 12, 16
    cell_w, cell_h = thumb_size[0] + 2 * border, thumb_size[1] + 2 * border
    rows = np.unique(np.linspace(0, len(query) - 1, num=min(num_queries, len(query))).round().astype(int))
    canvas = Image.new('RGB', (cell_w * (top_k + 1) + gap * (top_k + 1), len(rows) * (cell_h + label_height + gap)),
                       'white')
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    g_pids = np.array([pid for _, pid, _ in gallery])
    g_cams = np.array([cam for _, _, cam in gallery])
    for row, q in enumerate(rows):
        q_path, q_pid, q_cam = query[q]
        top = row * (cell_h + label_height + gap)
        draw.text((2, top), f'query {q_pid}/c{q_cam + 1}', fill='black', font=font)
        canvas.paste(_thumbnail(q_path, thumb_size, border, QUERY_COLOUR), (0, top + label_height))
        order = np.argsort(distmat[q], kind='stable')
        kept = order[~((g_pids[order] == q_pid) & (g_cams[order] == q_cam))][:top_k]
        for rank, g in enumerate(kept, start=1):
            colour = MATCH_COLOUR if g_pids[g] == q_pid else MISMATCH_COLOUR
            left = (cell_w + gap) * rank + gap
            draw.text((left + 2, top), f'#{rank}', fill=colour, font=font)
            canvas.paste(_thumbnail(gallery[g][0], thumb_size, border, colour), (left, top + label_height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def draw_cmc_curves(
        curves: Mapping[str, Sequence[float]],
        path: Path,
        title: str,
        size: Tuple[int, int] = (640, 440),
) -> Path:
    """CMC curves (matching rate against rank) of one or more runs, with axes, ticks, labels and a legend.

    Args:
        curves: Legend label -> CMC values as fractions in [0, 1], index 0 being Rank-1.
        path: PNG file to write.
        title: Title drawn above the plot.
        size: (width, height) of the image.

    Returns:
        ``path``.
    """
    if not curves or any(len(values) == 0 for values in curves.values()):
        raise ValueError('curves: expected at least one non-empty CMC curve')
    width, height = size
    left, right, top, bottom = 64, 20, 36, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    max_rank = max(len(values) for values in curves.values())
    canvas = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()

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
    draw.text((left + plot_w // 2 - 3 * len(title), 8), title, fill='black', font=font)

    for index, (label, values) in enumerate(curves.items()):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        points = [(x_of(rank), y_of(float(rate))) for rank, rate in enumerate(values, start=1)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points[:1]:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = top + plot_h - 18 * (len(curves) - index) - 6
        draw.line([(left + plot_w - 210, legend_y + 6), (left + plot_w - 186, legend_y + 6)], fill=colour, width=3)
        draw.text((left + plot_w - 180, legend_y), f'{label}: R1 {100 * values[0]:.1f}%', fill='black', font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
