"""Deprecated module: see :mod:`timm_asap.hub.image_processor` and :func:`timm_asap.models.check_model_name`.

``import timm_asap`` no longer changes transformers: the architecture check is part of our loaders
and the image processor is registered by :func:`timm_asap.hub.register_image_processor`.
"""
import warnings

from ..models.registry import check_architecture, is_variant as is_plugin_name, list_variants  # noqa: F401
from .image_processor import IMAGE_PROCESSOR_NAME, image_processor_class, register_image_processor  # noqa: F401

warnings.warn("timm_asap.hub.integration is deprecated; use timm_asap.hub.register_image_processor and "
              "timm_asap.models.check_model_name", DeprecationWarning, stacklevel=2)


def install_transformers_integration() -> None:
    """Deprecated: registers the image processor (:func:`register_image_processor`); nothing is patched."""
    register_image_processor()


def registered_plugin_models() -> list[str]:
    """Deprecated: the registered ASAP/FLC architectures (``timm_asap.models.list_variants``)."""
    return sorted(list_variants(pool='asap') + list_variants(pool='flc'))


def transformers_integration_installed() -> bool:
    """Deprecated: always True (nothing needs installing; :func:`register_image_processor` registers the processor)."""
    return True
