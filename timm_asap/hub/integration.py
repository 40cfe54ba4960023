"""Architecture checks and the transformers (TimmWrapper) integration.

transformers loads a timm config.json (one with a ``pretrained_cfg`` key) through its TimmWrapper,
which calls ``timm.create_model(config.architecture, ...)`` and, for a name timm's registry does not
hold, advises upgrading timm. For an ASAP/FLC architecture that advice is wrong: the name is registered
by ``import timm_asap``. :func:`install_transformers_integration` wraps TimmWrapper's model-creation
helper with a check that raises :class:`UnregisteredArchitectureError` naming ``import timm_asap``, the
registered ASAP/FLC names and the closest matches; every other call goes through unchanged.

It also registers :data:`IMAGE_PROCESSOR_NAME` with ``AutoImageProcessor`` (transformers' extension
point for image processors). Our one-channel models name it in their config.json
(``image_processor_type``): it is TimmWrapper's image processor, which first converts the images to
grey, since transformers' image-classification pipeline hands every image over as RGB. Configs that do
not name it (every other timm model) keep transformers' own processor.

Both take effect when the transformers modules concerned are imported (post-import hooks on
``sys.meta_path``), so importing timm_asap does not import transformers.
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

__all__ = ['IMAGE_PROCESSOR_NAME', 'is_plugin_name', 'image_processor_class', 'registered_plugin_models', 'check_architecture', 'unregistered_message',
           'install_transformers_integration', 'transformers_integration_installed']

_logger = logging.getLogger(__name__)

_TIMM_WRAPPER_MODULE = 'transformers.models.timm_wrapper.modeling_timm_wrapper'
_TIMM_WRAPPER_FN = '_create_timm_model_with_error_handling'
_IMAGE_PROCESSING_AUTO = 'transformers.models.auto.image_processing_auto'
IMAGE_PROCESSOR_NAME = 'TimmAsapImageProcessor'
_image_processor_class = None
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


def image_processor_class():
    """The grey-aware TimmWrapper image processor class (built on first use; imports transformers)."""
    global _image_processor_class
    if _image_processor_class is not None:
        return _image_processor_class
    import torch
    from transformers.image_transforms import to_pil_image
    from transformers.image_utils import make_flat_list_of_images
    from transformers.models.timm_wrapper.image_processing_timm_wrapper import TimmWrapperImageProcessor

    class TimmAsapImageProcessor(TimmWrapperImageProcessor):
        """TimmWrapper's image processor for one-channel timm models: images are converted to grey ('L') first.

        transformers' image-classification pipeline converts every input image to RGB; a grey image
        converted back with PIL's luma transform gives its original values, so the model sees exactly
        what timm's own transform would give it. Models with more channels are processed unchanged.
        """

        def preprocess(self, images, return_tensors='pt'):
            if self.data_config['input_size'][0] == 1 and not isinstance(images, torch.Tensor):
                images = [to_pil_image(image).convert('L') for image in make_flat_list_of_images(images)]
            return super().preprocess(images, return_tensors=return_tensors)

    TimmAsapImageProcessor.__module__ = __name__
    TimmAsapImageProcessor.__qualname__ = IMAGE_PROCESSOR_NAME
    _image_processor_class = TimmAsapImageProcessor
    return TimmAsapImageProcessor


def _register_image_processor(module) -> bool:
    try:
        from transformers.models.timm_wrapper.configuration_timm_wrapper import TimmWrapperConfig
        cls = image_processor_class()

        class TimmAsapWrapperConfig(TimmWrapperConfig):
            """Registration key of :data:`IMAGE_PROCESSOR_NAME` (configs name the processor by class name)."""

        module.AutoImageProcessor.register(TimmAsapWrapperConfig, image_processor_classes={'pil': cls},
                                           exist_ok=True)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        _logger.debug('could not register %s with transformers: %s', IMAGE_PROCESSOR_NAME, e)
        return False
    return True


def _image_processor_registered(module) -> bool:
    mapping = getattr(module, 'IMAGE_PROCESSOR_MAPPING', None)
    extra = getattr(mapping, '_extra_content', {}) or {}
    return any(getattr(v, '__name__', None) == IMAGE_PROCESSOR_NAME for m in extra.values() for v in m.values())


_PATCHES = {_TIMM_WRAPPER_MODULE: _patch_timm_wrapper, _IMAGE_PROCESSING_AUTO: _register_image_processor}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the original loader, then applies our patch to the module; delegates everything else."""

    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    """Post-import hook for the transformers modules in :data:`_PATCHES`."""

    def find_spec(self, fullname, path, target=None):
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def install_transformers_integration() -> None:
    """Install the TimmWrapper architecture check and the grey-aware image processor (see the module doc).

    Idempotent. Modules of transformers already imported are patched now, the others when imported.
    Nothing else in transformers changes; all registered architectures load as before.
    """
    for name, patch in _PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            if name != _IMAGE_PROCESSING_AUTO or not _image_processor_registered(module):
                patch(module)
    if not any(isinstance(f, _TransformersImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())


def transformers_integration_installed() -> bool:
    """Whether the TimmWrapper check is active (or will be applied when transformers is imported)."""
    module = sys.modules.get(_TIMM_WRAPPER_MODULE)
    if module is not None:
        return getattr(getattr(module, _TIMM_WRAPPER_FN, None), '_timm_asap_checked', False)
    return any(isinstance(f, _TransformersImportHook) for f in sys.meta_path)
