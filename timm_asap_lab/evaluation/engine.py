"""Batched inference, clean accuracy and common-corruption accuracy for several models at once."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.utils.data
from timm.utils import accuracy
from torch import nn
from tqdm.auto import tqdm

from timm_asap.layers.band import check_choice
from timm_asap_lab.evaluation.cache import CorruptionCache, iter_corrupted_sets
from timm_asap_lab.evaluation.corruptions import check_corruptions, check_severities, resolve_protocol
from timm_asap_lab.evaluation.data import (CifarCDataset, EvalImages, ImageNetCFolder, _collate_uint8, eval_transform,
                                           find_imagenet_c_dir, select_indices)
from timm_asap_lab.evaluation.wrapper import check_eval_mode
from timm_asap_lab.runtime import amp_context, resolve_amp, resolve_device

__all__ = [
    'resolve_device', 'autocast', 'adapt_channels', 'predict_logits', 'topk_correct', 'evaluate_clean',
    'evaluate_corruptions', 'check_corruption_source', 'CORRUPTION_SOURCES',
]

CORRUPTION_SOURCES = ('generated', 'imagenet_c', 'cifar_c')


def autocast(device: torch.device, amp: str = 'auto'):
    """AMP context for the inference passes: :func:`timm_asap_lab.runtime.resolve_amp`'s precision for ``device``
    (``'auto'``: bfloat16 on CUDA and on CPUs with native bf16, float32 elsewhere; ``'bf16'``, ``'fp16'``,
    ``'none'`` force a choice).

    Raises:
        ValueError: an unknown setting (the message lists the allowed ones).
    """
    return amp_context(device, resolve_amp(device, amp))


def adapt_channels(x: torch.Tensor, in_chans: int | None) -> torch.Tensor:
    """Repeat grey images to ``in_chans`` channels; other mismatches are errors.

    Raises:
        ValueError: the image channels cannot be mapped to the model's.
    """
    if in_chans is None or x.shape[1] == in_chans:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, in_chans, -1, -1)
    raise ValueError(f"images have {x.shape[1]} channels but the model takes {in_chans}")


def model_in_chans(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


@torch.no_grad()  # not inference_mode: tensors a model caches here must stay usable by later attacks
def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device, amp: str = 'auto',
                   in_chans: int | None = None) -> torch.Tensor:
    """Logits (float32, on CPU) of one batch of uint8 or [0, 1] float images."""
    x = images.to(device, non_blocking=True)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    x = adapt_channels(x, in_chans)
    with autocast(device, amp):
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float().cpu()


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of examples whose label is among the top-k logits, for each k (k capped at the class count),
    from :func:`timm.utils.accuracy`'s percentages."""
    n = labels.numel()
    ks = tuple(ks)
    return {k: round(float(p) * n / 100) for k, p in zip(ks, accuracy(logits, labels, topk=ks))}


def check_corruption_source(corruptions, severities, source: str, source_dir: str | os.PathLike | None) -> None:
    """Check that pre-generated corruption data holds every asked-for corruption and severity (cheap: paths
    only), so a missing one stops the evaluation before its first pass, not in the middle.

    Args:
        corruptions: names, or ``'benchmark'``, ``'extra'``, ``'all'``.
        severities: subset of 1..5.
        source: ``'imagenet_c'`` or ``'cifar_c'`` (``'generated'`` needs no data).
        source_dir: root of the pre-generated data.

    Raises:
        ValueError: no ``source_dir``, or an unknown source.
        FileNotFoundError: ``source_dir`` or a corruption's folder or file is missing, naming it.
    """
    check_choice('corruption source', source, CORRUPTION_SOURCES)
    if source == 'generated':
        return
    if not source_dir:
        raise ValueError(f"corruption source {source!r} needs source_dir (the folder of the pre-generated data)")
    if not Path(source_dir).is_dir():
        raise FileNotFoundError(f"corruption source {source!r}: the folder {source_dir} does not exist")
    for c in check_corruptions(corruptions):
        if source == 'imagenet_c':
            for sev in check_severities(severities):
                find_imagenet_c_dir(source_dir, c, sev)
        else:
            for name in (f'{c}.npy', 'labels.npy'):
                if not (Path(source_dir) / name).is_file():
                    raise FileNotFoundError(f"CIFAR-C file not found: {Path(source_dir) / name}")


