"""ASAP and FLC variants of timm's ImageNet CNNs, registered in timm: ``<base>_asap`` and ``<base>_flc``.

Each variant is the base architecture built by its own timm entrypoint (``build_model_with_cfg``)
and converted by :func:`timm_asap.models.asapify`. Weight tags: ``<base_tag>_base`` for every base
checkpoint (zero-shot conversion, e.g. ``resnet50_asap.tv_in1k_base`` loads ``timm/resnet50.tv_in1k``)
and one tag per ``hub_configs/<name>.<tag>.yaml`` (our fine-tuned weights). The ``_base`` tags are a
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

from timm.models import generate_default_cfgs, model_entrypoint, register_model

from timm_asap.layers.band import POOLS
from timm_asap.models.creation import create_variant
from timm_asap.models.registry import base_tag_cfgs, make_entrypoint, variant_cfgs

__all__ = ['BASE_ARCHITECTURES', 'POOLS', 'variant_pretrained_cfgs']

BASE_ARCHITECTURES = (
    'resnet18', 'resnet26', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnet50d',
    'wide_resnet50_2', 'wide_resnet101_2', 'resnext50_32x4d', 'seresnet50',
    'regnety_008', 'regnety_032',
    'efficientnet_b0', 'efficientnet_b3', 'mobilenetv3_large_100',
    'convnext_atto', 'convnext_tiny',
    'densenet121', 'vgg16_bn',
)

_POOL_TEXT = {
    'asap': 'ASAP (aliasing- and spectral-artifact-free pooling, arXiv:2307.09804)',
    'flc': 'FLC (FrequencyLowCut pooling, arXiv:2204.00491)',
}


def variant_pretrained_cfgs(variant: str) -> dict:
    """``'arch.tag'``-keyed pretrained cfgs of ``<base>_<pool>``: its weight tags and base checkpoints."""
    base, _, pool = variant.rpartition('_')
    base_entries = base_tag_cfgs(variant, base, pool)
    return variant_cfgs(variant, base_entries[0][1], base_entries)


default_cfgs = generate_default_cfgs({k: v for base in BASE_ARCHITECTURES for pool in POOLS
                                      for k, v in variant_pretrained_cfgs(f"{base}_{pool}").items()})


def _register_all() -> None:
    for base in BASE_ARCHITECTURES:
        base_fn = model_entrypoint(base)
        for pool in POOLS:
            variant = f"{base}_{pool}"
            create = functools.partial(create_variant, variant, base_fn, pool)
            doc = (f"{base} with every stride-2 downsampling replaced by {_POOL_TEXT[pool]} followed by the "
                   f"same op at stride 1. State dict identical to {base}'s; tags '<base_tag>_base' load "
                   f"{base}'s timm checkpoints.")
            fn = make_entrypoint(variant, __name__, create, doc)
            globals()[variant] = fn
            register_model(fn)


_register_all()
