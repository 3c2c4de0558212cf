"""Activation maps of the low, middle and high levels before and after BFP, as in HBFP-Net Fig. 1 and Fig. 5:
``python -m hbfp_timm.activations IMAGES... --model M --output DIR``.

The paper shows CAM-style visualisations (Zhou et al., CVPR 2016) of the backbone's maps X, Y, Z ("without
BFP") and of the maps its three branches use ("with BFP"). A Re-ID descriptor model has no class weights to
weigh channels with, so, as re-identification toolkits do (torchreid's ``visualize_actmap``), a map's
activation at a position is its energy there, the sum over channels of the squared activations. Each map
is upsampled to the input size, scaled to its own range (colours compare the regions of one map, not two
maps) and overlaid on the image with a jet colour map.

* before BFP: X, Y, Z, the backbone's low, middle and high maps, as they enter the two BFP modules;
* after BFP: the maps the branches pool (``HBFPNet.forward_levels``): ``A_L = X + X~``, ``A_M = Y + Y~x + Y~z``
  and ``F_H`` (``A_H`` after the hierarchical re-feed). Untrained, the residual BFP modules are the identity, so
  the low and middle maps are unchanged until training has taught them something.

One PNG per image: two rows (before, after) of four panels (image, low, middle, high).
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .commands import USER_ERRORS, add_model_arguments, command_error, extractor_from_args, output_folder, run_command
from .data.lists import collect_images, skip_unreadable
from .inference.features import unwrap_model
from .inference.visualize import save_picture

__all__ = ['LEVELS', 'LevelMaps', 'activation_energy', 'bfp_activation_maps', 'draw_activation_maps', 'main']

LEVELS = ('low', 'mid', 'high')
LEVEL_TITLES = {'low': 'low', 'mid': 'middle', 'high': 'high'}
MIN_PANEL_HEIGHT = 192  # small inputs are enlarged for display


@dataclass
class LevelMaps:
    """Activation energy maps of a batch, per level.

    Attributes:
        before: level -> (B, h, w) energy of the backbone map entering BFP (X, Y, Z).
        after: level -> (B, h, w) energy of the map the branch pools, or None for a level that is not a branch.
    """
    before: Dict[str, torch.Tensor]
    after: Dict[str, Optional[torch.Tensor]]


def activation_energy(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): the sum over channels of the squared activations."""
    return feature_map.float().pow(2).sum(dim=1)


