"""timm-asap's lab: recipes, data, fine-tuning, robustness evaluation, the study, publishing, tools, CLIs.

It builds on the plugin (:mod:`timm_asap`: layers, registry, conversion, Hub loading) and is never
imported by it. Its dependencies beyond the plugin's come with the ``[lab]`` extra
(from a checkout: ``pip install -e '.[lab]'``; ``[eval]`` and ``[dev]`` include it); the command-line tools check them
first (:func:`missing_lab_dependencies`) and name the extra to install.
"""
from __future__ import annotations

import importlib.util

__all__ = ['LAB_DEPENDENCIES', 'missing_lab_dependencies']

#: import name -> distribution of each dependency the lab adds to the plugin's (the ``[lab]`` extra)
LAB_DEPENDENCIES = {'yaml': 'pyyaml', 'tqdm': 'tqdm', 'matplotlib': 'matplotlib', 'numpy': 'numpy',
                    'torchvision': 'torchvision'}


def missing_lab_dependencies() -> list[str]:
    """The distributions of the ``[lab]`` extra that are not installed (empty when all are).

    Example:
        >>> missing_lab_dependencies()
        []
    """
    return [dist for name, dist in LAB_DEPENDENCIES.items() if importlib.util.find_spec(name) is None]
