"""timm-asap: ASAP and FLC pooling for timm CNNs (Grabinski, Keuper & Keuper, arXiv:2307.09804).

``import timm_asap`` registers the ``<base>_asap`` / ``<base>_flc`` architectures (and the CIFAR-size
families) in timm's model registry, so ``timm.create_model('resnet50_asap', pretrained=True)`` works.
"""
from . import models  # noqa: F401  (registers the architectures with timm)
from . import hub  # noqa: F401  (transformers integration: our error for unregistered architectures)
from .layers import ASAP2d, FLC2d, asap_pool2d, create_pool, flc_pool2d
from .models import asapify, list_variants
from .version import __version__

__all__ = ['ASAP2d', 'FLC2d', 'asap_pool2d', 'flc_pool2d', 'create_pool', 'asapify', 'list_variants', '__version__']
