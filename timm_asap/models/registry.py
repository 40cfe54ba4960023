"""This package's entries in timm's registry: their pretrained cfgs, and lookups that read timm.

timm is the registry: every answer here is read from it (``timm.list_models(module=...)``, the
entrypoints' ``__module__``, the pretrained cfgs) or from the declarative weight-tag table
(:mod:`timm_asap.models.weight_tags`) the cfgs are built from. Pretrained cfgs of a variant:

* ``<base_tag>_base`` for every base checkpoint with weights (zero-shot conversion; the state dict
  loads unchanged), e.g. ``resnet50_asap.tv_in1k_base`` -> ``timm/resnet50.tv_in1k``. These are a
  starting point: the converted network loses accuracy until it is fine-tuned, and their cfgs say so
  with the measured figures (:data:`ZERO_SHOT_TOP1`);
* one tag per :data:`~timm_asap.models.weight_tags.WEIGHT_TAGS` entry. Only published entries get a
  weights source (``hf_hub_id``), so timm lists exactly what can be downloaded.

Example:
    >>> import timm_asap
    >>> timm_asap.models.list_variants('resnet50*')
    ['resnet50_asap', 'resnet50_flc', 'resnet50d_asap', 'resnet50d_flc']
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable

import timm
from timm.models import (PretrainedCfg, get_arch_pretrained_cfgs, is_model, is_model_in_modules, model_entrypoint,
                         split_model_name_tag)
from torch import nn

from timm_asap.layers.band import POOLS
from timm_asap.models import weight_tags
from timm_asap.models.weight_tags import HUB_ORG, PAPER_IDS, WeightTag, paper_ids
from timm_asap.version import __version__

__all__ = [
    'MODULES', 'UnknownModelError', 'Variant', 'list_variants', 'get_variant', 'base_architecture', 'is_variant',
    'check_model_name', 'check_architecture', 'loadable_tags', 'unpublished_tags', 'is_loadable', 'base_tag_cfgs', 'weight_tag_cfg',
    'variant_cfgs', 'make_entrypoint', 'HUB_ORG', 'PAPER_IDS', 'ZERO_SHOT_BASE_TOP1', 'ZERO_SHOT_TOP1', 'zero_shot_note',
]

MODULES = ('asap_timm', 'asap_cifar')  # the registering modules, as timm.list_modules() shows them


class UnknownModelError(RuntimeError, ImportError):
    """A model name timm's registry does not hold (or a tag the architecture does not have).

    The message says that ``import timm_asap`` registers the ASAP/FLC architectures and lists close
    names. An ImportError too (as transformers' own error for an unregistered timm architecture) and a
    RuntimeError (as timm's ``Unknown model``).
    """


@dataclass(frozen=True)
class Variant:
    """A registered architecture of this package, as timm's registry describes it.

    Attributes:
        name: registered name, e.g. ``resnet50_asap``.
        base: the architecture it converts (``resnet50``), or itself for a CIFAR-size baseline.
        pool: ``'asap'``, ``'flc'`` or ``'none'``.
        module: registering module name (what ``timm.list_modules()`` shows).
    """

    name: str
    base: str
    pool: str
    module: str


def is_variant(name: str) -> bool:
    """Whether ``name`` (tag ignored) is registered in timm by this package."""
    return isinstance(name, str) and is_model_in_modules(name, MODULES)


def list_variants(pattern: str = '*', pool: str | None = None) -> list[str]:
    """Registered names of this package matching ``pattern`` (fnmatch), optionally of one pool kind."""
    names = sorted(n for m in MODULES for n in timm.list_models(module=m) if fnmatch.fnmatch(n, pattern))
    return [n for n in names if pool is None or _pool_of(n) == pool]


def _pool_of(arch: str) -> str:
    """The pooling a registered name's suffix names (``'none'`` for a baseline)."""
    return next((pool for pool in POOLS if arch.endswith(f'_{pool}')), 'none')


def get_variant(name: str) -> Variant:
    """The :class:`Variant` record of a registered name (tag allowed).

    Raises:
        UnknownModelError: ``name`` is not registered by this package.
    """
    arch = split_model_name_tag(name)[0]
    if not is_variant(arch):
        close = difflib.get_close_matches(arch, list_variants(), n=6, cutoff=0.6)
        raise UnknownModelError(f"{arch!r} is not registered by timm_asap; close: {', '.join(close) or 'none'}")
    module = model_entrypoint(arch).__module__.rsplit('.', 1)[-1]
    pool = _pool_of(arch)
    return Variant(arch, arch if pool == 'none' else arch[:-len(pool) - 1], pool, module)


def base_architecture(name: str) -> str:
    """The architecture a variant converts, e.g. ``resnet50`` for ``resnet50_asap.tv_in1k_base``."""
    return get_variant(name).base


def _unknown_message(arch: str, source: str | None) -> str:
    ours = list_variants()
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)  # ours are in timm's registry
    where = f" (named in {source})" if source else ''
    return (f"unknown model {arch!r}{where}: it is not registered in timm. The ASAP/FLC architectures "
            f"(e.g. 'resnet50_asap') are registered by `import timm_asap`: run it before creating or loading the "
            f"model (with timm or transformers); timm-asap {__version__} registers {len(ours)} "
            f"(timm_asap.models.list_variants()). Close matches: {', '.join(close) if close else 'none'}. "
            f"If the model was published with a newer timm-asap (its config.json's timm_asap.version names it), "
            f"install that version from the timm-asap repository it was published with.")


def _check_tag(arch: str, tag: str) -> None:
    tags = [t.split('.', 1)[1] for t in get_arch_pretrained_cfgs(arch) if '.' in t]
    if tag in tags:
        return
    close = difflib.get_close_matches(tag, tags, n=6, cutoff=0.5)
    if f"{tag}_base" in tags:  # a base checkpoint's tag: the variant's tag that loads it
        close = [f"{tag}_base"] + [c for c in close if c != f"{tag}_base"]
    raise UnknownModelError(f"{arch} has no tag {tag!r}; close: {', '.join(close) if close else 'none'}; "
                            f"all tags: {', '.join(tags) if tags else 'none'}")


def check_model_name(name: str, source: str | None = None) -> str:
    """Return the architecture of ``name`` (``arch`` or ``arch.tag``), or raise a helpful error.

    ``hf-hub:``/``local-dir:`` names are returned unchanged (the Hub loaders check the architecture
    their config.json names).

    Args:
        name: ``arch`` or ``arch.tag``.
        source: where the name came from (a config file, a repo id), for the message.

    Raises:
        UnknownModelError: not a non-empty string, the architecture is not registered (the message
            says ``import timm_asap`` and lists close names), or the tag is not one of its tags.
    """
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"a model name must be a non-empty string{f' in {source}' if source else ''}, "
                                f"got {name!r}")
    if name.startswith(('hf-hub:', 'local-dir:')):
        return name
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        raise UnknownModelError(_unknown_message(arch, source))
    if tag:
        _check_tag(arch, tag)
    return arch


