"""A synthetic pedestrian re-ID data set in the Market-1501 layout, for tests, CI and CPU demos.

    python -m hbfp_timm.data.synthetic OUT --num-ids 100 --num-cams 6 --seed 0

It imitates what makes re-ID hard, at a size a CPU can train on:

* each identity has a body (head, hair, torso, arms, legs, shoes) with its own colours, drawn from a small
  palette so that many people share colours, and textures (plain, stripes, checks); some carry a backpack, seen
  only from behind, and some a chest logo, seen only from the front;
* each camera has its own colour cast, brightness, blur, person scale, viewpoint mix (front / back / side)
  and background; some images are partly occluded or on cluttered backgrounds;
* identities are split half train, half test (disjoint); each test identity has about one query per camera it
  appears in, the rest of its images go to the gallery, with distractors (id 0000, people of no identity) and
  junk (id -1, background fragments) in the gallery as in Market-1501.

Output is deterministic for a seed (byte-identical JPEG files). Only numpy and PIL are used. The folder also gets
``synthetic.json`` (the generator's settings): the trainer records it in ``results.json``, and the model card of
a model trained on it says that the data was synthetic.
"""
import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..utils.progress import progress as progress_bar

__all__ = ['generate_synthetic_dataset', 'read_synthetic_marker', 'MARKER_NAME', 'main']

# Written next to the split folders; its presence marks a data set as synthetic.
MARKER_NAME = 'synthetic.json'

SPLIT_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')
VIEWS = ('front', 'back', 'side')

# Clothing colours (RGB); identities pick from this short list (with a little jitter) so that colour alone
# does not identify a person, as in real street scenes.
CLOTHING_PALETTE = np.array([
    (25, 25, 28), (235, 235, 230), (128, 128, 128), (30, 40, 90), (60, 110, 190), (170, 35, 40),
    (40, 110, 60), (170, 150, 105), (100, 65, 40), (220, 140, 170), (220, 190, 50), (100, 60, 140),
], dtype=np.float64)
# Scene colours of walls, pavement, grass and shade, tinted further by each camera.
BACKGROUND_PALETTE = np.array([
    (120, 120, 118), (160, 155, 145), (195, 185, 160), (90, 110, 70), (140, 90, 70), (70, 75, 85),
    (180, 180, 185), (110, 95, 80),
], dtype=np.float64)
SKIN_TONES = np.array([(235, 200, 170), (205, 160, 120), (160, 110, 75), (100, 65, 45)], dtype=np.float64)
HAIR_COLOURS = np.array([(20, 15, 10), (70, 45, 25), (150, 110, 60), (200, 190, 170)], dtype=np.float64)
TEXTURES = ('plain', 'stripes', 'checks')


@dataclass
class _Identity:
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    torso: np.ndarray
    torso_second: np.ndarray
    torso_texture: str
    stripe_width: int
    short_sleeves: bool
    legs: np.ndarray
    legs_texture: str
    shorts: bool
    shoes: np.ndarray
    backpack: Optional[np.ndarray]
    logo: Optional[np.ndarray]
    build: float


@dataclass
class _Camera:
    cast: np.ndarray
    brightness: float
    blur: float
    scale: float
    view_probabilities: np.ndarray
    background: np.ndarray
    clutter_probability: float
    occlusion_probability: float


def _palette_colour(rng: np.random.Generator, palette: np.ndarray, jitter: float = 12.0) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3), 0, 255)


