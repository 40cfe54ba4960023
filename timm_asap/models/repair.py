"""The zero-shot repair: re-estimate a converted model's BatchNorm statistics from unlabeled images.

A converted model (:func:`timm_asap.asapify`, or ``timm.create_model('<base>_asap', pretrained=True)``
with the base's weights) computes a different function from its base: each converted kernel now sees
a spectrally pooled input, so the activations reaching every BatchNorm layer no longer have the mean
and variance its running statistics were estimated on. :func:`recalibrate_norm` estimates them again
on a few hundred unlabeled images, without gradients and without changing any weight, using PyTorch's
own :func:`torch.optim.swa_utils.update_bn`.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

__all__ = ['recalibrate_norm', 'running_stat_layers']

_logger = logging.getLogger(__name__)

_FOLDER_SEED = 0  # the fixed random subset of an image folder larger than num_images


def running_stat_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics: every ``torch.nn.modules.batchnorm._BatchNorm``
    (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, timm's ``BatchNormAct2d``...) with ``track_running_stats``."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def _norm_layer_types(model: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in model.modules() if re.search(r'Norm(Act)?([123]d)?$', type(m).__name__)})


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    device = tensors[0].device if tensors else torch.device('cpu')
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    return device, (floating[0] if floating else torch.get_default_dtype())


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | tuple[None, None]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None, None


def _check_count(name: str, value, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = 'a positive integer' + (' or None (all)' if allow_none else '')
        raise ValueError(f"recalibrate_norm: {name} must be {allowed}, got {value!r}")


class _Batches:
    """The model-ready batches of ``data``: checked, capped at ``num_images``, on the model's device and dtype."""

    def __init__(self, model: nn.Module, num_images: int | None, device: torch.device, dtype: torch.dtype):
        self.num_images = num_images
        self.device = device
        self.dtype = dtype
        self.conv_name, conv = _first_conv(model)
        self.in_chans = conv.in_channels if conv is not None else None
        self.seen = 0

    def check(self, x, where: str) -> torch.Tensor:
        if isinstance(x, (list, tuple)) and x:
            x = x[0]  # (images, labels, ...) as update_bn reads it
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"recalibrate_norm: {where} is a {type(x).__name__}; expected an image tensor "
                            f"(N, C, H, W) or an (images, labels...) tuple")
        if x.ndim != 4:
            hint = ' (one image needs a batch dimension: x[None])' if x.ndim == 3 else ''
            raise ValueError(f"recalibrate_norm: {where} has shape {tuple(x.shape)}; expected (N, C, H, W) "
                             f"images{hint}")
        if not x.is_floating_point():
            raise ValueError(f"recalibrate_norm: {where} is {x.dtype}; expected float images as the model takes them "
                             f"(normalised): convert and normalise them first")
        if self.in_chans is not None and x.shape[1] != self.in_chans:
            raise ValueError(f"recalibrate_norm: {where} has {x.shape[1]} channels (shape {tuple(x.shape)}); the "
                             f"model's first convolution ({self.conv_name}) takes {self.in_chans}")
        if not torch.isfinite(x).all():
            raise ValueError(f"recalibrate_norm: {where} holds non-finite values (NaN or inf)")
        return x

    def __call__(self, batches: Iterable) -> Iterator[torch.Tensor]:
        for k, batch in enumerate(batches):
            if self.num_images is not None and self.seen >= self.num_images:
                return
            x = self.check(batch, f"batch {k}")
            if self.num_images is not None:
                x = x[:self.num_images - self.seen]
            if len(x) == 0:
                continue
            self.seen += len(x)
            yield x.to(device=self.device, dtype=self.dtype)


