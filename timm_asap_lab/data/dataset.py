"""Datasets of a run configuration: the built-in Fashion-MNIST, or anything ``timm.data`` reads.

:func:`create_split_dataset` builds the raw dataset of one split (PIL images and labels);
:class:`SampleDataset` wraps it for training and evaluation: it applies the transform with a random
state derived from (seed, epoch, index), so augmentation does not depend on worker count, world
size or where a resumed run restarts, and it replaces unreadable images by the next readable one,
counting them.
"""
from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from timm.data import ImageDataset, IterableImageDataset, create_dataset
from timm.data.readers.reader_image_in_tar import ReaderImageInTar

from timm_asap_lab.config import DataConfig
from timm_asap_lab.data.errors import DataError
from timm_asap_lab.data.fashion_mnist import FashionMNIST, is_fashion_mnist

__all__ = ['create_split_dataset', 'SampleDataset', 'dataset_classes', 'subset_indices', 'is_folder_dataset',
           'describe']

_logger = logging.getLogger(__name__)

_TRAIN_NAMES = ('train', 'training')
_EVAL_NAMES = ('validation', 'val', 'valid', 'eval', 'evaluation', 'test')
# consecutive unreadable images tolerated before a sample request fails outright
_MAX_CONSECUTIVE_BAD = 10


def is_folder_dataset(dataset: str) -> bool:
    """Whether ``data.dataset`` selects timm's folder/tar reader (``''`` or ``folder``)."""
    return dataset.lower() in ('', 'folder', 'imagefolder', 'image_folder')


def _resolve_split_path(root: Path, split: str) -> Path:
    names = [split]
    for group in (_TRAIN_NAMES, _EVAL_NAMES):
        if split in group:
            names += [n for n in group if n != split]
    for name in names:
        for path in (root / name, root / f'{name}.tar'):
            if path.exists():
                return path
    raise DataError(f"no folder or .tar for split {split!r} under {root} (looked for {names}); "
                    f"set data.train_split/data.val_split to the sub-folder's name")


def _folder_dataset(root: Path, split: str, mode: str) -> ImageDataset:
    if not root.exists():
        raise DataError(f"data.data_dir {str(root)!r} does not exist")
    if root.is_dir() and not any(root.iterdir()):
        raise DataError(f"data.data_dir {str(root)!r} is empty")
    path = _resolve_split_path(root, split)
    if path.is_dir():
        entries = list(path.iterdir())
        if not entries:
            raise DataError(f"split folder {str(path)!r} is empty")
        tars = [p for p in entries if p.suffix == '.tar' and p.is_file()]
        if tars and len(tars) == len([p for p in entries if not p.name.startswith(('.', '_'))]):
            # a folder of tar shards: one tar per class, or tars holding class sub-folders
            return ImageDataset(str(path), reader=ReaderImageInTar(str(path)), input_img_mode=mode)
    try:
        return create_dataset('', root=str(path), split=split, search_split=False, input_img_mode=mode)
    except (RuntimeError, AssertionError) as e:  # timm: "Found 0 images in subfolders of ..."
        raise DataError(f"no images found for split {split!r} in {str(path)!r}: {e}") from None


def create_split_dataset(cfg: DataConfig, split: str, *, in_chans: int, is_training: bool = False,
                         batch_size: int = 1, seed: int = 42) -> torch.utils.data.Dataset:
    """The untransformed dataset of one split.

    Args:
        cfg: the ``data`` section; ``cfg.dataset`` picks the reader: ``fashion_mnist`` (built in), ``''``
            or ``folder`` (ImageFolder layout, a ``<split>.tar``, or a folder of ``.tar`` shards under
            ``data_dir``), or any other name ``timm.data.create_dataset`` accepts (``hfds/<name>``,
            ``wds/<name>``, ``torch/<name>``, ...).
        split: split name (folder name for folder datasets).
        in_chans: 1 (grey) or 3 (RGB) channels of the returned images.
        is_training: passed to timm for iterable datasets (enables their shuffling).
        batch_size: batch-size hint for iterable datasets.
        seed: shuffle seed for iterable datasets.

    Returns:
        A map-style dataset of (PIL image, label) (timm ``ImageDataset``, :class:`FashionMNIST`, a
        torchvision dataset), or a timm ``IterableImageDataset`` for streaming readers.

    Raises:
        DataError: missing or empty data folder, missing split, no images.
    """
    mode = 'L' if in_chans == 1 else 'RGB'
    if is_fashion_mnist(cfg.dataset):
        return FashionMNIST(cfg.data_dir, split, in_chans=in_chans, download=cfg.download)
    if is_folder_dataset(cfg.dataset):
        if not cfg.data_dir:
            raise DataError("data.data_dir: required for folder datasets (data.dataset '' or 'folder')")
        return _folder_dataset(Path(cfg.data_dir), split, mode)
    try:
        ds = create_dataset(cfg.dataset, root=cfg.data_dir, split=split, is_training=is_training,
                            batch_size=batch_size, seed=seed, input_img_mode=mode, download=cfg.download)
    except ImportError as e:
        raise DataError(f"data.dataset {cfg.dataset!r} needs a package that is not installed: {e}") from None
    if not isinstance(ds, torch.utils.data.IterableDataset) and len(ds) == 0:
        raise DataError(f"data.dataset {cfg.dataset!r} split {split!r} holds no images")
    return ds


