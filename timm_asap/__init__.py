"""timm-asap: ASAP and FLC pooling for timm CNNs (Grabinski, Keuper & Keuper, arXiv:2307.09804).

``import timm_asap`` registers the ``<base>_asap`` / ``<base>_flc`` architectures (and the CIFAR-size
families) in timm's model registry, so ``timm.create_model('resnet50_asap', pretrained=True)`` works;
it imports nothing beyond torch and timm and changes nothing in other libraries. The checked Hub
loaders are in :mod:`timm_asap.hub` (imported on first use of ``timm_asap.hub``: the module-level
``__getattr__`` below only defers that import). Fine-tuning, evaluation, the study, publishing and the
command-line tools are the lab's (:mod:`timm_asap_lab`), which builds on this package and is never
imported by it.

Public API: the layers (:class:`ASAP2d`, :class:`FLC2d`, :func:`asap_pool2d`, :func:`flc_pool2d`,
:func:`create_pool`), the conversion (:func:`asapify`) and its repair (:func:`recalibrate_norm`: BatchNorm
statistics re-estimated from unlabeled images), the registry lookups (:func:`list_variants`,
:class:`UnknownModelError`, :class:`WeightsNotAvailableError`) and :data:`__version__`.
"""
import importlib

from timm_asap import models  # noqa: F401  (registers the architectures with timm)
from timm_asap.layers import ASAP2d, FLC2d, asap_pool2d, create_pool, flc_pool2d
from timm_asap.models import UnknownModelError, WeightsNotAvailableError, asapify, list_variants, recalibrate_norm
from timm_asap.version import __version__

__all__ = ['ASAP2d', 'FLC2d', 'asap_pool2d', 'flc_pool2d', 'create_pool', 'asapify', 'recalibrate_norm', 'list_variants',
           'UnknownModelError', 'WeightsNotAvailableError', '__version__']


def __getattr__(name: str):
    if name == 'hub':  # the Hub loaders: imported when first used, not by ``import timm_asap``
        return importlib.import_module(f"{__name__}.hub")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