def _folder_dataset(model: nn.Module, folder: str | os.PathLike, in_chans: int | None):
    """The images under ``folder`` as timm reads them (``ImageDataset``), with the model's eval transform."""
    from timm.data import ImageDataset, create_transform, resolve_data_config

    path = os.fspath(folder)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"recalibrate_norm: image folder {path} does not exist or is not a folder")
    config = resolve_data_config(model=model)
    chans = config['input_size'][0]
    if in_chans is not None and chans != in_chans:
        raise ValueError(f"recalibrate_norm: the model takes {in_chans}-channel images but its pretrained_cfg "
                         f"describes {chans}-channel inputs (input_size {tuple(config['input_size'])}, mean {config['mean']}); "
                         f"load and normalise the images yourself and pass a tensor or a DataLoader")
    transform = create_transform(**config, is_training=False)
    try:
        dataset = ImageDataset(path, transform=transform, input_img_mode='L' if chans == 1 else 'RGB')
    except RuntimeError as e:  # timm: "Found 0 images in subfolders of ..."
        raise ValueError(f"recalibrate_norm: no images in {path} ({e})") from None
    return dataset, config


def _folder_batches(model: nn.Module, folder, in_chans: int | None, num_images: int | None,
                    batch_size: int) -> Iterable:
    dataset, config = _folder_dataset(model, folder, in_chans)
    total = len(dataset)
    if num_images is not None and num_images < total:
        pick = torch.randperm(total, generator=torch.Generator().manual_seed(_FOLDER_SEED))[:num_images]
        dataset = torch.utils.data.Subset(dataset, sorted(pick.tolist()))
    _logger.info(f"recalibrate_norm: {len(dataset)} of {total} images of {os.fspath(folder)} at "
                 f"{tuple(config['input_size'])}, mean {tuple(config['mean'])}, std {tuple(config['std'])}")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _source_batches(model: nn.Module, data, batches: _Batches, num_images: int | None,
                    batch_size: int) -> Iterable:
    if isinstance(data, (str, os.PathLike)):
        return _folder_batches(model, data, batches.in_chans, num_images, batch_size)
    if isinstance(data, torch.Tensor):
        return batches.check(data, 'the image tensor').split(batch_size)
    if isinstance(data, Iterable) and not isinstance(data, (bytes, dict)):
        return data
    raise TypeError(f"recalibrate_norm: data must be an image tensor (N, C, H, W), a DataLoader or iterable of "
                    f"batches, or an image folder path; got {type(data).__name__}")


def _progress(batches: Iterable[torch.Tensor], total: int | None, enabled: bool) -> Iterable[torch.Tensor]:
    if not enabled:
        return batches
    from huggingface_hub.utils import tqdm

    def counted():
        with tqdm(total=total, desc='recalibrate_norm', unit='img', leave=False) as bar:
            for x in batches:
                yield x
                bar.update(len(x))
    return counted()


