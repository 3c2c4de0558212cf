"""Weights that ship inside the package: a trainer run's model as half-precision safetensors, checked for fidelity.

::

    python -m hbfp_timm.release RUN_DIR --tag hbfp_mobilenetv2_100.cuhk03 --images QUERY_FOLDER

writes ``hbfp_timm/weights/<tag>.safetensors`` (weight tensors as float16, vectors float32, the run's architecture,
arguments, input size and source weights' sha256 in the metadata), then loads it back through
``timm.create_model(tag, pretrained=True)`` and compares the descriptors of the images (or, without
``--images``, of seeded random inputs) with the run's float32 model: it refuses the file when the smallest
cosine similarity falls below ``1 - tolerance``. The registry (`hbfp_timm.models.registry`) names where the
file is read from; ``pretrained=True`` finds it before the Hub cache and the Hub.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import timm
import torch
from safetensors.torch import load_file, save_file

from .commands import exit_code
from .data.lists import collect_images
from .hub import MODEL_NAME, load_run
from .inference.extractor import FeatureExtractor
from .models.registry import BUNDLED_WEIGHTS
from .utils.files import follow_umask, sha256_file

__all__ = ['half_state_dict', 'descriptor_fidelity', 'release', 'main']

DEFAULT_TOLERANCE = 1e-3


def half_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Weight matrices and kernels (floating tensors of two or more dimensions) as float16; vectors (biases,
    normalisation weights and running statistics) stay float32, as do integer buffers.

    The vectors are about 2% of the bytes but most of the error: on the shipped model's 200 CUHK03 query images,
    every tensor in float16 gave a smallest descriptor cosine of 0.99888 to float32, vectors kept in float32
    0.99969 (`python -m hbfp_timm.release`, which measures it on every release).
    """
    return {k: (v.half() if v.is_floating_point() and v.ndim >= 2 else v).contiguous() for k, v in state_dict.items()}


def descriptor_fidelity(reference: torch.nn.Module, candidate: torch.nn.Module, images: torch.Tensor,
                        batch_size: int = 64) -> float:
    """The smallest cosine similarity between the two models' descriptors of the same preprocessed images."""
    worst = 1.0
    with torch.no_grad():
        for batch in images.split(batch_size):
            cosine = torch.nn.functional.cosine_similarity(reference.eval()(batch), candidate.eval()(batch), dim=1)
            worst = min(worst, float(cosine.min()))
    return worst


def release(run: Path, tag: str, images: Optional[Path] = None, tolerance: float = DEFAULT_TOLERANCE,
            output: Optional[Path] = None) -> Dict[str, object]:
    """Write the half-precision release file of a run for a registered tag and check its descriptors.

    Args:
        run: trainer run directory (``results.json`` + ``model.safetensors``).
        tag: a registered ``model.tag`` with bundled weights (``hbfp_timm.models.registry.BUNDLED_WEIGHTS``).
        images: folder of images to compare descriptors on; None: 64 seeded random inputs.
        tolerance: the file is refused when some descriptor's cosine to float32 is below ``1 - tolerance``.
        output: where to write (default: the registry's path of the tag).

    Returns:
        A summary: path, size in bytes, sha256 of source and release, smallest cosine, images compared.
    """
    if tag not in BUNDLED_WEIGHTS:
        raise ValueError(f"--tag: {tag!r} has no bundled weights file; registered: {', '.join(BUNDLED_WEIGHTS)}")
    reference, results = load_run(run)
    arch = tag.split('.')[0]
    if results['model'] != arch:
        raise ValueError(f"{run}: the run trained {results['model']}, but {tag} is {arch}")
    registered = timm.models.get_pretrained_cfg(tag)
    if list(registered.input_size[1:]) != list(results['img_size']):
        raise ValueError(f"{run}: trained at {results['img_size']}, but {tag} is registered at "
                         f'{list(registered.input_size[1:])}; change the registry first')
    source = Path(run) / MODEL_NAME if Path(run).is_dir() else Path(run)
    target = Path(output) if output else BUNDLED_WEIGHTS[tag]
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {'architecture': arch, 'tag': tag, 'model_args': json.dumps(results.get('model_args', {})),
                'img_size': json.dumps(results['img_size']), 'dataset': results['dataset'],
                'source_sha256': sha256_file(source), 'dtype': 'float16 (vectors float32)'}
    save_file(half_state_dict(load_file(str(source))), str(target), metadata=metadata)
    follow_umask(target)  # safetensors writes its file readable by the owner only

    model_args = dict(results.get('model_args', {}), pretrained_backbone=False)
    released = timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(target)), **model_args)
    if images is not None:
        extractor = FeatureExtractor(reference, img_size=tuple(results['img_size']), device='cpu')
        batch = extractor.preprocess(collect_images(images).paths)
    else:
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn(64, 3, *results['img_size'], generator=generator)
    worst = descriptor_fidelity(reference, released, batch)
    summary = {'path': str(target), 'bytes': target.stat().st_size, 'source_sha256': metadata['source_sha256'],
               'sha256': sha256_file(target), 'min_cosine': worst, 'compared': len(batch),
               'on': str(images) if images is not None else 'seeded random inputs'}
    if worst < 1.0 - tolerance:
        target.unlink()
        raise ValueError(f'{tag}: half-precision descriptors reach cosine {worst:.6f} to float32 on {len(batch)} '
                         f'inputs, below 1 - {tolerance:g}; file not written')
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m hbfp_timm.release', description=__doc__.split('\n\n')[0])
    parser.add_argument('run', help='trainer run directory (results.json + model.safetensors)')
    parser.add_argument('--tag', required=True, help='registered tag with bundled weights, e.g. '
                                                     'hbfp_mobilenetv2_100.cuhk03')
    parser.add_argument('--images', type=Path, help='folder of images for the fidelity check (default: random '
                                                    'inputs)')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='largest accepted 1 - cosine between float16 and float32 descriptors (%(default)s)')
    parser.add_argument('--output', type=Path, help="file to write (default: the tag's path in the package)")
    args = parser.parse_args(argv)
    try:
        summary = release(Path(args.run), args.tag, args.images, args.tolerance, args.output)
    except (OSError, ValueError) as error:
        print(f'{parser.prog}: error: {error}', file=sys.stderr)
        return exit_code(error)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