def _random_identity(rng: np.random.Generator) -> _Identity:
    torso = _palette_colour(rng, CLOTHING_PALETTE)
    return _Identity(
        skin=_palette_colour(rng, SKIN_TONES, 8),
        hair=_palette_colour(rng, HAIR_COLOURS, 8),
        long_hair=bool(rng.random() < 0.35),
        torso=torso,
        torso_second=_palette_colour(rng, CLOTHING_PALETTE),
        torso_texture=TEXTURES[rng.choice(3, p=[0.5, 0.3, 0.2])],
        stripe_width=int(rng.integers(2, 5)),
        short_sleeves=bool(rng.random() < 0.4),
        legs=_palette_colour(rng, CLOTHING_PALETTE),
        legs_texture=TEXTURES[rng.choice(3, p=[0.8, 0.1, 0.1])],
        shorts=bool(rng.random() < 0.25),
        shoes=_palette_colour(rng, CLOTHING_PALETTE[:4]),
        backpack=_palette_colour(rng, CLOTHING_PALETTE) if rng.random() < 0.35 else None,
        logo=_palette_colour(rng, CLOTHING_PALETTE) if rng.random() < 0.3 else None,
        build=float(rng.uniform(0.85, 1.2)),
    )


def _random_camera(rng: np.random.Generator) -> _Camera:
    return _Camera(
        cast=rng.normal(1.0, 0.1, 3).clip(0.75, 1.25),
        brightness=float(rng.uniform(0.7, 1.2)),
        blur=float(rng.choice([0.0, 0.0, 0.5, 0.9])),
        scale=float(rng.uniform(0.72, 0.95)),
        view_probabilities=rng.dirichlet(np.full(3, 1.5)),
        background=_palette_colour(rng, BACKGROUND_PALETTE, 15),
        clutter_probability=float(rng.uniform(0.1, 0.6)),
        occlusion_probability=float(rng.uniform(0.05, 0.25)),
    )


def _rgb(colour: np.ndarray) -> Tuple[int, int, int]:
    return tuple(int(c) for c in colour)


def _textured_box(draw: ImageDraw.ImageDraw, box, base, second, texture: str, cell: int) -> None:
    """Fill a box with a plain, striped or checked pattern."""
    left, top, right, bottom = (int(round(v)) for v in box)
    draw.rectangle((left, top, right, bottom), fill=_rgb(base))
    if texture == 'stripes':
        for y in range(top + cell, bottom, 2 * cell):
            draw.rectangle((left, y, right, min(y + cell - 1, bottom)), fill=_rgb(second))
    elif texture == 'checks':
        for row, y in enumerate(range(top, bottom, cell)):
            for column, x in enumerate(range(left, right, cell)):
                if (row + column) % 2:
                    draw.rectangle((x, y, min(x + cell - 1, right), min(y + cell - 1, bottom)), fill=_rgb(second))


def _draw_background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, camera: _Camera,
                     width: int, height: int) -> None:
    base = np.clip(camera.background + rng.normal(0, 10, 3), 0, 255)
    # A floor band and a wall band, as in most surveillance views.
    horizon = int(height * rng.uniform(0.55, 0.75))
    draw.rectangle((0, 0, width, horizon), fill=_rgb(base))
    draw.rectangle((0, horizon, width, height), fill=_rgb(base * 0.75))
    if rng.random() < camera.clutter_probability:
        for _ in range(int(rng.integers(2, 7))):
            colour = _rgb(rng.uniform(0, 255, 3))
            x, y = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
            w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.05, 0.4) * height
            shape = draw.ellipse if rng.random() < 0.4 else draw.rectangle
            shape((x, y, x + w, y + h), fill=colour)


