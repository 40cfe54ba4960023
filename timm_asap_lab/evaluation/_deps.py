"""Optional dependencies of the evaluation tools, imported on first use with a clear error."""
from __future__ import annotations

import importlib
import importlib.metadata
import platform
from functools import lru_cache
from types import ModuleType

__all__ = ['EVAL_EXTRA_HINT', 'require', 'library_versions']

EVAL_EXTRA_HINT = "pip install -e '.[eval]' in the timm-asap checkout"

# import name -> distribution name (what pip installs)
_DISTRIBUTIONS = {
    'art': 'adversarial-robustness-toolbox',
    'cv2': 'opencv-python',
    'skimage': 'scikit-image',
    'scipy': 'scipy',
    'corrupt_tta': 'corrupt-tta',
    'matplotlib': 'matplotlib',
    'pyautoattack': 'pyautoattack',
}


@lru_cache(maxsize=None)
def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency or raise an ImportError naming the extra that provides it.

    Args:
        module: import name, e.g. ``'art'`` or ``'cv2'``.
        purpose: what needs it, for the message (e.g. ``'adversarial attacks'``).

    Returns:
        The imported module.

    Raises:
        ImportError: the module is not installed; the message names the package and the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist = _DISTRIBUTIONS.get(module.split('.')[0], module)
        raise ImportError(
            f"{purpose} needs the package {dist!r} (import {module!r} failed: {e}); "
            f"install the evaluation extra: {EVAL_EXTRA_HINT}") from e


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine evaluation results, as flat ``version_<name>`` keys.

    Missing optional packages are reported as ``'not installed'``.
    """
    import numpy
    import timm
    import torch

    from timm_asap.version import __version__

    out = {
        'version_timm_asap': __version__,
        'version_torch': torch.__version__,
        'version_timm': timm.__version__,
        'version_numpy': numpy.__version__,
        'version_python': platform.python_version(),
    }
    for key, dist in (('art', 'adversarial-robustness-toolbox'), ('opencv', 'opencv-python'),
                      ('scikit_image', 'scikit-image'), ('scipy', 'scipy'), ('corrupt_tta', 'corrupt-tta'),
                      ('pillow', 'pillow'), ('pyautoattack', 'pyautoattack')):
        out[f'version_{key}'] = _version(dist) or 'not installed'
    return out