def check_architecture(name: str, source: str | None = None) -> str:
    """:func:`check_model_name` of the architecture of ``name``, ignoring any tag (config.json names)."""
    arch = name.split('.')[0] if isinstance(name, str) else name
    return check_model_name(arch, source)


def loadable_tags(arch: str) -> list[str]:
    """Full names of ``arch``'s tags whose weights timm can load (base checkpoints, published tags)."""
    return [n for n, cfg in get_arch_pretrained_cfgs(arch).items() if cfg.has_weights]


def unpublished_tags(arch: str) -> list[str]:
    """Full names of ``arch``'s weight tags that are not published yet."""
    return [t.name for t in weight_tags.WEIGHT_TAGS if t.architecture == arch and not t.published]


def is_loadable(name: str) -> bool:
    """Whether ``pretrained=True`` can load ``name`` (``arch.tag`` or ``arch`` = its default tag)."""
    return timm.is_model_pretrained(name)


# ---------------------------------------------------------------------------------------------------
# pretrained cfgs
# ---------------------------------------------------------------------------------------------------

#: Fashion-MNIST test top-1 (%) of the study's trained baseline (preactresnet18 at 1/8 width, 90.0 %)
#: with its weights converted unchanged to each pooling: zero-shot; after re-estimating the BatchNorm
#: statistics on 2,000 unlabeled training images; with ``pool_position='after'`` plus that re-estimation.
#: Measured for issue 20; see docs/conversion.md.
ZERO_SHOT_BASE_TOP1 = 90.0
ZERO_SHOT_TOP1 = {'asap': (22.2, 69.4, 79.3), 'flc': (43.9, 81.9, 86.8)}


def zero_shot_note(pool: str) -> str:
    """What a ``_base`` tag's weights are worth as they load: the measured accuracy loss and the repair."""
    zero, repaired, after = ZERO_SHOT_TOP1[pool]
    name = pool.upper()
    return (f"a starting point, not a finished model: the base's weights converted zero-shot lose accuracy until "
            f"fine-tuned. Measured on the study's network (preactresnet18 at 1/8 width, Fashion-MNIST test): base "
            f"{ZERO_SHOT_BASE_TOP1:.1f} %, {name} zero-shot {zero:.1f} %; after re-estimating the BatchNorm "
            f"statistics on 2,000 unlabeled images (timm_asap.recalibrate_norm) {repaired:.1f} %; with "
            f"pool_position='after' plus that re-estimation {after:.1f} %. See docs/conversion.md")


