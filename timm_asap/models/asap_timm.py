"""ASAP and FLC variants of timm's ImageNet CNNs, registered in timm: ``<base>_asap`` and ``<base>_flc``.

Each variant is the base architecture built by its own timm entrypoint (``build_model_with_cfg``)
and converted by :func:`timm_asap.models.asapify`. Weight tags: ``<base_tag>_base`` for every base
checkpoint (zero-shot conversion, e.g. ``resnet50_asap.tv_in1k_base`` loads ``timm/resnet50.tv_in1k``)
and one tag per entry of :data:`~timm_asap.models.weight_tags.WEIGHT_TAGS` (our fine-tuned weights). The ``_base`` tags are a
starting point: the converted network loses accuracy until fine-tuned (their cfgs' notes give the
measured figures). ``timm.create_model`` kwargs of :func:`~timm_asap.models.creation.create_variant`
(``pool_mode``, ``pool_args``, ``patchify``, ``pool_position``) set the conversion, e.g.
``pool_position='after'`` runs each strided conv at stride 1 and pools its output.

Example:
    >>> import timm, timm_asap
    >>> model = timm.create_model('resnet50_asap.tv_in1k_base', pretrained=True)
    >>> model = timm.create_model('resnet50_asap', pool_position='after')
"""
from __future__ import annotations

import functools
from typing import Callable

from timm.models import generate_default_cfgs, model_entrypoint, register_model
from torch import nn

from timm_asap.layers.band import POOLS
from timm_asap.models.creation import create_variant
from timm_asap.models.registry import base_tag_cfgs, make_entrypoint, variant_cfgs

__all__ = ['BASE_ARCHITECTURES', 'POOLS', 'variant_pretrained_cfgs']

_POOL_TEXT = {
    'asap': 'ASAP (aliasing- and spectral-artifact-free pooling, arXiv:2307.09804)',
    'flc': 'FLC (FrequencyLowCut pooling, arXiv:2204.00491)',
}

#: pretrained cfgs by registered name; :func:`_variant` adds each variant's before timm's ``register_model``
#: reads them
default_cfgs: dict = {}


def variant_pretrained_cfgs(variant: str) -> dict:
    """``'arch.tag'``-keyed pretrained cfgs of ``<base>_<pool>``: its weight tags and base checkpoints."""
    base, _, pool = variant.rpartition('_')
    base_entries = base_tag_cfgs(variant, base, pool)
    return variant_cfgs(variant, base_entries[0][1], base_entries)


def _variant(base: str, pool: str) -> Callable[..., nn.Module]:
    """The entrypoint ``<base>_<pool>`` of this module (name, module and docstring set), with its pretrained
    cfgs added to :data:`default_cfgs`, ready for timm's ``register_model``."""
    variant = f"{base}_{pool}"
    default_cfgs.update(generate_default_cfgs(variant_pretrained_cfgs(variant)))
    create = functools.partial(create_variant, variant, model_entrypoint(base), pool)
    doc = (f"{base} with every stride-2 downsampling replaced by {_POOL_TEXT[pool]} followed by the "
           f"same op at stride 1. State dict identical to {base}'s; tags '<base_tag>_base' load "
           f"{base}'s timm checkpoints.")
    return make_entrypoint(variant, __name__, create, doc)


# One line per registered variant: ``timm.create_model('<base>_<pool>')`` calls the entrypoint of that name.
resnet18_asap = register_model(_variant('resnet18', 'asap'))
resnet18_flc = register_model(_variant('resnet18', 'flc'))
resnet26_asap = register_model(_variant('resnet26', 'asap'))
resnet26_flc = register_model(_variant('resnet26', 'flc'))
resnet34_asap = register_model(_variant('resnet34', 'asap'))
resnet34_flc = register_model(_variant('resnet34', 'flc'))
resnet50_asap = register_model(_variant('resnet50', 'asap'))
resnet50_flc = register_model(_variant('resnet50', 'flc'))
resnet101_asap = register_model(_variant('resnet101', 'asap'))
resnet101_flc = register_model(_variant('resnet101', 'flc'))
resnet152_asap = register_model(_variant('resnet152', 'asap'))
resnet152_flc = register_model(_variant('resnet152', 'flc'))
resnet50d_asap = register_model(_variant('resnet50d', 'asap'))
resnet50d_flc = register_model(_variant('resnet50d', 'flc'))
wide_resnet50_2_asap = register_model(_variant('wide_resnet50_2', 'asap'))
wide_resnet50_2_flc = register_model(_variant('wide_resnet50_2', 'flc'))
wide_resnet101_2_asap = register_model(_variant('wide_resnet101_2', 'asap'))
wide_resnet101_2_flc = register_model(_variant('wide_resnet101_2', 'flc'))
resnext50_32x4d_asap = register_model(_variant('resnext50_32x4d', 'asap'))
resnext50_32x4d_flc = register_model(_variant('resnext50_32x4d', 'flc'))
seresnet50_asap = register_model(_variant('seresnet50', 'asap'))
seresnet50_flc = register_model(_variant('seresnet50', 'flc'))
regnety_008_asap = register_model(_variant('regnety_008', 'asap'))
regnety_008_flc = register_model(_variant('regnety_008', 'flc'))
regnety_032_asap = register_model(_variant('regnety_032', 'asap'))
regnety_032_flc = register_model(_variant('regnety_032', 'flc'))
efficientnet_b0_asap = register_model(_variant('efficientnet_b0', 'asap'))
efficientnet_b0_flc = register_model(_variant('efficientnet_b0', 'flc'))
efficientnet_b3_asap = register_model(_variant('efficientnet_b3', 'asap'))
efficientnet_b3_flc = register_model(_variant('efficientnet_b3', 'flc'))
mobilenetv3_large_100_asap = register_model(_variant('mobilenetv3_large_100', 'asap'))
mobilenetv3_large_100_flc = register_model(_variant('mobilenetv3_large_100', 'flc'))
convnext_atto_asap = register_model(_variant('convnext_atto', 'asap'))
convnext_atto_flc = register_model(_variant('convnext_atto', 'flc'))
convnext_tiny_asap = register_model(_variant('convnext_tiny', 'asap'))
convnext_tiny_flc = register_model(_variant('convnext_tiny', 'flc'))
densenet121_asap = register_model(_variant('densenet121', 'asap'))
densenet121_flc = register_model(_variant('densenet121', 'flc'))
vgg16_bn_asap = register_model(_variant('vgg16_bn', 'asap'))
vgg16_bn_flc = register_model(_variant('vgg16_bn', 'flc'))

#: the timm architectures with ASAP/FLC variants, in the order of the entrypoints above
BASE_ARCHITECTURES = tuple(dict.fromkeys(name.rpartition('_')[0] for name in default_cfgs))
