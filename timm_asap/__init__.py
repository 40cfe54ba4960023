"""timm-asap: ASAP and FLC pooling for timm CNNs (Grabinski, Keuper & Keuper, arXiv:2307.09804)."""
from .layers import ASAP2d, FLC2d, asap_pool2d, create_pool, flc_pool2d
from .version import __version__

__all__ = ['ASAP2d', 'FLC2d', 'asap_pool2d', 'flc_pool2d', 'create_pool', '__version__']
