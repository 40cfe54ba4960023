"""Publishing to and loading from the Hugging Face Hub, and the transformers integration.

Publishing: :func:`build_hub_folder` / :func:`export_output_dir` write a complete, checked Hub folder
(``model.safetensors``, timm's ``config.json``, ``README.md`` model card, recipe, results, plots);
:func:`upload_hub_folder` uploads it (``create_repo`` + ``upload_folder``); :func:`publish` does both.

Loading: :func:`load_model` (timm names, ``hf-hub:``, ``local-dir:``), :func:`load_hub_folder`,
:func:`load_transformers_model` and :func:`transformers_pipeline` check the files first and give clear
errors. Importing this package installs the transformers integration (see :mod:`.integration`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import (HubAuthError, HubDownloadError, HubPublishError, IntegrityError, MissingEvaluationError,
                     UnregisteredArchitectureError)
from .integration import (check_architecture, install_transformers_integration, registered_plugin_models,
                          transformers_integration_installed)
from .integrity import (read_safetensors_header, save_safetensors, verify_hub_folder, verify_safetensors,
                        check_weights_match_config)
from .results import EvalResults, Metric, load_eval_results
from .export import (build_hub_folder, check_publishable, export_output_dir, export_resolved, load_trained_model,
                     resolve_run_config)
from .upload import UploadResult, upload_hub_folder
from .load import (download_hub_files, load_hub_folder, load_model, load_transformers_model, seed_hub_cache,
                   transformers_pipeline)

__all__ = [
    'HubAuthError', 'HubDownloadError', 'HubPublishError', 'IntegrityError', 'MissingEvaluationError', 'UnregisteredArchitectureError',
    'check_architecture', 'install_transformers_integration', 'registered_plugin_models',
    'transformers_integration_installed', 'read_safetensors_header', 'save_safetensors', 'verify_hub_folder',
    'verify_safetensors', 'check_weights_match_config', 'EvalResults', 'Metric', 'load_eval_results',
    'build_hub_folder', 'check_publishable', 'export_output_dir', 'load_trained_model', 'resolve_run_config', 'UploadResult',
    'upload_hub_folder', 'publish', 'download_hub_files', 'load_hub_folder', 'load_model',
    'load_transformers_model', 'transformers_pipeline', 'seed_hub_cache',
]

install_transformers_integration()


def publish(checkpoint: str | Path, output_dir: str | Path, *, config=None, eval_dir: str | Path | None = None,
            allow_no_eval: bool = False, repo_id: str | None = None, dry_run: bool = False,
            private: bool | None = None, commit_message: str | None = None,
            eval_model: str | None = None, overrides: Sequence[str] = ()) -> tuple[Path, UploadResult | None]:
    """Write the Hub folder of a trained checkpoint and, unless ``dry_run``, upload it.

    Args:
        checkpoint: ``model.safetensors`` or the fine-tuning output folder.
        output_dir: Hub folder to write.
        config: hub_configs YAML (path or shipped name) or RunConfig (default: the checkpoint folder's config.yaml).
        eval_dir: evaluation output folder with results.json.
        allow_no_eval: publish without evaluation results.
        repo_id: override ``hub.repo_id``.
        dry_run: write the folder only (no network).
        private: create the repository private (default: ``hub.private``).
        commit_message: commit message of the upload.
        eval_model: the model's name in the evaluation results (default: found by name).
        overrides: ``section.key=value`` changes to the resolved run config (the checkpoint folder's
            config.yaml with the given config's hub section and tag).

    Returns:
        ``(folder, upload result or None for a dry run)``.
    """
    cfg = resolve_run_config(config, checkpoint, overrides)
    repo_id = repo_id or cfg.hub.repo_id
    folder = export_resolved(cfg, checkpoint, output_dir, eval_dir=eval_dir, allow_no_eval=allow_no_eval,
                             repo_id=repo_id, eval_model=eval_model)
    if dry_run:
        return folder, None
    result = upload_hub_folder(folder, repo_id, private=cfg.hub.private if private is None else private,
                               commit_message=commit_message)
    return folder, result
