"""Names of earlier releases, kept working with a DeprecationWarning.

``timm_asap.models.create_model`` (shadowed ``timm.create_model`` with another signature),
``VARIANTS``/``TAG_INFO`` (tables beside timm's registry; now computed from it) and the module
``timm_asap.models.factory``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import timm
from timm.models import get_arch_pretrained_cfgs
from torch import nn

from .registry import check_model_name, get_variant, list_variants
from . import weight_tags

__all__ = ['TagInfo', 'create_model', 'variants_table', 'tag_info_table', 'REPLACEMENTS']


@dataclass(frozen=True)
class TagInfo:
    """Where the weights of one ``architecture.tag`` come from (deprecated record; read timm's pretrained cfgs).

    Attributes:
        kind: ``'base'``, ``'hub'`` (a weight-tag table entry) or ``'none'``.
        published: whether the weights can be downloaded.
        source: the base ``model.tag`` for ``'base'``, the recipe file for ``'hub'``.
        model_args: default model kwargs of the tag.
    """

    kind: str
    published: bool
    source: str = ''
    model_args: dict = field(default_factory=dict)


def create_model(name: str, **kwargs) -> nn.Module:
    """Deprecated: ``timm.create_model`` after :func:`~timm_asap.models.check_model_name` (use those two)."""
    check_model_name(name)
    return timm.create_model(name, **kwargs)


def variants_table() -> dict:
    """``{name: Variant}`` of every registered variant, computed from timm's registry."""
    return {n: get_variant(n) for n in list_variants()}


def tag_info_table() -> dict:
    """``{'arch.tag': TagInfo}`` computed from timm's pretrained cfgs and the weight-tag table."""
    trained = {t.name: t for t in weight_tags.WEIGHT_TAGS}
    out = {}
    for arch in list_variants():
        for full, cfg in get_arch_pretrained_cfgs(arch).items():
            full = full if cfg.tag else arch
            if full in trained:
                t = trained[full]
                out[full] = TagInfo('hub', t.published, f"hub_configs/{t.recipe}", dict(t.model_args))
            elif (cfg.tag or '').endswith('_base'):
                out[full] = TagInfo('base', True, f"{get_variant(arch).base}.{cfg.tag[:-len('_base')]}")
            else:
                out[full] = TagInfo('none', False)
    return out


REPLACEMENTS = {
    'create_model': ('timm.create_model (after import timm_asap) or timm_asap.hub.load_model', lambda: create_model),
    'VARIANTS': ('timm_asap.models.list_variants() / get_variant()', variants_table),
    'TAG_INFO': ("timm's pretrained cfgs (timm.models.get_arch_pretrained_cfgs) and "
                 "timm_asap.models.WEIGHT_TAGS", tag_info_table),
    'TagInfo': ('timm.models.PretrainedCfg / timm_asap.models.WeightTag', lambda: TagInfo),
}
