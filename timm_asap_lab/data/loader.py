"""Data loaders for training and evaluation, sharded across distributed ranks and resumable mid-epoch.

timm's ``create_loader`` picks its own sampler, so a run could not restart in the middle of an epoch
with the same batches. These loaders use torch's ``DistributedSampler`` order (a permutation drawn
from ``seed + epoch``, sharded over ranks; one rank is the single-process case) behind a thin
sampler that can skip the batches a resumed run has already trained on.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

import torch
import torch.utils.data
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from timm_asap_lab.data.classes import check_labels

__all__ = ['ResumableSampler', 'ShardSampler', 'LoaderBatches', 'create_train_loader', 'create_eval_loader']


class ResumableSampler(Sampler):
    """Shuffled, rank-sharded sample order that can start part-way through an epoch.

    Yields ``(epoch, index)`` pairs, which :class:`~timm_asap_lab.data.SampleDataset` uses to seed each
    sample's augmentation.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas: world size.
        rank: this process's rank.
        shuffle: permute per epoch (else in order).
        seed: permutation seed (the same on every rank).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        self._inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                         seed=seed, drop_last=False)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` samples (of this rank)."""
        if not 0 <= start <= len(self._inner):
            raise ValueError(f"start must be in [0, {len(self._inner)}], got {start}")
        self.epoch = epoch
        self.start = start
        self._inner.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        for i, index in enumerate(self._inner):
            if i >= self.start:
                yield epoch, index

    def __len__(self) -> int:
        return len(self._inner) - self.start

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank sees in a whole epoch (the dataset is padded to a multiple of the world size)."""
        return len(self._inner)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order, without padding, so evaluation counts every image once."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        self.n = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self):
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.num_replicas))


def _loader_kwargs(workers: int, pin_memory: bool, worker_init_fn: Callable[[int], None] | None) -> dict:
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    kw = dict(num_workers=workers, pin_memory=pin_memory)
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=worker_init_fn)
    return kw


def create_train_loader(dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                        workers: int = 0, pin_memory: bool = False,
                        worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """Training loader: shuffled per epoch, sharded over ranks, incomplete last batch dropped.

    Map-style datasets get a :class:`ResumableSampler` (``loader.sampler``; call
    ``loader.sampler.set_epoch(epoch, start)`` before each epoch). Iterable datasets (timm's streaming
    readers) shard and shuffle themselves; call their ``set_epoch``.

    Args:
        dataset: a :class:`~timm_asap_lab.data.SampleDataset` or an iterable dataset.
        batch_size: images per batch per process.
        rank: this process's rank.
        world_size: number of processes.
        seed: shuffle seed.
        workers: loader worker processes (0: load in the main process).
        pin_memory: pin host memory (for CUDA).
        worker_init_fn: run in each worker process at start.
    """
    kw = _loader_kwargs(workers, pin_memory, worker_init_fn)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, drop_last=True, **kw)
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    # the loader's own generator (not the global RNG) seeds the workers, so creating an iterator
    # leaves the global random state untouched: a resumed run continues with the same state
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, generator=generator, **kw)


def create_eval_loader(dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, workers: int = 0,
                       pin_memory: bool = False, worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """Evaluation loader: every image exactly once over all ranks (no padding), in order."""
    kw = _loader_kwargs(workers, pin_memory, worker_init_fn)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, **kw)
    generator = torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(dataset, world_size, rank),
                      generator=generator, **kw)


class LoaderBatches:
    """The training batches of a DataLoader, per epoch and from a batch position on.

    Map-style data skips the first batches through its :class:`ResumableSampler`; streaming data
    (timm's shard-aware readers) reads and drops them. Batches are ``(images, labels, unreadable)``
    on the CPU, with the labels checked against ``num_classes`` (None: not checked).

    Args:
        loader: from :func:`create_train_loader`.
        num_classes: the model's class count.
    """

    def __init__(self, loader: DataLoader, num_classes: int | None = None):
        self.loader = loader
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The batches of ``epoch`` from batch ``start`` on."""
        loader = self.loader
        if hasattr(loader.sampler, 'set_epoch') and hasattr(loader.sampler, 'samples_per_epoch'):
            loader.sampler.set_epoch(epoch, start * loader.batch_size)
            batches = iter(loader)
        else:
            if hasattr(loader.dataset, 'set_epoch'):
                loader.dataset.set_epoch(epoch)
            batches = itertools.islice(loader, start, None)
        for batch in batches:
            x, y = batch[0], batch[1]
            unreadable = int(batch[2].sum()) if len(batch) > 2 else 0
            check_labels(y, self.num_classes, 'a batch')
            yield x, y, unreadable
