"""ASAP/FLC variants of timm CNNs registered in timm's model registry, and the conversion itself.

Importing this package registers ``<base>_asap``/``<base>_flc`` for the supported timm bases
(:mod:`timm_asap.models.asap_timm`) and the CIFAR-size families ``resnet18_cifar``,
``preactresnet18``, ``wide_resnet28_10`` with their variants (:mod:`timm_asap.models.asap_cifar`).
Their weight tags are declared in :mod:`timm_asap.models.weight_tags`; every lookup here
(:func:`list_variants`, :func:`is_loadable`, ...) reads timm's registry. :func:`recalibrate_norm`
(:mod:`timm_asap.models.repair`) re-estimates a converted model's BatchNorm statistics from unlabeled images.
"""
from timm_asap.models import asap_cifar, asap_timm  # noqa: F401  (register the architectures with timm)
from timm_asap.models.asap_cifar import CIFAR_ARCHITECTURES, CifarResNet, PreActBlock, PreActResNet
from timm_asap.models.asap_timm import BASE_ARCHITECTURES
from timm_asap.models.convert import (POOL_POSITIONS, ConversionError, PooledConvMixin, SpectralDownsample, StridedOp,
                                      asapify, is_converted, plan_conversion, pool_kwarg_names, pool_position_of,
                                      pooling_signature, spectral_pool_modules)
from timm_asap.models.creation import WeightsNotAvailableError
from timm_asap.models.registry import (UnknownModelError, Variant, base_architecture, check_architecture,
                                       check_model_name, get_variant, is_loadable, is_variant, list_variants,
                                       loadable_tags, unpublished_tags)
from timm_asap.models.repair import recalibrate_norm, running_stat_layers
from timm_asap.models.weight_tags import HUB_ORG, PAPER_IDS, WEIGHT_TAGS, WeightTag

__all__ = [
    'asapify', 'plan_conversion', 'StridedOp', 'ConversionError', 'PooledConvMixin', 'SpectralDownsample',
    'is_converted', 'spectral_pool_modules', 'pooling_signature', 'pool_kwarg_names', 'POOL_POSITIONS',
    'pool_position_of', 'recalibrate_norm', 'running_stat_layers',
    'BASE_ARCHITECTURES', 'CIFAR_ARCHITECTURES', 'CifarResNet', 'PreActBlock', 'PreActResNet',
    'HUB_ORG', 'PAPER_IDS', 'WEIGHT_TAGS', 'WeightTag', 'Variant', 'WeightsNotAvailableError', 'UnknownModelError',
    'check_model_name', 'check_architecture', 'list_variants', 'get_variant', 'is_variant', 'base_architecture', 'is_loadable',
    'loadable_tags', 'unpublished_tags',
]