def _draw_person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, person: _Identity, view: str,
                 camera: _Camera, width: int, height: int) -> None:
    person_height = height * camera.scale * rng.uniform(0.93, 1.05)
    person_width = person_height * 0.28 * person.build
    centre_x = width / 2 + rng.normal(0, width * 0.05)
    top = (height - person_height) / 2 + rng.normal(0, height * 0.03)
    facing = 1 if rng.random() < 0.5 else -1  # side views face left or right

    def y(fraction: float) -> float:
        return top + fraction * person_height

    torso_half = person_width / 2 * (0.6 if view == 'side' else 1.0)
    cell = max(2, int(round(person.stripe_width * height / 128)))

    # Legs (stride in side view), then shoes.
    leg_colour = person.skin if person.shorts else person.legs
    leg_width = person_width * 0.22
    stride = rng.uniform(0.0, 0.25) * person_width if view == 'side' else rng.uniform(0, 0.05) * person_width
    for offset in (-1, 1):
        leg_x = centre_x + offset * (torso_half * 0.45 if view != 'side' else stride)
        box = (leg_x - leg_width / 2, y(0.52), leg_x + leg_width / 2, y(0.93))
        _textured_box(draw, box, leg_colour, person.torso_second, 'plain' if person.shorts else person.legs_texture,
                      cell)
        if person.shorts:
            draw.rectangle((box[0], y(0.52), box[2], y(0.68)), fill=_rgb(person.legs))
        draw.rectangle((box[0] - (facing * 2 if view == 'side' else 1), y(0.93), box[2] + 1, y(1.0)),
                       fill=_rgb(person.shoes))

    # Arms (skin, covered by a short or long sleeve), drawn before the torso so that it overlaps them.
    arm_width = person_width * 0.16
    arm_offsets = (facing * rng.uniform(-0.1, 0.1) * person_width,) if view == 'side' else \
        (-torso_half - arm_width / 2, torso_half + arm_width / 2)
    for offset in arm_offsets:
        arm_x = centre_x + offset
        draw.rectangle((arm_x - arm_width / 2, y(0.16), arm_x + arm_width / 2, y(0.48)), fill=_rgb(person.skin))
        sleeve_end = y(0.26 if person.short_sleeves else 0.46)
        draw.rectangle((arm_x - arm_width / 2, y(0.16), arm_x + arm_width / 2, sleeve_end), fill=_rgb(person.torso))

    torso_box = (centre_x - torso_half, y(0.15), centre_x + torso_half, y(0.54))
    _textured_box(draw, torso_box, person.torso, person.torso_second, person.torso_texture, cell)
    if view == 'front' and person.logo is not None:
        draw.rectangle((centre_x - person_width * 0.12, y(0.22), centre_x + person_width * 0.12, y(0.32)),
                       fill=_rgb(person.logo))
    if view == 'back' and person.backpack is not None:
        draw.rounded_rectangle((centre_x - torso_half * 0.8, y(0.18), centre_x + torso_half * 0.8, y(0.47)),
                               radius=max(1, int(person_width * 0.08)), fill=_rgb(person.backpack))

    # Head: face from the front, hair from behind, half and half from the side.
    head_half = person_width * 0.26
    head_box = (centre_x - head_half, y(0.0), centre_x + head_half, y(0.15))
    draw.ellipse(head_box, fill=_rgb(person.hair if view == 'back' else person.skin))
    if view == 'front':
        draw.chord(head_box, 180, 360, fill=_rgb(person.hair))
    elif view == 'side':
        draw.pieslice(head_box, 90 if facing > 0 else 270, 270 if facing > 0 else 450, fill=_rgb(person.hair))
    if person.long_hair and view != 'front':
        draw.rectangle((centre_x - head_half * 0.9, y(0.07), centre_x + head_half * 0.9, y(0.22)),
                       fill=_rgb(person.hair))


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    colour = _rgb(rng.uniform(20, 230, 3))
    if rng.random() < 0.5:  # something in front of the lower body (a car, a bench, a bin)
        top = height * rng.uniform(0.55, 0.8)
        draw.rectangle((-1, top, width, height), fill=colour)
    else:  # a pole or another pedestrian at the side
        x = width * rng.uniform(-0.1, 0.8)
        draw.rectangle((x, -1, x + width * rng.uniform(0.15, 0.35), height), fill=colour)


def _render(rng: np.random.Generator, person: Optional[_Identity], view: str, camera: _Camera,
            width: int, height: int) -> Image.Image:
    """One image; person None renders a junk image (background and fragments only)."""
    image = Image.new('RGB', (width, height))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, rng, camera, width, height)
    if person is None:
        for _ in range(int(rng.integers(1, 4))):
            _draw_occluder(draw, rng, width, height)
    else:
        _draw_person(draw, rng, person, view, camera, width, height)
        if rng.random() < camera.occlusion_probability:
            _draw_occluder(draw, rng, width, height)
    if camera.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur * height / 128))
    gain = (camera.cast * camera.brightness * rng.uniform(0.9, 1.1)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) * gain
    pixels += 5 * rng.standard_normal(pixels.shape, dtype=np.float32)  # sensor noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _file_name(pid: int, camera: int, frame: int, rng: np.random.Generator) -> str:
    pid_field = '-1' if pid == -1 else f'{pid:04d}'
    return f'{pid_field}_c{camera + 1}s{int(rng.integers(1, 7))}_{frame:06d}_{int(rng.integers(1, 9)):02d}.jpg'


