"""Model-name checks with helpful errors, and lookups over the variants this package registers."""
from __future__ import annotations

import difflib
import fnmatch

import timm
from timm.models import is_model, split_model_name_tag
from torch import nn

from ._builder import TAG_INFO, VARIANTS, Variant, loadable_tags, unpublished_tags

__all__ = [
    'UnknownModelError', 'check_model_name', 'create_model', 'list_variants', 'get_variant', 'base_architecture',
    'is_loadable', 'loadable_tags', 'unpublished_tags',
]


class UnknownModelError(RuntimeError):
    """A model name timm does not know; the message says to ``import timm_asap`` and lists close names."""


def check_model_name(name: str) -> str:
    """Return the architecture of ``name`` (``arch`` or ``arch.tag``), or raise a helpful error.

    ``hf-hub:``/``local-dir:`` names are returned unchanged (their architecture is read from the
    Hub config when the model is created; :func:`create_model` checks it then).

    Raises:
        UnknownModelError: the architecture is not registered, or the tag is not one of its tags.
    """
    if name.startswith(('hf-hub:', 'local-dir:')):
        return name
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        pool = sorted(set(timm.list_models()) | set(VARIANTS))
        close = difflib.get_close_matches(arch, pool, n=6, cutoff=0.6)
        raise UnknownModelError(
            f"unknown model {arch!r}. The ASAP/FLC architectures (e.g. 'resnet50_asap') are registered by "
            f"`import timm_asap`; close matches: {', '.join(close) if close else 'none'}")
    if tag:
        tags = [t.split('.', 1)[1] for t in timm.models.get_arch_pretrained_cfgs(arch)]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=6, cutoff=0.5)
            if f"{tag}_base" in tags:  # a base checkpoint's tag: the variant's tag that loads it
                close = [f"{tag}_base"] + [c for c in close if c != f"{tag}_base"]
            raise UnknownModelError(f"{arch} has no tag {tag!r}; close: {', '.join(close) if close else 'none'}; "
                                    f"all tags: {', '.join(tags) if tags else 'none'}")
    return arch


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with :func:`check_model_name`'s errors (also for a Hub config's architecture).

    Args:
        name: ``arch``, ``arch.tag``, ``hf-hub:org/repo`` or ``local-dir:/path``.
        **kwargs: passed to ``timm.create_model``.

    Raises:
        UnknownModelError: see :func:`check_model_name`; for ``hf-hub:``/``local-dir:`` names, when the
            config's ``architecture`` is not registered.
    """
    check_model_name(name)
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        msg = str(e)
        if not msg.startswith('Unknown model'):
            raise
        arch = msg[msg.find('(') + 1:msg.rfind(')')]
        try:
            check_model_name(arch)
        except UnknownModelError as err:
            raise UnknownModelError(f"{name}: its config names an architecture this process has not registered: "
                                    f"{err}") from None
        raise


def list_variants(pattern: str = '*', pool: str | None = None) -> list[str]:
    """Registered names of this package matching ``pattern`` (fnmatch), optionally one pool kind."""
    return sorted(n for n, v in VARIANTS.items() if fnmatch.fnmatch(n, pattern) and (pool is None or v.pool == pool))


def get_variant(name: str) -> Variant:
    """The :class:`~timm_asap.models._builder.Variant` record of a registered name (tag allowed)."""
    arch = split_model_name_tag(name)[0]
    try:
        return VARIANTS[arch]
    except KeyError:
        close = difflib.get_close_matches(arch, list(VARIANTS), n=6, cutoff=0.6)
        raise UnknownModelError(f"{arch!r} is not registered by timm_asap; close: {', '.join(close) or 'none'}") from None


def base_architecture(name: str) -> str:
    """The architecture a variant converts, e.g. ``resnet50`` for ``resnet50_asap.tv_in1k_base``."""
    return get_variant(name).base


def is_loadable(name: str) -> bool:
    """Whether ``pretrained=True`` can load ``name`` (``arch.tag`` or ``arch`` = its default tag)."""
    arch, tag = split_model_name_tag(name)
    if not tag:
        cfg = timm.models.get_pretrained_cfg(arch)
        tag = (cfg.tag or '') if cfg is not None else ''
    info = TAG_INFO.get(f"{arch}.{tag}" if tag else arch)
    return bool(info and info.published)
