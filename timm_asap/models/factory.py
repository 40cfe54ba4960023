"""Deprecated module: its names moved to :mod:`timm_asap.models` (``registry``, ``creation``)."""
import warnings

from ._deprecated import create_model  # noqa: F401
from .registry import (  # noqa: F401
    UnknownModelError, base_architecture, check_model_name, get_variant, is_loadable, list_variants, loadable_tags,
    unpublished_tags,
)

warnings.warn("timm_asap.models.factory is deprecated; import these names from timm_asap.models "
              "(timm.create_model replaces factory.create_model)", DeprecationWarning, stacklevel=2)
