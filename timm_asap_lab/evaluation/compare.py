"""The zero-shot cost of a conversion: a converted model against its base on the same images."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from timm_asap_lab.evaluation.data import EvalImages
from timm_asap_lab.evaluation.engine import model_in_chans, predict_logits, topk_correct
from timm_asap_lab.evaluation.summary import standard_error
from timm_asap_lab.evaluation.wrapper import wrap_model
from timm_asap_lab.runtime import resolve_device

__all__ = ['compare_models']


def _images_and_labels(images, labels) -> EvalImages:
    if isinstance(images, EvalImages):
        if labels is not None:
            raise ValueError("compare_models: labels come with the EvalImages given; pass labels=None")
        return images
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"compare_models: images must be EvalImages or an (N, C, H, W) tensor (uint8, or float in "
                         f"[0, 1]), got {got}")
    if images.is_floating_point():
        lo, hi = (float(images.min()), float(images.max())) if images.numel() else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise ValueError(f"compare_models: float images must be in [0, 1] (the models normalise), got values in "
                             f"[{lo:.3g}, {hi:.3g}]")
        images = images.mul(255).round_().to(torch.uint8)
    elif images.dtype != torch.uint8:
        raise ValueError(f"compare_models: images must be uint8 or float in [0, 1], got {images.dtype}")
    if labels is None:
        raise ValueError("compare_models: give the labels of the images (an (N,) integer tensor)")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"compare_models: labels must be integers, got {labels.dtype}")
    return EvalImages(images, labels, name='tensor')


def compare_models(base: nn.Module, converted: nn.Module, images, labels=None, *, batch_size: int = 128,
                   device='auto', amp: str = 'auto', progress: bool = False) -> dict:
    """Top-1 accuracy of a base model and of a model converted from it, and how often their predictions agree.

    Both models see the very same images in the same precision. Agreement is the share of images on
    which the two models predict the same class (right or wrong): how much of the base model's
    behaviour the converted one keeps, which top-1 alone does not show.

    Args:
        base: the base model; as everywhere in :mod:`timm_asap_lab.evaluation` it takes images in [0, 1]
            (a :class:`~timm_asap_lab.evaluation.NormalizedModel`); a plain model is wrapped by
            :func:`~timm_asap_lab.evaluation.wrap_model` with its ``pretrained_cfg`` normalisation. Put in eval mode.
        converted: the converted model, likewise.
        images: :class:`~timm_asap_lab.evaluation.EvalImages` (e.g. from
            :func:`~timm_asap_lab.evaluation.load_images`), or an (N, C, H, W) uint8 tensor or float tensor in [0, 1].
        labels: the (N,) integer labels of a tensor of images (None with EvalImages, which hold theirs).
        batch_size: images per forward pass.
        device: ``'auto'`` (CUDA when present), ``'cpu'``, ``'cuda'``, ...
        amp: precision (:func:`timm_asap_lab.runtime.resolve_amp`: ``'auto'``, ``'bf16'``, ``'fp16'``, ``'none'``).
        progress: show a progress bar.

    Returns:
        ``count`` (images), ``base_correct``/``converted_correct``/``agree`` (image counts),
        ``base_top1``/``converted_top1``/``agreement`` (in %) and their binomial standard errors
        ``base_top1_se``/``converted_top1_se``/``agreement_se`` (in %).

    Raises:
        ValueError: no images, images that are not uint8 or in [0, 1], labels missing or not one per
            image, or models whose outputs differ in class count.

    Example:
        >>> import torch, timm
        >>> model = timm.create_model('resnet18', num_classes=3)
        >>> r = compare_models(model, model, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
        >>> r['agreement']
        100.0
    """
    data = _images_and_labels(images, labels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"compare_models: batch_size must be a positive integer, got {batch_size!r}")
    device = resolve_device(device)
    models = {'base': wrap_model(base).to(device), 'converted': wrap_model(converted).to(device)}
    chans = {k: model_in_chans(m) for k, m in models.items()}
    correct = {'base': 0, 'converted': 0}
    agree = 0
    for start in tqdm(range(0, len(data), batch_size), desc='compare', disable=not progress, leave=False):
        x = data.images[start:start + batch_size]
        y = data.labels[start:start + batch_size]
        logits = {k: predict_logits(m, x, device, amp, chans[k]) for k, m in models.items()}
        if logits['base'].shape[1] != logits['converted'].shape[1]:
            raise ValueError(f"compare_models: the base model predicts {logits['base'].shape[1]} classes, the "
                             f"converted one {logits['converted'].shape[1]}")
        for k in correct:
            correct[k] += topk_correct(logits[k], y, ks=(1,))[1]
        agree += int((logits['base'].argmax(1) == logits['converted'].argmax(1)).sum())
    n = len(data)
    out = {'count': n, 'base_correct': correct['base'], 'converted_correct': correct['converted'], 'agree': agree}
    for key, k in (('base_top1', correct['base']), ('converted_top1', correct['converted']), ('agreement', agree)):
        out[key] = 100.0 * k / n
        out[f'{key}_se'] = standard_error(out[key], n)
    return out
