"""Evaluation images: any (image, label) dataset, timm.data datasets, Fashion-MNIST, and the
pre-generated ImageNet-C / CIFAR-10-C layouts.

Images are handled as uint8 (C, H, W) tensors (what corruptions act on); models see them as floats
in [0, 1]. A dataset may yield uint8 tensors, float tensors in [0, 1], PIL images or uint8 HWC
arrays; anything else (e.g. normalised tensors) is rejected with a clear error.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.utils.data
from tqdm.auto import tqdm

_logger = logging.getLogger(__name__)

__all__ = [
    'EvalImages', 'to_uint8_chw', 'select_indices', 'load_images', 'create_eval_dataset', 'eval_transform',
    'ImageNetCFolder', 'CifarCDataset', 'find_imagenet_c_dir',
]


class EvalImages:
    """A fixed set of evaluation images held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        indices: positions of the images in the source dataset (for matching pre-generated data).
        name: a description of the source, recorded in result rows.
        unreadable: selected images that could not be decoded and were skipped (not replaced).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int] | None = None,
                 name: str = 'custom', unreadable: int = 0):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"EvalImages needs a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"EvalImages needs one label per image, got {tuple(labels.shape)} for {len(images)} images")
        if len(images) == 0:
            raise ValueError("no evaluation images: the dataset or the selected subset is empty")
        self.images = images
        self.labels = labels.long()
        self.indices = list(range(len(images))) if indices is None else [int(i) for i in indices]
        self.name = name
        self.unreadable = int(unreadable)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def float(self, device=None) -> torch.Tensor:
        """All images as floats in [0, 1]."""
        return self.images.to(device).float().div_(255)


def to_uint8_chw(img: Any) -> torch.Tensor:
    """One image as a uint8 (C, H, W) tensor.

    Accepts uint8 tensors (C, H, W), float tensors in [0, 1] (rounded to 1/255 steps), PIL images and
    numpy arrays (H, W) / (H, W, C).

    Raises:
        ValueError: float values outside [0, 1] (e.g. normalised images) or an unsupported type/shape.
    """
    if isinstance(img, torch.Tensor):
        t = img
    elif isinstance(img, np.ndarray):
        arr = img[..., None] if img.ndim == 2 else img
        if arr.ndim != 3:
            raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {img.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    else:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a dependency of torchvision
            Image = None
        if Image is not None and isinstance(img, Image.Image):
            arr = np.asarray(img)
            return to_uint8_chw(arr)
        raise ValueError(f"unsupported image type {type(img).__name__}; expected a tensor, PIL image or array")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.is_floating_point():
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; give the evaluation "
                             "un-normalised images (the model wrapper normalises)")
        return t.mul(255).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    raise ValueError(f"unsupported image dtype {t.dtype}; expected uint8 or float in [0, 1]")


def select_indices(total: int, count: int | None, seed: int, order: str = 'random') -> list[int]:
    """The dataset positions evaluated: ``count`` of ``total``, a seeded random subset or the first ones.

    Raises:
        ValueError: an empty dataset, a count below 1, or an unknown order.
    """
    if total <= 0:
        raise ValueError("the evaluation dataset is empty")
    if order not in ('random', 'first'):
        raise ValueError(f"subset order must be 'random' or 'first', got {order!r}")
    if count is None or count >= total:
        return list(range(total))
    if count < 1:
        raise ValueError(f"example count must be >= 1, got {count}")
    if order == 'first':
        return list(range(count))
    perm = np.random.default_rng(seed).permutation(total)[:count]
    return sorted(int(i) for i in perm)


def _sample(item) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise ValueError(f"dataset items must be (image, label, ...) tuples, got {type(item).__name__}")


class _Unreadable(NamedTuple):
    """An image that failed to decode (kept in place of the item, so the reader can skip and count it)."""

    index: int
    name: str
    error: str


def _as_list(batch):
    return batch


class _ReadOrSkip(torch.utils.data.Dataset):
    """Items ``idx[k]`` of a dataset as ``(index, item)``, or ``(index, _Unreadable)`` for an undecodable image.

    timm's ``ImageDataset`` answers a decode error with the next image (a duplicate under the bad
    image's position); here its reader is read directly so the bad image is reported instead.
    """

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, index: int):
        from PIL import Image
        from timm.data import ImageDataset

        ds = self.dataset
        if not isinstance(ds, ImageDataset) or ds.load_bytes:
            return ds[index]
        img, target, *_ = ds.reader[index]
        img = img if isinstance(img, Image.Image) else Image.open(img)
        img = img.convert(ds.input_img_mode or img.mode)  # decodes the pixels: a damaged file fails here
        if ds.transform is not None:
            img = ds.transform(img)
        target = -1 if target is None else (ds.target_transform(target) if ds.target_transform else target)
        return img, target

    def __getitem__(self, k: int):
        index = self.indices[k]
        try:
            return index, self._read(index)
        except (OSError, SyntaxError) as e:  # PIL: truncated, corrupt or unidentified image files
            try:
                name = str(self.dataset.filename(index))
            except (AttributeError, NotImplementedError, IndexError, KeyError, TypeError):
                name = f'#{index}'
            return index, _Unreadable(index, name, f'{type(e).__name__}: {e}')


