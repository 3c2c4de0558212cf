"""Images per second that JPEG decoding and the paper's training augmentation deliver, by number of workers.

The speed benchmark sets this beside what the model consumes in training, so that input never becomes the
bottleneck unnoticed. The images are synthetic pedestrians (``hbfp_timm.data.synthetic``) at Market-1501's size (64x128
pixels, JPEG), read through the trainer's own dataset class and transform (``build_train_transform``: resize to the
network input, flip, random erasing, cutout, normalisation), batched by a ``DataLoader`` the way the trainer batches.
"""
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from hbfp_timm.data import ImageDataset, build_dataset, build_train_transform
from hbfp_timm.data.synthetic import generate_synthetic_dataset

__all__ = ['loader_throughput']

# Market-1501's bounding boxes are 128 pixels high and 64 wide.
MARKET_IMAGE_SIZE = (128, 64)


def loader_throughput(
        workers: Sequence[int],
        img_size: Tuple[int, int] = (384, 128),
        batch_size: int = 64,
        batches: int = 8,
        folder: Optional[str] = None,
) -> Dict[int, float]:
    """Training images per second delivered by the data pipeline for each number of workers.

    Args:
        workers: Numbers of loader worker processes to measure (0: in the main process).
        img_size: Network input (height, width) of the transform.
        batch_size: Images per batch.
        batches: Batches timed per measurement, after one untimed batch (worker start-up and first reads).
        folder: Where the synthetic images are written; a temporary folder by default.

    Returns:
        workers -> images per second.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder or tmp)
        # Enough distinct files that the timed batches do not re-read one file many times.
        num_ids = max(4, (batches + 1) * batch_size // 12 + 2)
        generate_synthetic_dataset(root, num_ids=min(num_ids * 2, 9999), num_cams=2, images_per_id=12,
                                   height=MARKET_IMAGE_SIZE[0], width=MARKET_IMAGE_SIZE[1], progress=False,
                                   overwrite=True)
        items = build_dataset('market_layout', root).train
        dataset = ImageDataset(items, build_train_transform(tuple(img_size)))
        return {n: _images_per_second(dataset, n, batch_size, batches) for n in workers}


def _images_per_second(dataset: ImageDataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    needed = batches + 1
    if len(loader) < needed:
        raise ValueError(f'batches: {needed} batches of {batch_size} need more than the {len(dataset)} images')
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first reads are not part of the steady state
    begin = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - begin
    del iterator
    return batches * batch_size / seconds
