"""ASAP/FLC variants of timm CNNs registered in timm's model registry, and the conversion itself.

Importing this package registers ``<base>_asap``/``<base>_flc`` for the supported timm bases
(:mod:`timm_asap.models.asap_timm`) and the CIFAR-size families ``resnet18_cifar``,
``preactresnet18``, ``wide_resnet28_10`` with their variants (:mod:`timm_asap.models.asap_cifar`).
"""
from ._builder import HUB_ORG, PAPER_IDS, TAG_INFO, VARIANTS, TagInfo, Variant, WeightsNotAvailableError, check_hub_configs
from .asap_cifar import CIFAR_ARCHITECTURES, CifarResNet, PreActBlock, PreActResNet
from .asap_timm import BASE_ARCHITECTURES
from .convert import (
    ConversionError, PooledConvMixin, SpectralDownsample, StridedOp, asapify, is_converted, plan_conversion,
    spectral_pool_modules,
)
from .factory import (
    UnknownModelError, base_architecture, check_model_name, create_model, get_variant, is_loadable, list_variants,
    loadable_tags, unpublished_tags,
)

check_hub_configs()

__all__ = [
    'asapify', 'plan_conversion', 'StridedOp', 'ConversionError', 'PooledConvMixin', 'SpectralDownsample',
    'is_converted', 'spectral_pool_modules',
    'BASE_ARCHITECTURES', 'CIFAR_ARCHITECTURES', 'CifarResNet', 'PreActBlock', 'PreActResNet',
    'HUB_ORG', 'PAPER_IDS', 'TAG_INFO', 'VARIANTS', 'TagInfo', 'Variant', 'WeightsNotAvailableError',
    'UnknownModelError', 'check_model_name', 'create_model', 'list_variants', 'get_variant', 'base_architecture',
    'is_loadable', 'loadable_tags', 'unpublished_tags', 'check_hub_configs',
]