def _check_models(models: Sequence[tuple[str, nn.Module]]) -> None:
    if not models:
        raise ValueError("no models to evaluate")
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    for name, model in models:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {name!r} is not a torch.nn.Module but {type(model).__name__}")
        check_eval_mode(model, f"model {name!r}")


def evaluate_clean(models: Sequence[tuple[str, nn.Module]], data: EvalImages, batch_size: int = 128,
                   device='auto', amp: str = 'auto', progress: bool = True) -> list[dict]:
    """Top-1 / top-5 accuracy (in %) of each model on the same images.

    Returns:
        One row per model: ``task='clean'``, ``top1``, ``top5``, ``count``, ``num_classes``.

    Raises:
        ValueError: no models, a model in training mode, or empty data.
    """
    _check_models(models)
    if len(data) == 0:
        raise ValueError("no evaluation images")
    device = resolve_device(device)
    correct = {name: {1: 0, 5: 0} for name, _ in models}
    classes = {}
    moved = [(name, model.to(device), model_in_chans(model)) for name, model in models]
    for start in tqdm(range(0, len(data), batch_size), desc='clean', disable=not progress, leave=False):
        x = data.images[start:start + batch_size]
        y = data.labels[start:start + batch_size]
        for name, model, chans in moved:
            logits = predict_logits(model, x, device, amp, chans)
            classes[name] = logits.shape[1]
            for k, v in topk_correct(logits, y).items():
                correct[name][k] += v
    n = len(data)
    return [{'task': 'clean', 'model': name, 'count': n, 'num_classes': classes[name],
             'top1': 100.0 * correct[name][1] / n, 'top5': 100.0 * correct[name][5] / n} for name, _ in models]


