"""Loading published models with timm and transformers, with their files checked first.

:func:`load_model` (timm names, ``hf-hub:``, ``local-dir:``), :func:`load_hub_folder`,
:func:`load_transformers_model` and :func:`transformers_pipeline` check the files first and give clear
errors; :func:`seed_hub_cache` fills the Hugging Face cache from a folder for offline use. It imports only
torch, timm, safetensors and huggingface_hub, and changes nothing in timm or transformers. Publishing
(writing Hub folders, model cards, uploads) is the lab's: :mod:`timm_asap_lab.publish`.
"""
from __future__ import annotations

from timm_asap.hub.errors import HubDownloadError, IntegrityError, UnregisteredArchitectureError
from timm_asap.hub.image_processor import IMAGE_PROCESSOR_NAME, register_image_processor
from timm_asap.hub.integrity import (check_weights_match_config, read_safetensors_header, save_safetensors,
                                     verify_hub_folder, verify_safetensors, weights_metadata)
from timm_asap.hub.load import (download_hub_files, load_hub_folder, load_model, load_transformers_model,
                                seed_hub_cache, transformers_pipeline)
from timm_asap.models.registry import check_architecture

__all__ = [
    'HubDownloadError', 'IntegrityError', 'UnregisteredArchitectureError', 'check_architecture',
    'IMAGE_PROCESSOR_NAME', 'register_image_processor', 'read_safetensors_header', 'save_safetensors',
    'verify_hub_folder', 'verify_safetensors', 'check_weights_match_config', 'weights_metadata',
    'download_hub_files', 'load_hub_folder', 'load_model', 'load_transformers_model', 'transformers_pipeline',
    'seed_hub_cache',
]