def load_images(dataset, count: int | None = None, seed: int = 0, order: str = 'random', workers: int = 0,
                batch_size: int = 64, name: str | None = None, progress: bool = True,
                max_unreadable: float = 0.01) -> EvalImages:
    """Read ``count`` images of a map-style dataset (or DataLoader) into memory.

    Images that cannot be decoded are skipped (not replaced by another image) and counted in
    :attr:`EvalImages.unreadable`; more than ``max_unreadable`` of the selected images is an error
    (the fine-tuning tool's ``data.max_unreadable`` policy).

    Args:
        dataset: a ``torch.utils.data.Dataset`` of (image, label, ...) items, a DataLoader (its
            dataset is used), or an :class:`EvalImages` (returned, subset to ``count``).
        count: number of images (None: all).
        seed: seed of the random subset.
        order: ``'random'`` (seeded subset) or ``'first'``.
        workers: DataLoader workers for reading/decoding.
        batch_size: read batch size.
        name: description recorded in result rows (default: the dataset's class name).
        progress: show a progress bar.
        max_unreadable: fraction of the selected images that may be unreadable.

    Returns:
        :class:`EvalImages`.

    Raises:
        ValueError: empty data, images of different sizes, images not in [0, 1]/uint8, or more
            unreadable images than ``max_unreadable`` allows (naming the first ones).
    """
    if isinstance(dataset, EvalImages):
        idx = select_indices(len(dataset), count, seed, order)
        return EvalImages(dataset.images[idx], dataset.labels[idx], [dataset.indices[i] for i in idx], dataset.name,
                          dataset.unreadable)
    if isinstance(dataset, torch.utils.data.DataLoader):
        dataset = dataset.dataset
    if not hasattr(dataset, '__len__') or not hasattr(dataset, '__getitem__'):
        raise ValueError(f"need a map-style dataset with __len__ and __getitem__, got {type(dataset).__name__}")
    total = len(dataset)
    idx = select_indices(total, count, seed, order)
    loader = torch.utils.data.DataLoader(_ReadOrSkip(dataset, idx), batch_size=batch_size, num_workers=workers,
                                         shuffle=False, collate_fn=_as_list)
    images, labels, kept, bad = [], [], [], []
    for batch in tqdm(loader, desc='load images', disable=not progress, leave=False):
        good = [(i, item) for i, item in batch if not isinstance(item, _Unreadable)]
        bad += [item for _, item in batch if isinstance(item, _Unreadable)]
        if good:
            imgs, labs = _collate_uint8([item for _, item in good])
            images.append(imgs)
            labels.append(labs)
            kept += [i for i, _ in good]
    if bad:
        shown = '; '.join(f'{b.name} ({b.error})' for b in bad[:3]) + ('; ...' if len(bad) > 3 else '')
        if len(bad) > max_unreadable * len(idx):
            raise ValueError(f"{len(bad)} of {len(idx)} selected images are unreadable, more than "
                             f"max_unreadable={max_unreadable:g} allows: {shown}")
        _logger.warning(f"skipped {len(bad)} unreadable image(s) of {len(idx)}: {shown}")
    if not images:
        raise ValueError("no evaluation images: every selected image is unreadable")
    shapes = {tuple(t.shape[1:]) for t in images}
    if len(shapes) != 1:
        raise ValueError(f"evaluation images must all have one size, got {sorted(shapes)}; use a resize/crop transform")
    return EvalImages(torch.cat(images), torch.cat(labels), kept, name or type(dataset).__name__, len(bad))


def _collate_uint8(batch):
    imgs, labels = [], []
    for item in batch:
        img, label = _sample(item)
        imgs.append(to_uint8_chw(img))
        labels.append(int(label))
    shapes = {tuple(t.shape) for t in imgs}
    if len(shapes) != 1:
        raise ValueError(f"evaluation images must all have one size, got {sorted(shapes)}; use a resize/crop transform")
    return torch.stack(imgs), torch.tensor(labels, dtype=torch.long)


def eval_transform(img_size: int, crop_pct: float = 1.0, interpolation: str = 'bilinear'):
    """timm's evaluation transform without normalisation: resize, centre crop, uint8 tensor."""
    from timm.data.transforms_factory import transforms_imagenet_eval
    return transforms_imagenet_eval(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation,
                                    normalize=False)


