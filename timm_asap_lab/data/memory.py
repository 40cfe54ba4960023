"""The in-memory training path: a whole split as one uint8 tensor on the training device, augmented there.

For datasets held as one array (Fashion-MNIST, torchvision's MNIST/CIFAR-style sets), batches are
gathered from a ``(N, C, H, W)`` uint8 tensor on the device and augmented in one batched
``affine_grid``/``grid_sample`` call: timm's random-resized crop (``data.scale``/``data.ratio``), a
CIFAR-style random shift of up to ``data.crop_padding`` pixels with zero fill, and a horizontal flip
(``data.hflip``). No DataLoader, no worker processes, no per-image Python.

The sample order is the one the DataLoader path uses (torch's ``DistributedSampler``: a permutation
drawn from ``seed + epoch``, padded to a multiple of the world size, sharded over ranks). Each batch's
augmentation is drawn from a generator seeded by (seed, epoch, rank, batch), so a run resumed in the
middle of an epoch sees exactly the batches the uninterrupted run saw.

Differences from the DataLoader path's timm transforms: bilinear sampling from the stored image (PIL
uses the configured filter), validation images resized once with ``torch.nn.functional.interpolate``
(antialiased), and another random stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from timm_asap_lab.data.classes import check_labels
from timm_asap_lab.data.errors import DataError

__all__ = ['MemoryAugment', 'array_images', 'images_nbytes', 'to_device_images', 'augment_batch',
           'sample_order', 'MemoryTrainBatches', 'MemoryEvalBatches']

# ITU-R 601-2 luma, what PIL's convert('L') uses
_LUMA = (0.299, 0.587, 0.114)
_ATTEMPTS = 10  # random-resized-crop tries per image before the whole image is used (as torchvision)


@dataclass
class MemoryAugment:
    """Batched augmentation settings (from the ``data`` section).

    Attributes:
        size: output side length (``model.img_size``).
        scale: random-resized-crop area range (fractions of the image).
        ratio: aspect-ratio range.
        hflip: horizontal-flip probability.
        padding: random shift of up to this many output pixels, zero fill.
        enabled: False: resize only (``data.no_aug``).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    padding: int = 0
    enabled: bool = True


def array_images(ds) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor] | None:
    """The (images, labels) arrays of a dataset held as one array, or None for any other dataset.

    Knows :class:`~timm_asap_lab.data.FashionMNIST` (``images``/``targets``) and torchvision's array datasets
    (``data`` of shape ``(N, H, W)`` or ``(N, H, W, C)``, uint8, and ``targets``).
    """
    images = getattr(ds, 'images', None)
    if images is None:
        images = getattr(ds, 'data', None)
    labels = getattr(ds, 'targets', None)
    if images is None or labels is None or not hasattr(images, 'shape') or images.ndim not in (3, 4):
        return None
    if str(images.dtype) not in ('uint8', 'torch.uint8') or len(labels) != len(images):
        return None
    return images, labels


def images_nbytes(images, in_chans: int, count: int | None = None) -> int:
    """Bytes of ``count`` (default: all) images held with ``in_chans`` channels as uint8."""
    n = len(images) if count is None else count
    return int(n * in_chans * images.shape[1] * images.shape[2])


def to_device_images(images, labels, in_chans: int, device: torch.device, indices: list[int] | None = None,
                     num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, in_chans, H, W)`` uint8 images and int64 labels on ``device`` (grey repeated, RGB to luma).

    Raises:
        DataError: labels outside ``0..num_classes-1``.
    """
    x = torch.as_tensor(np.asarray(images))
    y = torch.as_tensor(np.asarray(labels)).long()
    if indices is not None:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = x[idx], y[idx]
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 3 and in_chans == 1:
        w = torch.tensor(_LUMA).view(1, 3, 1, 1)
        x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif x.shape[1] == 1 and in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != in_chans:
        raise DataError(f"the images have {x.shape[1]} channels; model.in_chans={in_chans} cannot be made from them")
    check_labels(y, num_classes)
    return x.contiguous().to(device), y.to(device)


def sample_order(n: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> torch.Tensor:
    """This rank's sample indices for ``epoch``: the order of torch's ``DistributedSampler(shuffle=True,
    drop_last=False)`` with ``seed``, as one tensor on ``device``."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[:total - n]])
    return order[rank:total:world_size].to(device)


