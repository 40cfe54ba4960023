"""Train and validation data of a run configuration in one call, with the checks a run needs."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn
import torch.utils.data
from torch.utils.data import DataLoader

from ..config import RunConfig
from .dataset import SampleDataset, create_split_dataset, dataset_classes, describe, subset_indices
from .errors import DataError
from .loader import create_eval_loader, create_train_loader
from .transforms import create_transforms, resolve_data_config

__all__ = ['RunData', 'create_run_data', 'create_val_dataset']

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
    """

    data_config: dict[str, Any]
    train_loader: DataLoader
    val_loader: DataLoader | None
    train_size: int | None
    val_size: int | None
    classes: list[str] | None
    labelled: bool = True


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
    if classes is not None and len(classes) != cfg.model.num_classes:
        shown = classes if len(classes) <= 12 else classes[:12] + ['...']
        raise DataError(f"split {split!r} has {len(classes)} classes {shown}, but model.num_classes is "
                        f"{cfg.model.num_classes}; set model.num_classes to match the data")


def create_val_dataset(cfg: RunConfig, model: nn.Module | None = None, split: str | None = None):
    """The validation dataset of a run (``data.val_split`` unless ``split`` is given), transformed.

    Items are ``(image_tensor, label, unreadable_count)``; see :class:`SampleDataset`.

    Raises:
        DataError: missing data, or a class count that differs from ``model.num_classes``.
    """
    split = split or cfg.data.val_split
    data_config = resolve_data_config(cfg, model)
    ds = create_split_dataset(cfg.data, split, in_chans=cfg.model.in_chans)
    _check_classes(cfg, split, dataset_classes(ds))
    return _wrap(cfg, ds, create_transforms(cfg, data_config, is_training=False), cfg.data.val_subset, 0)


def create_run_data(cfg: RunConfig, model: nn.Module | None = None, *, rank: int = 0, world_size: int = 1,
                    pin_memory: bool = False, labelled: bool = True,
                    worker_init_fn: Callable[[int], None] | None = None) -> RunData:
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

    Returns:
        A :class:`RunData`.

    Raises:
        DataError: missing or empty data, a class count that differs from the model's, train and
            validation splits with different classes, or fewer training images per process than
            one batch.
    """
    d, t = cfg.data, cfg.train
    data_config = resolve_data_config(cfg, model)
    train_raw = create_split_dataset(d, d.train_split, in_chans=cfg.model.in_chans, is_training=True,
                                     batch_size=t.batch_size, seed=t.seed)
    classes = dataset_classes(train_raw)
    if labelled:
        _check_classes(cfg, d.train_split, classes)
    train = _wrap(cfg, train_raw, create_transforms(cfg, data_config, is_training=True), d.train_subset, t.seed)
    train_size = None if isinstance(train, torch.utils.data.IterableDataset) else len(train)
    if train_size is not None and train_size // world_size < t.batch_size:
        raise DataError(f"{train_size} training images give {train_size // world_size} per process, fewer than "
                        f"train.batch_size={t.batch_size}; lower the batch size or use more data")
    val = val_size = None
    if d.val_split:
        val_raw = create_split_dataset(d, d.val_split, in_chans=cfg.model.in_chans, batch_size=t.batch_size)
        val_classes = dataset_classes(val_raw)
        if labelled and classes is not None and val_classes is not None and val_classes != classes:
            raise DataError(f"splits {d.train_split!r} and {d.val_split!r} have different classes: "
                            f"{len(classes)} vs {len(val_classes)} "
                            f"(only in train: {sorted(set(classes) - set(val_classes))[:5]}, "
                            f"only in val: {sorted(set(val_classes) - set(classes))[:5]})")
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
    return RunData(data_config, train_loader, val_loader, train_size, val_size, classes, labelled)
