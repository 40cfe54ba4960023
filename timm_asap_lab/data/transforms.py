"""Input size, normalisation and timm transforms for a run configuration."""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.data import create_transform
from timm.data import resolve_data_config as timm_resolve_data_config

from timm_asap_lab.config import RunConfig
from timm_asap_lab.data.errors import DataError
from timm_asap_lab.data.fashion_mnist import is_fashion_mnist

__all__ = ['run_data_config', 'create_transforms', 'is_fashion_mnist', 'fit_channels']

def fit_channels(key: str, values, in_chans: int, average: bool, remedy: str | None = None) -> tuple[float, ...]:
    """Fit per-channel statistics to ``in_chans`` channels.

    One value is repeated; with ``average``, RGB statistics become their mean for grey input.

    Args:
        key: what the values are, for the error message (e.g. ``data.mean``).
        values: the statistics.
        in_chans: the model's input channels.
        average: allow averaging several values into one for a 1-channel model.
        remedy: what the message tells the user to do (default: set ``data.<name>`` to ``in_chans`` values).

    Raises:
        DataError: the count fits neither way (the message names ``key``).
    """
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1 and average:  # an RGB model's statistics for grey input: the channel average
        return (sum(values) / len(values),)
    remedy = remedy or f"set data.{key.split('.')[-1]} to {in_chans} values (or one)"
    raise DataError(f"{key} has {len(values)} values but the model takes {in_chans} channels; {remedy}")


def run_data_config(cfg: RunConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """The timm data config (input_size, mean, std, crop_pct, interpolation, crop_mode) of a run.

    Values set in ``cfg.data`` win; the rest come from the model's ``pretrained_cfg`` (via
    ``timm.data.resolve_data_config``). The input size is ``(model.in_chans, model.img_size,
    model.img_size)``; mean and std are fitted to the channel count (an RGB model's statistics are
    averaged for grey input). Fashion-MNIST images are resized whole (``crop_pct`` 1.0) unless
    ``data.crop_pct`` says otherwise.

    Args:
        cfg: the run configuration.
        model: the model whose ``pretrained_cfg`` supplies defaults (optional).

    Returns:
        A dict accepted by ``timm.data.create_transform(**...)``.

    Raises:
        DataError: mean/std lengths do not fit ``model.in_chans``.
    """
    c = cfg.model.in_chans
    args: dict[str, Any] = {'input_size': (c, cfg.model.img_size, cfg.model.img_size),
                            'interpolation': cfg.data.interpolation}
    if cfg.data.mean is not None:
        args['mean'] = fit_channels('data.mean', cfg.data.mean, c, average=False)
    if cfg.data.std is not None:
        args['std'] = fit_channels('data.std', cfg.data.std, c, average=False)
    crop_pct = cfg.data.crop_pct
    if crop_pct is None and is_fashion_mnist(cfg.data.dataset):
        crop_pct = 1.0
    if crop_pct is not None:
        args['crop_pct'] = crop_pct
    if model is not None:
        resolved = timm_resolve_data_config(args, model=model)
    else:
        resolved = timm_resolve_data_config(args, pretrained_cfg={'input_size': args['input_size']})
    resolved['input_size'] = args['input_size']
    resolved['mean'] = fit_channels('data.mean', resolved['mean'], c, average=True)
    resolved['std'] = fit_channels('data.std', resolved['std'], c, average=True)
    if any(s <= 0 for s in resolved['std']):
        raise DataError(f"data.std must be positive, got {resolved['std']}")
    return resolved


def create_transforms(cfg: RunConfig, data_config: dict[str, Any], is_training: bool):
    """timm's train or eval transform for a run (PIL image in, normalised CHW float tensor out).

    Args:
        cfg: the run configuration (augmentation settings in ``cfg.data``).
        data_config: from :func:`run_data_config`.
        is_training: the augmenting training transform, else the evaluation transform.
    """
    d = cfg.data
    common = dict(input_size=data_config['input_size'], interpolation=data_config['interpolation'],
                  mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'],
                  crop_mode=data_config.get('crop_mode'))
    if not is_training:
        return create_transform(is_training=False, **common)
    return create_transform(
        is_training=True, no_aug=d.no_aug, scale=tuple(d.scale), ratio=tuple(d.ratio), hflip=d.hflip,
        color_jitter=d.color_jitter if d.color_jitter > 0 else None, auto_augment=d.auto_augment,
        re_prob=d.reprob, **common)
