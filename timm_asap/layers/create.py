"""Build a pooling layer by name."""
from __future__ import annotations

from torch import nn

from timm_asap.layers.asap import ASAP2d
from timm_asap.layers.band import check_choice, init_arguments
from timm_asap.layers.fft_pool import ASAP2dFFT, FLC2dFFT
from timm_asap.layers.flc import FLC2d

__all__ = ['POOL_LAYERS', 'create_pool', 'pool_arguments']

POOL_LAYERS: dict[str, type[nn.Module]] = {
    'asap': ASAP2d,
    'flc': FLC2d,
    'asap_fft': ASAP2dFFT,
    'flc_fft': FLC2dFFT,
}


def _pool_class(name) -> type[nn.Module]:
    return POOL_LAYERS[check_choice('pool name', name, sorted(POOL_LAYERS))]


def pool_arguments(name: str) -> tuple[str, ...]:
    """The keyword arguments the layer ``name`` takes, e.g. ``('channels', 'stride', 'padding', 'mode',
    'device', 'dtype')`` for ``'asap'``.

    Raises:
        ValueError: for an unknown pool name (the message lists the allowed ones).
    """
    return init_arguments(_pool_class(name))


def create_pool(name: str, **kwargs) -> nn.Module:
    """Instantiate a downsample-by-2 pooling layer: ``'asap'``, ``'flc'``, ``'asap_fft'`` or ``'flc_fft'``.

    Keyword arguments go to the layer (e.g. ``mode='reference'``, ``padding='large'``).

    Raises:
        ValueError: for an unknown pool name or a bad option value.
        TypeError: for an argument the layer does not take (the message lists :func:`pool_arguments`).

    Example:
        >>> create_pool('flc', mode='reference')
        FLC2d(mode='reference', variant='real', norm='forward')
    """
    return _pool_class(name)(**kwargs)
