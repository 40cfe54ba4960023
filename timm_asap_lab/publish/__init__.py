"""Publishing trained models to the Hugging Face Hub: checked Hub folders, model cards and uploads.

:func:`build_hub_folder` / :func:`export_output_dir` write a complete, checked Hub folder
(``model.safetensors``, timm's ``config.json``, ``README.md`` model card, recipe, results, plots);
:func:`upload_hub_folder` uploads it (``create_repo`` + ``upload_folder``); :func:`publish` does both.
The folders load back through the plugin's :mod:`timm_asap.hub`.
"""
from __future__ import annotations

from timm_asap_lab.publish.errors import HubAuthError, HubPublishError, MissingEvaluationError
from timm_asap_lab.publish.export import (build_hub_folder, check_publishable, export_output_dir, export_resolved,
                                          load_trained_model, resolve_run_config)
from timm_asap_lab.publish.publishing import publish
from timm_asap_lab.publish.results import EvalResults, Metric, load_eval_results
from timm_asap_lab.publish.upload import UploadResult, upload_hub_folder

__all__ = [
    'HubAuthError', 'HubPublishError', 'MissingEvaluationError', 'build_hub_folder', 'check_publishable',
    'export_output_dir', 'export_resolved', 'load_trained_model', 'resolve_run_config', 'publish',
    'EvalResults', 'Metric', 'load_eval_results', 'UploadResult', 'upload_hub_folder',
]
