"""Finding unusable images before training starts rather than at the step that reads them.

Two depths:

* cheap (the default before every training run): the file exists and is not empty, PIL can parse its header
  (format, size, and the decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``), and a JPEG or PNG ends with
  its end marker. Only a file without its end marker is decoded, to confirm the truncation (a few valid files
  carry trailing bytes after the marker), so the pass reads a few kilobytes per image;
* full (``--check-images``): every image is decoded, which also finds corruption inside the data.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from ..utils.progress import progress

__all__ = ['image_problem', 'find_unreadable_images']

# Bytes at the end of a file searched for the format's end marker; writers may pad after it.
TAIL_BYTES = 1024
END_MARKERS = {'JPEG': b'\xff\xd9', 'PNG': b'IEND'}
# Header parsing and decoding release the GIL for their I/O; threads overlap it on slow (network) disks.
CHECK_THREADS = 8


def _ends_with_marker(path: str, image_format: Optional[str], size: int) -> bool:
    marker = END_MARKERS.get(image_format or '')
    if marker is None:
        return True
    with open(path, 'rb') as file:
        file.seek(max(size - TAIL_BYTES, 0))
        return marker in file.read()


def image_problem(path: str, full: bool = False) -> Optional[str]:
    """Why ``path`` cannot be used as a training or test image, or None when it can.

    Args:
        path: Image file.
        full: Decode the whole image rather than the cheap checks of the module docstring.

    Returns:
        A short reason (``'empty file (0 bytes)'``, ``'truncated: image file is truncated ...'``...), or None.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return f'cannot open it ({exc.strerror})'
    if size == 0:
        return 'empty file (0 bytes)'
    try:
        with Image.open(path) as image:
            if full or not _ends_with_marker(path, image.format, size):
                image.load()
    except Image.DecompressionBombError as exc:
        return f'too large to decode safely ({exc})'
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports undecodable data as any of these
        return str(exc) or type(exc).__name__
    return None


def find_unreadable_images(
        paths: Sequence[str],
        full: bool = False,
        show_progress: bool = False,
) -> List[Tuple[str, str]]:
    """Check many images (see :func:`image_problem`) with a few threads.

    Args:
        paths: Image files.
        full: Decode every image instead of the cheap checks.
        show_progress: Show progress (a bar on a terminal, periodic lines in a log).

    Returns:
        ``(path, reason)`` of every unusable image, in the order of ``paths``.
    """
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        reasons = pool.map(image_problem, paths, [full] * len(paths))
        reasons = list(progress(reasons, total=len(paths), desc='decoding images' if full else 'checking images',
                                disable=not show_progress, leave=False))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]
