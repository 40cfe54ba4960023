"""Loading published models with timm and transformers (checked), and publishing them to the Hub.

Loading (part of the core; imports only torch, timm, safetensors, huggingface_hub):
:func:`load_model` (timm names, ``hf-hub:``, ``local-dir:``), :func:`load_hub_folder`,
:func:`load_transformers_model` and :func:`transformers_pipeline` check the files first and give clear
errors; :func:`seed_hub_cache` fills the Hugging Face cache from a folder for offline use.

Publishing (imported on first use of one of its names, since it needs the fine-tuning recipes):
:func:`build_hub_folder` / :func:`export_output_dir` write a complete, checked Hub folder
(``model.safetensors``, timm's ``config.json``, ``README.md`` model card, recipe, results, plots);
:func:`upload_hub_folder` uploads it (``create_repo`` + ``upload_folder``); :func:`publish` does both.

Importing this package changes nothing in timm or transformers.
"""
from __future__ import annotations

import importlib
import warnings

from ..models.registry import check_architecture
from .errors import (HubAuthError, HubDownloadError, HubPublishError, IntegrityError, MissingEvaluationError,
                     UnregisteredArchitectureError)
from .image_processor import IMAGE_PROCESSOR_NAME, register_image_processor
from .integrity import (check_weights_match_config, read_safetensors_header, save_safetensors, verify_hub_folder,
                        verify_safetensors, weights_metadata)
from .load import (download_hub_files, load_hub_folder, load_model, load_transformers_model, seed_hub_cache,
                   transformers_pipeline)

# publishing names -> their module (imported when first used: they need timm_asap.config)
_PUBLISHING = {
    'EvalResults': 'results', 'Metric': 'results', 'load_eval_results': 'results',
    'build_hub_folder': 'export', 'check_publishable': 'export', 'export_output_dir': 'export',
    'export_resolved': 'export', 'load_trained_model': 'export', 'resolve_run_config': 'export',
    'UploadResult': 'upload', 'upload_hub_folder': 'upload', 'publish': 'publishing',
}

_DEPRECATED = ('install_transformers_integration', 'registered_plugin_models', 'transformers_integration_installed')

__all__ = [
    'HubAuthError', 'HubDownloadError', 'HubPublishError', 'IntegrityError', 'MissingEvaluationError',
    'UnregisteredArchitectureError', 'check_architecture', 'IMAGE_PROCESSOR_NAME', 'register_image_processor',
    'read_safetensors_header', 'save_safetensors', 'verify_hub_folder', 'verify_safetensors',
    'check_weights_match_config', 'weights_metadata', 'download_hub_files', 'load_hub_folder', 'load_model',
    'load_transformers_model', 'transformers_pipeline', 'seed_hub_cache', *_PUBLISHING,
]


def __getattr__(name: str):
    if name in _PUBLISHING:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLISHING[name]}"), name)
    if name == 'integration':  # the deprecated module (warns on import)
        return importlib.import_module(f"{__name__}.integration")
    if name in _DEPRECATED:
        warnings.warn(f"{__name__}.{name} is deprecated: nothing is installed into transformers any more; use "
                      f"register_image_processor and timm_asap.models.list_variants", DeprecationWarning, stacklevel=2)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            return getattr(importlib.import_module(f"{__name__}.integration"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