def dataset_classes(ds) -> list[str] | None:
    """Class names of a dataset in label order, when the reader knows them (else None)."""
    if isinstance(ds, SampleDataset):
        ds = ds.dataset
    if isinstance(ds, FashionMNIST):
        return list(ds.classes)
    reader = getattr(ds, 'reader', None)
    class_to_idx = (getattr(reader, 'class_to_idx', None) or getattr(reader, 'class_name_to_idx', None)
                    or getattr(ds, 'class_to_idx', None))
    if class_to_idx:
        names = sorted(class_to_idx, key=class_to_idx.get)
        return [str(n) for n in names]
    classes = getattr(ds, 'classes', None)
    if classes:
        return [str(c) for c in classes]
    return None


def subset_indices(total: int, n: int | None) -> list[int] | None:
    """A fixed random subset of ``n`` of ``total`` indices (sorted), the same on every run; None for all.

    The subset is drawn with a generator of fixed seed, independent of the run's seed, so runs that
    differ only in their seed see the same images. Folder datasets are sorted by class, so the first
    ``n`` images would cover only the first classes: a random subset keeps all classes.
    """
    if n is None or n >= total:
        return None
    g = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(total, generator=g)[:n].tolist())


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2 ** 63)


@contextmanager
def _seeded_rng(seed: int):
    """Seed Python's, NumPy's and torch's CPU global RNGs for one sample; restore them afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


class SampleDataset(torch.utils.data.Dataset):
    """Transformed samples of a map-style dataset, reproducible per (seed, epoch, index).

    Items are requested as ``index`` or ``(epoch, index)`` (what :class:`ResumableSampler` yields)
    and returned as ``(image_tensor, label, unreadable)``, where ``unreadable`` counts the images
    that failed to decode and were replaced by the following readable one.

    Args:
        dataset: map-style dataset of (PIL image, label): :class:`FashionMNIST`, a timm ``ImageDataset``
            or a torchvision dataset (its own transform is cleared).
        transform: PIL image -> tensor.
        seed: base of the per-sample random state.
        indices: the subset of ``dataset`` to expose (None: all).
        in_chans: channel count the images are converted to (timm/torchvision images).
    """

    def __init__(self, dataset, transform: Callable, seed: int = 0, indices: list[int] | None = None,
                 in_chans: int = 3):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise TypeError("SampleDataset wraps map-style datasets; iterable datasets apply transforms themselves")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.indices = indices
        self.mode = 'L' if in_chans == 1 else 'RGB'
        if not isinstance(dataset, (FashionMNIST, ImageDataset)) and hasattr(dataset, 'transform'):
            dataset.transform = None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def _load(self, index: int) -> tuple[Image.Image, Any]:
        ds = self.dataset
        if isinstance(ds, FashionMNIST):
            return ds.load(index)
        if isinstance(ds, ImageDataset):
            img, target, *_ = ds.reader[index]
            if not isinstance(img, Image.Image):
                img = Image.open(img)
            img = img.convert(self.mode)  # decodes the pixels, so a truncated file fails here
            return img, (-1 if target is None else target)
        img, target = ds[index]
        if isinstance(img, Image.Image) and img.mode != self.mode:
            img = img.convert(self.mode)
        return img, target

    def __getitem__(self, key):
        epoch, pos = key if isinstance(key, tuple) else (0, key)
        n = len(self)
        unreadable = 0
        for _ in range(_MAX_CONSECUTIVE_BAD):
            index = self.indices[pos] if self.indices is not None else pos
            try:
                img, target = self._load(index)
                break
            except (OSError, ValueError, SyntaxError) as e:  # PIL decode errors, truncated or missing files
                unreadable += 1
                name = self._name(index)
                _logger.debug(f"unreadable image {name}: {e}")
                pos = (pos + 1) % n
        else:
            raise DataError(f"{_MAX_CONSECUTIVE_BAD} consecutive unreadable images ending at index {index} "
                            f"({self._name(index)})")
        with _seeded_rng(_sample_seed(self.seed, epoch, key[1] if isinstance(key, tuple) else key)):
            x = self.transform(img)
        return x, target, unreadable

    def _name(self, index: int) -> str:
        try:
            return str(self.dataset.filename(index))
        except (AttributeError, NotImplementedError, IndexError, KeyError, TypeError):
            return f'#{index}'


def _is_iterable(ds) -> bool:
    return isinstance(ds, (torch.utils.data.IterableDataset, IterableImageDataset))


def describe(ds) -> str:
    """A short description of a dataset for the log."""
    base = ds.dataset if isinstance(ds, SampleDataset) else ds
    root = getattr(base, 'root', None) or getattr(getattr(base, 'reader', None), 'root', None)
    size = 'streaming' if _is_iterable(ds) else f'{len(ds)} images'
    return f"{type(base).__name__}({size}{', ' + os.fspath(root) if root else ''})"
