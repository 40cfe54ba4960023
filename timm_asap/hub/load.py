"""Loading published models with timm or transformers, after checking the files.

timm and transformers load our Hub repositories directly once ``import timm_asap`` has registered the
architectures. These helpers add what they do not: the weights are checked (truncation, corruption,
architecture/weights disagreement) before any model is built, an unregistered architecture gets an
error that says ``import timm_asap``, a bad file or a failed download leaves nothing in the cache, and
no connection gives one line saying what was looked for, where, and how to work offline.
Offline use (``HF_HUB_OFFLINE=1`` with a filled cache) works as with plain huggingface_hub.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import timm
import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from torch import nn

from timm_asap._files import LOCK_NAME, atomic_path, atomic_write_text
from timm_asap.hub.errors import HubDownloadError, IntegrityError
from timm_asap.hub.image_processor import register_image_processor
from timm_asap.hub.integrity import (CONFIG_NAME, WEIGHTS_NAME, check_weights_match_config, read_config_json,
                                     verify_hub_folder)
from timm_asap.models.registry import check_architecture, check_model_name

__all__ = ['download_hub_files', 'load_hub_folder', 'load_model', 'load_transformers_model',
           'transformers_pipeline', 'seed_hub_cache', 'hub_unreachable_error']

_logger = logging.getLogger(__name__)


def _repo_cache(repo_id: str, cache_dir: str | Path | None) -> Path:
    from huggingface_hub.file_download import repo_folder_name
    return Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type='model')


def _remove_incomplete(repo_id: str, cache_dir: str | Path | None) -> None:
    for p in (_repo_cache(repo_id, cache_dir) / 'blobs').glob('*.incomplete'):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _purge_cached(path: Path) -> None:
    """Remove a cached snapshot file and the blob it links to."""
    blob = path.resolve() if path.is_symlink() else None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if blob is not None:
        with contextlib.suppress(FileNotFoundError):
            blob.unlink()


def hub_unreachable_error(name: str, repo_id: str, revision: str | None, cache_dir,
                          error: Exception) -> HubDownloadError:
    """One line for a file that is neither downloadable (no connection, offline mode) nor in the cache."""
    where = f"{constants.ENDPOINT}/{repo_id}" + (f" (revision {revision})" if revision else '')
    why = 'offline mode (HF_HUB_OFFLINE=1) is on' if constants.HF_HUB_OFFLINE else 'the Hub could not be reached'
    return HubDownloadError(
        f"cannot load {name} of {repo_id}: {why} and it is not in the cache {cache_dir or constants.HF_HUB_CACHE} "
        f"(looked for {where}). To work offline, fill the cache once with network (or "
        f"timm_asap.hub.seed_hub_cache) and set HF_HUB_OFFLINE=1, or load a local file with "
        f"pretrained_cfg_overlay=dict(file='<weights file>') or a folder with 'local-dir:<folder>' "
        f"[{type(error).__name__}]")


def _fetch(repo_id: str, name: str, revision: str | None, cache_dir) -> Path:
    """hf_hub_download with our errors: a broken transfer leaves no partial file behind."""
    try:
        return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, library_name='timm-asap'))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        _remove_incomplete(repo_id, cache_dir)
        raise hub_unreachable_error(name, repo_id, revision, cache_dir, e) from None
    except (HfHubHTTPError, ValueError):
        _remove_incomplete(repo_id, cache_dir)
        raise  # huggingface_hub's own errors say what is wrong (no such repo or file, ...)
    except Exception as e:
        _remove_incomplete(repo_id, cache_dir)
        raise HubDownloadError(f"download of {name} from {repo_id} failed ({type(e).__name__}: {e}); "
                               "the partial file was removed from the cache") from e
    except BaseException:
        _remove_incomplete(repo_id, cache_dir)
        raise


def download_hub_files(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
                       filename: str = WEIGHTS_NAME) -> Path:
    """Download (or find in the cache) a repository's config.json and weights, and check them.

    Args:
        repo_id: ``<org>/<name>``, optionally ``@<revision>``.
        revision: branch, tag or commit (overrides ``@<revision>``).
        cache_dir: Hub cache folder (default: huggingface_hub's).
        filename: weights file name.

    Returns:
        The snapshot folder holding the two files.

    Raises:
        IntegrityError: a file is truncated, corrupted or does not fit the config; it is removed from the
            cache so the next call downloads it again.
        HubDownloadError: the transfer broke off (the partial file is removed), or the files are neither
            reachable (no connection, offline mode) nor cached; one line naming the file, the repository,
            the endpoint and the offline options.
        UnknownModelError: the config's architecture is not registered (``import timm_asap``).
    """
    repo_id, _, at_revision = repo_id.partition('@')
    revision = revision or at_revision or None
    paths = {}
    for name in (CONFIG_NAME, filename):
        paths[name] = _fetch(repo_id, name, revision, cache_dir)
        if name == CONFIG_NAME:
            try:
                config = read_config_json(paths[name])
            except IntegrityError as e:
                _purge_cached(paths[name])
                raise IntegrityError(paths[name], f"{str(e).split(': ', 1)[-1]} (downloaded from {repo_id}; "
                                                  "removed from the cache)") from None
            check_architecture(config['architecture'], f"{CONFIG_NAME} of {repo_id}")
    weights = paths[filename]
    if weights.suffix != '.safetensors':
        raise IntegrityError(weights, f"timm_asap.hub loads safetensors weights only, {repo_id} names {filename}")
    try:
        check_weights_match_config(weights, paths[CONFIG_NAME])
    except IntegrityError as e:
        bad = Path(e.path)
        _purge_cached(bad if bad.name in (CONFIG_NAME, filename) else weights)
        raise IntegrityError(e.path, f"{str(e)[len(e.path) + 2:]} (downloaded from {repo_id}; removed from the "
                                     "cache)") from None
    return paths[CONFIG_NAME].parent


def seed_hub_cache(folder: str | Path, repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Put a local Hub folder into the Hugging Face cache as ``repo_id`` (``main``), without any network.

    The files are written in huggingface_hub's cache layout (``blobs/`` named by content hash,
    ``snapshots/<commit>/`` links, ``refs/main``), so with ``HF_HUB_OFFLINE=1``
    ``timm.create_model('hf-hub:<repo_id>', pretrained=True)`` and transformers' ``from_pretrained`` load
    it as if it had been downloaded. The commit id is derived from the files' hashes.

    Args:
        folder: a checked Hub folder.
        repo_id: ``<org>/<name>`` to file it under.
        cache_dir: Hub cache (default: huggingface_hub's ``HF_HUB_CACHE``).

    Returns:
        The snapshot folder.
    """
    import hashlib
    import shutil
    folder = Path(folder)
    verify_hub_folder(folder)
    files = sorted(p for p in folder.rglob('*') if p.is_file() and p.name != LOCK_NAME)  # not our lock file
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = hashlib.sha1(''.join(f"{p.relative_to(folder).as_posix()}:{d}\n" for p, d in digests.items())
                          .encode()).hexdigest()
    repo = _repo_cache(repo_id, cache_dir)
    snapshot = repo / 'snapshots' / commit
    for p, digest in digests.items():
        blob = repo / 'blobs' / digest
        if not blob.exists():
            with atomic_path(blob) as tmp:
                shutil.copyfile(p, tmp)
        link = snapshot / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (e.g. some Windows setups): copy, as huggingface_hub does
            shutil.copyfile(blob, link)
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    atomic_write_text(repo / 'refs' / 'main', commit)
    return snapshot


def load_hub_folder(folder: str | Path, device: str | torch.device | None = None, **kwargs) -> nn.Module:
    """Load a model from a local Hub folder (``timm.create_model('local-dir:<folder>', pretrained=True)``).

    The folder is checked first (:func:`timm_asap.hub.verify_hub_folder`). Returns the model in eval mode.
    """
    folder = Path(folder).resolve()
    verify_hub_folder(folder, allow_pickle=True)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
    return model.to(device).eval() if device is not None else model.eval()


def load_model(name: str, pretrained: bool = True, device: str | torch.device | None = None,
               cache_dir: str | Path | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` for published models, with the file checks and errors of this module.

    Args:
        name: ``hf-hub:<org>/<name>[@rev]``, ``local-dir:<folder>``, or a registry name
            ``<architecture>.<tag>`` whose pretrained cfg points at the Hub.
        pretrained: load the weights.
        device: move the model there.
        cache_dir: Hub cache folder.
        **kwargs: passed to ``timm.create_model``.

    Returns:
        The model in eval mode.
    """
    source, ident = timm.models.parse_model_name(name)
    if source == 'local-dir':
        return load_hub_folder(ident, device, **kwargs)
    if source == 'hf-hub':
        if pretrained:
            download_hub_files(ident, cache_dir=cache_dir)
        else:
            repo_id, _, revision = ident.partition('@')
            config = read_config_json(_fetch(repo_id, CONFIG_NAME, revision or None, cache_dir))
            check_architecture(config['architecture'], f"{CONFIG_NAME} of {repo_id}")
    else:
        check_model_name(name)
        cfg = timm.models.get_pretrained_cfg(name)
        if pretrained and cfg is not None and cfg.hf_hub_id:
            download_hub_files(cfg.hf_hub_id, cache_dir=cache_dir, filename=cfg.hf_hub_filename or WEIGHTS_NAME)
    model = timm.create_model(name, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
    return model.to(device).eval() if device is not None else model.eval()


def _transformers_source(repo_or_path: str | Path, cache_dir) -> str:
    register_image_processor()
    path = Path(repo_or_path)
    if path.is_dir():
        verify_hub_folder(path, allow_pickle=True)
        return str(path)
    download_hub_files(str(repo_or_path), cache_dir=cache_dir)
    return str(repo_or_path)


def load_transformers_model(repo_or_path: str | Path, cache_dir: str | Path | None = None, **kwargs):
    """``AutoModelForImageClassification.from_pretrained`` (TimmWrapper) with the checks of this module.

    The files are checked first (an unregistered architecture raises
    :class:`~timm_asap.models.UnknownModelError` saying ``import timm_asap``, not transformers' "upgrade
    timm"), and the grey-aware image processor is registered (:func:`register_image_processor`).

    Returns:
        The transformers model in eval mode.
    """
    from transformers import AutoModelForImageClassification
    source = _transformers_source(repo_or_path, cache_dir)
    return AutoModelForImageClassification.from_pretrained(source, cache_dir=cache_dir, **kwargs).eval()


def transformers_pipeline(repo_or_path: str | Path, cache_dir: str | Path | None = None, **kwargs):
    """``pipeline('image-classification', model=...)`` with the checks of :func:`load_transformers_model`."""
    from transformers import pipeline
    source = _transformers_source(repo_or_path, cache_dir)
    model_kwargs = dict(kwargs.pop('model_kwargs', None) or {})
    if cache_dir is not None:
        model_kwargs['cache_dir'] = str(cache_dir)
    return pipeline('image-classification', model=source, model_kwargs=model_kwargs or None, **kwargs)