@torch.no_grad()
def bfp_activation_maps(model: torch.nn.Module, images: torch.Tensor) -> LevelMaps:
    """The low, middle and high activation maps before and after BFP of a preprocessed batch.

    The backbone maps are read with forward pre-hooks on the BFP modules' inputs, so the model runs once,
    unchanged, in eval mode.

    Args:
        model: an `HBFPNet` with both BFP modules (``bfp_pairs=('low_mid', 'mid_high')``).
        images: (B, 3, H, W) preprocessed images.

    Returns:
        The `LevelMaps`.
    """
    model = unwrap_model(model)
    low_mid, mid_high = getattr(model, 'bfp_low_mid', None), getattr(model, 'bfp_mid_high', None)
    if low_mid is None or mid_high is None:
        raise ValueError("model: activation maps before and after BFP need an HBFP model with both BFP modules "
                         "(bfp_pairs=('low_mid', 'mid_high'))")
    captured: Dict[str, torch.Tensor] = {}

    def keep(level):
        def hook(_module, inputs):
            captured.setdefault(level, inputs[0])
        return hook

    # BFP(X, Y) masks X and Y first, BFP(Y, Z) masks Z: their inputs are the backbone's three maps.
    handles = [low_mid.p_mask.register_forward_pre_hook(keep('low')),
               low_mid.q_mask.register_forward_pre_hook(keep('mid')),
               mid_high.q_mask.register_forward_pre_hook(keep('high'))]
    was_training = model.training
    model.eval()
    try:
        levels = dict(zip(model.branches, model.forward_levels(images)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return LevelMaps(before={level: activation_energy(captured[level]) for level in LEVELS},
                     after={level: activation_energy(levels[level]) if level in levels else None for level in LEVELS})


def _jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) uint8 colours of the jet colour map (blue, cyan, yellow, red)."""
    channels = [np.clip(1.5 - np.abs(4.0 * values - offset), 0.0, 1.0) for offset in (3.0, 2.0, 1.0)]
    return (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)


def _overlay(image: np.ndarray, energy: torch.Tensor, alpha: float) -> np.ndarray:
    height, width = image.shape[:2]
    upsampled = F.interpolate(energy[None, None], size=(height, width), mode='bilinear', align_corners=False)[0, 0]
    low, high = upsampled.min(), upsampled.max()
    scaled = ((upsampled - low) / (high - low) if high > low else torch.zeros_like(upsampled)).numpy()
    return (alpha * _jet(scaled) + (1 - alpha) * image).round().astype(np.uint8)


def draw_activation_maps(image: np.ndarray, before: Dict[str, torch.Tensor], after: Dict[str, Optional[torch.Tensor]],
                         path: Path, title: str = '', alpha: float = 0.5) -> Path:
    """One picture in the layout of the paper's Fig. 5: rows before / after BFP, columns image, low, middle, high.

    Images less than 192 pixels high are enlarged (by a whole factor) for display.

    Args:
        image: (H, W, 3) uint8 image as the network sees it (resized).
        before: level -> (h, w) energy map before BFP.
        after: level -> (h, w) energy map after BFP, or None (that level is not a branch).
        path: PNG file to write.
        title: text above the panels (e.g. the file name).
        alpha: weight of the heat map in the overlay.

    Returns:
        ``path``.
    """
    scale = -(-MIN_PANEL_HEIGHT // image.shape[0])  # ceil
    if scale > 1:
        image = np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                         Image.BILINEAR))
    height, width = image.shape[:2]
    font = ImageFont.load_default()
    gap, label_w, head_h, foot_h = 6, 86, 34, 24
    note = 'high (each map scaled to its own range)'
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    canvas_w = max(label_w + 4 * (width + gap), label_w + 136 + int(probe.textlength(note, font=font)),
                   2 * gap + int(probe.textlength(title, font=font)))
    canvas = Image.new('RGB', (canvas_w, head_h + 2 * (height + gap) + foot_h), 'white')
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 2), title, fill='black', font=font)
    for column, heading in enumerate(['image'] + [LEVEL_TITLES[level] for level in LEVELS]):
        draw.text((label_w + column * (width + gap), head_h - 14), heading, fill='black', font=font)
    for row, (label, maps) in enumerate((('before BFP', before), ('after BFP', after))):
        top = head_h + row * (height + gap)
        draw.text((gap, top + height // 2 - 6), label, fill='black', font=font)
        canvas.paste(Image.fromarray(image), (label_w, top))
        for column, level in enumerate(LEVELS, start=1):
            left = label_w + column * (width + gap)
            if maps[level] is None:
                draw.rectangle([left, top, left + width - 1, top + height - 1], fill=(235, 235, 235))
                draw.text((left + 4, top + height // 2 - 6), 'no branch', fill='black', font=font)
            else:
                canvas.paste(Image.fromarray(_overlay(image, maps[level], alpha)), (left, top))
    bar_top = head_h + 2 * (height + gap) + 4
    bar = _jet(np.linspace(0.0, 1.0, 120))[None].repeat(10, axis=0)
    draw.text((gap, bar_top), 'activation:', fill='black', font=font)
    draw.text((label_w - 22, bar_top), 'low', fill='black', font=font)
    canvas.paste(Image.fromarray(bar), (label_w + 4, bar_top + 2))
    draw.text((label_w + 130, bar_top), note, fill='black', font=font)
    return save_picture(canvas, path)


def _display_image(preprocessed: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The network input back as a uint8 picture (undoing the normalisation)."""
    image = preprocessed * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.activations``; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.activations',
        description='Draw the low, middle and high activation maps of an HBFP model before and after BFP (as in '
                    "the paper's Fig. 1 and Fig. 5), one PNG per image.")
    parser.add_argument('images', nargs='+', help='image files, folders or .csv/.txt lists')
    parser.add_argument('--output', required=True, metavar='DIR', help='folder for the PNG files')
    parser.add_argument('--max-images', type=int, default=8, help='draw at most this many images (%(default)s)')
    parser.add_argument('--alpha', type=float, default=0.5, help='weight of the heat map in the overlay (%(default)s)')
    add_model_arguments(parser, descriptors=False)
    args = parser.parse_args(argv)
    if args.max_images < 1:
        parser.error(f'--max-images: expected a positive integer, got {args.max_images}')
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f'--alpha: expected a value in [0, 1], got {args.alpha}')
    written = []
    try:
        output = output_folder('--output', args.output)  # a file in the way is said before any work
        listings = [collect_images(source) for source in args.images]
        if args.skip_bad_images:
            listings = [skip_unreadable(listing) for listing in listings]
        paths = [path for listing in listings for path in listing.paths][:args.max_images]
        extractor = extractor_from_args(args)
        batch = extractor.preprocess(paths)
        maps = bfp_activation_maps(extractor.model, batch.to(extractor.device))
        for index, path in enumerate(paths):
            image = _display_image(batch[index], extractor.mean, extractor.std)
            before = {level: energy[index].cpu() for level, energy in maps.before.items()}
            after = {level: None if energy is None else energy[index].cpu() for level, energy in maps.after.items()}
            written.append(draw_activation_maps(image, before, after, output / f'{index:03d}_{Path(path).stem}.png',
                                                title=str(path), alpha=args.alpha))
    except USER_ERRORS as error:
        return command_error(parser, error)
    print(f'wrote {len(written)} activation map picture{"" if len(written) == 1 else "s"} to {args.output}')
    return 0


if __name__ == '__main__':
    run_command(main)
