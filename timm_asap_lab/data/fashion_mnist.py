"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) read from its IDX files.

The files are looked up in a directory, by default the one Debian's ``dataset-fashion-mnist``
package installs (``/usr/share/datasets/fashion-mnist``); when they are not there, torchvision can
download them. Images are 28x28 grey; :class:`FashionMNIST` returns them as PIL images with 1 or 3
channels so timm's transforms resize them to the model's input size (32x32 for CIFAR-size networks).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image

from timm_asap.models.weight_tags import FASHION_MNIST_LABELS
from timm_asap_lab.data.errors import DataError
from timm_asap_lab.data.idx import read_idx

__all__ = ['FashionMNIST', 'FASHION_MNIST_NAMES', 'DEFAULT_FASHION_MNIST_DIR', 'find_fashion_mnist',
           'fashion_mnist_split', 'is_fashion_mnist']

_logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

# the dataset names that select the built-in reader (fine-tuning's data.dataset, the evaluation tools' --dataset)
FASHION_MNIST_NAMES = ('fashion_mnist', 'fashion-mnist', 'fashionmnist', 'fmnist')

# split name -> file prefix
_SPLITS = {'train': 'train', 'training': 'train', 'test': 't10k', 't10k': 't10k', 'val': 't10k',
           'valid': 't10k', 'validation': 't10k', 'eval': 't10k', 'evaluation': 't10k'}


def is_fashion_mnist(dataset: str | None) -> bool:
    """Whether a dataset name selects the built-in Fashion-MNIST reader (any of :data:`FASHION_MNIST_NAMES`,
    case-insensitive).

    Example:
        >>> is_fashion_mnist('FMNIST'), is_fashion_mnist('hfds/zalando-datasets/fashion_mnist')
        (True, False)
    """
    return isinstance(dataset, str) and dataset.strip().lower() in FASHION_MNIST_NAMES


def fashion_mnist_split(split: str) -> str:
    """File prefix (``train`` or ``t10k``) of a split name (``train``, ``test``, ``validation``, ...).

    Raises:
        DataError: unknown split name.
    """
    try:
        return _SPLITS[split.lower()]
    except KeyError:
        raise DataError(f"Fashion-MNIST has no split {split!r}; allowed: {sorted(_SPLITS)}") from None


def _candidates(root: Path) -> list[Path]:
    # the flat layout (Debian, the original release) and torchvision's download layout
    return [root, root / 'FashionMNIST' / 'raw', root / 'raw']


def find_fashion_mnist(root: str | os.PathLike, split: str = 'train') -> tuple[Path, Path] | None:
    """Locate the image and label IDX files of ``split`` under ``root``.

    Looks in ``root``, ``root/FashionMNIST/raw`` (torchvision) and ``root/raw``, for the files with
    and without ``.gz``.

    Returns:
        ``(images_path, labels_path)``, or None when they are not there.
    """
    prefix = fashion_mnist_split(split)
    for folder in _candidates(Path(root)):
        for ext in ('.gz', ''):
            images = folder / f'{prefix}-images-idx3-ubyte{ext}'
            labels = folder / f'{prefix}-labels-idx1-ubyte{ext}'
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _default_download_dir() -> Path:
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(cache) / 'timm_asap' / 'fashion-mnist'


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST from its IDX files, as PIL images.

    Args:
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (flat, or torchvision's
            ``FashionMNIST/raw`` layout). None: ``/usr/share/datasets/fashion-mnist`` when it holds the
            files, else a cache folder torchvision downloads into (when ``download``).
        split: ``train`` or ``test`` (synonyms: ``validation``, ``val``, ``t10k``, ...).
        in_chans: 1 (grey, PIL mode ``L``) or 3 (the grey value repeated, mode ``RGB``).
        transform: applied to the PIL image.
        target_transform: applied to the integer label.
        download: when the files are missing, download them with torchvision into ``root`` (or the cache).

    Raises:
        DataError: the files are missing (and ``download`` is off or failed), malformed, or images and
            labels disagree in count or hold labels outside 0..9.
    """

    classes = FASHION_MNIST_LABELS  # the registry's label names, in label order

    def __init__(self, root: str | os.PathLike | None = None, split: str = 'train', in_chans: int = 1,
                 transform=None, target_transform=None, download: bool = True):
        if in_chans not in (1, 3):
            raise DataError(f"Fashion-MNIST gives 1 or 3 channels, got in_chans={in_chans}")
        self.split = split
        self.in_chans = in_chans
        self.transform = transform
        self.target_transform = target_transform
        files = None
        searched = []
        folders = [Path(root)] if root is not None else [Path(DEFAULT_FASHION_MNIST_DIR), _default_download_dir()]
        for folder in folders:
            searched.append(folder)
            files = find_fashion_mnist(folder, split)
            if files is not None:
                break
        failure = None
        if files is None and download:
            target = Path(root) if root is not None else _default_download_dir()
            files, failure = self._download(target, split)
        if files is None:
            remedy = (f"The download into {target} failed ({failure}); nothing was left there. Set data.data_dir "
                      f"to a folder holding the files, or install the Debian package dataset-fashion-mnist."
                      if download else "Set data.data_dir, install the Debian package dataset-fashion-mnist, "
                                       "or allow data.download.")
            raise DataError(
                f"Fashion-MNIST {split!r} files not found: looked for "
                f"{fashion_mnist_split(split)}-{{images-idx3,labels-idx1}}-ubyte[.gz] in "
                f"{[str(p) for f in searched for p in _candidates(f)]}. {remedy}")
        images_path, labels_path = files
        try:
            images = read_idx(images_path)
            labels = read_idx(labels_path)
        except ValueError as e:
            raise DataError(f"Fashion-MNIST files are unreadable: {e}") from None
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W), "
                            f"got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{labels_path}: expected {len(images)} labels for {images_path}, got shape {labels.shape}")
        if len(images) == 0:
            raise DataError(f"{images_path}: holds no images")
        if labels.max() >= len(self.classes):
            raise DataError(f"{labels_path}: labels must be in 0..{len(self.classes) - 1}, found {int(labels.max())}")
        self.images = images
        self.targets = labels.astype(np.int64)
        self.root = images_path.parent

    @staticmethod
    def _download(target: Path, split: str) -> tuple[tuple[Path, Path] | None, str | None]:
        """Download with torchvision into ``target``; returns (files, None) or (None, why it failed). A
        failed download removes the folders it created (torchvision makes ``FashionMNIST/raw``)."""
        try:
            from torchvision.datasets import FashionMNIST as TVFashionMNIST
        except ImportError:  # torchvision is a dependency, but keep the error readable if it is absent
            return None, "torchvision is not installed"
        new = [p for p in (target / 'FashionMNIST', target, *target.parents) if not p.exists()]
        _logger.info(f"Fashion-MNIST not found locally; downloading with torchvision into {target}")
        try:
            TVFashionMNIST(str(target), train=fashion_mnist_split(split) == 'train', download=True)
            files = find_fashion_mnist(target, split)
            failure = None if files is not None else "torchvision wrote no IDX files"
        except Exception as e:  # network errors come in many types; reported in the DataError
            files, failure = None, f"{type(e).__name__}: " + " ".join(str(e).split())
        if files is None and new:
            shutil.rmtree(new[-1], ignore_errors=True)  # the outermost folder this download created
        return files, failure

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, int]:
        """The untransformed sample: (PIL image with ``in_chans`` channels, label)."""
        img = Image.fromarray(self.images[index])
        if self.in_chans == 3:
            img = img.convert('RGB')
        return img, int(self.targets[index])

    def __getitem__(self, index: int):
        img, target = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
