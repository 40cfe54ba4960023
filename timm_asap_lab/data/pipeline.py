"""Train and validation data of a run configuration in one call, with the checks a run needs."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn
import torch.utils.data
from torch.utils.data import DataLoader

from timm_asap_lab.config import RunConfig
from timm_asap_lab.data.classes import check_classes
from timm_asap_lab.data.dataset import SampleDataset, create_split_dataset, dataset_classes, describe, subset_indices
from timm_asap_lab.data.errors import DataError
from timm_asap_lab.data.loader import LoaderBatches, create_eval_loader, create_train_loader
from timm_asap_lab.data.memory import (MemoryAugment, MemoryEvalBatches, MemoryTrainBatches, array_images,
                                       images_nbytes, to_device_images)
from timm_asap_lab.data.transforms import create_transforms, run_data_config

__all__ = ['RunData', 'create_run_data', 'create_val_dataset', 'choose_loader']

_logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """Everything the training loop reads.

    Attributes:
        data_config: timm data config (input_size, mean, std, crop_pct, interpolation).
        train_loader: training loader (``train_loader.sampler`` is a ResumableSampler for map-style data).
        val_loader: validation loader, or None when ``data.val_split`` is empty.
        train_size: training images (all ranks); None for streaming datasets.
        val_size: validation images; None without validation or for streaming datasets.
        classes: class names in label order, when the reader knows them.
        labelled: whether labels are meaningful (False for teacher-only distillation on unlabelled folders).
        train_batches: the training batches per epoch (:class:`~timm_asap_lab.data.LoaderBatches` or
            :class:`~timm_asap_lab.data.MemoryTrainBatches`: ``len()`` and ``epoch(epoch, start)``).
        loader: ``memory`` or ``dataloader``, the path ``data.loader`` resolved to.
    """

    data_config: dict[str, Any]
    train_loader: DataLoader | None
    val_loader: DataLoader | MemoryEvalBatches | None
    train_size: int | None
    val_size: int | None
    classes: list[str] | None
    labelled: bool = True
    train_batches: LoaderBatches | MemoryTrainBatches | None = None
    loader: str = 'dataloader'


def _wrap(cfg: RunConfig, ds, transform, subset: int | None, seed: int):
    if isinstance(ds, torch.utils.data.IterableDataset):
        if subset is not None:
            raise DataError("data.train_subset/val_subset are not supported for streaming datasets "
                            f"({cfg.data.dataset!r})")
        ds.transform = transform
        return ds
    return SampleDataset(ds, transform, seed=seed, indices=subset_indices(len(ds), subset),
                         in_chans=cfg.model.in_chans)


def _check_classes(cfg: RunConfig, split: str, classes: list[str] | None) -> None:
    check_classes(classes, cfg.model.num_classes, f"split {split!r}")


def create_val_dataset(cfg: RunConfig, model: nn.Module | None = None, split: str | None = None):
    """The validation dataset of a run (``data.val_split`` unless ``split`` is given), transformed.

    Items are ``(image_tensor, label, unreadable_count)``; see :class:`SampleDataset`.

    Raises:
        DataError: missing data, or a class count that differs from ``model.num_classes``.
    """
    split = split or cfg.data.val_split
    data_config = run_data_config(cfg, model)
    ds = create_split_dataset(cfg.data, split, in_chans=cfg.model.in_chans)
    _check_classes(cfg, split, dataset_classes(ds))
    return _wrap(cfg, ds, create_transforms(cfg, data_config, is_training=False), cfg.data.val_subset, 0)


def create_run_data(cfg: RunConfig, model: nn.Module | None = None, *, rank: int = 0, world_size: int = 1,
                    pin_memory: bool = False, labelled: bool = True,
                    worker_init_fn: Callable[[int], None] | None = None,
                    device: torch.device | str | None = None) -> RunData:
    """Datasets, transforms and loaders of a run.

    Args:
        cfg: the run configuration (``data`` section, ``model.in_chans/img_size/num_classes``,
            ``train.batch_size/seed``).
        model: supplies the pretrained_cfg defaults of normalisation and crop.
        rank: this process's rank.
        world_size: number of processes.
        pin_memory: pin host memory (CUDA runs).
        labelled: check that the class count matches ``model.num_classes`` (turn off for teacher-only
            distillation on unlabelled images).
        worker_init_fn: run in each loader worker process at start.
        device: where the in-memory loader holds the images (the training device; default CPU).

    Returns:
        A :class:`RunData`.

    Raises:
        DataError: missing or empty data, a class count that differs from the model's, train and
            validation splits with different classes, or fewer training images per process than
            one batch.
    """
    d, t = cfg.data, cfg.train
    data_config = run_data_config(cfg, model)
    train_raw = create_split_dataset(d, d.train_split, in_chans=cfg.model.in_chans, is_training=True,
                                     batch_size=t.batch_size, seed=t.seed)
    classes = dataset_classes(train_raw)
    if labelled:
        _check_classes(cfg, d.train_split, classes)
    val_raw = None
    if d.val_split:
        val_raw = create_split_dataset(d, d.val_split, in_chans=cfg.model.in_chans, batch_size=t.batch_size)
        val_classes = dataset_classes(val_raw)
        if labelled and classes is not None and val_classes is not None and val_classes != classes:
            raise DataError(f"splits {d.train_split!r} and {d.val_split!r} have different classes: "
                            f"{len(classes)} vs {len(val_classes)} "
                            f"(only in train: {sorted(set(classes) - set(val_classes))[:5]}, "
                            f"only in val: {sorted(set(val_classes) - set(classes))[:5]})")
    if choose_loader(cfg, train_raw, val_raw, device) == 'memory':
        return _memory_run_data(cfg, data_config, train_raw, val_raw, classes, labelled, rank, world_size, device)
    if d.crop_padding:
        raise DataError(f"data.crop_padding={d.crop_padding}: the padded random crop is offered by the in-memory "
                        f"loader only (data.loader=memory); set data.crop_padding=0 for the DataLoader path")
    train = _wrap(cfg, train_raw, create_transforms(cfg, data_config, is_training=True), d.train_subset, t.seed)
    train_size = None if isinstance(train, torch.utils.data.IterableDataset) else len(train)
    _check_batches(train_size, world_size, t.batch_size)
    val = val_size = None
    if val_raw is not None:
        val = _wrap(cfg, val_raw, create_transforms(cfg, data_config, is_training=False), d.val_subset, 0)
        val_size = None if isinstance(val, torch.utils.data.IterableDataset) else len(val)
    if rank == 0:
        _logger.info(f"train data: {describe(train)}; validation data: {describe(val) if val is not None else 'none'}; "
                     f"input {data_config['input_size']}, mean {data_config['mean']}, std {data_config['std']}")
    train_loader = create_train_loader(train, t.batch_size, rank=rank, world_size=world_size, seed=t.seed,
                                       workers=d.workers, pin_memory=pin_memory, worker_init_fn=worker_init_fn)
    val_loader = None if val is None else create_eval_loader(
        val, t.batch_size, rank=rank, world_size=world_size, workers=d.workers, pin_memory=pin_memory,
        worker_init_fn=worker_init_fn)
    batches = LoaderBatches(train_loader, cfg.model.num_classes if labelled else None)
    return RunData(data_config, train_loader, val_loader, train_size, val_size, classes, labelled, batches)


def _check_batches(train_size: int | None, world_size: int, batch_size: int) -> None:
    if train_size is not None and train_size // world_size < batch_size:
        raise DataError(f"{train_size} training images give {train_size // world_size} per process, fewer than "
                        f"train.batch_size={batch_size}; lower the batch size or use more data")


# augmentations of timm's transforms that the in-memory loader does not implement
def _dataloader_only(cfg: RunConfig) -> list[str]:
    d = cfg.data
    found = [('data.color_jitter', d.color_jitter > 0), ('data.auto_augment', bool(d.auto_augment)),
             ('data.reprob', d.reprob > 0)]
    return [k for k, on in found if on]


def _memory_limit(cfg: RunConfig, device) -> tuple[int, str]:
    """The bytes the memory path may hold: ``data.memory_max_mb``, on CUDA at most half the free memory."""
    limit, what = cfg.data.memory_max_mb * 2 ** 20, f"data.memory_max_mb={cfg.data.memory_max_mb}"
    device = torch.device(device or 'cpu')
    if device.type == 'cuda':
        free = torch.cuda.mem_get_info(device)[0] // 2
        if free < limit:
            limit, what = free, f"half the free memory of {device} ({free / 2 ** 20:.0f} MiB)"
    return limit, what


def choose_loader(cfg: RunConfig, train_raw, val_raw=None, device=None) -> str:
    """The loader ``data.loader`` selects for these datasets: ``memory`` or ``dataloader``.

    ``auto`` takes ``memory`` when the training split is held as one uint8 array (see
    :func:`~timm_asap_lab.data.memory.array_images`), fits ``data.memory_max_mb`` (on CUDA also half the
    free memory of ``device``) and uses only the augmentations the in-memory loader implements;
    otherwise ``dataloader``.

    Raises:
        DataError: ``data.loader=memory`` for a dataset read image by image, one larger than
            ``data.memory_max_mb`` (the message gives its size), or with DataLoader-only augmentations.
    """
    d = cfg.data
    if d.loader == 'dataloader':
        return 'dataloader'
    forced = d.loader == 'memory'
    arrays = None if isinstance(train_raw, torch.utils.data.IterableDataset) else array_images(train_raw)
    val_arrays = array_images(val_raw) if val_raw is not None else None
    if arrays is None or (val_raw is not None and val_arrays is None):
        if forced:
            raise DataError(f"data.loader 'memory' needs datasets held as one uint8 array (fashion_mnist, "
                            f"torchvision's MNIST/CIFAR-style sets); {d.dataset!r} is read image by image: "
                            f"use data.loader=dataloader")
        return 'dataloader'
    c = cfg.model.in_chans
    n_train = min(len(arrays[0]), d.train_subset or len(arrays[0]))
    size = images_nbytes(arrays[0], c, n_train)
    if val_arrays is not None:
        size += images_nbytes(val_arrays[0], c, min(len(val_arrays[0]), d.val_subset or len(val_arrays[0])))
    limit, what = _memory_limit(cfg, device)
    if size > limit:
        if forced:
            shape = 'x'.join(str(v) for v in (c, *arrays[0].shape[1:3]))
            raise DataError(f"data.loader 'memory': {d.dataset!r} needs {size / 2 ** 20:.1f} MiB as uint8 "
                            f"({n_train} training images of {shape}" + (" plus validation" if val_arrays else '')
                            + f"), more than {what}; use data.loader=dataloader "
                            f"(images read and augmented by DataLoader workers) or raise data.memory_max_mb")
        return 'dataloader'
    unsupported = _dataloader_only(cfg)
    if unsupported:
        if forced:
            raise DataError(f"data.loader 'memory' does not implement {unsupported} (it offers random-resized "
                            f"crop, data.crop_padding and data.hflip); use data.loader=dataloader")
        return 'dataloader'
    return 'memory'


def _memory_run_data(cfg: RunConfig, data_config: dict[str, Any], train_raw, val_raw, classes, labelled: bool,
                     rank: int, world_size: int, device) -> RunData:
    d, t, c = cfg.data, cfg.train, cfg.model.in_chans
    device = torch.device(device or 'cpu')
    num_classes = cfg.model.num_classes if labelled else None
    images, labels = array_images(train_raw)
    x, y = to_device_images(images, labels, c, device, subset_indices(len(images), d.train_subset), num_classes)
    _check_batches(len(x), world_size, t.batch_size)
    aug = MemoryAugment(cfg.model.img_size, tuple(d.scale), tuple(d.ratio), d.hflip, d.crop_padding,
                        enabled=not d.no_aug)
    mean, std = data_config['mean'], data_config['std']
    batches = MemoryTrainBatches(x, y, t.batch_size, aug, mean, std, t.seed, rank, world_size)
    val = None
    if val_raw is not None:
        vi, vl = array_images(val_raw)
        vx, vy = to_device_images(vi, vl, c, device, subset_indices(len(vi), d.val_subset), num_classes)
        val = MemoryEvalBatches(vx, vy, t.batch_size, cfg.model.img_size, mean, std, data_config['interpolation'],
                                data_config.get('crop_pct') or 1.0, rank, world_size)
    if rank == 0:
        mib = (x.numel() + (vx.numel() if val is not None else 0)) / 2 ** 20
        _logger.info(f"train data: {len(x)} images in memory on {device} ({mib:.1f} MiB uint8, augmented in "
                     f"batches there); validation data: {len(vx) if val is not None else 'none'}; input "
                     f"{data_config['input_size']}, mean {mean}, std {std}")
    return RunData(data_config, None, val, len(x), len(vx) if val is not None else None, classes, labelled,
                   batches, 'memory')
