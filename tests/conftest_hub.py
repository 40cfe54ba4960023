"""Pytest fixtures pointing huggingface_hub (and so timm and transformers) at an in-process Hub.

Import the fixtures into a test module (``from conftest_hub import hub, hub_env  # noqa: F401``), or
list this module in ``pytest_plugins``. Nothing here touches the real network: the endpoint, the cache,
the token file and offline mode are patched on ``huggingface_hub.constants`` (read at call time) and
Xet is disabled so uploads use the plain LFS protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub import constants

from hub_server import HubServer

GOOD_TOKEN = 'hf_test_write_token_0123456789'
OTHER_TOKEN = 'hf_test_other_user_token_98765'
ORG = 'timm-asap'


@dataclass
class HubEnv:
    """What a test needs to talk to the in-process Hub."""

    server: HubServer
    endpoint: str
    cache_dir: Path
    token: str
    org: str
    monkeypatch: pytest.MonkeyPatch

    def set_offline(self, offline: bool = True) -> None:
        """Switch huggingface_hub's offline mode (HF_HUB_OFFLINE) for the rest of the test."""
        self.monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', offline)
        self.monkeypatch.setenv('HF_HUB_OFFLINE', '1' if offline else '0')

    def set_token(self, token: str | None) -> None:
        """Make ``token`` the environment token (None: no token at all)."""
        if token is None:
            self.monkeypatch.delenv('HF_TOKEN', raising=False)
        else:
            self.monkeypatch.setenv('HF_TOKEN', token)


def patch_hub_constants(monkeypatch: pytest.MonkeyPatch, endpoint: str, cache_dir: Path, home: Path) -> None:
    """Point huggingface_hub at ``endpoint`` with ``cache_dir`` as HF_HUB_CACHE; no stored login, no Xet."""
    monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache_dir))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_XET', True)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_TELEMETRY', True)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(home / 'token'))
    monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH', str(home / 'stored_tokens'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.delenv('HUGGING_FACE_HUB_TOKEN', raising=False)
    monkeypatch.delenv('HF_OIDC_RESOURCE', raising=False)


@pytest.fixture(scope='module')
def hub():
    """A running in-process Hub shared by a module's tests (tokens: GOOD_TOKEN, OTHER_TOKEN)."""
    with HubServer({GOOD_TOKEN: ('tester', [ORG]), OTHER_TOKEN: ('other', [])}) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> HubEnv:
    """huggingface_hub pointed at the module's Hub, with a fresh cache and GOOD_TOKEN in HF_TOKEN."""
    cache = tmp_path / 'hf_cache'
    home = tmp_path / 'hf_home'
    home.mkdir()
    patch_hub_constants(monkeypatch, hub.endpoint, cache, home)
    monkeypatch.setenv('HF_TOKEN', GOOD_TOKEN)
    return HubEnv(hub, hub.endpoint, cache, GOOD_TOKEN, ORG, monkeypatch)


# ---------------------------------------------------------------------------------------------------
# tiny trained-model and evaluation folders, as fine-tuning and evaluation write them
# ---------------------------------------------------------------------------------------------------

HUB_CONFIG = 'resnet18_cifar_asap.fmnist'  # shipped hub config: 1 grey channel, 32x32, 10 classes
# shrinks the CIFAR ResNet-18 through model_args (one block per stage, narrow stages: about 80k parameters)
SMALL_ARGS = {'layers': [1, 1, 1, 1], 'channels': [8, 16, 32, 64]}


def make_train_dir(path: Path, config: str = HUB_CONFIG, seed: int = 0, overrides: list[str] | None = None,
                   small: bool = False) -> Path:
    """A fine-tuning output folder: ``model.safetensors`` (random weights, perturbed BN statistics) and the
    resolved ``config.yaml``; ``small`` adds :data:`SMALL_ARGS` to ``model.model_args``."""
    import safetensors.torch
    import torch

    import timm_asap.models  # noqa: F401  (registers the architectures)
    from timm_asap_lab.config import apply_overrides, load_config, save_config
    from timm_asap_lab.publish.export import create_model_from_config

    cfg = load_config(config)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    if small:
        cfg.model.model_args = {**cfg.model.model_args, **SMALL_ARGS}
    torch.manual_seed(seed)
    model = create_model_from_config(cfg)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('running_mean'):
                t.normal_(0, 0.1)
            elif name.endswith('running_var'):
                t.uniform_(0.5, 1.5)
    path.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path / 'model.safetensors'))
    save_config(cfg, path / 'config.yaml')
    return path


def make_eval_dir(path: Path, models: dict[str, float], plots: bool = True) -> Path:
    """An evaluation output folder (results.json, results.md, plots) with made-up numbers per model:
    ``models`` maps model name -> clean top-1."""
    from timm_asap_lab.evaluation import write_artefacts

    rows = []
    for i, (name, top1) in enumerate(models.items()):
        common = {'model': name, 'count': 64, 'dataset': 'fashion_mnist', 'seed': 0}
        rows.append({'task': 'clean', 'num_classes': 10, 'top1': top1, 'top5': 99.0 - i, **common})
        rows.append({'task': 'shift', 'trials': 2, 'max_shift': 4, 'mode': 'circular',
                     'consistency': 90.0 - 5 * i, 'shifted_top1': top1 - 1, **common})
        for d in (1, 2, 3):
            rows.append({'task': 'shift_curve', 'shift': d, 'mode': 'circular', 'agreement': 95.0 - 3 * d - i,
                         **common})
    write_artefacts(rows, path, {'models': list(models), 'dataset': 'fashion_mnist'}, plots=plots)
    return path
