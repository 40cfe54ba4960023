"""Registry plumbing shared by the ASAP/FLC model modules.

Pretrained configs of a variant ``<base>_<pool>`` come from two places:

* ``<base_tag>_base`` tags: the base architecture's timm checkpoints (zero-shot conversion; the
  state dict loads unchanged because :func:`asapify` keeps every name and shape), e.g.
  ``resnet50_asap.tv_in1k_base`` -> ``timm/resnet50.tv_in1k``.
* one tag per ``hub_configs/<architecture>.<tag>.yaml``: the weights we train and publish
  (``hf_hub_id`` = ``hub.repo_id``). While ``hub.published`` is false, ``pretrained=True`` on that
  tag raises :class:`WeightsNotAvailableError` listing the loadable tags.

A variant is built by the base architecture's own timm entrypoint (so ``build_model_with_cfg``
does pretrained loading, ``features_only`` and kwargs handling, with the variant's pretrained cfg),
then converted in place by :func:`asapify`.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from timm.models import DefaultCfg, PretrainedCfg, get_arch_pretrained_cfgs, resolve_pretrained_cfg
from timm.models._features_fx import FeatureGraphNet
from torch import nn

from timm_asap.config import ConfigError, RunConfig, list_hub_configs, load_config

from .convert import asapify

__all__ = [
    'PAPER_IDS', 'HUB_ORG', 'WeightsNotAvailableError', 'TagInfo', 'TAG_INFO', 'VARIANTS', 'Variant',
    'base_tag_cfgs', 'hub_tag_cfgs', 'make_default_cfg', 'create_variant', 'make_entrypoint',
    'hub_configs_by_architecture', 'check_hub_configs', 'loadable_tags', 'unpublished_tags', 'no_weights_cfg',
]

PAPER_IDS = 'arXiv:2307.09804'
HUB_ORG = 'timm-asap'
_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id')


class WeightsNotAvailableError(RuntimeError):
    """``pretrained=True`` asked for a tag whose weights do not exist (yet); the message lists those that do."""


@dataclass(frozen=True)
class TagInfo:
    """Where the weights of one registered ``architecture.tag`` come from.

    Attributes:
        kind: ``'base'`` (the base architecture's timm checkpoint), ``'hub'`` (a hub_configs YAML)
            or ``'none'`` (no weights; random initialisation only).
        published: whether the weights can be downloaded (always True for ``'base'``).
        source: the base ``model.tag`` for ``'base'``, the YAML path for ``'hub'``.
        model_args: default ``create_model`` kwargs of this tag (e.g. ``pool_mode``).
    """

    kind: str
    published: bool
    source: str = ''
    model_args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """A registered architecture of this package.

    Attributes:
        name: registered name, e.g. ``resnet50_asap``.
        base: the architecture it converts (``resnet50``), or itself for a baseline.
        pool: ``'asap'``, ``'flc'`` or ``'none'`` (baseline CIFAR-size networks).
        module: registering module name (what ``timm.list_modules()`` shows).
    """

    name: str
    base: str
    pool: str
    module: str


TAG_INFO: dict[str, TagInfo] = {}   # 'arch.tag' (or 'arch' for the empty tag) -> TagInfo
VARIANTS: dict[str, Variant] = {}   # arch -> Variant


def _full(arch: str, tag: str) -> str:
    return f"{arch}.{tag}" if tag else arch


# ---------------------------------------------------------------------------------------------------
# pretrained cfgs
# ---------------------------------------------------------------------------------------------------

def base_tag_cfgs(variant: str, base: str, pool: str) -> list[tuple[str, PretrainedCfg]]:
    """``(<base_tag>_base, cfg)`` for every base checkpoint with weights, in the base's tag order.

    The cfg is the base's (hf_hub_id, url, input config, classifier, licence), with this project's
    paper id and a note naming the base checkpoint.
    """
    out = []
    for full, cfg in get_arch_pretrained_cfgs(base).items():
        if not cfg.has_weights:
            continue
        tag = f"{cfg.tag}_base"
        notes = (f"zero-shot {pool.upper()} conversion of {full}: its weights, loaded unchanged "
                 f"(fine-tune before use)",)
        if cfg.paper_ids:
            notes += (f"base weights: {cfg.paper_ids}",)
        new = dataclasses.replace(
            cfg, architecture=None, tag=None, paper_ids=PAPER_IDS, license=cfg.license or 'unknown',
            notes=notes + tuple(cfg.notes or ()),
            description=f"{variant}: {base} with {pool.upper()} downsampling, initialised from {full}")
        out.append((tag, new))
        TAG_INFO[_full(variant, tag)] = TagInfo('base', True, full)
    return out


@functools.lru_cache(maxsize=1)
def hub_configs_by_architecture() -> dict[str, list[tuple[RunConfig, Path]]]:
    """Shipped hub_configs grouped by ``model.architecture`` (file order)."""
    out: dict[str, list[tuple[RunConfig, Path]]] = {}
    for stem, path in list_hub_configs().items():
        cfg = load_config(path)
        if cfg.name != stem:
            raise ConfigError(f"{path}: file name must be '<model.architecture>.<model.tag>.yaml' = "
                              f"{cfg.name!r}.yaml, got {path.name!r}")
        out.setdefault(cfg.model.architecture, []).append((cfg, path))
    return out


def _scaled_pool_size(defaults: PretrainedCfg, img_size: int):
    if not defaults.pool_size or not defaults.input_size:
        return defaults.pool_size
    ratio = defaults.input_size[-1] / defaults.pool_size[-1]
    side = -(-img_size // round(ratio))
    return (side, side)


def hub_tag_cfgs(variant: str, pool: str, defaults: PretrainedCfg) -> tuple[list, list]:
    """``(published, unpublished)`` lists of ``(tag, cfg)`` from the hub_configs naming ``variant``.

    Args:
        variant: the registered architecture.
        pool: its pooling (``'asap'``, ``'flc'`` or ``'none'``); a config with another
            ``model.pool`` is an error.
        defaults: cfg whose first_conv/classifier/mean/std/interpolation fill what a config leaves open.

    Raises:
        ConfigError: a config disagrees with the architecture (pool) or has no tag.
    """
    published, unpublished = [], []
    for cfg, path in hub_configs_by_architecture().get(variant, []):
        m, d, h = cfg.model, cfg.data, cfg.hub
        if m.pool != pool:
            raise ConfigError(f"{path}: model.pool is {m.pool!r} but architecture {variant} uses {pool!r}")
        if not m.tag:
            raise ConfigError(f"{path}: model.tag must be set for a published configuration")
        repo_id = h.repo_id or f"{HUB_ORG}/{cfg.name}"
        notes = [f"hub config: {path.name}", f"pool={m.pool} mode={m.mode}"]
        if m.base:
            notes.append(f"initialised from {m.base}")
        if not h.published:
            notes.append('not published yet: pretrained=True raises')
        new = dataclasses.replace(
            defaults, url=None, file=None, state_dict=None, hf_hub_id=repo_id, hf_hub_filename=None,
            architecture=None, tag=None, custom_load=False,
            input_size=(m.in_chans, m.img_size, m.img_size), test_input_size=None, min_input_size=None,
            pool_size=_scaled_pool_size(defaults, m.img_size),
            mean=tuple(d.mean) if d.mean else (defaults.mean if m.in_chans == len(defaults.mean) else None),
            std=tuple(d.std) if d.std else (defaults.std if m.in_chans == len(defaults.std) else None),
            interpolation=d.interpolation or defaults.interpolation,
            crop_pct=d.crop_pct if d.crop_pct is not None else defaults.crop_pct, test_crop_pct=None,
            num_classes=m.num_classes, label_offset=None,
            label_names=tuple(d.label_names) if d.label_names else None, label_descriptions=None,
            license=h.license, paper_ids=PAPER_IDS, notes=tuple(notes),
            description=f"{cfg.name}: {variant} trained with {path.name}", origin_url=None, paper_name=None)
        if new.mean is None or new.std is None:
            raise ConfigError(f"{path}: data.mean and data.std must be given for in_chans={m.in_chans} "
                              f"(the base defaults have {len(defaults.mean)} channels)")
        model_args = dict(m.model_args)
        if pool != 'none':
            model_args.setdefault('pool_mode', m.mode)
        TAG_INFO[_full(variant, m.tag)] = TagInfo('hub', h.published, str(path), model_args)
        (published if h.published else unpublished).append((m.tag, new))
    return published, unpublished


def make_default_cfg(entries: list[tuple[str, PretrainedCfg]]) -> DefaultCfg:
    """A timm DefaultCfg with the tags in the given order (the first is the default tag)."""
    tags = [t for t, _ in entries]
    if len(set(tags)) != len(tags):
        raise ValueError(f"duplicate pretrained tags: {tags}")
    return DefaultCfg(tags=deque(tags), cfgs=dict(entries), is_pretrained=any(c.has_weights for _, c in entries))


def no_weights_cfg(variant: str, cfg: PretrainedCfg) -> tuple[str, PretrainedCfg]:
    """The untagged, weightless cfg of an architecture (random initialisation)."""
    TAG_INFO[variant] = TagInfo('none', False)
    return '', dataclasses.replace(cfg, url=None, file=None, hf_hub_id=None, paper_ids=PAPER_IDS)


# ---------------------------------------------------------------------------------------------------
# model creation
# ---------------------------------------------------------------------------------------------------

def loadable_tags(arch: str) -> list[str]:
    """Full names of ``arch``'s tags whose weights exist (base checkpoints, published hub configs)."""
    return [n for n, i in TAG_INFO.items() if n.split('.', 1)[0] == arch and i.published]


def unpublished_tags(arch: str) -> list[str]:
    """Full names of ``arch``'s hub-config tags that are not published yet."""
    return [n for n, i in TAG_INFO.items() if n.split('.', 1)[0] == arch and i.kind == 'hub' and not i.published]


def _check_loadable(variant: str, cfg: PretrainedCfg, info: TagInfo | None, explicit_source: bool) -> None:
    if explicit_source:
        return
    name = _full(variant, cfg.tag or '')
    loadable = loadable_tags(variant)
    waiting = unpublished_tags(variant)
    listing = (f"loadable: {', '.join(loadable) if loadable else 'none'}"
               + (f"; not published yet: {', '.join(waiting)}" if waiting else ''))
    hint = " (or pass pretrained_cfg_overlay=dict(file='<weights file>') to load a local file)"
    if info is not None and info.kind == 'hub' and not info.published:
        raise WeightsNotAvailableError(
            f"{name}: weights are not published yet ({Path(info.source).name} has hub.published: false, "
            f"repo {cfg.hf_hub_id}); pretrained=True will not load anything else. {listing}{hint}")
    if not any(getattr(cfg, k) for k in _SOURCE_KEYS):
        raise WeightsNotAvailableError(f"{name}: no pretrained weights for this tag. {listing}{hint}")


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
        build_fn: timm entrypoint of the unconverted architecture; it receives ``pretrained``, the
            resolved pretrained cfg of ``variant`` and the remaining kwargs, so timm's
            ``build_model_with_cfg`` loads the weights and builds ``features_only`` wrappers.
        pool: ``'asap'``, ``'flc'`` or ``'none'`` (no conversion).
        pretrained: load the tag's weights.
        pretrained_cfg: tag name, dict or PretrainedCfg (as ``timm.create_model`` passes it).
        pretrained_cfg_overlay: entries replacing those of the cfg (e.g. ``file=...``).
        **kwargs: model kwargs; ``pool_mode`` (``'centered'``/``'reference'``), ``pool_args`` (dict
            of pooling-layer arguments) and ``patchify`` (``'after'``/``'before'``) go to
            :func:`asapify`, the rest to the model.

    Raises:
        WeightsNotAvailableError: ``pretrained=True`` on an unpublished or weightless tag, unless the
            caller supplied the weights (overlay ``file``/``url``/``hf_hub_id``/``state_dict``, or a
            full pretrained cfg, as timm's ``hf-hub:`` loading does).
    """
    custom_cfg = pretrained_cfg is not None and not isinstance(pretrained_cfg, str)
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    # a full cfg (e.g. from a Hub config.json) still names its tag: its model args (pool_mode) apply
    info = TAG_INFO.get(_full(variant, cfg.tag or ''))
    if pretrained:
        explicit = custom_cfg or any((pretrained_cfg_overlay or {}).get(k) for k in _SOURCE_KEYS)
        _check_loadable(variant, cfg, info, explicit)
    if info is not None:
        for k, v in info.model_args.items():
            kwargs.setdefault(k, v)
    pool_mode = kwargs.pop('pool_mode', 'centered')
    pool_args = dict(kwargs.pop('pool_args', None) or {})
    patchify = kwargs.pop('patchify', 'after')
    convert = functools.partial(asapify, pool=pool, mode=pool_mode, patchify=patchify, **pool_args)
    feature_cls = kwargs.get('feature_cls')
    traced = bool(kwargs.get('features_only')) and (
        feature_cls is FeatureGraphNet or (isinstance(feature_cls, str) and feature_cls.lower() == 'fx'))
    if traced and pool != 'none':
        # FX tracing must see the converted model: convert inside the builder, before the wrapper traces it
        def graph_features(model: nn.Module, **feature_cfg) -> nn.Module:
            return FeatureGraphNet(convert(model), **feature_cfg)
        kwargs['feature_cls'] = graph_features
    model = build_fn(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    if pool != 'none' and not traced:
        convert(model)
    return model


def make_entrypoint(name: str, module: str, create: Callable[..., nn.Module], doc: str) -> Callable[..., nn.Module]:
    """A timm model entrypoint ``name(pretrained=False, **kwargs)`` that belongs to ``module``."""
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(pretrained=pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    return entrypoint


# ---------------------------------------------------------------------------------------------------
# checks across all registered variants
# ---------------------------------------------------------------------------------------------------

def check_hub_configs() -> None:
    """Every shipped hub config must name an architecture registered by this package.

    Raises:
        ConfigError: naming the file, the architecture and close registered names.
    """
    for arch, entries in hub_configs_by_architecture().items():
        if arch not in VARIANTS:
            close = difflib.get_close_matches(arch, list(VARIANTS), n=5, cutoff=0.5)
            raise ConfigError(
                f"{entries[0][1]}: model.architecture {arch!r} is not registered by timm_asap"
                f" (close matches: {', '.join(close) if close else 'none'}); see timm_asap.models.list_variants()")
