"""Publishing in one call: write the Hub folder of a trained checkpoint, then upload it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from timm_asap_lab.files import folder_lock
from timm_asap_lab.publish.export import (PUBLISH_WRITER, check_hub_output, export_resolved, publish_inputs,
                                          resolve_run_config)
from timm_asap_lab.publish.upload import UploadResult, upload_hub_folder

__all__ = ['publish']


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

    The folder is locked from before it is written until the upload has read it
    (:func:`timm_asap_lab.files.folder_lock`), so a second publish cannot change it in between.
    """
    cfg = resolve_run_config(config, checkpoint, overrides)
    repo_id = repo_id or cfg.hub.repo_id
    check_hub_output(output_dir, publish_inputs(checkpoint))  # before a lock file is put there
    with folder_lock(output_dir, PUBLISH_WRITER):
        folder = export_resolved(cfg, checkpoint, output_dir, eval_dir=eval_dir, allow_no_eval=allow_no_eval,
                                 repo_id=repo_id, eval_model=eval_model)
        if dry_run:
            return folder, None
        result = upload_hub_folder(folder, repo_id, private=cfg.hub.private if private is None else private,
                                   commit_message=commit_message)
    return folder, result
