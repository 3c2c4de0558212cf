"""Image transforms of the paper's recipe (HBFP-Net 4.2): flip, random erasing and cutout for training;
resize and normalise for test."""
from typing import Callable, Optional, Sequence, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

__all__ = ['Cutout', 'build_train_transform', 'build_test_transform']


class Cutout:
    """Cutout (DeVries & Taylor 2017, "Improved Regularization of CNNs with Cutout"): with probability p, zero a
    size x size square centred at a uniformly random pixel, clipped at the image border.

    Applied to a normalised (C, H, W) tensor, so zero is the data set mean colour, as in the original.

    Args:
        size: side of the square in pixels.
        probability: chance of applying it to an image.
    """

    def __init__(self, size: int, probability: float = 0.5):
        if size < 1:
            raise ValueError(f'cutout size must be >= 1, got {size}')
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f'cutout probability must be in [0, 1], got {probability}')
        self.size = size
        self.probability = probability

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.probability:
            return image
        height, width = image.shape[-2:]
        centre_y = int(torch.randint(height, ()).item())
        centre_x = int(torch.randint(width, ()).item())
        top, left = max(centre_y - self.size // 2, 0), max(centre_x - self.size // 2, 0)
        bottom, right = min(centre_y + (self.size + 1) // 2, height), min(centre_x + (self.size + 1) // 2, width)
        image = image.clone()
        image[..., top:bottom, left:right] = 0
        return image

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size}, probability={self.probability})'


def build_train_transform(
        img_size: Tuple[int, int] = (384, 128),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        flip_prob: float = 0.5,
        random_erasing_prob: float = 0.5,
        cutout_prob: float = 0.5,
        cutout_size: Optional[int] = None,
) -> Callable:
    """Training transform: resize, horizontal flip, to tensor, normalise, random erasing, cutout.

    Random erasing is timm's `RandomErasing` (Zhong et al. 2020) filling the erased box with per-pixel
    normal noise (`mode='pixel'`). A probability of 0 leaves the step out.

    Args:
        img_size: (height, width) of the network input.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        flip_prob: probability of a horizontal flip.
        random_erasing_prob: probability of random erasing.
        cutout_prob: probability of cutout.
        cutout_size: side of the cutout square; **(choice)** default half the image width (64 for 384x128), the
            paper gives no size.

    Returns:
        A callable taking an RGB PIL image and returning a (3, H, W) float tensor.
    """
    height, width = img_size
    steps = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if flip_prob > 0:
        steps.append(T.RandomHorizontalFlip(flip_prob))
    steps += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    if random_erasing_prob > 0:
        steps.append(RandomErasing(probability=random_erasing_prob, mode='pixel', device='cpu'))
    if cutout_prob > 0:
        steps.append(Cutout(cutout_size if cutout_size is not None else max(width // 2, 1), cutout_prob))
    return T.Compose(steps)


def build_test_transform(
        img_size: Tuple[int, int] = (384, 128),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """Test transform: resize and normalise.

    Args:
        img_size: (height, width) of the network input.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.

    Returns:
        A callable taking an RGB PIL image and returning a (3, H, W) float tensor.
    """
    return T.Compose([
        T.Resize(tuple(img_size), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
    ])
