"""Embed a folder or a list of images: ``python -m hbfp_timm.embed DIR_OR_LIST --model M --output feats.safetensors``.

The input is a folder (every ``.jpg``/``.jpeg``/``.png``/``.bmp`` under it, recursively, in sorted order), a
list file (``.csv`` / ``.txt`` of ``path[,pid[,camid]]``, see `hbfp_timm.data.lists`) or one image. The output
is the embeddings file of :mod:`hbfp_timm.inference.embeddings` (descriptors, paths, identities and cameras when
known, and how they were made: ``--model``, the ``--checkpoint`` file's absolute path and SHA-256, ``--untrained``,
the ``--model-arg`` values, the SHA-256 of the weights as loaded, input size and ``--flip``);
``python -m hbfp_timm.search`` takes it as ``--query`` or ``--gallery``.
"""
import argparse
from typing import Optional, Sequence

from .commands import USER_ERRORS, add_model_arguments, command_error, extractor_from_args, output_file, run_command
from .inference.embeddings import embed, save_embeddings

__all__ = ['main']


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.embed``; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.embed',
        description='Describe every image of a folder, a list file or one image with a Re-ID model, and write the '
                    'descriptors with their paths (and identities when known) to a safetensors file.')
    parser.add_argument('input', help='folder of images (recursive), .csv/.txt list of path[,pid[,camid]], or an image')
    parser.add_argument('--output', required=True, metavar='FILE',
                        help='embeddings file to write (its name ends with .safetensors)')
    parser.add_argument('--half', action='store_true', help='store the descriptors as float16 (half the size)')
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        output = output_file('--output', args.output, '.safetensors')
        extractor = extractor_from_args(args)
        embeddings, seconds = embed(args.input, extractor, half=args.half, model_name=str(args.model),
                                    skip_bad_images=args.skip_bad_images, checkpoint=args.checkpoint,
                                    untrained=args.untrained, model_args=dict(args.model_arg))
        save_embeddings(output, embeddings)
    except USER_ERRORS as error:
        return command_error(parser, error)
    count, dim = embeddings.features.shape
    print(f'{count} images -> {dim}-d descriptors in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} images/s, '
          f'{extractor.device}, batch {extractor.batch_size}); identities '
          f'{"known" if embeddings.pids is not None else "unknown"}; wrote {output}')
    return 0


if __name__ == '__main__':
    run_command(main)