def _crop_boxes(n: int, aug: MemoryAugment, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-resized-crop width and height fractions of ``n`` square images, as torchvision draws them."""
    area = torch.empty(n, _ATTEMPTS, device=device).uniform_(aug.scale[0], aug.scale[1], generator=g)
    log_r = torch.empty(n, _ATTEMPTS, device=device).uniform_(math.log(aug.ratio[0]), math.log(aug.ratio[1]),
                                                             generator=g)
    r = torch.exp(log_r)
    w, h = torch.sqrt(area * r), torch.sqrt(area / r)
    ok = (w <= 1) & (h <= 1)
    found = ok.any(1)
    first = ok.float().argmax(1, keepdim=True)  # the first attempt that fits; none fits: the whole image
    whole = torch.ones(n, device=device)
    return torch.where(found, w.gather(1, first)[:, 0], whole), torch.where(found, h.gather(1, first)[:, 0], whole)


def augment_batch(x: torch.Tensor, aug: MemoryAugment, g: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch on its device: crop, shift, flip, resize to ``aug.size``; float 0..255 out.

    Args:
        x: ``(B, C, H, W)`` uint8.
        aug: the settings.
        g: a generator on ``x``'s device.

    Shape:
        ``(B, C, H, W)`` -> ``(B, C, size, size)``.
    """
    b, dev = x.shape[0], x.device
    xf = x.float()
    if not aug.enabled:
        return _resize(xf, aug.size)
    w, h = _crop_boxes(b, aug, g, dev)
    cx = (torch.rand(b, device=dev, generator=g) * 2 - 1) * (1 - w)  # crop centre, normalised coordinates
    cy = (torch.rand(b, device=dev, generator=g) * 2 - 1) * (1 - h)
    if aug.padding:
        shift = torch.randint(-aug.padding, aug.padding + 1, (2, b), device=dev, generator=g).float()
        cx = cx + w * 2 * shift[0] / aug.size
        cy = cy + h * 2 * shift[1] / aug.size
    flip = torch.where(torch.rand(b, device=dev, generator=g) < aug.hflip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], aug.size, aug.size], align_corners=False)
    return F.grid_sample(xf, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def _resize(xf: torch.Tensor, size: int, mode: str = 'bilinear') -> torch.Tensor:
    if xf.shape[-2:] == (size, size):
        return xf
    mode = mode if mode in ('bilinear', 'bicubic') else 'bilinear'
    return F.interpolate(xf, size=(size, size), mode=mode, antialias=True, align_corners=False)


def _normalise(xf: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (xf / 255.0 - mean) / std


def _stats(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


class MemoryTrainBatches:
    """Training batches of a split held on the device: ``len()`` batches per epoch (this rank, the last
    incomplete one dropped); :meth:`epoch` yields ``(images, labels)`` from a batch position on.

    Args:
        images: ``(N, C, H, W)`` uint8 on the training device.
        labels: ``(N,)`` int64 on the same device.
        batch_size: images per batch.
        aug: augmentation settings.
        mean: normalisation mean (``C`` values).
        std: normalisation std.
        seed: order and augmentation seed.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, aug: MemoryAugment,
                 mean, std, seed: int, rank: int = 0, world_size: int = 1):
        self.images, self.labels, self.batch_size, self.aug = images, labels, batch_size, aug
        self.mean, self.std = _stats(mean, images.device), _stats(std, images.device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.samples_per_epoch = math.ceil(len(images) / world_size)
        self.generator = torch.Generator(device=images.device)

    def __len__(self) -> int:
        return self.samples_per_epoch // self.batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start`` on."""
        order = sample_order(len(self.images), epoch, self.seed, self.rank, self.world_size, self.images.device)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            key = ((self.seed * 1_000_003 + epoch) * 1_000_033 + self.rank) * 1_000_037 + i
            self.generator.manual_seed(key % (2 ** 63))
            x = augment_batch(self.images[idx], self.aug, self.generator)
            yield _normalise(x, self.mean, self.std), self.labels[idx]


class MemoryEvalBatches:
    """Evaluation batches of a split held on the device, resized once to ``size``: every image once over
    all ranks (indices ``rank, rank + world, ...``), in order; iterating yields ``(images, labels)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, size: int, mean, std,
                 interpolation: str = 'bilinear', crop_pct: float = 1.0, rank: int = 0, world_size: int = 1):
        shard = torch.arange(rank, len(images), world_size, device=images.device)
        h, w = images.shape[-2:]
        ch, cw = max(1, round(h * crop_pct)), max(1, round(w * crop_pct))  # the centre crop, as timm's eval
        top, left = (h - ch) // 2, (w - cw) // 2
        images = images[..., top:top + ch, left:left + cw]
        chunks = [_resize(images[shard[i:i + 4096]].float(), size, interpolation).round().clamp(0, 255)
                  .to(torch.uint8) for i in range(0, len(shard), 4096)]
        self.images = torch.cat(chunks) if chunks else images[:0]
        self.labels = labels[shard]
        self.batch_size = batch_size
        self.mean, self.std = _stats(mean, images.device), _stats(std, images.device)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.images), self.batch_size):
            x = self.images[i:i + self.batch_size].float()
            yield _normalise(x, self.mean, self.std), self.labels[i:i + self.batch_size]