@torch.no_grad()
def recalibrate_norm(model: nn.Module, data, *, num_images: int | None = None, batch_size: int = 64,
                     device: str | torch.device | None = None, progress: bool = False) -> nn.Module:
    """Re-estimate the running statistics of ``model``'s BatchNorm layers from unlabeled images.

    The repair for the zero-shot cost of a conversion: the converted layers change the activations that
    reach each BatchNorm layer, whose running mean and variance still describe the base model's. This
    resets them and estimates them again, with a cumulative average over the batches (each batch counts
    equally), in one forward pass of the model in training mode without gradients:
    :func:`torch.optim.swa_utils.update_bn` does the work. Every BatchNorm subclass
    (``torch.nn.modules.batchnorm._BatchNorm``: ``BatchNorm2d``, ``SyncBatchNorm``, timm's
    ``BatchNormAct2d``, ...) that tracks running statistics is re-estimated; nothing else changes: weights,
    biases, other buffers and every module's train/eval mode are as before (``num_batches_tracked`` counts
    the batches of this pass). Dropout and drop-path layers are active during the pass, as in training,
    when the statistics were first estimated. ``SyncBatchNorm`` under an initialised process group
    synchronises the batch statistics across processes, as in training: every process must then pass the
    same number of batches.

    ``model`` itself is modified in place and returned: to keep a model unchanged, pass a copy
    (``copy.deepcopy``). A base model that ``model`` was converted from by ``asapify(copy.deepcopy(base))``
    or ``timm.create_model(..., pretrained=True)`` is untouched. If the pass fails, the previous
    statistics are put back.

    A model without BatchNorm running statistics (LayerNorm or GroupNorm models such as ConvNeXt, which
    normalise each sample on its own and keep no statistics) has nothing to re-estimate: it is returned
    unchanged, with a warning, and ``data`` is not read.

    Args:
        model: a model with BatchNorm layers, e.g. a converted timm CNN.
        data: the images, as the model takes them (float, normalised):

            * a float tensor (N, C, H, W), used in batches of ``batch_size``;
            * a DataLoader or any iterable of batches, each a tensor or an (images, labels...) tuple
              (labels are ignored);
            * a path to an image folder (files under it, in class subfolders or not), read with timm's
              ``ImageDataset`` and the model's evaluation transform (``resolve_data_config`` and
              ``create_transform`` from its ``pretrained_cfg``: size, crop, interpolation, mean, std).
        num_images: use at most this many images (None: all). A tensor or iterable gives its first ones;
            a larger folder gives a fixed random subset (seed 0), not the first class's images.
        batch_size: images per forward pass for a tensor or a folder (an iterable keeps its own batches).
            The estimate averages per-batch statistics, so batches of a few dozen images or more are best.
        device: where the images are sent (default: the device of the model's parameters); the model is
            not moved. Images are also cast to the model's floating dtype.
        progress: show a progress bar.

    Returns:
        ``model``, with re-estimated BatchNorm running statistics.

    Raises:
        ValueError: no images (empty tensor, loader or folder), images that are not float (N, C, H, W), a
            channel count other than the model's first convolution's, non-finite values, a folder whose
            images the model's pretrained_cfg cannot prepare, or ``num_images``/``batch_size`` below 1.
        TypeError: ``model`` is not a module, or ``data`` or a batch is of an unsupported type.
        FileNotFoundError: a folder path that does not exist.

    Example:
        >>> import copy, timm, torch
        >>> from timm_asap import asapify, recalibrate_norm
        >>> base = timm.create_model('resnet18').eval()
        >>> converted = asapify(copy.deepcopy(base), pool='asap')
        >>> _ = recalibrate_norm(converted, torch.randn(16, 3, 64, 64), batch_size=8)
        >>> converted.training
        False
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate_norm: model must be a torch.nn.Module, got {type(model).__name__}")
    _check_count('num_images', num_images, allow_none=True)
    _check_count('batch_size', batch_size, allow_none=False)
    layers = running_stat_layers(model)
    if not layers:
        found = _norm_layer_types(model)
        warnings.warn(f"recalibrate_norm: {type(model).__name__} has no BatchNorm running statistics to re-estimate "
                      f"(its normalisation layers: {', '.join(found) or 'none'}; LayerNorm and GroupNorm normalise "
                      f"each sample on its own and keep no statistics); the model is returned unchanged",
                      UserWarning, stacklevel=2)
        return model
    model_device, dtype = _model_device_dtype(model)
    batches = _Batches(model, num_images, torch.device(device) if device is not None else model_device, dtype)
    source = _source_batches(model, data, batches, num_images, batch_size)
    stream = batches(source)
    first = next(stream, None)  # checked before anything is reset
    if first is None:
        raise ValueError(f"recalibrate_norm: no images in the data given ({type(data).__name__})")
    total = num_images if num_images is not None else (len(data) if isinstance(data, torch.Tensor) else None)
    modes = {m: m.training for m in model.modules()}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(),
                 None if m.num_batches_tracked is None else m.num_batches_tracked.clone(), m.momentum)
             for m in layers}
    try:
        update_bn(_progress(itertools.chain([first], stream), total, progress), model)
    except BaseException:
        for m, (mean, var, count, momentum) in saved.items():
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if count is not None:
                m.num_batches_tracked.copy_(count)
            m.momentum = momentum
        raise
    finally:
        for m, training in modes.items():
            m.training = training
    _logger.info(f"recalibrate_norm: re-estimated {len(layers)} BatchNorm layers on {batches.seen} images")
    return model
