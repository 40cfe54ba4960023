"""Uploading a Hub folder with huggingface_hub (``create_repo`` + ``upload_folder``).

The token comes from ``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``) or from the
huggingface_hub login (``hf auth login``); it is passed to huggingface_hub only and never printed,
logged or written anywhere. Unlike timm's ``push_to_hf_hub``, which keeps an existing README, every
upload replaces the card, and stale plots or pickle weights from earlier uploads are deleted.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from timm_asap._files import LOCK_NAME
from timm_asap.hub.integrity import verify_hub_folder
from timm_asap_lab.publish.errors import HubAuthError, HubPublishError

__all__ = ['UploadResult', 'HubUnreachableError', 'resolve_token', 'token_source', 'upload_hub_folder',
           'STALE_PATTERNS']

_logger = logging.getLogger(__name__)

# Remote files removed on each upload unless the folder has them again.
STALE_PATTERNS = ['plots/*', '*.bin', '*.pt', '*.pth', '*.pth.tar', '*.pkl', '*.ckpt', 'results.json',
                  'results.md', 'run_config.yaml']


class HubUnreachableError(HubPublishError):
    """The Hub endpoint could not be reached (connection refused, name resolution, timeout); the message
    names the endpoint and the step. An upload is one commit, so the repository holds nothing of it."""


# the transport errors of huggingface_hub's HTTP client (httpx, or the httpx2 fork it may ship with) are
# told by class name: that client is huggingface_hub's dependency, not ours to import
_TRANSPORT_ERRORS = ('TransportError', 'ConnectionError', 'Timeout', 'TimeoutException')


def _network_failure(e: BaseException) -> bool:
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        c.__name__ in _TRANSPORT_ERRORS for c in type(e).__mro__)


def _unreachable(api: HfApi, e: BaseException, action: str) -> HubUnreachableError:
    detail = ' '.join(str(e).split()) or type(e).__name__
    return HubUnreachableError(f"cannot reach the Hub at {api.endpoint} while trying to {action} "
                               f"({type(e).__name__}: {detail}); nothing was uploaded: check the network or "
                               f"HF_ENDPOINT and publish again")


@dataclass
class UploadResult:
    """Where the folder went."""

    repo_id: str
    repo_url: str
    commit_url: str
    commit_sha: str
    files: list[str]


def token_source() -> str:
    """Where huggingface_hub would take the token from (for messages; the token itself is never shown)."""
    if os.environ.get('HF_TOKEN'):
        return 'the HF_TOKEN environment variable'
    if os.environ.get('HUGGING_FACE_HUB_TOKEN'):
        return 'the HUGGING_FACE_HUB_TOKEN environment variable'
    if Path(constants.HF_TOKEN_PATH).is_file():
        return f"the huggingface_hub login ({constants.HF_TOKEN_PATH})"
    return 'nowhere'


def resolve_token() -> str:
    """The token huggingface_hub would use.

    Raises:
        HubAuthError: no token in the environment and no stored login.
    """
    from huggingface_hub import get_token
    token = get_token()
    if not token:
        raise HubAuthError("no Hugging Face token: set HF_TOKEN to a write token or log in with `hf auth login` "
                           "(https://huggingface.co/settings/tokens)")
    return token


def _auth_error(api: HfApi, e: HfHubHTTPError, action: str) -> HubAuthError:
    status = e.response.status_code if e.response is not None else 'no'
    return HubAuthError(f"the Hub at {api.endpoint} rejected the token from {token_source()} while trying to "
                        f"{action} (HTTP {status}): use a valid token with write access (set HF_TOKEN or run "
                        "`hf auth login`)")


def upload_hub_folder(folder: str | Path, repo_id: str, *, private: bool = False,
                      commit_message: str | None = None, revision: str | None = None) -> UploadResult:
    """Check a Hub folder, create the repository if needed and upload the folder as one commit.

    Args:
        folder: a folder written by :func:`timm_asap.hub.build_hub_folder`.
        repo_id: ``<org>/<name>``.
        private: create the repository private. An existing public repository is not made private: that
            is an error, so weights meant to be private are not uploaded to a public repository.
        commit_message: defaults to ``Publish <folder name>``.
        revision: branch to commit to (default: main).

    Returns:
        The repository and commit.

    Raises:
        HubAuthError: no token, or the Hub rejected it.
        HubUnreachableError: the endpoint cannot be reached (nothing is uploaded).
        HubPublishError: the repository is public but ``private`` was asked for, or the upload failed.
        IntegrityError: the folder failed its checks (nothing is uploaded).
    """
    folder = Path(folder)
    verify_hub_folder(folder)
    if not (folder / 'README.md').is_file():
        raise HubPublishError(f"{folder}: no README.md model card; build the folder with build_hub_folder")
    if not repo_id or repo_id.count('/') != 1:
        raise HubPublishError(f"repo_id must look like '<org>/<name>', got {repo_id!r}")
    api = HfApi(token=resolve_token(), library_name='timm-asap')
    try:
        api.whoami(cache=True)
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (401, 403):
            raise _auth_error(api, e, 'identify the user') from None
        raise HubPublishError(f"cannot reach the Hub at {api.endpoint}: {e}") from e
    except Exception as e:
        if _network_failure(e):
            raise _unreachable(api, e, 'identify the user') from None
        raise
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        if private:
            info = api.model_info(repo_id)
            if not info.private:
                raise HubPublishError(f"{repo_id} exists and is public, but a private upload was asked for; make the "
                                      "repository private on the Hub first, or publish without --private")
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type='model', revision=revision,
            commit_message=commit_message or f"Publish {folder.name}", delete_patterns=STALE_PATTERNS,
            ignore_patterns=[LOCK_NAME])
        remote = set(api.list_repo_files(repo_id, revision=revision))
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (401, 403):
            raise _auth_error(api, e, f"write to {repo_id}") from None
        raise HubPublishError(f"upload of {folder} to {repo_id} failed: {e}") from e
    except Exception as e:
        if _network_failure(e):
            raise _unreachable(api, e, f"upload to {repo_id}") from None
        raise
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file() and p.name != LOCK_NAME)
    missing = sorted(set(local) - remote)
    if missing:
        raise HubPublishError(f"after uploading {folder} to {repo_id}, the repository lacks {missing}")
    _logger.info('published %s to %s (commit %s)', folder, repo_id, commit.oid)
    return UploadResult(repo_id, str(repo_url), commit.commit_url, commit.oid, local)
