"""Tiny synthetic data and configs for the data and fine-tuning tests (no real dataset needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from timm_asap_lab.config import RunConfig, config_from_dict
from timm_asap_lab.data import write_idx

# a CIFAR-size ResNet-18 with ASAP, shrunk: one block per stage, narrow stages (82k parameters)
TINY_ARGS = {'layers': [1, 1, 1, 1], 'channels': [8, 16, 32, 64]}


def class_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """uint8 grey images whose class shows as a bright horizontal band at a class-dependent height."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    imgs = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
    band = max(1, size // 10)
    for i, c in enumerate(labels):
        top = int(c) * (size - band) // 9
        imgs[i, top:top + band, :] = 220
    return imgs


def write_fake_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 32, gz: bool = True,
                             layout: str = 'flat', seed: int = 0) -> Path:
    """Write Fashion-MNIST-format IDX files (10 classes, 28x28) under ``root``; returns the data dir.

    ``layout='flat'`` puts the files in ``root`` (Debian), ``'torchvision'`` under ``root/FashionMNIST/raw``.
    """
    folder = root if layout == 'flat' else root / 'FashionMNIST' / 'raw'
    ext = '.gz' if gz else ''
    for prefix, n, s in (('train', n_train, seed), ('t10k', n_test, seed + 1)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        np.random.default_rng(s).shuffle(labels)
        write_idx(folder / f'{prefix}-images-idx3-ubyte{ext}', class_images(labels, seed=s))
        write_idx(folder / f'{prefix}-labels-idx1-ubyte{ext}', labels)
    return root


def write_image_folder(root: Path, classes: list[str], per_class: int, splits=('train', 'validation'),
                       size: int = 12, seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<split>/<class>/<i>.png`` of grey images with class-dependent bands."""
    for si, split in enumerate(splits):
        labels = np.repeat(np.arange(len(classes)), per_class)
        imgs = class_images(labels % 10, size=size, seed=seed + si)
        for i, (img, c) in enumerate(zip(imgs, labels)):
            d = root / split / classes[c]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f'{i:04d}.png')
    return root


def tiny_config(data_dir: Path | str, **sections) -> RunConfig:
    """A fast run: tiny resnet18_cifar_asap at 16x16 on synthetic Fashion-MNIST, CPU, no workers.

    ``sections`` update the ``model``/``data``/``train`` mappings, e.g. ``train={'epochs': 1}``.
    """
    d = {
        'model': {'architecture': 'resnet18_cifar_asap', 'tag': 'test', 'pool': 'asap', 'num_classes': 10,
                  'in_chans': 1, 'img_size': 16, 'model_args': dict(TINY_ARGS)},
        'data': {'dataset': 'fashion_mnist', 'data_dir': str(data_dir), 'val_split': 'test', 'workers': 0,
                 'download': False, 'scale': [0.8, 1.0], 'mean': [0.2], 'std': [0.3]},
        'train': {'epochs': 2, 'batch_size': 8, 'lr': 0.05, 'warmup_epochs': 0, 'weight_decay': 1e-4,
                  'log_interval': 2, 'tensorboard': False, 'amp_dtype': 'float32', 'seed': 7},
    }
    for key, values in sections.items():
        d.setdefault(key, {}).update(values)
    return config_from_dict(d)