def base_tag_cfgs(variant: str, base: str, pool: str) -> list[tuple[str, PretrainedCfg]]:
    """``(<base_tag>_base, cfg)`` for every base checkpoint with weights, in the base's tag order.

    The cfg is the base's (hf_hub_id, url, input config, classifier, licence), with this project's
    paper id, a note naming the base checkpoint and a note that these weights are a zero-shot starting
    point, with the measured accuracy loss and the repair (:func:`zero_shot_note`).
    """
    out = []
    for full, cfg in get_arch_pretrained_cfgs(base).items():
        if not cfg.has_weights:
            continue
        notes = (f"zero-shot {pool.upper()} conversion of {full}: its weights, loaded unchanged "
                 f"(fine-tune before use)", zero_shot_note(pool))
        if cfg.paper_ids:
            notes += (f"base weights: {cfg.paper_ids}",)
        out.append((f"{cfg.tag}_base", dataclasses.replace(
            cfg, architecture=None, tag=None, paper_ids=paper_ids(pool), license=cfg.license or 'unknown',
            notes=notes + tuple(cfg.notes or ()),
            description=f"{variant}: {base} with {pool.upper()} downsampling, initialised zero-shot from {full} "
                        f"(a starting point that loses accuracy until fine-tuned)")))
    return out


def _scaled_pool_size(defaults: PretrainedCfg, img_size: int):
    if not defaults.pool_size or not defaults.input_size:
        return defaults.pool_size
    ratio = defaults.input_size[-1] / defaults.pool_size[-1]
    side = -(-img_size // round(ratio))
    return (side, side)


def _channel_stats(given, default, chans: int):
    if given is not None:
        return tuple(given)
    return default if default is not None and len(default) == chans else None


def weight_tag_cfg(entry: WeightTag, defaults: PretrainedCfg) -> PretrainedCfg:
    """The timm pretrained cfg of a weight-tag table entry.

    Args:
        entry: the table entry.
        defaults: cfg whose first_conv/classifier/mean/std fill what the entry leaves open.

    Raises:
        ValueError: the entry gives no mean/std for a channel count the defaults do not have.
    """
    chans, size = entry.input_size[0], entry.input_size[-1]
    mean, std = _channel_stats(entry.mean, defaults.mean, chans), _channel_stats(entry.std, defaults.std, chans)
    if mean is None or std is None:
        raise ValueError(f"weight tag {entry.name}: mean and std must be given for {chans} input channels")
    notes = [f"recipe: hub_configs/{entry.recipe}", f"model_args: {entry.model_args}"]
    if entry.base:
        notes.append(f"initialised from {entry.base}")
    if not entry.published:
        notes.append(f"not published yet (to be {entry.hf_hub_id}): pretrained=True raises")
    return dataclasses.replace(
        defaults, url=None, file=None, state_dict=None, hf_hub_id=entry.hf_hub_id if entry.published else None,
        hf_hub_filename=None, architecture=None, tag=None, custom_load=False, input_size=tuple(entry.input_size),
        test_input_size=None, min_input_size=None, pool_size=_scaled_pool_size(defaults, size), mean=mean, std=std,
        interpolation=entry.interpolation, crop_pct=entry.crop_pct, test_crop_pct=None, num_classes=entry.num_classes,
        label_offset=None, label_names=entry.label_names, label_descriptions=None, license=entry.license,
        paper_ids=paper_ids(_pool_of(entry.architecture)), notes=tuple(notes), description=f"{entry.name}: {entry.architecture} trained with "
        f"hub_configs/{entry.recipe}", origin_url=None, paper_name=None)


def variant_cfgs(variant: str, defaults: PretrainedCfg,
                 fixed: list[tuple[str, PretrainedCfg]]) -> dict[str, PretrainedCfg]:
    """``'arch.tag'``-keyed cfgs of a variant for ``timm.models.generate_default_cfgs``.

    Order: published weight tags (the first becomes the default tag), then ``fixed`` (base checkpoint
    tags, or the weightless untagged cfg), then unpublished weight tags.
    """
    entries = [t for t in weight_tags.WEIGHT_TAGS if t.architecture == variant]
    published = [(t.tag, weight_tag_cfg(t, defaults)) for t in entries if t.published]
    waiting = [(t.tag, weight_tag_cfg(t, defaults)) for t in entries if not t.published]
    out = {}
    for tag, cfg in published + fixed + waiting:
        key = f"{variant}.{tag}" if tag else variant
        if key in out:
            raise ValueError(f"duplicate pretrained tag {key}")
        out[key] = cfg
    return out


def make_entrypoint(name: str, module: str, create: Callable[..., nn.Module], doc: str) -> Callable[..., nn.Module]:
    """A timm model entrypoint ``name(pretrained=False, **kwargs)`` that belongs to ``module``."""
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(pretrained=pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    return entrypoint