def generate_synthetic_dataset(
        out: Union[str, Path],
        num_ids: int = 100,
        num_cams: int = 6,
        seed: int = 0,
        images_per_id: int = 12,
        height: int = 128,
        width: int = 64,
        num_distractors: Optional[int] = None,
        num_junk: Optional[int] = None,
        overwrite: bool = False,
        progress: bool = True,
) -> Dict[str, Union[int, str]]:
    """Write a synthetic pedestrian data set in the Market-1501 layout.

    Args:
        out: output folder; ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` are created in it.
        num_ids: number of identities (>= 2), split half train, half test.
        num_cams: number of cameras (>= 2); each identity is seen by at least two.
        seed: random seed; the same seed gives byte-identical files.
        images_per_id: images per identity (>= 2).
        height: image height in pixels.
        width: image width in pixels.
        num_distractors: gallery images of id 0000; default 10% of the test images.
        num_junk: gallery images of id -1; default 5% of the test images.
        overwrite: replace existing split folders instead of refusing to write into them.
        progress: show a tqdm progress bar.

    Returns:
        A summary: output folder and the number of identities and images per split.
    """
    if num_ids < 2 or num_ids > 9999:
        raise ValueError(f'num_ids must be in [2, 9999] (4-digit Market ids, half train half test), got {num_ids}')
    if num_cams < 2:
        raise ValueError(f'num_cams must be >= 2 (queries need a match seen by another camera), got {num_cams}')
    if images_per_id < 2:
        raise ValueError(f'images_per_id must be >= 2 (one query and one gallery match), got {images_per_id}')
    if height < 16 or width < 8:
        raise ValueError(f'image size must be at least 16x8, got {height}x{width}')
    out = Path(out)
    for folder in SPLIT_FOLDERS:
        split_dir = out / folder
        if split_dir.exists() and any(split_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(f'{split_dir} is not empty; pass overwrite=True (--overwrite) to replace it')
            shutil.rmtree(split_dir)
        split_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    cameras = [_random_camera(rng) for _ in range(num_cams)]
    pids = rng.permutation(np.arange(1, num_ids + 1))
    train_pids = sorted(int(p) for p in pids[:num_ids // 2])
    test_pids = sorted(int(p) for p in pids[num_ids // 2:])
    identities = {int(pid): _random_identity(rng) for pid in range(1, num_ids + 1)}

    # Plan every image first (cheap), then render with one progress bar.
    plan: List[Tuple[str, Optional[int], int]] = []  # (split folder, pid or None for junk, camera)
    for pid in range(1, num_ids + 1):
        seen_by = rng.choice(num_cams, size=int(rng.integers(2, min(num_cams, images_per_id) + 1)), replace=False)
        # Every camera that sees the identity gets at least one image, the rest spread at random.
        image_cams = np.concatenate([seen_by, rng.choice(seen_by, size=images_per_id - len(seen_by))])
        if pid in train_pids:
            plan += [('bounding_box_train', pid, int(c)) for c in image_cams]
            continue
        queried = set()
        for camera in image_cams:
            # One query per camera, except one camera whose images all stay in the gallery, so that every
            # query has a match seen by another camera.
            if camera not in queried and len(queried) < len(seen_by) - 1:
                queried.add(camera)
                plan.append(('query', pid, int(camera)))
            else:
                plan.append(('bounding_box_test', pid, int(camera)))
    num_test_images = sum(1 for split, _, _ in plan if split != 'bounding_box_train')
    num_distractors = int(round(0.1 * num_test_images)) if num_distractors is None else num_distractors
    num_junk = int(round(0.05 * num_test_images)) if num_junk is None else num_junk
    plan += [('bounding_box_test', 0, int(rng.integers(num_cams))) for _ in range(num_distractors)]
    plan += [('bounding_box_test', -1, int(rng.integers(num_cams))) for _ in range(num_junk)]

    frame_counter: Dict[Tuple[int, int], int] = {}
    counts = {folder: 0 for folder in SPLIT_FOLDERS}
    for index, (split, pid, camera) in enumerate(progress_bar(plan, desc='synthetic images', disable=not progress)):
        # One generator per image keeps each image independent of how many came before it.
        image_rng = np.random.default_rng([seed, index])
        if pid == 0:
            person = _random_identity(image_rng)  # a distractor: a person of no identity in the data set
        else:
            person = identities.get(pid)
        camera_setup = cameras[camera]
        view = VIEWS[image_rng.choice(3, p=camera_setup.view_probabilities)]
        image = _render(image_rng, person, view, camera_setup, width, height)
        frame = frame_counter.get((pid, camera), 0) + int(image_rng.integers(1, 60))
        frame_counter[(pid, camera)] = frame
        image.save(out / split / _file_name(pid, camera, frame, image_rng), quality=90)
        counts[split] += 1

    summary = {
        'out': str(out),
        'num_train_ids': len(train_pids),
        'num_test_ids': len(test_pids),
        'num_train_images': counts['bounding_box_train'],
        'num_query_images': counts['query'],
        'num_gallery_images': counts['bounding_box_test'],
        'num_distractors': num_distractors,
        'num_junk': num_junk,
    }
    marker = {'generator': 'python -m hbfp_timm.data.synthetic', 'seed': seed, 'num_ids': num_ids,
              'num_cams': num_cams, 'images_per_id': images_per_id, 'height': height, 'width': width,
              **{key: value for key, value in summary.items() if key != 'out'}}
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2) + '\n')
    return summary


def read_synthetic_marker(root: Union[str, Path]) -> Optional[Dict[str, Union[int, str]]]:
    """The settings :func:`generate_synthetic_dataset` recorded in ``root``, or None for a data set that was not
    generated (or whose marker is unreadable)."""
    try:
        marker = json.loads((Path(root).expanduser() / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def main(argv: Optional[List[str]] = None) -> Dict[str, Union[int, str]]:
    """Command line entry point; see ``python -m hbfp_timm.data.synthetic --help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.data.synthetic',
        description='Write a synthetic pedestrian re-ID data set in the Market-1501 layout and naming.')
    parser.add_argument('out', help='output folder')
    parser.add_argument('--num-ids', type=int, default=100, help='identities, half train half test (default 100)')
    parser.add_argument('--num-cams', type=int, default=6, help='cameras (default 6)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--images-per-id', type=int, default=12, help='images per identity (default 12)')
    parser.add_argument('--height', type=int, default=128, help='image height (default 128)')
    parser.add_argument('--width', type=int, default=64, help='image width (default 64)')
    parser.add_argument('--num-distractors', type=int, default=None,
                        help='gallery images of id 0000 (default 10%% of the test images)')
    parser.add_argument('--num-junk', type=int, default=None,
                        help='gallery images of id -1 (default 5%% of the test images)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing split folders')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    try:
        summary = generate_synthetic_dataset(
            args.out, num_ids=args.num_ids, num_cams=args.num_cams, seed=args.seed, images_per_id=args.images_per_id,
            height=args.height, width=args.width, num_distractors=args.num_distractors, num_junk=args.num_junk,
            overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, OSError) as exc:  # bad sizes; a filled, unwritable or full output folder
        parser.exit(2 if isinstance(exc, (ValueError, FileExistsError)) else 1, f'{parser.prog}: error: {exc}\n')
    print(', '.join(f'{key}={value}' for key, value in summary.items()))
    return summary


if __name__ == '__main__':
    main()
