"""Build a pooling layer by name."""
from __future__ import annotations

from torch import nn

from .asap import ASAP2d
from .fft_pool import ASAP2dFFT, FLC2dFFT
from .flc import FLC2d

__all__ = ['POOL_LAYERS', 'create_pool']

POOL_LAYERS: dict[str, type[nn.Module]] = {
    'asap': ASAP2d,
    'flc': FLC2d,
    'asap_fft': ASAP2dFFT,
    'flc_fft': FLC2dFFT,
}


def create_pool(name: str, **kwargs) -> nn.Module:
    """Instantiate a downsample-by-2 pooling layer: ``'asap'``, ``'flc'``, ``'asap_fft'`` or ``'flc_fft'``.

    Keyword arguments go to the layer (e.g. ``mode='reference'``, ``padding='large'``).
    """
    try:
        cls = POOL_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown pool {name!r}; allowed: {sorted(POOL_LAYERS)}") from None
    return cls(**kwargs)