def evaluate_corruptions(
        models: Sequence[tuple[str, nn.Module]],
        data: EvalImages,
        corruptions='benchmark',
        severities=(1, 2, 3, 4, 5),
        seed: int = 0,
        protocol: str = 'auto',
        source: str = 'generated',
        source_dir: str | None = None,
        count: int | None = None,
        subset_order: str = 'random',
        img_size: int | None = None,
        batch_size: int = 128,
        workers: int = 2,
        device='auto',
        amp: str = 'auto',
        progress: bool = True,
        cache: CorruptionCache | str | None = None,
        generate_workers: int | None = None,
        stats: dict | None = None,
) -> list[dict]:
    """Accuracy of each model per corruption and severity, all models on the very same images.

    Args:
        models: (name, model) pairs; models take [0, 1] inputs and are in eval mode.
        data: the clean images (for ``source='generated'``: each (corruption, severity) set is made once,
            see :mod:`timm_asap_lab.evaluation.cache`; for pre-generated sources: only its channel count is used).
        corruptions: names, or ``'benchmark'`` (the 15), ``'extra'``, ``'all'``.
        severities: subset of 1..5.
        seed: seed of the corruption randomness (and of the subset for pre-generated data).
        protocol: ``'auto'``, ``'imagenet'`` or ``'cifar'`` parameter tables.
        source: ``'generated'`` (on the fly), ``'imagenet_c'`` (folders
            ``<corruption>/<severity>/<class>/``) or ``'cifar_c'`` (``<corruption>.npy`` + ``labels.npy``).
        source_dir: root of the pre-generated data.
        count: images per corruption for pre-generated data (the same seeded subset positions as
            :func:`timm_asap_lab.evaluation.data.select_indices` gives the clean data of that length).
        subset_order: ``'random'`` or ``'first'`` for pre-generated data.
        img_size: resize pre-generated images to this size (None: as stored).
        batch_size: images per batch.
        workers: DataLoader workers decoding pre-generated images (0: in the main process).
        device: ``'auto'``, ``'cpu'``, ``'cuda'``, ...
        amp: AMP setting for the forward passes (see :func:`autocast`).
        progress: progress bar.
        cache: folder (or :class:`CorruptionCache`) keeping generated sets for later models, seeds and
            runs (None: generated sets are not kept).
        generate_workers: processes generating corruptions (None: every core; 0: in this process).
        stats: filled with ``cached`` / ``generated`` set counts and the seconds spent making sets.

    Returns:
        One row per (model, corruption, severity): ``task='corruption'``, ``corruption``, ``severity``,
        ``top1``, ``top5``, ``count``, ``source``, ``protocol``.

    Raises:
        ValueError: unknown corruption/severity/source, no models, a model in training mode, empty data.
    """
    _check_models(models)
    names = check_corruptions(corruptions)
    sevs = check_severities(severities)
    check_corruption_source(names, sevs, source, source_dir)  # the source, and its data before the first pass
    if len(data) == 0:
        raise ValueError("no evaluation images")
    device = resolve_device(device)
    jobs = [(c, s) for c in names for s in sevs]
    moved = [(name, model.to(device), model_in_chans(model)) for name, model in models]
    correct = {(name, j): {1: 0, 5: 0} for name, _ in models for j in range(len(jobs))}
    totals = [0] * len(jobs)
    h, w = data.images.shape[-2:]
    used_protocol = resolve_protocol(protocol, h, w) if source == 'generated' else source

    def consume(job: int, x: torch.Tensor, y: torch.Tensor):
        totals[job] += len(y)
        for name, model, chans in moved:
            for k, v in topk_correct(predict_logits(model, x, device, amp, chans), y).items():
                correct[(name, job)][k] += v

    bar = tqdm(total=len(jobs) * (len(data) if source == 'generated' else (count or 0)) or None,
               desc=f'corruptions ({source})', disable=not progress, leave=False)
    if source == 'generated':
        cache = CorruptionCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        stats = stats if stats is not None else {}
        made = 0.0
        clock = time.perf_counter()
        for job, images in iter_corrupted_sets(data, jobs, seed, protocol, cache, generate_workers, stats):
            made += time.perf_counter() - clock
            for start in range(0, len(images), batch_size):
                y = data.labels[start:start + batch_size]
                consume(job, images[start:start + batch_size], y)
                bar.update(len(y))
            bar.set_postfix_str(f'{jobs[job][0]} s{jobs[job][1]}')
            clock = time.perf_counter()
        stats['make_s'] = round(made, 3)
    else:
        in_chans = data.images.shape[1]
        transform = None
        if img_size is not None:
            transform = eval_transform(img_size, 1.0)
        for job, (c, s) in enumerate(jobs):
            ds = (ImageNetCFolder(source_dir, c, s, transform, in_chans) if source == 'imagenet_c'
                  else CifarCDataset(source_dir, c, s))
            idx = select_indices(len(ds), count, seed, subset_order)
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size,
                                                 num_workers=workers, collate_fn=_collate_uint8)
            for x, y in loader:
                if in_chans == 1 and x.shape[1] == 3:
                    x = x.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
                consume(job, x, y)
                bar.update(len(y))
                bar.set_postfix_str(f'{c} s{s}')
    bar.close()
    rows = []
    for name, _ in models:
        for j, (c, s) in enumerate(jobs):
            n = totals[j]
            if n == 0:
                raise ValueError(f"no images evaluated for {c} severity {s}")
            rows.append({'task': 'corruption', 'model': name, 'corruption': c, 'severity': s, 'count': n,
                         'source': source, 'protocol': used_protocol,
                         'top1': 100.0 * correct[(name, j)][1] / n, 'top5': 100.0 * correct[(name, j)][5] / n})
    return rows
