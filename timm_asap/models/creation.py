"""Building a registered variant: the base architecture's own builder, then :func:`asapify`.

A variant is built by the base architecture's timm entrypoint (so ``build_model_with_cfg`` does
pretrained loading, ``features_only`` and kwargs handling, with the variant's pretrained cfg), then
converted in place. The arguments timm does not check (``in_chans``, ``num_classes``, ``pool_args``)
are checked here, before anything is built.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Callable

from timm.models import FeatureGraphNet, PretrainedCfg, resolve_pretrained_cfg
from torch import nn

from timm_asap.models.convert import asapify, check_placement, check_pool_kwargs
from timm_asap.models.registry import loadable_tags, unpublished_tags
from timm_asap.models.weight_tags import weight_tag

__all__ = ['WeightsNotAvailableError', 'create_variant', 'check_model_kwargs']

_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id')
_LOCAL_HINT = " (or pass pretrained_cfg_overlay=dict(file='<weights file>') to load a local file)"


class WeightsNotAvailableError(RuntimeError):
    """``pretrained=True`` asked for a tag whose weights do not exist (yet); the message lists those that do."""


def _full(arch: str, tag: str | None) -> str:
    return f"{arch}.{tag}" if tag else arch


def _check_loadable(variant: str, cfg: PretrainedCfg) -> None:
    """Raise :class:`WeightsNotAvailableError` when ``cfg`` names no weights source."""
    if any(getattr(cfg, k) for k in _SOURCE_KEYS):
        return
    name = _full(variant, cfg.tag)
    loadable, waiting = loadable_tags(variant), unpublished_tags(variant)
    listing = (f"loadable: {', '.join(loadable) if loadable else 'none'}"
               + (f"; not published yet: {', '.join(waiting)}" if waiting else ''))
    entry = weight_tag(name)
    if entry is not None and not entry.published:
        raise WeightsNotAvailableError(
            f"{name}: weights are not published yet (repo {entry.hf_hub_id}, recipe hub_configs/{entry.recipe}); "
            f"pretrained=True will not load anything else. {listing}{_LOCAL_HINT}")
    raise WeightsNotAvailableError(f"{name}: no pretrained weights for this tag. {listing}{_LOCAL_HINT}")


def _check_count(name: str, value, low: int, variant: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = 'a positive integer' if low > 0 else 'a non-negative integer (0: no classifier)'
        raise ValueError(f"{variant}: {name} must be {allowed}, got {value!r}")


def check_model_kwargs(variant: str, pool: str, kwargs: dict) -> None:
    """Check the kwargs timm passes on unchecked: ``in_chans``, ``num_classes`` and the pooling options.

    Raises:
        ValueError: ``in_chans`` < 1 or ``num_classes`` < 0 (or not integers); ``pool_args``/
            ``pool_mode``/``patchify``/``pool_position`` given to a baseline without pooling; an unknown
            ``patchify``/``pool_position``, or ``pool_position='after'`` with ``patchify='before'``.
        TypeError: ``pool_args`` is not a dict, or holds keys the pooling does not take (the message
            lists the allowed keys).
    """
    if 'in_chans' in kwargs:
        _check_count('in_chans', kwargs['in_chans'], 1, variant)
    if 'num_classes' in kwargs:
        _check_count('num_classes', kwargs['num_classes'], 0, variant)
    pool_args = kwargs.get('pool_args')
    if pool == 'none':
        given = [k for k in ('pool_mode', 'pool_args', 'patchify', 'pool_position') if kwargs.get(k) is not None]
        if given:
            raise ValueError(f"{variant} has no spectral pooling; {', '.join(given)} apply to its _asap/_flc "
                             f"variants only")
        return
    if pool_args is not None and not isinstance(pool_args, Mapping):
        raise TypeError(f"{variant}: pool_args must be a dict of {pool.upper()} pooling-layer arguments, got "
                        f"{type(pool_args).__name__} {pool_args!r} (e.g. pool_args=dict(padding='large') for ASAP)")
    check_pool_kwargs(pool, dict(pool_args or {}), f"{variant} pool_args")
    try:  # before anything is built or downloaded
        check_placement(kwargs.get('patchify', 'after'), kwargs.get('pool_position', 'before'))
    except ValueError as e:
        raise ValueError(f"{variant}: {e}") from None


def _is_fx(feature_cls) -> bool:
    return feature_cls is FeatureGraphNet or (isinstance(feature_cls, str) and feature_cls.lower() == 'fx')


def _trace_after_conversion(kwargs: dict, convert: Callable[[nn.Module], nn.Module]) -> bool:
    """With ``features_only`` and the FX feature extractor (``feature_cls='fx'``, top level or in
    ``feature_cfg``), make the extractor convert the model before tracing it. Returns whether it did."""
    feature_cfg = kwargs.get('feature_cfg') or {}
    feature_cls = kwargs['feature_cls'] if 'feature_cls' in kwargs else feature_cfg.get('feature_cls')
    if not kwargs.get('features_only') or not _is_fx(feature_cls):
        return False

    def graph_features(model: nn.Module, **cfg) -> nn.Module:
        return FeatureGraphNet(convert(model), **cfg)

    # passed at the top level (build_model_with_cfg moves it into feature_cfg), so bases whose builders
    # set their own feature_cfg (ConvNeXt, ...) take it too; other feature_cfg entries stay
    rest = {k: v for k, v in feature_cfg.items() if k != 'feature_cls'}
    kwargs.pop('feature_cfg', None)
    if rest:
        kwargs['feature_cfg'] = rest
    kwargs['feature_cls'] = graph_features
    return True


def create_variant(
        variant: str,
        build_fn: Callable[..., nn.Module],
        pool: str,
        pretrained: bool = False,
        pretrained_cfg=None,
        pretrained_cfg_overlay: dict | None = None,
        **kwargs,
) -> nn.Module:
    """Build ``variant`` with ``build_fn`` (a timm entrypoint) and convert it with :func:`asapify`.

    Args:
        variant: registered name.
        build_fn: builder of the unconverted architecture; it receives ``pretrained``, the resolved
            pretrained cfg of ``variant`` and the remaining kwargs, so timm's ``build_model_with_cfg``
            loads the weights and builds ``features_only`` wrappers.
        pool: ``'asap'``, ``'flc'`` or ``'none'`` (no conversion).
        pretrained: load the tag's weights.
        pretrained_cfg: tag name, dict or PretrainedCfg (as ``timm.create_model`` passes it).
        pretrained_cfg_overlay: entries replacing those of the cfg (e.g. ``file=...``).
        **kwargs: model kwargs; ``pool_mode`` (``'centered'``/``'reference'``), ``pool_args`` (dict
            of pooling-layer arguments), ``patchify`` (``'after'``/``'before'``) and ``pool_position``
            (``'before'``, the paper's placement, or ``'after'``) go to :func:`asapify`, the rest to the
            model. A weight tag's ``model_args`` are the defaults.

    Raises:
        WeightsNotAvailableError: ``pretrained=True`` on an unpublished or weightless tag, unless the
            caller supplied the weights (overlay ``file``/``url``/``hf_hub_id``/``state_dict``, or a
            full pretrained cfg, as timm's ``hf-hub:`` loading does).
        ValueError, TypeError: see :func:`check_model_kwargs`.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    if pretrained:
        _check_loadable(variant, cfg)
    entry = weight_tag(_full(variant, cfg.tag))  # a full cfg (from a Hub config.json) still names its tag
    for k, v in (entry.model_args if entry is not None else {}).items():
        kwargs.setdefault(k, v)
    check_model_kwargs(variant, pool, kwargs)
    if pool == 'none':
        return build_fn(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    convert = functools.partial(asapify, pool=pool, mode=kwargs.pop('pool_mode', 'centered'),
                                patchify=kwargs.pop('patchify', 'after'),
                                pool_position=kwargs.pop('pool_position', 'before'),
                                **dict(kwargs.pop('pool_args', None) or {}))
    traced = _trace_after_conversion(kwargs, convert)  # FX tracing must see the converted model
    model = build_fn(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    return model if traced else convert(model)


