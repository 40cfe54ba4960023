"""Architecture checks and the transformers (TimmWrapper) integration.

transformers loads a timm config.json (one with a ``pretrained_cfg`` key) through its TimmWrapper,
which calls ``timm.create_model(config.architecture, ...)`` and, for a name timm's registry does not
hold, advises upgrading timm. For an ASAP/FLC architecture that advice is wrong: the name is registered
by ``import timm_asap``. :func:`install_transformers_integration` wraps TimmWrapper's model-creation
helper with :func:`check_architecture`, which raises :class:`UnregisteredArchitectureError` naming
``import timm_asap``, the registered ASAP/FLC names and the closest matches; every other call goes
through unchanged. The wrapper is applied when transformers' TimmWrapper module is imported (a
post-import hook on ``sys.meta_path``), so importing timm_asap does not import transformers.
"""
from __future__ import annotations

import difflib
import functools
import importlib.abc
import importlib.machinery
import logging
import re
import sys

import timm

from .errors import UnregisteredArchitectureError

__all__ = ['is_plugin_name', 'registered_plugin_models', 'check_architecture', 'unregistered_message',
           'install_transformers_integration', 'transformers_integration_installed']

_logger = logging.getLogger(__name__)

_TIMM_WRAPPER_MODULE = 'transformers.models.timm_wrapper.modeling_timm_wrapper'
_TIMM_WRAPPER_FN = '_create_timm_model_with_error_handling'
_PLUGIN_TOKEN = re.compile(r'(^|_)(asap|flc)(_|$)')


def is_plugin_name(name: str) -> bool:
    """Whether an architecture name (tag ignored) looks like an ASAP/FLC variant, e.g. ``resnet50_asap``."""
    return bool(_PLUGIN_TOKEN.search(name.split('.')[0]))


def registered_plugin_models() -> list[str]:
    """The ASAP/FLC architectures timm's registry holds now (those registered by timm_asap)."""
    names = []
    for name in timm.list_models():
        if is_plugin_name(name) and timm.models.model_entrypoint(name).__module__.startswith('timm_asap'):
            names.append(name)
    return names


def _ensure_registry() -> None:
    try:
        importlib.import_module('timm_asap.models')
    except ImportError as e:  # a broken install must not hide the real problem
        _logger.debug('timm_asap.models could not be imported: %s', e)


def unregistered_message(name: str, source: str | None = None) -> str:
    """The explanation given for an architecture timm's registry does not hold."""
    arch = name.split('.')[0]
    registered = registered_plugin_models()
    close = difflib.get_close_matches(arch, registered + timm.list_models(), n=5, cutoff=0.6)
    where = f" (named in {source})" if source else ''
    from ..version import __version__
    lines = [f"architecture {arch!r}{where} is not registered in timm."]
    if is_plugin_name(arch) or any(is_plugin_name(c) for c in close):
        lines.append("ASAP/FLC architectures are registered by the timm-asap package: run `import timm_asap` "
                     "before creating or loading the model (with timm or transformers).")
    lines.append(f"timm-asap {__version__} registers: {', '.join(registered) if registered else '(none)'}.")
    if close:
        lines.append(f"Close matches: {', '.join(close)}.")
    lines.append("If the model was published with a newer timm-asap, upgrade it: `pip install -U timm-asap`.")
    return ' '.join(lines)


def check_architecture(name: str, source: str | None = None) -> str:
    """Check that timm's registry holds ``name`` (a tag after '.' is ignored).

    Args:
        name: architecture, e.g. ``resnet50_asap`` or ``resnet50_asap.ft_in1k``.
        source: where the name came from (a config file or repo id), for the message.

    Returns:
        The architecture name without its tag.

    Raises:
        UnregisteredArchitectureError: the name is not registered; the message says to
            ``import timm_asap`` and lists the registered ASAP/FLC names and close matches.
    """
    if not isinstance(name, str) or not name:
        raise UnregisteredArchitectureError(f"architecture must be a non-empty string{f' in {source}' if source else ''}, "
                                            f"got {name!r}")
    arch = name.split('.')[0]
    if timm.is_model(arch):
        return arch
    _ensure_registry()
    if timm.is_model(arch):
        return arch
    raise UnregisteredArchitectureError(unregistered_message(arch, source))


def _wrap_create(fn):
    if getattr(fn, '_timm_asap_checked', False):
        return fn

    @functools.wraps(fn)
    def create_timm_model_checked(config, *args, **kwargs):
        arch = getattr(config, 'architecture', None)
        if isinstance(arch, str) and is_plugin_name(arch) and not timm.is_model(arch.split('.')[0]):
            raise UnregisteredArchitectureError(unregistered_message(arch, 'the transformers TimmWrapper config'))
        return fn(config, *args, **kwargs)

    create_timm_model_checked._timm_asap_checked = True
    return create_timm_model_checked


def _patch_timm_wrapper(module) -> bool:
    fn = getattr(module, _TIMM_WRAPPER_FN, None)
    if fn is None:
        _logger.debug('%s.%s not found; ASAP/FLC architecture errors from transformers are not rewritten',
                      _TIMM_WRAPPER_MODULE, _TIMM_WRAPPER_FN)
        return False
    setattr(module, _TIMM_WRAPPER_FN, _wrap_create(fn))
    return True


class _PatchingLoader(importlib.abc.Loader):
    """Runs the original loader, then wraps TimmWrapper's creation helper; delegates everything else."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch_timm_wrapper(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _TimmWrapperImportHook(importlib.abc.MetaPathFinder):
    """Post-import hook for transformers' TimmWrapper modeling module."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TIMM_WRAPPER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install_transformers_integration() -> None:
    """Make transformers' TimmWrapper raise :class:`UnregisteredArchitectureError` for unregistered ASAP/FLC names.

    Idempotent. If transformers is already imported its TimmWrapper is wrapped now, otherwise when it is
    imported. Nothing else in transformers changes; all registered architectures load as before.
    """
    module = sys.modules.get(_TIMM_WRAPPER_MODULE)
    if module is not None:
        _patch_timm_wrapper(module)
        return
    if not any(isinstance(f, _TimmWrapperImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmWrapperImportHook())


def transformers_integration_installed() -> bool:
    """Whether the TimmWrapper check is active (or will be applied when transformers is imported)."""
    module = sys.modules.get(_TIMM_WRAPPER_MODULE)
    if module is not None:
        return getattr(getattr(module, _TIMM_WRAPPER_FN, None), '_timm_asap_checked', False)
    return any(isinstance(f, _TimmWrapperImportHook) for f in sys.meta_path)