def create_eval_dataset(name: str, root: str | None = None, split: str = 'validation', img_size: int = 224,
                        crop_pct: float = 1.0, interpolation: str = 'bilinear', in_chans: int = 3):
    """A dataset of (uint8 image, label) at ``img_size``.

    Args:
        name: ``'fashion_mnist'`` (the project's reader of the IDX files, ``timm_asap_lab.data``), or
            anything ``timm.data.create_dataset`` reads: ``''``/``'folder'`` (ImageFolder tree under
            ``root``), ``'hfds/<name>'``, ``'torch/<name>'``, ...
        root: data folder (for Fashion-MNIST: the IDX folder, None = the default location).
        split: split name.
        img_size: output size (square).
        crop_pct: centre-crop fraction (1.0: resize the short side to ``img_size`` and crop the centre).
        interpolation: resize interpolation.
        in_chans: 1 (grey) or 3 channels.

    Raises:
        ValueError: an empty or unreadable dataset (``timm_asap_lab.data.DataError`` for missing Fashion-MNIST
            files; any name in ``timm_asap_lab.data.FASHION_MNIST_NAMES`` selects that reader).
    """
    transform = eval_transform(img_size, crop_pct, interpolation)
    from timm_asap_lab.data import FashionMNIST, is_fashion_mnist
    if is_fashion_mnist(name):
        return FashionMNIST(root, split=split, in_chans=in_chans, transform=transform, download=False)
    from timm.data import create_dataset
    name = '' if name == 'folder' else name
    if not name:  # an ImageFolder tree: timm asserts on a missing root; say what is wrong instead
        if not root:
            raise ValueError("dataset 'folder' needs a data folder (--data-dir / root) holding <split>/<class>/ images")
        if not Path(root).is_dir():
            raise ValueError(f"dataset 'folder': data folder {root} does not exist")
    try:
        dataset = create_dataset(name, root=root, split=split, is_training=False, transform=transform,
                                 input_img_mode='L' if in_chans == 1 else 'RGB')
    except RuntimeError as e:  # timm reports an empty or unreadable folder as RuntimeError
        raise ValueError(f"dataset {name or 'folder'!r} (root {root}, split {split!r}) cannot be read: {e}") from None
    if hasattr(dataset, '__len__') and len(dataset) == 0:
        raise ValueError(f"dataset {name or 'folder'!r} (root {root}, split {split!r}) is empty")
    return dataset


# ----------------------------------------------------------------------------------------------
# pre-generated corruption data

def find_imagenet_c_dir(root: str | os.PathLike, corruption: str, severity: int) -> Path:
    """``<root>/<corruption>/<severity>``, or ``<root>/<group>/<corruption>/<severity>`` (the released tars).

    Raises:
        FileNotFoundError: neither layout exists, naming both paths.
    """
    root = Path(root)
    flat = root / corruption / str(severity)
    if flat.is_dir():
        return flat
    for group in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        nested = group / corruption / str(severity)
        if nested.is_dir():
            return nested
    raise FileNotFoundError(f"no ImageNet-C folder for {corruption} severity {severity}: looked for {flat} and "
                            f"{root}/<group>/{corruption}/{severity}")


class ImageNetCFolder(torch.utils.data.Dataset):
    """One corruption and severity of a pre-generated ImageNet-C style tree ``<corruption>/<severity>/<class>/*``.

    Classes are the sorted class-folder names (the ImageNet validation order), read with timm's
    folder reader.

    Args:
        root: the ImageNet-C root.
        corruption: corruption folder name.
        severity: 1..5.
        transform: applied to each PIL image (default: uint8 tensor, no resize).
        in_chans: 1 (grey) or 3.
    """

    def __init__(self, root, corruption: str, severity: int, transform=None, in_chans: int = 3):
        from timm.data import ImageDataset
        from torchvision.transforms import PILToTensor
        self.path = find_imagenet_c_dir(root, corruption, severity)
        self.dataset = ImageDataset(str(self.path), transform=transform or PILToTensor(),
                                    input_img_mode='L' if in_chans == 1 else 'RGB')
        if len(self.dataset) == 0:
            raise ValueError(f"{self.path}: holds no images")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


class CifarCDataset(torch.utils.data.Dataset):
    """One corruption and severity of CIFAR-10-C / CIFAR-100-C: ``<root>/<corruption>.npy`` + ``labels.npy``.

    Each ``.npy`` holds the test set five times (severity 1 first), uint8 (5N, 32, 32, 3).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: a file whose length is not five times the label count.
    """

    def __init__(self, root, corruption: str, severity: int):
        root = Path(root)
        path = root / f'{corruption}.npy'
        labels_path = root / 'labels.npy'
        for p in (path, labels_path):
            if not p.is_file():
                raise FileNotFoundError(f"CIFAR-C file not found: {p}")
        data = np.load(path, mmap_mode='r')
        labels = np.load(labels_path, mmap_mode='r')
        if data.ndim != 4 or data.shape[0] % 5:
            raise ValueError(f"{path}: expected (5N, H, W, C) images, got shape {data.shape}")
        n = data.shape[0] // 5
        if len(labels) not in (n, 5 * n):
            raise ValueError(f"{labels_path}: expected {n} or {5 * n} labels for {path}, got {len(labels)}")
        self.images = data[(severity - 1) * n:severity * n]
        self.labels = labels[(severity - 1) * n:severity * n] if len(labels) == 5 * n else labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        img = torch.from_numpy(np.ascontiguousarray(self.images[index].transpose(2, 0, 1)))
        return img, int(self.labels[index])
